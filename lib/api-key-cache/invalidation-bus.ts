import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { RedisAdapter, RedisSubscriber } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import { workerClock } from '../worker-clock'

/**
 * The invalidation channel shared by every process of one app, its whole protocol in one place
 * (docs/protocol.md documents it for revokers written in other languages).
 *
 * Messages are `<kind>:<instance>:<revision>[:<payload>]`, published by the process that changed
 * something and acted on by every other process (each ignores its own):
 * - `d:<instance>:<revision>:<keyHash>`: an API key's entry was deleted;
 * - `c:<instance>:<revision>`: the API-key prefix was cleared;
 * - `o:<instance>:<revision>:<ownerId>`: every API-key entry whose record has that `ownerId` was
 *   deleted (the owner id is the rest of the message, colons included);
 * - `k:<instance>:0:<storage key>`: a credential was saved, updated or cleared.
 * `<revision>` is the value of the dataset's revision counter that the revocation set (see
 * dataset-revision.ts), or 0 when unknown.
 *
 * Pub/sub drops what is published while a subscriber is away, and a live connection may deliver
 * late, so process memory is trusted only while the bus can show that it hears the channel
 * promptly: every HEARTBEAT_MS the process publishes its send time on a channel of its own, which
 * its subscriber connection (subscribed to both channels at once, so messages arrive in publish
 * order) echoes back. An echo of a heartbeat sent at S proves that everything published before S
 * has been read, so memory is trusted until S + TRUST_DEADLINE_MS and no longer: a link that
 * delivers every byte seconds late loses trust within the deadline, however steady its echoes,
 * and so does a process whose event loop was stalled (the deadline is checked on each use
 * against a clock that a worker thread keeps running). Each process hears only its own heartbeats, so what an idle process costs
 * Redis does not grow with the number of processes.
 */

export type InvalidationKind = 'delete' | 'clear' | 'owner' | 'credential'

export interface InvalidationMessage {
  kind: InvalidationKind
  instance: string
  /** The dataset revision the change set; 0 when unknown. */
  revision: number
  /** The key hash of a delete, the owner id of an owner's deletion, the storage key of a credential. */
  payload?: string
}

const CODES: Record<InvalidationKind, string> = { delete: 'd', clear: 'c', owner: 'o', credential: 'k' }
const KINDS: Record<string, InvalidationKind> = { d: 'delete', c: 'clear', o: 'owner', k: 'credential' }
const REVISION = /^(0|[1-9][0-9]{0,15})$/

/** The text of a message, up to its revision, and after it: a script puts the revision between them. */
export function messageParts (kind: InvalidationKind, instance: string, payload?: string): [string, string] {
  return [`${CODES[kind]}:${instance}:`, payload === undefined ? '' : `:${payload}`]
}

export function encodeMessage (message: InvalidationMessage): string {
  const [head, tail] = messageParts(message.kind, message.instance, message.payload)
  return `${head}${message.revision}${tail}`
}

