import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import { rejectReason, toStoredRecord, type RejectReason } from '../api-keys/record'
import { ApiKeyLookupFailedError } from '../errors'
import { JOIN_WINDOW_MS } from '../limits'
import type { ApiKeyLookup } from '../options'
import type { ApiKeyRecord } from '../types'
import type { Telemetry } from '../telemetry'
import type { Counters } from './stats'
import { UNKNOWN_KEY, type ApiKeyStore, type CachedAnswer } from './store'
import { isThenable } from '../thenable'
import { withTimeout } from '../time-bound'

// After finding another process renewing a key, this process looks again no sooner than this.
const RENEWAL_RETRY_MS = 100
// During an outage every request fails over; one warning per interval says so without flooding the log.
const WARN_INTERVAL_MS = 30_000

/** A valid record, or why the key is refused. */
export type Verdict = ApiKeyRecord | RejectReason

/** A verdict that took a load, and where its answer came from. */
export interface Resolved {
  verdict: Verdict
  source: 'hit' | 'miss' | 'stale'
}

interface Load {
  answer: CachedAnswer
  /**
   * False when Redis refused to cache the answer: something invalidated the key while `lookup`
   * ran. Requests that joined the load may have come after a revocation made elsewhere.
   */
  settled: boolean
  source: Resolved['source']
}

/** A load in flight, and what a request that comes later needs to know before it joins. */
interface InFlight {
  load: Promise<Load>
  startedAt: number
  /** The store's hearing token when the load began (see ApiKeyStore.hearing). */
  heardFrom: number | undefined
}

export interface ResolverOptions {
  store: ApiKeyStore
  lookup: ApiKeyLookup
  ttlSeconds: number
  negativeTtlSeconds: number
  lookupTimeoutMs: number
  refreshAheadSeconds: number
  counters: Counters
  telemetry: Telemetry
  log: FastifyBaseLogger
}

class LookupTimeoutError extends Error {
  constructor (ms: number) {
    super(`lookup did not answer within ${ms} ms`)
    this.name = 'LookupTimeoutError'
  }
}

/** Each key refreshes ahead at its own point between half and all of the window, so keys cached together spread out. */
function jitterOf (keyHash: string): number {
  return 0.5 + parseInt(keyHash.slice(0, 4), 16) / 0x20000
}

/**
 * The request path behind the hook: process memory first, synchronously (`cached`); else one
 * load per key in flight (`load`: the store, then `lookup`), whose answer is cached for as long
 * as the TTL policy says. Each outcome is counted once, here.
 */
export class Resolver {
  readonly #store: ApiKeyStore
  readonly #lookup: ApiKeyLookup
  readonly #ttlMs: number
  readonly #negativeTtlMs: number
  readonly #lookupTimeoutMs: number
  readonly #refreshAheadMs: number
  readonly #counters: Counters
  readonly #telemetry: Telemetry
  readonly #log: FastifyBaseLogger
  readonly #inFlight = new Map<string, InFlight>()
  readonly #refreshing = new Set<string>()
  #lastBackendWarnAt = -Infinity
  #lastStaleWarnAt = -Infinity

