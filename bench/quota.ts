import { existsSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import Redis from 'ioredis'
import type { ApiKeyRecord } from '../lib'
import { Child, answerParent, tellParent } from '../test/helpers/child-process'
import { commandCalls, requestPathCommandCalls } from '../test/helpers/command-stats'
import { startRedis } from '../test/helpers/redis-server'
import { benchKeys } from './keys'
import { median } from './percentiles'

/**
 * `npm run bench:quota`: what a quota (CONTRACT section 14) costs.
 *
 * 1. The hook's cost with a quota over the same hook without one: in one process, with
 *    `inject()`, paired rounds over a bare app as bench/hook.ts measures (tiered backend, every
 *    key cached in memory, the owner's lease held in memory).
 * 2. A hot owner across four processes, each sending as fast as it can through `inject()`
 *    (tiered backend): Redis round trips (EVALSHA/EVAL calls) and commands (those run inside
 *    scripts too; INFO commandstats) per request, and requests per second, at a steady rate
 *    (leases warmed up first); then, from a cold start, the accepted cost against a limit the
 *    load reaches.
 * 3. The same load limited instead by `rateLimitByApiKey` with @fastify/rate-limit's Redis store.
 *
 * Environment: BENCH_QUOTA_SECONDS (5, per load run), BENCH_QUOTA_ROUNDS (1500, hook rounds).
 */

const SECONDS = Number(process.env.BENCH_QUOTA_SECONDS || 5)
const ROUNDS = Number(process.env.BENCH_QUOTA_ROUNDS || 1500)
const BATCH = 40
const PROCESSES = 4
const CONCURRENCY = 8
const KEYS = benchKeys(20)
// The measured owner's keys; the others belong to an owner that only warms the code up.
const MEASURED = KEYS.slice(0, 10)
const WARM_UP = KEYS.slice(10)
const UNLIMITED = { limit: Number.MAX_SAFE_INTEGER, period: 'month' as const }
const DIST = path.resolve(__dirname, '../dist') + path.sep

type Mode = 'none' | 'quota' | 'rate-limit'

interface WorkerConfig {
  redisUrl: string
  mode: Mode
  /** Whether the warm-up also brings the measured owner's lease to its steady size. */
  warmOwner?: boolean
  quota?: { limit: number, period: 'hour' | 'month' }
}

/** The measured keys belong to one owner: one hot owner. */
function records (hashApiKey: (key: string) => string, quota: WorkerConfig['quota']): Map<string, ApiKeyRecord> {
  return new Map(KEYS.map((key, i) => [hashApiKey(key), {
    id: `key-${i}`, ownerId: i < MEASURED.length ? 'hot-owner' : 'warm-up', active: true, ...(quota !== undefined && { quota })
  }]))
}

/** The compiled package, a copy of its own per app (see bench/hook.ts: V8's type feedback is per copy). */
function freshPackage (): typeof import('../lib') {
  for (const file of Object.keys(require.cache)) if (file.startsWith(DIST)) delete require.cache[file]
  return require('../dist')
}

async function pluginApp (config: WorkerConfig, redis: Redis): Promise<FastifyInstance> {
  const { default: fastifyAuthCache, hashApiKey, rateLimitByApiKey } = freshPackage()
  const table = records(hashApiKey, config.mode === 'quota' ? config.quota ?? UNLIMITED : undefined)
  const app = Fastify({ logger: false })
  await app.register(fastifyAuthCache, {
    backend: 'tiered',
    strict: true,
    redis,
    redisTimeoutMs: 1000,
    apiKeys: { lookup: async (keyHash) => table.get(keyHash) ?? null, ttlSeconds: 3600, keyPrefix: 'bench:quota:' }
  })
  if (config.mode === 'rate-limit') {
    const { default: fastifyRateLimit } = await import('@fastify/rate-limit')
    await app.register(fastifyRateLimit, { ...rateLimitByApiKey({ max: Number.MAX_SAFE_INTEGER, timeWindowMs: 3_600_000 }), redis, nameSpace: 'bench:rate-limit:' })
  }
  app.get('/', async () => 'ok')
  await app.ready()
  return app
}

/** Sends as fast as it can for `seconds`; answers the statuses seen. */
async function load (app: FastifyInstance, seconds: number, keys = MEASURED): Promise<Record<number, number>> {
  const statuses: Record<number, number> = {}
  const endAt = performance.now() + seconds * 1000
  let i = 0
  async function loop (): Promise<void> {
    while (performance.now() < endAt) {
      const { statusCode } = await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': keys[i++ % keys.length] } })
      statuses[statusCode] = (statuses[statusCode] ?? 0) + 1
      if (statusCode === 429) await new Promise((resolve) => setImmediate(resolve))
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, loop))
  return statuses
}

async function worker (config: WorkerConfig): Promise<void> {
  const redis = new Redis(config.redisUrl)
  const app = await pluginApp(config, redis)
  // Warm the code up on another owner; the measured owner starts with no lease unless asked.
  await load(app, 0.5, WARM_UP)
  if (config.warmOwner === true) await load(app, 1.5)
  answerParent({ load: ({ seconds }: { seconds: number }) => load(app, seconds) }, async () => {
    await app.close()
    await redis.quit()
  })
  tellParent('ready')
}

interface LoadFigure {
  label: string
  requests: number
  perSecond: number
  /** EVALSHA and EVAL calls: each is one round trip, whatever it runs inside. */
  scriptCallsPerRequest: number
  /** Every command Redis ran for requests, those inside scripts included. */
  commandsPerRequest: number
  accepted: number
  refused: number
}

async function scriptCalls (admin: Redis): Promise<number> {
  const calls = await commandCalls(admin)
  return (calls.get('evalsha') ?? 0) + (calls.get('eval') ?? 0)
}

async function measureLoad (label: string, redisUrl: string, config: Omit<WorkerConfig, 'redisUrl'>): Promise<LoadFigure> {
  const admin = new Redis(redisUrl)
  await admin.flushall()
  const workers = await Child.startAll(PROCESSES, (i) => ({
    name: `quota bench ${label} ${i}`,
    file: __filename,
    args: ['--worker', JSON.stringify({ ...config, redisUrl })],
    callTimeoutMs: (SECONDS + 60) * 1000
  }))
  try {
    await sleep(200)
    const commandsBefore = await requestPathCommandCalls(admin)
    const scriptsBefore = await scriptCalls(admin)
    const started = performance.now()
    const results: Array<Record<number, number>> = await Promise.all(workers.map((child) => child.call('load', { seconds: SECONDS })))
    const elapsedS = (performance.now() - started) / 1000
    const commands = await requestPathCommandCalls(admin) - commandsBefore
    const scripts = await scriptCalls(admin) - scriptsBefore
    let requests = 0
    let accepted = 0
    let refused = 0
    for (const statuses of results) {
      for (const [status, count] of Object.entries(statuses)) {
        requests += count
        if (status === '200') accepted += count
        else if (status === '429') refused += count
        else throw new Error(`${label}: ${count} answers ${status}`)
      }
    }
    return { label, requests, perSecond: requests / elapsedS, scriptCallsPerRequest: scripts / requests, commandsPerRequest: commands / requests, accepted, refused }
  } finally {
    await Promise.all(workers.map((child) => child.stop()))
    admin.disconnect()
  }
}

/** Microseconds per request of one batch. */
async function batch (app: FastifyInstance, round: number): Promise<number> {
  const started = performance.now()
  for (let i = 0; i < BATCH; i++) {
    const response = await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': MEASURED[(round + i) % MEASURED.length] } })
    if (response.statusCode !== 200) throw new Error(`answered ${response.statusCode}`)
  }
  const us = ((performance.now() - started) * 1000) / BATCH
  await new Promise((resolve) => setImmediate(resolve))
  return us
}

/** The hook with a quota over the hook without one, paired per round against a bare app. */
async function measureHook (redisUrl: string): Promise<{ withoutUs: number, withUs: number, differenceUs: number }> {
  const redis = new Redis(redisUrl)
  const bare = Fastify({ logger: false })
  bare.get('/', async () => 'ok')
  const apps: Record<string, FastifyInstance> = {
    bare,
    none: await pluginApp({ redisUrl, mode: 'none' }, redis),
    quota: await pluginApp({ redisUrl, mode: 'quota' }, redis)
  }
  for (let r = 0; r < 200; r++) for (const app of Object.values(apps)) await batch(app, r)
  const none: number[] = []
  const quota: number[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const times = new Map<string, number>()
    for (const name of Object.keys(apps).sort(() => Math.random() - 0.5)) times.set(name, await batch(apps[name]!, round))
    none.push(times.get('none')! - times.get('bare')!)
    quota.push(times.get('quota')! - times.get('bare')!)
  }
  for (const app of Object.values(apps)) await app.close()
  await redis.quit()
  return { withoutUs: median(none), withUs: median(quota), differenceUs: median(quota.map((value, i) => value - none[i]!)) }
}

async function main (): Promise<void> {
  if (!existsSync(path.join(DIST, 'index.js'))) throw new Error('run `npm run build` first: the bench measures the compiled package')
  const redis = await startRedis()
  try {
    const hook = await measureHook(redis.url)
    console.log(`hook cost, median of paired differences over ${ROUNDS} rounds of ${BATCH} inject() (tiered, keys and lease in memory)`)
    console.log('| app | µs over bare |\n|---|---:|')
    console.log(`| without quota | ${hook.withoutUs.toFixed(2)} |\n| with quota (hot owner) | ${hook.withUs.toFixed(2)} |\n| difference (paired) | ${hook.differenceUs.toFixed(2)} |`)

    const unlimited = await measureLoad('quota, never reached (steady: leases warmed)', redis.url, { mode: 'quota', warmOwner: true })
    // Reached within the run unless the machine serves fewer than 1,000 requests a second.
    const limit = 5000
    const reached = await measureLoad('quota, reached', redis.url, { mode: 'quota', quota: { limit, period: 'hour' } })
    const rateLimited = await measureLoad('rateLimitByApiKey + @fastify/rate-limit Redis store', redis.url, { mode: 'rate-limit', warmOwner: true })
    const without = await measureLoad('neither', redis.url, { mode: 'none', warmOwner: true })
    console.log(`\none owner, ${PROCESSES} processes x ${CONCURRENCY} concurrent inject(), ${SECONDS} s each, tiered backend, one redis-server`)
    console.log('| limiter | requests/s | Redis round trips/request | Redis commands/request (inside scripts too) | accepted | refused (429) |\n|---|---:|---:|---:|---:|---:|')
    for (const f of [without, unlimited, reached, rateLimited]) {
      const acceptedText = f === reached ? `${f.accepted} of limit ${limit}` : String(f.accepted)
      console.log(`| ${f.label} | ${Math.round(f.perSecond)} | ${f.scriptCallsPerRequest.toFixed(4)} | ${f.commandsPerRequest.toFixed(4)} | ${acceptedText} | ${f.refused} |`)
    }
    if (reached.accepted > limit) throw new Error(`over-spent: ${reached.accepted} accepted of ${limit}`)
  } finally {
    await redis.destroy()
  }
}

if (process.argv[2] === '--worker') {
  worker(JSON.parse(process.argv[3]!) as WorkerConfig).catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
} else {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
