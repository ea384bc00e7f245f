import assert from 'node:assert/strict'
import { after, before, describe, test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyRedis from '@fastify/redis'
import type { Cluster } from 'ioredis'
import { fastifyAuthCache, hashApiKey, type BackendName, type FastifyAuthCacheOptions } from '../lib'
import {
  apiKeyCacheContract, call, newKey, newPrefix
} from './helpers/api-key-cache-contract'
import { KeySource, record } from './helpers/key-source'
import { startRedisCluster, type RedisCluster } from './helpers/redis-cluster'
import { until } from './helpers/wait'

let redis: RedisCluster
let inspect: Cluster

before(async () => {
  redis = await startRedisCluster()
  inspect = redis.cluster()
})

after(async () => {
  await redis?.destroy()
})

// The same contract as on a single node, with every app on its own Cluster connection.
const createClient = (): Cluster => redis.cluster()
apiKeyCacheContract('redis on a Redis Cluster', { backend: 'redis', createClient, inspect: () => inspect })
apiKeyCacheContract('tiered on a Redis Cluster', { backend: 'tiered', createClient, inspect: () => inspect })

const options = { timeout: 30_000 }

interface ClusterApp {
  app: FastifyInstance
  source: KeySource
}

/**
 * An app on its own Cluster connection (as a separate process would have), closed after the test.
 * Not the contract's `buildApp`: the plugin's defaults (redisTimeoutMs too) and any other option, such as credentials.
 */
async function clusterApp (t: TestContext, backend: BackendName, extra: Omit<FastifyAuthCacheOptions, 'backend' | 'redis'> = {},
  client: Cluster = redis.cluster()): Promise<ClusterApp> {
  const source = new KeySource()
  const app = Fastify({ logger: false })
  t.after(async () => {
    await app.close()
    client.disconnect()
  })
  await app.register(fastifyAuthCache, {
    ...extra,
    backend,
    strict: true,
    redis: client,
    apiKeys: { ...extra.apiKeys, lookup: source.lookup }
  })
  app.get('/', async (request) => request.apiKey)
  await app.ready()
  return { app, source }
}

/** Which master owns each slot, from CLUSTER SLOTS. */
async function slotOwners (): Promise<(slot: number) => number> {
  const ranges = await inspect.cluster('SLOTS')
  return (slot) => {
    const range = ranges.find(([from, to]) => slot >= from && slot <= to)
    assert.ok(range?.[2] !== undefined, `slot ${slot} is served`)
    return range[2][1]
  }
}

async function keySlot (key: string): Promise<number> {
  return Number(await inspect.cluster('KEYSLOT', key))
}

/** The tiered bus of `listener` hears `sender`'s announcements: seen from outside, its counter moves. */
async function untilHearing (sender: FastifyInstance, listener: FastifyInstance): Promise<void> {
  const before = listener.apiKeyCache.stats().invalidations
  await until('the other app hears invalidations', async () => {
    await sender.apiKeyCache.delete(hashApiKey(newKey()))
    await sleep(20)
    return listener.apiKeyCache.stats().invalidations > before
  })
}

describe('Redis Cluster specifics', () => {
  test('the Cluster can also come through @fastify/redis, as its client option', options, async (t) => {
    const client = redis.cluster()
    const source = new KeySource()
    const app = Fastify({ logger: false })
    t.after(async () => {
      await app.close()
      client.disconnect()
    })
    await app.register(fastifyRedis, { client: client as never })
    await app.register(fastifyAuthCache, { backend: 'tiered', strict: true, apiKeys: { lookup: source.lookup } })
    app.get('/', async (request) => request.apiKey)
    await app.ready()
    assert.equal(app.apiKeyCache.backend, 'tiered')
    // CONTRACT section 10: the plugin's tiered backend makes the credential store tiered too.
    assert.equal(app.credentialStore.backend, 'tiered')

    const key = newKey()
    source.answer(hashApiKey(key), record('via-fastify-redis'))
    assert.equal((await call(app, key)).status, 200)
    assert.deepEqual(JSON.parse((await inspect.get(`apikey:${hashApiKey(key)}`))!), record('via-fastify-redis'))
    await app.credentialStore.save({ token: 'a' })
    assert.equal(await inspect.get('credentials:default'), '{"token":"a"}')
    await app.credentialStore.clear()
    await app.apiKeyCache.delete(hashApiKey(key))
  })

  for (const clientPrefix of ['', 'tenant:']) {
    test(`keys spread over every master are read, filled and deleted without CROSSSLOT (client keyPrefix '${clientPrefix}')`, options, async (t) => {
      await checkSpread(t, clientPrefix)
    })
  }

  async function checkSpread (t: TestContext, clientPrefix: string): Promise<void> {
    const keyPrefix = newPrefix('spread')
    // ioredis prepends a client keyPrefix to every key of a script, the hash-tagged ones included.
    const client = redis.cluster(clientPrefix === '' ? {} : { keyPrefix: clientPrefix })
    const { app, source } = await clusterApp(t, 'redis', { apiKeys: { keyPrefix } }, client)
    const owner = await slotOwners()
    const keys = Array.from({ length: 30 }, newKey)
    const masters = new Set<number>()
    for (const key of keys) {
      source.answer(hashApiKey(key), record(key.slice(0, 10)))
      masters.add(owner(await keySlot(clientPrefix + keyPrefix + hashApiKey(key))))
    }
    assert.equal(masters.size, 3, 'the keys land on all three masters')

    for (const key of keys) assert.equal((await call(app, key)).status, 200)
    for (const key of keys) assert.equal((await call(app, key)).status, 200)
    for (const key of keys) assert.equal(source.calls(hashApiKey(key)), 1)
    for (const key of keys) {
      source.answer(hashApiKey(key), record(key.slice(0, 10), { active: false }))
      await app.apiKeyCache.delete(hashApiKey(key))
    }
    for (const key of keys) assert.equal((await call(app, key)).code, 'FST_API_KEY_INVALID')
    for (const key of keys) assert.equal(source.calls(hashApiKey(key)), 2)
    // A script naming keys of two slots would fail on a Cluster and be counted here.
    const stats = app.apiKeyCache.stats()
    assert.equal(stats.backendErrors, 0)
    assert.equal(stats.hits, 30)
    assert.equal(stats.lookups, 60)
    for (const key of keys) assert.equal(await inspect.exists(clientPrefix + keyPrefix + hashApiKey(key)), 1, 'the refusal was cached again')
  }

  for (const where of ['redisOptions', 'cluster'] as const) {
    test(`clear removes the prefix from every master and nothing else (client keyPrefix in ${where} options)`, options, async (t) => {
      const clientPrefix = `tenant-${where}:`
      // A user's shared connection may carry its own keyPrefix, set on the Cluster or on its nodes.
      const client = where === 'cluster'
        ? redis.cluster({ keyPrefix: clientPrefix })
        : redis.cluster({ redisOptions: { keyPrefix: clientPrefix } })
      // Glob characters in the prefix must match only themselves on every node.
      const keyPrefix = `${newPrefix('clear')}a*[b]?:`
      const { app } = await clusterApp(t, 'redis', { apiKeys: { keyPrefix } }, client)
      const fullPrefix = clientPrefix + keyPrefix
      for (let i = 0; i < 200; i++) await app.apiKeyCache.set(hashApiKey(`seed-${i}`), record(`seed-${i}`), 60)
      // Keys the clear must not touch: another prefix the unescaped glob would match, another
      // tenant's copy of our prefix, and the bare prefix without the client's.
      const foreign = [
        ...Array.from({ length: 30 }, (_, i) => `${clientPrefix}${keyPrefix.replace('a*[b]?:', 'aXbY:')}${i}`),
        ...Array.from({ length: 30 }, (_, i) => `other-tenant:${keyPrefix}${i}`),
        ...Array.from({ length: 30 }, (_, i) => `${keyPrefix}${i}`)
      ]
      for (const key of foreign) await inspect.set(key, 'keep', 'EX', 60)
      t.after(async () => { for (const key of foreign) await inspect.del(key) })

      const before = await Promise.all(redis.ports.map((port) => redis.keysOn(port)))
      const ours = before.map((keys) => keys.filter((key) => key.startsWith(fullPrefix)))
      for (const [i, keys] of ours.entries()) assert.ok(keys.length > 0, `master ${redis.ports[i]} holds some of the 200 entries`)
      assert.equal(ours.reduce((sum, keys) => sum + keys.length, 0), 200)
      assert.equal((await app.apiKeyCache.get(hashApiKey('seed-0')))?.id, 'seed-0')

      await app.apiKeyCache.clear()

      const afterClear = (await Promise.all(redis.ports.map((port) => redis.keysOn(port)))).flat()
      assert.deepEqual(afterClear.filter((key) => key.startsWith(fullPrefix)), [])
      assert.deepEqual(afterClear.filter((key) => foreign.includes(key)).sort(), [...foreign].sort())
      assert.equal(await app.apiKeyCache.get(hashApiKey('seed-0')), undefined)
      assert.equal(app.apiKeyCache.stats().backendErrors, 0)
    })
  }

  test('a delete or clear in one tiered app reaches another app on the Cluster within a bound', options, async (t) => {
    const keyPrefix = newPrefix('tiered-bus')
    const revoking = await clusterApp(t, 'tiered', { apiKeys: { keyPrefix } })
    const serving = await clusterApp(t, 'tiered', { apiKeys: { keyPrefix } })
    await untilHearing(revoking.app, serving.app)
    const boundMs = 1000 // generous for a loaded machine; the 10 ms p99 is the benchmark's to measure
    const elapsed: number[] = []

    for (let round = 0; round < 10; round++) {
      const viaClear = round === 9
      const key = newKey()
      const keyHash = hashApiKey(key)
      serving.source.answer(keyHash, record(`round-${round}`))
      assert.equal((await call(serving.app, key)).status, 200)
      assert.equal((await call(serving.app, key)).status, 200)
      assert.equal(serving.source.calls(keyHash), 1)
      const heard = serving.app.apiKeyCache.stats().invalidations

      serving.source.answer(keyHash, record(`round-${round}`, { active: false }))
      if (viaClear) await revoking.app.apiKeyCache.clear()
      else await revoking.app.apiKeyCache.delete(keyHash)
      const revokedAt = performance.now()
      // Nothing but the invalidation can make the serving app forget a record cached for 60 s.
      await until('the serving app asks lookup again', async () => (await call(serving.app, key)).status === 401, boundMs)
      elapsed.push(performance.now() - revokedAt)
      assert.equal(serving.source.calls(keyHash), 2)
      assert.ok(serving.app.apiKeyCache.stats().invalidations > heard)
    }
    t.diagnostic(`revocation seen by the other app after (ms): ${elapsed.map((ms) => ms.toFixed(1)).join(', ')}`)
    assert.equal(serving.app.apiKeyCache.stats().backendErrors, 0)
    assert.equal(revoking.app.apiKeyCache.stats().backendErrors, 0)
  })

  for (const clientPrefix of ['', 'tenant:']) {
    test(`credential update is exclusive across two apps on the Cluster, on keys of every master (client keyPrefix '${clientPrefix}')`,
      options, async (t) => { await checkExclusiveUpdate(t, clientPrefix) })
  }

  async function checkExclusiveUpdate (t: TestContext, clientPrefix: string): Promise<void> {
    const keyPrefix = newPrefix('cred')
    const client = (): Cluster => redis.cluster(clientPrefix === '' ? {} : { keyPrefix: clientPrefix })
    const one = await clusterApp(t, 'redis', { credentials: { keyPrefix } }, client())
    const two = await clusterApp(t, 'redis', { credentials: { keyPrefix } }, client())
    const owner = await slotOwners()

    // One credential key per master, so that every node runs the lock and save scripts.
    const scopes = new Map<number, string>()
    for (let i = 0; scopes.size < 3; i++) {
      const master = owner(await keySlot(`${clientPrefix}${keyPrefix}counter-${i}`))
      if (!scopes.has(master)) scopes.set(master, `counter-${i}`)
    }

    const increments = 20
    const overlaps: string[] = []
    const results = await Promise.allSettled([...scopes.values()].flatMap((scope) => {
      let running = 0
      return Array.from({ length: increments }, (_, i) => {
        const store = (i % 2 === 0 ? one : two).app.credentialStore.scope(scope)
        return store.update(async (current) => {
          if (++running > 1) overlaps.push(scope)
          // A pause inside fn widens the window in which an overlap would show.
          await sleep(2 + Math.random() * 5)
          running--
          return ((current as number | undefined) ?? 0) + 1
        }, { waitMs: 20_000 })
      })
    }))

    const failures = results.filter((result) => result.status === 'rejected')
    assert.deepEqual(failures.map((failure) => String((failure as PromiseRejectedResult).reason)), [])
    assert.deepEqual(overlaps, [])
    for (const scope of scopes.values()) {
      assert.equal(await one.app.credentialStore.scope(scope).load(), increments)
      assert.equal(await two.app.credentialStore.scope(scope).load(), increments)
      assert.equal(await inspect.get(`${clientPrefix}${keyPrefix}${scope}`), String(increments))
      // With no wait allowed, this succeeds only if every holder released the key.
      assert.equal(await one.app.credentialStore.scope(scope).update((current) => current, { waitMs: 0 }), increments)
    }
  }
})
