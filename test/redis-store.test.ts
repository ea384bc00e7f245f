import assert from 'node:assert/strict'
import { describe, test, type TestContext } from 'node:test'
import type { FastifyInstance } from 'fastify'
import Redis from 'ioredis'
import { hashApiKey } from '../lib'
import {
  buildApp, call, newKey, newPrefix, type ApiKeyCacheContractFixture, type AppSettings
} from './helpers/api-key-cache-contract'
import { KeySource, record } from './helpers/key-source'
import { usePrivateRedis } from './helpers/redis-server'
import { deferred, until } from './helpers/wait'

const redis = usePrivateRedis()

const options = { timeout: 30_000 }

/** Every key on the (single node) redis.server under `prefix`; the glob characters of our prefixes are none. */
async function keysUnder (prefix: string): Promise<string[]> {
  const found: string[] = []
  let cursor = '0'
  do {
    const [next, keys] = await redis.admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    cursor = next
    found.push(...keys)
  } while (cursor !== '0')
  return found.sort()
}

/** Two apps on one shared client, closed before the client is quit. */
async function appsOnClient (t: TestContext, fixture: ApiKeyCacheContractFixture, client: Redis,
  ...settings: AppSettings[]): Promise<FastifyInstance[]> {
  const apps: FastifyInstance[] = []
  try {
    for (const one of settings) apps.push(await buildApp(t, fixture, { ...one, client }))
  } finally {
    // Runs after the apps' own close hooks, which were registered first.
    t.after(() => client.quit().catch(() => client.disconnect()))
  }
  return apps
}

type Junk = [name: string, write: (key: string) => Promise<unknown>]

const TWO_MB = 'x'.repeat(2 * 1024 * 1024)
const JUNK: Junk[] = [
  ['not JSON', (key) => redis.admin.set(key, 'not json {', 'PX', 60_000)],
  ['a record with a number id', (key) => redis.admin.set(key, '{"id":1}', 'PX', 60_000)],
  ['a record with a string "active"', (key) => redis.admin.set(key, '{"id":"x","active":"true"}', 'PX', 60_000)],
  ['a record without id', (key) => redis.admin.set(key, '{"active":true}', 'PX', 60_000)],
  ['active only through __proto__', (key) => redis.admin.set(key, '{"id":"x","__proto__":{"active":true}}', 'PX', 60_000)],
  ['JSON null', (key) => redis.admin.set(key, 'null', 'PX', 60_000)],
  ['a JSON array', (key) => redis.admin.set(key, '[{"id":"x","active":true}]', 'PX', 60_000)],
  ['a 2 MB string', (key) => redis.admin.set(key, TWO_MB, 'PX', 60_000)],
  ['a Redis hash', (key) => redis.admin.hset(key, 'id', 'x', 'active', 'true')]
]

