import createError from '@fastify/error'

// Errors thrown on the request path skip the stack: capturing one costs more than a whole
// cache hit, and it would only ever point into this plugin.
const NO_STACK = false

export const InvalidOptionError = createError<[string, string]>(
  'FST_AUTH_CACHE_INVALID_OPTION', 'Invalid option "%s": %s', 500)

export const NoRedisError = createError<[string]>(
  'FST_AUTH_CACHE_NO_REDIS', 'backend "%s" needs a Redis client: pass the redis option or register @fastify/redis first', 500)

export const ApiKeyMissingError = createError<[]>(
  'FST_API_KEY_MISSING', 'Missing API key', 401, TypeError, NO_STACK)

export const ApiKeyInvalidError = createError<[]>(
  'FST_API_KEY_INVALID', 'Invalid API key', 401, TypeError, NO_STACK)

export const ApiKeyForbiddenError = createError<[]>(
  'FST_API_KEY_FORBIDDEN', 'API key lacks a scope this route requires', 403, Error, NO_STACK)

export const ApiKeyLookupFailedError = createError<[]>(
  'FST_API_KEY_LOOKUP_FAILED', 'API key could not be verified, try again later', 503, Error, NO_STACK)

/** The owner's quota for the current period is spent; `Retry-After` says when it starts again. */
export const ApiKeyQuotaExceededError = createError<[]>(
  'FST_API_KEY_QUOTA_EXCEEDED', 'API key quota exceeded for this period', 429, Error, NO_STACK)

/** A quota lease was needed and the store could not grant one within `redisTimeoutMs`. */
export const QuotaUnavailableError = createError<[]>(
  'FST_API_KEY_QUOTA_UNAVAILABLE', 'API key quota could not be checked, try again later', 503, Error, NO_STACK)

/** A Redis call did not answer within its bound (`redisTimeoutMs` on the request path, 5 s elsewhere). */
export const RedisTimeoutError = createError<[number]>(
  'FST_AUTH_CACHE_REDIS_TIMEOUT', 'Redis did not answer within %d ms', 500, Error, NO_STACK)

/** Redis failed a moment ago and is skipped until its backoff window ends. */
export const RedisUnavailableError = createError<[]>(
  'FST_AUTH_CACHE_REDIS_UNAVAILABLE', 'Redis is being skipped after a recent failure', 500, Error, NO_STACK)

/** A revocation reached the master but no replica acknowledged it in time; retry it. */
export const RevocationNotReplicatedError = createError<[number]>(
  'FST_AUTH_CACHE_NOT_REPLICATED', 'The revocation was not acknowledged by a replica within %d ms; retry it', 500)

export const CredentialsDeserializeError = createError<[string]>(
  'FST_CREDENTIALS_DESERIALIZE', 'Stored credentials under "%s" could not be deserialized', 500)

export const CredentialsSerializeError = createError<[string]>(
  'FST_CREDENTIALS_SERIALIZE', 'Credentials for "%s" could not be serialized', 500)

export const CredentialsLockTimeoutError = createError<[string, number]>(
  'FST_CREDENTIALS_LOCK_TIMEOUT', 'Could not lock credentials "%s" within %d ms', 500)

export const CredentialsLockLostError = createError<[string]>(
  'FST_CREDENTIALS_LOCK_LOST', 'The lock on credentials "%s" expired before the update was saved; nothing was written', 500)

export const CredentialsRefreshFailedError = createError<[string]>(
  'FST_CREDENTIALS_REFRESH_FAILED', 'Refreshing credentials "%s" failed', 500)

/** secretScanning: a report without a valid GitHub signature; nothing in it was acted on. */
export const SecretScanningSignatureError = createError<[]>(
  'FST_SECRET_SCANNING_SIGNATURE_INVALID', 'Missing or invalid GitHub secret scanning signature', 401, Error, NO_STACK)

/** secretScanning: GitHub's public keys could not be fetched in time, so the signature could not be checked. */
export const SecretScanningKeysUnavailableError = createError<[]>(
  'FST_SECRET_SCANNING_KEYS_UNAVAILABLE', 'GitHub secret scanning public keys are unavailable, try again later', 503, Error, NO_STACK)

export const SecretScanningBadReportError = createError<[string]>(
  'FST_SECRET_SCANNING_BAD_REPORT', 'Secret scanning report %s', 400, Error, NO_STACK)

export const SecretScanningTooManyTokensError = createError<[number]>(
  'FST_SECRET_SCANNING_TOO_MANY_TOKENS', 'A secret scanning report holds at most %d tokens', 413, Error, NO_STACK)

/** secretScanning: the user's onLeak failed; the key was still dropped from the cache, and GitHub retries. */
export const SecretScanningOnLeakFailedError = createError<[]>(
  'FST_SECRET_SCANNING_ON_LEAK_FAILED', 'Revoking a leaked API key failed, try again later', 500, Error, NO_STACK)
