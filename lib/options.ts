import type { FastifyRequest } from 'fastify'
import { assertKeyPrefix } from './api-keys/key-format'
import { jsonSerializer, type SerializerContext } from './credentials/serializer'
import { InvalidOptionError } from './errors'
import { assertKnownKeys } from './known-keys'
import type { ApiKeyRecord, BackendName, Credential } from './types'
import type { UsageReporter } from './usage/usage-recorder'

/** The source of truth behind the cache, asked with the key's SHA-256, never the key. */
export type ApiKeyLookup = (keyHash: string, request: FastifyRequest) =>
  ApiKeyRecord | null | undefined | Promise<ApiKeyRecord | null | undefined>

export interface ApiKeysOptions {
  /**
   * Source of truth: resolves the record for a key hash, or `null`/`undefined` for an unknown
   * key. Throwing, rejecting or answering anything else is a 503. Required when `hook` is true.
   */
  lookup?: ApiKeyLookup
  /**
   * Header carrying the key, case-insensitive. `'authorization'` means
   * `Authorization: Bearer <key>` (scheme case-insensitive). A list is tried in order: the first
   * listed header present decides (a bad key there is a 401, never a fall-through; an empty
   * header, or `Authorization` without a Bearer token, counts as absent), and the 401 challenge
   * uses the scheme of the first listed header.
   * @default 'x-api-key'
   */
  header?: string | readonly string[]
  /**
   * Name of a query parameter that also carries the key, read when no listed header is present
   * (for clients that cannot set headers, such as webhook senders). A repeated parameter is a
   * 401. URLs end up in logs: see `redactingRequestSerializer`.
   * @default undefined (keys in the query string are not read)
   */
  query?: string
  /**
   * Remove the key from `request.headers` (and `request.raw.rawHeaders`) or `request.query`
   * once it is read, so that nothing after the check (handlers, proxies, error logs) sees it.
   * `request.url` stays as received.
   * @default false
   */
  hideCredentials?: boolean
  /**
   * Seconds a record is cached, capped by the time left to its `expiresAt`. `<= 0` caches no record.
   * @default 60
   */
  ttlSeconds?: number
  /**
   * Seconds an unknown (or expired) key is cached. `<= 0` caches none.
   * @default 5
   */
  negativeTtlSeconds?: number
  /**
   * Prefix of every Redis key of the API-key cache (after the client's own `keyPrefix`).
   * @default 'apikey:'
   */
  keyPrefix?: string
  /**
   * Entries held in process memory (memory backend, tiered L1), for records and for unknown
   * keys each, so a flood of random keys can only evict other unknown keys. When full, the
   * entries least recently read go first (second-chance eviction, close to LRU).
   * @default 10000
   */
  max?: number
  /**
   * Add the `onRequest` hook that authenticates every route. With `false`, call
   * `fastify.verifyApiKey` where you want the check.
   * @default true
   */
  hook?: boolean
  /**
   * Realm in `WWW-Authenticate`.
   * @default 'api'
   */
  realm?: string
  /**
   * `{ prefix }`: only keys made by `generateApiKey({ prefix })` (prefix, length, alphabet and
   * checksum) reach the cache or `lookup`; any other key is a 401 that costs no I/O.
   * @default undefined (any key)
   */
  format?: { prefix: string }
  /**
   * Milliseconds a `lookup` may take. A slower one counts as failed for the requests waiting
   * on it (a 503, or a stale record with `staleIfErrorSeconds`); its late answer is not cached.
   * @default 5000
   */
  lookupTimeoutMs?: number
  /**
   * When `lookup` fails, a record whose cached life ended less than this many seconds ago is
   * served instead of a 503, if it was active, its `expiresAt` has not passed, and no
   * `delete`/`clear` removed it. Entries then live this much longer in memory and in Redis.
   * @default 0 (off)
   */
  staleIfErrorSeconds?: number
  /**
   * A hit on a record with less than this many seconds left of its cached life starts one
   * background `lookup` that renews it; the request does not wait.
   * @default 0 (off)
   */
  refreshAheadSeconds?: number
  /**
   * Called off the request path, at most once per `usageFlushMs` per process, with
   * `[{ keyHash, id, count, lastUsedAt }]` for every key that passed authentication and the
   * route's scopes since the previous call. A batch whose call throws, rejects or is still
   * running at close is merged into the next; at most `max` keys are held between calls.
   * @default undefined (no usage is counted)
   */
  onUsage?: UsageReporter
  /**
   * Milliseconds between two `onUsage` calls; the last batch is also flushed on close.
   * @default 60000
   */
  usageFlushMs?: number
}

