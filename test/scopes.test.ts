import assert from 'node:assert/strict'
import { after, describe, test, type TestContext } from 'node:test'
import fastifyAuth from '@fastify/auth'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import fastifyAuthCache, { generateApiKey, hashApiKey, type ApiKeyRecord, type ApiKeysOptions } from '../lib'
import { BACKENDS, RecordKeys, registerOnBackend, send, type Backend } from './helpers/backend-app'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { usePrivateRedis } from './helpers/redis-server'

// CONTRACT section 7: authorization by scopes.

const redis = usePrivateRedis()

after(() => {
  failIfHeldOpen('scopes.test.ts')
})

/** A source of truth: key → record, and how often each hash was asked for. */
class Keys extends RecordKeys {
  constructor () { super('scope') }
}

let apps = 0

async function build (t: TestContext, backend: Backend, apiKeys: ApiKeysOptions = {},
  setup?: (app: FastifyInstance) => void | Promise<void>): Promise<{ app: FastifyInstance, keys: Keys }> {
  const keys = new Keys()
  const app = await registerOnBackend(t, redis, backend, { lookup: keys.lookup, keyPrefix: `scopes-${++apps}:`, ...apiKeys })
  await setup?.(app)
  await app.ready()
  return { app, keys }
}

/** What the handler saw: the record, and that it ran at all. */
function routes (app: FastifyInstance): void {
  app.get('/me', (request) => ({ apiKey: request.apiKey }))
  app.post('/orders', { config: { apiKey: { scopes: ['orders:write'] } } }, (request) => ({ apiKey: request.apiKey }))
  app.delete('/orders/:id', { config: { apiKey: { scopes: ['orders:write', 'orders:delete'] } } }, (request) => ({ apiKey: request.apiKey }))
  app.get('/open', { config: { apiKey: false } }, (request) => ({ apiKey: request.apiKey }))
  app.get('/empty', { config: { apiKey: { scopes: [] } } }, (request) => ({ apiKey: request.apiKey }))
  app.get('/plain', { config: { apiKey: {} } }, (request) => ({ apiKey: request.apiKey }))
  app.get('/true', { config: { apiKey: true } }, (request) => ({ apiKey: request.apiKey }))
}

