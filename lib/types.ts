import type { ApiKeyQuota } from './quota/period'

/**
 * Declare your own record and credential types once, by declaration merging:
 *
 *     declare module 'fastify-auth-cache' {
 *       interface FastifyAuthCacheTypes {
 *         apiKeyRecord: { id: string, active: boolean, expiresAt?: number, scopes: string[] }
 *         credential: { accessToken: string, refreshToken: string, expiresAt: number }
 *       }
 *     }
 */
export interface FastifyAuthCacheTypes {}

/** What `lookup` answers for a known key. Any other JSON properties are kept as they are. */
export interface BaseApiKeyRecord {
  id: string
  active: boolean
  /** Epoch milliseconds after which the key is refused. */
  expiresAt?: number
  /** At most `limit` units of route cost per period, shared by every key of the owner (`ownerId`, else `id`). */
  quota?: ApiKeyQuota
  [property: string]: unknown
}

/** The record type, as the user declared it through `FastifyAuthCacheTypes['apiKeyRecord']`. */
export type ApiKeyRecord = FastifyAuthCacheTypes extends { apiKeyRecord: infer R extends BaseApiKeyRecord } ? R : BaseApiKeyRecord

/** The credential type, as the user declared it through `FastifyAuthCacheTypes['credential']`. */
export type Credential = FastifyAuthCacheTypes extends { credential: infer C } ? C : unknown

export type BackendName = 'memory' | 'redis' | 'tiered'
