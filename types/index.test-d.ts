import fastifyRateLimit, { type RateLimitPluginOptions } from '@fastify/rate-limit'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import Redis from 'ioredis'
import { expectAssignable, expectError, expectNotAssignable, expectType } from 'tsd'
import fastifyAuthCache, {
  encryptedSerializer, fastifyAuthCache as named, generateApiKey, hashApiKey, isWellFormedApiKey, jsonSerializer, rateLimitByApiKey,
  redactingRequestSerializer, type BaseApiKeyRecord, type SerializedRequest,
  type ApiKeyCacheStats, type ApiKeyUsage, type CredentialSerializer, type FastifyAuthCacheOptions, type GeneratedApiKey, type GetFreshOptions,
  type RateLimitByApiKeyOptions, type ApiKeyQuota
} from '..'

// The user's own types, declared once by declaration merging.
declare module '..' {
  interface FastifyAuthCacheTypes {
    apiKeyRecord: {
      id: string
      active: boolean
      expiresAt?: number
      scopes: string[]
      ownerId?: string
      rateLimit?: { max: number, timeWindowMs: number }
    }
    credential: { accessToken: string, refreshToken: string }
  }
}

expectType<typeof fastifyAuthCache>(named)
expectType<string>(hashApiKey('key'))
expectType<GeneratedApiKey>(generateApiKey({ prefix: 'live' }))
expectType<boolean>(isWellFormedApiKey('live_x', 'live'))
expectAssignable<CredentialSerializer<any>>(jsonSerializer)
expectAssignable<CredentialSerializer<{ a: number }>>(encryptedSerializer<{ a: number }>({ keys: { k1: Buffer.alloc(32) }, current: 'k1' }))

const app = Fastify()
app.register(fastifyAuthCache, {
  backend: 'tiered',
  redis: 'cache',
  strict: true,
  redisTimeoutMs: 50,
  apiKeys: {
    lookup: async (keyHash, request) => {
      expectType<string>(keyHash)
      expectType<FastifyRequest>(request)
      return { id: 'a', active: true, scopes: ['read'] }
    },
    header: 'authorization',
    ttlSeconds: 60,
    negativeTtlSeconds: 5,
    keyPrefix: 'apikey:',
    max: 1000,
    hook: true,
    realm: 'api',
    format: { prefix: 'live' },
    onUsage: async (batch) => {
      expectType<ApiKeyUsage[]>(batch)
      const [first] = batch
      if (first !== undefined) {
        expectType<string>(first.keyHash)
        expectType<string>(first.id)
        expectType<number>(first.count)
        expectType<number>(first.lastUsedAt)
      }
    },
    usageFlushMs: 60_000
  },
  credentials: { key: 'oauth', keyPrefix: 'credentials:', ttlSeconds: 3600, backend: 'redis' }
})
expectError(app.register(fastifyAuthCache, { backend: 'sqlite' }))
expectError(app.register(fastifyAuthCache, { apiKeys: { lookup: 'not a function' } }))
expectAssignable<FastifyAuthCacheOptions>({})

app.get('/me', { config: { apiKey: true } }, async (request) => {
  // No casts: the record carries the user's own fields.
  expectType<string[]>(request.apiKey.scopes)
  expectType<string>(request.apiKey.id)
  return request.apiKey.id
})
app.get('/health', { config: { apiKey: false } }, async () => 'ok')

// Scopes on a route, without casts; anything else is a type error.
app.post('/orders', { config: { apiKey: { scopes: ['orders:write'] } } }, async (request) => {
  expectType<string[]>(request.apiKey.scopes)
  expectType<string | undefined>(request.apiKey.ownerId)
  expectType<{ max: number, timeWindowMs: number } | undefined>(request.apiKey.rateLimit)
  return 'created'
})
const writeScopes = ['orders:write', 'orders:read'] as const
app.put('/orders', { config: { apiKey: { scopes: writeScopes } } }, async () => 'ok')
app.get('/plain', { config: { apiKey: {} } }, async () => 'ok')
expectError(app.get('/bad', { config: { apiKey: { scopes: 'orders:write' } } }, async () => 'ok'))
expectError(app.get('/bad', { config: { apiKey: 'yes' } }, async () => 'ok'))
expectError(app.get('/bad', { config: { apiKey: { scopes: [1] } } }, async () => 'ok'))

// Quotas: a route's cost, and the record's quota.
app.get('/report', { config: { apiKey: { scopes: ['orders:read'], cost: 10 } } }, async () => 'ok')
expectError(app.get('/bad', { config: { apiKey: { cost: '10' } } }, async () => 'ok'))
expectAssignable<ApiKeyQuota>({ limit: 1000, period: 'month' })
expectAssignable<ApiKeyQuota>({ limit: 1000, period: 2000 })
expectError<ApiKeyQuota>({ limit: 1000, period: 'week' })

// Per-key rate limits: the options go to @fastify/rate-limit as they are.
const limits = rateLimitByApiKey({ max: 100, timeWindowMs: 60_000 })
expectType<RateLimitByApiKeyOptions>(limits)
expectAssignable<RateLimitPluginOptions>(limits)
expectType<'preHandler'>(limits.hook)
app.register(fastifyRateLimit, { ...limits, redis: new Redis({ lazyConnect: true }) })
expectError(rateLimitByApiKey({ max: 100 }))
expectError(rateLimitByApiKey({ max: '100', timeWindowMs: 60_000 }))
expectError(app.register(fastifyAuthCache, { apiKeys: { onUsage: 'log' } }))
expectError(app.register(fastifyAuthCache, { apiKeys: { usageFlushMs: '1m' } }))

