import { Agent, request as httpRequest } from 'node:http'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type Redis from 'ioredis'
import { Child } from '../test/helpers/child-process'
import { startRedis, type RedisServer } from '../test/helpers/redis-server'
import { sharedClockMs } from './clock'
import type { CreatedKey, Revocation, TieredPeerConfig } from './tiered-peer'

/**
 * `npm run soak`: two application processes on the tiered backend share a private Redis while
 * keys are created and revoked continuously in either of them and requests keep coming to both.
 * Every answer is checked against the key's life: a key revoked in one process must be refused
 * by both within 10 ms of `delete()` returning, or 2000 ms around a dropped connection or a
 * Redis restart (both are provoked once, unless SOAK_FAULTS=0). Exits 1 on any such late
 * acceptance, on a live key refused, or on an answer other than 200/401.
 *
 * A request counts from the moment it was sent: a revoked key accepted for a request sent more
 * than the bound after `delete()` returned was accepted late, however slow the server.
 *
 * Environment: SOAK_SECONDS (default 60), SOAK_CONCURRENCY (requests in flight, default 16),
 * SOAK_FAULTS=0 (no dropped connections, no restart), SOAK_BACKEND=memory (negative control).
 */

const SECONDS = Number(process.env.SOAK_SECONDS || 60)
const CONCURRENCY = Number(process.env.SOAK_CONCURRENCY || 16)
const FAULTS = process.env.SOAK_FAULTS !== '0'
// SOAK_BACKEND=memory is a negative control: without a shared cache nothing tells the other
// process about a revocation, and the soak must fail.
const BACKEND = process.env.SOAK_BACKEND === 'memory' ? 'memory' : 'tiered'
const LIVE_KEYS = 40
const REVOKE_EVERY_MS = 50
// Old enough that both processes had requests for it, so it is in their process memory.
const MIN_AGE_BEFORE_REVOKE_MS = 300
// Revoked keys keep receiving requests this long, past the 2000 ms bound.
const REVOKED_TAIL_MS = 3000
const FRESH_MS = 200
const HEALTHY_BOUND_MS = 10
const FAULT_BOUND_MS = 2000
// A revocation this close to a fault is judged against the fault bound.
const FAULT_MARGIN_MS = 2000

type KeyState = 'live' | 'revoking' | 'revoked'

interface TrackedKey {
  created: CreatedKey
  state: KeyState
  createdAt: number
  revokedBy?: number
  revocation?: Revocation
  /** Per process: send time of the last request it accepted. */
  lastAccepted: [number, number]
}

interface FaultWindow { what: string, from: number, to: number }

const log = (message: string): void => { console.error(`[soak] ${message}`) }
const pick = <T> (items: T[]): T => items[Math.floor(Math.random() * items.length)]

class Soak {
  /** Every key ever created, for the verdict at the end. */
  readonly keys: TrackedKey[] = []
  readonly statuses: Record<string, number> = {}
  readonly faults: FaultWindow[] = []
  liveRefused = 0
  revocationErrors = 0
  private running = true
  private live: TrackedKey[] = []
  /** Being revoked, or revoked less than REVOKED_TAIL_MS ago: these still receive requests. */
  private revoked: TrackedKey[] = []
  private readonly agents: Agent[]
  private readonly revocations = new Set<Promise<void>>()

  constructor (private readonly peers: Child[], private readonly ports: number[]) {
    this.agents = ports.map(() => new Agent({ keepAlive: true, maxSockets: CONCURRENCY }))
  }

  get revokedCount (): number {
    return this.keys.filter((k) => k.state === 'revoked').length
  }

  /** Half the requests use live keys; most of the rest, keys being revoked or just revoked. */
  private chooseKey (now: number): TrackedKey | undefined {
    const roll = Math.random()
    if (roll >= 0.5) {
      const since = (k: TrackedKey): number => now - (k.revocation?.endedAt ?? now)
      const group = this.revoked.filter(roll < 0.85
        ? (k) => k.state === 'revoking' || since(k) < FRESH_MS
        : (k) => k.state === 'revoked' && since(k) >= FRESH_MS)
      if (group.length > 0) return pick(group)
    }
    return this.live.length > 0 ? pick(this.live) : undefined
  }

