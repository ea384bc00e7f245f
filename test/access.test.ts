import assert from 'node:assert/strict'
import { BlockList, isIP } from 'node:net'
import { after, describe, test, type TestContext } from 'node:test'
import Fastify, { type FastifyInstance, type FastifyServerOptions, type InjectOptions, type LightMyRequestResponse } from 'fastify'
import fastifyAuthCache, { generateApiKey, hashApiKey, redactingRequestSerializer, type ApiKeysOptions } from '../lib'
import { addressListOf, admitsAddress, parseAddressList, rememberAddressList } from '../lib/api-keys/allowed-ips'
import { BACKENDS, RecordKeys, registerOnBackend, type Backend } from './helpers/backend-app'
import { CapturedLog } from './helpers/captured-log'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { usePrivateRedis } from './helpers/redis-server'
import { subscribe, useGlobalMeterProvider } from './helpers/telemetry'

// CONTRACT section 12: who may call. Optional keys, address allow-lists, where the key travels.

const redis = usePrivateRedis()

after(() => {
  failIfHeldOpen('access.test.ts')
})

/** A source of truth: key → record (any value, to test what lookup may answer), and how often each hash was asked for. */
class Keys extends RecordKeys<unknown> {
  constructor () { super('access') }
}

let apps = 0

interface Built { app: FastifyInstance, keys: Keys, keyPrefix: string }

async function build (t: TestContext, backend: Backend, apiKeys: ApiKeysOptions = {},
  setup?: (app: FastifyInstance) => void, fastifyOptions: FastifyServerOptions = {}, keys = new Keys()): Promise<Built> {
  const keyPrefix = `access-${++apps}:`
  const app = await registerOnBackend(t, redis, backend, { lookup: keys.lookup, keyPrefix, ...apiKeys }, { fastify: fastifyOptions })
  setup?.(app)
  await app.ready()
  return { app, keys, keyPrefix }
}

/** Routes that answer what the handler saw. */
function routes (app: FastifyInstance): void {
  const seen = (request: { apiKey: unknown }) => ({ apiKey: request.apiKey })
  app.get('/me', seen)
  app.get('/maybe', { config: { apiKey: { optional: true } } }, seen)
  app.post('/maybe/orders', { config: { apiKey: { optional: true, scopes: ['orders:write'] } } }, seen)
  app.post('/orders', { config: { apiKey: { scopes: ['orders:write'] } } }, seen)
  app.get('/open', { config: { apiKey: false } }, seen)
}

function get (app: FastifyInstance, url: string, headers: Record<string, string> = {}, extra: Partial<InjectOptions> = {}): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'GET', url, headers, ...extra })
}

