import type { ApiKeyLookup } from './api-key-cache/api-key-cache'
import { assertKeyPrefix } from './api-keys/key-format'
import { jsonSerializer, type CredentialSerializer, type SerializerContext } from './credentials/serializer'
import { InvalidOptionError } from './errors'
import type { RedisClient } from './redis/client'
import type { BackendName, Credential } from './types'

export interface ApiKeysOptions {
  /** Source of truth: the record for a key hash, or null/undefined for an unknown key. Required when `hook` is true. */
  lookup?: ApiKeyLookup
  /** Header carrying the key; 'authorization' means `Authorization: Bearer <key>`. Default 'x-api-key'. */
  header?: string
  /** Lifetime of a cached record; <= 0 caches nothing. Default 60. */
  ttlSeconds?: number
  /** Lifetime of a cached unknown key; <= 0 caches none. Default 5. */
  negativeTtlSeconds?: number
  /** Redis key prefix. Default 'apikey:'. */
  keyPrefix?: string
  /** Entries held in process memory (memory backend, tiered L1). Default 10000. */
  max?: number
  /** Add the `onRequest` authentication hook. Default true. */
  hook?: boolean
  /** Realm in `WWW-Authenticate`. Default 'api'. */
  realm?: string
  /** Only keys made by `generateApiKey({ prefix })` reach the cache or `lookup`. */
  format?: { prefix: string }
}

export interface CredentialsOptions<T = Credential> {
  /** The key of `fastify.credentialStore`. Default 'default'. */
  key?: string
  /** Redis key prefix. Default 'credentials:'. */
  keyPrefix?: string
  serialize?: (value: T, ctx: SerializerContext) => string | Buffer | Promise<string | Buffer>
  deserialize?: (raw: Buffer, ctx: SerializerContext) => T | Promise<T>
  /** Expiry of saved credentials; none by default. */
  ttlSeconds?: number
  /** Default: the plugin's backend ('tiered' means 'redis'). */
  backend?: BackendName
}

export interface FastifyAuthCacheOptions {
  /** Default 'memory'. */
  backend?: BackendName
  /** An @fastify/redis namespace, or an ioredis Redis/Cluster. Default: `fastify.redis`. */
  redis?: string | RedisClient
  /** Fail at `ready()` instead of falling back to memory when Redis is missing. Default false. */
  strict?: boolean
  /** Bound on every Redis call made on the request path. Default 100. */
  redisTimeoutMs?: number
  apiKeys?: ApiKeysOptions
  credentials?: CredentialsOptions
}

export interface ResolvedOptions {
  backend: BackendName
  redis: string | RedisClient | undefined
  strict: boolean
  redisTimeoutMs: number
  apiKeys: {
    lookup: ApiKeyLookup | undefined
    header: string
    ttlSeconds: number
    negativeTtlSeconds: number
    keyPrefix: string
    max: number
    hook: boolean
    realm: string
    formatPrefix: string | undefined
  }
  credentials: {
    key: string
    keyPrefix: string
    serializer: CredentialSerializer<any>
    ttlSeconds: number | undefined
    backend: BackendName | undefined
  }
}

