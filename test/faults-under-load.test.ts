import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { Agent, request } from 'node:http'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type Redis from 'ioredis'
import { hashApiKey } from '../lib'
import { percentile, sortedCopy } from '../bench/percentiles'
import type { DeleteSettled, LoadServerConfig, Revoked, ServerStats } from './fixtures/load-protocol'
import { Child } from './helpers/child-process'
import { startRedis, type RedisServer } from './helpers/redis-server'
import { sleepUntil, until } from './helpers/wait'

/*
 * Steady HTTP traffic through two real servers, one per Redis backend, sharing one private Redis
 * that is stalled (CLIENT PAUSE), then killed, then restarted empty. Keys are revoked during each
 * outage. What is asserted, per backend:
 *
 * - Availability: while lookup is healthy no request fails: every active key gets 200 with its own
 *   record, every unknown key 401, and nothing else is ever answered (no 5xx, no dropped request).
 * - Latency: every Redis call on the request path is bounded by redisTimeoutMs, and a request makes
 *   at most two (read, then fill), so no request started during an outage or its recovery takes
 *   more than 2 x redisTimeoutMs plus slack for a loaded machine. Only the first requests and the
 *   guard's occasional probes pay the timeout; the rest skip Redis, so few requests are slow and
 *   the median stays near the healthy one.
 * - Recovery without restarting the servers: after each outage, requests are again answered from
 *   Redis (hits grow, no backend errors, no lookups for active keys) and, after the empty restart,
 *   Redis holds every active key again.
 * - Revocation: the test revokes a key at the source of truth and calls apiKeyCache.delete without
 *   awaiting it. The delete may fail while Redis is down; that is expected. The key must still be
 *   refused to every request sent after the revocation, once requests already in flight are done:
 *   in this process the delete drops the key from process memory at once, Redis cannot be read
 *   during the outage (so lookup, which answers "inactive", decides), and afterwards either the
 *   delete reached Redis before any later read on the same connection (stall: commands on one
 *   connection run in order once the pause ends) or Redis came back empty (kill). A request already
 *   in flight when the revocation happened may still get 200, but it ends within the request-path
 *   bound, so the grace is that bound, not the record's 60 s TTL: a stale copy surviving anywhere
 *   would be served for a minute and caught here. Deletes that fail, and how they ended, are
 *   reported. With a delete that never reached a Redis that kept its data, the TTL would be the
 *   bound instead; no fault here can produce that.
 */

const REDIS_TIMEOUT_MS = 100
// One read and one fill, each bounded by redisTimeoutMs, plus room for a loaded 2-core machine.
// Without the bound, requests wait for the end of the outage: 2.5 s and more here.
const LATENCY_BOUND_MS = 2 * REDIS_TIMEOUT_MS + 400
// Seen by the client, time queued in its own process and the kernel is added: still below what
// a request waiting for ioredis' offline queue or the end of an outage would take.
const CLIENT_LATENCY_BOUND_MS = 2000
// A request in flight when a key is revoked ends within the same bound.
const REVOCATION_GRACE_MS = LATENCY_BOUND_MS
const STALL_MS = 2500
const KILL_MS = 2500
const REVOKE_AFTER_MS = 800
const RECOVERY_DEADLINE_MS = 12_000
const CONCURRENCY = 3
const THINK_MS = 8
const MAX_REQUESTS = 40_000
const REQUEST_TIMEOUT_MS = 5000
const ACTIVE_KEYS = 40
const REVOCABLE_KEYS = 4
const UNKNOWN_KEYS = 20
const BACKENDS = ['redis', 'tiered'] as const
type Backend = typeof BACKENDS[number]
type Kind = 'active' | 'unknown' | 'fresh-unknown' | 'revocable'

interface Sample {
  backend: Backend
  kind: Kind
  index: number
  phase: string
  start: number
  /** As seen by the client. */
  latency: number
  /** As measured inside the server, from the request's arrival to its reply; NaN when none came. */
  serverMs: number
  /** HTTP status; 0 when the request failed or timed out, -1 when a 200 carried another key's record. */
  status: number
}

