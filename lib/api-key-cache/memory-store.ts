import { LRUCache } from 'lru-cache'
import type { ApiKeyRecord } from '../types'
import { UNKNOWN_KEY, type ApiKeyStore, type CachedAnswer, type StoreRead } from './store'

/** What process memory looked like when a read began; a later fill is checked against it. */
export interface LocalFillToken { flushes: number, removals: number, startedAt: number }

// A lookup slower than this is answered but not cached, which bounds how long a removal must be
// remembered to refuse the fills that started before it.
const MAX_FILL_AGE_MS = 30_000

/**
 * Records and unknown keys live in two LRUs so that a flood of random keys from an attacker
 * can only evict other unknown keys, never the records of real clients. lru-cache measures
 * TTLs with `performance.now()`, so a clock change neither revives nor expires entries.
 */
export class MemoryApiKeyStore implements ApiKeyStore {
  readonly backend = 'memory' as const
  readonly invalidationsReceived = 0
  private readonly records: LRUCache<string, ApiKeyRecord>
  private readonly unknown: LRUCache<string, true>
  // A fill is refused when a flush happened since its read, or a removal of its own key did:
  // removals are remembered per key, for as long as a fill may come back.
  private flushes = 0
  private removals = 0
  private readonly removedAt = new Map<string, { removal: number, at: number }>()

  constructor (max: number) {
    // Every write passes its own TTL; the defaults only switch lru-cache's TTL tracking on.
    // ttlResolution 0 reads the clock on each get; the default caches it for 1 ms behind a timer,
    // and under load those timers cost more than the clock reads they save.
    this.records = new LRUCache({ max, ttl: 60_000, ttlResolution: 0 })
    this.unknown = new LRUCache({ max, ttl: 5_000, ttlResolution: 0 })
  }

  token (): LocalFillToken {
    return { flushes: this.flushes, removals: this.removals, startedAt: performance.now() }
  }

  /** Whether nothing invalidated `keyHash` since `token` was taken. */
  accepts (keyHash: string, token: LocalFillToken): boolean {
    if (token.flushes !== this.flushes || performance.now() - token.startedAt > MAX_FILL_AGE_MS) return false
    const removed = this.removedAt.get(keyHash)
    return removed === undefined || removed.removal <= token.removals
  }

  peek (keyHash: string): CachedAnswer | undefined {
    return this.records.get(keyHash) ?? (this.unknown.get(keyHash) === true ? UNKNOWN_KEY : undefined)
  }

  read (keyHash: string): Promise<StoreRead> {
    return Promise.resolve({ answer: this.peek(keyHash), token: this.token() })
  }

  fill (keyHash: string, answer: CachedAnswer, ttlMs: number, token: unknown): Promise<boolean> {
    return Promise.resolve(this.fillSync(keyHash, answer, ttlMs, token as LocalFillToken))
  }

  /** Synchronous fill, for the tiered backend's L1. */
  fillSync (keyHash: string, answer: CachedAnswer, ttlMs: number, token: LocalFillToken): boolean {
    if (!this.accepts(keyHash, token)) return false
    this.write(keyHash, answer, ttlMs)
    return true
  }

  set (keyHash: string, answer: CachedAnswer, ttlMs: number): Promise<void> {
    this.write(keyHash, answer, ttlMs)
    return Promise.resolve()
  }

  /** Synchronous write, for the tiered backend's L1. */
  write (keyHash: string, answer: CachedAnswer, ttlMs: number): void {
    if (!(ttlMs > 0)) return
    if (answer === UNKNOWN_KEY) {
      this.records.delete(keyHash)
      this.unknown.set(keyHash, true, { ttl: ttlMs })
    } else {
      this.unknown.delete(keyHash)
      this.records.set(keyHash, answer as ApiKeyRecord, { ttl: ttlMs })
    }
  }

  /** Synchronous delete, for the tiered backend's L1. */
  remove (keyHash: string): void {
    const now = performance.now()
    this.removals++
    this.removedAt.delete(keyHash)
    this.removedAt.set(keyHash, { removal: this.removals, at: now })
    // Oldest first (Map order): forget removals no fill can still be waiting on.
    for (const [hash, { at }] of this.removedAt) {
      if (now - at <= MAX_FILL_AGE_MS) break
      this.removedAt.delete(hash)
    }
    this.records.delete(keyHash)
    this.unknown.delete(keyHash)
  }

  /** Synchronous clear, for the tiered backend's L1. */
  flush (): void {
    this.flushes++
    this.removedAt.clear()
    this.records.clear()
    this.unknown.clear()
  }

  delete (keyHash: string): Promise<void> {
    this.remove(keyHash)
    return Promise.resolve()
  }

  clear (): Promise<void> {
    this.flush()
    return Promise.resolve()
  }

  close (): Promise<void> {
    this.flush()
    return Promise.resolve()
  }
}
