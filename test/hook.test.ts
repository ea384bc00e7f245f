import assert from 'node:assert/strict'
import { after, describe, test, type TestContext } from 'node:test'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { generateApiKey, hashApiKey, type ApiKeyRecord, type ApiKeysOptions } from '../lib'
import { BACKENDS, registerOnBackend, type Backend } from './helpers/backend-app'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { usePrivateRedis } from './helpers/redis-server'

const redis = usePrivateRedis()

after(() => {
  failIfHeldOpen('hook.test.ts')
})

type Answer = (keyHash: string) => unknown

/**
 * The source of truth behind `lookup`: answers per key hash, and every call it received. Not
 * helpers/key-source.ts: this lookup is synchronous (an answer may throw out of it) and sees the request.
 */
class KeyDirectory {
  readonly calls: string[] = []
  readonly requestsSeen: string[] = []
  private readonly answers = new Map<string, Answer>()

  /** A new key whose lookup resolves `record`. */
  add (record: ApiKeyRecord | null): string {
    const { key } = generateApiKey({ prefix: 'hook' })
    this.answer(key, async () => record)
    return key
  }

  answer (key: string, answer: Answer): void {
    this.answers.set(hashApiKey(key), answer)
  }

  callsFor (key: string): number {
    const hash = hashApiKey(key)
    return this.calls.filter((called) => called === hash).length
  }

  // Not async, so that an answer that throws makes lookup itself throw, as a synchronous lookup may.
  readonly lookup: NonNullable<ApiKeysOptions['lookup']> = (keyHash, request) => {
    this.calls.push(keyHash)
    this.requestsSeen.push(request.url)
    const answer = this.answers.get(keyHash)
    return (answer === undefined ? null : answer(keyHash)) as ApiKeyRecord | null
  }
}

interface Built {
  app: FastifyInstance
  keys: KeyDirectory
  keyPrefix: string
}

let apps = 0

/** An app on `backend` with its own key prefix, closed (with its Redis client) after the test. */
async function build (t: TestContext, backend: Backend, apiKeys: ApiKeysOptions = {},
  setup?: (app: FastifyInstance, keys: KeyDirectory) => void): Promise<Built> {
  const keys = new KeyDirectory()
  const keyPrefix = `hook-${++apps}:`
  const app = await registerOnBackend(t, redis, backend, { lookup: keys.lookup, keyPrefix, ...apiKeys })
  app.get('/', (request) => ({ apiKey: request.apiKey }))
  setup?.(app, keys)
  await app.ready()
  assert.equal(app.apiKeyCache.backend, backend)
  return { app, keys, keyPrefix }
}

function get (app: FastifyInstance, headers: Record<string, string> = {}, url = '/'): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'GET', url, headers })
}

const STATUS_TEXT: Record<number, string> = { 401: 'Unauthorized', 503: 'Service Unavailable' }