interface Window { name: string, from: number, to: number }

interface Revocation {
  server: LoadServer
  index: number
  /** When the revocation was ordered (the source of truth may change from then on), and acknowledged. */
  orderedAt: number
  ackAt: number
  /** Names the revocation in the server's reports of how its delete ended. */
  id: number
}

const newKey = (): string => `load_${randomBytes(16).toString('hex')}`

/** One load server process (test/fixtures/load-server.ts). */
class LoadServer {
  readonly deletes = new Map<number, DeleteSettled>()

  private constructor (readonly backend: Backend, readonly keyPrefix: string, private readonly child: Child) {
    child.on('deleteSettled', (event) => { this.deletes.set(event.id, event as unknown as DeleteSettled) })
  }

  get port (): number {
    return this.child.ready.port
  }

  static async start (t: TestContext, backend: Backend, redisUrl: string, activeHashes: string[]): Promise<LoadServer> {
    const keyPrefix = `load-${backend}:`
    const config: LoadServerConfig = { redisUrl, backend, keyPrefix, redisTimeoutMs: REDIS_TIMEOUT_MS, activeHashes }
    const child = await Child.start({ name: `load server (${backend})`, file: join(__dirname, 'fixtures', 'load-server.ts'), args: [JSON.stringify(config)] })
    t.after(() => child.kill())
    return new LoadServer(backend, keyPrefix, child)
  }

  stats (): Promise<ServerStats> {
    return this.child.call('stats')
  }

  /** Resolves, with the id of the revocation, once the source of truth refuses the key and the delete was issued. */
  async revoke (keyHash: string): Promise<number> {
    return (await this.child.call<Revoked>('revoke', { keyHash })).id
  }

  async close (): Promise<void> {
    await this.child.stop()
  }
}

interface Reply { status: number, serverMs: number }

/** GET /data with a key; status -1 when a 200 answered another key's record, 0 when none came. */
function get (agent: Agent, port: number, key: string, expectedId: string | undefined): Promise<Reply> {
  return new Promise((resolve) => {
    const failed = (): void => resolve({ status: 0, serverMs: NaN })
    const req = request({ host: '127.0.0.1', port, path: '/data', agent, headers: { 'x-api-key': key }, timeout: REQUEST_TIMEOUT_MS }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => {
        const serverMs = Number(res.headers['x-server-ms'])
        if (res.statusCode === 200 && expectedId !== undefined && JSON.parse(body).id !== expectedId) resolve({ status: -1, serverMs })
        else resolve({ status: res.statusCode ?? 0, serverMs })
      })
      res.on('error', failed)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', failed)
    req.end()
  })
}

/** Of unsorted values; 'upper' so that the median of an even count is the upper middle value. */
const upperPercentile = (values: number[], p: number): number => percentile(sortedCopy(values), p, 'upper')

const countBy = <T>(items: T[], key: (item: T) => string | number): Record<string, number> =>
  items.reduce<Record<string, number>>((counts, item) => {
    const k = String(key(item))
    counts[k] = (counts[k] ?? 0) + 1
    return counts
  }, {})

