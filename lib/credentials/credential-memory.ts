import { LRUCache } from 'lru-cache'
import type { InvalidationBus } from '../api-key-cache/invalidation-bus'
import { catchUp, tickingClock } from '../ticking-clock'

// Credential keys in use are few (one per provider or tenant); this only bounds a runaway scope().
const MAX_KEYS = 10_000

/** What process memory looked like when a read began; a later fill is checked against it. */
export interface MemoTicket { flushes: number, version: number }

/**
 * The tiered credential backend's first tier: each process keeps the decoded value of each
 * credential key it loaded or saved, until the value's TTL, while the invalidation bus vouches
 * that no change made elsewhere was missed. A change anywhere (`k:` message), and any change of
 * trust, drops it; a read that was in flight meanwhile does not put its possibly stale value back.
 */
export class CredentialMemory {
  readonly #bus: InvalidationBus
  // TTLs on the ticking clock, as in LocalAnswers.
  readonly #values = new LRUCache<string, { value: unknown }>({ max: MAX_KEYS, ttl: 60_000, ttlResolution: 0, perf: tickingClock() })
  // Bumped per key on each invalidation, and for all keys on a flush, so tickets can tell.
  readonly #versions = new Map<string, number>()
  #flushes = 0

  constructor (bus: InvalidationBus) {
    this.#bus = bus
    bus.listen({
      invalidated: (message) => {
        if (message.kind === 'credential') this.remove(message.payload!)
      },
      trustChanged: () => this.flush()
    })
  }

  /** The remembered value, or undefined: absent, expired, or not vouched for. */
  get (key: string): { value: unknown } | undefined {
    return this.#bus.trusted ? this.#values.get(key) : undefined
  }

  ticket (key: string): MemoTicket {
    return { flushes: this.#flushes, version: this.#versions.get(key) ?? 0 }
  }

  /** Remembers `value` for `ttlMs` (undefined: no expiry) unless `key` changed since `ticket`. */
  fill (key: string, value: unknown, ttlMs: number | undefined, ticket: MemoTicket): void {
    if (!this.#bus.trusted || ticket.flushes !== this.#flushes || ticket.version !== (this.#versions.get(key) ?? 0)) return
    if (ttlMs !== undefined && !(ttlMs > 0)) return
    catchUp()
    this.#values.set(key, { value }, { ttl: ttlMs ?? 0 })
  }

  remove (key: string): void {
    if (this.#versions.size >= MAX_KEYS && !this.#versions.has(key)) this.flush()
    this.#versions.set(key, (this.#versions.get(key) ?? 0) + 1)
    this.#values.delete(key)
  }

  flush (): void {
    this.#flushes++
    this.#versions.clear()
    this.#values.clear()
  }
}
