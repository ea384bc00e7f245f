import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/**
 * bench/results.svg: the figures of `npm run bench` as a chart, drawn as a hand-written SVG
 * string (no browser, no dependency), which GitHub shows inline in the README.
 *
 *   npx tsx bench/chart.ts   redraws bench/results.svg from the figures in bench/RESULTS.md
 */

export interface ChartRow {
  label: string
  /** Median requests/s over the bare route's. */
  ratio: number
  requestsPerSecond: number
  /** The bare route, against which the ratios are taken. */
  yardstick: boolean
}

/** One measure of revocation latency, in milliseconds. */
export interface LatencySeries {
  label: string
  p50: number
  p99: number
  max: number
}

export interface ChartFigures {
  /** Under the title: when and where it was measured. */
  subtitle: string
  rows: ChartRow[]
  revocations: number
  revocation: LatencySeries[]
  /** The contract's bound on the ratio to bare (memory and tiered). */
  ratioTarget?: number
  /** The contract's bound on revocation p99 while Redis is healthy, ms. */
  revocationBoundMs?: number
}

const WIDTH = 960
const MARGIN = 20
const LABEL_RIGHT = 390
const BAR_LEFT = 400
const BAR_SPAN = 400
const ROW_HEIGHT = 26
const BAR_HEIGHT = 16
const FONT = "-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
const COLOURS = {
  plugin: '#2f6fb3',
  yardstick: '#8c8c8c',
  other: '#d9822b',
  target: '#c0392b',
  grid: '#e3e3e3',
  text: '#222222',
  muted: '#666666',
  latency: { p50: '#9ecae1', p99: '#4292c6', max: '#08519c' }
} as const
/** A white outline under text, so that grid and bound lines crossing it leave it legible. */
const HALO = 'paint-order="stroke" stroke="#ffffff" stroke-width="3" stroke-linejoin="round"'

/** The two measures bench/revocation.ts takes, as the chart names them. */
const REVOCATION_LABELS = {
  afterReturn: 'Refused by the other process, after delete() returned in the first (the contract\'s measure)',
  fromCall: 'From the delete() call to the other process\'s first 401 (includes the delete)'
} as const

/** Text for XML content and attribute values alike. */
export function escapeXml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!)
}

const num = (n: number): string => Number.isFinite(n) ? String(Math.round(n * 100) / 100) : '0'
const fixed = (n: number, digits: number): string => Number.isFinite(n) ? n.toFixed(digits) : 'n/a'
const integer = (n: number): string => Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a'

function text (x: number, y: number, content: string, attributes = ''): string {
  return `<text x="${num(x)}" y="${num(y)}"${attributes === '' ? '' : ` ${attributes}`}>${escapeXml(content)}</text>`
}

/** A round step giving about `ticks` intervals up to `max`, and the axis end it makes. */
function axis (max: number, ticks: number): { step: number, end: number } {
  const rough = max / ticks
  const magnitude = 10 ** Math.floor(Math.log10(rough))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= rough) ?? 10 * magnitude
  return { step, end: Math.ceil(max / step - 1e-9) * step }
}

/** Vertical grid lines and their labels under a block of bars from `top` to `bottom`. */
function grid (top: number, bottom: number, end: number, step: number, format: (v: number) => string): string[] {
  const out: string[] = []
  for (let v = 0; v <= end + step / 1000; v += step) {
    const x = BAR_LEFT + (v / end) * BAR_SPAN
    out.push(`<line x1="${num(x)}" y1="${num(top)}" x2="${num(x)}" y2="${num(bottom)}" stroke="${COLOURS.grid}"/>`)
    out.push(text(x, bottom + 14, format(v), `text-anchor="middle" fill="${COLOURS.muted}" font-size="11"`))
  }
  return out
}

/** A dashed vertical line across a block of bars, labelled above it. */
function boundLine (x: number, top: number, bottom: number, label: string, kind: string): string[] {
  return [
    `<line class="bound" data-bound="${escapeXml(kind)}" x1="${num(x)}" y1="${num(top - 4)}" x2="${num(x)}" y2="${num(bottom)}" stroke="${COLOURS.target}" stroke-width="1.5" stroke-dasharray="5 3"/>`,
    text(x, top - 8, label, `text-anchor="middle" fill="${COLOURS.target}" font-size="11"`)
  ]
}