export interface CredentialsOptions<T = Credential> {
  /**
   * The key of `fastify.credentialStore`; `scope(key)` makes stores for others.
   * @default 'default'
   */
  key?: string
  /**
   * Prefix of every Redis key of the credential store, its locks included.
   * @default 'credentials:'
   */
  keyPrefix?: string
  /**
   * Value to bytes. `ctx.key` is the full storage key.
   * @default jsonSerializer.serialize
   */
  serialize?: (value: T, ctx: SerializerContext) => string | Buffer | Promise<string | Buffer>
  /**
   * Bytes to value; must never run code found in the bytes.
   * @default jsonSerializer.deserialize (JSON with prototype-poisoning protection)
   */
  deserialize?: (raw: Buffer, ctx: SerializerContext) => T | Promise<T>
  /**
   * Seconds a saved credential lives.
   * @default undefined (no expiry)
   */
  ttlSeconds?: number
  /**
   * Backend of the credential store.
   * @default the plugin's `backend` ('tiered' stores in Redis)
   */
  backend?: BackendName
}

export interface FastifyAuthCacheOptions {
  /**
   * Where cached answers and credentials live: process memory, Redis, or memory in front of
   * Redis with cross-process invalidation.
   * @default 'memory'
   */
  backend?: BackendName
  /**
   * An `@fastify/redis` namespace, or a client: an ioredis or iovalkey `Redis`/`Cluster`, or a node-redis
   * `createClient`/`createCluster` client (connected by the user). Never closed by the plugin.
   * @default fastify.redis
   */
  redis?: string | object
  /**
   * With `true`, `ready()` fails with FST_AUTH_CACHE_NO_REDIS instead of falling back to memory
   * when `backend` needs Redis and there is no client.
   * @default false
   */
  strict?: boolean
  /**
   * Milliseconds every Redis call on the request path may take before the request goes on to `lookup`.
   * @default 100
   */
  redisTimeoutMs?: number
  /**
   * Record OpenTelemetry instruments on the global meter `fastify-auth-cache` (needs
   * `@opentelemetry/api`): `fastify_auth_cache.requests`, `.lookup.duration`, `.invalidations`,
   * `.entries`.
   * @default false
   */
  metrics?: boolean
  apiKeys?: ApiKeysOptions
  credentials?: CredentialsOptions
}

/** Every option with its default applied, as the rest of the plugin reads them. */
export interface ResolvedOptions {
  backend: BackendName
  redis: FastifyAuthCacheOptions['redis']
  strict: boolean
  redisTimeoutMs: number
  metrics: boolean
  apiKeys: Required<Omit<ApiKeysOptions, 'lookup' | 'format' | 'onUsage' | 'header' | 'query'>> & Pick<ApiKeysOptions, 'lookup' | 'format' | 'onUsage' | 'query'> &
    { /** Lower case, at least one, without repeats. */ header: readonly string[] }
  credentials: Required<Omit<CredentialsOptions<unknown>, 'ttlSeconds' | 'backend'>> & Pick<CredentialsOptions<unknown>, 'ttlSeconds' | 'backend'>
}

/**
 * The option names of each level, the one list from which unknown keys are refused. Each is a
 * record over the keys of its interface, so the compiler fails when an option is added to an
 * interface and not here, or named here and not there.
 */