  private get (peer: number, key: string): Promise<number> {
    return new Promise((resolve) => {
      const req = httpRequest({ host: '127.0.0.1', port: this.ports[peer], path: '/', agent: this.agents[peer], headers: { 'x-api-key': key } }, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      })
      req.on('error', () => resolve(0))
      req.end()
    })
  }

  async worker (): Promise<void> {
    while (this.running) {
      const sentAt = sharedClockMs()
      const tracked = this.chooseKey(sentAt)
      if (tracked === undefined) {
        await sleep(5)
        continue
      }
      const liveAtSend = tracked.state === 'live'
      const peer = Math.random() < 0.5 ? 0 : 1
      const status = await this.get(peer, tracked.created.key)
      this.statuses[status] = (this.statuses[status] ?? 0) + 1
      if (status === 200) {
        tracked.lastAccepted[peer] = Math.max(tracked.lastAccepted[peer], sentAt)
      } else if (status === 401 && liveAtSend && tracked.state === 'live') {
        // Refused although nobody had started to revoke it by the time the answer came back.
        this.liveRefused++
      }
    }
  }

  /** Keeps LIVE_KEYS keys alive and revokes the oldest every REVOKE_EVERY_MS, each time in a random process. */
  async lifecycle (): Promise<void> {
    while (this.running) {
      while (this.live.length < LIVE_KEYS) {
        const created = await this.peers[Math.floor(Math.random() * 2)].call<CreatedKey>('create')
        const key: TrackedKey = { created, state: 'live', createdAt: sharedClockMs(), lastAccepted: [-Infinity, -Infinity] }
        this.keys.push(key)
        this.live.push(key)
      }
      const now = sharedClockMs()
      this.revoked = this.revoked.filter((k) => k.state === 'revoking' || now - k.revocation!.endedAt < REVOKED_TAIL_MS)
      const oldest = this.live[0]
      if (now - oldest.createdAt >= MIN_AGE_BEFORE_REVOKE_MS) {
        this.live.shift()
        this.revoked.push(oldest)
        oldest.state = 'revoking'
        oldest.revokedBy = Math.floor(Math.random() * 2)
        const done = this.peers[oldest.revokedBy].call<Revocation>('revoke', { hash: oldest.created.hash }).then((revocation) => {
          oldest.revocation = revocation
          oldest.state = 'revoked'
          if (revocation.error !== undefined) this.revocationErrors++
        })
        // Not awaited: a delete held up by a Redis restart must not stop the other revocations.
        this.revocations.add(done)
        done.finally(() => this.revocations.delete(done)).catch(() => {})
      }
      await sleep(REVOKE_EVERY_MS)
    }
  }

  async fault (what: string, action: () => Promise<unknown>): Promise<void> {
    const from = sharedClockMs()
    await action()
    this.faults.push({ what, from, to: sharedClockMs() })
    log(`${what} (${(sharedClockMs() - from).toFixed(0)} ms)`)
  }

  /** Call with the promises of `lifecycle` and `worker`: nothing may still be in flight when the sockets close. */
  async stop (work: Array<Promise<void>>): Promise<void> {
    this.running = false
    await Promise.all(work)
    await Promise.all(this.revocations)
    for (const agent of this.agents) agent.destroy()
  }
}

interface Verdict { bound: number, lateness: number, peer: number, key: TrackedKey }

function judge (soak: Soak): { verdicts: Verdict[], judged: number } {
  const verdicts: Verdict[] = []
  let judged = 0
  for (const key of soak.keys) {
    const revocation = key.revocation
    if (revocation === undefined) continue
    judged++
    const nearFault = revocation.error !== undefined || soak.faults.some((f) =>
      revocation.endedAt >= f.from - FAULT_MARGIN_MS && revocation.startedAt <= f.to + FAULT_MARGIN_MS)
    const bound = nearFault ? FAULT_BOUND_MS : HEALTHY_BOUND_MS
    for (const peer of [0, 1]) {
      verdicts.push({ bound, lateness: key.lastAccepted[peer] - revocation.endedAt, peer, key })
    }
  }
  return { verdicts, judged }
}

function summary (verdicts: Verdict[], bound: number): string {
  const mine = verdicts.filter((v) => v.bound === bound)
  const late = mine.filter((v) => v.lateness > 0)
  const worst = late.reduce((max, v) => Math.max(max, v.lateness), 0)
  return `${mine.length / 2} revocations; accepted after delete() returned in ${late.length} of ${mine.length} (key, process) pairs, ` +
    `worst ${worst.toFixed(2)} ms after it; past the ${bound} ms bound: ${mine.filter((v) => v.lateness > bound).length}`
}

