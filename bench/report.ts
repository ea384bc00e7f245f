import { cpus, availableParallelism, loadavg, release, type } from 'node:os'

export interface RowFigures {
  label: string
  /** The bare route, against which the others are compared. */
  yardstick: boolean
  requestsPerSecond: number
  /** Median requests/s over the bare route's. */
  ratio: number
  p50: number
  p99: number
  /** CPU time of the row's server process per request: what authentication costs, steadier than requests/s under contention. */
  serverCpuMicrosPerRequest: number
  /** Anything but 200 is a broken row, not a slow one; shown so it cannot go unnoticed. */
  unexpected: string
  /** Calls to `lookup` during the measured rounds (plugin rows): 0 means every request was a cache hit. */
  lookupsMeasured?: number
  /** Requests that joined a load already in flight for their key (plugin rows): single flight at work. */
  coalescedMeasured?: number
  /** Redis calls that failed or passed `redisTimeoutMs` during the measured rounds (plugin rows). */
  backendErrorsMeasured?: number
}

export interface Figure { label: string, value: string }

export interface Report {
  settings: string
  rows: RowFigures[]
  revocation: Figure[]
  hotPath: Figure[]
  /** credentialStore.load() per second on one thread, per backend. */
  credentials: Figure[]
  targets: Figure[]
  loadBefore: number[]
  loadAfter: number[]
}

const integer = (n: number): string => Math.round(n).toLocaleString('en-US')
const ms = (n: number): string => Number.isFinite(n) ? n.toFixed(2) : 'n/a'

export function markdownTable (rows: RowFigures[]): string {
  const lines = [
    '| row | requests/s | ratio to bare | p50 ms | p99 ms | server CPU µs/req | notes |',
    '|---|---:|---:|---:|---:|---:|---|'
  ]
  for (const row of rows) {
    const notes: string[] = []
    if (row.unexpected !== '') notes.push(`unexpected statuses: ${row.unexpected}`)
    if (row.lookupsMeasured !== undefined) notes.push(`lookups while measured: ${row.lookupsMeasured}`)
    if (row.coalescedMeasured) notes.push(`requests sharing an in-flight Redis read: ${row.coalescedMeasured}`)
    if (row.backendErrorsMeasured) notes.push(`backend errors while measured: ${row.backendErrorsMeasured}`)
    lines.push(`| ${row.label} | ${integer(row.requestsPerSecond)} | ${row.ratio.toFixed(2)} | ${ms(row.p50)} | ${ms(row.p99)} | ${row.serverCpuMicrosPerRequest.toFixed(1)} | ${notes.join('; ')} |`)
  }
  return lines.join('\n')
}

function list (figures: Figure[]): string {
  return figures.map(({ label, value }) => `- ${label}: ${value}`).join('\n')
}

export function formatHotPath (figures: Array<{ label: string, opsPerSecond: number }>): Figure[] {
  return figures.map(({ label, opsPerSecond }) => ({ label, value: `${integer(opsPerSecond)} ops/s` }))
}

export function machine (): string {
  return `${availableParallelism()} cores (os.availableParallelism()), ${cpus()[0]?.model ?? 'unknown CPU'}, ` +
    `Node ${process.version}, ${type()} ${release()}`
}

export function markdownReport (report: Report, command: string): string {
  const load = (l: number[]): string => l.map((n) => n.toFixed(2)).join(' / ')
  return `# Benchmark results

- Date: ${new Date().toISOString()}
- Machine: ${machine()}
- Load average (1/5/15 min) before: ${load(report.loadBefore)}, after: ${load(report.loadAfter)}
- Reproduce: \`${command}\`
- Settings: ${report.settings}

## Requests per second, one route, each row its own server process

${markdownTable(report.rows)}

- ratio: the row's requests/s over the bare route's.
- server CPU µs/req: CPU time of the row's server process per request. Its difference to the bare
  route is what authentication costs per request, whichever process was the bottleneck (on 2 cores
  the load generator often is, and then requests/s hide that cost). Redis's own CPU is not in it.
- lookups while measured: calls to \`lookup\` during the measured rounds; 0 means every request was
  answered from the cache, as the rows intend. Requests sharing an in-flight Redis read: with few
  keys, concurrent requests for one key wait on one Redis read (single flight), so the redis rows
  with 10 keys make fewer Redis calls than requests; with a large table each request makes its own.

## Revocation across two processes (tiered backend)

${list(report.revocation)}

## Hot path on one thread (no HTTP)

${list(report.hotPath)}

## Credentials: \`credentialStore.load()\` per second, one thread

${list(report.credentials)}

## Targets

${list(report.targets)}
`
}

export function currentLoad (): number[] {
  return loadavg()
}