const TOP_LEVEL_KEYS: Record<keyof FastifyAuthCacheOptions, true> = {
  backend: true, redis: true, strict: true, redisTimeoutMs: true, metrics: true, apiKeys: true, credentials: true
}
const API_KEYS_KEYS: Record<keyof ApiKeysOptions, true> = {
  lookup: true,
  header: true,
  query: true,
  hideCredentials: true,
  ttlSeconds: true,
  negativeTtlSeconds: true,
  keyPrefix: true,
  max: true,
  hook: true,
  realm: true,
  format: true,
  lookupTimeoutMs: true,
  staleIfErrorSeconds: true,
  refreshAheadSeconds: true,
  onUsage: true,
  usageFlushMs: true
}
const CREDENTIALS_KEYS: Record<keyof CredentialsOptions, true> = {
  key: true, keyPrefix: true, serialize: true, deserialize: true, ttlSeconds: true, backend: true
}
const FORMAT_KEYS: Record<keyof NonNullable<ApiKeysOptions['format']>, true> = { prefix: true }
// Options of Fastify's own register(), which it hands to the plugin along with the plugin's.
const REGISTER_KEYS = ['prefix', 'logLevel', 'logSerializers']

const BACKENDS: readonly BackendName[] = ['memory', 'redis', 'tiered']
// A token of RFC 7230: what a header name may be made of.
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const QUOTED_SAFE = /^[^"\\\u0000-\u001f\u007f]*$/ // eslint-disable-line no-control-regex

type Check = (value: unknown) => boolean
const isNumber: Check = (v) => typeof v === 'number' && Number.isFinite(v)
const isPositive: Check = (v) => isNumber(v) && (v as number) > 0
const isNonNegative: Check = (v) => isNumber(v) && (v as number) >= 0
const isBoolean: Check = (v) => typeof v === 'boolean'
const isString: Check = (v) => typeof v === 'string'
const isFunction: Check = (v) => typeof v === 'function'
const isBackend: Check = (v) => BACKENDS.includes(v as BackendName)
const BACKEND_WHY = `must be one of ${BACKENDS.join(', ')}`

function fail (name: string, why: string): never {
  throw new InvalidOptionError(name, why)
}

function object<T extends object> (value: T | undefined, name: string): Partial<T> {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(name, 'must be an object')
  return value
}

function option<T> (value: unknown, fallback: T, name: string, check: Check, why: string): T {
  if (value === undefined) return fallback
  if (!check(value)) fail(name, why)
  return value as T
}

const isHeaderName: Check = (v) => isString(v) && HEADER_NAME.test(v as string)

/** `apiKeys.header`: one header name or a non-empty list of distinct ones, in lower case. */
function headerList (value: unknown): readonly string[] {
  const name = 'apiKeys.header'
  if (value === undefined) return ['x-api-key']
  if (isHeaderName(value)) return [(value as string).toLowerCase()]
  if (!Array.isArray(value)) fail(name, 'must be a header name or a list of header names')
  if (value.length === 0) fail(name, 'must list at least one header')
  const list = value.map((header: unknown, i) => {
    if (!isHeaderName(header)) fail(`${name}[${i}]`, 'must be a header name')
    return (header as string).toLowerCase()
  })
  if (new Set(list).size !== list.length) fail(name, 'must not list a header twice')
  return Object.freeze(list)
}

/** Validates everything at registration, so a bad option fails `ready()` and never a request. */
export function resolveOptions (raw: FastifyAuthCacheOptions): ResolvedOptions {
  const options = object(raw, 'options')
  assertKnownKeys(options, Object.keys(TOP_LEVEL_KEYS), '', REGISTER_KEYS)
  if (options.redis !== undefined && typeof options.redis !== 'string' && (typeof options.redis !== 'object' || options.redis === null)) {
    fail('redis', 'must be an @fastify/redis namespace or a Redis client')
  }

  const apiKeys = object(options.apiKeys, 'apiKeys')
  assertKnownKeys(apiKeys, Object.keys(API_KEYS_KEYS), 'apiKeys.')
  const hook = option(apiKeys.hook, true, 'apiKeys.hook', isBoolean, 'must be a boolean')
  const lookup = option<ApiKeyLookup | undefined>(apiKeys.lookup, undefined, 'apiKeys.lookup', isFunction, 'must be a function')
  if (hook && lookup === undefined) fail('apiKeys.lookup', 'is required when apiKeys.hook is true')
  if (apiKeys.format !== undefined) {
    const format = object(apiKeys.format, 'apiKeys.format')
    assertKnownKeys(format, Object.keys(FORMAT_KEYS), 'apiKeys.format.')
    assertKeyPrefix(format.prefix, 'apiKeys.format.prefix')
  }

  const credentials = object(options.credentials, 'credentials')
  assertKnownKeys(credentials, Object.keys(CREDENTIALS_KEYS), 'credentials.')
  return {
    backend: option(options.backend, 'memory', 'backend', isBackend, BACKEND_WHY),
    redis: options.redis,
    strict: option(options.strict, false, 'strict', isBoolean, 'must be a boolean'),
    redisTimeoutMs: option(options.redisTimeoutMs, 100, 'redisTimeoutMs', isPositive, 'must be a positive number of milliseconds'),
    metrics: option(options.metrics, false, 'metrics', isBoolean, 'must be a boolean'),
    apiKeys: {
      lookup,
      header: headerList(apiKeys.header),
      query: option<string | undefined>(apiKeys.query, undefined, 'apiKeys.query',
        (v) => isString(v) && (v as string).length > 0 && QUOTED_SAFE.test(v as string), 'must be a non-empty query parameter name without quotes, backslashes or control characters'),
      hideCredentials: option(apiKeys.hideCredentials, false, 'apiKeys.hideCredentials', isBoolean, 'must be a boolean'),
      ttlSeconds: option(apiKeys.ttlSeconds, 60, 'apiKeys.ttlSeconds', isNumber, 'must be a number of seconds'),
      negativeTtlSeconds: option(apiKeys.negativeTtlSeconds, 5, 'apiKeys.negativeTtlSeconds', isNumber, 'must be a number of seconds'),
      keyPrefix: option(apiKeys.keyPrefix, 'apikey:', 'apiKeys.keyPrefix', isString, 'must be a string'),
      max: option(apiKeys.max, 10_000, 'apiKeys.max', (v) => Number.isInteger(v) && (v as number) > 0, 'must be a positive integer'),
      hook,
      realm: option(apiKeys.realm, 'api', 'apiKeys.realm',
        (v) => isString(v) && QUOTED_SAFE.test(v as string), 'must be a string without quotes, backslashes or control characters'),
      format: apiKeys.format,
      lookupTimeoutMs: option(apiKeys.lookupTimeoutMs, 5000, 'apiKeys.lookupTimeoutMs', isPositive, 'must be a positive number of milliseconds'),
      staleIfErrorSeconds: option(apiKeys.staleIfErrorSeconds, 0, 'apiKeys.staleIfErrorSeconds', isNonNegative, 'must be a number of seconds, 0 or more'),
      refreshAheadSeconds: option(apiKeys.refreshAheadSeconds, 0, 'apiKeys.refreshAheadSeconds', isNonNegative, 'must be a number of seconds, 0 or more'),
      onUsage: option<UsageReporter | undefined>(apiKeys.onUsage, undefined, 'apiKeys.onUsage', isFunction, 'must be a function'),
      // setInterval fires at once for anything longer than 2^31 - 1 ms.
      usageFlushMs: option(apiKeys.usageFlushMs, 60_000, 'apiKeys.usageFlushMs',
        (v) => isPositive(v) && (v as number) <= 2_147_483_647, 'must be a positive number of milliseconds, at most 2147483647')
    },
    credentials: {
      key: option(credentials.key, 'default', 'credentials.key', (v) => isString(v) && (v as string).length > 0, 'must be a non-empty string'),
      keyPrefix: option(credentials.keyPrefix, 'credentials:', 'credentials.keyPrefix', isString, 'must be a string'),
      serialize: option(credentials.serialize, jsonSerializer.serialize, 'credentials.serialize', isFunction, 'must be a function'),
      deserialize: option(credentials.deserialize, jsonSerializer.deserialize, 'credentials.deserialize', isFunction, 'must be a function'),
      ttlSeconds: option<number | undefined>(credentials.ttlSeconds, undefined, 'credentials.ttlSeconds', isPositive, 'must be a positive number of seconds'),
      backend: option<BackendName | undefined>(credentials.backend, undefined, 'credentials.backend', isBackend, BACKEND_WHY)
    }
  }
}