/** Fastify's own error body, exactly: `{ statusCode, code, error, message }` and nothing else. */
function assertError (res: LightMyRequestResponse, statusCode: number, code: string): { message: string } {
  assert.equal(res.statusCode, statusCode, res.body)
  assert.match(String(res.headers['content-type']), /^application\/json/)
  const body = res.json()
  assert.deepEqual(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'])
  assert.equal(body.statusCode, statusCode)
  assert.equal(body.code, code)
  assert.equal(body.error, STATUS_TEXT[statusCode])
  assert.equal(typeof body.message, 'string')
  assert.ok(body.message.length > 0)
  return body
}

/** Calls that read or write the cache in Redis; heartbeats and connection setup are not among them. */
async function redisCacheCommands (): Promise<number> {
  const info = await redis.admin.info('commandstats')
  let calls = 0
  for (const match of info.matchAll(/^cmdstat_(evalsha|eval|get|set|pttl|del|unlink):calls=(\d+)/gm)) {
    calls += Number(match[2])
  }
  return calls
}

const ACTIVE = (id: string): ApiKeyRecord => ({ id, active: true })

for (const backend of BACKENDS) {
  describe(`onRequest hook, ${backend} backend`, () => {
    test('absent, empty or blank x-api-key → 401 FST_API_KEY_MISSING, ApiKey challenge, no lookup', async (t) => {
      const { app, keys } = await build(t, backend)
      for (const headers of [{}, { 'x-api-key': '' }, { 'x-api-key': '   ' }] as Array<Record<string, string>>) {
        const res = await get(app, headers)
        assertError(res, 401, 'FST_API_KEY_MISSING')
        assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api"')
      }
      assert.equal(keys.calls.length, 0)
      assert.equal(app.apiKeyCache.stats().rejections.missing, 3)
    })

    test('Authorization without a Bearer token → 401 FST_API_KEY_MISSING, Bearer challenge without error', async (t) => {
      const { app, keys } = await build(t, backend, { header: 'authorization' })
      const valid = keys.add(ACTIVE('a'))
      const withoutToken: Array<Record<string, string>> = [
        {},
        { authorization: '' },
        { authorization: 'Bearer' },
        { authorization: 'Bearer   ' },
        { authorization: 'Basic dXNlcjpwYXNzd29yZA==' },
        { authorization: `Basic ${valid}` },
        { authorization: `Token ${valid}` },
        { authorization: `Bearer${valid}` },
        { 'x-api-key': valid }
      ]
      for (const headers of withoutToken) {
        const res = await get(app, headers)
        assertError(res, 401, 'FST_API_KEY_MISSING')
        assert.equal(res.headers['www-authenticate'], 'Bearer realm="api"', JSON.stringify(headers))
      }
      assert.equal(keys.calls.length, 0)
    })

    test('the Bearer scheme is case-insensitive', async (t) => {
      const { app, keys } = await build(t, backend, { header: 'authorization' })
      const key = keys.add(ACTIVE('bearer-user'))
      for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
        const res = await get(app, { authorization: `${scheme} ${key}` })
        assert.equal(res.statusCode, 200, `${scheme}: ${res.body}`)
        assert.deepEqual(res.json().apiKey, ACTIVE('bearer-user'))
      }
    })

    test('a key over 1024 characters or holding control characters → 401 FST_API_KEY_INVALID before cache and lookup', async (t) => {
      const { app, keys } = await build(t, backend)
      const longest = 'k'.repeat(1024)
      keys.answer(longest, () => ACTIVE('longest'))
      const malformed = [
        'k'.repeat(1025),
        'k'.repeat(100_000),
        'abc\u0000def',
        'abc\u0001def',
        'abc\tdef',
        'abc\ndef',
        'abc\u001fdef',
        'abc\u007fdef'
      ]
      const redisBefore = backend === 'memory' ? 0 : await redisCacheCommands()
      for (const key of malformed) {
        const res = await get(app, { 'x-api-key': key })
        assertError(res, 401, 'FST_API_KEY_INVALID')
        assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api"')
      }
      assert.equal(keys.calls.length, 0)
      const stats = app.apiKeyCache.stats()
      assert.equal(stats.hits + stats.misses + stats.negativeHits + stats.lookups, 0)
      assert.equal(stats.rejections.malformed, malformed.length)
      if (backend !== 'memory') assert.equal(await redisCacheCommands(), redisBefore)

      // 1024 characters is still a key: it reaches lookup and is accepted.
      const res = await get(app, { 'x-api-key': longest })
      assert.equal(res.statusCode, 200, res.body)
      assert.equal(res.json().apiKey.id, 'longest')
      assert.equal(keys.callsFor(longest), 1)
    })

    test('unknown, inactive and expired keys → one and the same 401 FST_API_KEY_INVALID', async (t) => {
      const { app, keys } = await build(t, backend)
      const unknown = generateApiKey({ prefix: 'hook' }).key
      const inactive = keys.add({ id: 'inactive', active: false })
      const expired = keys.add({ id: 'expired', active: true, expiresAt: Date.now() - 1000 })
      const bodies = []
      for (const key of [unknown, inactive, expired]) {
        const res = await get(app, { 'x-api-key': key })
        assertError(res, 401, 'FST_API_KEY_INVALID')
        assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api"')
        assert.ok(!res.body.includes(key))
        bodies.push(res.body)
      }
      assert.equal(bodies[1], bodies[0])
      assert.equal(bodies[2], bodies[0])
      const { rejections } = app.apiKeyCache.stats()
      assert.deepEqual([rejections.unknown, rejections.inactive, rejections.expired], [1, 1, 1])
    })

    test('an invalid bearer token gets the RFC 6750 challenge with error="invalid_token"', async (t) => {
      const { app, keys } = await build(t, backend, { header: 'authorization' })
      const inactive = keys.add({ id: 'off', active: false })
      for (const token of [generateApiKey({ prefix: 'hook' }).key, inactive, 'x'.repeat(1025), 'a\u0001b']) {
        const res = await get(app, { authorization: `Bearer ${token}` })
        assertError(res, 401, 'FST_API_KEY_INVALID')
        assert.equal(res.headers['www-authenticate'], 'Bearer realm="api", error="invalid_token"')
      }
    })

    test('a valid key → request.apiKey is the record, and the next request is answered from the cache', async (t) => {
      const { app, keys } = await build(t, backend)
      const record = { id: 'client-7', active: true, expiresAt: Date.now() + 3_600_000, scopes: ['read', 'write'], owner: { team: 'x' } }
      const key = keys.add(record)
      for (let i = 0; i < 3; i++) {
        const res = await get(app, { 'x-api-key': key })
        assert.equal(res.statusCode, 200, res.body)
        assert.deepEqual(res.json().apiKey, record)
      }
      assert.deepEqual(keys.calls, [hashApiKey(key)])
      assert.deepEqual(keys.requestsSeen, ['/'])
      assert.equal(app.apiKeyCache.stats().hits, 2)
    })

    test('lookup throws, rejects or answers junk → 503 FST_API_KEY_LOOKUP_FAILED, and nothing is cached', async (t) => {
      const { app, keys, keyPrefix } = await build(t, backend)
      const failures: Record<string, Answer> = {
        'throws synchronously': () => { throw new Error('database down') },
        rejects: () => Promise.reject(new Error('timeout')),
        'resolves junk': async () => 'client-1',
        'a string': () => 'client-1',
        'a number': () => 42,
        'an array': () => [{ id: 'a', active: true }],
        'an object without id': () => ({ active: true }),
        'an id that is not a string': () => ({ id: 7, active: true }),
        'active not boolean': () => ({ id: 'a', active: 'yes' }),
        'active missing': () => ({ id: 'a' })
      }
      for (const [name, failure] of Object.entries(failures)) {
        const key = generateApiKey({ prefix: 'hook' }).key
        keys.answer(key, failure)
        for (let attempt = 1; attempt <= 2; attempt++) {
          const res = await get(app, { 'x-api-key': key })
          assertError(res, 503, 'FST_API_KEY_LOOKUP_FAILED')
          assert.equal(keys.callsFor(key), attempt, `${name}: every request must ask lookup again`)
        }
        if (backend !== 'memory') assert.equal(await redis.admin.exists(keyPrefix + hashApiKey(key)), 0, name)
        // Neither a record nor "unknown" was remembered: once lookup answers, the key works.
        keys.answer(key, () => ACTIVE(name))
        const res = await get(app, { 'x-api-key': key })
        assert.equal(res.statusCode, 200, `${name}: ${res.body}`)
        assert.equal(keys.callsFor(key), 3)
      }
      assert.equal(app.apiKeyCache.stats().lookupErrors, Object.keys(failures).length * 2)
    })

    test('setErrorHandler reshapes the errors; the challenge header stays', async (t) => {
      const { app, keys } = await build(t, backend, {}, (app) => {
        app.setErrorHandler((err: { statusCode?: number, code?: string }, _request, reply) => {
          reply.code(err.statusCode ?? 500).send({ failure: err.code })
        })
      })
      const key = generateApiKey({ prefix: 'hook' }).key
      keys.answer(key, () => { throw new Error('down') })
      const cases: Array<[Record<string, string>, number, string]> = [
        [{}, 401, 'FST_API_KEY_MISSING'],
        [{ 'x-api-key': generateApiKey({ prefix: 'hook' }).key }, 401, 'FST_API_KEY_INVALID'],
        [{ 'x-api-key': key }, 503, 'FST_API_KEY_LOOKUP_FAILED']
      ]
      for (const [headers, status, code] of cases) {
        const res = await get(app, headers)
        assert.equal(res.statusCode, status)
        assert.deepEqual(res.json(), { failure: code })
        if (status === 401) assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api"')
      }
    })

    test('a custom realm appears in every challenge', async (t) => {
      const apiKeyApp = await build(t, backend, { realm: 'Partner API' })
      const bearerApp = await build(t, backend, { realm: 'Partner API', header: 'authorization' })
      const unknown = generateApiKey({ prefix: 'hook' }).key
      const challenges: Array<[FastifyInstance, Record<string, string>, string]> = [
        [apiKeyApp.app, {}, 'ApiKey realm="Partner API"'],
        [apiKeyApp.app, { 'x-api-key': unknown }, 'ApiKey realm="Partner API"'],
        [bearerApp.app, {}, 'Bearer realm="Partner API"'],
        [bearerApp.app, { authorization: `Bearer ${unknown}` }, 'Bearer realm="Partner API", error="invalid_token"']
      ]
      for (const [app, headers, challenge] of challenges) {
        const res = await get(app, headers)
        assert.equal(res.statusCode, 401)
        assert.equal(res.headers['www-authenticate'], challenge)
      }
    })

    test('config: { apiKey: false } opts a route out; other routes stay guarded', async (t) => {
      const { app, keys } = await build(t, backend, {}, (app) => {
        app.get('/health', { config: { apiKey: false } }, (request) => ({ apiKey: request.apiKey ?? null }))
      })
      const headerSets: Array<Record<string, string>> = [{}, { 'x-api-key': 'k'.repeat(2000) }, { 'x-api-key': generateApiKey({ prefix: 'hook' }).key }]
      for (const headers of headerSets) {
        const res = await get(app, headers, '/health')
        assert.equal(res.statusCode, 200, res.body)
        assert.deepEqual(res.json(), { apiKey: null })
      }
      assert.equal(keys.calls.length, 0)
      assertError(await get(app), 401, 'FST_API_KEY_MISSING')
    })

    test('hook: false adds no hook, and fastify.verifyApiKey guards a route from its own onRequest', async (t) => {
      const { app, keys } = await build(t, backend, { hook: false }, (app) => {
        app.get('/guarded', { onRequest: app.verifyApiKey }, (request) => ({ apiKey: request.apiKey }))
      })
      const valid = keys.add(ACTIVE('verified'))
      const failing = generateApiKey({ prefix: 'hook' }).key
      keys.answer(failing, () => Promise.reject(new Error('down')))

      const open = await get(app)
      assert.equal(open.statusCode, 200, 'without the hook an unguarded route needs no key')
      assert.deepEqual(open.json(), { apiKey: null })

      const missing = await get(app, {}, '/guarded')
      assertError(missing, 401, 'FST_API_KEY_MISSING')
      assert.equal(missing.headers['www-authenticate'], 'ApiKey realm="api"')
      const invalid = await get(app, { 'x-api-key': generateApiKey({ prefix: 'hook' }).key }, '/guarded')
      assertError(invalid, 401, 'FST_API_KEY_INVALID')
      assert.equal(invalid.headers['www-authenticate'], 'ApiKey realm="api"')
      assertError(await get(app, { 'x-api-key': failing }, '/guarded'), 503, 'FST_API_KEY_LOOKUP_FAILED')

      const ok = await get(app, { 'x-api-key': valid }, '/guarded')
      assert.equal(ok.statusCode, 200, ok.body)
      assert.deepEqual(ok.json(), { apiKey: ACTIVE('verified') })
    })

    test('apiKeys.format: a key that is not well formed → 401 with no cache access and no lookup', async (t) => {
      const { app, keys } = await build(t, backend, { format: { prefix: 'live' } })
      const good = generateApiKey({ prefix: 'live' }).key
      keys.answer(good, () => ACTIVE('formatted'))
      const first = await get(app, { 'x-api-key': good })
      assert.equal(first.statusCode, 200, first.body)
      assert.equal(first.json().apiKey.id, 'formatted')

      const otherPrefix = generateApiKey({ prefix: 'test' }).key
      const lastChar = good.at(-1) === 'A' ? 'B' : 'A'
      const junk = [
        'not-a-key',
        good.slice(0, -1) + lastChar,
        good.slice(0, 10) + (good[10] === 'x' ? 'y' : 'x') + good.slice(11),
        good + 'A',
        good.slice(0, -1),
        otherPrefix,
        'live_' + otherPrefix.slice(5)
      ]
      for (const key of junk) keys.answer(key, () => ACTIVE('must never be asked'))
      const statsBefore = app.apiKeyCache.stats()
      const redisBefore = backend === 'memory' ? 0 : await redisCacheCommands()
      for (const key of junk) {
        const res = await get(app, { 'x-api-key': key })
        assertError(res, 401, 'FST_API_KEY_INVALID')
        assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api"')
      }
      const stats = app.apiKeyCache.stats()
      assert.deepEqual(keys.calls, [hashApiKey(good)])
      assert.equal(stats.misses, statsBefore.misses)
      assert.equal(stats.hits, statsBefore.hits)
      assert.equal(stats.negativeHits, statsBefore.negativeHits)
      assert.equal(stats.rejections.malformed, junk.length)
      if (backend !== 'memory') assert.equal(await redisCacheCommands(), redisBefore)
    })

    test('a custom header name carries the key; x-api-key is then ignored', async (t) => {
      const { app, keys } = await build(t, backend, { header: 'X-Client-Token' })
      const key = keys.add(ACTIVE('custom-header'))
      const ok = await get(app, { 'x-client-token': key })
      assert.equal(ok.statusCode, 200, ok.body)
      assert.equal(ok.json().apiKey.id, 'custom-header')
      const res = await get(app, { 'x-api-key': key })
      assertError(res, 401, 'FST_API_KEY_MISSING')
      assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api"')
    })

    test('the hook runs before the body is parsed: no key gets 401, never 400 or 413, and the parser never runs', async (t) => {
      let parsed = 0
      const { app, keys } = await build(t, backend, {}, (app) => {
        app.removeAllContentTypeParsers()
        app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
          parsed++
          try {
            done(null, JSON.parse(body as string))
          } catch (err) {
            (err as { statusCode?: number }).statusCode = 400
            done(err as Error, undefined)
          }
        })
        app.post('/items', { bodyLimit: 1024 }, (request) => ({ received: request.body }))
      })
      const key = keys.add(ACTIVE('poster'))
      const post = (headers: Record<string, string>, payload: string): Promise<LightMyRequestResponse> =>
        app.inject({ method: 'POST', url: '/items', headers: { 'content-type': 'application/json', ...headers }, payload })
      const invalidJson = '{"unterminated": '
      const huge = JSON.stringify({ blob: 'x'.repeat(256 * 1024) })

      assertError(await post({}, invalidJson), 401, 'FST_API_KEY_MISSING')
      assertError(await post({}, huge), 401, 'FST_API_KEY_MISSING')
      assertError(await post({ 'x-api-key': generateApiKey({ prefix: 'hook' }).key }, invalidJson), 401, 'FST_API_KEY_INVALID')
      assertError(await post({ 'x-api-key': 'k'.repeat(2000) }, huge), 401, 'FST_API_KEY_INVALID')
      assert.equal(parsed, 0)

      // The same bodies with a valid key do reach the parser and the limit.
      assert.equal((await post({ 'x-api-key': key }, invalidJson)).statusCode, 400)
      assert.equal(parsed, 1)
      assert.equal((await post({ 'x-api-key': key }, huge)).statusCode, 413)
      const ok = await post({ 'x-api-key': key }, '{"a":1}')
      assert.equal(ok.statusCode, 200, ok.body)
      assert.deepEqual(ok.json(), { received: { a: 1 } })
    })
  })
}
