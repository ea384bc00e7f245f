import { spawnSync } from 'node:child_process'
import path from 'node:path'
import Fastify, { type FastifyContextConfig, type FastifyInstance } from 'fastify'
import Redis from 'ioredis'
import { setTimeout as sleep } from 'node:timers/promises'
import type { BackendName } from '../lib'
import { benchCommand } from './cli'
import { benchKeys } from './keys'
import { median } from './percentiles'

/**
 * `npm run bench:hook`: what the plugin's onRequest hook costs per request over the least any
 * API-key hook can do, measured in process with `inject()` so that no load generator shares
 * the CPU. Apps serving the same route:
 * - bare: no hook;
 * - floor: a hook that hashes the key with `crypto.hash` and reads one lru-cache entry into a
 *   decorated request property, the minimum of an API-key cache hit (bench/floor-app.ts);
 * - floor, second copy: the same floor again, a control: its distance to the floor is the
 *   noise of the method, and should be within ±0.1 µs;
 * - the plugin on a backend, every key cached in process memory;
 * - the plugin on memory, with a route that requires scopes every key holds (a hit on a scoped
 *   route must cost no more than on an unscoped one);
 * - the plugin on memory, with a route whose key is optional (`config.apiKey.optional`), keys sent;
 * - the plugin on memory, every record with a 10-entry `allowedIps` whose last entry admits the
 *   client (127.0.0.1), so that every entry is compared.
 * Each row is measured in a process of its own that holds only bare, floor and the row's app.
 * Each round runs a small batch of requests on every app, in a shuffled order; the figure is the
 * median over rounds of the paired difference per request, which cancels the drift of a busy
 * machine that separate runs would suffer from.
 *
 * A production process runs one app. Here three share a process, so each app gets its own copy
 * of the code it runs (the package, the floor), loaded afresh: V8 keeps its type feedback per
 * copy of a function, and code shared by apps whose requests have different shapes (each
 * Fastify instance makes its own Request class) turns polymorphic and slower than it is in
 * production. Two apps sharing one floor closure measured 0.1-0.4 µs slower than the floor.
 *
 * Environment: BENCH_HOOK_ROUNDS (2000), BENCH_HOOK_BATCH (40).
 */

const ROUNDS = Number(process.env.BENCH_HOOK_ROUNDS || 2000)
const BATCH = Number(process.env.BENCH_HOOK_BATCH || 40)
const KEYS = benchKeys(10)

/** Loads the modules whose files start with `root` anew, independent of the copies loaded before. */
function freshCopy<T> (root: string, load: () => T): T {
  for (const file of Object.keys(require.cache)) if (file.startsWith(root)) delete require.cache[file]
  return load()
}

const DIST = path.resolve(__dirname, '../dist') + path.sep
// The compiled package users run (npm run bench:hook builds it first), not the sources through
// tsx, whose module transform puts a getter in front of every imported binding.
const freshPackage = (): typeof import('../lib') => freshCopy(DIST, () => require('../dist'))
const FLOOR = require.resolve('./floor-app')
const freshFloor = (): FastifyInstance => freshCopy(FLOOR, () => (require('./floor-app') as typeof import('./floor-app')).floorApp(KEYS))

function bareApp (): FastifyInstance {
  const app = Fastify({ logger: false })
  app.get('/', async () => 'ok')
  return app
}

// What a typical key holds, and what a scoped route asks of it.
const HELD_SCOPES = ['orders:read', 'orders:write', 'invoices:read', 'customers:read']
const ROUTE_SCOPES = ['orders:read', 'orders:write']
// Nine ranges that miss inject()'s 127.0.0.1, IPv4 and IPv6, then one that holds it.
const ALLOWED_IPS = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '198.51.100.7', '203.0.113.0/24',
  '2001:db8::/32', '2001:db8:1::1', 'fd00::/8', '100.64.0.0/10', '127.0.0.0/8']

type Variant = 'plain' | 'scoped' | 'optional' | 'allowed-ips'

async function pluginApp (backend: BackendName, redis: Redis | undefined, variant: Variant = 'plain'): Promise<FastifyInstance> {
  const { default: fastifyAuthCache, hashApiKey } = freshPackage()
  const table = new Map(KEYS.map((key, i) => [hashApiKey(key), {
    id: `key-${i}`,
    active: true,
    scopes: HELD_SCOPES,
    ...(variant === 'allowed-ips' && { allowedIps: ALLOWED_IPS })
  }]))
  const app = Fastify({ logger: false })
  await app.register(fastifyAuthCache, {
    backend,
    strict: true,
    ...(redis !== undefined && { redis }),
    apiKeys: { lookup: (keyHash) => table.get(keyHash) ?? null, ttlSeconds: 3600, keyPrefix: `bench:hook:${backend}:` }
  })
  const config: FastifyContextConfig = variant === 'scoped'
    ? { apiKey: { scopes: ROUTE_SCOPES } }
    : variant === 'optional' ? { apiKey: { optional: true } } : {}
  app.get('/', { config }, async () => 'ok')
  return app
}

