import type { RejectReason } from '../api-keys/record'

/**
 * Why a request was refused: a 401 for all but `forbidden` (the 403 of a key lacking a route
 * scope or used from outside its `allowedIps`) and `quota` (the 429 of an owner past its quota).
 */
export type Rejection = 'missing' | 'malformed' | RejectReason | 'forbidden' | 'quota'

export interface ApiKeyCacheStats {
  /** Answers served from the cache: records. */
  hits: number
  /** Answers served from the cache: keys known to be unknown. */
  negativeHits: number
  /** Requests whose key the cache did not hold. */
  misses: number
  /** Calls to `lookup`. Misses for one key in flight together share one call. */
  lookups: number
  /** Misses that joined a `lookup` already in flight for the same key. */
  coalesced: number
  /** `lookup` threw, rejected or answered something that is not a record. */
  lookupErrors: number
  /** Cache reads or writes that failed or timed out; the request went on to `lookup`. */
  backendErrors: number
  /** Requests answered with a record past its TTL because `lookup` failed (staleIfErrorSeconds). */
  staleServed: number
  /** Background lookups started to renew a record before its end (refreshAheadSeconds). */
  refreshes: number
  /** Invalidations received from other processes (tiered and redis, which listen on the channel). */
  invalidations: number
  /** Requests without a key that ran a route whose key is optional (`config.apiKey.optional`). */
  anonymous: number
  /**
   * Requests refused with 401 by reason, with 403 (`forbidden`: a key lacking a route scope, or
   * used from an address outside its `allowedIps`) and with 429 (`quota`).
   */
  rejections: Record<Rejection, number>
  /** Uses of a key that `onUsage` will not hear of: `apiKeys.max` keys were already held between calls. */
  usageDropped: number
}

/** The counters the request path increments, each in exactly one place. */
export type Counters = Omit<ApiKeyCacheStats, 'invalidations'>

export function createCounters (): Counters {
  return {
    hits: 0,
    negativeHits: 0,
    misses: 0,
    lookups: 0,
    coalesced: 0,
    lookupErrors: 0,
    backendErrors: 0,
    staleServed: 0,
    refreshes: 0,
    anonymous: 0,
    rejections: { missing: 0, malformed: 0, unknown: 0, inactive: 0, expired: 0, forbidden: 0, quota: 0 },
    usageDropped: 0
  }
}
