import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  CredentialsLockLostError, CredentialsLockTimeoutError, CredentialsSerializeError, InvalidOptionError
} from '../errors'
import type { CredentialByteStore } from './byte-store'
import type { CredentialMemory } from './credential-memory'
import { getFresh, type GetFreshOptions } from './get-fresh'
import type { KeyedMutex } from './keyed-mutex'
import { UPDATE_LOCK_TTL_MS, UPDATE_WAIT_MS, wholeMs } from '../limits'
import type { BackendName } from '../types'
import { unreadableCredential, type CredentialSerializer, type SerializerContext } from './serializer'

export interface UpdateOptions {
  /** How long a holder keeps the key if it dies; its save is refused after that. Default 10000. */
  lockTtlMs?: number
  /** How long to wait for the key before failing with FST_CREDENTIALS_LOCK_TIMEOUT. Default 5000. */
  waitMs?: number
}

export interface CredentialStoreSettings<T> {
  bytes: CredentialByteStore
  /** The tiered backend's process memory of decoded values; absent on memory and redis. */
  memory?: CredentialMemory
  mutex: KeyedMutex
  keyPrefix: string
  key: string
  serializer: CredentialSerializer<T>
  ttlSeconds: number | undefined
}

const RETRY_MIN_MS = 5
const RETRY_MAX_MS = 100

/** `fastify.credentialStore`: credentials under one key, shared by every process on the backend. */
export interface CredentialStore<T = unknown> {
  readonly backend: BackendName
  /** Undefined when absent or expired; FST_CREDENTIALS_DESERIALIZE, bytes untouched, when unreadable. */
  load (): Promise<T | undefined>
  /** Saves `value`, with `ttlSeconds` when set. */
  save (value: T): Promise<void>
  clear (): Promise<void>
  /** Another key on the same backend, with the same serializer and TTL. */
  scope (key: string): CredentialStore<T>
  /**
   * Runs `fn` on the latest saved value and saves its result, exclusively across every process
   * sharing the backend.
   */
  update (fn: (current: T | undefined) => T | Promise<T>, options?: UpdateOptions): Promise<T>
  /**
   * A value `isFresh` accepts now: the stored one, or one `refresh` made under the update lock
   * after re-reading it, once per expiry across every process sharing the backend.
   */
  getFresh (options: GetFreshOptions<T>): Promise<T>
}

export function createCredentialStore<T> (settings: CredentialStoreSettings<T>): CredentialStore<T> {
  return new KeyedCredentialStore(settings)
}

class KeyedCredentialStore<T> implements CredentialStore<T> {
  readonly #settings: CredentialStoreSettings<T>
  readonly #ctx: SerializerContext
  readonly #ttlMs: number | undefined

  constructor (settings: CredentialStoreSettings<T>) {
    this.#settings = settings
    this.#ctx = Object.freeze({ key: settings.keyPrefix + settings.key })
    this.#ttlMs = settings.ttlSeconds === undefined ? undefined : wholeMs(settings.ttlSeconds * 1000)
  }

  get backend (): BackendName {
    return this.#settings.memory === undefined ? this.#settings.bytes.backend : 'tiered'
  }

  /** From process memory when the tiered backend holds the value: no command to Redis, no decoding. */
  async load (): Promise<T | undefined> {
    const remembered = this.#settings.memory?.get(this.#ctx.key)
    if (remembered !== undefined) return remembered.value as T
    return await this.#loadStored()
  }

  /** From the byte store, never from process memory (which it refreshes on the tiered backend). */
  async #loadStored (): Promise<T | undefined> {
    const { memory } = this.#settings
    const key = this.#ctx.key
    const ticket = memory?.ticket(key)
    const { bytes, ttlMs } = memory === undefined
      ? { bytes: await this.#settings.bytes.get(key), ttlMs: undefined }
      : await this.#settings.bytes.getWithTtl(key)
    if (bytes === undefined) return undefined
    const value = await this.#decode(bytes)
    if (ticket !== undefined) memory!.fill(key, value, ttlMs, ticket)
    return value
  }

  async #decode (bytes: Buffer): Promise<T> {
    try {
      return await this.#settings.serializer.deserialize(bytes, this.#ctx)
    } catch (cause) {
      throw unreadableCredential(this.#ctx.key, cause)
    }
  }

  async save (value: T): Promise<void> {
    const bytes = await this.#encode(value)
    await this.#written(bytes, () => this.#settings.bytes.set(this.#ctx.key, bytes, this.#ttlMs))
  }

  async clear (): Promise<void> {
    await this.#written(undefined, () => this.#settings.bytes.delete(this.#ctx.key))
  }

