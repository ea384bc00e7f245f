import { hashApiKey } from '../api-keys/hash'
import { toStoredRecord } from '../api-keys/record'
import { InvalidOptionError } from '../errors'
import type { ApiKeyRecord, BackendName } from '../types'
import type { ApiKeyCacheStats, Counters } from './stats'
import { UNKNOWN_KEY, type ApiKeyStore } from './store'

/** `fastify.apiKeyCache`: the cached answers, as the contract shows them to users. */
export interface ApiKeyCache {
  /** The backend actually in use, after any fallback. */
  readonly backend: BackendName
  /** Lower-case hex SHA-256 of the UTF-8 key (= `hashApiKey`). */
  hash (key: string): string
  /** The cached record; undefined when absent, expired or cached as unknown. */
  get (keyHash: string): Promise<ApiKeyRecord | undefined>
  /** Caches `record` for `ttlSeconds`; a no-op when `ttlSeconds <= 0`. */
  set (keyHash: string, record: ApiKeyRecord, ttlSeconds: number): Promise<void>
  /** Every process sharing the backend stops using the entry; a lookup in flight cannot restore it. */
  delete (keyHash: string): Promise<void>
  /** Drops every entry of this prefix, and nothing else. */
  clear (): Promise<void>
  /**
   * Every process sharing the backend stops using the cached entries whose record has this
   * `ownerId` (other owners' entries stay cached); a lookup in flight cannot restore one.
   * One message whatever the owner's number of keys, and no index to keep.
   */
  deleteOwner (ownerId: string): Promise<void>
  /** Counters since start. */
  stats (): ApiKeyCacheStats
}

/** The public face of a store; nothing else of it is reachable from here. */
export function createApiKeyCache (store: ApiKeyStore, counters: Counters): ApiKeyCache {
  return {
    backend: store.backend,
    hash: hashApiKey,

    async get (keyHash) {
      const answer = await store.get(keyHash)
      return answer === UNKNOWN_KEY ? undefined : answer as ApiKeyRecord | undefined
    },

    async set (keyHash, record, ttlSeconds) {
      const stored = toStoredRecord(record)
      if (stored === 'not-a-record') {
        throw new InvalidOptionError('record', 'must be an object with a string "id", a boolean "active" of its own, and no "allowedIps" or a list of IP addresses and CIDR ranges')
      }
      if (stored === 'not-serializable') {
        throw new InvalidOptionError('record', 'must be JSON (no BigInt, no cycle, no throwing getter)')
      }
      if (typeof ttlSeconds !== 'number' || Number.isNaN(ttlSeconds)) {
        throw new InvalidOptionError('ttlSeconds', 'must be a number')
      }
      if (ttlSeconds <= 0) return
      await store.set(keyHash, stored, ttlSeconds * 1000)
    },

    delete: (keyHash) => store.delete(keyHash),
    clear: () => store.clear(),

    async deleteOwner (ownerId) {
      if (typeof ownerId !== 'string' || ownerId.length === 0) {
        throw new InvalidOptionError('ownerId', 'must be a non-empty string')
      }
      await store.deleteOwner(ownerId)
    },

    stats () {
      return { ...counters, invalidations: store.invalidationsReceived, rejections: { ...counters.rejections } }
    }
  }
}
