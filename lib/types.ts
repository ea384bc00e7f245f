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
  /**
   * IPv4/IPv6 addresses and CIDR ranges the key may be used from (`request.ip`); any other
   * address is a 403. An empty list admits none; absent admits every address.
   */
  allowedIps?: readonly string[]
  [property: string]: unknown
}

/** The record type, as the user declared it through `FastifyAuthCacheTypes['apiKeyRecord']`. */
export type ApiKeyRecord = FastifyAuthCacheTypes extends { apiKeyRecord: infer R extends BaseApiKeyRecord } ? R : BaseApiKeyRecord

/** The credential type, as the user declared it through `FastifyAuthCacheTypes['credential']`. */
export type Credential = FastifyAuthCacheTypes extends { credential: infer C } ? C : unknown

export type BackendName = 'memory' | 'redis' | 'tiered'