  /**
   * Runs a write and keeps process memory right on the tiered backend: the old value is
   * forgotten before and after (the write's announcement reaches the other processes), and
   * what was written is remembered, decoded once here, so the next load needs no Redis.
   */
  async #written<R> (bytes: Buffer | undefined, write: () => Promise<R>): Promise<R> {
    const { memory } = this.#settings
    const key = this.#ctx.key
    if (memory === undefined) return await write()
    memory.remove(key)
    let result: R
    try {
      result = await write()
    } finally {
      memory.remove(key)
    }
    // A save refused because its lock was lost wrote nothing.
    if (bytes !== undefined && result !== false) {
      const ticket = memory.ticket(key)
      // Bytes that do not decode are not remembered; the next load reports them.
      const decoded = await this.#decode(bytes).then((value) => ({ value }), () => undefined)
      if (decoded !== undefined) memory.fill(key, decoded.value, this.#ttlMs, ticket)
    }
    return result
  }

  scope (key: string): CredentialStore<T> {
    if (typeof key !== 'string' || key.length === 0) throw new InvalidOptionError('scope', 'must be a non-empty string')
    return new KeyedCredentialStore({ ...this.#settings, key })
  }

  /**
   * Nothing is written when `fn` or `serialize` throws, when the key cannot
   * be had within `waitMs`, or when this holder's lock expired before the save.
   */
  async update (fn: (current: T | undefined) => T | Promise<T>, options: UpdateOptions = {}): Promise<T> {
    if (typeof fn !== 'function') throw new InvalidOptionError('fn', 'must be a function')
    return (await this.#locked(fn, undefined, options)).value as T
  }

  /**
   * The update protocol: under the key's lock, `fn` runs on the stored value and its result is
   * saved, unless `keep` says the stored value stands as it is (then nothing is written).
   */
  async #locked (fn: (current: T | undefined) => T | Promise<T>, keep: ((current: T | undefined) => boolean) | undefined,
    options: UpdateOptions): Promise<{ value: T | undefined, saved: boolean }> {
    const lockTtlMs = options.lockTtlMs ?? UPDATE_LOCK_TTL_MS
    const waitMs = options.waitMs ?? UPDATE_WAIT_MS
    if (!(lockTtlMs > 0) || !Number.isFinite(lockTtlMs)) throw new InvalidOptionError('lockTtlMs', 'must be a positive number')
    if (!(waitMs >= 0) || !Number.isFinite(waitMs)) throw new InvalidOptionError('waitMs', 'must be zero or more')

    const { bytes, mutex } = this.#settings
    const key = this.#ctx.key
    const deadline = performance.now() + waitMs
    const timeout = (): Error => new CredentialsLockTimeoutError(key, waitMs)
    const release = await mutex.acquire(key, waitMs, lockTtlMs, timeout)
    try {
      const token = randomBytes(16).toString('hex')
      const lockMs = wholeMs(lockTtlMs)
      let delay = RETRY_MIN_MS
      try {
        while (!(await bytes.tryLock(key, token, lockMs))) {
          const left = deadline - performance.now()
          if (left <= 0) throw timeout()
          // Jitter keeps waiters in several processes from retrying in lockstep.
          await sleep(Math.min(left, delay * (0.5 + Math.random())))
          delay = Math.min(RETRY_MAX_MS, delay * 2)
        }
      } catch (err) {
        // A try whose reply was lost (or came too late) may have taken the lock after all: giving
        // up releases it, so that other processes wait no longer than this caller did.
        bytes.unlock(key, token).catch(() => {})
        throw err
      }
      let saved = false
      try {
        // The latest saved value, from Redis: process memory may not have heard of a change yet.
        const current = await this.#loadStored()
        if (keep?.(current) === true) return { value: current, saved: false }
        const next = await fn(current)
        const encoded = await this.#encode(next)
        if (!(await this.#written(encoded, () => bytes.saveAndUnlock(key, token, encoded, this.#ttlMs)))) {
          throw new CredentialsLockLostError(key)
        }
        saved = true
        return { value: next, saved }
      } finally {
        if (!saved) await bytes.unlock(key, token).catch(() => {})
      }
    } finally {
      release()
    }
  }

  getFresh (options: GetFreshOptions<T>): Promise<T> {
    return getFresh({
      key: this.#ctx.key,
      owner: this.#settings.bytes,
      load: () => this.load(),
      update: (keep, fn, updateOptions) => this.#locked(fn, keep, updateOptions)
    }, options)
  }

  async #encode (value: T): Promise<Buffer> {
    let raw: unknown
    try {
      raw = await this.#settings.serializer.serialize(value, this.#ctx)
    } catch (cause) {
      const err = new CredentialsSerializeError(this.#ctx.key)
      err.cause = cause
      throw err
    }
    if (typeof raw === 'string') return Buffer.from(raw, 'utf8')
    if (Buffer.isBuffer(raw)) return raw
    throw new CredentialsSerializeError(this.#ctx.key)
  }
}
