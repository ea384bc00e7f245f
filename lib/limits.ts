/** Bounds that several modules must agree on, defined once. */

/**
 * The longest a `lookup` may take and still have its answer cached. Process memory remembers a
 * removal this long, and Redis keeps a fill's claim this long, so a fill that comes back later
 * than this is simply not cached: it can never be checked against a removal already forgotten.
 */
export const FILL_WINDOW_MS = 30_000

/**
 * The contract's bound on revocation through faults: a request is never accepted on an answer
 * whose `lookup` began longer ago than this, unless every invalidation since was heard.
 */
export const JOIN_WINDOW_MS = 2_000

/** The bound on Redis calls off the request path (delete, clear, set, credentials, clean-up). */
export const OFF_PATH_TIMEOUT_MS = 5_000

/** Redis takes TTLs in whole milliseconds, and `PX 0` is an error. */
export function wholeMs (ms: number): number {
  return Math.max(1, Math.floor(ms))
}

/** `credentialStore.update` and `getFresh`: how long a holder keeps the lock if it dies, and how long a caller waits for it. */
export const UPDATE_LOCK_TTL_MS = 10_000
export const UPDATE_WAIT_MS = 5_000
