import { unreadableCredential } from './serializer'
import type { RedisAdapter } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import { ACQUIRE_LOCK, DELETE_RECORD, RELEASE_LOCK, SAVE_AND_ANNOUNCE, SAVE_AND_RELEASE, SAVE_RECEIPT_MS, slotSibling } from '../redis/scripts'
import type { CredentialByteStore } from './byte-store'

/** Tells the other processes of a tiered backend that a credential changed, from the script that changes it. */
export interface CredentialAnnouncer {
  channel: string
  /** The message's text before its revision and after it (a credential's revision is always 0). */
  changed (key: string): [string, string]
}

/**
 * `${keyPrefix}${key}` holds the bytes; its lock is `${keyPrefix}{<stored key>}:lock` and the
 * receipt of its last locked save `${keyPrefix}{<stored key>}:saved`, under the same prefix (so
 * an ACL granting the prefix covers them) and in the same hash slot.
 */
export class RedisCredentialByteStore implements CredentialByteStore {
  readonly backend = 'redis' as const
  readonly #redis: RedisAdapter
  readonly #guard: RedisGuard
  readonly #keyPrefix: string
  readonly #announcer: CredentialAnnouncer | undefined

  constructor (redis: RedisAdapter, guard: RedisGuard, keyPrefix: string, announcer?: CredentialAnnouncer) {
    this.#redis = redis
    this.#guard = guard
    this.#keyPrefix = keyPrefix
    this.#announcer = announcer
  }

  #announcement (key: string): [string, string] {
    if (this.#announcer === undefined) return ['', '']
    const [head, tail] = this.#announcer.changed(key)
    return [this.#announcer.channel, `${head}0${tail}`]
  }

  #lockKey (key: string): string {
    // The client prepends its own keyPrefix to both keys, so the hash tag holds it too.
    return slotSibling(this.#keyPrefix, this.#redis.keyPrefix + key, ':lock')
  }

  #receiptKey (key: string): string {
    return slotSibling(this.#keyPrefix, this.#redis.keyPrefix + key, ':saved')
  }

  get (key: string): Promise<Buffer | undefined> {
    return this.#read(key, async () => (await this.#redis.getBuffer(key)) ?? undefined)
  }

  getWithTtl (key: string): Promise<{ bytes: Buffer | undefined, ttlMs: number | undefined }> {
    return this.#read(key, async () => {
      const [bytes, ttl] = await this.#redis.getBufferWithTtl(key)
      return { bytes: bytes ?? undefined, ttlMs: ttl < 0 ? undefined : ttl }
    })
  }

  async #read<R> (key: string, read: () => Promise<R>): Promise<R> {
    try {
      return await this.#guard.offPath(read)
    } catch (err) {
      // A list, hash or set under the credential's key is unreadable bytes like any other junk,
      // not a failing Redis; it is left as it is.
      if ((err as Error).message?.startsWith('WRONGTYPE')) throw unreadableCredential(key, err)
      throw err
    }
  }

  async set (key: string, bytes: Buffer, ttlMs: number | undefined): Promise<void> {
    if (this.#announcer === undefined) {
      await this.#guard.offPath(() => this.#redis.set(key, bytes, ttlMs))
      return
    }
    await this.#guard.offPath(() => this.#redis.run(SAVE_AND_ANNOUNCE, [key], [bytes, ttlMs ?? 0, ...this.#announcement(key)]))
  }

  async delete (key: string): Promise<void> {
    const announcer = this.#announcer
    if (announcer === undefined) {
      await this.#guard.offPath(() => this.#redis.del(key))
      return
    }
    const [head, tail] = announcer.changed(key)
    await this.#guard.offPath(() => this.#redis.run(DELETE_RECORD, [key], [announcer.channel, head, tail]))
  }

  tryLock (key: string, token: string, ttlMs: number): Promise<boolean> {
    return this.#guard.offPath(async () => await this.#redis.run(ACQUIRE_LOCK, [this.#lockKey(key)], [token, ttlMs]) === 1)
  }

  async saveAndUnlock (key: string, token: string, bytes: Buffer, ttlMs: number | undefined): Promise<boolean> {
    const reply = await this.#guard.offPath(() => this.#redis.run(SAVE_AND_RELEASE, [key, this.#lockKey(key), this.#receiptKey(key)],
      [token, bytes, ttlMs ?? 0, ...this.#announcement(key), SAVE_RECEIPT_MS]))
    return reply === 1
  }

  async unlock (key: string, token: string): Promise<void> {
    await this.#guard.offPath(() => this.#redis.run(RELEASE_LOCK, [this.#lockKey(key)], [token]))
  }
}