/** Undefined for anything that is not a message of this protocol. */
export function parseMessage (text: string): InvalidationMessage | undefined {
  const kind = KINDS[text.charAt(0)]
  if (kind === undefined || text.charAt(1) !== ':') return undefined
  const instanceEnd = text.indexOf(':', 2)
  if (instanceEnd <= 2) return undefined
  const instance = text.slice(2, instanceEnd)
  const revisionEnd = text.indexOf(':', instanceEnd + 1)
  const revisionText = revisionEnd === -1 ? text.slice(instanceEnd + 1) : text.slice(instanceEnd + 1, revisionEnd)
  if (!REVISION.test(revisionText)) return undefined
  const revision = Number(revisionText)
  if (kind === 'clear') return revisionEnd === -1 ? { kind, instance, revision } : undefined
  const payload = revisionEnd === -1 ? '' : text.slice(revisionEnd + 1)
  return payload.length === 0 ? undefined : { kind, instance, revision, payload }
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
  /** Called every heartbeat interval, for periodic checks that belong to the listener. */
  tick? (): void
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
/** How old the newest echoed heartbeat may be while memory is trusted (contract: at most 1 s). */
const TRUST_DEADLINE_MS = 900
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
  // Memory is trusted while performance.now() is below this: the send time of the newest echoed
  // heartbeat plus the deadline. -Infinity while the subscription is not proven.
  #trustedUntil = -Infinity
  // What listeners were last told; a lapse of #trustedUntil is told at the next heartbeat or echo.
  #announced = false
  #epoch = 0
  readonly #clock = workerClock()
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

  /**
   * Whether process memory may answer now. Reads a clock that a worker thread keeps running
   * (worker-clock.ts): after a stalled event loop (a long synchronous task, a GC pause) the first
   * use finds the deadline passed, before any timer or queued message has run, at the cost of one
   * memory load.
   */
  get trusted (): boolean {
    return this.#clock[0]! < this.#trustedUntil
  }

  /**
   * A token that stays the same while the bus hears every invalidation without a break;
   * undefined while it does not. Work begun under one token may be trusted later only if the
   * token is unchanged then.
   */
  hearing (): number | undefined {
    if (!this.trusted) return undefined
    // A lapse not told yet still ends the period: it is told first.
    return this.#announced ? this.#epoch : undefined
  }

  /** Adds a listener: the API-key store and the credential stores of one app share the bus. */
  listen (handlers: InvalidationHandlers): void {
    this.#listeners.push(handlers)
  }

  /** The parts of a message from this process, around its revision (see messageParts). */
  messageParts (kind: InvalidationKind, payload?: string): [string, string] {
    return messageParts(kind, this.instance, payload)
  }

  start (): void {
    this.#timer = setInterval(() => this.#heartbeat(), HEARTBEAT_MS)
    this.#timer.unref()
    this.#subscribe()
  }

  /** Resolves once the bus is trusted, or after `timeoutMs`, whichever comes first. */
  whenTrusted (timeoutMs: number): Promise<void> {
    if (this.trusted) return Promise.resolve()
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
    this.#trustedUntil = -Infinity
    this.#announce(false)
  }

  #heartbeat (): void {
    if (this.#closed) return
    if (this.#announced && !this.trusted) {
      this.#log.warn('fastify-auth-cache: no timely heartbeat echo on the invalidation channel; process memory is bypassed until one is heard')
      this.#announce(false)
    }
    const sentAt = performance.now()
    this.#guard.offPath(() => this.#redis.publish(this.#heartbeatChannel, String(sentAt))).catch(() => {
      // A failed publish shows up as a missing echo; the deadline above handles it.
    })
    for (const listener of this.#listeners) listener.tick?.()
  }

  #onMessage (channel: string, text: string): void {
    if (channel === this.#heartbeatChannel) {
      this.#echoed(Number(text))
      return
    }
    if (channel !== this.channel) return
    const message = parseMessage(text)
    if (message === undefined || message.instance === this.instance) return
    if (message.kind !== 'credential') this.received++
    for (const listener of this.#listeners) listener.invalidated(message)
  }

  /** The echo of a heartbeat sent at `sentAt`: memory may be trusted until `sentAt` plus the deadline. */
  #echoed (sentAt: number): void {
    if (!this.#subscribed || !(sentAt > 0)) return
    // A lapse since the last echo is told before trust comes back: listeners then start afresh.
    if (this.#announced && !this.trusted) this.#announce(false)
    this.#trustedUntil = Math.max(this.#trustedUntil, sentAt + TRUST_DEADLINE_MS)
    if (this.trusted) this.#announce(true)
  }

  #announce (trusted: boolean): void {
    if (this.#announced === trusted || (trusted && this.#closed)) return
    this.#announced = trusted
    if (!trusted) this.#epoch++
    for (const listener of this.#listeners) listener.trustChanged(trusted)
    if (trusted) for (const resolve of [...this.#waiters]) resolve()
  }

  async close (): Promise<void> {
    // A clean shutdown is no loss of trust: nothing is told, and memory is no longer used.
    this.#closed = true
    this.#connection++
    this.#subscribed = false
    this.#trustedUntil = -Infinity
    if (this.#timer) clearInterval(this.#timer)
    for (const resolve of [...this.#waiters]) resolve()
    await this.#subscriber.close(CLOSE_TIMEOUT_MS)
  }
}
