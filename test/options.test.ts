import assert from 'node:assert/strict'
import { after, before, describe, test, type TestContext } from 'node:test'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance } from 'fastify'
import Redis from 'ioredis'
import fastifyAuthCache, { generateApiKey, type ApiKeyLookup, type ApiKeyRecord, type FastifyAuthCacheOptions } from '../lib'
import { CapturedLog, LEVEL } from './helpers/captured-log'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { KeySource, record } from './helpers/key-source'
import { freePort, startRedis, type RedisServer } from './helpers/redis-server'
import { until, within } from './helpers/wait'

const lookup = async (): Promise<ApiKeyRecord | null> => null

let server: RedisServer
const admins = new Map<number, Redis>()

before(async () => {
  server = await startRedis()
})

after(async () => {
  for (const admin of admins.values()) admin.disconnect()
  await server?.destroy()
  failIfHeldOpen('options.test.ts')
})

/** The test's own view of one Redis database, to see where the plugin wrote. */
function db (index: number): Redis {
  let admin = admins.get(index)
  if (admin === undefined) {
    admin = server.client({ db: index })
    admins.set(index, admin)
  }
  return admin
}

/** Registers with options as a JavaScript user could pass them, typed or not. */
function register (app: FastifyInstance, options: unknown): void {
  app.register(fastifyAuthCache, options as FastifyAuthCacheOptions)
}

function newApp (t: TestContext, log?: CapturedLog): FastifyInstance {
  const app = log === undefined ? Fastify() : Fastify({ logger: { level: 'trace', stream: log.stream } })
  t.after(() => app.close())
  return app
}

/** A directory of one valid key, counting lookups (of any key). */
function oneKey (id = 'user'): { key: string, hash: string, calls: () => number, lookup: ApiKeyLookup } {
  const { key, hash } = generateApiKey({ prefix: 'opt' })
  const source = new KeySource().answer(hash, record(id))
  return { key, hash, calls: () => source.lookups, lookup: source.lookup }
}

describe('defaults', () => {
  test('memory backend, x-api-key header, realm "api", hook on, memory credentials', async (t) => {
    const log = new CapturedLog()
    const app = newApp(t, log)
    const user = oneKey()
    register(app, { apiKeys: { lookup: user.lookup } })
    app.get('/', (request) => ({ id: request.apiKey.id }))
    await app.ready()

    assert.equal(app.apiKeyCache.backend, 'memory')
    assert.equal(app.credentialStore.backend, 'memory')
    const missing = await app.inject({ url: '/' })
    assert.equal(missing.statusCode, 401)
    assert.equal(missing.headers['www-authenticate'], 'ApiKey realm="api"')
    const bearer = await app.inject({ url: '/', headers: { authorization: `Bearer ${user.key}` } })
    assert.equal(bearer.statusCode, 401, 'the default header is x-api-key, not authorization')
    for (let i = 0; i < 2; i++) {
      const ok = await app.inject({ url: '/', headers: { 'x-api-key': user.key } })
      assert.equal(ok.statusCode, 200, ok.body)
      assert.deepEqual(ok.json(), { id: 'user' })
    }
    assert.equal(user.calls(), 1, 'the record is cached by default')
    await app.credentialStore.save({ token: 't' })
    assert.deepEqual(await app.credentialStore.load(), { token: 't' })
    assert.equal(log.at(LEVEL.warn).length, 0, log.text)
  })

  test('Redis layout: apikey: prefix, 60 s records, 5 s unknown keys, credentials:default', async (t) => {
    const client = server.client({ db: 6 })
    t.after(() => client.disconnect())
    await client.ping()
    const app = newApp(t)
    const user = oneKey()
    // A generous timeout (not a default under test) keeps a loaded machine from skipping the fill.
    register(app, { backend: 'redis', redis: client, redisTimeoutMs: 2000, apiKeys: { lookup: user.lookup } })
    app.get('/', () => 'ok')
    await app.ready()
    assert.equal(app.credentialStore.backend, 'redis')

    assert.equal((await app.inject({ url: '/', headers: { 'x-api-key': user.key } })).statusCode, 200)
    const recordTtl = await db(6).pttl(`apikey:${user.hash}`)
    assert.ok(recordTtl > 50_000 && recordTtl <= 60_000, `record PTTL ${recordTtl}`)
    assert.deepEqual(JSON.parse((await db(6).get(`apikey:${user.hash}`))!), { id: 'user', active: true })

    const unknown = generateApiKey({ prefix: 'opt' })
    assert.equal((await app.inject({ url: '/', headers: { 'x-api-key': unknown.key } })).statusCode, 401)
    const unknownTtl = await db(6).pttl(`apikey:${unknown.hash}`)
    assert.ok(unknownTtl > 0 && unknownTtl <= 5_000, `unknown-key PTTL ${unknownTtl}`)

    await app.credentialStore.save({ token: 'saved' })
    assert.deepEqual(JSON.parse((await db(6).get('credentials:default'))!), { token: 'saved' })
  })

  test('credentials follow the plugin backend, tiered included (CONTRACT section 10)', async (t) => {
    const client = server.client()
    t.after(() => client.disconnect())
    const app = newApp(t)
    register(app, { backend: 'tiered', redis: client, apiKeys: { lookup, keyPrefix: 'opt-tiered-default:' } })
    await app.ready()
    assert.equal(app.apiKeyCache.backend, 'tiered')
    assert.equal(app.credentialStore.backend, 'tiered')
  })
})