const BACKENDS: readonly BackendName[] = ['memory', 'redis', 'tiered']
// A token of RFC 7230: what a header name may be made of.
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const QUOTED_SAFE = /^[^"\\\u0000-\u001f\u007f]*$/ // eslint-disable-line no-control-regex

function fail (name: string, why: string): never {
  throw new InvalidOptionError(name, why)
}

function object<T> (value: T | undefined, name: string): Partial<T> {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(name, 'must be an object')
  return value
}

function optional<T> (value: unknown, fallback: T, name: string, check: (v: unknown) => boolean, why: string): T {
  if (value === undefined) return fallback
  if (!check(value)) fail(name, why)
  return value as T
}

const isNumber = (v: unknown): boolean => typeof v === 'number' && Number.isFinite(v)
const isBoolean = (v: unknown): boolean => typeof v === 'boolean'
const isString = (v: unknown): boolean => typeof v === 'string'
const isFunction = (v: unknown): boolean => typeof v === 'function'

/** Validates everything at registration, so a bad option fails `ready()` and never a request. */
export function resolveOptions (raw: FastifyAuthCacheOptions): ResolvedOptions {
  const options = object(raw, 'options')
  const backend = optional<BackendName>(options.backend, 'memory', 'backend',
    (v) => BACKENDS.includes(v as BackendName), `must be one of ${BACKENDS.join(', ')}`)
  const redis = options.redis
  if (redis !== undefined && typeof redis !== 'string' && (typeof redis !== 'object' || redis === null)) {
    fail('redis', 'must be an @fastify/redis namespace or an ioredis client')
  }
  const redisTimeoutMs = optional(options.redisTimeoutMs, 100, 'redisTimeoutMs',
    (v) => isNumber(v) && (v as number) > 0, 'must be a positive number of milliseconds')

  const apiKeys = object(options.apiKeys, 'apiKeys')
  const hook = optional(apiKeys.hook, true, 'apiKeys.hook', isBoolean, 'must be a boolean')
  const lookup = optional<ApiKeyLookup | undefined>(apiKeys.lookup, undefined, 'apiKeys.lookup', isFunction, 'must be a function')
  if (hook && lookup === undefined) fail('apiKeys.lookup', 'is required when apiKeys.hook is true')
  const header = optional(apiKeys.header, 'x-api-key', 'apiKeys.header',
    (v) => isString(v) && HEADER_NAME.test(v as string), 'must be a header name').toLowerCase()
  const format = object(apiKeys.format, 'apiKeys.format')
  if (apiKeys.format !== undefined) assertKeyPrefix(format.prefix, 'apiKeys.format.prefix')

  const credentials = object(options.credentials, 'credentials')
  const credentialKey = optional(credentials.key, 'default', 'credentials.key',
    (v) => isString(v) && (v as string).length > 0, 'must be a non-empty string')
  const serialize = optional(credentials.serialize, jsonSerializer.serialize, 'credentials.serialize', isFunction, 'must be a function')
  const deserialize = optional(credentials.deserialize, jsonSerializer.deserialize, 'credentials.deserialize', isFunction, 'must be a function')

  return {
    backend,
    redis,
    strict: optional(options.strict, false, 'strict', isBoolean, 'must be a boolean'),
    redisTimeoutMs,
    apiKeys: {
      lookup,
      header,
      ttlSeconds: optional(apiKeys.ttlSeconds, 60, 'apiKeys.ttlSeconds', isNumber, 'must be a number of seconds'),
      negativeTtlSeconds: optional(apiKeys.negativeTtlSeconds, 5, 'apiKeys.negativeTtlSeconds', isNumber, 'must be a number of seconds'),
      keyPrefix: optional(apiKeys.keyPrefix, 'apikey:', 'apiKeys.keyPrefix', isString, 'must be a string'),
      max: optional(apiKeys.max, 10_000, 'apiKeys.max',
        (v) => Number.isInteger(v) && (v as number) > 0, 'must be a positive integer'),
      hook,
      realm: optional(apiKeys.realm, 'api', 'apiKeys.realm',
        (v) => isString(v) && QUOTED_SAFE.test(v as string), 'must be a string without quotes, backslashes or control characters'),
      formatPrefix: format.prefix
    },
    credentials: {
      key: credentialKey,
      keyPrefix: optional(credentials.keyPrefix, 'credentials:', 'credentials.keyPrefix', isString, 'must be a string'),
      serializer: { serialize, deserialize },
      ttlSeconds: optional<number | undefined>(credentials.ttlSeconds, undefined, 'credentials.ttlSeconds',
        (v) => isNumber(v) && (v as number) > 0, 'must be a positive number of seconds'),
      backend: optional<BackendName | undefined>(credentials.backend, undefined, 'credentials.backend',
        (v) => BACKENDS.includes(v as BackendName), `must be one of ${BACKENDS.join(', ')}`)
    }
  }
}
