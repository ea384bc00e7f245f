import type { ApiKeyRecord, BackendName } from '../types'

/** What the cache remembers of a key that `lookup` did not know; the one form of it in the process. */
export const UNKNOWN_KEY = Object.freeze({ unknownKey: true as const })
export type UnknownKey = typeof UNKNOWN_KEY

/** A cached answer: the record, or the fact that the key is unknown. */
export type CachedAnswer = ApiKeyRecord | UnknownKey

export interface StoreLoad {
  answer: CachedAnswer | undefined
  /** Milliseconds left of the answer's fresh life, where the store knows it (for refresh-ahead). */
  freshMs?: number
  /** On a miss, a record past its fresh life but within the stale window, for when lookup fails. */
  stale?: ApiKeyRecord
  /**
   * On a miss, the store's permission to `fill` the key later. It is void once a `delete` or
   * `clear` touched the key, so a lookup in flight cannot undo a revocation. Undefined when no
   * fill may follow (the store could not take one).
   */
  ticket?: unknown
}

export interface Renewal {
  ticket: unknown
  current?: CachedAnswer
  /** Fresh life left of `current`, in ms. */
  freshMs: number
  /** False when another process is renewing the key already (shared stores). */
  mine: boolean
}

/**
 * A place where answers live. Every backend implements this one interface; the resolver in
 * front of it owns single flight, `lookup`, counting and how long each answer is kept.
 */
export interface ApiKeyStore {
  readonly backend: BackendName
  /** Process memory only, synchronous; undefined when memory holds nothing usable. */
  peek (keyHash: string): CachedAnswer | undefined
  /** Request path, after `peek` missed in the same tick: what the store holds beyond memory, and a ticket on a miss. */
  load (keyHash: string): Promise<StoreLoad>
  /**
   * Request path: writes unless the key was invalidated since `ticket` was given. Resolves
   * false when refused: the answer may then predate a revocation.
   */
  fill (keyHash: string, answer: CachedAnswer, ttlMs: number, ticket: unknown): Promise<boolean>
  /** Request path: no fill will follow `ticket` (lookup failed, or nothing is to be cached). */
  release (keyHash: string, ticket: unknown): Promise<void>
  /** Milliseconds left of the fresh life of what `peek` just answered for `keyHash`. */
  freshMs (keyHash: string): number
  /**
   * Refresh-ahead, step one: a ticket for `renew` (void once the key is invalidated), and, for
   * a shared store, what it holds now, which another process may have renewed already.
   */
  beginRenewal (keyHash: string): Promise<Renewal>
  /**
   * Refresh-ahead, step two: replaces `previous` with `answer`, unless the key was invalidated
   * or changed since `beginRenewal`. With `previous` undefined, `answer` is what the shared
   * store already holds (`Renewal.current`), and only process memory takes it.
   */
  renew (keyHash: string, previous: CachedAnswer | undefined, answer: CachedAnswer, ttlMs: number, ticket: unknown): Promise<void>
  /** Refresh-ahead, done (renewed or not): lets other processes renew the key next time. */
  endRenewal (keyHash: string): Promise<void>
  get (keyHash: string): Promise<CachedAnswer | undefined>
  set (keyHash: string, answer: CachedAnswer, ttlMs: number): Promise<void>
  delete (keyHash: string): Promise<void>
  clear (): Promise<void>
  /**
   * Removes every entry whose record has this `ownerId`, in memory and in the shared store, and
   * voids every fill ticket taken before (whose answer's owner is unknown until it answers).
   * Tells the listener `undefined`: loads in flight may be the owner's, whatever their key.
   */
  deleteOwner (ownerId: string): Promise<void>
  /**
   * A token that stays the same while every revocation this process must honour reaches
   * `onInvalidate` without a break (memory: all are made here; tiered: while the bus is
   * trusted); undefined while they may not. The plain Redis backend hears only its own.
   */
  hearing (): number | undefined
  /** Sets the one listener told of each invalidation seen here: a key hash, or undefined for all keys. */
  onInvalidate (listener: (keyHash: string | undefined) => void): void
  /** Invalidations received from other processes. */
  readonly invalidationsReceived: number
  /** Entries held in process memory. */
  readonly entries: number
  close (): Promise<void>
}
