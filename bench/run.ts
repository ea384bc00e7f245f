import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { ApiKeyCacheStats } from '../lib'
import { Child } from '../test/helpers/child-process'
import { startRedis, type RedisServer } from '../test/helpers/redis-server'
import { figuresFromResults, resultsChart } from './chart'
import type { CredentialFigure } from './credentials'
import type { HotPathFigure } from './hot-path'
import { benchKeys } from './keys'
import { RowLoad, type LoadResult, type LoadSettings } from './load'
import { median, percentile, SampleBuffer } from './percentiles'
import { currentLoad, formatHotPath, machine, markdownReport, type Figure, type RowFigures } from './report'
import { benchRows, type Row, type ServerConfig } from './rows'
import { measureRevocation } from './revocation'

/**
 * `npm run bench`: every row in one run, each row a server process of its own, loaded in turn
 * over loopback HTTP by autocannon in this process, for several short rounds in shuffled order so
 * that a busy neighbour or a change of CPU frequency weighs on every row alike. Then revocation latency
 * across two processes and the hot path on one thread. Prints a Markdown report and writes
 * bench/RESULTS.md, and the chart of its figures, bench/results.svg.
 *
 * Environment: BENCH_QUICK=1 for a smoke run (2 rounds x 1 s instead of 5 x 2 s, a 10,000-key
 * large table, 100 revocations); BENCH_ROUNDS, BENCH_SECONDS, BENCH_WARMUP_SECONDS,
 * BENCH_LARGE_TABLE, BENCH_REVOCATIONS, BENCH_CONNECTIONS, BENCH_PIPELINING, BENCH_HOT_SAMPLES,
 * BENCH_HOT_SAMPLE_MS override one setting each; BENCH_PROFILE_DIR=<dir> writes a V8 CPU profile
 * of every row's server.
 */

const env = (name: string, normal: number, quick: number): number => {
  const value = process.env[name]
  if (value !== undefined && value !== '') return Number(value)
  return process.env.BENCH_QUICK === '1' ? quick : normal
}
// Many short rounds rather than a few long ones: a neighbour's burst then hits every row a little.
const ROUNDS = env('BENCH_ROUNDS', 5, 2)
const ROUND_SECONDS = env('BENCH_SECONDS', 2, 1)
const WARMUP_SECONDS = env('BENCH_WARMUP_SECONDS', 2, 1)
const LARGE_TABLE = env('BENCH_LARGE_TABLE', 100_000, 10_000)
const REVOCATIONS = env('BENCH_REVOCATIONS', 200, 100)
const LOAD: LoadSettings = { connections: env('BENCH_CONNECTIONS', 50, 50), pipelining: env('BENCH_PIPELINING', 1, 1) }
const START_CONCURRENCY = 3
// Set to a directory to get a V8 CPU profile of every row's server (open it in Chrome DevTools).
const PROFILE_DIR = process.env.BENCH_PROFILE_DIR
const ROOT = join(__dirname, '..')

const log = (message: string): void => { console.error(`[bench] ${message}`) }

// The load generator's garbage from one row (most from the fastest rows) would otherwise be
// collected while it loads the next row, and slow that row down.
setFlagsFromString('--expose-gc')
const collectGarbage = runInNewContext('gc') as () => void
// Lets the previous row's connections close and its server go idle before the next is loaded.
const SETTLE_MS = 200

