import type entry = require('./index')
import type { ApiKeyQuota } from './quota/period'

/**
 * The user's own types, declared by merging into the interface the package's entry exports
 * (see index.ts, where it is declared and documented).
 */
export type FastifyAuthCacheTypes = entry.FastifyAuthCacheTypes

/** What `lookup` answers for a known key. Any other JSON properties are kept as they are. */
export interface BaseApiKeyRecord {
  id: string
  active: boolean
  /** Epoch milliseconds after which the key is refused. */
  expiresAt?: number
  /**
   * IPv4/IPv6 addresses and CIDR ranges the key may be used from (`request.ip`); any other
   * address is a 403. An empty list admits none; absent admits every address.
   */
  allowedIps?: readonly string[]
  /** At most `limit` units of route cost per period, shared by every key of the owner (`ownerId`, else `id`). */
  quota?: ApiKeyQuota
  [property: string]: unknown
}

/** The record type, as the user declared it through `FastifyAuthCacheTypes['apiKeyRecord']`. */
export type ApiKeyRecord = FastifyAuthCacheTypes extends { apiKeyRecord: infer R extends BaseApiKeyRecord } ? R : BaseApiKeyRecord

/** The credential type, as the user declared it through `FastifyAuthCacheTypes['credential']`. */
export type Credential = FastifyAuthCacheTypes extends { credential: infer C } ? C : unknown

export type BackendName = 'memory' | 'redis' | 'tiered'
