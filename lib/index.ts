import type { FastifyReply } from 'fastify'
import type * as apiKeyCache from './api-key-cache/api-key-cache'
import type * as stats from './api-key-cache/stats'
import { hashApiKey } from './api-keys/hash'
import { generateApiKey, isWellFormedApiKey } from './api-keys/key-format'
import type * as keyFormat from './api-keys/key-format'
import type * as credentialStore from './credentials/credential-store'
import { encryptedSerializer } from './credentials/encrypted-serializer'
import type * as encryption from './credentials/encrypted-serializer'
import type * as getFresh from './credentials/get-fresh'
import { jsonSerializer } from './credentials/serializer'
import type * as serializer from './credentials/serializer'
import * as errors from './errors'
import type * as options from './options'
import type * as quota from './quota/period'
import { plugin } from './plugin'
import { rateLimitByApiKey } from './rate-limit/rate-limit-by-api-key'
import { redactingRequestSerializer } from './redacting-request-serializer'
import type * as redacting from './redacting-request-serializer'
import { secretScanning } from './secret-scanning/plugin'
import type * as secretScanningOptions from './secret-scanning/options'
import type * as signature from './secret-scanning/signature'
import type * as rateLimit from './rate-limit/rate-limit-by-api-key'
import type * as types from './types'
import type * as usage from './usage/usage-recorder'

declare module 'fastify' {
  interface FastifyInstance {
    apiKeyCache: apiKeyCache.ApiKeyCache
    /** The hook's check as an async handler, for a route's own `onRequest` or @fastify/auth. */
    verifyApiKey: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
    credentialStore: credentialStore.CredentialStore<types.Credential>
  }
  interface FastifyRequest {
    /**
     * The authenticated key's record; null on routes with `config: { apiKey: false }`, and on
     * routes with `config: { apiKey: { optional: true } }` when the request sent no key.
     */
    apiKey: types.ApiKeyRecord
  }
  interface FastifyContextConfig {
    /**
     * `false` opts the route out of API-key authentication; `true` or absent authenticates;
     * `{ scopes }` also requires every listed scope of the key's record (else 403);
     * `{ optional: true }` runs the route without a key (`request.apiKey` null) and checks a key
     * that is sent; `cost` is what one request spends of the owner's quota (a positive integer,
     * default 1). (`& object` keeps a string from passing where Fastify infers the route's config
     * type from its value.)
     */
    apiKey?: boolean | ({ scopes?: readonly string[], optional?: boolean, cost?: number } & object)
  }
}

const helpers = {
  hashApiKey,
  generateApiKey,
  isWellFormedApiKey,
  jsonSerializer,
  encryptedSerializer,
  rateLimitByApiKey,
  redactingRequestSerializer,
  secretScanning,
  errors
}

/** The plugin, with the helpers as its properties, and itself as `.default` and `.fastifyAuthCache`. */
type FastifyAuthCachePlugin = typeof plugin & typeof helpers & {
  fastifyAuthCache: FastifyAuthCachePlugin
  default: FastifyAuthCachePlugin
}

/**
 * `require('fastify-auth-cache')` is the plugin itself, as with every Fastify plugin, and
 * `.default` / `.fastifyAuthCache` are it too, so that `import x from`, `import { fastifyAuthCache }
 * from` and `require` give the same object in every module system. (`export =` below types it
 * so for CommonJS; esm.mts re-exports it for ESM.)
 */
const fastifyAuthCache = Object.assign(plugin, helpers) as FastifyAuthCachePlugin
fastifyAuthCache.fastifyAuthCache = fastifyAuthCache
fastifyAuthCache.default = fastifyAuthCache

// The types of the package, merged with the value under one name, as `export =` requires.
// Only types live here, so the namespace emits no code.
// eslint-disable-next-line @typescript-eslint/no-redeclare
declare namespace fastifyAuthCache {
  /**
   * Declare your own record and credential types once, by declaration merging:
   *
   *     declare module 'fastify-auth-cache' {
   *       interface FastifyAuthCacheTypes {
   *         apiKeyRecord: { id: string, active: boolean, expiresAt?: number, scopes: string[] }
   *         credential: { accessToken: string, refreshToken: string, expiresAt: number }
   *       }
   *     }
   *
   * (It is declared here, in the package's entry, because that is what a user's
   * `declare module 'fastify-auth-cache'` merges into; types.ts reads it from here.)
   */
  export interface FastifyAuthCacheTypes {}
  export type ApiKeyRecord = types.ApiKeyRecord
  export type BaseApiKeyRecord = types.BaseApiKeyRecord
  export type BackendName = types.BackendName
  export type Credential = types.Credential
  export type FastifyAuthCacheOptions = options.FastifyAuthCacheOptions
  export type ApiKeysOptions = options.ApiKeysOptions
  export type CredentialsOptions<T = types.Credential> = options.CredentialsOptions<T>
  export type ApiKeyLookup = options.ApiKeyLookup
  export type GeneratedApiKey = keyFormat.GeneratedApiKey
  export type CredentialSerializer<T = unknown> = serializer.CredentialSerializer<T>
  export type SerializerContext = serializer.SerializerContext
  export type EncryptionKeys = encryption.EncryptionKeys
  export type ApiKeyRateLimit = rateLimit.ApiKeyRateLimit
  export type RateLimitByApiKeyOptions = rateLimit.RateLimitByApiKeyOptions
  export type ApiKeyUsage = usage.ApiKeyUsage
  export type UsageReporter = usage.UsageReporter
  export type ApiKeyCache = apiKeyCache.ApiKeyCache
  export type ApiKeyCacheStats = stats.ApiKeyCacheStats
  export type CredentialStore<T = unknown> = credentialStore.CredentialStore<T>
  export type UpdateOptions = credentialStore.UpdateOptions
  export type GetFreshOptions<T> = getFresh.GetFreshOptions<T>
  export type SecretScanningOptions = secretScanningOptions.SecretScanningOptions
  export type LeakedApiKey = secretScanningOptions.LeakedApiKey
  export type OnLeak = secretScanningOptions.OnLeak
  export type PublicKeysDocument = signature.PublicKeysDocument
  export type SerializableRequest = redacting.SerializableRequest
  export type SerializedRequest = redacting.SerializedRequest
  export type ApiKeyQuota = quota.ApiKeyQuota
}

export = fastifyAuthCache