/** Microseconds per request for one batch. */
async function batch (app: FastifyInstance, round: number): Promise<number> {
  const started = performance.now()
  for (let i = 0; i < BATCH; i++) {
    const response = await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': KEYS[(round + i) % KEYS.length] } })
    if (response.statusCode !== 200) throw new Error(`answered ${response.statusCode}`)
  }
  const us = ((performance.now() - started) * 1000) / BATCH
  // inject() finishes each response with a setImmediate, which a loop of awaited injects never
  // lets run: without this, every response of a batch stays in memory until the next turn of
  // the event loop, and a run of thousands of batches grows the heap by gigabytes.
  await new Promise((resolve) => setImmediate(resolve))
  return us
}

export interface HookFigure { label: string, overBareUs: number, overFloorUs: number }

/** What one process measures beside its bare and floor apps. */
const GROUPS = ['floor, second copy', 'memory', 'memory, scoped route', 'memory, optional route', 'memory, 10-entry allowedIps', 'tiered'] as const
type Group = typeof GROUPS[number]

async function groupApp (group: Group, redis: Redis): Promise<FastifyInstance> {
  switch (group) {
    case 'floor, second copy': return freshFloor()
    case 'memory': return await pluginApp('memory', undefined)
    case 'memory, scoped route': return await pluginApp('memory', undefined, 'scoped')
    case 'memory, optional route': return await pluginApp('memory', undefined, 'optional')
    case 'memory, 10-entry allowedIps': return await pluginApp('memory', undefined, 'allowed-ips')
    case 'tiered': return await pluginApp('tiered', redis)
  }
}

/** One group in this process: the paired differences over bare of the floor and of the group's app. */
async function measureGroup (group: Group, redisUrl: string): Promise<{ floor: number[], app: number[] }> {
  const redis = new Redis(redisUrl)
  const apps: Record<string, FastifyInstance> = { bare: bareApp(), floor: freshFloor(), [group]: await groupApp(group, redis) }
  for (const app of Object.values(apps)) await app.ready()
  // Warm every key into process memory (tiered serves from it once its channel is proven).
  for (let r = 0; r < 200; r++) for (const app of Object.values(apps)) await batch(app, r)
  await sleep(100)

  const names = Object.keys(apps)
  const floor: number[] = []
  const measured: number[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const order = [...names].sort(() => Math.random() - 0.5)
    const times = new Map<string, number>()
    for (const name of order) times.set(name, await batch(apps[name], round))
    floor.push(times.get('floor')! - times.get('bare')!)
    measured.push(times.get(group)! - times.get('bare')!)
  }
  for (const app of Object.values(apps)) await app.close()
  await redis.quit()
  return { floor, app: measured }
}

/**
 * Each group runs in a process of its own, beside its own bare and floor apps: a production
 * process runs one app, and every further app in the process (its code, its requests) crowds
 * the CPU caches that all of them share, which inflated every figure by 0.1-0.3 µs and the
 * plugin's, whose hit touches more memory than the floor's, the most.
 */
export async function measureHook (redisUrl: string): Promise<HookFigure[]> {
  const figures: HookFigure[] = []
  for (const group of GROUPS) {
    // tsx's loader is in execArgv: the child runs this file as the parent does.
    const child = spawnSync(process.execPath, [...process.execArgv, __filename, '--group', group, redisUrl], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    if (child.status !== 0) throw new Error(`bench:hook group "${group}" failed (exit ${child.status})`)
    const { floor, app } = JSON.parse(child.stdout) as { floor: number[], app: number[] }
    if (group === 'floor, second copy') figures.push({ label: 'floor: crypto.hash + one lru-cache get', overBareUs: median(floor), overFloorUs: 0 })
    figures.push({
      label: group.startsWith('floor') ? `${group} (control: the method's noise)` : `fastify-auth-cache, ${group}`,
      overBareUs: median(app),
      overFloorUs: median(app.map((value, i) => value - floor[i]))
    })
  }
  return figures
}

if (require.main === module && process.argv[2] === '--group') {
  measureGroup(process.argv[3] as Group, process.argv[4]).then(
    (samples) => process.stdout.write(JSON.stringify(samples) + '\n'),
    (err) => { console.error(err); process.exit(1) })
} else if (require.main === module) {
  benchCommand(measureHook, (figures) => {
    console.log(`hook cost per request, median of paired differences over ${ROUNDS} rounds of ${BATCH} inject() each, one process per row`)
    console.log('| app | µs over bare | µs over floor |\n|---|---:|---:|')
    for (const f of figures) console.log(`| ${f.label} | ${f.overBareUs.toFixed(2)} | ${f.overFloorUs.toFixed(2)} |`)
  })
}
