import type { FastifyBaseLogger } from 'fastify'
import { RedisTimeoutError, RedisUnavailableError } from '../errors'
import { OFF_PATH_TIMEOUT_MS } from '../limits'
import { withTimeout } from '../time-bound'

const MIN_BACKOFF_MS = 250
const MAX_BACKOFF_MS = 2000

/** Runs one call under a time bound. */
export type Bound = <T>(call: () => Promise<T>) => Promise<T>

/** Races one Redis call against a timer (see time-bound.ts). */
function redisCallWithin<T> (call: () => Promise<T>, timeoutMs: number): Promise<T> {
  return withTimeout(call, timeoutMs, () => new RedisTimeoutError(timeoutMs))
}

/**
 * Bounds Redis calls. ioredis queues commands while disconnected and may never answer them, so
 * each call races a timer. On the request path, after a failure Redis is skipped for a backoff
 * window, then a single call probes it; the window doubles while probes fail.
 */
export class RedisGuard {
  readonly #timeoutMs: number
  readonly #log: FastifyBaseLogger
  #skipUntil = 0
  #backoffMs = 0
  #probing = false

  constructor (timeoutMs: number, log: FastifyBaseLogger) {
    this.#timeoutMs = timeoutMs
    this.#log = log
  }

  /** For the request path: bounded by `redisTimeoutMs`, and fails fast while Redis is skipped. */
  run<T> (call: () => Promise<T>): Promise<T> {
    let probe = false
    if (this.#backoffMs !== 0) {
      if (this.#probing || Date.now() < this.#skipUntil) return Promise.reject(new RedisUnavailableError())
      this.#probing = probe = true
    }
    return redisCallWithin(call, this.#timeoutMs).then(
      (value) => {
        if (probe) this.#probing = false
        if (this.#backoffMs !== 0) this.#recovered()
        return value
      },
      (err: unknown) => {
        if (probe) this.#probing = false
        this.#failed(err)
        throw err
      })
  }

  /** For calls off the request path (delete, clear, credentials): bounded, never skipped. */
  readonly offPath: Bound = (call) => redisCallWithin(call, OFF_PATH_TIMEOUT_MS)

  #failed (err: unknown): void {
    if (this.#backoffMs === 0) this.#log.debug({ err }, 'fastify-auth-cache: Redis failed; skipping it with backoff')
    this.#backoffMs = Math.min(MAX_BACKOFF_MS, Math.max(MIN_BACKOFF_MS, this.#backoffMs * 2))
    this.#skipUntil = Date.now() + this.#backoffMs
  }

  #recovered (): void {
    this.#backoffMs = 0
    this.#log.info('fastify-auth-cache: Redis answers again')
  }
}
