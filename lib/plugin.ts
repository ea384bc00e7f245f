import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { createApiKeyCache } from './api-key-cache/api-key-cache'
import { createMemoryStore } from './api-key-cache/memory-store'
import { RedisApiKeyStore } from './api-key-cache/redis-store'
import { Resolver } from './api-key-cache/resolver'
import { createCounters } from './api-key-cache/stats'
import type { ApiKeyStore } from './api-key-cache/store'
import { createTieredStore } from './api-key-cache/tiered-store'
import { createCredentialStore } from './credentials/credential-store'
import { KeyedMutex } from './credentials/keyed-mutex'
import { MemoryCredentialByteStore } from './credentials/memory-byte-store'
import { RedisCredentialByteStore } from './credentials/redis-byte-store'
import { InvalidOptionError, NoRedisError } from './errors'
import { createAuthenticator } from './hook/authenticate'
import { prepareRoute } from './hook/route-settings'
import { FILL_WINDOW_MS } from './limits'
import { resolveOptions, type FastifyAuthCacheOptions, type ResolvedOptions } from './options'
import { adaptRedis } from './redis/adapt'
import type { RedisAdapter } from './redis/client'
import { RedisGuard } from './redis/guard'

// `app.ready()` waits this long at most for the tiered backend to be able to serve from memory.
const STARTUP_WAIT_MS = 2000

/** Without `lookup` (allowed with `hook: false`), keys that are not cached cannot be verified: a 503. */
function noLookup (): never {
  throw new Error('no apiKeys.lookup was given')
}

/** The client named by the `redis` option, or `fastify.redis`; undefined when there is none. */
function findRedis (fastify: FastifyInstance, wanted: ResolvedOptions['redis']): RedisAdapter | undefined {
  if (typeof wanted === 'object') {
    const adapter = adaptRedis(wanted)
    if (adapter === undefined) throw new InvalidOptionError('redis', 'is not a supported Redis client (an ioredis or iovalkey Redis or Cluster, or a node-redis createClient or createCluster client)')
    return adapter
  }
  const decorated = (fastify as unknown as { redis?: Record<string, unknown> }).redis
  return adaptRedis(typeof wanted === 'string' ? decorated?.[wanted] : decorated)
}

const fastifyAuthCache: FastifyPluginAsync<FastifyAuthCacheOptions> = async (fastify, rawOptions) => {
  const options = resolveOptions(rawOptions)
  const { apiKeys } = options
  const redis = findRedis(fastify, options.redis)

  let backend = options.backend
  let credentialsBackend = options.credentials.backend ?? backend
  if (redis === undefined && (backend !== 'memory' || credentialsBackend !== 'memory')) {
    const wanted = backend !== 'memory' ? backend : credentialsBackend
    if (options.strict) throw new NoRedisError(wanted)
    fastify.log.warn(`fastify-auth-cache: backend "${wanted}" needs Redis but no client was found (redis option or @fastify/redis); falling back to memory`)
    backend = credentialsBackend = 'memory'
  }

  const guard = new RedisGuard(options.redisTimeoutMs, fastify.log)
  const redisSettings = {
    redis: redis!,
    keyPrefix: apiKeys.keyPrefix,
    max: apiKeys.max,
    guard,
    log: fastify.log,
    // The longest an entry written before a revocation can live in Redis: its TTL, after a claim
    // that may have waited for its lookup.
    revocationRetainMs: Math.max(apiKeys.ttlSeconds, apiKeys.negativeTtlSeconds, 0) * 1000 + FILL_WINDOW_MS
  }
  let store: ApiKeyStore
  if (backend === 'memory') {
    store = createMemoryStore(apiKeys.max)
  } else if (backend === 'redis') {
    store = new RedisApiKeyStore(redisSettings)
  } else {
    const tiered = createTieredStore(redisSettings)
    store = tiered
    // The first requests of a new process should be memory hits, not Redis reads.
    await tiered.ready(STARTUP_WAIT_MS)
  }
  fastify.addHook('onClose', () => store.close())

  const counters = createCounters()
  fastify.decorate('apiKeyCache', createApiKeyCache(store, counters))
  fastify.decorateRequest('apiKey', null as never)

  const authenticator = createAuthenticator({
    resolver: new Resolver({ ...apiKeys, lookup: apiKeys.lookup ?? noLookup, store, counters, log: fastify.log }),
    counters,
    header: apiKeys.header,
    realm: apiKeys.realm,
    formatPrefix: apiKeys.format?.prefix
  })
  fastify.decorate('verifyApiKey', authenticator.verify)
  if (apiKeys.hook) {
    fastify.addHook('onRoute', prepareRoute)
    fastify.addHook('onRequest', authenticator.hook)
  }

  fastify.decorate('credentialStore', createCredentialStore({
    bytes: credentialsBackend === 'memory'
      ? new MemoryCredentialByteStore()
      : new RedisCredentialByteStore(redis!, guard, options.credentials.keyPrefix),
    mutex: new KeyedMutex(),
    keyPrefix: options.credentials.keyPrefix,
    key: options.credentials.key,
    serializer: options.credentials,
    ttlSeconds: options.credentials.ttlSeconds
  }))
}

export const plugin = fp(fastifyAuthCache, { fastify: '5.x', name: 'fastify-auth-cache' })