function barColour (row: ChartRow): string {
  if (row.yardstick) return COLOURS.yardstick
  return row.label.startsWith('fastify-auth-cache') ? COLOURS.plugin : COLOURS.other
}

/** The chart as a standalone SVG document. Pure: the same figures give the same string. */
export function resultsChart (figures: ChartFigures): string {
  const target = figures.ratioTarget ?? 0.95
  const bound = figures.revocationBoundMs ?? 10
  const body: string[] = []
  let y = MARGIN + 18

  body.push(text(MARGIN, y, 'fastify-auth-cache: npm run bench', `font-size="18" font-weight="bold" fill="${COLOURS.text}"`))
  y += 20
  body.push(text(MARGIN, y, figures.subtitle, `font-size="12" fill="${COLOURS.muted}"`))

  // (a) Requests per second, as a ratio to the bare route.
  y += 34
  body.push(text(MARGIN, y, 'Requests per second relative to the same route without authentication (higher is better)',
    `font-size="14" font-weight="bold" fill="${COLOURS.text}"`))
  y += 30
  const ratios = figures.rows.map((row) => Number.isFinite(row.ratio) ? Math.max(0, row.ratio) : 0)
  const ratioAxis = axis(Math.max(1.1, target, ...ratios), 5)
  const rowsTop = y
  const rowsBottom = rowsTop + figures.rows.length * ROW_HEIGHT
  // Grid and bound first: the bars and their labels are drawn over them.
  body.push(...grid(rowsTop, rowsBottom, ratioAxis.end, ratioAxis.step, num))
  body.push(...boundLine(BAR_LEFT + (target / ratioAxis.end) * BAR_SPAN, rowsTop, rowsBottom, `target ${fixed(target, 2)}`, 'ratio'))
  figures.rows.forEach((row, i) => {
    const top = rowsTop + i * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2
    const width = (ratios[i] / ratioAxis.end) * BAR_SPAN
    body.push(text(LABEL_RIGHT, top + BAR_HEIGHT - 4, row.label, `text-anchor="end" font-size="12" fill="${COLOURS.text}"`))
    body.push(`<rect class="ratio-bar" x="${BAR_LEFT}" y="${num(top)}" width="${num(width)}" height="${BAR_HEIGHT}" fill="${barColour(row)}"/>`)
    body.push(text(BAR_LEFT + width + 6, top + BAR_HEIGHT - 4, `${fixed(row.ratio, 2)}  (${integer(row.requestsPerSecond)}/s)`,
      `font-size="11" fill="${COLOURS.text}" ${HALO}`))
  })
  y = rowsBottom + 36
  let legendX = BAR_LEFT
  for (const [colour, label] of [
    [COLOURS.plugin, 'fastify-auth-cache'],
    [COLOURS.yardstick, 'no authentication'],
    [COLOURS.other, 'other approaches']
  ] as const) {
    body.push(`<rect x="${legendX}" y="${num(y - 10)}" width="12" height="12" fill="${colour}"/>`)
    body.push(text(legendX + 17, y, label, `font-size="11" fill="${COLOURS.text}"`))
    legendX += 30 + label.length * 6.5
  }

  // (b) Revocation latency across processes.
  y += 36
  body.push(text(MARGIN, y, `Revocation across two processes, tiered backend, ${integer(figures.revocations)} revocations: milliseconds (lower is better)`,
    `font-size="14" font-weight="bold" fill="${COLOURS.text}"`))
  y += 30
  const values = figures.revocation.flatMap((s) => [s.p50, s.p99, s.max]).map((v) => Number.isFinite(v) ? Math.max(0, v) : 0)
  const latencyAxis = axis(Math.max(bound, ...values) * 1.05, 5)
  const latencyTop = y
  const groupHeight = 3 * ROW_HEIGHT + 22
  const latencyBottom = latencyTop + figures.revocation.length * groupHeight - 8
  body.push(...grid(latencyTop, latencyBottom, latencyAxis.end, latencyAxis.step, (v) => `${num(v)} ms`))
  body.push(...boundLine(BAR_LEFT + (bound / latencyAxis.end) * BAR_SPAN, latencyTop, latencyBottom, `contract: p99 ≤ ${num(bound)} ms`, 'revocation'))
  figures.revocation.forEach((series, g) => {
    const groupTop = latencyTop + g * groupHeight
    body.push(text(MARGIN, groupTop + 12, series.label, `font-size="12" font-weight="bold" fill="${COLOURS.text}" ${HALO}`))
    ;(['p50', 'p99', 'max'] as const).forEach((stat, i) => {
      const value = series[stat]
      const top = groupTop + 18 + i * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2
      const width = ((Number.isFinite(value) ? Math.max(0, value) : 0) / latencyAxis.end) * BAR_SPAN
      body.push(text(LABEL_RIGHT, top + BAR_HEIGHT - 4, stat, `text-anchor="end" font-size="12" fill="${COLOURS.text}"`))
      body.push(`<rect class="latency-bar" data-stat="${stat}" x="${BAR_LEFT}" y="${num(top)}" width="${num(width)}" height="${BAR_HEIGHT}" fill="${COLOURS.latency[stat]}"/>`)
      body.push(text(BAR_LEFT + width + 6, top + BAR_HEIGHT - 4, `${fixed(value, 2)} ms`, `font-size="11" fill="${COLOURS.text}" ${HALO}`))
    })
  })

  const height = latencyBottom + 14 + MARGIN + 10
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${num(height)}" viewBox="0 0 ${WIDTH} ${num(height)}" role="img" aria-labelledby="chart-title" font-family="${FONT}">`,
    `<title id="chart-title">${escapeXml(`fastify-auth-cache benchmark: requests per second relative to the bare route, and revocation latency across processes. ${figures.subtitle}`)}</title>`,
    `<rect width="${WIDTH}" height="${num(height)}" fill="#ffffff"/>`,
    ...body,
    '</svg>',
    ''
  ].join('\n')
}

