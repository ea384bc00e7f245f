import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { describe, test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Cluster, Redis } from 'ioredis'
import {
  fastifyAuthCache, hashApiKey,
  type ApiKeyCacheStats, type ApiKeysOptions, type BackendName
} from '../../lib'
import { KeySource, record } from './key-source'
import { deferred, until, type Deferred } from './wait'

/**
 * A client of any library the plugin supports (ioredis, iovalkey, node-redis; single node or
 * Cluster), as the apps get it. The suite only hands it to the plugin and closes it; every
 * supported library has `quit` and `disconnect`.
 */
export interface ContractRedis {
  quit (): Promise<unknown>
  disconnect (): unknown
}

/** The client the suite looks at Redis with: ioredis, whatever library the apps use. */
export type InspectRedis = Redis | Cluster

/**
 * What the contract suite needs from the caller. The functions are called only inside tests,
 * so a caller may start its Redis (single node or Cluster) in a `before` hook.
 */
export interface ApiKeyCacheContractFixture {
  backend: BackendName
  /**
   * A fresh client for one app, ready to use (node-redis clients connected); the suite closes it
   * after the app. Never called for 'memory'.
   */
  createClient?: () => ContractRedis | Promise<ContractRedis>
  /**
   * A client without an ioredis keyPrefix, for raw looks at exact keys (GET, EXISTS, PTTL,
   * SET): never KEYS or SCAN, so that it works on a Cluster too. Never called for 'memory'.
   */
  inspect?: () => InspectRedis
}

const TEST_TIMEOUT_MS = 30_000

export const newKey = (): string => `k_${randomBytes(16).toString('hex')}`
export const newPrefix = (name = 'cc'): string => `${name}:${randomBytes(4).toString('hex')}:`

export interface Reply { status: number, code: string | undefined, body: any }

/** One GET through the hook; `key` undefined sends no key at all. */
export async function call (app: FastifyInstance, key: string | undefined): Promise<Reply> {
  const response = await app.inject({ method: 'GET', url: '/', headers: key === undefined ? {} : { 'x-api-key': key } })
  const body = response.body === '' ? undefined : response.json()
  return { status: response.statusCode, code: body?.code, body }
}

export interface AppSettings {
  source?: KeySource
  apiKeys?: Omit<ApiKeysOptions, 'lookup'>
  /** The client the app uses; by default a fresh one from the fixture. */
  client?: ContractRedis
}

/**
 * A ready app whose route answers the authenticated record. It is closed after the test, then
 * its client is quit: the plugin never closes a client it did not create.
 */
export async function buildApp (t: TestContext, fixture: ApiKeyCacheContractFixture, settings: AppSettings = {}): Promise<FastifyInstance> {
  const source = settings.source ?? new KeySource()
  const ownClient = fixture.backend === 'memory' || settings.client !== undefined ? undefined : await fixture.createClient!()
  const client = settings.client ?? ownClient
  const app = Fastify({ logger: false })
  t.after(async () => {
    await app.close()
    if (ownClient !== undefined) await ownClient.quit().catch(() => ownClient.disconnect())
  })
  await app.register(fastifyAuthCache, {
    backend: fixture.backend,
    strict: true,
    // Timeouts are another suite's subject; here a stall of a loaded machine must not count as one.
    redisTimeoutMs: 2000,
    ...(client === undefined ? {} : { redis: client }),
    apiKeys: { ...settings.apiKeys, lookup: source.lookup }
  })
  app.get('/', async (request) => request.apiKey)
  await app.ready()
  if (fixture.backend === 'tiered') await untilLocalTierServes(app, fixture, settings.apiKeys?.keyPrefix ?? 'apikey:')
  return app
}

/**
 * Tiered apps use process memory only once their invalidation bus hears its own heartbeat.
 * Seen from outside: a record written through the cache keeps being served after its Redis copy
 * was changed behind the plugin's back. The probe is removed from Redis directly, not through
 * `delete`, whose announcement other apps of the test would receive and count.
 */
async function untilLocalTierServes (app: FastifyInstance, fixture: ApiKeyCacheContractFixture, keyPrefix: string): Promise<void> {
  const probe = hashApiKey(newKey())
  const inspect = fixture.inspect!()
  await until('the tiered process memory is in use', async () => {
    await app.apiKeyCache.set(probe, record('probe-local'), 60)
    await inspect.set(keyPrefix + probe, JSON.stringify(record('probe-redis')), 'PX', 60_000)
    return (await app.apiKeyCache.get(probe))?.id === 'probe-local'
  })
  await inspect.del(keyPrefix + probe)
}

