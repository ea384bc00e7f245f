import { FILL_WINDOW_MS } from '../limits'
import type { ApiKeyRecord } from '../types'
import { SecondChanceCache } from './second-chance-cache'
import { UNKNOWN_KEY, type CachedAnswer, type UnknownKey } from './store'

// Entries an owner's sweep examines per turn of the event loop: about a millisecond at most.
const SWEEP_STEP = 1000

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
 *
 * An owner's removal (deleteOwner) takes effect at once and costs nothing per entry then: until
 * a sweep in steps has walked every entry, a record read from memory is checked against the
 * owners removed since it was written. A walk of 10,000 entries at once held a process 10-17 ms
 * when it heard the owner's message, late for the 10 ms bound of a revocation.
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
  // While a sweep is under way: each owner removed → the #ownerRemovals count of its latest
  // removal. Undefined otherwise, and that is all a hit checks.
  #removedOwners: Map<string, number> | undefined
  // While a sweep is under way: each key written → the #ownerRemovals count then. A record
  // written after its owner's removal is a fresh answer, and stays.
  readonly #writtenDuringSweep = new Map<string, number>()
  #sweep: { records: (count: number) => boolean, stale: ((count: number) => boolean) | undefined } | undefined
  #sweepScheduled = false

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
    const record = this.#records.get(keyHash)
    if (record === undefined) return this.#unknown.get(keyHash)
    if (this.#removedOwners !== undefined && this.#ownerRemovedSince(keyHash, record)) {
      this.#records.delete(keyHash)
      return undefined
    }
    return record
  }

  /** Milliseconds left of a record's fresh life; 0 when there is none. */
  remainingMs (keyHash: string): number {
    return this.#records.remainingMs(keyHash)
  }

  /** A record whose fresh life ended less than `staleMs` ago (or that is still fresh). */
  staleRecord (keyHash: string): ApiKeyRecord | undefined {
    const record = this.#stale?.get(keyHash)
    if (record !== undefined && this.#removedOwners !== undefined && this.#ownerRemovedSince(keyHash, record)) {
      this.#stale!.delete(keyHash)
      return undefined
    }
    return record
  }

  write (keyHash: string, answer: CachedAnswer, ttlMs: number): void {
    if (!(ttlMs > 0)) return
    if (answer === UNKNOWN_KEY) {
      this.#records.delete(keyHash)
      this.#unknown.set(keyHash, UNKNOWN_KEY, ttlMs)
    } else {
      this.#unknown.delete(keyHash)
      if (this.#removedOwners !== undefined) this.#writtenDuringSweep.set(keyHash, this.#ownerRemovals)
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

  /**
   * Drops every record (fresh or stale) whose `ownerId` is `ownerId`, and voids every ticket
   * taken before: at once for every read, and from memory by a sweep over the next turns of the
   * event loop.
   */
  removeOwner (ownerId: string): void {
    this.#ownerRemovals++
    ;(this.#removedOwners ??= new Map()).set(ownerId, this.#ownerRemovals)
    // A new pass from the first entry: the one under way may have passed this owner's entries.
    const removed = (keyHash: string, record: ApiKeyRecord): boolean => this.#ownerRemovedSince(keyHash, record)
    this.#sweep = { records: this.#records.sweeper(removed), stale: this.#stale?.sweeper(removed) }
    if (!this.#sweepScheduled) {
      this.#sweepScheduled = true
      setImmediate(() => this.#sweepStep()).unref()
    }
  }

  /** Whether the record's owner was removed after the record was written (its own `ownerId` only). */
  #ownerRemovedSince (keyHash: string, record: ApiKeyRecord): boolean {
    if (!Object.hasOwn(record, 'ownerId') || typeof record.ownerId !== 'string') return false
    const removal = this.#removedOwners!.get(record.ownerId)
    if (removal === undefined) return false
    const written = this.#writtenDuringSweep.get(keyHash)
    return written === undefined || written < removal
  }

  #sweepStep (): void {
    this.#sweepScheduled = false
    const sweep = this.#sweep
    if (sweep === undefined) return
    const done = sweep.records(SWEEP_STEP) && (sweep.stale === undefined || sweep.stale(SWEEP_STEP))
    if (!done) {
      this.#sweepScheduled = true
      setImmediate(() => this.#sweepStep()).unref()
      return
    }
    this.#endSweep()
  }

  #endSweep (): void {
    this.#sweep = undefined
    this.#removedOwners = undefined
    this.#writtenDuringSweep.clear()
  }

  flush (): void {
    this.#flushes++
    this.#endSweep()
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