function assertForbidden (res: LightMyRequestResponse, challenge: string): void {
  assert.equal(res.statusCode, 403, res.body)
  assert.match(String(res.headers['content-type']), /^application\/json/)
  const body = res.json()
  assert.deepEqual(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'])
  assert.equal(body.statusCode, 403)
  assert.equal(body.code, 'FST_API_KEY_FORBIDDEN')
  assert.equal(body.error, 'Forbidden')
  assert.ok(body.message.length > 0)
  assert.equal(res.headers['www-authenticate'], challenge)
}

const ORDERS_CHALLENGE = 'ApiKey realm="api", error="insufficient_scope", scope="orders:write"'

for (const backend of BACKENDS) {
  describe(`scopes, ${backend} backend`, () => {
    test('a key holding the route scope is let through; one lacking it gets 403 with the insufficient_scope challenge', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const writer = { id: 'writer', active: true, scopes: ['orders:read', 'orders:write'] }
      const reader = { id: 'reader', active: true, scopes: ['orders:read'] }
      const writerKey = keys.add(writer)
      const readerKey = keys.add(reader)
      for (let i = 0; i < 3; i++) {
        const ok = await send(app, 'POST', '/orders', writerKey)
        assert.equal(ok.statusCode, 200, ok.body)
        assert.deepEqual(ok.json(), { apiKey: writer })
        assertForbidden(await send(app, 'POST', '/orders', readerKey), ORDERS_CHALLENGE)
        // The same key is fine where no scope is needed.
        assert.equal((await send(app, 'GET', '/me', readerKey)).statusCode, 200)
      }
      const stats = app.apiKeyCache.stats()
      assert.equal(stats.rejections.forbidden, 3)
      assert.equal(stats.rejections.unknown + stats.rejections.inactive + stats.rejections.expired + stats.rejections.missing, 0)
      // Each key was looked up once: a 403 is cached like any answer, it is the route that refuses.
      assert.deepEqual(keys.calls.sort(), [hashApiKey(writerKey), hashApiKey(readerKey)].sort())
    })

    test('every route scope is required; the challenge lists them, space separated, in the route\'s order', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const both = keys.add({ id: 'both', active: true, scopes: ['orders:delete', 'x', 'orders:write'] })
      const one = keys.add({ id: 'one', active: true, scopes: ['orders:write'] })
      assert.equal((await send(app, 'DELETE', '/orders/1', both)).statusCode, 200)
      assertForbidden(await send(app, 'DELETE', '/orders/1', one),
        'ApiKey realm="api", error="insufficient_scope", scope="orders:write orders:delete"')
    })

    test('a record without a scopes array holds no scope', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const records: ApiKeyRecord[] = [
        { id: 'none', active: true },
        { id: 'string', active: true, scopes: 'orders:write' },
        { id: 'object', active: true, scopes: { 'orders:write': true } },
        { id: 'null', active: true, scopes: null },
        { id: 'empty', active: true, scopes: [] },
        { id: 'numbers', active: true, scopes: [1, 2] },
        { id: 'nested', active: true, scopes: [['orders:write']] },
        { id: 'case', active: true, scopes: ['Orders:Write'] },
        { id: 'padded', active: true, scopes: [' orders:write'] },
        { id: 'prefix', active: true, scopes: ['orders:writer', 'orders'] }
      ]
      for (const record of records) {
        const key = keys.add(record)
        assertForbidden(await send(app, 'POST', '/orders', key), ORDERS_CHALLENGE)
        assert.equal((await send(app, 'GET', '/me', key)).statusCode, 200, `${record.id} is still a valid key`)
      }
      assert.equal(app.apiKeyCache.stats().rejections.forbidden, records.length)
    })

    test('records with many scopes: held and lacking scopes are told apart on every hit', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const many = Array.from({ length: 200 }, (_, i) => `res${i}:read`)
      const holder = keys.add({ id: 'holder', active: true, scopes: [...many, 'orders:write', 'orders:delete'] })
      const lacker = keys.add({ id: 'lacker', active: true, scopes: [...many, 'orders:delete'] })
      for (let i = 0; i < 5; i++) {
        assert.equal((await send(app, 'POST', '/orders', holder)).statusCode, 200)
        assert.equal((await send(app, 'DELETE', '/orders/7', holder)).statusCode, 200)
        assertForbidden(await send(app, 'POST', '/orders', lacker), ORDERS_CHALLENGE)
      }
    })

    test('authentication comes first: no key or a bad key on a scoped route is the 401, not a 403', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const inactive = keys.add({ id: 'off', active: false, scopes: ['orders:write'] })
      const expired = keys.add({ id: 'old', active: true, expiresAt: Date.now() - 1000, scopes: ['orders:write'] })
      const missing = await send(app, 'POST', '/orders')
      assert.equal(missing.statusCode, 401)
      assert.equal(missing.json().code, 'FST_API_KEY_MISSING')
      assert.equal(missing.headers['www-authenticate'], 'ApiKey realm="api"')
      for (const key of [generateApiKey({ prefix: 'scope' }).key, inactive, expired, 'x'.repeat(2000)]) {
        const res = await send(app, 'POST', '/orders', key)
        assert.equal(res.statusCode, 401)
        assert.equal(res.json().code, 'FST_API_KEY_INVALID')
        assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api"')
      }
      assert.equal(app.apiKeyCache.stats().rejections.forbidden, 0)
    })

    test('request.apiKey stays null on a 403; the handler never runs', async (t) => {
      const seen: unknown[] = []
      let handled = 0
      const { app, keys } = await build(t, backend, {}, (app) => {
        app.addHook('onResponse', async (request) => { seen.push(request.apiKey) })
        app.post('/orders', { config: { apiKey: { scopes: ['orders:write'] } } }, async () => { handled++; return 'ok' })
      })
      const key = keys.add({ id: 'reader', active: true, scopes: ['orders:read'] })
      assertForbidden(await send(app, 'POST', '/orders', key), ORDERS_CHALLENGE)
      assert.deepEqual(seen, [null])
      assert.equal(handled, 0)
    })

    test('Bearer: the 403 challenge is Bearer with the realm, error and scope', async (t) => {
      const { app, keys } = await build(t, backend, { header: 'authorization', realm: 'Orders API' }, routes)
      const key = keys.add({ id: 'reader', active: true, scopes: ['orders:read'] })
      assertForbidden(await send(app, 'POST', '/orders', key, 'authorization'),
        'Bearer realm="Orders API", error="insufficient_scope", scope="orders:write"')
      const bad = await send(app, 'POST', '/orders', generateApiKey({ prefix: 'scope' }).key, 'authorization')
      assert.equal(bad.statusCode, 401)
      assert.equal(bad.headers['www-authenticate'], 'Bearer realm="Orders API", error="invalid_token"')
    })
  })
}

