import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { QuotaUnavailableError } from '../errors'
import { ownerOf } from '../api-keys/record'
import type { ApiKeyRecord } from '../types'
import { periodAt, secondsUntil, type ApiKeyQuota, type Period } from './period'
import type { QuotaStore } from './quota-store'

/**
 * The window over which an owner's recent spending at this process is measured. A lease is
 * topped up to one window's spending when a quarter of that is left, so each grant brings at
 * least three quarters of a second's worth, and the grant has a quarter of a second to come back. A second, not less: a process on a busy machine runs in bursts, and a
 * shorter window would see a slower owner than there is, and hand out smaller leases.
 */
const RATE_WINDOW_MS = 1000
/**
 * Below this spending per window (40 units a second at this process), the owner is served one
 * request at a time, each granted on need: exact, one round trip each, nothing held in advance.
 */
const HOT_PER_WINDOW = 40
/** A process that has not spent for an owner this long gives its unused lease back. */
export const IDLE_RETURN_MS = 2_000
const SWEEP_MS = 500
/** After the pool was found empty, requests are refused without asking again for this long. */
const EMPTY_RECHECK_MS = 1_000

/**
 * What `spend` answered: 0 when accepted, else the `Retry-After` in seconds of a request over
 * the quota; a promise when a lease had to be taken first (it rejects with
 * FST_API_KEY_QUOTA_UNAVAILABLE when none could be granted in time).
 */
export type Spent = number | Promise<number>

/** One owner's lease at this process, for the current period. */
class Lease {
  readonly owner: string
  limit: number
  periodOf: ApiKeyQuota['period']
  period: Period
  /** Bumped when the period or the quota changes: a grant for an earlier one is given back. */
  generation = 0
  /** Granted to this process and not yet spent. */
  available = 0
  /** The one grant in flight for this owner. */
  granting: Promise<void> | undefined = undefined
  /** Cost waiting for `granting`, so one grant covers everyone waiting. */
  waiting = 0
  /** When the pool was last found empty; -Infinity when it was not. */
  emptyAt = -Infinity
  windowStart = 0
  windowSpent = 0
  /** The last window's spending, per RATE_WINDOW_MS even when it lasted longer (an idle spell). */
  lastWindowRate = 0
  lastSpentAt = 0

  constructor (owner: string, quota: ApiKeyQuota, now: number) {
    this.owner = owner
    this.limit = quota.limit
    this.periodOf = quota.period
    this.period = periodAt(quota.period, now)
    this.windowStart = now
  }

  /** Units worth holding: one second at the recent rate, or 0 for a cold owner. */
  wanted (): number {
    const rate = Math.max(this.windowSpent, this.lastWindowRate)
    return rate >= HOT_PER_WINDOW ? rate : 0
  }

  count (cost: number, now: number): void {
    this.available -= cost
    this.lastSpentAt = now
    const elapsed = now - this.windowStart
    if (elapsed >= RATE_WINDOW_MS) {
      this.lastWindowRate = Math.floor(this.windowSpent * RATE_WINDOW_MS / elapsed)
      this.windowStart = now
      this.windowSpent = 0
    }
    this.windowSpent += cost
  }
}

export interface QuotaLeasesOptions {
  store: QuotaStore
  log: FastifyBaseLogger
}

/**
 * The quotas of one plugin registration. Each process spends an owner's quota from a lease
 * granted by the store in one atomic step, so nothing is spent that was not granted, and the
 * units spent in a period never exceed its limit across processes. A hot owner's lease is a
 * second of its recent spending, topped up before it runs out (one grant in flight per owner);
 * a cold owner's requests are granted one at a time. Unused lease goes back to the pool when
 * the process has been idle for the owner for IDLE_RETURN_MS, and on `close`; a process that
 * dies loses its current lease (at most what it spent for that owner in its last second, or in
 * the current one if more, and any grant then in flight).
 */
export class QuotaLeases {
  readonly #store: QuotaStore
  readonly #log: FastifyBaseLogger
  // Owners (`ownerId`) and keys without one (`id`) in separate namespaces, without building a
  // string per request.
  readonly #byOwner = new Map<string, Lease>()
  readonly #byId = new Map<string, Lease>()
  readonly #tokenPrefix = randomBytes(8).toString('hex')
  #returns = 0
  #sweeper: NodeJS.Timeout | undefined
  #closed = false

  constructor (options: QuotaLeasesOptions) {
    this.#store = options.store
    this.#log = options.log
  }

