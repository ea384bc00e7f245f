import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { RedisAdapter, RedisSubscriber } from '../redis/client'
import type { RedisGuard } from '../redis/guard'

/**
 * The tiered backend's invalidation channel, its whole protocol in one place.
 *
 * Messages are `<kind>:<instance>[:<payload>]`, published by the process that changed something
 * and acted on by every other process (each ignores its own):
 * - `d:<instance>:<keyHash>`: an API key's entry was deleted;
 * - `c:<instance>`: the API-key prefix was cleared;
 * - `o:<instance>:<ownerId>`: every API-key entry whose record has that `ownerId` was deleted
 *   (the owner id is the rest of the message, colons included);
 * - `k:<instance>:<storage key>`: a credential was saved, updated or cleared.
 *
 * Pub/sub drops what is published while a subscriber is away, so the bus is trusted only while
 * it can show that it hears the channel: every HEARTBEAT_MS the process publishes a heartbeat
 * on a channel of its own, which its subscriber connection (subscribed to both channels at once)
 * must hear within DEADLINE_MS. That proves the whole path a revocation takes, publisher to
 * Redis (and across a Cluster's bus) to subscriber. A lost connection or a late echo makes it
 * untrusted at once; the next echo on a connection whose subscription was acknowledged makes it
 * trusted again. Each process hears only its own heartbeats, so what an idle process costs
 * Redis does not grow with the number of processes.
 */

export type InvalidationKind = 'delete' | 'clear' | 'owner' | 'credential'

export interface InvalidationMessage {
  kind: InvalidationKind
  instance: string
  /** The key hash of a delete, the owner id of an owner's deletion, the storage key of a credential. */
  payload?: string
}

const CODES: Record<InvalidationKind, string> = { delete: 'd', clear: 'c', owner: 'o', credential: 'k' }
const KINDS: Record<string, InvalidationKind> = { d: 'delete', c: 'clear', o: 'owner', k: 'credential' }

export function encodeMessage (message: InvalidationMessage): string {
  const head = `${CODES[message.kind]}:${message.instance}`
  return message.payload === undefined ? head : `${head}:${message.payload}`
}

/** Undefined for anything that is not a message of this protocol. */
export function parseMessage (text: string): InvalidationMessage | undefined {
  const kind = KINDS[text.charAt(0)]
  if (kind === undefined || text.charAt(1) !== ':') return undefined
  const end = text.indexOf(':', 2)
  const instance = end === -1 ? text.slice(2) : text.slice(2, end)
  if (instance.length === 0) return undefined
  if (kind !== 'clear') {
    const payload = end === -1 ? '' : text.slice(end + 1)
    return payload.length === 0 ? undefined : { kind, instance, payload }
  }
  return end === -1 ? { kind, instance } : undefined
}

/** Channels ignore the client's keyPrefix, so it is part of the name: apps with other prefixes never hear each other. */
export function channelName (redis: RedisAdapter, keyPrefix: string): string {
  return `fastify-auth-cache:invalidate:${redis.keyPrefix}${keyPrefix}`
}

export interface InvalidationHandlers {
  /** Another process invalidated something. */
  invalidated (message: InvalidationMessage): void
  /** The bus starts or stops vouching that no message was missed. */
  trustChanged (trusted: boolean): void
}

export interface InvalidationBusOptions {
  redis: RedisAdapter
  channel: string
  guard: RedisGuard
  log: FastifyBaseLogger
}

/** The channel of one process's heartbeats. */
function heartbeatChannel (instance: string): string {
  return `fastify-auth-cache:heartbeat:${instance}`
}

const HEARTBEAT_MS = 300
const DEADLINE_MS = 900
const CLOSE_TIMEOUT_MS = 1000