  constructor (options: ResolverOptions) {
    this.#store = options.store
    this.#lookup = options.lookup
    this.#ttlMs = options.ttlSeconds * 1000
    this.#negativeTtlMs = options.negativeTtlSeconds * 1000
    this.#lookupTimeoutMs = options.lookupTimeoutMs
    this.#refreshAheadMs = options.refreshAheadSeconds * 1000
    this.#counters = options.counters
    this.#telemetry = options.telemetry
    this.#log = options.log
    // A request that comes after an invalidation must not join a load that began before it.
    this.#store.onInvalidate((keyHash) => {
      if (keyHash === undefined) this.#inFlight.clear()
      else this.#inFlight.delete(keyHash)
    })
  }

  /**
   * The first step of every request, synchronous: the verdict that process memory holds for the
   * key, counted; undefined when it holds none, and then `load` answers. Kept this small and
   * apart from `load` so that V8 inlines it, with the store's lookup, into the hook: a hit pays
   * for no call the miss path would need.
   */
  cached (keyHash: string, request: FastifyRequest): Verdict | undefined {
    const cached = this.#store.peek(keyHash)
    if (cached === undefined) return undefined
    if (cached === UNKNOWN_KEY) {
      this.#counters.negativeHits++
      return 'unknown'
    }
    this.#counters.hits++
    if (this.#refreshAheadMs > 0) this.#refreshIfDue(keyHash, request, cached, this.#store.freshMs(keyHash))
    return rejectReason(cached as ApiKeyRecord) ?? cached as ApiKeyRecord
  }

  /**
   * After `cached` answered undefined, in the same tick: one load per key in flight (the store,
   * then `lookup`). Rejects with FST_API_KEY_LOOKUP_FAILED when `lookup` fails and no stale
   * record may stand in; never because of the cache.
   */
  load (keyHash: string, request: FastifyRequest, joinUnsettled = true): Promise<Resolved> {
    const pending = this.#inFlight.get(keyHash)
    if (pending === undefined || !this.#mayJoin(pending)) {
      const load = this.#load(keyHash, request)
      const entry: InFlight = { load, startedAt: performance.now(), heardFrom: this.#store.hearing() }
      load.finally(() => {
        if (this.#inFlight.get(keyHash) === entry) this.#inFlight.delete(keyHash)
      }).catch(() => {
        // Joiners handle its failure; without any, it must not count as unhandled.
      })
      this.#inFlight.set(keyHash, entry)
      return load.then(this.#judge)
    }
    this.#counters.coalesced++
    // A store that does not hear other processes' revocations learns of them only from a
    // refused fill; a joiner then asks again, once, rather than trust an answer it came after.
    if (this.#heardSince(pending) || !joinUnsettled) return pending.load.then(this.#judge)
    return pending.load.then((load) => load.settled ? this.#judge(load) : this.#resolveAgain(keyHash, request))
  }

  /** Whether every invalidation since `pending` began reached this process. */
  #heardSince (pending: InFlight): boolean {
    return pending.heardFrom !== undefined && this.#store.hearing() === pending.heardFrom
  }

  /**
   * A request may take the answer of a lookup in flight if that lookup began within the join
   * window, or if every invalidation since it began was heard (and would have dropped it).
   * Otherwise the answer may predate a revocation the request came after: it starts its own.
   */
  #mayJoin (pending: InFlight): boolean {
    return performance.now() - pending.startedAt <= JOIN_WINDOW_MS || this.#heardSince(pending)
  }

  #resolveAgain (keyHash: string, request: FastifyRequest): Resolved | Promise<Resolved> {
    const verdict = this.cached(keyHash, request)
    return verdict === undefined ? this.load(keyHash, request, false) : { verdict, source: 'hit' }
  }

  readonly #judge = (load: Load): Resolved => {
    if (load.answer === UNKNOWN_KEY) return { verdict: 'unknown', source: load.source }
    if (load.source === 'stale') this.#counters.staleServed++
    return { verdict: rejectReason(load.answer as ApiKeyRecord) ?? load.answer as ApiKeyRecord, source: load.source }
  }

  async #load (keyHash: string, request: FastifyRequest): Promise<Load> {
    let ticket: unknown
    let stale: ApiKeyRecord | undefined
    try {
      const loaded = await this.#store.load(keyHash)
      if (loaded.answer !== undefined) {
        if (loaded.answer === UNKNOWN_KEY) {
          this.#counters.negativeHits++
        } else {
          this.#counters.hits++
          if (this.#refreshAheadMs > 0 && loaded.freshMs !== undefined) this.#refreshIfDue(keyHash, request, loaded.answer, loaded.freshMs)
        }
        return { answer: loaded.answer, settled: true, source: 'hit' }
      }
      ticket = loaded.ticket
      stale = loaded.stale
    } catch (err) {
      this.#backendFailed(err)
    }

    this.#counters.misses++
    let answer: CachedAnswer
    try {
      answer = await this.#callLookup(keyHash, request)
    } catch (err) {
      if (ticket !== undefined) await this.#write(() => this.#store.release(keyHash, ticket))
      // Only a record that would still be accepted stands in; revocation removed any other.
      if (stale !== undefined && rejectReason(stale) === undefined) {
        this.#staleServed(keyHash)
        return { answer: stale, settled: true, source: 'stale' }
      }
      throw err
    }
    // Without a ticket (the read failed, or Redis refused the claim) no write would be safe.
    if (ticket === undefined) return { answer, settled: true, source: 'miss' }
    const ttlMs = this.#ttlFor(answer)
    if (ttlMs <= 0) {
      await this.#write(() => this.#store.release(keyHash, ticket))
      return { answer, settled: true, source: 'miss' }
    }
    const settled = await this.#write(() => this.#store.fill(keyHash, answer, ttlMs, ticket)) !== false
    return { answer, settled, source: 'miss' }
  }

  /** Starts one background renewal of a record near the end of its cached life. */
  #refreshIfDue (keyHash: string, request: FastifyRequest, current: CachedAnswer, freshMs: number): void {
    if (freshMs > this.#refreshAheadMs || freshMs > this.#refreshAheadMs * jitterOf(keyHash) || this.#refreshing.has(keyHash)) return
    this.#refreshing.add(keyHash)
    this.#refresh(keyHash, request, current).finally(() => this.#refreshing.delete(keyHash))
  }

  /** Never rejects: a refresh that fails keeps the current entry until its normal end. */
  async #refresh (keyHash: string, request: FastifyRequest, previous: CachedAnswer): Promise<void> {
    let leased = false
    try {
      const renewal = await this.#store.beginRenewal(keyHash)
      leased = renewal.mine
      if (renewal.current !== undefined && renewal.freshMs > this.#refreshAheadMs) {
        // Another process renewed it in the shared store already.
        await this.#store.renew(keyHash, undefined, renewal.current, renewal.freshMs, renewal.ticket)
        return
      }
      // Another process is renewing it: a later hit will find its renewal.
      if (!renewal.mine) {
        await sleep(RENEWAL_RETRY_MS)
        return
      }
      this.#counters.refreshes++
      const answer = await this.#callLookup(keyHash, request)
      const ttlMs = this.#ttlFor(answer)
      if (ttlMs > 0) await this.#store.renew(keyHash, renewal.current ?? previous, answer, ttlMs, renewal.ticket)
    } catch (err) {
      // A failed lookup was counted and logged where it failed.
      if (!(err instanceof ApiKeyLookupFailedError)) this.#backendFailed(err)
    } finally {
      if (leased) await this.#store.endRenewal(keyHash).catch((err: unknown) => this.#backendFailed(err))
    }
  }

  async #callLookup (keyHash: string, request: FastifyRequest): Promise<CachedAnswer> {
    this.#counters.lookups++
    const startedAt = this.#telemetry.watchingLookups ? performance.now() : 0
    let answer: unknown
    try {
      answer = await this.#bounded(() => this.#lookup(keyHash, request))
    } catch (err) {
      if (startedAt !== 0) this.#telemetry.lookedUp(keyHash, performance.now() - startedAt, false)
      this.#counters.lookupErrors++
      request.log.error({ err, keyHash }, 'fastify-auth-cache: API key lookup failed')
      throw new ApiKeyLookupFailedError()
    }
    const record = answer === null || answer === undefined ? UNKNOWN_KEY : toStoredRecord(answer)
    const ok = typeof record !== 'string'
    if (startedAt !== 0) this.#telemetry.lookedUp(keyHash, performance.now() - startedAt, ok)
    if (!ok) {
      this.#counters.lookupErrors++
      // The record's own error messages stay out of the log line and the reply: they may quote it.
      request.log.error({ keyHash, reason: record }, record === 'not-serializable'
        ? 'fastify-auth-cache: API key lookup answered a record that cannot be stored as JSON (a BigInt, a cycle, a throwing getter)'
        : 'fastify-auth-cache: API key lookup answered something that is not a record ({ id: string, active: boolean, expiresAt?: number, allowedIps?: addresses and CIDR ranges } as own properties)')
      throw new ApiKeyLookupFailedError()
    }
    return record
  }

  /**
   * `lookup`'s answer, or a LookupTimeoutError after lookupTimeoutMs; a late answer is dropped.
   * Anything with a `then` is waited for under the bound: query builders (Knex, Mongoose,
   * Drizzle) are thenables, and a promise from another realm is not `instanceof Promise`.
   */
  #bounded (call: () => unknown): unknown {
    const answer = call()
    if (!isThenable(answer)) return answer
    const ms = this.#lookupTimeoutMs
    return withTimeout(() => answer, ms, () => new LookupTimeoutError(ms))
  }

  /** Records live until `ttlSeconds` or their own `expiresAt`; an expired record only as long as an unknown key. */
  #ttlFor (answer: CachedAnswer): number {
    if (answer === UNKNOWN_KEY) return this.#negativeTtlMs
    const record = answer as ApiKeyRecord
    if (record.expiresAt === undefined) return this.#ttlMs
    const left = record.expiresAt - Date.now()
    return left > 0 ? Math.min(this.#ttlMs, left) : this.#negativeTtlMs
  }

  /** A write on the request path: a failure is counted and logged, and the request goes on. */
  async #write<T> (write: () => Promise<T>): Promise<T | undefined> {
    try {
      return await write()
    } catch (err) {
      this.#backendFailed(err)
      return undefined
    }
  }

  #staleServed (keyHash: string): void {
    const now = Date.now()
    if (now - this.#lastStaleWarnAt < WARN_INTERVAL_MS) return
    this.#lastStaleWarnAt = now
    this.#log.warn({ keyHash }, 'fastify-auth-cache: lookup failed; serving cached records past their TTL (staleIfErrorSeconds)')
  }

  #backendFailed (err: unknown): void {
    this.#counters.backendErrors++
    const now = Date.now()
    if (now - this.#lastBackendWarnAt >= WARN_INTERVAL_MS) {
      this.#lastBackendWarnAt = now
      this.#log.warn({ err }, 'fastify-auth-cache: cache backend failed; authenticating through lookup until it recovers')
    } else {
      this.#log.debug({ err }, 'fastify-auth-cache: cache backend failed, using lookup')
    }
  }
}
