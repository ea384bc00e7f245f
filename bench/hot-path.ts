import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import Redis from 'ioredis'
import { hashApiKey } from '../lib'
import { createMemoryStore } from '../lib/api-key-cache/memory-store'
import type { ApiKeyStore } from '../lib/api-key-cache/store'
import { channelName, InvalidationBus } from '../lib/api-key-cache/invalidation-bus'
import { createTieredStore } from '../lib/api-key-cache/tiered-store'
import { ioredisAdapter } from '../lib/redis/ioredis-adapter'
import { RedisGuard } from '../lib/redis/guard'
import { createTelemetry } from '../lib/telemetry'
import { benchCommand } from './cli'
import { benchKeys } from './keys'
import { median } from './percentiles'

/**
 * The cost of a cache hit without HTTP around it: `hashApiKey` of the presented key and
 * the store's synchronous `peek` answering from process memory, on one thread (the whole hook,
 * with Fastify around it, is measured by bench/hook.ts).
 *   npx tsx bench/hot-path.ts            prints a table (starts its own redis-server)
 *   npx tsx bench/hot-path.ts --json URL prints JSON, using the Redis at URL (bench/run.ts)
 */

export interface HotPathFigure { label: string, opsPerSecond: number }

const QUICK = process.env.BENCH_QUICK === '1'
const SAMPLES = Number(process.env.BENCH_HOT_SAMPLES || (QUICK ? 3 : 5))
const SAMPLE_MS = Number(process.env.BENCH_HOT_SAMPLE_MS || 300)
const BATCH = 50_000

/**
 * Median over samples of how many `operation(i)` run per second; each sample lasts about SAMPLE_MS.
 * Between samples the event loop turns (`between`): the tiered backend trusts process memory
 * only while it reads its heartbeats promptly, so a measurement that blocked the event loop
 * longer than the trust deadline (900 ms) would find memory untrusted, as any stalled process
 * does. SAMPLE_MS stays well under it.
 */
async function opsPerSecond (operation: (i: number) => void, between: () => Promise<void> = async () => {}): Promise<number> {
  const rates: number[] = []
  let i = 0
  for (let s = 0; s < SAMPLES; s++) {
    await between()
    const started = performance.now()
    let done = 0
    let elapsed = 0
    do {
      for (let b = 0; b < BATCH; b++) operation(i++)
      done += BATCH
      elapsed = performance.now() - started
    } while (elapsed < SAMPLE_MS)
    rates.push(done / (elapsed / 1000))
  }
  return median(rates)
}

/** A store of `backend` built from the plugin's internal modules, every key in process memory. */
async function storeFor (backend: 'memory' | 'tiered', keys: string[], redisUrl: string): Promise<{ store: ApiKeyStore, ready?: () => Promise<void>, close: () => Promise<void> }> {
  const max = Math.max(10_000, keys.length * 2)
  if (backend === 'memory') {
    const store = createMemoryStore(max, 0)
    for (const [i, key] of keys.entries()) await store.set(hashApiKey(key), { id: `key-${i}`, active: true }, 3_600_000)
    return { store, close: () => store.close() }
  }
  const redis = new Redis(redisUrl)
  const log = Fastify().log
  const adapter = ioredisAdapter(redis)
  const guard = new RedisGuard(1000, log)
  const keyPrefix = `bench:hot:${keys.length}:`
  const bus = new InvalidationBus({ redis: adapter, channel: channelName(adapter, keyPrefix), guard, log })
  bus.start()
  const store = createTieredStore({
    bus,
    redis: adapter,
    keyPrefix,
    max,
    guard,
    log,
    revocationRetainMs: 60_000,
    staleMs: 0,
    telemetry: createTelemetry({ backend: 'tiered', metrics: false, entries: () => 0 })
  })
  await bus.whenTrusted(30_000)
  for (let start = 0; start < keys.length; start += 1000) {
    await Promise.all(keys.slice(start, start + 1000).map((key, i) =>
      store.set(hashApiKey(key), { id: `key-${start + i}`, active: true }, 3_600_000)))
  }
  return {
    store,
    // A fresh echo before each sample: the sample then starts with most of the deadline ahead.
    ready: async () => { await sleep(350); await bus.whenTrusted(30_000) },
    close: async () => { await store.close(); await bus.close(); await redis.quit() }
  }
}

async function hitRate (label: string, backend: 'memory' | 'tiered', keys: string[], redisUrl: string): Promise<HotPathFigure> {
  const { store, ready, close } = await storeFor(backend, keys, redisUrl)
  let misses = 0
  const rate = await opsPerSecond((i) => {
    if (store.peek(hashApiKey(keys[i % keys.length])) === undefined) misses++
  }, ready)
  await close()
  // A miss would measure Redis or lookup, not the hot path.
  if (misses > 0) throw new Error(`${label}: ${misses} lookups missed process memory`)
  return { label, opsPerSecond: rate }
}

/**
 * The plain-Map rows are a control: the same hash and one lookup in a bare Map of the same size.
 * When a large table slows the plugin and the control alike, the cost is the working set not
 * fitting the CPU caches, not the plugin.
 */
export async function measureHotPath (redisUrl: string, largeTable: number): Promise<HotPathFigure[]> {
  const small = benchKeys(10)
  const large = benchKeys(largeTable)
  const count = (n: number): string => n.toLocaleString('en-US')
  let sink = 0
  const control = async (keys: string[]): Promise<HotPathFigure> => {
    const table = new Map(keys.map((key) => [hashApiKey(key), true]))
    return {
      label: `control: hashApiKey + plain Map.get, ${count(keys.length)} keys`,
      opsPerSecond: await opsPerSecond((i) => { if (table.get(hashApiKey(keys[i % keys.length])) === true) sink++ })
    }
  }
  const figures: HotPathFigure[] = [
    { label: 'hashApiKey alone', opsPerSecond: await opsPerSecond((i) => { sink += hashApiKey(small[i % 10]).length }) },
    await hitRate('hashApiKey + peek, memory, 10 keys', 'memory', small, redisUrl),
    await hitRate(`hashApiKey + peek, memory, ${count(largeTable)} keys`, 'memory', large, redisUrl),
    await hitRate('hashApiKey + peek, tiered L1, 10 keys', 'tiered', small, redisUrl),
    await hitRate(`hashApiKey + peek, tiered L1, ${count(largeTable)} keys`, 'tiered', large, redisUrl),
    await control(small),
    await control(large)
  ]
  // Reading the sink keeps the measured work from being optimised away.
  if (sink === 0) throw new Error('the control rows found no key')
  return figures
}

if (require.main === module) {
  benchCommand((redisUrl) => measureHotPath(redisUrl, Number(process.env.BENCH_LARGE_TABLE ?? 100_000)), (figures) => {
    for (const { label, opsPerSecond } of figures) {
      console.log(`${label.padEnd(48)} ${Math.round(opsPerSecond).toLocaleString('en-US').padStart(12)} ops/s`)
    }
  })
}
