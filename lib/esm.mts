// The ESM entry that package.json "exports" names for `import`: the very object CommonJS gets,
// as the default export, with the helpers as named exports. They are listed one by one, as
// bindings of this module, because Node cannot find the named exports of a CommonJS module
// whose `module.exports` is replaced by a function.
import plugin from './index.js'

export default plugin
export const {
  fastifyAuthCache, hashApiKey, generateApiKey, isWellFormedApiKey, jsonSerializer, encryptedSerializer, rateLimitByApiKey, redactingRequestSerializer, secretScanning, errors
} = plugin
export type {
  FastifyAuthCacheTypes, ApiKeyRecord, BaseApiKeyRecord, BackendName, Credential,
  FastifyAuthCacheOptions, ApiKeysOptions, CredentialsOptions, ApiKeyLookup,
  GeneratedApiKey, CredentialSerializer, SerializerContext, EncryptionKeys, ApiKeyRateLimit, RateLimitByApiKeyOptions,
  ApiKeyUsage, UsageReporter, ApiKeyCache, ApiKeyCacheStats, CredentialStore, UpdateOptions, GetFreshOptions,
  SecretScanningOptions, LeakedApiKey, OnLeak, PublicKeysDocument, SerializableRequest, SerializedRequest, ApiKeyQuota
} from './index.js'
