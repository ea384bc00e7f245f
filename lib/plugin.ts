import { randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { ApiKeyCache } from './api-key-cache/api-key-cache'
import { InvalidationBus } from './api-key-cache/invalidation-bus'
import { MemoryApiKeyStore } from './api-key-cache/memory-store'
import { RedisApiKeyStore } from './api-key-cache/redis-store'
import type { ApiKeyStore } from './api-key-cache/store'
import { TieredApiKeyStore } from './api-key-cache/tiered-store'
import type { CredentialByteStore } from './credentials/byte-store'
import { CredentialStore } from './credentials/credential-store'
import { KeyedMutex } from './credentials/keyed-mutex'
import { MemoryCredentialByteStore } from './credentials/memory-byte-store'
import { RedisCredentialByteStore } from './credentials/redis-byte-store'
import { InvalidOptionError, NoRedisError } from './errors'
import { createAuthenticator } from './hook/authenticate'
import { resolveOptions, type FastifyAuthCacheOptions, type ResolvedOptions } from './options'
import { clientKeyPrefix, isRedisClient, type RedisClient } from './redis/client'
import { RedisGuard } from './redis/guard'
import type { BackendName } from './types'

/** The client named by the `redis` option, or `fastify.redis`; undefined when there is none. */
function findRedis (fastify: FastifyInstance, wanted: ResolvedOptions['redis']): RedisClient | undefined {
  if (typeof wanted === 'object') {
    if (!isRedisClient(wanted)) throw new InvalidOptionError('redis', 'is not an ioredis Redis or Cluster client')
    return wanted
  }
  const decorated = (fastify as unknown as { redis?: Record<string, unknown> }).redis
  const candidate = typeof wanted === 'string' ? decorated?.[wanted] : decorated
  return isRedisClient(candidate) ? candidate : undefined
}

function buildApiKeyStore (backend: BackendName, options: ResolvedOptions, client: RedisClient | undefined,
  guard: RedisGuard | undefined, fastify: FastifyInstance): ApiKeyStore {
  const { keyPrefix, max } = options.apiKeys
  if (backend === 'memory') return new MemoryApiKeyStore(max)
  const shared = { client: client!, keyPrefix, guard: guard!, log: fastify.log }
  if (backend === 'redis') return new RedisApiKeyStore(shared)

  const instanceId = randomBytes(8).toString('hex')
  // Channels ignore ioredis' keyPrefix, so it is part of the name: apps with different
  // prefixes on one Redis must not invalidate each other.
  const channel = `fastify-auth-cache:invalidate:${clientKeyPrefix(client!)}${keyPrefix}`
  const tiered = new TieredApiKeyStore(max, new RedisApiKeyStore({ ...shared, channel, instanceId }))
  const bus = new InvalidationBus({
    client: client!,
    channel,
    instanceId,
    guard: guard!,
    log: fastify.log,
    handlers: {
      deleted: (keyHash) => tiered.invalidated(keyHash),
      cleared: () => tiered.invalidated(undefined),
      trustChanged: () => tiered.invalidated(undefined)
    }
  })
  tiered.attach(bus)
  bus.start()
  return tiered
}

const fastifyAuthCache: FastifyPluginAsync<FastifyAuthCacheOptions> = async (fastify, rawOptions) => {
  const options = resolveOptions(rawOptions)
  const client = findRedis(fastify, options.redis)

  let backend = options.backend
  let credentialsBackend = options.credentials.backend ?? backend
  if (client === undefined && (backend !== 'memory' || credentialsBackend !== 'memory')) {
    const wanted = backend !== 'memory' ? backend : credentialsBackend
    if (options.strict) throw new NoRedisError(wanted)
    fastify.log.warn(`fastify-auth-cache: backend "${wanted}" needs Redis but no client was found (redis option or @fastify/redis); falling back to memory`)
    backend = credentialsBackend = 'memory'
  }

  const guard = client === undefined ? undefined : new RedisGuard(options.redisTimeoutMs, fastify.log)
  const cache = new ApiKeyCache({
    store: buildApiKeyStore(backend, options, client, guard, fastify),
    lookup: options.apiKeys.lookup,
    ttlSeconds: options.apiKeys.ttlSeconds,
    negativeTtlSeconds: options.apiKeys.negativeTtlSeconds,
    log: fastify.log
  })
  fastify.addHook('onClose', () => cache.close())

  const authenticator = createAuthenticator({
    cache,
    header: options.apiKeys.header,
    realm: options.apiKeys.realm,
    formatPrefix: options.apiKeys.formatPrefix
  })
  fastify.decorate('apiKeyCache', cache)
  fastify.decorate('verifyApiKey', authenticator.verify)
  fastify.decorateRequest('apiKey', null as never)
  if (options.apiKeys.hook) fastify.addHook('onRequest', authenticator.hook)

  const bytes: CredentialByteStore = credentialsBackend === 'memory'
    ? new MemoryCredentialByteStore()
    : new RedisCredentialByteStore(client!, guard!)
  fastify.decorate('credentialStore', new CredentialStore({
    bytes,
    mutex: new KeyedMutex(),
    keyPrefix: options.credentials.keyPrefix,
    key: options.credentials.key,
    serializer: options.credentials.serializer,
    ttlSeconds: options.credentials.ttlSeconds
  }))
}

export const plugin = fp(fastifyAuthCache, { fastify: '5.x', name: 'fastify-auth-cache' })