/** The chart's figures, read back from a bench/RESULTS.md that bench/report.ts wrote. */
export function figuresFromResults (markdown: string): ChartFigures {
  const line = (pattern: RegExp, what: string): RegExpExecArray => {
    const match = pattern.exec(markdown)
    if (match === null) throw new Error(`RESULTS.md: no ${what}`)
    return match
  }
  const date = line(/^- Date: (\S+)/m, 'date')[1].slice(0, 10)
  const machine = line(/^- Machine: (.+)$/m, 'machine')[1]
  const rows: ChartRow[] = []
  const table = line(/^## Requests per second[^\n]*\n\n((?:\|.*\n)+)/m, 'requests table')[1]
  for (const cells of table.trim().split('\n').slice(2).map((r) => r.split('|').slice(1, -1).map((c) => c.trim()))) {
    rows.push({
      label: cells[0],
      requestsPerSecond: Number(cells[1].replace(/,/g, '')),
      ratio: Number(cells[2]),
      yardstick: cells[0].startsWith('bare route')
    })
  }
  const latency = (pattern: RegExp, label: string): LatencySeries => {
    const [, p50, p99, max] = line(new RegExp(`${pattern.source}.*: p50 ([\\d.]+) ms, p99 ([\\d.]+) ms, max ([\\d.]+) ms$`, 'm'), label)
    return { label, p50: Number(p50), p99: Number(p99), max: Number(max) }
  }
  return {
    subtitle: `${date}; ${machine}`,
    rows,
    revocations: Number(line(/^- revocations: (\d+)/m, 'revocation count')[1]),
    revocation: [
      latency(/^- from B's view, after A's `delete\(\)` returned/, REVOCATION_LABELS.afterReturn),
      latency(/^- from the `delete\(\)` call/, REVOCATION_LABELS.fromCall)
    ]
  }
}

if (require.main === module) {
  const markdown = readFileSync(join(__dirname, 'RESULTS.md'), 'utf8')
  writeFileSync(join(__dirname, 'results.svg'), resultsChart(figuresFromResults(markdown)))
  console.log('written to bench/results.svg')
}
