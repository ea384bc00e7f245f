import assert from 'node:assert/strict'
import { test } from 'node:test'
import Fastify from 'fastify'
import fastifyAuthCache, { type FastifyAuthCacheOptions } from '../lib'

// CONTRACT section 2: an unknown option key (a typo) makes ready() reject with
// FST_AUTH_CACHE_INVALID_OPTION naming the key and the nearest known one, at every level.

const lookup = async (): Promise<null> => null

async function readyError (options: unknown): Promise<(Error & { code?: string }) | undefined> {
  const app = Fastify()
  app.register(fastifyAuthCache, options as FastifyAuthCacheOptions)
  try {
    await app.ready()
    return undefined
  } catch (err) {
    return err as Error & { code?: string }
  } finally {
    await app.close()
  }
}

const TYPOS: Array<[string, unknown, string, string]> = [
  ['top level', { backnd: 'memory', apiKeys: { lookup } }, 'backnd', 'backend'],
  ['top level, case', { redisTimeoutMS: 50, apiKeys: { lookup } }, 'redisTimeoutMS', 'redisTimeoutMs'],
  ['apiKeys', { apiKeys: { lookup, ttl: 5 } }, 'apiKeys.ttl', 'apiKeys.ttlSeconds'],
  ['apiKeys, plural', { apiKeys: { lookup, headers: 'x-key' } }, 'apiKeys.headers', 'apiKeys.header'],
  ['apiKeys, case', { apiKeys: { lookUp: lookup } }, 'apiKeys.lookUp', 'apiKeys.lookup'],
  ['apiKeys, abbreviation', { apiKeys: { lookup, negativeTtl: 1 } }, 'apiKeys.negativeTtl', 'apiKeys.negativeTtlSeconds'],
  ['credentials', { apiKeys: { lookup }, credentials: { ttl: 60 } }, 'credentials.ttl', 'credentials.ttlSeconds'],
  ['credentials, typo', { apiKeys: { lookup }, credentials: { keyPrefx: 'c:' } }, 'credentials.keyPrefx', 'credentials.keyPrefix'],
  ['apiKeys.format', { apiKeys: { lookup, format: { prefx: 'live' } } }, 'apiKeys.format.prefx', 'apiKeys.format.prefix']
]

for (const [level, options, key, meant] of TYPOS) {
  test(`an unknown key (${level}) fails ready(), naming ${key} and ${meant}`, async () => {
    const err = await readyError(options)
    assert.equal(err?.code, 'FST_AUTH_CACHE_INVALID_OPTION', String(err?.message))
    assert.ok(err.message.includes(`"${key}"`), err.message)
    assert.ok(err.message.includes(`did you mean ${meant}?`), err.message)
  })
}

test('a key close to no option is refused, and the message lists the options of its level', async () => {
  const err = await readyError({ apiKeys: { lookup }, credentials: { zzzzzz: 1 } })
  assert.equal(err?.code, 'FST_AUTH_CACHE_INVALID_OPTION')
  assert.ok(err.message.includes('"credentials.zzzzzz"'), err.message)
  assert.doesNotMatch(err.message, /did you mean/)
  assert.match(err.message, /credentials\.keyPrefix/)
})

test('every documented option at every level is accepted, and so are the options of Fastify\'s register', async () => {
  const app = Fastify()
  await app.register(fastifyAuthCache, {
    backend: 'memory',
    redis: undefined,
    strict: false,
    redisTimeoutMs: 100,
    metrics: false,
    apiKeys: {
      lookup,
      header: 'x-api-key',
      ttlSeconds: 60,
      negativeTtlSeconds: 5,
      keyPrefix: 'apikey:',
      max: 100,
      hook: true,
      realm: 'api',
      format: { prefix: 'live' },
      lookupTimeoutMs: 5000,
      staleIfErrorSeconds: 0,
      refreshAheadSeconds: 0,
      onUsage: () => {},
      usageFlushMs: 60_000
    },
    credentials: { key: 'default', keyPrefix: 'credentials:', serialize: (value) => JSON.stringify(value), deserialize: (raw) => JSON.parse(String(raw)), ttlSeconds: 60, backend: 'memory' },
    logLevel: 'warn'
  })
  await app.ready()
  assert.equal(app.apiKeyCache.backend, 'memory')
  await app.close()
})