async function main (): Promise<void> {
  let cacheRedis: RedisServer | undefined
  let dbRedis: RedisServer | undefined
  const peers: Child[] = []
  let admin: Redis | undefined
  let progress: NodeJS.Timeout | undefined
  try {
    // The source of truth has a Redis of its own, so that restarting the cache's loses nothing.
    ;[cacheRedis, dbRedis] = await Promise.all([startRedis(), startRedis()])
    const ports: number[] = []
    for (const name of ['P0', 'P1']) {
      const config: TieredPeerConfig = { name, cacheRedisUrl: cacheRedis.url, dbRedisUrl: dbRedis.url, backend: BACKEND }
      const peer = await Child.start({ name, file: join(__dirname, 'tiered-peer.ts'), args: [JSON.stringify(config)] })
      peers.push(peer)
      ports.push(peer.ready.port as number)
    }
    const control = admin = cacheRedis.client()
    const soak = new Soak(peers, ports)
    log(`${SECONDS} s, ${BACKEND} backend, ${CONCURRENCY} concurrent requests, faults ${FAULTS ? 'on' : 'off'}`)
    const started = Date.now()
    const work = [soak.lifecycle(), ...Array.from({ length: CONCURRENCY }, () => soak.worker())]
    progress = setInterval(() => {
      const total = Object.values(soak.statuses).reduce((a, b) => a + b, 0)
      log(`${Math.round((Date.now() - started) / 1000)} s: ${total} requests, ${soak.revokedCount} revocations`)
    }, 10_000)
    // Surfaces a failing child at once rather than after the full duration.
    for (const task of work) task.catch((err) => log(`stopped: ${err.message}`))
    const server = cacheRedis
    const plan: Array<{ at: number, what: string, action: () => Promise<unknown> }> = FAULTS
      ? [
          { at: 0.3, what: 'dropped every client connection of the cache Redis', action: async () => { await control.call('CLIENT', 'KILL', 'TYPE', 'pubsub'); await control.call('CLIENT', 'KILL', 'TYPE', 'normal') } },
          { at: 0.6, what: 'restarted the cache Redis (empty)', action: () => server.restart() }
        ]
      : []
    for (const step of plan) {
      await sleep(Math.max(0, started + step.at * SECONDS * 1000 - Date.now()))
      await soak.fault(step.what, step.action)
    }
    await sleep(Math.max(0, started + SECONDS * 1000 - Date.now()))
    clearInterval(progress)
    await soak.stop(work)

    const { verdicts, judged } = judge(soak)
    const lateBeyondBound = verdicts.filter((v) => v.lateness > v.bound)
    const total = Object.values(soak.statuses).reduce((a, b) => a + b, 0)
    const unexpected = Object.entries(soak.statuses).filter(([code]) => code !== '200' && code !== '401')
    console.log([
      '# Soak report',
      `- ${SECONDS} s, two processes on the ${BACKEND} backend, ${CONCURRENCY} concurrent requests over loopback HTTP`,
      `- requests: ${total}; by status: ${Object.entries(soak.statuses).map(([code, n]) => `${code === '0' ? 'network error' : code} x${n}`).join(', ')}`,
      `- keys created: ${soak.keys.length}; revocations: ${judged} (delete() failed in ${soak.revocationErrors})`,
      `- faults: ${soak.faults.length === 0 ? 'none' : soak.faults.map((f) => f.what).join('; ')}`,
      `- Redis healthy (bound ${HEALTHY_BOUND_MS} ms): ${summary(verdicts, HEALTHY_BOUND_MS)}`,
      `- around a fault (bound ${FAULT_BOUND_MS} ms): ${summary(verdicts, FAULT_BOUND_MS)}`,
      `- live keys refused: ${soak.liveRefused}`,
      ...lateBeyondBound.slice(0, 10).map((v) =>
        `- LATE: key revoked in P${v.key.revokedBy} accepted by P${v.peer} ${v.lateness.toFixed(2)} ms after delete() returned (bound ${v.bound} ms)`)
    ].join('\n'))
    if (lateBeyondBound.length > 0 || soak.liveRefused > 0 || unexpected.length > 0) {
      log(`FAILED: ${lateBeyondBound.length} late acceptances, ${soak.liveRefused} live keys refused, unexpected statuses ${JSON.stringify(Object.fromEntries(unexpected))}`)
      process.exitCode = 1
    }
  } finally {
    clearInterval(progress)
    admin?.disconnect()
    await Promise.all(peers.map((peer) => peer.stop()))
    await Promise.all([cacheRedis?.destroy(), dbRedis?.destroy()])
  }
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
