import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import { hashApiKey } from '../api-keys/hash'
import { isApiKeyRecord, type RejectReason } from '../api-keys/record'
import { ApiKeyLookupFailedError, InvalidOptionError } from '../errors'
import type { ApiKeyRecord, BackendName } from '../types'
import { UNKNOWN_KEY, type ApiKeyStore, type CachedAnswer } from './store'

// During an outage every request fails over; one warning per interval says so without flooding the log.
const WARN_INTERVAL_MS = 30_000

export type ApiKeyLookup = (keyHash: string, request: FastifyRequest) =>
  ApiKeyRecord | null | undefined | Promise<ApiKeyRecord | null | undefined>

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
  /** Invalidations received from other processes (tiered). */
  invalidations: number
  /** Requests refused with 401, by reason. */
  rejections: Record<'missing' | 'malformed' | RejectReason, number>
}

export interface ApiKeyCacheOptions {
  store: ApiKeyStore
  lookup: ApiKeyLookup | undefined
  ttlSeconds: number
  negativeTtlSeconds: number
  log: FastifyBaseLogger
}

/**
 * The cached answer to "is this key valid?", in front of any store. It owns what all backends
 * must agree on: counters, one `lookup` per key in flight, and how long each answer is kept.
 */
export class ApiKeyCache {
  readonly hash = hashApiKey
  private readonly store: ApiKeyStore
  private readonly lookup: ApiKeyLookup | undefined
  private readonly ttlMs: number
  private readonly negativeTtlMs: number
  private readonly log: FastifyBaseLogger
  private lastWarnAt = -Infinity
  private readonly inFlight = new Map<string, Promise<CachedAnswer>>()
  private readonly counters = {
    hits: 0,
    negativeHits: 0,
    misses: 0,
    lookups: 0,
    coalesced: 0,
    lookupErrors: 0,
    backendErrors: 0
  }

  private readonly rejections: ApiKeyCacheStats['rejections'] = { missing: 0, malformed: 0, unknown: 0, inactive: 0, expired: 0 }

  constructor (options: ApiKeyCacheOptions) {
    this.store = options.store
    this.lookup = options.lookup
    this.ttlMs = options.ttlSeconds * 1000
    this.negativeTtlMs = options.negativeTtlSeconds * 1000
    this.log = options.log
  }

  /** The backend actually in use, after any fallback. */
  get backend (): BackendName {
    return this.store.backend
  }

  async get (keyHash: string): Promise<ApiKeyRecord | undefined> {
    const { answer } = await this.store.read(keyHash)
    return answer === UNKNOWN_KEY ? undefined : answer as ApiKeyRecord | undefined
  }

  async set (keyHash: string, record: ApiKeyRecord, ttlSeconds: number): Promise<void> {
    if (!isApiKeyRecord(record)) {
      throw new InvalidOptionError('record', 'must be an object with a string "id" and a boolean "active"')
    }
    if (typeof ttlSeconds !== 'number' || Number.isNaN(ttlSeconds)) {
      throw new InvalidOptionError('ttlSeconds', 'must be a number')
    }
    if (ttlSeconds <= 0) return
    await this.store.set(keyHash, record, ttlSeconds * 1000)
  }

  /** Every process sharing the backend stops using the entry; a lookup in flight cannot restore it. */
  delete (keyHash: string): Promise<void> {
    return this.store.delete(keyHash)
  }

  clear (): Promise<void> {
    return this.store.clear()
  }

  /** Called by the hook for each 401, so that `stats()` is one snapshot. */
  countRejection (reason: keyof ApiKeyCacheStats['rejections']): void {
    this.rejections[reason]++
  }

  stats (): ApiKeyCacheStats {
    return {
      ...this.counters,
      invalidations: this.store.invalidationsReceived,
      rejections: { ...this.rejections }
    }
  }

  /**
   * The hook's path: synchronous on a hit in process memory, else one shared load per key.
   * Rejects with FST_API_KEY_LOOKUP_FAILED when `lookup` fails; never because of the cache.
   */
  resolve (keyHash: string, request: FastifyRequest): CachedAnswer | Promise<CachedAnswer> {
    const cached = this.store.peek?.(keyHash)
    if (cached !== undefined) {
      if (cached === UNKNOWN_KEY) this.counters.negativeHits++
      else this.counters.hits++
      return cached
    }
    const pending = this.inFlight.get(keyHash)
    if (pending !== undefined) {
      this.counters.coalesced++
      return pending
    }
    const load = this.load(keyHash, request).finally(() => this.inFlight.delete(keyHash))
    this.inFlight.set(keyHash, load)
    return load
  }

  private async load (keyHash: string, request: FastifyRequest): Promise<CachedAnswer> {
    let token: unknown
    let readable = false
    try {
      const read = await this.store.read(keyHash)
      if (read.answer !== undefined) {
        if (read.answer === UNKNOWN_KEY) this.counters.negativeHits++
        else this.counters.hits++
        return read.answer
      }
      token = read.token
      readable = true
    } catch (err) {
      this.backendFailed(err)
    }

    this.counters.misses++
    const answer = await this.callLookup(keyHash, request)
    const ttlMs = this.ttlFor(answer)
    // When the read failed there is no token proving the write would be safe.
    if (readable && ttlMs > 0) {
      try {
        await this.store.fill(keyHash, answer, ttlMs, token)
      } catch (err) {
        this.backendFailed(err)
      }
    }
    return answer
  }

  private async callLookup (keyHash: string, request: FastifyRequest): Promise<CachedAnswer> {
    this.counters.lookups++
    let answer: unknown
    try {
      answer = await this.lookup!(keyHash, request)
    } catch (err) {
      this.counters.lookupErrors++
      request.log.error({ err, keyHash }, 'fastify-auth-cache: API key lookup failed')
      throw new ApiKeyLookupFailedError()
    }
    if (answer === null || answer === undefined) return UNKNOWN_KEY
    if (!isApiKeyRecord(answer)) {
      this.counters.lookupErrors++
      request.log.error({ keyHash }, 'fastify-auth-cache: API key lookup answered something that is not a record ({ id: string, active: boolean, expiresAt?: number })')
      throw new ApiKeyLookupFailedError()
    }
    return answer
  }

  /** Records live until `ttlSeconds` or their own `expiresAt`; an expired record only as long as an unknown key. */
  private ttlFor (answer: CachedAnswer): number {
    if (answer === UNKNOWN_KEY) return this.negativeTtlMs
    const record = answer as ApiKeyRecord
    if (record.expiresAt === undefined) return this.ttlMs
    const left = record.expiresAt - Date.now()
    return left > 0 ? Math.min(this.ttlMs, left) : this.negativeTtlMs
  }

  private backendFailed (err: unknown): void {
    this.counters.backendErrors++
    const now = Date.now()
    if (now - this.lastWarnAt >= WARN_INTERVAL_MS) {
      this.lastWarnAt = now
      this.log.warn({ err }, 'fastify-auth-cache: cache backend failed; authenticating through lookup until it recovers')
    } else {
      this.log.debug({ err }, 'fastify-auth-cache: cache backend failed, using lookup')
    }
  }

  close (): Promise<void> {
    return this.store.close()
  }
}
