import createError from '@fastify/error'

// 401s and 503s are thrown on the request path; capturing a stack there costs more than
// the whole cache hit, and the stack would only ever point at this plugin.
const NO_STACK = false

export const InvalidOptionError = createError<[string, string]>(
  'FST_AUTH_CACHE_INVALID_OPTION', 'Invalid option "%s": %s', 500)

export const NoRedisError = createError<[string]>(
  'FST_AUTH_CACHE_NO_REDIS', 'backend "%s" needs a Redis client: pass the redis option or register @fastify/redis first', 500)

export const ApiKeyMissingError = createError<[]>(
  'FST_API_KEY_MISSING', 'Missing API key', 401, TypeError, NO_STACK)

export const ApiKeyInvalidError = createError<[]>(
  'FST_API_KEY_INVALID', 'Invalid API key', 401, TypeError, NO_STACK)

export const ApiKeyLookupFailedError = createError<[]>(
  'FST_API_KEY_LOOKUP_FAILED', 'API key could not be verified, try again later', 503, Error, NO_STACK)

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