app.after(async () => {
  expectType<'memory' | 'redis' | 'tiered'>(app.apiKeyCache.backend)
  expectType<string>(app.apiKeyCache.hash('key'))
  const record = await app.apiKeyCache.get('hash')
  if (record !== undefined) expectType<string[]>(record.scopes)
  await app.apiKeyCache.set('hash', { id: 'a', active: true, scopes: [] }, 60)
  expectError(app.apiKeyCache.set('hash', { id: 'a', active: true }, 60))
  await app.apiKeyCache.delete('hash')
  await app.apiKeyCache.clear()
  expectType<Promise<void>>(app.apiKeyCache.deleteOwner('owner-1'))
  expectError(app.apiKeyCache.deleteOwner(42))
  expectError(app.apiKeyCache.deleteOwner())
  expectType<ApiKeyCacheStats>(app.apiKeyCache.stats())
  expectType<number>(app.apiKeyCache.stats().invalidations)
  expectType<number>(app.apiKeyCache.stats().rejections.forbidden)
  expectType<number>(app.apiKeyCache.stats().usageDropped)

  expectType<(request: FastifyRequest, reply: FastifyReply) => Promise<void>>(app.verifyApiKey)

  const token = await app.credentialStore.load()
  expectType<{ accessToken: string, refreshToken: string } | undefined>(token)
  await app.credentialStore.save({ accessToken: 'a', refreshToken: 'r' })
  expectError(app.credentialStore.save({ accessToken: 'a' }))
  const next = await app.credentialStore.update((current) => ({ accessToken: 'b', refreshToken: current?.refreshToken ?? 'r' }), { lockTtlMs: 1000, waitMs: 500 })
  expectType<string>(next.accessToken)
  expectType<'memory' | 'redis' | 'tiered'>(app.credentialStore.scope('other').backend)
  await app.credentialStore.clear()

  // getFresh is typed with the declared credential: no casts in isFresh, refresh or the result.
  const fresh = await app.credentialStore.getFresh({
    isFresh: (value, atMs) => {
      expectType<{ accessToken: string, refreshToken: string }>(value)
      expectType<number>(atMs)
      return true
    },
    refresh: async (current) => {
      expectType<{ accessToken: string, refreshToken: string } | undefined>(current)
      return { accessToken: 'c', refreshToken: current?.refreshToken ?? 'r' }
    },
    refreshAheadMs: 30_000,
    lockTtlMs: 10_000,
    waitMs: 5_000
  })
  expectType<{ accessToken: string, refreshToken: string }>(fresh)
  expectType<Promise<{ accessToken: string, refreshToken: string }>>(app.credentialStore.scope('other').getFresh({ isFresh: () => true, refresh: (current) => current! }))
  expectError(app.credentialStore.getFresh({ isFresh: () => true, refresh: () => ({ accessToken: 'c' }) }))
  expectError(app.credentialStore.getFresh({ refresh: () => ({ accessToken: 'c', refreshToken: 'r' }) }))
  expectError(app.credentialStore.getFresh({ isFresh: () => true, refresh: () => ({ accessToken: 'c', refreshToken: 'r' }), refreshAheadMs: '1s' }))
  expectAssignable<GetFreshOptions<{ expiresAt: number }>>({ isFresh: (value: { expiresAt: number }, atMs: number) => atMs < value.expiresAt, refresh: () => ({ expiresAt: 1 }) })
})

// Section 12: optional keys, address allow-lists, where the key travels.
app.get('/maybe', { config: { apiKey: { optional: true } } }, async () => 'ok')
app.post('/maybe/orders', { config: { apiKey: { optional: true, scopes: ['orders:write'] } } }, async () => 'ok')
expectError(app.get('/bad', { config: { apiKey: { optional: 'yes' } } }, async () => 'ok'))
app.register(fastifyAuthCache, {
  apiKeys: { lookup: () => null, header: ['x-api-key', 'authorization'], query: 'api_key', hideCredentials: true }
})
const headers = ['x-api-key', 'authorization'] as const
app.register(fastifyAuthCache, { apiKeys: { lookup: () => null, header: headers } })
expectError(app.register(fastifyAuthCache, { apiKeys: { header: [1] } }))
expectError(app.register(fastifyAuthCache, { apiKeys: { query: true } }))
expectError(app.register(fastifyAuthCache, { apiKeys: { hideCredentials: 'yes' } }))
expectAssignable<BaseApiKeyRecord>({ id: 'a', active: true, allowedIps: ['10.0.0.0/8', '2001:db8::/32'] })
expectNotAssignable<BaseApiKeyRecord>({ id: 'a', active: true, allowedIps: [10] })
expectNotAssignable<BaseApiKeyRecord>({ id: 'a', active: true, allowedIps: '10.0.0.1' })
expectType<number>(app.apiKeyCache.stats().anonymous)
const serializeRequest = redactingRequestSerializer('api_key')
expectType<SerializedRequest>(serializeRequest({ method: 'GET', url: '/?api_key=x' }))
Fastify({ logger: { serializers: { req: redactingRequestSerializer('api_key') } } })
expectError(redactingRequestSerializer(5))
