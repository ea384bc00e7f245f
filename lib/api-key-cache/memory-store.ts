import { LRUCache } from 'lru-cache'
import type { ApiKeyRecord } from '../types'
import { UNKNOWN_KEY, type ApiKeyStore, type CachedAnswer, type StoreRead } from './store'

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
  // Bumped by every delete and clear; a fill that saw another value comes too late to be trusted.
  private epoch = 0

  constructor (max: number) {
    this.records = new LRUCache({ max, ttl: 60_000, ttlAutopurge: false })
    this.unknown = new LRUCache({ max, ttl: 5_000, ttlAutopurge: false })
  }

  get generation (): number {
    return this.epoch
  }

  peek (keyHash: string): CachedAnswer | undefined {
    return this.records.get(keyHash) ?? (this.unknown.get(keyHash) === true ? UNKNOWN_KEY : undefined)
  }

  /** Remaining lifetime of the entry in ms, for tiers that copy it. */
  remainingTtl (keyHash: string): number {
    return Math.max(this.records.getRemainingTTL(keyHash), this.unknown.getRemainingTTL(keyHash))
  }

  read (keyHash: string): Promise<StoreRead> {
    return Promise.resolve({ answer: this.peek(keyHash), token: this.epoch })
  }

  fill (keyHash: string, answer: CachedAnswer, ttlMs: number, token: unknown): Promise<boolean> {
    if (token !== this.epoch) return Promise.resolve(false)
    this.write(keyHash, answer, ttlMs)
    return Promise.resolve(true)
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
    this.epoch++
    this.records.delete(keyHash)
    this.unknown.delete(keyHash)
  }

  /** Synchronous clear, for the tiered backend's L1. */
  flush (): void {
    this.epoch++
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

  get size (): number {
    return this.records.size + this.unknown.size
  }

  close (): Promise<void> {
    this.flush()
    return Promise.resolve()
  }
}