test('faults under load: Redis stalled, killed and restarted empty', { timeout: 90_000 }, async (t) => {
  const redis: RedisServer = await startRedis()
  t.after(() => redis.destroy())
  const admin: Redis = redis.client()
  t.after(() => admin.disconnect())

  const active = Array.from({ length: ACTIVE_KEYS + REVOCABLE_KEYS }, newKey)
  const unknown = Array.from({ length: UNKNOWN_KEYS }, newKey)
  const activeHashes = active.map(hashApiKey)
  const revocableIndex = (i: number): number => ACTIVE_KEYS + i

  const servers = await Promise.all(BACKENDS.map((backend) => LoadServer.start(t, backend, redis.url, activeHashes)))
  const agents = servers.map(() => new Agent({ keepAlive: true, maxSockets: CONCURRENCY }))
  t.after(() => { for (const agent of agents) agent.destroy() })

  const samples: Sample[] = []
  const windows: Window[] = []
  const revocations: Revocation[] = []
  const recoveries: Array<{ backend: Backend, after: string, ms: number }> = []
  let phase = 'warm-up'
  // An object, so that the workers' loop condition visibly reads state others change.
  const traffic = { running: true, sent: 0 }

  async function send (s: number, kind: Kind, index: number): Promise<void> {
    const key = kind === 'unknown' ? unknown[index]! : kind === 'fresh-unknown' ? newKey() : active[index]!
    const expectedId = kind === 'active' || kind === 'revocable' ? `key-${index}` : undefined
    const start = performance.now()
    traffic.sent++
    const { status, serverMs } = await get(agents[s]!, servers[s]!.port, key, expectedId)
    samples.push({ backend: BACKENDS[s]!, kind, index, phase, start, latency: performance.now() - start, serverMs, status })
  }

  // Every key once, so every answer is cached before the faults begin.
  for (let s = 0; s < servers.length; s++) {
    for (let i = 0; i < ACTIVE_KEYS; i++) await send(s, 'active', i)
    for (let i = 0; i < REVOCABLE_KEYS; i++) await send(s, 'revocable', revocableIndex(i))
    for (let i = 0; i < UNKNOWN_KEYS; i++) await send(s, 'unknown', i)
  }

  async function worker (s: number): Promise<void> {
    while (traffic.running && traffic.sent < MAX_REQUESTS) {
      const roll = Math.random()
      if (roll < 0.55) await send(s, 'active', Math.floor(Math.random() * ACTIVE_KEYS))
      else if (roll < 0.75) await send(s, 'revocable', revocableIndex(Math.floor(Math.random() * REVOCABLE_KEYS)))
      else if (roll < 0.95) await send(s, 'unknown', Math.floor(Math.random() * UNKNOWN_KEYS))
      else await send(s, 'fresh-unknown', 0)
      await sleep(THINK_MS)
    }
  }
  const workers = Promise.all(servers.flatMap((_, s) => Array.from({ length: CONCURRENCY }, () => worker(s))))

  async function revokeEverywhere (index: number): Promise<void> {
    await Promise.all(servers.map(async (server) => {
      const orderedAt = performance.now()
      const id = await server.revoke(activeHashes[index]!)
      revocations.push({ server, index, orderedAt, ackAt: performance.now(), id })
    }))
  }

  /**
   * Served from Redis again: over a window with traffic, hits grow while no Redis call fails and
   * lookup is not asked about active keys; after an empty restart, Redis holds every active key.
   */
  async function untilRecovered (after: string, since: number, refilled: boolean): Promise<void> {
    await Promise.all(servers.map(async (server) => {
      await until(`${server.backend} recovered after ${after}`, async () => {
        const before = await server.stats()
        await sleep(500)
        const now = await server.stats()
        let recovered = now.cache.backendErrors === before.cache.backendErrors &&
          now.lookups.active === before.lookups.active &&
          now.cache.hits > before.cache.hits
        if (recovered && refilled) {
          const stored = await admin.exists(...activeHashes.slice(0, ACTIVE_KEYS).map((h) => server.keyPrefix + h)).catch(() => 0)
          recovered = stored === ACTIVE_KEYS
        }
        return recovered
      }, { deadlineMs: RECOVERY_DEADLINE_MS, pauseMs: 0 })
      recoveries.push({ backend: server.backend, after, ms: performance.now() - since })
    }))
  }

  let runError: unknown
  try {
    phase = 'healthy'
    const healthyAt = performance.now()
    await sleep(1000)
    windows.push({ name: 'healthy', from: healthyAt, to: performance.now() })

    phase = 'stall'
    const stallAt = performance.now()
    await admin.call('CLIENT', 'PAUSE', String(STALL_MS), 'ALL')
    await sleep(REVOKE_AFTER_MS)
    await revokeEverywhere(revocableIndex(0))
    await sleepUntil(stallAt + STALL_MS)
    const stallEnd = performance.now()
    windows.push({ name: 'stall', from: stallAt, to: stallEnd })
    phase = 'stall-recovery'
    await untilRecovered('the stall', stallEnd, false)
    windows.push({ name: 'stall-recovery', from: stallEnd, to: performance.now() })
    await sleep(500)

    phase = 'kill'
    const killAt = performance.now()
    await redis.stop()
    await sleep(REVOKE_AFTER_MS)
    await revokeEverywhere(revocableIndex(1))
    await sleepUntil(killAt + KILL_MS)
    await redis.start()
    const backAt = performance.now()
    windows.push({ name: 'kill', from: killAt, to: backAt })
    phase = 'restart-recovery'
    await untilRecovered('the empty restart', backAt, true)
    windows.push({ name: 'restart-recovery', from: backAt, to: performance.now() })
    phase = 'after'
    await sleep(500)
  } catch (err) {
    runError = err
  } finally {
    traffic.running = false
    await workers
  }
  const finalStats = await Promise.all(servers.map((server) => server.stats()))
  await Promise.all(servers.map((server) => server.close()))
  if (runError !== undefined) throw runError

  const inWindow = (sample: Sample, name: string): boolean => {
    const w = windows.find((window) => window.name === name)!
    return sample.start >= w.from && sample.start < w.to
  }

  for (const [s, backend] of BACKENDS.entries()) {
    await t.test(`${backend} backend`, async (t) => {
      const mine = samples.filter((sample) => sample.backend === backend)
      const stats = finalStats[s]!
      const during = (...names: string[]): Sample[] => mine.filter((sample) => names.some((name) => inWindow(sample, name)))
      const latencies = (name: string): number[] => during(name).map((sample) => sample.latency)
      const troubled = during('stall', 'stall-recovery', 'kill', 'restart-recovery')
      const outageServerMs = during('stall', 'kill').map((sample) => sample.serverMs)
      const fmt = (ms: number): string => ms.toFixed(1)

      t.diagnostic(`requests: ${mine.length}, by status: ${JSON.stringify(countBy(mine, (sample) => sample.status))}`)
      t.diagnostic(`requests by phase: ${JSON.stringify(countBy(mine, (sample) => sample.phase))}`)
      for (const name of ['healthy', 'stall', 'stall-recovery', 'kill', 'restart-recovery']) {
        const l = latencies(name)
        const server = during(name).map((sample) => sample.serverMs)
        t.diagnostic(`${name}: ${l.length} requests, latency p50 ${fmt(upperPercentile(l, 50))} ms, p99 ${fmt(upperPercentile(l, 99))} ms, ` +
          `max ${fmt(Math.max(...l))} ms (in the server: p50 ${fmt(upperPercentile(server, 50))}, max ${fmt(Math.max(...server))} ms), ` +
          `${server.filter((ms) => ms >= REDIS_TIMEOUT_MS).length} at or over ${REDIS_TIMEOUT_MS} ms in the server`)
      }
      for (const sample of [...troubled].sort((a, b) => b.latency - a.latency).slice(0, 5)) {
        const w = windows.find((window) => inWindow(sample, window.name))!
        t.diagnostic(`slow: ${fmt(sample.latency)} ms (server ${fmt(sample.serverMs)} ms), ${sample.kind} key-${sample.index}, ` +
          `${fmt(sample.start - w.from)} ms into ${w.name}, status ${sample.status}`)
      }
      t.diagnostic(`recovery: ${recoveries.filter((r) => r.backend === backend).map((r) => `${fmt(r.ms)} ms after ${r.after}`).join(', ')}`)
      for (const revocation of revocations.filter((r) => r.server.backend === backend)) {
        const after = mine.filter((sample) => sample.index === revocation.index && sample.start >= revocation.ackAt)
        const deletion = revocation.server.deletes.get(revocation.id)
        const outcome = deletion === undefined ? 'still pending' : deletion.ok ? `ok after ${fmt(deletion.ms)} ms` : `failed after ${fmt(deletion.ms)} ms (${deletion.error})`
        t.diagnostic(`revoked key-${revocation.index}: delete ${outcome}, ` +
          `afterwards ${JSON.stringify(countBy(after, (sample) => sample.status))}, ` +
          `accepted ${after.filter((sample) => sample.status === 200 && sample.start < revocation.ackAt + REVOCATION_GRACE_MS).length} ` +
          `times within the ${REVOCATION_GRACE_MS} ms grace for requests in flight`)
      }
      t.diagnostic(`cache stats: ${JSON.stringify(stats.cache)}, lookups ${JSON.stringify(stats.lookups)}, warnings logged ${stats.warnings}`)

      // The faults were felt, under real traffic.
      assert.ok(stats.cache.backendErrors >= 10, `backend errors ${stats.cache.backendErrors}`)
      for (const name of ['stall', 'kill']) assert.ok(latencies(name).length >= 100, `${latencies(name).length} requests during ${name}`)

      // Availability: nothing but 200 for active keys and 401 for unknown ones, whatever Redis does.
      assert.deepEqual(countBy(mine.filter((sample) => sample.status !== 200 && sample.status !== 401), (sample) => sample.status), {})
      const revoked = new Set(revocations.filter((r) => r.server.backend === backend).map((r) => r.index))
      const mustPass = mine.filter((sample) => sample.kind === 'active' || (sample.kind === 'revocable' && !revoked.has(sample.index)))
      assert.deepEqual(countBy(mustPass.filter((sample) => sample.status !== 200), (sample) => sample.phase), {}, 'active keys refused')
      const mustFail = mine.filter((sample) => sample.kind === 'unknown' || sample.kind === 'fresh-unknown')
      assert.deepEqual(countBy(mustFail.filter((sample) => sample.status !== 401), (sample) => sample.phase), {}, 'unknown keys accepted')

      // Revocation: accepted before, refused to everything sent once in-flight requests are done.
      for (const revocation of revocations.filter((r) => r.server.backend === backend)) {
        const forKey = mine.filter((sample) => sample.index === revocation.index)
        // Requests answered before the revocation was ordered were accepted; those in flight then may go either way.
        assert.ok(forKey.filter((sample) => sample.start + sample.latency < revocation.orderedAt).every((sample) => sample.status === 200))
        const later = forKey.filter((sample) => sample.start >= revocation.ackAt + REVOCATION_GRACE_MS)
        assert.ok(later.length >= 20, `only ${later.length} requests for key-${revocation.index} after its revocation`)
        assert.deepEqual(countBy(later.filter((sample) => sample.status !== 401), (sample) => sample.phase), {},
          `key-${revocation.index} accepted after its revocation`)
      }

      // Latency, measured inside the server so that a loaded machine's queueing elsewhere does not
      // count: the timeout bounds the first requests of an outage; the rest skip Redis.
      const worstInServer = Math.max(...troubled.map((sample) => sample.serverMs))
      assert.ok(worstInServer <= LATENCY_BOUND_MS, `a request spent ${fmt(worstInServer)} ms in the server, over ${LATENCY_BOUND_MS} ms`)
      const slow = outageServerMs.filter((ms) => ms >= REDIS_TIMEOUT_MS).length
      assert.ok(slow <= outageServerMs.length * 0.1, `${slow} of ${outageServerMs.length} outage requests waited for the timeout`)
      assert.ok(upperPercentile(outageServerMs, 50) < REDIS_TIMEOUT_MS / 4, `outage median ${fmt(upperPercentile(outageServerMs, 50))} ms in the server`)
      const worstSeen = Math.max(...troubled.map((sample) => sample.latency))
      assert.ok(worstSeen <= CLIENT_LATENCY_BOUND_MS, `a request took ${fmt(worstSeen)} ms as seen by the client`)

      // Recovery without a restart of the server: served from the cache again, and warned about
      // a few times, not once per failed request.
      assert.equal(recoveries.filter((r) => r.backend === backend).length, 2)
      assert.ok(stats.warnings <= 10, `${stats.warnings} warnings for ${stats.cache.backendErrors} backend errors`)
    })
  }
})
