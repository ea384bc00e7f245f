import type { RedisAdapter } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import type { Period } from './period'
import type { QuotaGrant, QuotaStore } from './quota-store'
import { GIVE_BACK_QUOTA, TAKE_QUOTA } from './scripts'

/**
 * A count outlives its period by this much, so that a process whose clock is behind by less
 * still finds it rather than a fresh zero (which would let it spend the limit again).
 */
const COUNT_GRACE_MS = 60_000

/** What follows the API-key prefix in every count's key, and in no other key of ours. */
export const QUOTA_KEY_MARK = '{q:'

/**
 * The key of an owner's count for one period: `${keyPrefix}{q:<owner>}:<period>`. The owner's
 * hash tag comes after the prefix, so an ACL granting `~<keyPrefix>*` covers it and a Cluster
 * keeps every period of one owner in one slot; the owner is URI-encoded, so it holds no brace.
 */
export function quotaKey (keyPrefix: string, owner: string, period: Period): string {
  return `${keyPrefix}${QUOTA_KEY_MARK}${owner}}:${period.id}`
}

/** Counts shared by every process on one Redis (redis and tiered backends, Redis Cluster). */
export class RedisQuotaStore implements QuotaStore {
  readonly #redis: RedisAdapter
  readonly #guard: RedisGuard
  readonly #keyPrefix: string

  constructor (redis: RedisAdapter, guard: RedisGuard, keyPrefix: string) {
    this.#redis = redis
    this.#guard = guard
    this.#keyPrefix = keyPrefix
  }

  /** On the request path: bounded by `redisTimeoutMs`, and refused at once while Redis is skipped. */
  async take (owner: string, period: Period, limit: number, requested: number): Promise<QuotaGrant> {
    const ttlMs = Math.max(1, Math.ceil(period.endMs - Date.now())) + COUNT_GRACE_MS
    const key = quotaKey(this.#keyPrefix, owner, period)
    const [granted, left] = await this.#guard.run(() => this.#redis.run(TAKE_QUOTA, [key], [limit, requested, ttlMs])) as [number, number]
    return { granted: Number(granted), left: Number(left) }
  }

  /** Off the request path: bounded, never skipped. */
  async giveBack (owner: string, period: Period, units: number, token: string): Promise<void> {
    const key = quotaKey(this.#keyPrefix, owner, period)
    await this.#guard.offPath(() => this.#redis.run(GIVE_BACK_QUOTA, [key], [units, token]))
  }
}
