import type { ApiKeyRecord, BackendName } from '../types'

/** What the cache remembers of a key that `lookup` did not know. */
export const UNKNOWN_KEY = Object.freeze({ unknownKey: true as const })
export type UnknownKey = typeof UNKNOWN_KEY

/** A cached answer: the record, or the fact that the key is unknown. */
export type CachedAnswer = ApiKeyRecord | UnknownKey

export interface StoreRead {
  answer: CachedAnswer | undefined
  /**
   * Opaque proof of what the store looked like before `lookup` ran. `fill` with it writes only
   * if no `delete` or `clear` touched the key since, so a slow lookup cannot undo a revocation.
   */
  token: unknown
}

/**
 * A place where answers live. Every backend implements this one interface; the `ApiKeyCache`
 * in front of it owns counters, single flight and the policy of what to cache for how long.
 */
export interface ApiKeyStore {
  readonly backend: BackendName
  /** Process memory only, synchronous; undefined when memory holds nothing usable. */
  peek?(keyHash: string): CachedAnswer | undefined
  /** Request path: bounded, and may reject when the backend fails. */
  read (keyHash: string): Promise<StoreRead>
  /**
   * Request path: a write that is refused when the key was invalidated since `token`.
   * Resolves true when written.
   */
  fill (keyHash: string, answer: CachedAnswer, ttlMs: number, token: unknown): Promise<boolean>
  set (keyHash: string, answer: CachedAnswer, ttlMs: number): Promise<void>
  delete (keyHash: string): Promise<void>
  clear (): Promise<void>
  /** Invalidations received from other processes. */
  readonly invalidationsReceived: number
  close (): Promise<void>
}
