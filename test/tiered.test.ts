import assert from 'node:assert/strict'
import { describe, test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyAuthCache, { generateApiKey } from '../lib'
import { commandCalls, requestPathCommandCalls } from './helpers/command-stats'
import { KeySource, record } from './helpers/key-source'
import { usePrivateRedis } from './helpers/redis-server'
import { deferred, until } from './helpers/wait'

const PREFIX = 'apikey:'
// CONTRACT section 4: bound for a process whose connection to Redis was lost around a revocation.
const DISRUPTED_BOUND_MS = 2000

function newKey (): { key: string, hash: string } {
  return generateApiKey({ prefix: 'tiered' })
}

describe('tiered backend in one process', () => {
  const redis = usePrivateRedis()

  /**
   * An app on the shared private Redis whose `lookup` asks `source`. Not the contract's
   * `buildApp`: the client comes through @fastify/redis and every option keeps its default
   * (redisTimeoutMs 100 ms), as the bounds asserted here assume.
   */
  async function buildApp (t: TestContext, source: KeySource): Promise<FastifyInstance> {
    const app = Fastify()
    t.after(() => app.close())
    await app.register(fastifyRedis, { url: redis.server.url })
    await app.register(fastifyAuthCache, { backend: 'tiered', apiKeys: { lookup: source.lookup } })
    app.get('/', async (request) => ({ id: request.apiKey.id }))
    await app.ready()
    assert.equal(app.apiKeyCache.backend, 'tiered')
    return app
  }

  async function status (app: FastifyInstance, key: string): Promise<number> {
    const response = await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': key } })
    return response.statusCode
  }

  /** Whether one request for `key` was a hit that sent no request-path command to Redis. */
  async function servedFromMemory (app: FastifyInstance, key: string): Promise<boolean> {
    const hits = app.apiKeyCache.stats().hits
    const before = await requestPathCommandCalls(redis.admin)
    assert.equal(await status(app, key), 200)
    const after = await requestPathCommandCalls(redis.admin)
    return after === before && app.apiKeyCache.stats().hits === hits + 1
  }

  async function warmInL1 (app: FastifyInstance, key: string, deadlineMs = 10_000): Promise<void> {
    await until('the key is served from process memory', async () => {
      assert.equal(await status(app, key), 200)
      return await servedFromMemory(app, key)
    }, deadlineMs)
  }

  test('an L1 hit sends nothing to Redis, and heartbeats are PUBLISH only', async (t) => {
    const source = new KeySource()
    const app = await buildApp(t, source)
    const warm = newKey()
    source.answer(warm.hash, record('warm'))
    await warmInL1(app, warm.key)

    // The probe sees this app's traffic: a miss is a read and a fill.
    const fresh = newKey()
    source.answer(fresh.hash, record('fresh'))
    const beforeMiss = await requestPathCommandCalls(redis.admin)
    assert.equal(await status(app, fresh.key), 200)
    assert.ok(await requestPathCommandCalls(redis.admin) >= beforeMiss + 2, 'a miss reads and fills Redis')

    const before = await commandCalls(redis.admin)
    const requestPathBefore = await requestPathCommandCalls(redis.admin)
    const statsBefore = app.apiKeyCache.stats()
    for (let i = 0; i < 100; i++) assert.equal(await status(app, warm.key), 200)
    // Stay idle across several heartbeats (300 ms apart) so that they show in the count.
    await until('heartbeats are published', async () =>
      ((await commandCalls(redis.admin)).get('publish') ?? 0) >= (before.get('publish') ?? 0) + 3, 5000)
    const statsAfter = app.apiKeyCache.stats()

    assert.equal(await requestPathCommandCalls(redis.admin), requestPathBefore, '100 hits and the heartbeats sent no GET/EVALSHA/SET')
    assert.equal(statsAfter.hits - statsBefore.hits, 100)
    assert.equal(statsAfter.lookups, statsBefore.lookups)
    assert.equal(statsAfter.misses, statsBefore.misses)
  })

  test('while the invalidation bus is untrusted L1 is bypassed and flushed; it is trusted again after reconnecting', async (t) => {
    const source = new KeySource()
    const app = await buildApp(t, source)
    const stale = newKey()
    const steady = newKey()
    source.answer(stale.hash, record('stale'))
    source.answer(steady.hash, record('steady'))
    await warmInL1(app, stale.key)
    await warmInL1(app, steady.key)

    // A revocation whose message never arrives: the entry leaves Redis and the source of truth
    // silently. With the bus healthy, L1 keeps serving it (nothing said otherwise) ...
    source.answer(stale.hash, record('stale', { active: false }))
    assert.equal(await redis.admin.del(PREFIX + stale.hash), 1)
    assert.ok(await servedFromMemory(app, stale.key), 'the silently revoked key is still in L1')

    // ... until the bus loses its subscriber. A full server keeps it from reconnecting for now.
    t.after(() => redis.admin.config('SET', 'maxclients', '10000'))
    // The test's client, the app's client and its subscriber; connections of earlier tests must
    // be gone, or their slots would let the subscriber back in.
    const clients = async (): Promise<number> => ((await redis.admin.call('CLIENT', 'LIST')) as string).trim().split('\n').length
    await until('only this app is connected', async () => (await clients()) === 3, 5000)
    await redis.admin.config('SET', 'maxclients', '2')
    assert.equal(await redis.admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub'), 1)

    await until('L1 is bypassed', async () => !(await servedFromMemory(app, steady.key)), DISRUPTED_BOUND_MS)
    // Across several heartbeat intervals, every request goes to Redis.
    const bypassedUntil = Date.now() + 1000
    let bypassed = 0
    while (Date.now() < bypassedUntil) {
      const before = await requestPathCommandCalls(redis.admin)
      assert.equal(await status(app, steady.key), 200)
      assert.ok(await requestPathCommandCalls(redis.admin) > before, `request ${bypassed} while untrusted went to Redis`)
      bypassed++
      await sleep(50)
    }
    assert.ok(bypassed >= 5)

    await redis.admin.config('SET', 'maxclients', '10000')
    await warmInL1(app, steady.key)
    // The stale entry did not survive the untrusted period, although it was never requested then.
    assert.equal(await status(app, stale.key), 401)
  })

  test(`a silent bus (heartbeat echo lost) is distrusted within ${DISRUPTED_BOUND_MS} ms`, async (t) => {
    const source = new KeySource()
    const app = await buildApp(t, source)
    const stale = newKey()
    source.answer(stale.hash, record('stale'))
    await warmInL1(app, stale.key)
    source.answer(stale.hash, record('stale', { active: false }))
    assert.equal(await redis.admin.del(PREFIX + stale.hash), 1)

    // Paused writes hold PUBLISH and scripts: the subscriber stays connected but hears nothing.
    t.after(() => redis.admin.call('CLIENT', 'UNPAUSE'))
    const pausedAt = Date.now()
    await redis.admin.call('CLIENT', 'PAUSE', '10000', 'WRITE')
    await until('the silently revoked key is refused', async () =>
      (await status(app, stale.key)) === 401, DISRUPTED_BOUND_MS)
    t.diagnostic(`refused ${Date.now() - pausedAt} ms after the bus went silent`)
    await redis.admin.call('CLIENT', 'UNPAUSE')

    const next = newKey()
    source.answer(next.hash, record('next'))
    await warmInL1(app, next.key, 15_000)
  })

  describe('a revocation during a lookup is not undone by that lookup', () => {
    const revokers = {
      'delete in another app': (_self: FastifyInstance, other: FastifyInstance, hash: string) => other.apiKeyCache.delete(hash),
      'delete in the same app': (self: FastifyInstance, _other: FastifyInstance, hash: string) => self.apiKeyCache.delete(hash),
      'clear in another app': (_self: FastifyInstance, other: FastifyInstance) => other.apiKeyCache.clear(),
      'clear in the same app': (self: FastifyInstance) => self.apiKeyCache.clear()
    }

    for (const [name, revoke] of Object.entries(revokers)) {
      test(name, async (t) => {
        const source = new KeySource()
        const slow = await buildApp(t, source)
        const other = await buildApp(t, source)
        const warm = newKey()
        source.answer(warm.hash, record('warm'))
        await warmInL1(slow, warm.key)
        await warmInL1(other, warm.key)

        const { key, hash } = newKey()
        source.answer(hash, record('revoked'))
        // The first lookup for the key reads the source of truth, then waits to be released:
        // a database answer still on its way back while the key is revoked.
        const release = deferred()
        const entered = source.holdNext(hash, () => release.promise)
        const inFlight = slow.inject({ method: 'GET', url: '/', headers: { 'x-api-key': key } })
        await entered

        source.answer(hash, record('revoked', { active: false }))
        const heard = slow.apiKeyCache.stats().invalidations
        await revoke(slow, other, hash)
        if (name.includes('another')) {
          // A clear does not touch keys it cannot see, such as one being looked up: only its
          // announcement stops the stale fill, so the lookup ends once the slow app heard it.
          await until('the revocation is heard', async () => slow.apiKeyCache.stats().invalidations > heard, 5000)
        }
        release.resolve()
        // The request that started before the revocation was answered with what lookup read.
        assert.equal((await inFlight).statusCode, 200)

        assert.equal(await redis.admin.get(PREFIX + hash), null, 'the stale answer was not written to Redis')
        const lookups = slow.apiKeyCache.stats().lookups
        assert.equal(await status(slow, key), 401, 'the app whose lookup was slow refuses the key')
        assert.equal(slow.apiKeyCache.stats().lookups, lookups + 1, 'it asked the source of truth again')
        assert.equal(await status(other, key), 401, 'the other app refuses the key')
      })
    }
  })
})