describe('route config', () => {
  test('true, absent, {} and { scopes: [] } authenticate only; false opts out', async (t) => {
    const { app, keys } = await build(t, 'memory', {}, routes)
    const key = keys.add({ id: 'plain', active: true })
    for (const url of ['/me', '/empty', '/plain', '/true']) {
      assert.equal((await send(app, 'GET', url)).statusCode, 401, url)
      const ok = await send(app, 'GET', url, key)
      assert.equal(ok.statusCode, 200, `${url}: ${ok.body}`)
      assert.equal(ok.json().apiKey.id, 'plain')
    }
    const open = await send(app, 'GET', '/open')
    assert.equal(open.statusCode, 200)
    assert.deepEqual(open.json(), { apiKey: null })
  })

  test('repeated route scopes are required once and named once', async (t) => {
    const { app, keys } = await build(t, 'memory', {}, (app) => {
      app.get('/twice', { config: { apiKey: { scopes: ['a', 'b', 'a'] } } }, () => 'ok')
    })
    assertForbidden(await send(app, 'GET', '/twice', keys.add({ id: 'a', active: true, scopes: ['a'] })),
      'ApiKey realm="api", error="insufficient_scope", scope="a b"')
    assert.equal((await send(app, 'GET', '/twice', keys.add({ id: 'ab', active: true, scopes: ['b', 'a'] }))).statusCode, 200)
  })

  test('the automatic HEAD route of a scoped GET requires the same scopes', async (t) => {
    const { app, keys } = await build(t, 'memory', {}, (app) => {
      app.get('/report', { config: { apiKey: { scopes: ['reports:read'] } } }, () => ({ ok: true }))
    })
    const reader = keys.add({ id: 'r', active: true, scopes: ['reports:read'] })
    const other = keys.add({ id: 'o', active: true, scopes: ['orders:read'] })
    assert.equal((await send(app, 'HEAD', '/report', reader)).statusCode, 200)
    const res = await send(app, 'HEAD', '/report', other)
    assert.equal(res.statusCode, 403)
    assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api", error="insufficient_scope", scope="reports:read"')
  })

  test('scopes on a route declared before the plugin are enforced, and its opt-out is honoured', async (t) => {
    const keys = new Keys()
    const app = Fastify()
    t.after(() => app.close())
    app.get('/early', { config: { apiKey: { scopes: ['early:read'] } } }, () => 'ok')
    app.get('/early-open', { config: { apiKey: false } }, () => 'ok')
    await app.register(fastifyAuthCache, { apiKeys: { lookup: keys.lookup } })
    await app.ready()
    const holder = keys.add({ id: 'h', active: true, scopes: ['early:read'] })
    const lacker = keys.add({ id: 'l', active: true })
    assert.equal((await send(app, 'GET', '/early')).statusCode, 401)
    assert.equal((await send(app, 'GET', '/early', holder)).statusCode, 200)
    for (let i = 0; i < 2; i++) {
      assertForbidden(await send(app, 'GET', '/early', lacker), 'ApiKey realm="api", error="insufficient_scope", scope="early:read"')
    }
    // CONTRACT section 2: registration order does not matter.
    assert.equal((await send(app, 'GET', '/early-open')).statusCode, 200)
  })

  const invalid: Array<[string, unknown]> = [
    ['a string', 'orders:write'],
    ['null', null],
    ['a number', 1],
    ['an array', ['orders:write']],
    ['scopes as a string', { scopes: 'orders:write' }],
    ['scopes as an object', { scopes: { 'orders:write': true } }],
    ['an empty scope', { scopes: [''] }],
    ['a scope with a space', { scopes: ['orders write'] }],
    ['a scope with a tab', { scopes: ['orders\twrite'] }],
    ['a scope with a double quote', { scopes: ['orders"write'] }],
    ['a scope with a single quote', { scopes: ["orders'write"] }],
    ['a scope with a backslash', { scopes: ['orders\\write'] }],
    ['a scope with a control character', { scopes: ['orders\u0000write'] }],
    ['a non-ASCII scope', { scopes: ['commandes:écrire'] }],
    ['a number among scopes', { scopes: ['ok', 42] }],
    ['null among scopes', { scopes: [null] }],
    ['an unknown property (a typo)', { scope: ['orders:write'] }],
    ['an extra property', { scopes: ['orders:write'], roles: ['admin'] }]
  ]
  for (const [what, apiKey] of invalid) {
    test(`config.apiKey with ${what} fails at registration with FST_AUTH_CACHE_INVALID_OPTION naming the route`, async (t) => {
      const app = Fastify()
      t.after(() => app.close())
      await app.register(fastifyAuthCache, { apiKeys: { lookup: async () => null } })
      let declared: unknown
      try {
        app.get('/orders', { config: { apiKey: apiKey as never } }, () => 'ok')
        await app.ready()
      } catch (err) {
        declared = err
      }
      const err = declared as { code?: string, message?: string } | undefined
      assert.equal(err?.code, 'FST_AUTH_CACHE_INVALID_OPTION', String(err?.message))
      assert.match(err?.message ?? '', /config\.apiKey/)
      assert.match(err?.message ?? '', /GET \/orders/)
    })
  }

  test('the route is named with its prefix and every method', async (t) => {
    const app = Fastify()
    t.after(() => app.close())
    await app.register(fastifyAuthCache, { apiKeys: { lookup: async () => null } })
    app.register(async (v1) => {
      v1.route({ method: ['POST', 'PUT'], url: '/orders', config: { apiKey: { scopes: ['bad scope'] } }, handler: () => 'ok' })
    }, { prefix: '/v1' })
    await assert.rejects(async () => { await app.ready() }, (err: { code?: string, message: string }) => {
      assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
      assert.match(err.message, /POST,PUT \/v1\/orders/)
      assert.match(err.message, /scopes\[0\]/)
      return true
    })
  })

  test('valid scopes of printable ASCII are accepted as they are', async (t) => {
    const scopes = ['orders:write', 'https://api.example.com/auth/orders', 'a.b-c_d~e', 'x!#$%&()*+,/;<=>?@[]^`{|}']
    const { app, keys } = await build(t, 'memory', {}, (app) => {
      app.get('/odd', { config: { apiKey: { scopes } } }, () => 'ok')
    })
    assert.equal((await send(app, 'GET', '/odd', keys.add({ id: 'all', active: true, scopes }))).statusCode, 200)
    assertForbidden(await send(app, 'GET', '/odd', keys.add({ id: 'none', active: true, scopes: scopes.slice(1) })),
      `ApiKey realm="api", error="insufficient_scope", scope="${scopes.join(' ')}"`)
  })

  test('setErrorHandler reshapes the 403; the challenge stays', async (t) => {
    const { app, keys } = await build(t, 'memory', {}, (app) => {
      app.setErrorHandler((err: { statusCode?: number, code?: string }, _request, reply) => {
        reply.code(err.statusCode ?? 500).send({ failure: err.code })
      })
      routes(app)
    })
    const res = await send(app, 'POST', '/orders', keys.add({ id: 'r', active: true, scopes: [] }))
    assert.equal(res.statusCode, 403)
    assert.deepEqual(res.json(), { failure: 'FST_API_KEY_FORBIDDEN' })
    assert.equal(res.headers['www-authenticate'], ORDERS_CHALLENGE)
  })
})