/** A request whose lookup has started and is held. */
interface HeldLookup {
  key: string
  keyHash: string
  /** Settles the held lookup. */
  answer: Deferred<unknown>
  inFlight: Promise<Reply>
}

/** What `withLookupInFlight` leaves for the test: the app, its source, and the request whose lookup is held. */
interface LookupInFlight extends HeldLookup {
  keyPrefix: string
  source: KeySource
  app: FastifyInstance
}

/** The contract of `fastify.apiKeyCache` and of the hook's caching, for one backend. */
export function apiKeyCacheContract (label: string, fixture: ApiKeyCacheContractFixture): void {
  const usesRedis = fixture.backend !== 'memory'
  const options = { timeout: TEST_TIMEOUT_MS }

  /** Whether Redis holds the exact key; only asked on backends that use Redis. */
  async function inRedis (keyPrefix: string, keyHash: string): Promise<boolean> {
    return (await fixture.inspect!().exists(keyPrefix + keyHash)) === 1
  }

  describe(`fastify.apiKeyCache contract: ${label}`, () => {
    test('backend names the backend in use; hash is the lower-case hex SHA-256 of the UTF-8 key', options, async (t) => {
      const app = await buildApp(t, fixture)
      assert.equal(app.apiKeyCache.backend, fixture.backend)
      for (const key of ['abc', 'clé-ключ-鍵', newKey()]) {
        const expected = createHash('sha256').update(Buffer.from(key, 'utf8')).digest('hex')
        assert.equal(app.apiKeyCache.hash(key), expected)
        assert.equal(hashApiKey(key), expected)
      }
      assert.match(app.apiKeyCache.hash('abc'), /^[0-9a-f]{64}$/)
    })

    test('set stores a record that get returns and the hook serves without lookup', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source })
      const key = newKey()
      const keyHash = hashApiKey(key)
      const stored = record('set-1', { scopes: ['read', 'write'], owner: { team: 'a', tier: 2 }, note: null })

      assert.equal(await app.apiKeyCache.get(keyHash), undefined)
      await app.apiKeyCache.set(keyHash, stored, 60)
      assert.deepEqual(await app.apiKeyCache.get(keyHash), stored)

      const reply = await call(app, key)
      assert.equal(reply.status, 200)
      assert.deepEqual(reply.body, stored)
      assert.equal(source.calls(keyHash), 0)

      const replaced = record('set-2', { active: false })
      await app.apiKeyCache.set(keyHash, replaced, 60)
      assert.deepEqual(await app.apiKeyCache.get(keyHash), replaced)
      assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
      assert.equal(source.calls(keyHash), 0)
    })

    test('set with ttlSeconds <= 0 is a no-op: it neither stores nor removes', options, async (t) => {
      const keyPrefix = newPrefix()
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix } })
      const fresh = hashApiKey(newKey())
      for (const ttl of [0, -1, -Infinity]) {
        await app.apiKeyCache.set(fresh, record('never'), ttl)
        assert.equal(await app.apiKeyCache.get(fresh), undefined, `ttl ${ttl}`)
        if (usesRedis) assert.equal(await inRedis(keyPrefix, fresh), false, `ttl ${ttl}`)
      }

      const key = newKey()
      const keyHash = hashApiKey(key)
      await app.apiKeyCache.set(keyHash, record('kept'), 60)
      await app.apiKeyCache.set(keyHash, record('ignored'), 0)
      await app.apiKeyCache.set(keyHash, record('ignored'), -5)
      assert.equal((await app.apiKeyCache.get(keyHash))?.id, 'kept')
      const reply = await call(app, key)
      assert.equal(reply.body.id, 'kept')
      assert.equal(source.calls(keyHash), 0)
    })

    test('a set entry expires after its TTL', options, async (t) => {
      const app = await buildApp(t, fixture)
      const keyHash = hashApiKey(newKey())
      const ttlSeconds = 1.5
      const startedAt = Date.now()
      await app.apiKeyCache.set(keyHash, record('short'), ttlSeconds)
      assert.equal((await app.apiKeyCache.get(keyHash))?.id, 'short')
      await until('the entry expired', async () => (await app.apiKeyCache.get(keyHash)) === undefined)
      // Both clocks count from a moment after startedAt, so expiry cannot be seen earlier.
      assert.ok(Date.now() - startedAt >= ttlSeconds * 1000 - 20, `expired after ${Date.now() - startedAt} ms`)
    })

    test('the hook caches a record for ttlSeconds, then asks lookup again', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { ttlSeconds: 1 } })
      const key = newKey()
      const keyHash = hashApiKey(key)
      source.answer(keyHash, record('cached'))
      const startedAt = Date.now()
      assert.equal((await call(app, key)).status, 200)
      source.answer(keyHash, record('cached', { active: false }))
      // The cache still holds the answer lookup gave before it changed.
      assert.equal((await call(app, key)).status, 200)
      assert.equal(source.calls(keyHash), 1)

      await until('the cached record expired', async () => (await call(app, key)).status === 401)
      assert.equal(source.calls(keyHash), 2)
      assert.ok(Date.now() - startedAt >= 1000 - 20)
    })

    test('ttlSeconds <= 0 caches no record', options, async (t) => {
      for (const ttlSeconds of [0, -1]) {
        const keyPrefix = newPrefix()
        const source = new KeySource()
        const app = await buildApp(t, fixture, { source, apiKeys: { ttlSeconds, keyPrefix } })
        const key = newKey()
        const keyHash = hashApiKey(key)
        source.answer(keyHash, record('uncached'))
        for (let i = 1; i <= 3; i++) {
          assert.equal((await call(app, key)).status, 200)
          assert.equal(source.calls(keyHash), i, `ttlSeconds ${ttlSeconds}`)
        }
        assert.equal(await app.apiKeyCache.get(keyHash), undefined)
        if (usesRedis) assert.equal(await inRedis(keyPrefix, keyHash), false)
      }
    })

    test('get returns undefined for a key cached as unknown', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source })
      const key = newKey()
      const keyHash = hashApiKey(key)
      assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
      assert.equal(await app.apiKeyCache.get(keyHash), undefined)
      // It is cached all the same: the next request is answered without lookup.
      assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
      assert.equal(source.calls(keyHash), 1)
      assert.equal(app.apiKeyCache.stats().negativeHits, 1)
    })

    test('unknown keys are cached for negativeTtlSeconds', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { negativeTtlSeconds: 1 } })
      const key = newKey()
      const keyHash = hashApiKey(key)
      const startedAt = Date.now()
      assert.equal((await call(app, key)).status, 401)
      source.answer(keyHash, record('created-later'))
      assert.equal((await call(app, key)).status, 401)
      assert.equal(source.calls(keyHash), 1)

      const reply = await until('the unknown key expired from the cache', async () => {
        const r = await call(app, key)
        return r.status === 200 && r
      })
      assert.equal(reply.body.id, 'created-later')
      assert.equal(source.calls(keyHash), 2)
      assert.ok(Date.now() - startedAt >= 1000 - 20)
    })

    test('negativeTtlSeconds <= 0 caches no unknown key', options, async (t) => {
      for (const negativeTtlSeconds of [0, -1]) {
        const keyPrefix = newPrefix()
        const source = new KeySource()
        const app = await buildApp(t, fixture, { source, apiKeys: { negativeTtlSeconds, keyPrefix } })
        const key = newKey()
        const keyHash = hashApiKey(key)
        for (let i = 1; i <= 3; i++) {
          assert.equal((await call(app, key)).status, 401)
          assert.equal(source.calls(keyHash), i, `negativeTtlSeconds ${negativeTtlSeconds}`)
        }
        if (usesRedis) assert.equal(await inRedis(keyPrefix, keyHash), false)
        source.answer(keyHash, record('created'))
        assert.equal((await call(app, key)).status, 200)
      }
    })

    test('a record is cached no longer than the time left to its expiresAt', options, async (t) => {
      const keyPrefix = newPrefix()
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { ttlSeconds: 60, keyPrefix } })
      const key = newKey()
      const keyHash = hashApiKey(key)
      const leftMs = 1000
      source.answer(keyHash, record('expiring', { expiresAt: Date.now() + leftMs }))
      assert.equal((await call(app, key)).status, 200)
      if (usesRedis) {
        const pttl = await fixture.inspect!().pttl(keyPrefix + keyHash)
        assert.ok(pttl > 0 && pttl <= leftMs, `PTTL ${pttl}`)
      }
      // Renewed at the source: once the old record left the cache, lookup is asked and serves it.
      source.answer(keyHash, () => record('renewed', { expiresAt: Date.now() + 60_000 }))
      const reply = await until('lookup was asked again', async () => {
        const r = await call(app, key)
        return source.calls(keyHash) === 2 && r
      })
      assert.equal(reply.status, 200)
      assert.equal(reply.body.id, 'renewed')
    })

    test('concurrent misses for one key in one process make exactly one lookup call', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source })
      const known = newKey()
      const unknown = newKey()
      const knownAnswer = deferred<unknown>()
      const unknownAnswer = deferred<unknown>()
      source.answer(hashApiKey(known), () => knownAnswer.promise)
      source.answer(hashApiKey(unknown), () => unknownAnswer.promise)

      const replies = Promise.all([
        ...Array.from({ length: 20 }, () => call(app, known)),
        ...Array.from({ length: 20 }, () => call(app, unknown))
      ])
      await until('both lookups started', () => source.calls(hashApiKey(known)) === 1 && source.calls(hashApiKey(unknown)) === 1)
      // Give the other requests time to reach the hook while both lookups are held.
      await sleep(100)
      knownAnswer.resolve(record('single'))
      unknownAnswer.resolve(null)
      const all = await replies
      assert.deepEqual(all.slice(0, 20).map((r) => r.status), Array(20).fill(200))
      assert.deepEqual(all.slice(20).map((r) => r.status), Array(20).fill(401))
      assert.equal(source.calls(hashApiKey(known)), 1)
      assert.equal(source.calls(hashApiKey(unknown)), 1)
      assert.equal(app.apiKeyCache.stats().lookups, 2)
    })

    /** A request to `app` for a fresh key whose lookup has started and is held until `answer` settles. */
    async function holdLookup (app: FastifyInstance, source: KeySource): Promise<HeldLookup> {
      const key = newKey()
      const keyHash = hashApiKey(key)
      const answer = deferred<unknown>()
      source.answer(keyHash, () => answer.promise)
      const inFlight = call(app, key)
      await until('lookup started', () => source.calls(keyHash) === 1)
      return { key, keyHash, answer, inFlight }
    }

    /** An app with its own prefix, and one request to it whose lookup is held (see holdLookup). */
    async function withLookupInFlight (t: TestContext): Promise<LookupInFlight> {
      const keyPrefix = newPrefix()
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix } })
      return { keyPrefix, source, app, ...await holdLookup(app, source) }
    }

    const revocations: Array<[string, (app: FastifyInstance, keyHash: string) => Promise<void>]> = [
      ['delete', (app, keyHash) => app.apiKeyCache.delete(keyHash)],
      // The contract asks this of delete; clear gives the same guarantee inside one process.
      ['clear', (app) => app.apiKeyCache.clear()]
    ]
    for (const [name, revoke] of revocations) {
      test(`a ${name} issued while lookup is in flight is not undone by that lookup`, options, async (t) => {
        // A record revoked while its lookup was running.
        const { keyPrefix, source, app, key, keyHash, answer: stale, inFlight } = await withLookupInFlight(t)
        await revoke(app, keyHash)
        source.answer(keyHash, record('revoked', { active: false }))
        stale.resolve(record('revoked'))
        assert.equal((await inFlight).status, 200)
        assert.equal(await app.apiKeyCache.get(keyHash), undefined)
        if (usesRedis) assert.equal(await inRedis(keyPrefix, keyHash), false)
        assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
        assert.equal(source.calls(keyHash), 2)

        // A key created while the lookup that did not know it was running.
        const { key: created, keyHash: createdHash, answer: notYet, inFlight: unknownInFlight } = await holdLookup(app, source)
        await revoke(app, createdHash)
        source.answer(createdHash, record('created'))
        notYet.resolve(null)
        assert.equal((await unknownInFlight).status, 401)
        const reply = await call(app, created)
        assert.equal(reply.status, 200)
        assert.equal(reply.body.id, 'created')
        assert.equal(source.calls(createdHash), 2)
      })
    }

    test('a delete of one key does not stop a lookup in flight for another key from being cached', options, async (t) => {
      const { source, app, key, keyHash, answer: slow, inFlight } = await withLookupInFlight(t)
      await app.apiKeyCache.delete(hashApiKey(newKey()))
      slow.resolve(record('kept'))
      assert.equal((await inFlight).status, 200)
      assert.equal((await app.apiKeyCache.get(keyHash))?.id, 'kept')
      assert.equal((await call(app, key)).status, 200)
      assert.equal(source.calls(keyHash), 1)
    })

    test('delete makes the next request call lookup again', options, async (t) => {
      const keyPrefix = newPrefix()
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix } })
      const key = newKey()
      const keyHash = hashApiKey(key)
      source.answer(keyHash, record('to-revoke'))
      assert.equal((await call(app, key)).status, 200)
      assert.equal((await call(app, key)).status, 200)
      assert.equal(source.calls(keyHash), 1)

      source.answer(keyHash, record('to-revoke', { active: false }))
      await app.apiKeyCache.delete(keyHash)
      assert.equal(await app.apiKeyCache.get(keyHash), undefined)
      if (usesRedis) assert.equal(await inRedis(keyPrefix, keyHash), false)
      assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
      assert.equal(source.calls(keyHash), 2)

      // An unknown key cached as such is dropped the same way.
      const late = newKey()
      assert.equal((await call(app, late)).status, 401)
      source.answer(hashApiKey(late), record('late'))
      await app.apiKeyCache.delete(hashApiKey(late))
      assert.equal((await call(app, late)).status, 200)

      // Deleting what is not cached is harmless.
      await app.apiKeyCache.delete(hashApiKey(newKey()))
    })

    test('clear drops every entry of this prefix and nothing else', options, async (t) => {
      await checkClear(t, newPrefix('mine'), newPrefix('theirs'))
    })

    test('clear treats glob characters in the prefix literally', options, async (t) => {
      const tag = randomBytes(4).toString('hex')
      // Unescaped, the pattern `<tag>a*b?[c]:*` would match the other app's keys too.
      await checkClear(t, `${tag}a*b?[c]:`, `${tag}aXXbYc:`)
    })

    async function checkClear (t: TestContext, mine: string, theirs: string): Promise<void> {
      // One client shared by both apps, as with one @fastify/redis connection and two plugins.
      const client = usesRedis ? await fixture.createClient!() : undefined
      const mySource = new KeySource()
      const theirSource = new KeySource()
      let app: FastifyInstance
      let other: FastifyInstance
      try {
        app = await buildApp(t, fixture, { source: mySource, apiKeys: { keyPrefix: mine }, client })
        other = await buildApp(t, fixture, { source: theirSource, apiKeys: { keyPrefix: theirs }, client })
      } finally {
        // Registered after the apps' own hooks, which run first: the apps close, then the client.
        t.after(() => client?.quit().catch(() => client.disconnect()))
      }

      const myKeys = [newKey(), newKey(), newKey()]
      const theirKeys = [newKey(), newKey()]
      for (const key of myKeys) mySource.answer(hashApiKey(key), record(`mine-${key}`))
      for (const key of theirKeys) theirSource.answer(hashApiKey(key), record(`theirs-${key}`))
      const myUnknown = newKey()
      const mySet = hashApiKey(newKey())
      for (const key of [...myKeys, myUnknown]) await call(app, key)
      for (const key of theirKeys) await call(other, key)
      await app.apiKeyCache.set(mySet, record('set'), 60)
      await other.apiKeyCache.set(mySet, record('their-set'), 60)
      if (usesRedis) {
        for (const key of myKeys) assert.equal(await inRedis(mine, hashApiKey(key)), true)
        for (const key of theirKeys) assert.equal(await inRedis(theirs, hashApiKey(key)), true)
      }

      await app.apiKeyCache.clear()

      for (const key of myKeys) {
        assert.equal(await app.apiKeyCache.get(hashApiKey(key)), undefined)
        if (usesRedis) assert.equal(await inRedis(mine, hashApiKey(key)), false)
      }
      assert.equal(await app.apiKeyCache.get(mySet), undefined)
      if (usesRedis) assert.equal(await inRedis(mine, mySet), false)
      for (const key of theirKeys) {
        assert.equal((await other.apiKeyCache.get(hashApiKey(key)))?.id, `theirs-${key}`)
        if (usesRedis) assert.equal(await inRedis(theirs, hashApiKey(key)), true)
      }
      assert.equal((await other.apiKeyCache.get(mySet))?.id, 'their-set')

      mySource.answer(hashApiKey(myUnknown), record('now-known'))
      for (const key of [...myKeys, myUnknown]) {
        assert.equal((await call(app, key)).status, 200)
        assert.equal(mySource.calls(hashApiKey(key)), 2)
      }
      for (const key of theirKeys) {
        assert.equal((await call(other, key)).status, 200)
        assert.equal(theirSource.calls(hashApiKey(key)), 1)
      }
    }

    test('stats count hits, misses, negative hits, lookups, errors and rejections', options, async (t) => {
      const keyPrefix = newPrefix()
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix } })
      const [good, unknown, inactive, failing, junk, expired] = Array.from({ length: 6 }, newKey)
      source.answer(hashApiKey(good), record('good'))
      source.answer(hashApiKey(inactive), record('inactive', { active: false }))
      source.answer(hashApiKey(failing), new Error('database down'))
      source.answer(hashApiKey(junk), { id: 1, active: true })
      source.answer(hashApiKey(expired), record('expired', { expiresAt: Date.now() - 1000 }))

      const steps: Array<[string | undefined, number, string | undefined]> = [
        [undefined, 401, 'FST_API_KEY_MISSING'],
        ['x'.repeat(1025), 401, 'FST_API_KEY_INVALID'],
        [good, 200, undefined],
        [good, 200, undefined],
        [good, 200, undefined],
        [unknown, 401, 'FST_API_KEY_INVALID'],
        [unknown, 401, 'FST_API_KEY_INVALID'],
        [inactive, 401, 'FST_API_KEY_INVALID'],
        [inactive, 401, 'FST_API_KEY_INVALID'],
        [failing, 503, 'FST_API_KEY_LOOKUP_FAILED'],
        [failing, 503, 'FST_API_KEY_LOOKUP_FAILED'],
        [junk, 503, 'FST_API_KEY_LOOKUP_FAILED'],
        [expired, 401, 'FST_API_KEY_INVALID']
      ]
      for (const [key, status, code] of steps) {
        const reply = await call(app, key)
        assert.equal(reply.status, status, `key ${key?.slice(0, 12)}`)
        assert.equal(reply.code, code)
      }

      const stats = app.apiKeyCache.stats()
      const expected: Partial<ApiKeyCacheStats> = {
        hits: 3, // good twice, inactive once: a cached record is a hit whatever it says
        negativeHits: 1,
        misses: 7, // good, unknown, inactive, failing twice (failures are not cached), junk, expired
        lookups: 7,
        lookupErrors: 3,
        backendErrors: 0,
        invalidations: 0,
        rejections: { missing: 1, malformed: 1, unknown: 2, inactive: 2, expired: 1, forbidden: 0, quota: 0 },
        usageDropped: 0
      }
      for (const [name, value] of Object.entries(expected)) {
        assert.deepEqual(stats[name as keyof ApiKeyCacheStats], value, name)
      }
      assert.equal(source.calls(hashApiKey(failing)), 2)
      if (usesRedis) {
        assert.equal(await inRedis(keyPrefix, hashApiKey(failing)), false)
        assert.equal(await inRedis(keyPrefix, hashApiKey(junk)), false)
      }
      // stats() is a snapshot, not a live view.
      stats.hits = 1000
      stats.rejections.missing = 1000
      assert.equal(app.apiKeyCache.stats().hits, 3)
      assert.equal(app.apiKeyCache.stats().rejections.missing, 1)
    })

    test('invalidations count what other processes sent, never this process\'s own', options, async (t) => {
      const keyPrefix = newPrefix()
      const a = await buildApp(t, fixture, { apiKeys: { keyPrefix } })
      const b = await buildApp(t, fixture, { apiKeys: { keyPrefix } })
      await a.apiKeyCache.delete(hashApiKey(newKey()))
      await a.apiKeyCache.clear()
      // The redis backend hears the channel too (to make revocations again on a dataset that lost them).
      if (fixture.backend !== 'memory') {
        await until('b heard both of a\'s invalidations', () => b.apiKeyCache.stats().invalidations === 2)
        // Messages reach a subscriber in order: once a hears b's, it has also seen its own.
        await b.apiKeyCache.delete(hashApiKey(newKey()))
        await until('a heard b\'s delete', () => a.apiKeyCache.stats().invalidations >= 1)
        assert.equal(a.apiKeyCache.stats().invalidations, 1)
        assert.equal(b.apiKeyCache.stats().invalidations, 2)
      } else {
        // Without Redis there is no other process to hear.
        assert.equal(a.apiKeyCache.stats().invalidations, 0)
        assert.equal(b.apiKeyCache.stats().invalidations, 0)
      }
    })

    /** Serves `key` until it is answered from the cache (no new lookup call). */
    async function untilCached (app: FastifyInstance, source: KeySource, key: string): Promise<void> {
      await until('the key is cached', async () => {
        const before = source.calls(hashApiKey(key))
        assert.equal((await call(app, key)).status, 200)
        return source.calls(hashApiKey(key)) === before
      })
    }

    // CONTRACT section 13. Owner ids that JSON escapes, that hold colons, and that another owner's id starts with.
    for (const ownerId of ['owner-a', 'tenant:42:"quoted"\\é']) {
      test(`deleteOwner drops that owner's entries and nothing else (owner ${JSON.stringify(ownerId)})`, options, async (t) => {
        const keyPrefix = newPrefix()
        const source = new KeySource()
        const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix } })
        const owned = [newKey(), newKey(), newKey()]
        const others = [newKey(), newKey()]
        const unowned = newKey()
        const unknown = newKey()
        for (const key of owned) source.answer(hashApiKey(key), record(`owned-${key}`, { ownerId }))
        // An owner id that starts with the deleted one, and the same owner id nested elsewhere.
        source.answer(hashApiKey(others[0]!), record('other-1', { ownerId: `${ownerId}x` }))
        source.answer(hashApiKey(others[1]!), record('other-2', { ownerId: 'someone-else', meta: { ownerId } }))
        source.answer(hashApiKey(unowned), record('unowned'))
        const setHash = hashApiKey(newKey())
        await app.apiKeyCache.set(setHash, record('set-owned', { ownerId }), 60)
        for (const key of [...owned, ...others, unowned]) await untilCached(app, source, key)
        assert.equal((await call(app, unknown)).status, 401)
        const callsBefore = new Map([...owned, ...others, unowned, unknown].map((key) => [key, source.calls(hashApiKey(key))]))

        for (const key of owned) source.answer(hashApiKey(key), record(`owned-${key}`, { ownerId, active: false }))
        await app.apiKeyCache.deleteOwner(ownerId)

        assert.equal(await app.apiKeyCache.get(setHash), undefined)
        for (const key of owned) {
          if (usesRedis) assert.equal(await inRedis(keyPrefix, hashApiKey(key)), false)
          assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
          assert.equal(source.calls(hashApiKey(key)), callsBefore.get(key)! + 1, 'the owner\'s key was looked up afresh')
        }
        for (const key of [...others, unowned]) {
          if (usesRedis) assert.equal(await inRedis(keyPrefix, hashApiKey(key)), true)
          assert.equal((await call(app, key)).status, 200)
          assert.equal(source.calls(hashApiKey(key)), callsBefore.get(key), 'another owner\'s key is still a hit')
        }
        assert.equal((await call(app, unknown)).status, 401)
        assert.equal(source.calls(hashApiKey(unknown)), callsBefore.get(unknown), 'an unknown key is still cached')
      })
    }

    test('deleteOwner issued while a lookup is in flight is not undone by that lookup', options, async (t) => {
      const { keyPrefix, source, app, key, keyHash, answer: stale, inFlight } = await withLookupInFlight(t)
      // The lookup's owner is unknown until it answers: deleteOwner must stop it whatever its key.
      await app.apiKeyCache.deleteOwner('owner-in-flight')
      source.answer(keyHash, record('revoked', { ownerId: 'owner-in-flight', active: false }))
      stale.resolve(record('revoked', { ownerId: 'owner-in-flight' }))
      assert.equal((await inFlight).status, 200)
      assert.equal(await app.apiKeyCache.get(keyHash), undefined)
      if (usesRedis) assert.equal(await inRedis(keyPrefix, keyHash), false)
      assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
      assert.equal(source.calls(keyHash), 2)
    })

    test('deleteOwner removes the stale copies kept for staleIfErrorSeconds', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix: newPrefix(), staleIfErrorSeconds: 60 } })
      const key = newKey()
      const keyHash = hashApiKey(key)
      const kept = newKey()
      source.answer(keyHash, record('owned', { ownerId: 'stale-owner' }))
      source.answer(hashApiKey(kept), record('kept', { ownerId: 'other-owner' }))
      await untilCached(app, source, key)
      await app.apiKeyCache.deleteOwner('stale-owner')
      source.answer(keyHash, new Error('database down'))
      // With the stale copy gone, a failed lookup has nothing to fall back on.
      assert.equal((await call(app, key)).code, 'FST_API_KEY_LOOKUP_FAILED')
      assert.equal(app.apiKeyCache.stats().staleServed, 0)
    })

    test('deleteOwner refuses an owner id that is not a non-empty string', options, async (t) => {
      const app = await buildApp(t, fixture)
      for (const bad of ['', 42, undefined, null, { id: 'x' }]) {
        await assert.rejects(app.apiKeyCache.deleteOwner(bad as string), { code: 'FST_AUTH_CACHE_INVALID_OPTION' }, String(bad))
      }
    })

    if (usesRedis) {
      /** Two apps on one prefix of the shared backend: one serves `source`'s keys, the other revokes. */
      async function servingAndRevoking (t: TestContext): Promise<{ source: KeySource, serving: FastifyInstance, revoking: FastifyInstance }> {
        const keyPrefix = newPrefix()
        const source = new KeySource()
        const serving = await buildApp(t, fixture, { source, apiKeys: { keyPrefix } })
        const revoking = await buildApp(t, fixture, { apiKeys: { keyPrefix } })
        return { source, serving, revoking }
      }

      test('deleteOwner in one app is seen by another app sharing the backend; other owners stay cached there', options, async (t) => {
        const { source, serving, revoking } = await servingAndRevoking(t)
        const owned = [newKey(), newKey()]
        const other = newKey()
        for (const key of owned) source.answer(hashApiKey(key), record(`owned-${key}`, { ownerId: 'shared-owner' }))
        source.answer(hashApiKey(other), record('other', { ownerId: 'shared-other' }))
        for (const key of [...owned, other]) await untilCached(serving, source, key)
        const otherCalls = source.calls(hashApiKey(other))

        for (const key of owned) source.answer(hashApiKey(key), record(`owned-${key}`, { ownerId: 'shared-owner', active: false }))
        await revoking.apiKeyCache.deleteOwner('shared-owner')
        for (const key of owned) {
          await until('the other app refuses the owner\'s key', async () => (await call(serving, key)).status === 401)
        }
        assert.equal((await call(serving, other)).status, 200)
        assert.equal(source.calls(hashApiKey(other)), otherCalls)
        if (fixture.backend === 'tiered') {
          await until('the serving app counted one invalidation', () => serving.apiKeyCache.stats().invalidations === 1)
        }
      })

      test('delete and clear in one app are seen by another app sharing the backend', options, async (t) => {
        const { source, serving, revoking } = await servingAndRevoking(t)
        const deleted = newKey()
        const cleared = newKey()
        source.answer(hashApiKey(deleted), record('deleted'))
        source.answer(hashApiKey(cleared), record('cleared'))
        // Until served from the cache, so that the revocation below has something to undo.
        for (const key of [deleted, cleared]) await untilCached(serving, source, key)
        const deletedCalls = source.calls(hashApiKey(deleted))
        const clearedCalls = source.calls(hashApiKey(cleared))

        source.answer(hashApiKey(deleted), record('deleted', { active: false }))
        await revoking.apiKeyCache.delete(hashApiKey(deleted))
        await until('the other app refuses the deleted key', async () => (await call(serving, deleted)).status === 401)
        assert.equal(source.calls(hashApiKey(deleted)), deletedCalls + 1)

        source.answer(hashApiKey(cleared), record('cleared', { active: false }))
        await revoking.apiKeyCache.clear()
        await until('the other app refuses the cleared key', async () => (await call(serving, cleared)).status === 401)
        assert.equal(source.calls(hashApiKey(cleared)), clearedCalls + 1)
      })
    }
  })
}
