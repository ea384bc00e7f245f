import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { escapeXml, figuresFromResults, resultsChart, type ChartFigures } from '../bench/chart'

const figures = (overrides: Partial<ChartFigures> = {}): ChartFigures => ({
  subtitle: '2026-01-01; a test machine',
  rows: [
    { label: 'bare route, no authentication', ratio: 1, requestsPerSecond: 20_000, yardstick: true },
    { label: 'fastify-auth-cache, tiered, 10 keys', ratio: 0.5, requestsPerSecond: 10_000, yardstick: false },
    { label: 'some <other> approach & co', ratio: 0.25, requestsPerSecond: 5_000, yardstick: false }
  ],
  revocations: 200,
  revocation: [
    { label: 'after delete() returned', p50: 1, p99: 7, max: 15 },
    { label: 'from the delete() call', p50: 1.2, p99: 7.3, max: 19.3 }
  ],
  ...overrides
})

/**
 * Checks what a renderer needs of the markup: every tag closed in order, attributes quoted,
 * no stray `<` or `&` in text. Answers the elements in document order.
 */
function parseXmlish (svg: string): Array<{ name: string, attributes: Record<string, string>, text: string }> {
  type Element = { name: string, attributes: Record<string, string>, text: string }
  const elements: Element[] = []
  const open: Element[] = []
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y
  let at = 0
  while (at < svg.length) {
    const next = svg.indexOf('<', at)
    const between = svg.slice(at, next === -1 ? svg.length : next)
    assert.doesNotMatch(between, /&(?!(amp|lt|gt|quot|apos|#\d+);)/, `an unescaped & in text: ${between}`)
    assert.ok(!between.includes('>'), `a stray > in text: ${between}`)
    if (open.length > 0) open[open.length - 1].text += between
    if (next === -1) break
    tag.lastIndex = next
    const match = tag.exec(svg)
    assert.ok(match !== null, `not a well-formed tag at ${next}: ${svg.slice(next, next + 80)}`)
    const [whole, closing, name, attributeText, selfClosing] = match
    if (closing === '/') {
      assert.equal(open.pop()?.name, name, `</${name}> closes what was opened`)
    } else {
      const attributes: Record<string, string> = {}
      for (const [, key, value] of attributeText.matchAll(/([\w:-]+)="([^"]*)"/g)) {
        assert.equal(attributes[key], undefined, `attribute ${key} given twice on <${name}>`)
        assert.doesNotMatch(value, /&(?!(amp|lt|gt|quot|apos|#\d+);)/, `an unescaped & in ${key}="${value}"`)
        attributes[key] = value
      }
      const element = { name, attributes, text: '' }
      elements.push(element)
      if (selfClosing !== '/') open.push(element)
    }
    at = next + whole.length
  }
  assert.deepEqual(open, [], 'every element is closed')
  return elements
}

describe('bench/chart.ts', () => {
  test('a well-formed standalone SVG document', () => {
    const svg = resultsChart(figures())
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" /)
    assert.match(svg, /<\/svg>\n$/)
    const elements = parseXmlish(svg)
    assert.equal(elements[0].name, 'svg')
    assert.equal(elements.filter((e) => e.name === 'svg').length, 1)
    assert.equal(elements.filter((e) => e.name === 'title').length, 1, 'a title for screen readers')
    for (const e of elements) {
      for (const name of ['x', 'y', 'width', 'height', 'x1', 'x2', 'y1', 'y2']) {
        if (e.attributes[name] !== undefined) assert.ok(Number.isFinite(Number(e.attributes[name])), `<${e.name} ${name}="${e.attributes[name]}">`)
      }
    }
  })

  test('one labelled bar per row, in proportion to its ratio, and the 0.95 target line', () => {
    const input = figures()
    const elements = parseXmlish(resultsChart(input))
    const bars = elements.filter((e) => e.attributes.class === 'ratio-bar')
    assert.equal(bars.length, input.rows.length)
    const widths = bars.map((bar) => Number(bar.attributes.width))
    assert.ok(Math.abs(widths[0] / widths[1] - 2) < 0.01 && Math.abs(widths[1] / widths[2] - 2) < 0.01, `widths ${widths}`)
    assert.ok(new Set(bars.map((bar) => bar.attributes.x)).size === 1, 'bars start on one axis')
    const texts = elements.filter((e) => e.name === 'text').map((e) => e.text)
    for (const row of input.rows) assert.ok(texts.includes(escapeXml(row.label)), `labelled: ${row.label}`)
    assert.ok(texts.includes('0.50  (10,000/s)'), 'each bar carries its ratio and requests/s')
    const target = elements.find((e) => e.attributes['data-bound'] === 'ratio')
    assert.ok(target !== undefined)
    assert.ok(texts.includes('target 0.95'))
    // The target sits at 0.95 of the bare route's bar (ratio 1).
    const left = Number(bars[0].attributes.x)
    assert.ok(Math.abs((Number(target.attributes.x1) - left) / widths[0] - 0.95) < 0.01)
  })

  test('revocation latency: p50, p99 and max bars for each measure, with the 10 ms bound', () => {
    const input = figures()
    const elements = parseXmlish(resultsChart(input))
    const bars = elements.filter((e) => e.attributes.class === 'latency-bar')
    assert.deepEqual(bars.map((bar) => bar.attributes['data-stat']), ['p50', 'p99', 'max', 'p50', 'p99', 'max'])
    const texts = elements.filter((e) => e.name === 'text').map((e) => e.text)
    for (const label of ['7.00 ms', '15.00 ms', '19.30 ms', 'after delete() returned', 'contract: p99 ≤ 10 ms']) {
      assert.ok(texts.includes(label), `shows ${label}`)
    }
    assert.ok(elements.some((e) => e.attributes['data-bound'] === 'revocation'))
  })

  test('labels are escaped: a row label with < or & cannot break the markup', () => {
    const svg = resultsChart(figures({
      subtitle: 'Node "20" & <friends>',
      rows: [
        { label: 'bare', ratio: 1, requestsPerSecond: 1, yardstick: true },
        { label: '</text><script>alert(1)</script> & "quotes" \'too\'', ratio: 0.9, requestsPerSecond: 1, yardstick: false }
      ]
    }))
    assert.ok(!svg.includes('<script'))
    assert.ok(svg.includes('&lt;/text&gt;&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot; &apos;too&apos;'))
    assert.ok(svg.includes('Node &quot;20&quot; &amp; &lt;friends&gt;'))
    const elements = parseXmlish(svg)
    assert.equal(elements.filter((e) => e.attributes.class === 'ratio-bar').length, 2)
  })

  test('figures that are not numbers draw empty bars, not broken markup', () => {
    const svg = resultsChart(figures({
      rows: [{ label: 'bare', ratio: NaN, requestsPerSecond: NaN, yardstick: true }],
      revocation: [{ label: 'none', p50: NaN, p99: Infinity, max: -1 }]
    }))
    const elements = parseXmlish(svg)
    assert.ok(!svg.includes('NaN') && !svg.includes('Infinity'))
    assert.equal(elements.filter((e) => e.attributes.class === 'ratio-bar').length, 1)
  })

  test('bench/RESULTS.md reads back into the chart, and bench/results.svg is drawn from it', () => {
    const markdown = readFileSync(join(__dirname, '..', 'bench', 'RESULTS.md'), 'utf8')
    const read = figuresFromResults(markdown)
    const tableRows = markdown.split('\n').filter((line) => /^\| (?!row |---)/.test(line))
    assert.equal(read.rows.length, tableRows.length)
    assert.equal(read.rows.filter((row) => row.yardstick).length, 1)
    for (const row of read.rows) assert.ok(Number.isFinite(row.ratio) && Number.isFinite(row.requestsPerSecond), row.label)
    assert.equal(read.revocation.length, 2)
    for (const series of read.revocation) assert.ok([series.p50, series.p99, series.max].every(Number.isFinite))
    const committed = readFileSync(join(__dirname, '..', 'bench', 'results.svg'), 'utf8')
    assert.equal(committed, resultsChart(read), 'bench/results.svg matches bench/RESULTS.md (redraw it: npx tsx bench/chart.ts)')
  })
})