describe('fastify.verifyApiKey enforces the scopes of the route it runs on', () => {
  test('from a route\'s own onRequest, with hook: false', async (t) => {
    const { app, keys } = await build(t, 'memory', { hook: false }, (app) => {
      app.post('/orders', { onRequest: app.verifyApiKey, config: { apiKey: { scopes: ['orders:write'] } } }, (request) => ({ id: request.apiKey.id }))
      app.get('/me', { onRequest: app.verifyApiKey }, (request) => ({ id: request.apiKey.id }))
      app.get('/unguarded', { config: { apiKey: { scopes: ['orders:write'] } } }, () => 'no check was asked for')
    })
    const writer = keys.add({ id: 'w', active: true, scopes: ['orders:write'] })
    const reader = keys.add({ id: 'r', active: true, scopes: ['orders:read'] })
    assert.deepEqual((await send(app, 'POST', '/orders', writer)).json(), { id: 'w' })
    assertForbidden(await send(app, 'POST', '/orders', reader), ORDERS_CHALLENGE)
    assert.equal((await send(app, 'POST', '/orders')).statusCode, 401)
    assert.deepEqual((await send(app, 'GET', '/me', reader)).json(), { id: 'r' })
    // Without the hook, a route is checked only where verifyApiKey is called.
    assert.equal((await send(app, 'GET', '/unguarded')).statusCode, 200)
    assert.equal(app.apiKeyCache.stats().rejections.forbidden, 1)
  })

  test('composed with @fastify/auth: "and" needs the scopes, "or" lets another strategy through', async (t) => {
    const { app, keys } = await build(t, 'memory', { hook: false }, async (app) => {
      await app.register(fastifyAuth)
      const isAdmin = async (request: { headers: Record<string, unknown> }): Promise<void> => {
        if (request.headers['x-admin'] !== 'yes') throw Object.assign(new Error('not an admin'), { statusCode: 401 })
      }
      app.post('/and', {
        onRequest: app.auth([app.verifyApiKey], { relation: 'and' }),
        config: { apiKey: { scopes: ['orders:write'] } }
      }, (request) => ({ id: request.apiKey.id }))
      app.post('/or', {
        onRequest: app.auth([app.verifyApiKey, isAdmin], { relation: 'or' }),
        config: { apiKey: { scopes: ['orders:write'] } }
      }, () => ({ ok: true }))
    })
    const writer = keys.add({ id: 'w', active: true, scopes: ['orders:write'] })
    const reader = keys.add({ id: 'r', active: true, scopes: ['orders:read'] })
    assert.deepEqual((await send(app, 'POST', '/and', writer)).json(), { id: 'w' })
    const refused = await send(app, 'POST', '/and', reader)
    assert.equal(refused.statusCode, 403)
    assert.equal(refused.json().code, 'FST_API_KEY_FORBIDDEN')
    assert.equal(refused.headers['www-authenticate'], ORDERS_CHALLENGE)
    assert.equal((await send(app, 'POST', '/or', writer)).statusCode, 200)
    assert.equal((await app.inject({ method: 'POST', url: '/or', headers: { 'x-api-key': reader, 'x-admin': 'yes' } })).statusCode, 200)
    assert.notEqual((await send(app, 'POST', '/or', reader)).statusCode, 200)
  })
})