for (const backend of ['redis', 'tiered'] as const) {
  const fixture: ApiKeyCacheContractFixture = {
    backend,
    createClient: () => redis.server.client({ maxRetriesPerRequest: 3 }),
    inspect: () => redis.admin
  }

  describe(`Redis layout and robustness: ${backend}`, () => {
    test('a record is stored under exactly keyPrefix + hash as compact JSON, with a TTL no longer than given', options, async (t) => {
      const keyPrefix = newPrefix('layout')
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix, ttlSeconds: 30 } })
      const key = newKey()
      const keyHash = hashApiKey(key)
      const stored = record('layout-1', { scopes: ['read', 'write'], owner: { team: 'a', n: 2 }, flag: false })
      source.answer(keyHash, stored)
      assert.equal((await call(app, key)).status, 200)

      assert.deepEqual((await keysUnder(keyPrefix)).filter((k) => k.includes(keyHash)), [keyPrefix + keyHash])
      assert.equal(await redis.admin.type(keyPrefix + keyHash), 'string')
      const raw = (await redis.admin.get(keyPrefix + keyHash))!
      assert.deepEqual(JSON.parse(raw), stored)
      assert.doesNotMatch(raw, /\s/)
      assert.equal(raw, JSON.stringify(JSON.parse(raw)))
      const pttl = await redis.admin.pttl(keyPrefix + keyHash)
      assert.ok(pttl > 0 && pttl <= 30_000, `PTTL ${pttl}`)

      for (const ttlSeconds of [7, 0.25]) {
        const setHash = hashApiKey(newKey())
        const setRecord = record(`set-${ttlSeconds}`, { n: ttlSeconds })
        await app.apiKeyCache.set(setHash, setRecord, ttlSeconds)
        const setRaw = (await redis.admin.get(keyPrefix + setHash))!
        assert.equal(setRaw, JSON.stringify(setRecord))
        const setPttl = await redis.admin.pttl(keyPrefix + setHash)
        assert.ok(setPttl > 0 && setPttl <= ttlSeconds * 1000, `PTTL ${setPttl} for ttlSeconds ${ttlSeconds}`)
      }
    })

    test('the TTL in Redis is the shortest of ttlSeconds, expiresAt and negativeTtlSeconds as they apply', options, async (t) => {
      const keyPrefix = newPrefix('ttl')
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix, ttlSeconds: 2, negativeTtlSeconds: 3 } })
      const longLived = newKey()
      const expiring = newKey()
      const unknown = newKey()
      source.answer(hashApiKey(longLived), record('long', { expiresAt: Date.now() + 3_600_000 }))
      source.answer(hashApiKey(expiring), record('soon', { expiresAt: Date.now() + 1500 }))
      for (const key of [longLived, expiring, unknown]) await call(app, key)

      const pttl = async (key: string): Promise<number> => await redis.admin.pttl(keyPrefix + hashApiKey(key))
      const [ttlCapped, expiryCapped, negative] = [await pttl(longLived), await pttl(expiring), await pttl(unknown)]
      assert.ok(ttlCapped > 0 && ttlCapped <= 2000, `PTTL ${ttlCapped}`)
      assert.ok(expiryCapped > 0 && expiryCapped <= 1500, `PTTL ${expiryCapped}`)
      assert.ok(negative > 0 && negative <= 3000, `PTTL ${negative}`)
    })

    test('junk under our key is a miss: answered through lookup, never accepted on its own, replaced by the next fill', options, async (t) => {
      const keyPrefix = newPrefix('junk')
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix } })
      for (const [name, write] of JUNK) {
        const valid = newKey()
        const validHash = hashApiKey(valid)
        const answer = record(`valid-${valid}`)
        source.answer(validHash, answer)
        await write(keyPrefix + validHash)
        const reply = await call(app, valid)
        assert.equal(reply.status, 200, name)
        assert.equal(reply.body.id, answer.id, name)
        assert.equal(source.calls(validHash), 1, name)
        assert.equal(await redis.admin.type(keyPrefix + validHash), 'string', name)
        assert.ok(await redis.admin.get(keyPrefix + validHash) === JSON.stringify(answer), `${name}: replaced by the next fill`)
        // Now a real cache entry: no further lookup.
        assert.equal((await call(app, valid)).status, 200, name)
        assert.equal(source.calls(validHash), 1, name)

        const unknown = newKey()
        const unknownHash = hashApiKey(unknown)
        await write(keyPrefix + unknownHash)
        const refused = await call(app, unknown)
        assert.equal(refused.status, 401, name)
        assert.equal(refused.code, 'FST_API_KEY_INVALID', name)
        assert.equal(source.calls(unknownHash), 1, name)
        assert.equal(await redis.admin.type(keyPrefix + unknownHash), 'string', name)
        assert.ok((await redis.admin.strlen(keyPrefix + unknownHash)) < 1000, `${name}: replaced by the next fill`)
        assert.equal((await call(app, unknown)).status, 401, name)
        assert.equal(source.calls(unknownHash), 1, name)
      }
      const stats = app.apiKeyCache.stats()
      // Junk is not a failing Redis: it must not send the plugin into its Redis backoff.
      assert.equal(stats.backendErrors, 0)
      assert.equal(stats.misses, JUNK.length * 2)
    })

    test('clear() is right with a shared client that has an ioredis keyPrefix', options, async (t) => {
      const clientPrefix = newPrefix('tenant')
      const keyPrefix = newPrefix('ak')
      const source = new KeySource()
      const [app] = await appsOnClient(t, fixture, redis.server.client({ keyPrefix: clientPrefix, maxRetriesPerRequest: 3 }),
        { source, apiKeys: { keyPrefix } })

      const keys = [newKey(), newKey(), newKey()]
      for (const key of keys) {
        source.answer(hashApiKey(key), record(`tenant-${key}`))
        assert.equal((await call(app, key)).status, 200)
      }
      const setHash = hashApiKey(newKey())
      await app.apiKeyCache.set(setHash, record('set'), 60)
      const ours = [...keys.map(hashApiKey), setHash].map((keyHash) => clientPrefix + keyPrefix + keyHash)
      for (const key of ours) assert.equal(await redis.admin.exists(key), 1, `written under the client prefix: ${key}`)

      const foreign = [
        `${clientPrefix}other:1`, // the same client, another prefix
        keyPrefix + hashApiKey(keys[0]), // our prefix without the client's: someone else's key
        clientPrefix + keyPrefix.slice(0, -1), // our prefix without its last character
        `x${clientPrefix}${keyPrefix}${hashApiKey(keys[1])}`
      ]
      for (const key of foreign) await redis.admin.set(key, 'foreign')

      await app.apiKeyCache.clear()

      for (const key of ours) assert.equal(await redis.admin.exists(key), 0, `removed: ${key}`)
      for (const key of foreign) assert.equal(await redis.admin.get(key), 'foreign', `kept: ${key}`)
      for (const key of keys) {
        assert.equal((await call(app, key)).status, 200)
        assert.equal(source.calls(hashApiKey(key)), 2)
      }
      for (const key of foreign) await redis.admin.del(key)
    })

    test('cross-process: a lookup in flight in one app does not undo a delete made by another', options, async (t) => {
      const keyPrefix = newPrefix('race')
      const revokerSource = new KeySource()
      const fillerSource = new KeySource()
      const revoker = await buildApp(t, fixture, { source: revokerSource, apiKeys: { keyPrefix } })
      const filler = await buildApp(t, fixture, { source: fillerSource, apiKeys: { keyPrefix } })

      // One key, revoked again each round: later rounds start from an existing generation.
      const key = newKey()
      const keyHash = hashApiKey(key)
      revokerSource.answer(keyHash, record('race', { active: false }))
      for (let round = 1; round <= 3; round++) {
        const stale = deferred<unknown>()
        fillerSource.answer(keyHash, () => stale.promise)
        const fillerCalls = fillerSource.calls(keyHash)
        const revokerCalls = revokerSource.calls(keyHash)

        const inFlight = call(filler, key)
        await until('the filler\'s lookup started', () => fillerSource.calls(keyHash) === fillerCalls + 1)
        await revoker.apiKeyCache.delete(keyHash)
        stale.resolve(record('race'))
        assert.equal((await inFlight).status, 200, `round ${round}`)

        assert.equal(await redis.admin.exists(keyPrefix + keyHash), 0, `round ${round}: Redis holds no stale answer`)
        assert.equal((await call(revoker, key)).status, 401, `round ${round}`)
        assert.equal(revokerSource.calls(keyHash), revokerCalls + 1, `round ${round}: the revoker asked lookup`)
        // The filler kept no stale copy of its own either (tiered: none in process memory).
        fillerSource.answer(keyHash, record('race', { active: false }))
        assert.equal((await call(filler, key)).status, 401, `round ${round}`)
        // Forget the refusals everywhere, so that the next round starts with a miss.
        await revoker.apiKeyCache.delete(keyHash)
        // Tiered: the filler drops its process-memory copy when the announcement arrives.
        await until('the filler forgot the key', async () => (await filler.apiKeyCache.get(keyHash)) === undefined)
      }
    })
  })
}
