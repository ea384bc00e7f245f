import { join } from 'node:path'
import { describe, test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type Redis from 'ioredis'
import { generateApiKey, hashApiKey, isWellFormedApiKey, type BackendName } from '../lib'
import { buildExampleApp, KEY_PREFIX, type ExampleApp } from '../examples/app'
import { KeyTable } from '../examples/key-table'
import { Script } from './helpers/child-process'
import { usePrivateRedis } from './helpers/redis-server'
import { until } from './helpers/wait'

function whoami (app: FastifyInstance, key?: string): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'GET', url: '/whoami', headers: key === undefined ? {} : { 'x-api-key': key } })
}

interface Inspection {
  /** After a created key has been used: what the shared backend holds for it. */
  afterUse?: (hash: string, key: string) => Promise<void>
  /** Right after its revocation, before anything reads it again. */
  afterRevoke?: (hash: string) => Promise<void>
}

/** The walk-through the server prints, as every backend must answer it. */
async function walkThrough (built: ExampleApp, backend: BackendName, inspect: Inspection = {}): Promise<void> {
  const { app, keys, demoKey } = built
  const stats = () => app.apiKeyCache.stats()

  const health = await app.inject({ method: 'GET', url: '/health' })
  assert.equal(health.statusCode, 200)
  assert.deepEqual(health.json(), { status: 'ok' })

  const anonymous = await whoami(app)
  assert.equal(anonymous.statusCode, 401)
  assert.equal(anonymous.json().code, 'FST_API_KEY_MISSING')
  assert.equal(anonymous.headers['www-authenticate'], 'ApiKey realm="api"')

  const me = await whoami(app, demoKey.key)
  assert.equal(me.statusCode, 200)
  // Exactly these two fields: neither the key nor the rest of the record reaches the client.
  assert.deepEqual(me.json(), { id: demoKey.id, name: 'demo' })

  // apiKeys.format: junk is refused without a lookup, a well-formed stranger costs one.
  const lookupsBefore = stats().lookups
  const junk = await whoami(app, 'demo_not-a-real-key')
  assert.equal(junk.statusCode, 401)
  assert.equal(junk.json().code, 'FST_API_KEY_INVALID')
  assert.equal(stats().lookups, lookupsBefore)
  const stranger = await whoami(app, generateApiKey({ prefix: KEY_PREFIX }).key)
  assert.equal(stranger.statusCode, 401)
  assert.equal(stranger.json().code, 'FST_API_KEY_INVALID')
  assert.equal(stats().lookups, lookupsBefore + 1)

  const rowsBefore = keys.rows().length
  const refusedCreate = await app.inject({ method: 'POST', url: '/keys', payload: { name: 'intruder' } })
  assert.equal(refusedCreate.statusCode, 401)
  const badBody = await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': demoKey.key }, payload: { label: 'x' } })
  assert.equal(badBody.statusCode, 400)
  assert.equal(keys.rows().length, rowsBefore)

  const created = await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': demoKey.key }, payload: { name: 'ci' } })
  assert.equal(created.statusCode, 201)
  const { id, name, key } = created.json()
  assert.equal(name, 'ci')
  assert.equal(typeof id, 'string')
  assert.ok(isWellFormedApiKey(key, KEY_PREFIX), 'the new key is in the demo format')
  const hash = hashApiKey(key)
  const rows = keys.rows()
  assert.equal(rows.length, rowsBefore + 1)
  assert.ok(rows.some((row) => row.hash === hash && row.id === id && row.active))
  assert.ok(!JSON.stringify(rows).includes(key), 'the table holds the hash, never the plaintext')

  const hitsBefore = stats().hits
  for (let i = 0; i < 3; i++) {
    const used = await whoami(app, key)
    assert.equal(used.statusCode, 200)
    assert.deepEqual(used.json(), { id, name: 'ci' })
  }
  assert.ok(stats().hits >= hitsBefore + 2, 'repeated use is served from the cache')
  await inspect.afterUse?.(hash, key)

  const refusedRevoke = await app.inject({ method: 'DELETE', url: `/keys/${id}` })
  assert.equal(refusedRevoke.statusCode, 401)
  assert.equal((await whoami(app, key)).statusCode, 200, 'a refused revocation revokes nothing')
  const unknown = await app.inject({ method: 'DELETE', url: '/keys/key_0000', headers: { 'x-api-key': demoKey.key } })
  assert.equal(unknown.statusCode, 404)

  const inactiveBefore = stats().rejections.inactive
  const revoked = await app.inject({ method: 'DELETE', url: `/keys/${id}`, headers: { 'x-api-key': demoKey.key } })
  assert.equal(revoked.statusCode, 204)
  await inspect.afterRevoke?.(hash)
  // The cached record said active for another minute: only the cache delete makes this a 401.
  const afterRevoke = await whoami(app, key)
  assert.equal(afterRevoke.statusCode, 401)
  assert.equal(afterRevoke.json().code, 'FST_API_KEY_INVALID')
  assert.equal(stats().rejections.inactive, inactiveBefore + 1)
  assert.equal((await whoami(app, demoKey.key)).statusCode, 200, 'other keys are untouched')

  // Scopes: the read-only key reads, but may neither create nor revoke keys.
  const { readOnlyKey } = built
  const writeChallenge = 'ApiKey realm="api", error="insufficient_scope", scope="keys:write"'
  assert.equal((await whoami(app, readOnlyKey.key)).statusCode, 200)
  const forbiddenBefore = stats().rejections.forbidden
  const rowsBeforeScopes = keys.rows().length
  const readOnlyCreate = await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': readOnlyKey.key }, payload: { name: 'sneaky' } })
  assert.equal(readOnlyCreate.statusCode, 403)
  assert.equal(readOnlyCreate.json().code, 'FST_API_KEY_FORBIDDEN')
  assert.equal(readOnlyCreate.headers['www-authenticate'], writeChallenge)
  const readOnlyRevoke = await app.inject({ method: 'DELETE', url: `/keys/${demoKey.id}`, headers: { 'x-api-key': readOnlyKey.key } })
  assert.equal(readOnlyRevoke.statusCode, 403)
  assert.equal(readOnlyRevoke.headers['www-authenticate'], writeChallenge)
  assert.equal((await whoami(app, demoKey.key)).statusCode, 200, 'a forbidden revocation revokes nothing')
  assert.equal(keys.rows().length, rowsBeforeScopes)
  assert.equal(stats().rejections.forbidden, forbiddenBefore + 2)
  // A created key reads by default; one created with keys:write may create in turn.
  const reader = (await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': demoKey.key }, payload: { name: 'reader' } })).json()
  assert.equal((await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': reader.key }, payload: { name: 'x' } })).statusCode, 403)
  const writer = await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': demoKey.key }, payload: { name: 'writer', scopes: ['keys:read', 'keys:write'] } })
  assert.equal(writer.statusCode, 201)
  assert.equal((await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': writer.json().key }, payload: { name: 'by-writer' } })).statusCode, 201)
  assert.equal((await app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': demoKey.key }, payload: { name: 'admin', scopes: ['admin'] } })).statusCode, 400)

  const statsReply = await app.inject({ method: 'GET', url: '/stats', headers: { 'x-api-key': demoKey.key } })
  assert.equal(statsReply.statusCode, 200)
  const body = statsReply.json()
  assert.equal(body.backend, backend)
  assert.equal(body.lookups, stats().lookups)
  assert.ok(body.hits > 0)
  assert.equal((await app.inject({ method: 'GET', url: '/stats' })).statusCode, 401)
}

/** Every key and value under the app's prefixes, to show no plaintext key reached Redis. */
async function dump (client: Redis): Promise<string> {
  const entries: string[] = []
  for (const key of await client.keys('*')) {
    const type = await client.type(key)
    entries.push(key, type === 'string' ? String(await client.get(key)) : type)
  }
  return entries.join('\n')
}

async function evalshaCalls (client: Redis): Promise<number> {
  const info = await client.info('commandstats')
  const match = /cmdstat_evalsha:calls=(\d+)/.exec(info)
  return match === null ? 0 : Number(match[1])
}

describe('example app', () => {
  const redis = usePrivateRedis()

  test('memory backend by default', async (t) => {
    const built = await buildExampleApp()
    t.after(() => built.app.close())
    await walkThrough(built, 'memory')
  })

  test('redis backend with a Redis url: one entry per hash, removed by the revocation', async (t) => {
    await redis.admin.flushall()
    const built = await buildExampleApp({ redisUrl: redis.server.url })
    t.after(() => built.app.close())
    await walkThrough(built, 'redis', {
      async afterUse (hash, key) {
        const stored = JSON.parse(String(await redis.admin.get(`apikey:${hash}`)))
        assert.equal(stored.active, true)
        assert.equal(stored.name, 'ci')
        assert.ok(!(await dump(redis.admin)).includes(key), 'Redis holds no plaintext key')
      },
      async afterRevoke (hash) {
        assert.equal(await redis.admin.exists(`apikey:${hash}`), 0)
      }
    })
  })

  test('tiered: a key revoked through one app is refused by another sharing Redis and the table', async (t) => {
    await redis.admin.flushall()
    const keys = new KeyTable(KEY_PREFIX)
    const a = await buildExampleApp({ redisUrl: redis.server.url, backend: 'tiered', keys })
    t.after(() => a.app.close())
    const b = await buildExampleApp({ redisUrl: redis.server.url, backend: 'tiered', keys })
    t.after(() => b.app.close())
    await Promise.all([a.app.ready(), b.app.ready()])
    assert.equal(b.app.apiKeyCache.backend, 'tiered')

    const created = await a.app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': a.demoKey.key }, payload: { name: 'shared' } })
    assert.equal(created.statusCode, 201)
    const { id, key } = created.json()

    // B must answer from its own memory, without asking Redis, or the test would prove nothing
    // about invalidation: wait until a request of B runs no Redis script.
    await until('B serves the key from process memory', async () => {
      const before = await evalshaCalls(redis.admin)
      assert.equal((await whoami(b.app, key)).statusCode, 200)
      return (await evalshaCalls(redis.admin)) === before
    }, 10_000)

    const revoked = await a.app.inject({ method: 'DELETE', url: `/keys/${id}`, headers: { 'x-api-key': a.demoKey.key } })
    assert.equal(revoked.statusCode, 204)
    // The contract's bound for a healthy Redis is 10 ms at p99; a loaded test machine gets 2 s.
    await until('B refuses the revoked key', async () => (await whoami(b.app, key)).statusCode === 401, 2_000)
    assert.ok(b.app.apiKeyCache.stats().invalidations >= 1)
    assert.equal((await whoami(b.app, b.demoKey.key)).statusCode, 200)
  })

  describe('examples/server.ts as a process', () => {
    interface Server { script: Script, output: () => string, base: string, key: string, keyId: string, readOnlyKey: string }

    async function startServer (t: TestContext, env: Record<string, string>): Promise<Server> {
      const childEnv: NodeJS.ProcessEnv = { ...process.env, HOST: '127.0.0.1', PORT: '0', ...env }
      // The developer's own Redis must never be touched by the test.
      if (env.REDIS_URL === undefined) delete childEnv.REDIS_URL
      if (env.BACKEND === undefined) delete childEnv.BACKEND
      const script = Script.run(t, join('examples', 'server.ts'), childEnv)
      const [, key, base, keyId] = await script.printed('the server printed its curl lines', /x-api-key: (\S+)' (http:\/\/\S+)\/keys\/(\S+)\n/, 30_000)
      const [, readOnlyKey] = /# the read-only key.*\ncurl -i -X POST -H 'x-api-key: (\S+)'/.exec(script.output())!
      return { script, output: () => script.output(), base, key, keyId, readOnlyKey: readOnlyKey! }
    }

    test('prints ready-to-paste curl lines and answers them over HTTP (memory)', async (t) => {
      const server = await startServer(t, {})
      const { base, key, keyId } = server
      assert.ok(isWellFormedApiKey(key, KEY_PREFIX))
      const printed = server.output()
      assert.match(printed, /backend "memory"/)
      for (const line of [
        `curl -i ${base}/health`,
        `curl -i ${base}/whoami`,
        `curl -i -H 'x-api-key: ${key}' ${base}/whoami`,
        `curl -i -X POST -H 'x-api-key: ${key}' -H 'content-type: application/json' -d '{"name":"my-client"}' ${base}/keys`,
        `curl -s -H 'x-api-key: ${key}' ${base}/stats`,
        `curl -i -X POST -H 'x-api-key: ${server.readOnlyKey}' -H 'content-type: application/json' -d '{"name":"my-client"}' ${base}/keys`,
        `curl -i -X DELETE -H 'x-api-key: ${key}' ${base}/keys/${keyId}`
      ]) {
        assert.ok(printed.split('\n').includes(line), `prints: ${line}`)
      }

      assert.equal((await fetch(`${base}/health`)).status, 200)
      const anonymous = await fetch(`${base}/whoami`)
      assert.equal(anonymous.status, 401)
      assert.equal(anonymous.headers.get('www-authenticate'), 'ApiKey realm="api"')
      const me = await fetch(`${base}/whoami`, { headers: { 'x-api-key': key } })
      assert.equal(me.status, 200)
      assert.deepEqual(await me.json(), { id: keyId, name: 'demo' })

      const created = await fetch(`${base}/keys`, {
        method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'my-client' })
      })
      assert.equal(created.status, 201)
      const newKey: string = ((await created.json()) as { key: string }).key
      assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': newKey } })).status, 200)

      // The printed read-only line gets the 403 and its challenge.
      assert.ok(isWellFormedApiKey(server.readOnlyKey, KEY_PREFIX))
      const forbidden = await fetch(`${base}/keys`, {
        method: 'POST', headers: { 'x-api-key': server.readOnlyKey, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'my-client' })
      })
      assert.equal(forbidden.status, 403)
      assert.equal(forbidden.headers.get('www-authenticate'), 'ApiKey realm="api", error="insufficient_scope", scope="keys:write"')
      assert.equal(((await forbidden.json()) as { code: string }).code, 'FST_API_KEY_FORBIDDEN')

      // The printed revocation targets the demo key itself.
      const revoked = await fetch(`${base}/keys/${keyId}`, { method: 'DELETE', headers: { 'x-api-key': key } })
      assert.equal(revoked.status, 204)
      assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': key } })).status, 401)

      await server.script.terminate()
      const lines = server.output().split('\n')
      const logLines = lines.filter((line) => line.startsWith('{'))
      assert.ok(logLines.some((line) => JSON.parse(line).msg === 'API key revoked'), 'it logs at info')
      // Shutdown flushes the usage of every key that passed authentication and scopes.
      const usage = logLines.map((line) => JSON.parse(line)).filter((line) => line.msg === 'API key usage')
      assert.equal(usage.length, 1, 'one usage report, at shutdown')
      const counts = Object.fromEntries((usage[0].usage as Array<{ id: string, count: number }>).map(({ id, count }) => [id, count]))
      // The demo key: /whoami, the creation and its own revocation; the 401 after it is not a use.
      assert.equal(counts[keyId], 3)
      assert.ok(!logLines.some((line) => line.includes(key)), 'no log line holds the demo key')
      assert.ok(!server.output().includes(newKey), 'a created key is never printed or logged')
    })

    test('REDIS_URL selects the redis backend, BACKEND=tiered the tiered one', async (t) => {
      for (const [env, backend] of [
        [{ REDIS_URL: redis.server.url }, 'redis'],
        [{ REDIS_URL: redis.server.url, BACKEND: 'tiered' }, 'tiered']
      ] as const) {
        await redis.admin.flushall()
        const server = await startServer(t, env)
        assert.match(server.output(), new RegExp(`backend "${backend}"`))
        const headers = { 'x-api-key': server.key }
        assert.equal((await fetch(`${server.base}/whoami`)).status, 401)
        assert.equal((await fetch(`${server.base}/whoami`, { headers })).status, 200)
        const stats = await (await fetch(`${server.base}/stats`, { headers })).json() as { backend: string }
        assert.equal(stats.backend, backend)
        assert.equal(await redis.admin.exists(`apikey:${hashApiKey(server.key)}`), 1, 'the cache lives in the private Redis')
        await server.script.terminate()
      }
    })
  })
})