describe('bad options make ready() reject with FST_AUTH_CACHE_INVALID_OPTION naming the option', () => {
  const withKeys = (apiKeys: Record<string, unknown>, rest: Record<string, unknown> = {}): Record<string, unknown> =>
    ({ ...rest, apiKeys: { lookup, ...apiKeys } })
  const cases: Array<[string, unknown, string]> = [
    ['an unknown backend', withKeys({}, { backend: 'mongodb' }), 'backend'],
    ['a backend that is not a string', withKeys({}, { backend: 1 }), 'backend'],
    ['a lookup that is not a function', { apiKeys: { lookup: 'SELECT * FROM keys' } }, 'apiKeys.lookup'],
    ['a lookup that is not a function, hook off', { apiKeys: { lookup: {}, hook: false } }, 'apiKeys.lookup'],
    ['no lookup while the hook is on', { apiKeys: {} }, 'apiKeys.lookup'],
    ['no options at all', undefined, 'apiKeys.lookup'],
    ['a negative max', withKeys({ max: -1 }), 'apiKeys.max'],
    ['a zero max', withKeys({ max: 0 }), 'apiKeys.max'],
    ['a fractional max', withKeys({ max: 10.5 }), 'apiKeys.max'],
    ['a max given as a string', withKeys({ max: '100' }), 'apiKeys.max'],
    ['a non-numeric ttlSeconds', withKeys({ ttlSeconds: 'sixty' }), 'apiKeys.ttlSeconds'],
    ['a NaN ttlSeconds', withKeys({ ttlSeconds: NaN }), 'apiKeys.ttlSeconds'],
    ['a null ttlSeconds', withKeys({ ttlSeconds: null }), 'apiKeys.ttlSeconds'],
    ['a non-numeric negativeTtlSeconds', withKeys({ negativeTtlSeconds: '5s' }), 'apiKeys.negativeTtlSeconds'],
    ['a header with a space', withKeys({ header: 'x api key' }), 'apiKeys.header'],
    ['an empty header', withKeys({ header: '' }), 'apiKeys.header'],
    ['a header with a colon', withKeys({ header: 'x-api-key:' }), 'apiKeys.header'],
    ['a header that is not a string', withKeys({ header: 42 }), 'apiKeys.header'],
    ['a realm with a quote', withKeys({ realm: 'my "api"' }), 'apiKeys.realm'],
    ['a realm with a backslash', withKeys({ realm: 'a\\b' }), 'apiKeys.realm'],
    ['a realm with a newline', withKeys({ realm: 'api\r\nSet-Cookie: x=1' }), 'apiKeys.realm'],
    ['a realm that is not a string', withKeys({ realm: 7 }), 'apiKeys.realm'],
    ['a zero redisTimeoutMs', withKeys({}, { redisTimeoutMs: 0 }), 'redisTimeoutMs'],
    ['a negative redisTimeoutMs', withKeys({}, { redisTimeoutMs: -100 }), 'redisTimeoutMs'],
    ['a redisTimeoutMs given as a string', withKeys({}, { redisTimeoutMs: '100' }), 'redisTimeoutMs'],
    ['a NaN redisTimeoutMs', withKeys({}, { redisTimeoutMs: NaN }), 'redisTimeoutMs'],
    ['an empty format prefix', withKeys({ format: { prefix: '' } }), 'apiKeys.format.prefix'],
    ['a format prefix with a space', withKeys({ format: { prefix: 'my key' } }), 'apiKeys.format.prefix'],
    ['a format prefix with an underscore first', withKeys({ format: { prefix: '_live' } }), 'apiKeys.format.prefix'],
    ['a format prefix of 33 characters', withKeys({ format: { prefix: 'p'.repeat(33) } }), 'apiKeys.format.prefix'],
    ['a format without prefix', withKeys({ format: {} }), 'apiKeys.format.prefix'],
    ['a format prefix that is not a string', withKeys({ format: { prefix: 5 } }), 'apiKeys.format.prefix'],
    ['a format that is not an object', withKeys({ format: 'live' }), 'apiKeys.format'],
    ['a redis option that is an empty object', withKeys({}, { backend: 'redis', redis: {} }), 'redis'],
    ['a redis option with only get and set', withKeys({}, { backend: 'redis', redis: { get () {}, set () {} } }), 'redis'],
    ['a redis option that is a number', withKeys({}, { backend: 'redis', redis: 6379 }), 'redis'],
    ['a strict that is not a boolean', withKeys({}, { strict: 'true' }), 'strict'],
    ['a hook that is not a boolean', withKeys({ hook: 'no' }), 'apiKeys.hook'],
    ['apiKeys that is not an object', { apiKeys: 'lookup' }, 'apiKeys'],
    ['a keyPrefix that is not a string', withKeys({ keyPrefix: 5 }), 'apiKeys.keyPrefix'],
    ['credentials that is not an object', withKeys({}, { credentials: 'default' }), 'credentials'],
    ['an empty credentials key', withKeys({}, { credentials: { key: '' } }), 'credentials.key'],
    ['a credentials key that is not a string', withKeys({}, { credentials: { key: 1 } }), 'credentials.key'],
    ['a credentials serialize that is not a function', withKeys({}, { credentials: { serialize: 'json' } }), 'credentials.serialize'],
    ['a credentials deserialize that is not a function', withKeys({}, { credentials: { deserialize: {} } }), 'credentials.deserialize'],
    ['a negative credentials ttlSeconds', withKeys({}, { credentials: { ttlSeconds: -1 } }), 'credentials.ttlSeconds'],
    ['a zero credentials ttlSeconds', withKeys({}, { credentials: { ttlSeconds: 0 } }), 'credentials.ttlSeconds'],
    ['a non-numeric credentials ttlSeconds', withKeys({}, { credentials: { ttlSeconds: '1h' } }), 'credentials.ttlSeconds'],
    ['an unknown credentials backend', withKeys({}, { credentials: { backend: 'disk' } }), 'credentials.backend'],
    ['a credentials keyPrefix that is not a string', withKeys({}, { credentials: { keyPrefix: false } }), 'credentials.keyPrefix']
  ]
  for (const [what, options, option] of cases) {
    test(what, async (t) => {
      const app = newApp(t)
      register(app, options)
      const quoted = `"${option}"`
      await assert.rejects(async () => { await app.ready() }, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
        assert.ok(err.message.includes(quoted), `"${err.message}" should name ${quoted}`)
        return true
      })
    })
  }
})

