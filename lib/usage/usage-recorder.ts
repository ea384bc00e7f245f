import type { FastifyBaseLogger } from 'fastify'
import type { Counters } from '../api-key-cache/stats'
import { OFF_PATH_TIMEOUT_MS } from '../limits'

/** One key's use since the previous `onUsage` call. */
export interface ApiKeyUsage {
  /** `hashApiKey(key)`; never the key. */
  keyHash: string
  /** The record's `id`. */
  id: string
  /** Requests that passed authentication and the route's scopes. */
  count: number
  /** Epoch milliseconds of the last of them. */
  lastUsedAt: number
}

export type UsageReporter = (batch: ApiKeyUsage[]) => void | Promise<void>

export interface UsageRecorderOptions {
  onUsage: UsageReporter
  flushMs: number
  /** Keys held between calls. */
  max: number
  counters: Counters
  log: FastifyBaseLogger
}

/** A call to `onUsage` that has not settled yet. */
interface Call {
  /** What it was given, kept so that a failure can put it back. */
  readonly sent: Map<string, ApiKeyUsage>
  readonly settled: Promise<void>
  /** Outlived one flush interval; warned about. */
  overdue: boolean
  /** Given up on at close: its batch was put back, its outcome no longer matters. */
  abandoned: boolean
}

// While a call stays unsettled, at most one warning per interval says so.
const WARN_INTERVAL_MS = 30_000

/**
 * Counts each key's uses in process memory and hands them to `onUsage` off the request path,
 * at most once per `flushMs`. Bounded: at most `max` keys between calls, the rest counted as
 * dropped. At most one call runs at a time: one still running at the next flush is overdue (a
 * warning; no new call until it settles), and a call that fails puts its batch back, merged
 * into the next one. On close the last batch is flushed, each wait bounded.
 */
export class UsageRecorder {
  readonly #onUsage: UsageReporter
  readonly #max: number
  readonly #counters: Counters
  readonly #log: FastifyBaseLogger
  /** How long close waits for a call: a flush interval, and never more than 5 s. */
  readonly #closeWaitMs: number
  readonly #timer: NodeJS.Timeout
  #pending = new Map<string, ApiKeyUsage>()
  #call: Call | undefined
  #lastOverdueWarnAt = -Infinity

  constructor (options: UsageRecorderOptions) {
    this.#onUsage = options.onUsage
    this.#max = options.max
    this.#counters = options.counters
    this.#log = options.log
    this.#closeWaitMs = Math.min(options.flushMs, OFF_PATH_TIMEOUT_MS)
    this.#timer = setInterval(() => this.#tick(), options.flushMs).unref()
  }

  /** The request path: one Map lookup and an increment; a new object only for a key not yet held. */
  record (keyHash: string, id: string): void {
    const entry = this.#pending.get(keyHash)
    if (entry !== undefined) {
      entry.count++
      entry.lastUsedAt = Date.now()
    } else if (this.#pending.size < this.#max) {
      this.#pending.set(keyHash, { keyHash, id, count: 1, lastUsedAt: Date.now() })
    } else {
      this.#counters.usageDropped++
    }
  }

  #tick (): void {
    const call = this.#call
    if (call === undefined) {
      this.#flush()
      return
    }
    // No overlapping calls: a slow onUsage delays the next batch, which keeps counting meanwhile.
    call.overdue = true
    const now = Date.now()
    if (now - this.#lastOverdueWarnAt >= WARN_INTERVAL_MS) {
      this.#lastOverdueWarnAt = now
      this.#log.warn('fastify-auth-cache: apiKeys.onUsage has not settled within usageFlushMs; no new call until it does, and its batch goes into the next one if it fails')
    }
  }

  /** Hands what is pending to `onUsage`, unless nothing is. */
  #flush (): void {
    if (this.#pending.size === 0) return
    const sent = this.#pending
    this.#pending = new Map()
    let outcome: Promise<void>
    try {
      outcome = Promise.resolve(this.#onUsage(Array.from(sent.values())))
    } catch (err) {
      outcome = Promise.reject(err)
    }
    const call: Call = {
      sent,
      overdue: false,
      abandoned: false,
      settled: outcome.then(() => {
        if (call.overdue) this.#log.info('fastify-auth-cache: a late apiKeys.onUsage call succeeded')
      }, (err: unknown) => {
        if (call.abandoned) return
        this.#log.warn({ err }, 'fastify-auth-cache: apiKeys.onUsage failed; its batch goes into the next call')
        this.#putBack(sent)
      }).finally(() => {
        if (this.#call === call) this.#call = undefined
      })
    }
    this.#call = call
  }

  /** Merges a batch that was not delivered into what is pending (counts added, latest use kept), within `max` keys. */
  #putBack (batch: Map<string, ApiKeyUsage>): void {
    for (const [keyHash, sent] of batch) {
      const entry = this.#pending.get(keyHash)
      if (entry !== undefined) {
        entry.count += sent.count
        if (sent.lastUsedAt > entry.lastUsedAt) entry.lastUsedAt = sent.lastUsedAt
      } else if (this.#pending.size < this.#max) {
        // A copy: the failed callback may still hold the object it was given.
        this.#pending.set(keyHash, { keyHash, id: sent.id, count: sent.count, lastUsedAt: sent.lastUsedAt })
      } else {
        this.#counters.usageDropped += sent.count
      }
    }
  }

  /** Waits for the running call, if any, at most `#closeWaitMs`. */
  async #waitForCall (): Promise<void> {
    const call = this.#call
    if (call === undefined) return
    let timer: NodeJS.Timeout | undefined
    await Promise.race([call.settled, new Promise<void>((resolve) => { timer = setTimeout(resolve, this.#closeWaitMs) })])
    clearTimeout(timer)
  }

  /** `onClose`: the last batch, including that of a call still hanging, which counts as failed. */
  async close (): Promise<void> {
    clearInterval(this.#timer)
    await this.#waitForCall()
    const hanging = this.#call
    if (hanging !== undefined) {
      hanging.abandoned = true
      this.#call = undefined
      this.#log.warn('fastify-auth-cache: apiKeys.onUsage did not settle before close; its batch goes into the last call')
      this.#putBack(hanging.sent)
    }
    this.#flush()
    await this.#waitForCall()
    if (this.#pending.size > 0 || this.#call !== undefined) {
      this.#log.warn('fastify-auth-cache: the last apiKeys.onUsage call failed or had not settled at close; its batch may be lost')
    }
  }
}
