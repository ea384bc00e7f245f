import { CredentialsDeserializeError } from '../errors'
import { clientKeyPrefix, defineScript, type RedisClient } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import { RELEASE_LOCK, SAVE_AND_RELEASE, slotSibling } from '../redis/scripts'
import type { CredentialByteStore } from './byte-store'

const RELEASE = 'fastifyAuthCacheUnlock'
const SAVE = 'fastifyAuthCacheSaveUnlock'
// Credentials are off the request path, but a stalled Redis must still not hang a caller forever.
const TIMEOUT_MS = 5_000

/** `${keyPrefix}${key}` holds the bytes; its lock `{${keyPrefix}${key}}:lock` shares its hash slot. */
export class RedisCredentialByteStore implements CredentialByteStore {
  readonly backend = 'redis' as const

  constructor (private readonly client: RedisClient, private readonly guard: RedisGuard) {
    defineScript(client, RELEASE, 1, RELEASE_LOCK)
    defineScript(client, SAVE, 2, SAVE_AND_RELEASE)
  }

  /** The hash tag holds the client's keyPrefix, which ioredis prepends to both keys, so they share a slot. */
  private lockKey (key: string): string {
    return slotSibling(clientKeyPrefix(this.client) + key, ':lock')
  }

  private call<T> (operation: () => Promise<T>): Promise<T> {
    return this.guard.bounded(operation, TIMEOUT_MS)
  }

  async get (key: string): Promise<Buffer | undefined> {
    try {
      return (await this.call(() => this.client.getBuffer(key))) ?? undefined
    } catch (err) {
      // A list, hash or set under the credential's key is unreadable bytes like any other junk,
      // not a failing Redis; it is left as it is.
      if ((err as Error).message?.startsWith('WRONGTYPE')) {
        const unreadable = new CredentialsDeserializeError(key)
        unreadable.cause = err
        throw unreadable
      }
      throw err
    }
  }

  async set (key: string, bytes: Buffer, ttlMs: number | undefined): Promise<void> {
    await this.call(() => ttlMs === undefined
      ? this.client.set(key, bytes)
      : this.client.set(key, bytes, 'PX', ttlMs))
  }

  async delete (key: string): Promise<void> {
    await this.call(() => this.client.del(key))
  }

  async tryLock (key: string, token: string, ttlMs: number): Promise<boolean> {
    const reply = await this.call(() => this.client.set(this.lockKey(key), token, 'PX', ttlMs, 'NX'))
    return reply === 'OK'
  }

  async saveAndUnlock (key: string, token: string, bytes: Buffer, ttlMs: number | undefined): Promise<boolean> {
    const reply = await this.call(() => this.client[SAVE](key, this.lockKey(key), token, bytes, ttlMs ?? 0))
    return reply === 1
  }

  async unlock (key: string, token: string): Promise<void> {
    await this.call(() => this.client[RELEASE](this.lockKey(key), token))
  }
}
