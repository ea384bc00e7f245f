import type { FastifyBaseLogger } from 'fastify'

export class RedisTimeoutError extends Error {
  code = 'FST_AUTH_CACHE_REDIS_TIMEOUT'
  constructor (ms: number) { super(`Redis did not answer within ${ms} ms`) }
}

export class RedisUnavailableError extends Error {
  code = 'FST_AUTH_CACHE_REDIS_UNAVAILABLE'
  constructor () { super('Redis is being skipped after a recent failure') }
}

const MIN_BACKOFF_MS = 250
const MAX_BACKOFF_MS = 2000

/**
 * Bounds every Redis call on the request path. ioredis queues commands while disconnected and
 * may never answer them, so each call races a timer. After a failure Redis is skipped for a
 * backoff window, then a single call probes it; the window doubles while probes fail.
 */
export class RedisGuard {
  private skipUntil = 0
  private backoffMs = 0
  private probing = false

  constructor (
    private readonly timeoutMs: number,
    private readonly log: FastifyBaseLogger
  ) {}

  /** For the request path: fails fast while Redis is skipped. */
  run<T> (operation: () => Promise<T>): Promise<T> {
    let probe = false
    if (this.backoffMs !== 0) {
      if (this.probing || Date.now() < this.skipUntil) {
        return Promise.reject(new RedisUnavailableError())
      }
      this.probing = probe = true
    }
    return this.bounded(operation, this.timeoutMs).then(
      (value) => {
        if (probe) this.probing = false
        if (this.backoffMs !== 0) this.recovered()
        return value
      },
      (err: unknown) => {
        if (probe) this.probing = false
        this.failed(err)
        throw err
      })
  }

  /** For calls off the request path (delete, clear, credentials): bounded, never skipped. */
  bounded<T> (operation: () => Promise<T>, timeoutMs = this.timeoutMs): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      // Timers run before the event loop polls sockets: when the process was starved past the
      // deadline, the answer may already be waiting unread. setImmediate runs after that poll,
      // so a reply that did arrive in time wins over the timeout.
      const timer = setTimeout(() => setImmediate(() => reject(new RedisTimeoutError(timeoutMs))), timeoutMs)
      operation().then(
        (value) => { clearTimeout(timer); resolve(value) },
        (err) => { clearTimeout(timer); reject(err) })
    })
  }

  private failed (err: unknown): void {
    if (this.backoffMs === 0) this.log.debug({ err }, 'fastify-auth-cache: Redis failed; skipping it with backoff')
    this.backoffMs = Math.min(MAX_BACKOFF_MS, Math.max(MIN_BACKOFF_MS, this.backoffMs * 2))
    this.skipUntil = Date.now() + this.backoffMs
  }

  private recovered (): void {
    this.backoffMs = 0
    this.log.info('fastify-auth-cache: Redis answers again')
  }
}