/** Fisher-Yates: each round in its own order, so no row always follows the same neighbour. */
function shuffled<T> (items: T[]): T[] {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

interface RowState {
  row: Row
  peer: Child
  load: RowLoad
  rates: number[]
  latencies: SampleBuffer
  statuses: Record<string, number>
  statsBefore?: ApiKeyCacheStats
  /** Server CPU time and requests completed over the measured rounds. */
  cpuMicros: number
  completed: number
}

async function startRows (rows: Row[], redisUrl: string): Promise<RowState[]> {
  const states: RowState[] = []
  for (let start = 0; start < rows.length; start += START_CONCURRENCY) {
    states.push(...await Promise.all(rows.slice(start, start + START_CONCURRENCY).map(async (row, i): Promise<RowState> => {
      const config: ServerConfig = { row, redisUrl, redisPrefix: `bench:row${start + i}:` }
      // One directory per row: tsx's loader thread writes a profile of its own beside the main thread's.
      const profile = PROFILE_DIR === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', join(PROFILE_DIR, `row${start + i}`)]
      const peer = await Child.start({ name: row.label, file: join(__dirname, 'server.ts'), args: [JSON.stringify(config)], nodeArgs: profile })
      return {
        row,
        peer,
        load: new RowLoad(row, benchKeys(row.keys), peer.ready.port as number, LOAD),
        rates: [],
        latencies: new SampleBuffer(),
        statuses: {},
        cpuMicros: 0,
        completed: 0
      }
    })))
  }
  return states
}

function onlyOk (state: RowState, result: LoadResult, phase: string): void {
  const wrong = Object.entries(result.statuses).filter(([code]) => code !== '200')
  if (wrong.length > 0 || result.errors > 0 || result.completed === 0) {
    throw new Error(`${state.row.label}: ${phase} got ${JSON.stringify(result.statuses)}, ${result.errors} errors; the row is misconfigured`)
  }
}

const stats = async (state: RowState): Promise<ApiKeyCacheStats | undefined> =>
  (await state.peer.call<ApiKeyCacheStats | null>('stats')) ?? undefined

/**
 * Fills each row's cache with its whole table, then lets the JIT settle. A fill that failed
 * (a Redis call past `redisTimeoutMs` on a busy machine skips Redis for a while) leaves keys
 * that would be looked up while measured, so the table is walked again, a few times at most.
 */
async function warm (state: RowState): Promise<void> {
  if (state.row.keys > 1000) {
    for (let walk = 1; walk <= 3; walk++) {
      const before = await stats(state)
      onlyOk(state, await state.load.run({ amount: state.row.keys }), 'the table fill')
      const failed = (await stats(state))?.backendErrors ?? 0
      if (before === undefined || failed === before.backendErrors) break
      log(`${state.row.label}: ${failed - before.backendErrors} Redis calls failed while filling, walking the table again`)
    }
  }
  onlyOk(state, await state.load.run({ seconds: WARMUP_SECONDS }), 'warm-up')
  state.statsBefore = await stats(state)
}

async function measure (states: RowState[]): Promise<void> {
  for (let round = 0; round < ROUNDS; round++) {
    for (const state of shuffled(states)) {
      collectGarbage()
      await sleep(SETTLE_MS)
      const cpuBefore = await state.peer.call<number>('cpu')
      const result = await state.load.run({ seconds: ROUND_SECONDS })
      state.cpuMicros += await state.peer.call<number>('cpu') - cpuBefore
      state.completed += result.completed
      state.rates.push(result.completed / result.seconds)
      state.latencies.append(result.latencies)
      for (const [code, count] of Object.entries(result.statuses)) state.statuses[code] = (state.statuses[code] ?? 0) + count
      if (result.errors > 0) state.statuses.error = (state.statuses.error ?? 0) + result.errors
    }
    log(`round ${round + 1}/${ROUNDS} done`)
  }
}

async function figures (states: RowState[]): Promise<RowFigures[]> {
  const bare = states.find((state) => state.row.yardstick === true)!
  return await Promise.all(states.map(async (state) => {
    const sorted = state.latencies.sorted()
    const before = state.statsBefore
    const after = await stats(state)
    return {
      label: state.row.label,
      yardstick: state === bare,
      requestsPerSecond: median(state.rates),
      ratio: median(state.rates) / median(bare.rates),
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      serverCpuMicrosPerRequest: state.cpuMicros / state.completed,
      unexpected: Object.entries(state.statuses).filter(([code]) => code !== '200').map(([code, n]) => `${code} x${n}`).join(', '),
      ...(after !== undefined && before !== undefined && {
        lookupsMeasured: after.lookups - before.lookups,
        coalescedMeasured: after.coalesced - before.coalesced,
        backendErrorsMeasured: after.backendErrors - before.backendErrors
      })
    }
  }))
}

async function hotPath (redisUrl: string): Promise<HotPathFigure[]> {
  const { stdout } = await promisify(execFile)(process.execPath,
    ['--import', 'tsx', join(__dirname, 'hot-path.ts'), '--json', redisUrl],
    { cwd: ROOT, env: { ...process.env, BENCH_LARGE_TABLE: String(LARGE_TABLE) }, maxBuffer: 1 << 20 })
  return JSON.parse(stdout.trim().split('\n').pop()!) as HotPathFigure[]
}

async function credentialLoads (redisUrl: string): Promise<Figure[]> {
  const { stdout } = await promisify(execFile)(process.execPath,
    ['--import', 'tsx', join(__dirname, 'credentials.ts'), '--json', redisUrl], { cwd: ROOT, maxBuffer: 1 << 20 })
  const figures = JSON.parse(stdout.trim().split('\n').pop()!) as CredentialFigure[]
  return figures.map(({ label, loadsPerSecond }) => ({ label, value: `${Math.round(loadsPerSecond).toLocaleString('en-US')} loads/s` }))
}

function targets (rows: RowFigures[], revocationP99: number, hot: HotPathFigure[]): Figure[] {
  const verdict = (ok: boolean): string => ok ? 'met' : 'NOT met'
  const out: Figure[] = []
  const bare = rows.find((row) => row.yardstick)!
  for (const row of rows.filter((r) => /, (memory|tiered),/.test(r.label))) {
    const byCpu = bare.serverCpuMicrosPerRequest / row.serverCpuMicrosPerRequest
    out.push({
      label: `${row.label} >= 0.95 of bare`,
      value: `${row.ratio.toFixed(2)}, ${verdict(row.ratio >= 0.95)} (by server CPU per request: ${byCpu.toFixed(2)})`
    })
  }
  out.push({ label: 'tiered revocation p99 <= 10 ms', value: `${revocationP99.toFixed(2)} ms, ${verdict(revocationP99 <= 10)}` })
  const ops = (n: number): string => Math.round(n).toLocaleString('en-US')
  const [smallControl, largeControl] = hot.filter((f) => f.label.startsWith('control'))
  for (const figure of hot.filter((f) => f.label.startsWith('hashApiKey + resolve'))) {
    // A large table slows a plain Map too (CPU caches); the control shows by how much.
    const control = figure.label.endsWith(', 10 keys') || largeControl === undefined
      ? ''
      : ` (plain-Map control: ${ops(smallControl.opsPerSecond)} with 10 keys, ${ops(largeControl.opsPerSecond)} with this table)`
    out.push({ label: `${figure.label} >= 1,000,000 ops/s`, value: `${ops(figure.opsPerSecond)}, ${verdict(figure.opsPerSecond >= 1e6)}${control}` })
  }
  for (const backend of ['memory', 'redis', 'tiered']) {
    const [small, large] = rows.filter((r) => r.label.includes(`, ${backend},`) && !r.label.includes('scoped'))
    const ratio = large.requestsPerSecond / small.requestsPerSecond
    // With 10 keys, concurrent requests share Redis reads (single flight), so redis compares unlike with like.
    const caveat = backend === 'redis' ? ' (the 10-key row shares Redis reads, see notes)' : ''
    out.push({
      label: `${backend}: ${large.label.split(', ').pop()} vs 10 keys (no slowdown: >= 0.95)`,
      value: `${ratio.toFixed(2)}, ${verdict(ratio >= 0.95)}${caveat}`
    })
  }
  return out
}

function command (): string {
  const overrides = Object.entries(process.env).filter(([name]) => name.startsWith('BENCH_')).map(([name, value]) => `${name}=${value}`)
  return [...overrides, 'npm run bench'].join(' ')
}

async function main (): Promise<void> {
  const loadBefore = currentLoad()
  log(`${machine()}; ${ROUNDS} rounds x ${ROUND_SECONDS} s per row`)
  let redis: RedisServer | undefined
  let states: RowState[] = []
  const cleanUp = async (): Promise<void> => {
    await Promise.all(states.map((state) => state.peer.stop()))
    await redis?.destroy()
  }
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => { cleanUp().finally(() => process.exit(130)) })
  }
  try {
    redis = await startRedis()
    const rows = benchRows(LARGE_TABLE)
    log(`starting ${rows.length} servers`)
    states = await startRows(rows, redis.url)
    for (const state of states) {
      log(`warming up: ${state.row.label}`)
      await warm(state)
    }
    await measure(states)
    const rowFigures = await figures(states)
    await Promise.all(states.map((state) => state.peer.stop()))
    states = []
    log(`revocation latency: ${REVOCATIONS} revocations`)
    const revocation = await measureRevocation(redis.url, REVOCATIONS)
    log('hot path')
    const hot = await hotPath(redis.url)
    log('credential loads')
    const credentials = await credentialLoads(redis.url)

    const report = {
      settings: `${ROUNDS} rounds x ${ROUND_SECONDS} s per row, every row once per round in a new random order, after a warm-up of ${WARMUP_SECONDS} s ` +
        '(tables above 1,000 keys are first walked once to fill the cache); autocannon in the bench process, ' +
        `${LOAD.connections} connections, pipelining ${LOAD.pipelining}; requests rotate through the row's keys; ` +
        'requests/s is the median over rounds, the ratio that median over the bare route\'s, ' +
        'p50 and p99 over every request of every round; server CPU is the row\'s server process only (not Redis, ' +
        'not the load generator), per request over the measured rounds',
      rows: rowFigures,
      revocation: revocation.figures,
      hotPath: formatHotPath(hot),
      credentials,
      targets: targets(rowFigures, revocation.p99, hot),
      loadBefore,
      loadAfter: currentLoad()
    }
    const markdown = markdownReport(report, command())
    writeFileSync(join(__dirname, 'RESULTS.md'), markdown)
    // Drawn from the report just written, so that the chart shows exactly its figures.
    writeFileSync(join(__dirname, 'results.svg'), resultsChart(figuresFromResults(markdown)))
    console.log(markdown)
    log('written to bench/RESULTS.md and bench/results.svg')
  } finally {
    await cleanUp()
  }
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