describe('no Redis client available', () => {
  for (const backend of ['redis', 'tiered'] as const) {
    test(`backend "${backend}", strict false: one warn at registration, and both services on memory`, async (t) => {
      const log = new CapturedLog()
      const app = newApp(t, log)
      const user = oneKey()
      register(app, { backend, apiKeys: { lookup: user.lookup } })
      app.get('/', (request) => ({ id: request.apiKey.id }))
      await app.ready()

      const warnings = log.at(LEVEL.warn)
      assert.equal(warnings.length, 1, log.text)
      assert.match(String(warnings[0].msg), /memory/)
      assert.match(String(warnings[0].msg), new RegExp(backend))
      assert.equal(app.apiKeyCache.backend, 'memory')
      assert.equal(app.credentialStore.backend, 'memory')

      // It works, and caches, on memory; serving requests adds no warnings.
      for (let i = 0; i < 3; i++) {
        assert.equal((await app.inject({ url: '/', headers: { 'x-api-key': user.key } })).statusCode, 200)
      }
      assert.equal(user.calls(), 1)
      await app.credentialStore.save({ a: 1 })
      assert.deepEqual(await app.credentialStore.load(), { a: 1 })
      assert.equal(log.at(LEVEL.warn).length, 1, log.text)
    })

    test(`backend "${backend}", strict true: ready() rejects with FST_AUTH_CACHE_NO_REDIS`, async (t) => {
      const app = newApp(t)
      register(app, { backend, strict: true, apiKeys: { lookup } })
      await assert.rejects(async () => { await app.ready() }, { code: 'FST_AUTH_CACHE_NO_REDIS' })
    })
  }

  test('credentials.backend "redis" alone also falls back with one warn, or fails when strict', async (t) => {
    const log = new CapturedLog()
    const app = newApp(t, log)
    register(app, { apiKeys: { lookup }, credentials: { backend: 'redis' } })
    await app.ready()
    assert.equal(log.at(LEVEL.warn).length, 1, log.text)
    assert.match(String(log.at(LEVEL.warn)[0].msg), /memory/)
    assert.equal(app.credentialStore.backend, 'memory')

    const strict = newApp(t)
    register(strict, { strict: true, apiKeys: { lookup }, credentials: { backend: 'redis' } })
    await assert.rejects(async () => { await strict.ready() }, { code: 'FST_AUTH_CACHE_NO_REDIS' })
  })

  test('strict true with the memory backend needs no Redis', async (t) => {
    const log = new CapturedLog()
    const app = newApp(t, log)
    register(app, { strict: true, apiKeys: { lookup } })
    await app.ready()
    assert.equal(app.apiKeyCache.backend, 'memory')
    assert.equal(log.at(LEVEL.warn).length, 0, log.text)
  })
})

