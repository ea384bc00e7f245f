import type { FastifyBaseLogger } from 'fastify'
import { isCluster, type RedisClient } from '../redis/client'
import type { RedisGuard } from '../redis/guard'

export interface InvalidationHandlers {
  /** Another process deleted this hash. */
  deleted (keyHash: string): void
  /** Another process cleared the prefix. */
  cleared (): void
  /** The bus starts or stops being able to vouch that no message was missed. */
  trustChanged (trusted: boolean): void
}

export interface InvalidationBusOptions {
  client: RedisClient
  channel: string
  instanceId: string
  guard: RedisGuard
  log: FastifyBaseLogger
  handlers: InvalidationHandlers
  heartbeatIntervalMs?: number
  heartbeatDeadlineMs?: number
}

/**
 * Receives invalidations on a dedicated subscriber connection. Pub/sub drops what is published
 * while a subscriber is away, so the bus is only trusted while it can show that it hears the
 * channel: each process publishes a heartbeat and must hear its own echo within a deadline.
 * A closed connection or a missed echo makes it untrusted at once; the next echo heard makes
 * it trusted again. Both transitions are reported, and the tiered store flushes on each.
 */
export class InvalidationBus {
  private readonly subscriber: RedisClient
  private readonly options: InvalidationBusOptions
  private trustedNow = false
  private lastEcho = 0
  private timer: NodeJS.Timeout | undefined
  private closed = false
  received = 0

  constructor (options: InvalidationBusOptions) {
    this.options = options
    const override = {
      lazyConnect: false,
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
      connectionName: 'fastify-auth-cache:invalidations'
    }
    // Cluster.duplicate takes the startup nodes first.
    this.subscriber = isCluster(options.client)
      ? (options.client.duplicate as unknown as (nodes: unknown[], o: object) => RedisClient)([], { redisOptions: override })
      : options.client.duplicate({ ...override, retryStrategy: (times: number) => Math.min(times * 50, 500) })
    this.subscriber.on('message', this.onMessage)
    this.subscriber.on('close', this.onDisconnect)
    this.subscriber.on('end', this.onDisconnect)
    this.subscriber.on('ready', this.onReady)
    this.subscriber.on('error', this.onError)
  }

  get trusted (): boolean {
    return this.trustedNow
  }

  start (): void {
    const interval = this.options.heartbeatIntervalMs ?? 300
    this.timer = setInterval(this.heartbeat, interval)
    this.timer.unref()
    this.subscribe()
  }

  private subscribe (): void {
    this.subscriber.subscribe(this.options.channel).then(this.heartbeat, (err: unknown) => {
      this.options.log.debug({ err }, 'fastify-auth-cache: subscribing to invalidations failed')
    })
  }

  private readonly onReady = (): void => {
    this.subscribe()
  }

  private readonly onError = (err: unknown): void => {
    // ioredis reconnects by itself; without a listener the error would crash the process.
    this.options.log.debug({ err }, 'fastify-auth-cache: invalidation connection error')
  }

  private readonly onDisconnect = (): void => {
    this.setTrusted(false)
  }

  private readonly heartbeat = (): void => {
    if (this.closed) return
    const deadline = this.options.heartbeatDeadlineMs ?? 900
    if (this.trustedNow && performance.now() - this.lastEcho > deadline) {
      this.options.log.warn('fastify-auth-cache: invalidation heartbeat missed; process memory is bypassed until it is heard again')
      this.setTrusted(false)
    }
    const { client, channel, instanceId, guard } = this.options
    guard.bounded(() => client.publish(channel, `h:${instanceId}`)).catch(() => {
      // A failed publish shows up as a missed echo; the deadline above handles it.
    })
  }

  private readonly onMessage = (channel: string, message: string): void => {
    if (channel !== this.options.channel) return
    const { instanceId, handlers } = this.options
    const kind = message.charCodeAt(0)
    // Messages are `h:<instance>`, `c:<instance>` and `d:<instance>:<hash>`.
    const end = message.indexOf(':', 2)
    const own = (end === -1 ? message.slice(2) : message.slice(2, end)) === instanceId
    if (kind === 104 /* h */) {
      if (own) {
        this.lastEcho = performance.now()
        this.setTrusted(true)
      }
      return
    }
    if (own) return
    if (kind === 100 /* d */) {
      this.received++
      handlers.deleted(message.slice(end + 1))
    } else if (kind === 99 /* c */) {
      this.received++
      handlers.cleared()
    }
  }

  private setTrusted (trusted: boolean): void {
    if (this.trustedNow === trusted || (trusted && this.closed)) return
    this.trustedNow = trusted
    this.options.handlers.trustChanged(trusted)
  }

  async close (): Promise<void> {
    this.closed = true
    this.setTrusted(false)
    if (this.timer) clearInterval(this.timer)
    this.subscriber.removeListener('close', this.onDisconnect)
    this.subscriber.removeListener('end', this.onDisconnect)
    this.subscriber.removeListener('ready', this.onReady)
    try {
      // While Redis is unreachable, QUIT waits behind the queued SUBSCRIBE for ever: bound it.
      await this.options.guard.bounded(() => this.subscriber.quit(), 1000)
    } catch {
      this.subscriber.disconnect()
    }
  }
}
