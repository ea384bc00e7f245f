import type { FastifyReply } from 'fastify'
import type { ApiKeyCache } from './api-key-cache/api-key-cache'
import type { CredentialStore } from './credentials/credential-store'
import { plugin } from './plugin'
import type { ApiKeyRecord, Credential } from './types'

declare module 'fastify' {
  interface FastifyInstance {
    apiKeyCache: ApiKeyCache
    /** The hook's check as an async handler, for a route's own `onRequest` or @fastify/auth. */
    verifyApiKey: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
    credentialStore: CredentialStore<Credential>
  }
  interface FastifyRequest {
    /** The authenticated key's record; null on routes with `config: { apiKey: false }`. */
    apiKey: ApiKeyRecord
  }
  interface FastifyContextConfig {
    /**
     * `false` opts the route out of API-key authentication; `true` or absent authenticates;
     * `{ scopes }` also requires every listed scope of the key's record (else 403). (`& object`
     * keeps a string from passing where Fastify infers the route's config type from its value.)
     * `cost` is what one request spends of the owner's quota (a positive integer, default 1).
     */
    apiKey?: boolean | ({ scopes?: readonly string[], cost?: number } & object)
  }
}

export { plugin as fastifyAuthCache, plugin as default }
export { hashApiKey } from './api-keys/hash'
export { generateApiKey, isWellFormedApiKey, type GeneratedApiKey } from './api-keys/key-format'
export { jsonSerializer, type CredentialSerializer, type SerializerContext } from './credentials/serializer'
export { encryptedSerializer, type EncryptionKeys } from './credentials/encrypted-serializer'
export { rateLimitByApiKey, type ApiKeyRateLimit, type RateLimitByApiKeyOptions } from './rate-limit/rate-limit-by-api-key'
export type { ApiKeyUsage, UsageReporter } from './usage/usage-recorder'
export type { ApiKeyCache } from './api-key-cache/api-key-cache'
export type { ApiKeyCacheStats } from './api-key-cache/stats'
export type { CredentialStore, UpdateOptions } from './credentials/credential-store'
export type { GetFreshOptions } from './credentials/get-fresh'
export type { FastifyAuthCacheOptions, ApiKeysOptions, CredentialsOptions, ApiKeyLookup } from './options'
export type { ApiKeyQuota } from './quota/period'
export type { FastifyAuthCacheTypes, ApiKeyRecord, BaseApiKeyRecord, BackendName, Credential } from './types'
export * as errors from './errors'

// CommonJS consumers expect `require('fastify-auth-cache')` to be the plugin itself, with the
// helpers as its properties (as every fastify plugin does); ESM consumers get the same object
// as the default export and the helpers as named exports.
module.exports = Object.assign(plugin, module.exports)