describe('Redis clients', () => {
  /** Authenticates one key and saves one credential, then reports which databases hold them. */
  async function writeThrough (app: FastifyInstance, user: ReturnType<typeof oneKey>, apiPrefix: string,
    credentialKey: string, dbs: number[]): Promise<Record<number, [number, number]>> {
    const res = await app.inject({ url: '/', headers: { 'x-api-key': user.key } })
    assert.equal(res.statusCode, 200, res.body)
    await app.credentialStore.save({ token: 'x' })
    const found: Record<number, [number, number]> = {}
    for (const index of dbs) {
      found[index] = [await db(index).exists(apiPrefix + user.hash), await db(index).exists(credentialKey)]
    }
    return found
  }

  test('fastify.redis from @fastify/redis is used by default', async (t) => {
    const app = newApp(t)
    await app.register(fastifyRedis, { url: `${server.url}/1` })
    const user = oneKey()
    register(app, {
      backend: 'redis',
      strict: true,
      redisTimeoutMs: 2000,
      apiKeys: { lookup: user.lookup, keyPrefix: 'opt-default-client:' },
      credentials: { keyPrefix: 'opt-default-client-cred:' }
    })
    app.get('/', () => 'ok')
    await app.ready()
    assert.equal(app.apiKeyCache.backend, 'redis')
    assert.equal(app.credentialStore.backend, 'redis')
    const found = await writeThrough(app, user, 'opt-default-client:', 'opt-default-client-cred:default', [0, 1])
    assert.deepEqual(found, { 0: [0, 0], 1: [1, 1] })
  })

  test('a named @fastify/redis namespace is used when redis names it', async (t) => {
    const app = newApp(t)
    await app.register(fastifyRedis, { url: `${server.url}/2`, namespace: 'auth' })
    await app.register(fastifyRedis, { url: `${server.url}/3`, namespace: 'sessions' })
    const user = oneKey()
    register(app, {
      backend: 'tiered',
      strict: true,
      redisTimeoutMs: 2000,
      redis: 'auth',
      apiKeys: { lookup: user.lookup, keyPrefix: 'opt-named:' },
      credentials: { keyPrefix: 'opt-named-cred:' }
    })
    app.get('/', () => 'ok')
    await app.ready()
    assert.equal(app.apiKeyCache.backend, 'tiered')
    const found = await writeThrough(app, user, 'opt-named:', 'opt-named-cred:default', [2, 3])
    assert.deepEqual(found, { 2: [1, 1], 3: [0, 0] })
  })

  test('a client passed as redis wins over fastify.redis', async (t) => {
    const client = server.client({ db: 4 })
    t.after(() => client.disconnect())
    await client.ping()
    const app = newApp(t)
    await app.register(fastifyRedis, { url: `${server.url}/5` })
    const user = oneKey()
    register(app, {
      backend: 'redis',
      strict: true,
      redisTimeoutMs: 2000,
      redis: client,
      apiKeys: { lookup: user.lookup, keyPrefix: 'opt-direct:' },
      credentials: { keyPrefix: 'opt-direct-cred:' }
    })
    app.get('/', () => 'ok')
    await app.ready()
    const found = await writeThrough(app, user, 'opt-direct:', 'opt-direct-cred:default', [4, 5])
    assert.deepEqual(found, { 4: [1, 1], 5: [0, 0] })
  })

  for (const backend of ['redis', 'tiered'] as const) {
    test(`${backend}: the plugin never closes a client it did not create`, async (t) => {
      const direct = server.client()
      const decorated = server.client()
      t.after(() => { direct.disconnect(); decorated.disconnect() })

      const viaOption = Fastify()
      register(viaOption, { backend, redis: direct, apiKeys: { lookup, keyPrefix: `opt-keep-${backend}-1:` } })
      const viaDecorator = Fastify()
      // @fastify/redis leaves a client it was given open unless told otherwise.
      await viaDecorator.register(fastifyRedis, { client: decorated })
      register(viaDecorator, { backend, apiKeys: { lookup, keyPrefix: `opt-keep-${backend}-2:` } })
      for (const app of [viaOption, viaDecorator]) {
        await app.ready()
        assert.equal(app.apiKeyCache.backend, backend)
        await app.inject({ url: '/', headers: { 'x-api-key': 'some-key' } })
        await app.credentialStore.save({ a: 1 })
        await app.close()
      }
      for (const client of [direct, decorated]) {
        assert.equal(client.status, 'ready')
        assert.equal(await client.ping(), 'PONG')
      }
    })
  }

  test('tiered: the subscriber connection the plugin opened is closed on close', async (t) => {
    const name = 'fastify-auth-cache:invalidations'
    const subscribers = async (): Promise<number> =>
      (await db(0).client('LIST') as string).split('\n').filter((line) => line.includes(` name=${name} `)).length
    /** The count, once it is `wanted`. */
    const waitFor = (wanted: number): Promise<number> => until(`${wanted} subscriber connections are open`, async () => {
      const count = await subscribers()
      return count === wanted && count
    }, { deadlineMs: 5000, pauseMs: 25 })
    assert.equal(await waitFor(0), 0, 'no subscriber left over from earlier tests')

    const client = server.client()
    t.after(() => client.disconnect())
    const app = Fastify()
    register(app, { backend: 'tiered', redis: client, apiKeys: { lookup, keyPrefix: 'opt-subscriber:' } })
    await app.ready()
    assert.equal(await waitFor(1), 1, 'the tiered backend opens one subscriber connection')
    await app.close()
    assert.equal(await waitFor(0), 0, 'the subscriber is closed with the app')
    assert.equal(await client.ping(), 'PONG')
  })

  for (const backend of ['redis', 'tiered'] as const) {
    test(`${backend}: Redis down at start → the app registers and serves through lookup`, async (t) => {
      // Nothing listens on this port: the client keeps reconnecting and queues every command, as
      // an ioredis client with its default options does.
      const client = new Redis({ host: '127.0.0.1', port: await freePort() })
      client.on('error', () => {})
      t.after(() => client.disconnect())
      const app = Fastify()
      const user = oneKey('offline-user')
      register(app, { backend, redis: client, apiKeys: { lookup: user.lookup } })
      app.get('/', (request) => ({ id: request.apiKey.id }))
      await within('ready() resolved', (async () => { await app.ready() })(), 5000)
      assert.equal(app.apiKeyCache.backend, backend)

      for (let i = 1; i <= 3; i++) {
        const started = performance.now()
        const res = await app.inject({ url: '/', headers: { 'x-api-key': user.key } })
        const took = performance.now() - started
        assert.equal(res.statusCode, 200, res.body)
        assert.deepEqual(res.json(), { id: 'offline-user' })
        assert.ok(took < 1000, `request ${i} took ${Math.round(took)} ms`)
        assert.equal(user.calls(), i, 'nothing can be cached, so every request asks lookup')
      }
      const unknown = await app.inject({ url: '/', headers: { 'x-api-key': generateApiKey({ prefix: 'opt' }).key } })
      assert.equal(unknown.statusCode, 401)
      assert.ok(app.apiKeyCache.stats().backendErrors >= 1)
      await within('close() resolved', app.close(), 5000)
    })
  }
})
