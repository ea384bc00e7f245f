import { FILL_WINDOW_MS } from '../limits'
import type { ApiKeyRecord } from '../types'
import { SecondChanceCache } from './second-chance-cache'
import { UNKNOWN_KEY, type CachedAnswer, type UnknownKey } from './store'

/** What process memory looked like when a miss began; a later fill is checked against it. */
export interface LocalTicket { flushes: number, removals: number, ownerRemovals: number, takenAt: number }

/**
 * Answers in process memory, synchronous: the memory backend and the tiered backend's first
 * tier. Records and unknown keys live in two caches so that a flood of random keys from an
 * attacker can only evict other unknown keys, never the records of real clients. TTLs are
 * measured on the ticking clock (monotonic, TICK_MS steps), so a change of the wall clock
 * neither revives nor expires entries.
 *
 * It also guards fills: a fill is refused when a flush happened since its ticket was taken, or a
 * removal of its own key did. Removals are remembered per key for FILL_WINDOW_MS, and a ticket
 * older than that is refused, so the memory this takes is bounded by the removal rate.
 */
export class LocalAnswers {
  readonly #records: SecondChanceCache<ApiKeyRecord>
  readonly #unknown: SecondChanceCache<UnknownKey>
  // Records past their fresh life, kept `staleMs` longer for when lookup fails; only with staleMs > 0.
  readonly #stale: SecondChanceCache<ApiKeyRecord> | undefined
  readonly #staleMs: number
  #flushes = 0
  #removals = 0
  // Bumped by each removal of an owner's entries: a ticket taken before it may be filling one of
  // them, and which owner a lookup in flight will answer is unknown until it answers.
  #ownerRemovals = 0
  readonly #removedAt = new Map<string, { removal: number, at: number }>()

  constructor (max: number, staleMs = 0) {
    this.#records = new SecondChanceCache(max)
    this.#unknown = new SecondChanceCache(max)
    this.#staleMs = staleMs
    this.#stale = staleMs > 0 ? new SecondChanceCache(max) : undefined
  }

  get size (): number {
    return this.#records.size + this.#unknown.size
  }

  peek (keyHash: string): CachedAnswer | undefined {
    return this.#records.get(keyHash) ?? this.#unknown.get(keyHash)
  }

  /** Milliseconds left of a record's fresh life; 0 when there is none. */
  remainingMs (keyHash: string): number {
    return this.#records.remainingMs(keyHash)
  }

  /** A record whose fresh life ended less than `staleMs` ago (or that is still fresh). */
  staleRecord (keyHash: string): ApiKeyRecord | undefined {
    return this.#stale?.get(keyHash)
  }

  write (keyHash: string, answer: CachedAnswer, ttlMs: number): void {
    if (!(ttlMs > 0)) return
    if (answer === UNKNOWN_KEY) {
      this.#records.delete(keyHash)
      this.#unknown.set(keyHash, UNKNOWN_KEY, ttlMs)
    } else {
      this.#unknown.delete(keyHash)
      this.#records.set(keyHash, answer as ApiKeyRecord, ttlMs)
      this.#stale?.set(keyHash, answer as ApiKeyRecord, ttlMs + this.#staleMs)
    }
  }

  remove (keyHash: string): void {
    const now = performance.now()
    this.#removals++
    this.#removedAt.delete(keyHash)
    this.#removedAt.set(keyHash, { removal: this.#removals, at: now })
    // Oldest first (Map order): forget removals no ticket can still be waiting on.
    for (const [hash, { at }] of this.#removedAt) {
      if (now - at <= FILL_WINDOW_MS) break
      this.#removedAt.delete(hash)
    }
    this.#records.delete(keyHash)
    this.#unknown.delete(keyHash)
    this.#stale?.delete(keyHash)
  }

  /** Drops every record (fresh or stale) whose `ownerId` is `ownerId`, and voids every ticket taken before. */
  removeOwner (ownerId: string): void {
    this.#ownerRemovals++
    // Only the record's own property counts, never an inherited one.
    const owned = (record: ApiKeyRecord): boolean => Object.hasOwn(record, 'ownerId') && record.ownerId === ownerId
    this.#records.deleteWhere(owned)
    this.#stale?.deleteWhere(owned)
  }

  flush (): void {
    this.#flushes++
    this.#removedAt.clear()
    this.#records.clear()
    this.#unknown.clear()
    this.#stale?.clear()
  }

  ticket (): LocalTicket {
    return { flushes: this.#flushes, removals: this.#removals, ownerRemovals: this.#ownerRemovals, takenAt: performance.now() }
  }

  /** Whether nothing invalidated `keyHash` since `ticket` was taken. */
  accepts (keyHash: string, ticket: LocalTicket): boolean {
    if (ticket.flushes !== this.#flushes || ticket.ownerRemovals !== this.#ownerRemovals || performance.now() - ticket.takenAt > FILL_WINDOW_MS) return false
    const removed = this.#removedAt.get(keyHash)
    return removed === undefined || removed.removal <= ticket.removals
  }

  /** Writes unless `ticket` is void for `keyHash`; true when written. */
  fill (keyHash: string, answer: CachedAnswer, ttlMs: number, ticket: LocalTicket): boolean {
    if (!this.accepts(keyHash, ticket)) return false
    this.write(keyHash, answer, ttlMs)
    return true
  }
}
