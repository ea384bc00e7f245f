import assert from 'node:assert/strict'
import { once } from 'node:events'
import { join } from 'node:path'
import { describe, test, type TestContext } from 'node:test'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { generateApiKey, hashApiKey, isWellFormedApiKey } from '../lib'
import { buildExampleApp, KEY_PREFIX, type ExampleApp } from '../examples/app'
import { PostgresKeyTable, rowToRecord, type KeyRow } from '../examples/postgres'
import { Script } from './helpers/child-process'
import { usePrivateDatabase } from './helpers/postgres'
import { usePrivateRedis } from './helpers/redis-server'
import { until, within } from './helpers/wait'

// A busy 2-core machine starts tsx slowly; nothing here waits when things go well.
const START_MS = 60_000
/** The contract's bound for a revocation to reach another process around faults; healthy, it is 10 ms. */
const REVOKED_EVERYWHERE_MS = 2000

function whoami (app: FastifyInstance, key: string): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'GET', url: '/whoami', headers: { 'x-api-key': key } })
}

describe('examples/postgres.ts: the example app on a real PostgreSQL', () => {
  const db = usePrivateDatabase()
  const redis = usePrivateRedis()

  async function appOnDatabase (t: TestContext, backend: 'memory' | 'tiered' = 'memory'): Promise<ExampleApp<PostgresKeyTable>> {
    const keys = await PostgresKeyTable.open(db.url, KEY_PREFIX)
    const built = await buildExampleApp({ keys, ...backend === 'tiered' ? { redisUrl: redis.server.url, backend } : {} })
    built.app.addHook('onClose', () => keys.close())
    t.after(() => built.app.close())
    await built.app.ready()
    return built
  }

  /** A key written straight into the table, as another service would. */
  async function insertKey (fields: { scopes?: string[], expiresAt?: string }): Promise<{ key: string, id: string }> {
    const { key, hash } = generateApiKey({ prefix: KEY_PREFIX })
    const id = `key_direct_${hash.slice(0, 8)}`
    await db.pool.query('INSERT INTO api_keys (hash, id, owner_id, scopes, expires_at) VALUES ($1, $2, $3, $4, $5)',
      [hash, id, 'direct', fields.scopes ?? ['keys:read'], fields.expiresAt ?? null])
    return { key, id }
  }

  test('create a key (only its hash stored), use it, revoke it by id: 401 in every process after', async (t) => {
    await redis.admin.flushall()
    const a = await appOnDatabase(t, 'tiered')
    const b = await appOnDatabase(t, 'tiered')
    assert.equal(b.app.apiKeyCache.backend, 'tiered')

    const created = await a.app.inject({ method: 'POST', url: '/keys', headers: { 'x-api-key': a.demoKey.key }, payload: { name: 'my-client' } })
    assert.equal(created.statusCode, 201)
    const { id, key } = created.json()
    assert.ok(isWellFormedApiKey(key, KEY_PREFIX))

    const { rows } = await db.pool.query('SELECT * FROM api_keys WHERE id = $1', [id])
    assert.equal(rows.length, 1)
    assert.equal(rows[0].hash, hashApiKey(key))
    assert.deepEqual(rows[0].scopes, ['keys:read'])
    assert.equal(rows[0].active, true)
    assert.equal(rows[0].expires_at, null)
    const everything = await db.pool.query('SELECT * FROM api_keys')
    assert.ok(!JSON.stringify(everything.rows).includes(key), 'the table holds the hash, never the plaintext')

    for (const app of [a.app, b.app, a.app, b.app]) {
      const me = await whoami(app, key)
      assert.equal(me.statusCode, 200)
      assert.deepEqual(me.json(), { id, name: 'my-client' })
    }
    assert.ok(b.app.apiKeyCache.stats().hits >= 1, 'served from the cache, not the database, the second time')

    // Revoked through B: the row first, then the cache of every process.
    const revoked = await b.app.inject({ method: 'DELETE', url: `/keys/${id}`, headers: { 'x-api-key': b.demoKey.key } })
    assert.equal(revoked.statusCode, 204)
    assert.equal((await db.pool.query('SELECT active FROM api_keys WHERE id = $1', [id])).rows[0].active, false)
    assert.equal((await whoami(b.app, key)).statusCode, 401)
    await until('A refuses the revoked key', async () => (await whoami(a.app, key)).statusCode === 401, REVOKED_EVERYWHERE_MS)
    for (const app of [a.app, b.app]) {
      const refused = await whoami(app, key)
      assert.equal(refused.statusCode, 401)
      assert.equal(refused.json().code, 'FST_API_KEY_INVALID')
      assert.equal((await whoami(app, a.demoKey.key)).statusCode, 200, 'other keys still work')
    }
    const unknown = await a.app.inject({ method: 'DELETE', url: '/keys/key_nope', headers: { 'x-api-key': a.demoKey.key } })
    assert.equal(unknown.statusCode, 404)
  })

  test('expires_at as timestamptz: a future one is accepted, a past one refused, and a key is refused once it expires', async (t) => {
    const { app } = await appOnDatabase(t)
    const later = await insertKey({ expiresAt: new Date(Date.now() + 3_600_000).toISOString() })
    assert.equal((await whoami(app, later.key)).statusCode, 200)
    const cached = await app.apiKeyCache.get(hashApiKey(later.key))
    assert.equal(typeof cached?.expiresAt, 'number', 'the Date became epoch ms')

    const past = await insertKey({ expiresAt: '2020-01-01T00:00:00Z' })
    const refused = await whoami(app, past.key)
    assert.equal(refused.statusCode, 401)
    assert.equal(refused.json().code, 'FST_API_KEY_INVALID')

    // Cached for a minute (ttlSeconds 60), yet refused when its expires_at passes.
    const expiresAt = Date.now() + 1500
    const soon = await insertKey({ expiresAt: new Date(expiresAt).toISOString() })
    const first = await whoami(app, soon.key)
    if (Date.now() < expiresAt) assert.equal(first.statusCode, 200)
    await until('the key refused after its expires_at', async () => (await whoami(app, soon.key)).statusCode === 401, 10_000)
    assert.ok(Date.now() >= expiresAt, 'not refused before it expired')
    assert.ok(app.apiKeyCache.stats().rejections.expired >= 2)
  })

  test('an expires_at that is not a timestamptz is a 503, never a key that does not expire', async (t) => {
    const record = rowToRecord({ hash: 'h', id: 'k', owner_id: 'o', scopes: [], active: true, expires_at: null })
    assert.equal('expiresAt' in record, false, 'NULL: no expiry')
    assert.throws(() => rowToRecord({ hash: 'h', id: 'k', owner_id: 'o', scopes: [], active: true, expires_at: '2030-01-01' as unknown as KeyRow['expires_at'] }), TypeError)

    // A schema that drifted: the column became text, so pg hands over a string.
    const { app } = await appOnDatabase(t)
    await db.pool.query('ALTER TABLE api_keys ALTER COLUMN expires_at TYPE text')
    t.after(() => db.pool.query('ALTER TABLE api_keys ALTER COLUMN expires_at TYPE timestamptz USING expires_at::timestamptz'))
    const drifted = await insertKey({ expiresAt: '2999-01-01T00:00:00Z' })
    const answer = await whoami(app, drifted.key)
    assert.equal(answer.statusCode, 503)
    assert.equal(answer.json().code, 'FST_API_KEY_LOOKUP_FAILED')
  })

  test('DATABASE_URL=… examples/server.ts keeps its keys in the table', async (t) => {
    const env: NodeJS.ProcessEnv = { ...process.env, HOST: '127.0.0.1', PORT: '0', DATABASE_URL: db.url }
    delete env.REDIS_URL
    const server = Script.run(t, join('examples', 'server.ts'), env)
    const [, key, base, keyId] = await server.printed('the server printed its curl lines', /x-api-key: (\S+)' (http:\/\/\S+)\/keys\/(\S+)\n/, START_MS)
    assert.match(server.output(), /keys in PostgreSQL at postgres:\/\/postgres@127\.0\.0\.1:5432\/fac_test_\w+ \(DATABASE_URL\)/)
    const seeded = await db.pool.query('SELECT active FROM api_keys WHERE id = $1 AND hash = $2', [keyId, hashApiKey(key)])
    assert.equal(seeded.rows.length, 1, 'the demo key is a row of the table')

    assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': key } })).status, 200)
    assert.equal((await fetch(`${base}/keys/${keyId}`, { method: 'DELETE', headers: { 'x-api-key': key } })).status, 204)
    assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': key } })).status, 401)
    assert.equal((await db.pool.query('SELECT active FROM api_keys WHERE id = $1', [keyId])).rows[0].active, false)
    await server.terminate()
  })

  test('examples/quick-start.ts, the README\'s Quick start, runs as written', async (t) => {
    // Its own table, as on a fresh database: the quick start creates it.
    await db.pool.query('DROP TABLE IF EXISTS api_keys')
    const env: NodeJS.ProcessEnv = { ...process.env, PORT: '0', DATABASE_URL: db.url }
    const script = Script.run(t, join('examples', 'quick-start.ts'), env)
    const [, admin] = await script.printed('the quick start printed its admin key', /admin key \(shown once\): (\S+)\n/, START_MS)
    const [, base] = /"msg":"Server listening at (http:\/\/127\.0\.0\.1:\d+)"/.exec(script.output())!
    assert.ok(base !== undefined, script.output())
    assert.ok(isWellFormedApiKey(admin, 'live'))

    assert.equal((await fetch(`${base}/health`)).status, 200)
    assert.equal((await fetch(`${base}/whoami`)).status, 401)
    const me = await fetch(`${base}/whoami`, { headers: { 'x-api-key': admin } })
    assert.equal(me.status, 200)
    assert.equal(((await me.json()) as { owner: string }).owner, 'admin')

    const created = await fetch(`${base}/keys`, { method: 'POST', headers: { 'x-api-key': admin } })
    assert.equal(created.status, 201)
    const { id, key } = await created.json() as { id: string, key: string }
    const row = await db.pool.query('SELECT hash, owner_id, scopes, active FROM api_keys WHERE id = $1', [id])
    assert.deepEqual(row.rows, [{ hash: hashApiKey(key), owner_id: 'admin', scopes: ['keys:read'], active: true }])
    assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': key } })).status, 200)
    // keys:read only: it may not create keys.
    assert.equal((await fetch(`${base}/keys`, { method: 'POST', headers: { 'x-api-key': key } })).status, 403)

    assert.equal((await fetch(`${base}/keys/${id}`, { method: 'DELETE', headers: { 'x-api-key': admin } })).status, 204)
    assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': key } })).status, 401)
    assert.equal((await fetch(`${base}/keys/${id}`, { method: 'DELETE', headers: { 'x-api-key': admin } })).status, 204, 'revoking twice is harmless')
    assert.equal((await fetch(`${base}/keys/key_nope`, { method: 'DELETE', headers: { 'x-api-key': admin } })).status, 404)
    assert.ok(!script.output().includes(key), 'a created key is never printed or logged')

    const exited = once(script.process, 'exit')
    script.process.kill('SIGTERM')
    const [code] = await within('the quick start exiting on SIGTERM', exited, 10_000)
    assert.equal(code, 0, script.output())
  })
})