function assertRefused (res: LightMyRequestResponse, status: number, code: string, challenge?: string): void {
  assert.equal(res.statusCode, status, res.body)
  const body = res.json()
  assert.deepEqual(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'])
  assert.equal(body.code, code)
  assert.equal(res.headers['www-authenticate'], challenge)
}

const MISSING_CHALLENGE = 'ApiKey realm="api"'

for (const backend of BACKENDS) {
  describe(`optional keys, ${backend} backend`, () => {
    test('no key runs the route with request.apiKey null, counted as anonymous; an empty header counts as no key', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const { messages, stop } = subscribe('fastify-auth-cache:authenticate')
      t.after(stop)
      for (const headers of [{}, { 'x-api-key': '' }, { 'x-api-key': '   ' }] as Array<Record<string, string>>) {
        const res = await get(app, '/maybe', headers)
        assert.equal(res.statusCode, 200, res.body)
        assert.deepEqual(res.json(), { apiKey: null })
      }
      const stats = app.apiKeyCache.stats()
      assert.equal(stats.anonymous, 3)
      assert.equal(stats.rejections.missing, 0)
      assert.deepEqual(keys.calls, [], 'no key, no lookup')
      const anonymous = messages.filter((m) => m.outcome === 'anonymous')
      assert.equal(anonymous.length, 3)
      for (const message of anonymous) {
        assert.equal('keyHash' in message, false)
        assert.equal(message.backend, app.apiKeyCache.backend)
        assert.equal(typeof message.durationMs, 'number')
      }
      // The same request without a key elsewhere is still a 401.
      assertRefused(await get(app, '/me'), 401, 'FST_API_KEY_MISSING', MISSING_CHALLENGE)
    })

    test('a key that is sent is checked as on any route: valid runs with the record, bad is a 401', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const record = { id: 'k', active: true }
      const good = keys.add(record)
      const inactive = keys.add({ id: 'off', active: false })
      for (let i = 0; i < 2; i++) {
        const res = await get(app, '/maybe', { 'x-api-key': good })
        assert.equal(res.statusCode, 200, res.body)
        assert.deepEqual(res.json(), { apiKey: record })
      }
      for (const key of [generateApiKey({ prefix: 'access' }).key, inactive]) {
        assertRefused(await get(app, '/maybe', { 'x-api-key': key }), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      }
      assertRefused(await get(app, '/maybe', { 'x-api-key': 'bad\u0001key' }), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      assert.equal(app.apiKeyCache.stats().anonymous, 0)
    })

    test('optional with scopes: no key runs; a key lacking the scope is a 403; one holding it runs', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const writer = { id: 'writer', active: true, scopes: ['orders:write'] }
      const reader = keys.add({ id: 'reader', active: true, scopes: ['orders:read'] })
      const writerKey = keys.add(writer)
      const none = await app.inject({ method: 'POST', url: '/maybe/orders' })
      assert.equal(none.statusCode, 200)
      assert.deepEqual(none.json(), { apiKey: null })
      assertRefused(await app.inject({ method: 'POST', url: '/maybe/orders', headers: { 'x-api-key': reader } }),
        403, 'FST_API_KEY_FORBIDDEN', 'ApiKey realm="api", error="insufficient_scope", scope="orders:write"')
      const ok = await app.inject({ method: 'POST', url: '/maybe/orders', headers: { 'x-api-key': writerKey } })
      assert.deepEqual(ok.json(), { apiKey: writer })
      const stats = app.apiKeyCache.stats()
      assert.equal(stats.anonymous, 1)
      assert.equal(stats.rejections.forbidden, 1)
    })

    test('Authorization without a Bearer token counts as no key on an optional route', async (t) => {
      const { app, keys } = await build(t, backend, { header: 'authorization' }, routes)
      const key = keys.add({ id: 'k', active: true })
      assert.deepEqual((await get(app, '/maybe', { authorization: 'Basic dXNlcjpwYXNz' })).json(), { apiKey: null })
      assert.deepEqual((await get(app, '/maybe', { authorization: `Bearer ${key}` })).json(), { apiKey: { id: 'k', active: true } })
      assertRefused(await get(app, '/maybe', { authorization: 'Bearer nope' }), 401, 'FST_API_KEY_INVALID', 'Bearer realm="api", error="invalid_token"')
    })
  })

  describe(`address allow-lists, ${backend} backend`, () => {
    test('a request from outside allowedIps is a 403 without WWW-Authenticate, counted as forbidden; inside runs', async (t) => {
      let handled = 0
      const { app, keys } = await build(t, backend, {}, (app) => {
        app.get('/me', async (request) => { handled++; return { apiKey: request.apiKey } })
      })
      const { messages, stop } = subscribe('fastify-auth-cache:authenticate')
      t.after(stop)
      const record = { id: 'office', active: true, allowedIps: ['10.0.0.0/8', '192.0.2.7', '2001:db8::/32'] }
      const key = keys.add(record)
      for (let i = 0; i < 2; i++) {
        for (const remoteAddress of ['10.1.2.3', '192.0.2.7', '2001:db8:5::1', '::ffff:10.9.8.7']) {
          const res = await get(app, '/me', { 'x-api-key': key }, { remoteAddress })
          assert.equal(res.statusCode, 200, `${remoteAddress}: ${res.body}`)
          assert.deepEqual(res.json(), { apiKey: record })
        }
        for (const remoteAddress of ['11.0.0.1', '192.0.2.8', '2001:db9::1', '::ffff:192.0.2.8', '127.0.0.1']) {
          assertRefused(await get(app, '/me', { 'x-api-key': key }, { remoteAddress }), 403, 'FST_API_KEY_FORBIDDEN', undefined)
        }
      }
      assert.equal(handled, 8)
      const stats = app.apiKeyCache.stats()
      assert.equal(stats.rejections.forbidden, 10)
      assert.equal(keys.calls.length, 1, 'a 403 is the address, not the key: the record stays cached')
      const forbidden = messages.filter((m) => m.outcome === 'forbidden')
      assert.equal(forbidden.length, 10)
      assert.equal(forbidden[0].keyHash, hashApiKey(key))
    })

    test('IPv4-mapped IPv6 in the list matches as IPv4, and the client\'s mapped address as its IPv4 form', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const key = keys.add({ id: 'mapped', active: true, allowedIps: ['::ffff:198.51.100.4', '::ffff:203.0.113.0/120'] })
      for (const remoteAddress of ['198.51.100.4', '::ffff:198.51.100.4', '203.0.113.200', '::ffff:203.0.113.1']) {
        assert.equal((await get(app, '/me', { 'x-api-key': key }, { remoteAddress })).statusCode, 200, remoteAddress)
      }
      for (const remoteAddress of ['198.51.100.5', '203.0.114.1', '::ffff:203.0.114.1']) {
        assert.equal((await get(app, '/me', { 'x-api-key': key }, { remoteAddress })).statusCode, 403, remoteAddress)
      }
    })

    test('an empty list admits no address; no list admits every address', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const nowhere = keys.add({ id: 'nowhere', active: true, allowedIps: [] })
      const anywhere = keys.add({ id: 'anywhere', active: true })
      for (const remoteAddress of ['127.0.0.1', '10.0.0.1', '::1']) {
        assert.equal((await get(app, '/me', { 'x-api-key': nowhere }, { remoteAddress })).statusCode, 403)
        assert.equal((await get(app, '/me', { 'x-api-key': anywhere }, { remoteAddress })).statusCode, 200)
      }
    })

    test('request.ip is Fastify\'s: with trustProxy the forwarded address is checked', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes, { trustProxy: true })
      const key = keys.add({ id: 'proxied', active: true, allowedIps: ['203.0.113.9'] })
      assert.equal((await get(app, '/me', { 'x-api-key': key, 'x-forwarded-for': '203.0.113.9' })).statusCode, 200)
      assert.equal((await get(app, '/me', { 'x-api-key': key, 'x-forwarded-for': '203.0.113.10' })).statusCode, 403)
      assert.equal((await get(app, '/me', { 'x-api-key': key })).statusCode, 403, 'the proxy itself (127.0.0.1) is not the client')
    })

    test('order: a bad key is a 401 wherever it comes from; the address is checked before the route scopes', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const inactive = keys.add({ id: 'off', active: false, allowedIps: ['10.0.0.1'] })
      const reader = keys.add({ id: 'reader', active: true, scopes: ['orders:read'], allowedIps: ['10.0.0.1'] })
      assertRefused(await get(app, '/me', { 'x-api-key': inactive }, { remoteAddress: '10.0.0.2' }), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      // Outside the list and lacking the scope: the address's 403, which names no scope.
      assertRefused(await app.inject({ method: 'POST', url: '/orders', headers: { 'x-api-key': reader }, remoteAddress: '10.0.0.2' }),
        403, 'FST_API_KEY_FORBIDDEN', undefined)
      // Inside the list, lacking the scope: the scope's 403 with its challenge.
      assertRefused(await app.inject({ method: 'POST', url: '/orders', headers: { 'x-api-key': reader }, remoteAddress: '10.0.0.1' }),
        403, 'FST_API_KEY_FORBIDDEN', 'ApiKey realm="api", error="insufficient_scope", scope="orders:write"')
      // An optional route: a key sent from outside its list is refused too.
      assert.equal((await get(app, '/maybe', { 'x-api-key': reader }, { remoteAddress: '10.0.0.2' })).statusCode, 403)
    })

    test('a malformed list makes the record invalid: 503 FST_API_KEY_LOOKUP_FAILED, nothing cached, nothing accepted', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const lists: unknown[] = ['10.0.0.1', { 0: '10.0.0.1' }, null, 7, [1], [null], ['10.0.0.1', 5], ['1.2.3.4/33'], ['::/129'],
        ['10.0.0.0/8x'], ['10.0.0.0/'], ['10.0.0.0/-1'], ['300.1.1.1'], ['10.0.0'], ['fe80::1%eth0'], [''], ['1.2.3.4 '], ['gggg::1'], ['10.0.0.0/8/8']]
      for (const allowedIps of lists) {
        const key = keys.add({ id: 'bad', active: true, allowedIps })
        for (let i = 0; i < 2; i++) {
          assertRefused(await get(app, '/me', { 'x-api-key': key }), 503, 'FST_API_KEY_LOOKUP_FAILED', undefined)
        }
        assert.equal(keys.calls.filter((hash) => hash === hashApiKey(key)).length, 2, `${JSON.stringify(allowedIps)}: nothing was cached`)
        assert.equal(await app.apiKeyCache.get(hashApiKey(key)), undefined)
      }
      assert.equal(app.apiKeyCache.stats().lookupErrors, 2 * lists.length)
      await assert.rejects(app.apiKeyCache.set(hashApiKey('x'), { id: 'x', active: true, allowedIps: ['nope'] }, 60), { code: 'FST_AUTH_CACHE_INVALID_OPTION' })
    })

    if (backend !== 'memory') {
      test('a record in Redis with a malformed list is a miss, never trusted', async (t) => {
        const { app, keys, keyPrefix } = await build(t, backend, {}, routes)
        const key = keys.add({ id: 'good', active: true, allowedIps: ['127.0.0.1'] })
        await redis.admin.set(`${keyPrefix}${hashApiKey(key)}`, JSON.stringify({ id: 'planted', active: true, allowedIps: ['0.0.0.0/33'] }), 'EX', 60)
        const res = await get(app, '/me', { 'x-api-key': key })
        assert.equal(res.statusCode, 200, res.body)
        assert.equal(res.json().apiKey.id, 'good')
        assert.equal(keys.calls.length, 1)
      })
    }

    if (backend !== 'redis') {
      test('the list is parsed once per record, never per request', async (t) => {
        const keys = new Keys()
        keys.shareRecords = true
        // The route does not send the record: serializing it would read the list too.
        const { app } = await build(t, backend, {}, (app) => { app.get('/me', async () => 'ok') }, {}, keys)
        let reads = 0
        const list = new Proxy(['127.0.0.1', '10.0.0.0/8'], {
          get (target, property, receiver) {
            reads++
            return Reflect.get(target, property, receiver)
          }
        })
        const key = keys.add({ id: 'watched', active: true, allowedIps: list })
        assert.equal((await get(app, '/me', { 'x-api-key': key })).statusCode, 200)
        const afterFirst = reads
        assert.ok(afterFirst > 0)
        for (let i = 0; i < 20; i++) {
          assert.equal((await get(app, '/me', { 'x-api-key': key }, { remoteAddress: i % 2 === 0 ? '10.0.0.9' : '127.0.0.1' })).statusCode, 200)
          assert.equal((await get(app, '/me', { 'x-api-key': key }, { remoteAddress: '11.0.0.1' })).statusCode, 403)
        }
        assert.equal(reads, afterFirst, 'hits read the parsed list, not the record\'s array')
      })
    }
  })

  describe(`where the key travels, ${backend} backend`, () => {
    test('a header list: the first listed header present decides; a bad key there is a 401, never a fall-through', async (t) => {
      const { app, keys } = await build(t, backend, { header: ['X-Api-Key', 'authorization'] }, routes)
      const record = { id: 'k', active: true }
      const key = keys.add(record)
      const bad = generateApiKey({ prefix: 'access' }).key
      assert.deepEqual((await get(app, '/me', { 'x-api-key': key })).json(), { apiKey: record })
      assert.deepEqual((await get(app, '/me', { authorization: `Bearer ${key}` })).json(), { apiKey: record })
      assert.deepEqual((await get(app, '/me', { 'x-api-key': '', authorization: `bearer ${key}` })).json(), { apiKey: record })
      assertRefused(await get(app, '/me', { 'x-api-key': bad, authorization: `Bearer ${key}` }), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      assertRefused(await get(app, '/me', { 'x-api-key': 'a\u0002b', authorization: `Bearer ${key}` }), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      // The challenge speaks the first listed header's scheme, wherever the key was.
      assertRefused(await get(app, '/me', { authorization: `Bearer ${bad}` }), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      assertRefused(await get(app, '/me', { authorization: `Basic ${key}` }), 401, 'FST_API_KEY_MISSING', MISSING_CHALLENGE)
      assertRefused(await get(app, '/me'), 401, 'FST_API_KEY_MISSING', MISSING_CHALLENGE)
      assert.deepEqual(keys.calls, [hashApiKey(key), hashApiKey(bad)])
    })

    test('Authorization listed first: Bearer challenges, also for scopes', async (t) => {
      const { app, keys } = await build(t, backend, { header: ['authorization', 'x-api-key'], realm: 'Orders' }, routes)
      const reader = keys.add({ id: 'reader', active: true, scopes: ['orders:read'] })
      assert.equal((await get(app, '/me', { 'x-api-key': reader })).statusCode, 200)
      assertRefused(await get(app, '/me'), 401, 'FST_API_KEY_MISSING', 'Bearer realm="Orders"')
      assertRefused(await get(app, '/me', { 'x-api-key': 'nope' }), 401, 'FST_API_KEY_INVALID', 'Bearer realm="Orders", error="invalid_token"')
      assertRefused(await app.inject({ method: 'POST', url: '/orders', headers: { 'x-api-key': reader } }),
        403, 'FST_API_KEY_FORBIDDEN', 'Bearer realm="Orders", error="insufficient_scope", scope="orders:write"')
    })

    test('apiKeys.query: the key from the query string when no listed header is present', async (t) => {
      const { app, keys } = await build(t, backend, { query: 'api_key' }, routes)
      const record = { id: 'hook', active: true }
      const key = keys.add(record)
      const bad = generateApiKey({ prefix: 'access' }).key
      assert.deepEqual((await get(app, `/me?api_key=${key}`)).json(), { apiKey: record })
      assert.deepEqual((await get(app, `/me?x=1&api_key=${encodeURIComponent(key).replace(/_/g, '%5F')}&y=2`)).json(), { apiKey: record })
      assert.deepEqual((await get(app, `/maybe?api_key=${key}`)).json(), { apiKey: record })
      assertRefused(await get(app, `/me?api_key=${bad}`), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      // A header present decides, the query is not read.
      assertRefused(await get(app, `/me?api_key=${key}`, { 'x-api-key': bad }), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      // A repeated parameter, or a malformed one, is a 401 without any lookup.
      const calls = keys.calls.length
      assertRefused(await get(app, `/me?api_key=${key}&api_key=${key}`), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      assertRefused(await get(app, `/me?api_key=${key}&api_key=${bad}`), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      assertRefused(await get(app, '/me?api_key=a%01b'), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      assertRefused(await get(app, `/me?api_key=${'x'.repeat(1025)}`), 401, 'FST_API_KEY_INVALID', MISSING_CHALLENGE)
      assert.equal(keys.calls.length, calls)
      // Empty, or under another name, is no key.
      assertRefused(await get(app, '/me?api_key='), 401, 'FST_API_KEY_MISSING', MISSING_CHALLENGE)
      assertRefused(await get(app, `/me?apikey=${key}`), 401, 'FST_API_KEY_MISSING', MISSING_CHALLENGE)
      assertRefused(await get(app, `/me?__proto__=${key}`), 401, 'FST_API_KEY_MISSING', MISSING_CHALLENGE)
      assert.deepEqual((await get(app, '/maybe?api_key=')).json(), { apiKey: null })
    })

    test('without apiKeys.query a key in the query string is not read', async (t) => {
      const { app, keys } = await build(t, backend, {}, routes)
      const key = keys.add({ id: 'k', active: true })
      assertRefused(await get(app, `/me?api_key=${key}`), 401, 'FST_API_KEY_MISSING', MISSING_CHALLENGE)
      assert.deepEqual(keys.calls, [])
    })

    test('hideCredentials removes the key from the headers and the query once read; request.url stays', async (t) => {
      const seen: any[] = []
      const { app, keys } = await build(t, backend, { header: ['x-api-key', 'authorization'], query: 'api_key', hideCredentials: true }, (app) => {
        app.get('/me', async (request) => {
          seen.push({ headers: { ...request.headers }, rawHeaders: [...request.raw.rawHeaders], query: { ...request.query as object }, url: request.url })
          return 'ok'
        })
      })
      const key = keys.add({ id: 'k', active: true })
      assert.equal((await get(app, '/me?x=1', { 'x-api-key': key, 'x-other': 'kept' })).statusCode, 200)
      assert.equal((await get(app, '/me', { authorization: `Bearer ${key}`, 'x-other': 'kept' })).statusCode, 200)
      assert.equal((await get(app, `/me?api_key=${key}&x=1`, { 'x-other': 'kept' })).statusCode, 200)
      assert.equal(seen.length, 3)
      for (const request of seen) {
        assert.equal(request.headers['x-other'], 'kept')
        assert.equal(JSON.stringify([request.headers, request.rawHeaders, request.query]).includes(key), false, JSON.stringify(request))
      }
      assert.equal(seen[0].headers['x-api-key'], undefined)
      assert.equal(seen[1].headers.authorization, undefined)
      assert.equal(seen[2].query.api_key, undefined)
      assert.equal(seen[2].query.x, '1')
      assert.equal(seen[0].query.x, '1')
      assert.equal(seen[2].url, `/me?api_key=${key}&x=1`)
    })

    test('without hideCredentials the key stays where it came', async (t) => {
      const seen: any[] = []
      const { app, keys } = await build(t, backend, { query: 'api_key' }, (app) => {
        app.get('/me', async (request) => { seen.push({ headers: request.headers, query: request.query }); return 'ok' })
      })
      const key = keys.add({ id: 'k', active: true })
      await get(app, '/me', { 'x-api-key': key })
      await get(app, `/me?api_key=${key}`)
      assert.equal(seen[0].headers['x-api-key'], key)
      assert.equal(seen[1].query.api_key, key)
    })
  })
}

describe('verifyApiKey on optional routes', () => {
  test('with hook: false, verifyApiKey lets a request without a key through; one with a bad key is a 401', async (t) => {
    const { app, keys } = await build(t, 'memory', { hook: false }, (app) => {
      app.get('/maybe', { config: { apiKey: { optional: true } }, onRequest: app.verifyApiKey }, async (request) => ({ apiKey: request.apiKey }))
    })
    const key = keys.add({ id: 'k', active: true })
    assert.deepEqual((await get(app, '/maybe')).json(), { apiKey: null })
    assert.deepEqual((await get(app, '/maybe', { 'x-api-key': key })).json(), { apiKey: { id: 'k', active: true } })
    assert.equal((await get(app, '/maybe', { 'x-api-key': 'nope' })).statusCode, 401)
    assert.equal(app.apiKeyCache.stats().anonymous, 1)
  })

  test('after the hook let a request through anonymously, verifyApiKey does not count it again', async (t) => {
    const { app } = await build(t, 'memory', {}, (app) => {
      app.get('/maybe', { config: { apiKey: { optional: true } }, preHandler: app.verifyApiKey }, async (request) => ({ apiKey: request.apiKey }))
    })
    assert.deepEqual((await get(app, '/maybe')).json(), { apiKey: null })
    assert.equal(app.apiKeyCache.stats().anonymous, 1)
  })
})

describe('options of section 12', () => {
  const cases: Array<[ApiKeysOptions, string]> = [
    [{ header: [] }, 'apiKeys.header'],
    [{ header: ['x-api-key', 5] as unknown as string[] }, 'apiKeys.header[1]'],
    [{ header: ['x-api-key', 'X-API-KEY'] }, 'apiKeys.header'],
    [{ header: ['bad header'] }, 'apiKeys.header[0]'],
    [{ header: 5 as unknown as string }, 'apiKeys.header'],
    [{ query: '' }, 'apiKeys.query'],
    [{ query: 5 as unknown as string }, 'apiKeys.query'],
    [{ query: 'a"b' }, 'apiKeys.query'],
    [{ hideCredentials: 'yes' as unknown as boolean }, 'apiKeys.hideCredentials']
  ]
  for (const [apiKeys, name] of cases) {
    test(`${JSON.stringify(apiKeys)} fails registration naming ${name}`, async (t) => {
      const app = Fastify()
      t.after(() => app.close())
      app.register(fastifyAuthCache, { apiKeys: { lookup: () => null, ...apiKeys } })
      await assert.rejects(async () => { await app.ready() }, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
        assert.ok(err.message.includes(name), err.message)
        return true
      })
    })
  }

  for (const [apiKey, why] of [[{ optional: 'yes' }, 'optional must be a boolean'], [{ optional: true, x: 1 }, 'unknown property']] as const) {
    test(`route config ${JSON.stringify(apiKey)} fails at declaration naming the route`, async (t) => {
      const app = Fastify()
      t.after(() => app.close())
      await app.register(fastifyAuthCache, { apiKeys: { lookup: () => null } })
      assert.throws(() => app.get('/x', { config: { apiKey: apiKey as never } }, async () => 'ok'), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
        assert.ok(err.message.includes('GET /x') && err.message.includes(why), err.message)
        return true
      })
    })
  }

  test('an optional route declared before the plugin loaded is optional too', async (t) => {
    const keys = new Keys()
    const app = Fastify()
    t.after(() => app.close())
    app.register(fastifyAuthCache, { apiKeys: { lookup: keys.lookup } })
    app.get('/maybe', { config: { apiKey: { optional: true } } }, async (request) => ({ apiKey: request.apiKey }))
    const key = keys.add({ id: 'k', active: true })
    assert.deepEqual((await get(app, '/maybe')).json(), { apiKey: null })
    assert.deepEqual((await get(app, '/maybe', { 'x-api-key': key })).json(), { apiKey: { id: 'k', active: true } })
    assert.equal((await get(app, '/maybe', { 'x-api-key': 'nope' })).statusCode, 401)
  })

  test('{ optional: false } is an ordinary route', async (t) => {
    const { app } = await build(t, 'memory', {}, (app) => {
      app.get('/x', { config: { apiKey: { optional: false } } }, async () => 'ok')
    })
    assert.equal((await get(app, '/x')).statusCode, 401)
  })
})

describe('redactingRequestSerializer', () => {
  async function loggedApp (t: TestContext, serializer: boolean): Promise<{ built: Built, log: CapturedLog }> {
    const log = new CapturedLog()
    const built = await build(t, 'memory', { query: 'api_key' }, routes, {
      logger: { level: 'trace', stream: log.stream, ...(serializer && { serializers: { req: redactingRequestSerializer('api_key') } }) }
    })
    return { built, log }
  }

  const encode = (key: string): string => [...key].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join('')

  function urls (key: string, other: string): string[] {
    const encoded = encode(key)
    return [
      `/me?api_key=${key}`,
      `/me?x=1&api_key=${key}&y=2`,
      `/me?api_key=${encoded}`,
      `/me?api%5Fkey=${key}`,
      `/me?api_key=${key}&api_key=${other}`,
      `/maybe?api_key=${key}#frag`,
      `/open?z=${key.slice(0, 3)}&api_key=${key}`
    ]
  }

  test('no log line holds a query key, plain, URL-encoded, repeated or among other parameters', async (t) => {
    const { built: { app, keys }, log } = await loggedApp(t, true)
    const key = keys.add({ id: 'k', active: true })
    const other = keys.add({ id: 'other', active: true })
    const unknown = generateApiKey({ prefix: 'access' }).key
    for (const url of [...urls(key, other), ...urls(unknown, other)]) await get(app, url)
    const text = log.text
    for (const secret of [key, other, unknown]) {
      assert.equal(text.includes(secret), false, text)
      assert.equal(text.includes(secret.slice(7)), false, 'not even the random part')
      assert.equal(text.includes(encode(secret).slice(21)), false, 'nor its URL-encoded form')
    }
    const loggedUrls = log.lines.filter((line) => line.req !== undefined).map((line) => (line.req as { url: string }).url)
    assert.ok(loggedUrls.length >= 14, text)
    assert.ok(loggedUrls.includes('/me?x=1&api_key=[REDACTED]&y=2'), loggedUrls.join('\n'))
    assert.ok(loggedUrls.includes('/me?api_key=[REDACTED]&api_key=[REDACTED]'), loggedUrls.join('\n'))
    // What Fastify's own serializer writes, no more.
    const first = log.lines.find((line) => line.req !== undefined)!.req as Record<string, unknown>
    for (const field of Object.keys(first)) assert.ok(['host', 'method', 'remoteAddress', 'remotePort', 'url', 'version'].includes(field), field)
    assert.equal(first.method, 'GET')
    assert.equal(first.host, 'localhost:80')
    assert.equal(first.remoteAddress, '127.0.0.1')
  })

  test('the control: without it, Fastify logs the plaintext query key', async (t) => {
    const { built: { app, keys }, log } = await loggedApp(t, false)
    const key = keys.add({ id: 'k', active: true })
    await get(app, `/me?api_key=${key}`)
    assert.ok(log.text.includes(key))
  })

  test('a 404: Fastify\'s default handler writes the URL into its message; a handler of one\'s own keeps the key out', async (t) => {
    for (const ownHandler of [false, true]) {
      const log = new CapturedLog()
      const { app, keys } = await build(t, 'memory', { query: 'api_key' }, (app) => {
        if (ownHandler) app.setNotFoundHandler((request, reply) => reply.code(404).send({ statusCode: 404, error: 'Not Found', message: 'Not found' }))
      }, { logger: { level: 'trace', stream: log.stream, serializers: { req: redactingRequestSerializer('api_key') } } })
      const key = keys.add({ id: 'k', active: true })
      const res = await get(app, `/nowhere?api_key=${key}`)
      assert.equal(res.statusCode, 404)
      assert.equal(log.text.includes(key) || res.body.includes(key), !ownHandler, log.text)
    }
  })

  test('a non-empty parameter name is required', () => {
    for (const bad of ['', 5, undefined]) {
      assert.throws(() => redactingRequestSerializer(bad as string), { code: 'FST_AUTH_CACHE_INVALID_OPTION' })
    }
  })

  test('it redacts the value wherever a router could start the query string, and nothing else', () => {
    const serialize = redactingRequestSerializer('api_key')
    const cases: Array<[string, string]> = [
      ['/a', '/a'],
      ['/a?b=1', '/a?b=1'],
      ['/a?api_keyx=1&xapi_key=2', '/a?api_keyx=1&xapi_key=2'],
      ['/a?api_key', '/a?api_key'],
      ['/a?api_key=S#E;C?R&b=2', '/a?api_key=[REDACTED]&b=2'],
      ['/a;b=1?api_key=S', '/a;b=1?api_key=[REDACTED]'],
      ['/a?b=1;api_key=S', '/a?b=1;api_key=[REDACTED]'],
      ['/a#api_key=S', '/a#api_key=[REDACTED]'],
      ['/a?api+key=S&api%20key=T', '/a?api+key=S&api%20key=T'],
      ['/a?%61pi_key=S&api_key=', '/a?%61pi_key=[REDACTED]&api_key=[REDACTED]'],
      ['/a?%zz=1&api_key=S', '/a?%zz=1&api_key=[REDACTED]']
    ]
    for (const [url, expected] of cases) assert.equal(serialize({ method: 'GET', url }).url, expected, url)
    const spaced = redactingRequestSerializer('api key')
    assert.equal(spaced({ url: '/a?api+key=S&api%20key=T' }).url, '/a?api+key=[REDACTED]&api%20key=[REDACTED]')
  })
})

describe('address lists, against node:net BlockList', () => {
  function randomV4 (): string {
    return Array.from({ length: 4 }, () => Math.floor(Math.random() * 256)).join('.')
  }
  function randomV6 (): string {
    // Few distinct groups, so that random addresses fall inside random ranges often enough.
    return Array.from({ length: 8 }, () => ['0', '1', 'ffff', 'db8', '2001'][Math.floor(Math.random() * 5)]).join(':')
  }

  test('random addresses and ranges: the same answers as BlockList', () => {
    for (let round = 0; round < 300; round++) {
      const entries: string[] = []
      const blocks = new BlockList()
      for (let i = 0; i < 4; i++) {
        if (Math.random() < 0.5) {
          const [address, prefix] = [randomV4(), Math.floor(Math.random() * 33)]
          entries.push(`${address}/${prefix}`)
          blocks.addSubnet(address, prefix, 'ipv4')
        } else {
          const [address, prefix] = [randomV6(), Math.floor(Math.random() * 129)]
          entries.push(`${address}/${prefix}`)
          blocks.addSubnet(address, prefix, 'ipv6')
        }
      }
      const list = parseAddressList(entries)
      assert.ok(list !== undefined, entries.join(' '))
      for (let i = 0; i < 20; i++) {
        const v6 = Math.random() < 0.5
        const address = v6 ? randomV6() : randomV4()
        // BlockList's own handling of IPv4-mapped addresses differs; those are covered above.
        if (v6 && /^0:0:0:0:0:ffff:/.test(address)) continue
        assert.equal(admitsAddress(list, address), blocks.check(address, v6 ? 'ipv6' : 'ipv4'), `${address} in ${entries.join(' ')}`)
      }
    }
  })

  test('client addresses: what net.isIP accepts is read, anything else is no address (random strings)', () => {
    const everything = parseAddressList(['::/0'])!
    const alphabet = '0123456789abcdefABCDEF:.::::'
    for (let i = 0; i < 200_000; i++) {
      let text = Math.random() < 0.3 ? '::ffff:' : ''
      const length = 2 + Math.floor(Math.random() * 30)
      for (let j = 0; j < length; j++) text += alphabet[Math.floor(Math.random() * alphabet.length)]
      assert.equal(admitsAddress(everything, text), isIP(text) !== 0, JSON.stringify(text))
    }
    for (const text of ['1:2:3:4:5:6:7:8:9', '1::2::3', ':1::', '1:', '12345::', '::1.2.3', '1:2:3:4:5:6:7:1.2.3.4', '::ffff:1.2.3.4:5', '1:2:3:4:5:6:7:8::']) {
      assert.equal(admitsAddress(everything, text), false, text)
    }
    for (const text of ['1:2:3:4:5:6:7::', '::', '1::', '1:2:3:4:5:6:1.2.3.4', '::1.2.3.4', 'ABCD::ef01']) {
      assert.equal(admitsAddress(everything, text), true, text)
    }
  })

  test('lists are remembered per record object; an entry that only serializes like a valid one is still malformed', () => {
    const record = { id: 'a', active: true, allowedIps: ['127.0.0.1'] }
    assert.equal(rememberAddressList(record, record.allowedIps), true)
    assert.equal(addressListOf(record), addressListOf({ id: 'b', active: true, allowedIps: ['127.0.0.1'] }), 'one parsed list for equal lists')
    assert.equal(rememberAddressList({}, [{ toJSON: () => '127.0.0.1' }]), false)
    assert.equal(rememberAddressList({}, [new String('127.0.0.1')]), false) // eslint-disable-line no-new-wrappers
    assert.equal(addressListOf({ id: 'c', active: true, allowedIps: ['127.0.0.1/40'] }), undefined)
  })

  test('IPv6 spellings: compressed, embedded IPv4, zone index of the client', () => {
    const list = parseAddressList(['2001:db8::/48', '::1', '64:ff9b::192.0.2.0/120', 'fe80::/10'])!
    for (const address of ['2001:db8:0:1::', '2001:0db8:0000::5', '::1', '0:0:0:0:0:0:0:1', '64:ff9b::192.0.2.33', 'fe80::1%eth0']) {
      assert.equal(admitsAddress(list, address), true, address)
    }
    for (const address of ['2001:db8:1::', '::2', '64:ff9b::192.0.3.1', 'not an address', '', '1.2.3', '01.2.3.4']) {
      assert.equal(admitsAddress(list, address), false, address)
    }
    // A range holding all of ::ffff:0:0/96 admits every IPv4 client.
    assert.equal(admitsAddress(parseAddressList(['::/0'])!, '198.51.100.1'), true)
    assert.equal(admitsAddress(parseAddressList(['::ffff:0:0/96'])!, '198.51.100.1'), true)
    assert.equal(admitsAddress(parseAddressList(['2001:db8::/32'])!, '198.51.100.1'), false)
  })
})

describe('metrics of section 12', () => {
  test('anonymous and forbidden are outcomes of fastify_auth_cache.requests', async (t) => {
    const { exporter, reader } = useGlobalMeterProvider(t)
    const keys = new Keys()
    const app = Fastify()
    t.after(() => app.close())
    await app.register(fastifyAuthCache, { metrics: true, apiKeys: { lookup: keys.lookup } })
    routes(app)
    const key = keys.add({ id: 'k', active: true, allowedIps: ['10.0.0.1'] })
    await get(app, '/maybe')
    await get(app, '/maybe')
    await get(app, '/me', { 'x-api-key': key })
    await reader.forceFlush()
    const points = exporter.getMetrics().flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics))
      .filter((m) => m.descriptor.name === 'fastify_auth_cache.requests').flatMap((m) => m.dataPoints as Array<{ attributes: Record<string, unknown>, value: unknown }>)
    const counts = Object.fromEntries(points.map((p) => [String(p.attributes.outcome), p.value]))
    assert.deepEqual(counts, { anonymous: 2, forbidden: 1 })
  })
})