  /** Spends `cost` of `record`'s quota (valid: records are checked when they enter the cache). */
  spend (record: ApiKeyRecord, quota: ApiKeyQuota, cost: number): Spent {
    const now = Date.now()
    const lease = this.#leaseOf(record, quota, now)
    if (lease.available >= cost) {
      lease.count(cost, now)
      if (lease.granting === undefined && lease.available * 4 < lease.wanted() && now - lease.emptyAt >= EMPTY_RECHECK_MS) {
        this.#grant(lease, lease.wanted() - lease.available).catch((err: unknown) => {
          this.#log.debug({ err }, 'fastify-auth-cache: a quota lease could not be renewed ahead of need')
        })
      }
      return 0
    }
    if (lease.granting === undefined && now - lease.emptyAt < EMPTY_RECHECK_MS) return secondsUntil(lease.period.endMs, now)
    return this.#spendAfterGrant(lease, cost)
  }

  /** Gives every lease back; later requests are granted one at a time. */
  async close (): Promise<void> {
    this.#closed = true
    clearInterval(this.#sweeper)
    this.#sweeper = undefined
    const returns: Array<Promise<void>> = []
    for (const leases of [this.#byOwner, this.#byId]) {
      for (const lease of leases.values()) returns.push(this.#giveBack(lease))
      leases.clear()
    }
    await Promise.all(returns)
  }

  #leaseOf (record: ApiKeyRecord, quota: ApiKeyQuota, now: number): Lease {
    const owner = ownerOf(record)
    const leases = owner === undefined ? this.#byId : this.#byOwner
    const name = owner ?? record.id
    let lease = leases.get(name)
    if (lease === undefined) {
      lease = new Lease(`${leases === this.#byOwner ? 'o' : 'k'}:${encodeURIComponent(name)}`, quota, now)
      leases.set(name, lease)
      if (this.#sweeper === undefined && !this.#closed) {
        this.#sweeper = setInterval(() => this.#sweep(), SWEEP_MS)
        this.#sweeper.unref()
      }
    } else if (now >= lease.period.endMs || lease.limit !== quota.limit || lease.periodOf !== quota.period) {
      this.#renew(lease, quota, now)
    }
    return lease
  }

  /**
   * A new period, or a quota changed in the source of truth (or two keys of one owner with
   * different quotas): what the lease holds was granted under other terms and goes back.
   */
  #renew (lease: Lease, quota: ApiKeyQuota, now: number): void {
    if (now < lease.period.endMs) this.#giveBack(lease).catch(() => {})
    lease.generation++
    lease.available = 0
    lease.granting = undefined
    lease.waiting = 0
    lease.emptyAt = -Infinity
    lease.limit = quota.limit
    lease.periodOf = quota.period
    lease.period = periodAt(quota.period, now)
  }

  /** Takes a lease on need; everyone waiting shares one grant in flight per owner. */
  async #spendAfterGrant (lease: Lease, cost: number): Promise<number> {
    let generation = lease.generation
    lease.waiting += cost
    try {
      // Each pass either ends or waits for a grant that either hands out units or finds the pool
      // empty; the bound only guards against a lease renewed under us again and again.
      for (let pass = 0; pass < 8; pass++) {
        if (lease.granting === undefined) await this.#grant(lease, Math.max(lease.waiting, lease.wanted()))
        else await lease.granting
        const now = Date.now()
        if (lease.generation !== generation) {
          // A new period began (or the quota changed) while this request waited: it waits in it.
          generation = lease.generation
          lease.waiting += cost
          continue
        }
        if (lease.available >= cost) {
          lease.count(cost, now)
          return 0
        }
        if (now - lease.emptyAt < EMPTY_RECHECK_MS) return secondsUntil(lease.period.endMs, now)
      }
    } catch (err) {
      this.#log.debug({ err }, 'fastify-auth-cache: no quota lease could be granted in time')
      throw new QuotaUnavailableError()
    } finally {
      if (lease.generation === generation) lease.waiting -= cost
    }
    throw new QuotaUnavailableError()
  }

  #grant (lease: Lease, requested: number): Promise<void> {
    const { generation, period, limit } = lease
    const granting: Promise<void> = this.#store.take(lease.owner, period, limit, requested).then(
      ({ granted, left }) => {
        if (lease.generation !== generation || this.#closed) {
          if (granted > 0) this.#giveBackUnits(lease.owner, period, granted).catch(() => {})
          return
        }
        lease.available += granted
        lease.emptyAt = left === 0 ? Date.now() : -Infinity
      })
    const tracked = granting.finally(() => {
      if (lease.granting === tracked) lease.granting = undefined
    })
    lease.granting = tracked
    return tracked
  }

  /** Idle owners give their lease back; ended periods are forgotten (their count expires). */
  #sweep (): void {
    const now = Date.now()
    for (const leases of [this.#byOwner, this.#byId]) {
      for (const [name, lease] of leases) {
        if (lease.granting !== undefined || now - lease.lastSpentAt < IDLE_RETURN_MS) continue
        leases.delete(name)
        if (now < lease.period.endMs) this.#giveBack(lease).catch(() => {})
      }
    }
    if (this.#byOwner.size === 0 && this.#byId.size === 0) {
      clearInterval(this.#sweeper)
      this.#sweeper = undefined
    }
  }

  async #giveBack (lease: Lease): Promise<void> {
    const units = lease.available
    lease.available = 0
    if (units > 0) await this.#giveBackUnits(lease.owner, lease.period, units)
  }

  async #giveBackUnits (owner: string, period: Period, units: number): Promise<void> {
    try {
      await this.#store.giveBack(owner, period, units, `${this.#tokenPrefix}:${this.#returns++}`)
    } catch (err) {
      // The units stay counted: an under-spend of at most this lease, never an over-spend.
      this.#log.warn({ err, units }, 'fastify-auth-cache: an unused quota lease could not be given back')
    }
  }
}