export class InvalidationBus {
  /** Identifies this process in its messages, so that it can ignore its own. */
  readonly instance = randomBytes(8).toString('hex')
  readonly channel: string
  readonly #heartbeatChannel = heartbeatChannel(this.instance)
  /** Invalidations received from other processes. */
  received = 0
  readonly #log: FastifyBaseLogger
  readonly #listeners: InvalidationHandlers[] = []
  readonly #redis: RedisAdapter
  readonly #guard: RedisGuard
  readonly #subscriber: RedisSubscriber
  // Bumped on every lost connection, so that an acknowledgement from before the loss is not
  // taken for one from after it.
  #connection = 0
  #subscribed = false
  #trusted = false
  #lastEcho = 0
  #timer: NodeJS.Timeout | undefined
  #closed = false
  #waiters: Array<() => void> = []

  constructor (options: InvalidationBusOptions) {
    this.channel = options.channel
    this.#log = options.log
    this.#redis = options.redis
    this.#guard = options.guard
    this.#subscriber = options.redis.subscriber('fastify-auth-cache:invalidations', {
      message: (channel, text) => this.#onMessage(channel, text),
      ready: () => this.#subscribe(),
      lost: () => this.#lost()
    })
  }

  get trusted (): boolean {
    return this.#trusted
  }

  /** Adds a listener: the API-key store and the credential stores of one app share the bus. */
  listen (handlers: InvalidationHandlers): void {
    this.#listeners.push(handlers)
  }

  /** The text of a message from this process. */
  message (kind: InvalidationKind, payload?: string): string {
    return encodeMessage({ kind, instance: this.instance, payload })
  }

  start (): void {
    this.#timer = setInterval(() => this.#heartbeat(), HEARTBEAT_MS)
    this.#timer.unref()
    this.#subscribe()
  }

  /** Resolves once the bus is trusted, or after `timeoutMs`, whichever comes first. */
  whenTrusted (timeoutMs: number): Promise<void> {
    if (this.#trusted) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs)
      const waiters = this.#waiters
      function done (): void {
        clearTimeout(timer)
        const at = waiters.indexOf(done)
        if (at !== -1) waiters.splice(at, 1)
        resolve()
      }
      waiters.push(done)
    })
  }

  #subscribe (): void {
    const connection = this.#connection
    this.#subscriber.subscribe([this.channel, this.#heartbeatChannel]).then(() => {
      if (connection !== this.#connection || this.#closed) return
      this.#subscribed = true
      this.#heartbeat()
    }, (err: unknown) => {
      this.#log.warn({ err }, 'fastify-auth-cache: subscribing to invalidations failed; process memory is bypassed')
    })
  }

  #lost (): void {
    this.#connection++
    this.#subscribed = false
    this.#setTrusted(false)
  }

  #heartbeat (): void {
    if (this.#closed) return
    if (this.#trusted && performance.now() - this.#lastEcho > DEADLINE_MS) {
      this.#log.warn('fastify-auth-cache: invalidation heartbeat missed; process memory is bypassed until it is heard again')
      this.#setTrusted(false)
    }
    this.#guard.offPath(() => this.#redis.publish(this.#heartbeatChannel, 'h')).catch(() => {
      // A failed publish shows up as a missed echo; the deadline above handles it.
    })
  }

  #onMessage (channel: string, text: string): void {
    if (channel === this.#heartbeatChannel) {
      if (!this.#subscribed) return
      this.#lastEcho = performance.now()
      this.#setTrusted(true)
      return
    }
    if (channel !== this.channel) return
    const message = parseMessage(text)
    if (message === undefined || message.instance === this.instance) return
    if (message.kind !== 'credential') this.received++
    for (const listener of this.#listeners) listener.invalidated(message)
  }

  #setTrusted (trusted: boolean): void {
    if (this.#trusted === trusted || (trusted && this.#closed)) return
    this.#trusted = trusted
    for (const listener of this.#listeners) listener.trustChanged(trusted)
    if (trusted) for (const resolve of [...this.#waiters]) resolve()
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#lost()
    if (this.#timer) clearInterval(this.#timer)
    for (const resolve of [...this.#waiters]) resolve()
    await this.#subscriber.close(CLOSE_TIMEOUT_MS)
  }
}
