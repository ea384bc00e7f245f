import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { createApiKeyCache } from './api-key-cache/api-key-cache'
import { createMemoryStore } from './api-key-cache/memory-store'
import { RedisApiKeyStore } from './api-key-cache/redis-store'
import { Resolver } from './api-key-cache/resolver'
import { createCounters } from './api-key-cache/stats'
import type { ApiKeyStore } from './api-key-cache/store'
import { createTieredStore } from './api-key-cache/tiered-store'
import { channelName, InvalidationBus } from './api-key-cache/invalidation-bus'
import { CredentialMemory } from './credentials/credential-memory'
import { createCredentialStore } from './credentials/credential-store'
import { KeyedMutex } from './credentials/keyed-mutex'
import { MemoryCredentialByteStore } from './credentials/memory-byte-store'
import { RedisCredentialByteStore } from './credentials/redis-byte-store'
import { InvalidOptionError, NoRedisError } from './errors'
import { createAuthenticator } from './hook/authenticate'
import { routesDeclaredIn } from './hook/route-declarations'
import { createRouteSettings } from './hook/route-settings'
import { FILL_WINDOW_MS } from './limits'
import { resolveOptions, type FastifyAuthCacheOptions, type ResolvedOptions } from './options'
import { adaptRedis } from './redis/adapt'
import type { RedisAdapter } from './redis/client'
import { RedisGuard } from './redis/guard'
import { MAIN_PLUGIN_HANDOFF, type MainPluginHandoff } from './secret-scanning/handoff'
import { createTelemetry } from './telemetry'
import { MemoryQuotaStore } from './quota/memory-quota-store'
import { QuotaLeases } from './quota/quota-leases'
import { RedisQuotaStore } from './quota/redis-quota-store'
import { UsageRecorder } from './usage/usage-recorder'

// `app.ready()` waits this long at most for the tiered backend to be able to serve from memory:
// the contract's 2 s less room for a timer's lateness and the rest of start-up (2000 here made
// ready() resolve after 2004-2009 ms against a silent Redis).
const STARTUP_WAIT_MS = 1900

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
  let store: ApiKeyStore | undefined
  const telemetry = createTelemetry({ backend, metrics: options.metrics, entries: () => store?.entries ?? 0 })
  const staleMs = apiKeys.staleIfErrorSeconds * 1000
  const redisSettings = {
    redis: redis!,
    keyPrefix: apiKeys.keyPrefix,
    max: apiKeys.max,
    guard,
    log: fastify.log,
    staleMs,
    telemetry,
    // The longest an entry written before a revocation can live in Redis: its TTL and stale
    // window, after a claim that may have waited for its lookup.
    revocationRetainMs: Math.max(apiKeys.ttlSeconds, apiKeys.negativeTtlSeconds, 0) * 1000 + staleMs + FILL_WINDOW_MS
  }
  // One invalidation channel per app, shared by the API-key cache and the credential store. The
  // Redis backend keeps no memory to invalidate, but hears revocations to make them again on a
  // dataset that lost them.
  let bus: InvalidationBus | undefined
  if (backend !== 'memory' || credentialsBackend === 'tiered') {
    bus = new InvalidationBus({ redis: redis!, channel: channelName(redis!, apiKeys.keyPrefix), guard, log: fastify.log })
    bus.start()
  }
  if (backend === 'memory') {
    store = createMemoryStore(apiKeys.max, staleMs)
  } else if (backend === 'redis') {
    store = new RedisApiKeyStore({ ...redisSettings, readsTtl: apiKeys.refreshAheadSeconds > 0, bus })
  } else {
    store = createTieredStore({ ...redisSettings, bus: bus! })
  }
  if (bus !== undefined) {
    const openBus = bus
    fastify.addHook('onClose', () => openBus.close())
    // The first requests of a new process should be memory hits, not Redis reads, and a
    // revocation announced once ready() resolved is heard.
    await bus.whenTrusted(STARTUP_WAIT_MS)
  }
  const apiKeyStore = store
  fastify.addHook('onClose', () => apiKeyStore.close())

  const counters = createCounters()
  fastify.decorate('apiKeyCache', createApiKeyCache(apiKeyStore, counters))
  fastify.decorateRequest('apiKey', null as never)

  const usage = apiKeys.onUsage === undefined
    ? undefined
    : new UsageRecorder({ onUsage: apiKeys.onUsage, flushMs: apiKeys.usageFlushMs, max: apiKeys.max, counters, log: fastify.log })
  if (usage !== undefined) fastify.addHook('onClose', () => usage.close())

  // Quotas are counted where the API-key cache lives: in this registration's memory, or in Redis.
  const quotas = new QuotaLeases({
    store: backend === 'memory' ? new MemoryQuotaStore() : new RedisQuotaStore(redis!, guard, apiKeys.keyPrefix),
    log: fastify.log
  })
  fastify.addHook('onClose', () => quotas.close())

  // The challenge speaks the scheme of the first listed header.
  const scheme = apiKeys.header[0] === 'authorization' ? 'Bearer' : 'ApiKey'
  // Route config is read at declaration, with or without the hook: verifyApiKey enforces scopes too.
  const routes = createRouteSettings({ scheme, realm: apiKeys.realm })
  fastify.addHook('onRoute', routes.prepareRoute)
  // Routes declared before now (`register` without await) were not seen by onRoute.
  routes.checkDeclaredRoutes(routesDeclaredIn(fastify) ?? [])
  const authenticator = createAuthenticator({
    resolver: new Resolver({ ...apiKeys, lookup: apiKeys.lookup ?? noLookup, store: apiKeyStore, counters, telemetry, log: fastify.log }),
    counters,
    telemetry,
    headers: apiKeys.header,
    query: apiKeys.query,
    hideCredentials: apiKeys.hideCredentials,
    realm: apiKeys.realm,
    scheme,
    formatPrefix: apiKeys.format?.prefix,
    routes,
    usage,
    quotas
  })
  fastify.decorate('verifyApiKey', authenticator.verify)
  fastify.decorate(MAIN_PLUGIN_HANDOFF, { lookup: apiKeys.lookup, lookupTimeoutMs: apiKeys.lookupTimeoutMs, formatPrefix: apiKeys.format?.prefix } satisfies MainPluginHandoff)
  if (apiKeys.hook) fastify.addHook('onRequest', authenticator.hook)

  const credentialBus = credentialsBackend === 'tiered' ? bus : undefined
  fastify.decorate('credentialStore', createCredentialStore({
    bytes: credentialsBackend === 'memory'
      ? new MemoryCredentialByteStore()
      : new RedisCredentialByteStore(redis!, guard, options.credentials.keyPrefix, credentialBus && {
        channel: credentialBus.channel,
        changed: (key) => credentialBus.messageParts('credential', key)
      }),
    memory: credentialBus && new CredentialMemory(credentialBus),
    mutex: new KeyedMutex(),
    keyPrefix: options.credentials.keyPrefix,
    key: options.credentials.key,
    serializer: options.credentials,
    ttlSeconds: options.credentials.ttlSeconds
  }))
}

export const plugin = fp(fastifyAuthCache, { fastify: '5.x', name: 'fastify-auth-cache' })
