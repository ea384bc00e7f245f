import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, test, type TestContext } from 'node:test'
import { setImmediate as yieldToEventLoop, setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import fastifyAuthCache, { type CredentialStore } from '../lib'
import { percentile } from '../bench/percentiles'
import { requestPathCommandCalls } from './helpers/command-stats'
import { Child } from './helpers/child-process'
import { startRedis, type RedisServer } from './helpers/redis-server'
import { until, within } from './helpers/wait'

/**
 * CONTRACT section 10: the tiered credential store keeps decoded values in process memory and
 * every change anywhere reaches every process through the invalidation channel, with the bounds
 * of section 4 (p99 10 ms while Redis is healthy, 2000 ms around dropped connections).
 */

const WORKER = join(__dirname, 'fixtures', 'credential-worker.ts')
const HEALTHY_P99_MS = 10
const DISRUPTED_BOUND_MS = 2000

describe('tiered credential store', () => {
  let redis: RedisServer
  before(async () => { redis = await startRedis() })
  after(async () => { await redis?.destroy() })

  async function open (t: TestContext, keyPrefix: string): Promise<CredentialStore<unknown>> {
    const client = redis.client()
    const app = Fastify()
    t.after(async () => {
      await app.close()
      await client.quit()
    })
    await app.register(fastifyAuthCache, { backend: 'tiered', strict: true, redis: client, apiKeys: { hook: false }, credentials: { keyPrefix } })
    await app.ready()
    assert.equal(app.credentialStore.backend, 'tiered')
    return app.credentialStore as CredentialStore<unknown>
  }

  test('a load served from process memory sends no command to Redis and decodes nothing', async (t) => {
    let decodes = 0
    const client = redis.client()
    const app = Fastify()
    t.after(async () => { await app.close(); await client.quit() })
    await app.register(fastifyAuthCache, {
      backend: 'tiered',
      redis: client,
      apiKeys: { hook: false },
      credentials: {
        keyPrefix: 'memo:',
        deserialize: (raw) => { decodes++; return JSON.parse(raw.toString('utf8')) }
      }
    })
    await app.ready()
    const store = app.credentialStore
    await store.save({ token: 't1' })
    const admin = redis.client()
    t.after(() => admin.quit())
    const decodesBefore = decodes
    const before = await requestPathCommandCalls(admin)
    for (let i = 0; i < 100; i++) assert.deepEqual(await store.load(), { token: 't1' })
    assert.equal(await requestPathCommandCalls(admin), before, '100 loads sent no GET/EVALSHA/...')
    assert.equal(decodes, decodesBefore, 'decoded once per change, at the save')
  })

  test(`a save in one process is seen by load() in another within ${HEALTHY_P99_MS} ms at p99 (best of 3 rounds)`, async (t) => {
    const [a, b] = [await open(t, 'seen:'), await open(t, 'seen:')]
    await a.save(0)
    await until('b sees the first value', async () => (await b.load()) === 0, 2000)
    const rounds: number[] = []
    for (let round = 0; round < 3; round++) {
      const latencies: number[] = []
      for (let i = 1; i <= 100; i++) {
        const value = round * 1000 + i
        await a.save(value)
        const savedAt = performance.now()
        // b polls its own memory: the answer changes once the announcement arrived.
        while ((await b.load()) !== value) {
          if (performance.now() - savedAt > DISRUPTED_BOUND_MS) assert.fail(`b never saw save ${value}`)
          await yieldToEventLoop()
        }
        latencies.push(performance.now() - savedAt)
      }
      latencies.sort((x, y) => x - y)
      rounds.push(percentile(latencies, 99))
      t.diagnostic(`round ${round + 1}: p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms, max ${latencies[latencies.length - 1]!.toFixed(2)} ms`)
      if (percentile(latencies, 99) <= HEALTHY_P99_MS) break
    }
    assert.ok(Math.min(...rounds) <= HEALTHY_P99_MS, `p99 ${rounds.map((p) => p.toFixed(2)).join(', ')} ms`)
  })

  test('clear and update in one process reach the other, and a value past its TTL is gone everywhere', async (t) => {
    const [a, b] = [await open(t, 'changes:'), await open(t, 'changes:')]
    await a.save('v1')
    assert.equal(await b.load(), 'v1')
    await a.clear()
    await until('b sees the clear', async () => (await b.load()) === undefined, 2000)
    await b.save('v2')
    await until('a sees b\'s save', async () => (await a.load()) === 'v2', 2000)
    await a.update((current) => `${current as string}+`)
    await until('b sees a\'s update', async () => (await b.load()) === 'v2+', 2000)

    const client = redis.client()
    const app = Fastify()
    t.after(async () => { await app.close(); await client.quit() })
    await app.register(fastifyAuthCache, { backend: 'tiered', redis: client, apiKeys: { hook: false }, credentials: { keyPrefix: 'ttl:', ttlSeconds: 0.5 } })
    await app.ready()
    await app.credentialStore.save('short')
    assert.equal(await app.credentialStore.load(), 'short')
    await sleep(600)
    assert.equal(await app.credentialStore.load(), undefined)
  })

  describe('across child processes', () => {
    let workers: Child[] = []
    before(async () => {
      workers = await Child.startAll(2, (i) => ({
        name: `credential worker ${i}`, file: WORKER, env: { REDIS_URL: redis.url, BACKEND: 'tiered', KEY_PREFIX: 'procs:' }
      }))
    })
    after(async () => { await Promise.all(workers.map((worker) => worker.kill())) })

    test(`a save is seen by the other process, also after CLIENT KILL of every connection (within ${DISRUPTED_BOUND_MS} ms)`, async () => {
      const [a, b] = workers
      await a.call('save', { key: 'k', value: 'one' })
      await until('b loads what a saved', async () => (await b.call('load', { key: 'k' })).value === 'one', 2000)
      // Both processes now hold 'one' in memory. Every connection is dropped, then a changes it:
      // b's subscriber may miss the announcement while it reconnects, so b must distrust its memory.
      const admin = redis.client()
      try {
        await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
        await admin.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
      } finally {
        admin.disconnect()
      }
      const startedAt = performance.now()
      await within('a can save again', a.call('save', { key: 'k', value: 'two' }), 5000)
      const savedAt = performance.now()
      await until('b loads the new value', async () => (await b.call('load', { key: 'k' })).value === 'two', DISRUPTED_BOUND_MS)
      const seenMs = performance.now() - savedAt
      assert.ok(seenMs <= DISRUPTED_BOUND_MS, `seen ${seenMs.toFixed(0)} ms after the save (${(savedAt - startedAt).toFixed(0)} ms to save)`)
      for (let i = 0; i < 10; i++) assert.equal((await b.call('load', { key: 'k' })).value, 'two')
    })
  })
})
