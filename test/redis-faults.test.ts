import assert from 'node:assert/strict'
import { after, describe, test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyAuthCache, { generateApiKey, hashApiKey } from '../lib'
import { CapturedLog, LEVEL } from './helpers/captured-log'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { KeySource, record } from './helpers/key-source'
import { usePrivateRedis } from './helpers/redis-server'
import { until } from './helpers/wait'

// The contract's bound is redisTimeoutMs on each Redis call; a request may make a few of them
// and the machine is loaded, so each request is held to ten times that.
const REDIS_TIMEOUT_MS = 100
const REQUEST_BOUND_MS = 1000
const RECOVERY_DEADLINE_MS = 15_000

const redis = usePrivateRedis()

after(() => {
  failIfHeldOpen('redis-faults.test.ts')
})

interface Harness {
  app: FastifyInstance
  log: CapturedLog
  key: string
  keyPrefix: string
  lookups: () => number
  /** One authenticated request, checked to succeed within the bound. */
  authenticate: (what: string) => Promise<number>
}

let apps = 0

async function build (t: TestContext, backend: 'redis' | 'tiered'): Promise<Harness> {
  const log = new CapturedLog()
  // ioredis' default retries and offline queue: a call made while Redis is away waits, possibly for ever.
  const client = redis.server.client({ maxRetriesPerRequest: 20 })
  // Connected before the app starts, so that the faults below are the only ones.
  assert.equal(await client.ping(), 'PONG')
  const app = Fastify({ logger: { level: 'info', stream: log.stream } })
  t.after(async () => {
    await app.close()
    client.disconnect()
  })
  const { key, hash } = generateApiKey({ prefix: 'fault' })
  const source = new KeySource().answer(hash, record('survivor'))
  const keyPrefix = `faults-${++apps}:`
  await app.register(fastifyAuthCache, {
    backend,
    strict: true,
    redis: client,
    redisTimeoutMs: REDIS_TIMEOUT_MS,
    apiKeys: {
      keyPrefix,
      lookup: source.lookup
    }
  })
  app.get('/', (request) => ({ id: request.apiKey.id }))
  await app.ready()

  const authenticate = async (what: string): Promise<number> => {
    const started = performance.now()
    const res = await app.inject({ url: '/', headers: { 'x-api-key': key } })
    const took = performance.now() - started
    assert.equal(res.statusCode, 200, `${what}: ${res.body}`)
    assert.deepEqual(res.json(), { id: 'survivor' })
    assert.ok(took < REQUEST_BOUND_MS, `${what} took ${Math.round(took)} ms`)
    return took
  }
  return { app, log, key, keyPrefix, lookups: () => source.lookups, authenticate }
}

/**
 * Authenticates until a request is answered by the cache. On a loaded machine the very first
 * Redis calls of a new connection (script loading) may exceed the timeout, so this polls.
 */
async function assertCachingWorks (h: Harness): Promise<void> {
  await until('the healthy cache answers', async () => {
    const lookups = h.lookups()
    const hits = h.app.apiKeyCache.stats().hits
    await h.authenticate('healthy request')
    return h.lookups() === lookups && h.app.apiKeyCache.stats().hits === hits + 1
  }, { deadlineMs: RECOVERY_DEADLINE_MS, pauseMs: 50 })
}

const BURST = 20

/**
 * Requests one at a time every `intervalMs` for `durationMs`, plus one burst of BURST concurrent
 * ones (which share one lookup); returns how many were sent one at a time.
 */
async function keepAuthenticating (h: Harness, what: string, durationMs: number, intervalMs = 25): Promise<number> {
  let sequential = 0
  const until = performance.now() + durationMs
  while (performance.now() < until) {
    await h.authenticate(`${what}, request ${++sequential}`)
    if (sequential === 10) {
      await Promise.all(Array.from({ length: BURST }, (_, i) => h.authenticate(`${what}, concurrent request ${i}`)))
    }
    await sleep(intervalMs)
  }
  return sequential
}

/**
 * Polls until a request is answered without `lookup` (a cache hit again), then checks that the
 * cache stays healthy: more hits, no lookup, no backend error. Returns how long recovery took.
 */
async function assertRecovers (h: Harness, what: string): Promise<number> {
  const started = performance.now()
  await until(`${what}: a request is a cache hit again`, async () => {
    const lookups = h.lookups()
    const errors = h.app.apiKeyCache.stats().backendErrors
    await h.authenticate(`${what}, recovering`)
    return h.lookups() === lookups && h.app.apiKeyCache.stats().backendErrors === errors
  }, { deadlineMs: RECOVERY_DEADLINE_MS, pauseMs: 50 })
  const recoveredIn = performance.now() - started
  const settled = h.app.apiKeyCache.stats()
  const lookups = h.lookups()
  for (let i = 0; i < 20; i++) await h.authenticate(`${what}, after recovery ${i}`)
  const now = h.app.apiKeyCache.stats()
  assert.equal(now.backendErrors, settled.backendErrors, `${what}: no backend error once recovered`)
  assert.equal(h.lookups(), lookups, `${what}: every request after recovery is a cache hit`)
  assert.equal(now.hits, settled.hits + 20)
  return recoveredIn
}

/**
 * The outage is reported with one warning, not one per request. (Were a slow start on a loaded
 * machine already warned about, that warning stands for the outage too: one per interval.)
 */
function assertWarnedOnce (h: Harness, requests: number): void {
  const warnings = h.log.at(LEVEL.warn)
  const backendWarnings = warnings.filter((line) => /cache backend/i.test(String(line.msg)))
  assert.equal(backendWarnings.length, 1, h.log.text)
  assert.ok(warnings.length <= 3 && warnings.length < requests, `${warnings.length} warnings for ${requests} requests:\n${h.log.text}`)
  assert.ok(!h.log.text.includes(h.key), 'the plaintext key is never logged')
}

for (const backend of ['redis', 'tiered'] as const) {
  describe(`${backend} backend`, () => {
    test('Redis stopped mid-test: requests authenticate through lookup within the bound; restarted: the cache recovers', async (t) => {
      const h = await build(t, backend)
      await assertCachingWorks(h)
      const lookupsBefore = h.lookups()
      const errorsBefore = h.app.apiKeyCache.stats().backendErrors

      // Whatever happens below, the next test gets a running Redis.
      t.after(() => redis.server.restart())
      await redis.server.stop()
      const sequential = await keepAuthenticating(h, 'Redis stopped', 1500)
      const sent = sequential + BURST
      const unknown = await h.app.inject({ url: '/', headers: { 'x-api-key': generateApiKey({ prefix: 'fault' }).key } })
      assert.equal(unknown.statusCode, 401, 'lookup still decides during the outage')

      const stats = h.app.apiKeyCache.stats()
      assert.ok(stats.backendErrors > errorsBefore, 'the outage is counted in backendErrors')
      // Nothing can be read from Redis; at most the first requests are served from process memory
      // before the tiered backend notices its subscriber is gone.
      assert.ok(h.lookups() - lookupsBefore >= sequential - 5, `${h.lookups() - lookupsBefore} lookups for ${sequential} requests one at a time`)
      assertWarnedOnce(h, sent)

      await redis.server.restart()
      const recoveredIn = await assertRecovers(h, 'Redis restarted')
      t.diagnostic(`recovered ${Math.round(recoveredIn)} ms after the restart`)
      if (backend === 'redis') assert.equal(await redis.admin.exists(h.keyPrefix + hashApiKey(h.key)), 1, 'the cache is filled again')
      assertWarnedOnce(h, sent)
    })

    test('Redis stalled by CLIENT PAUSE 3000 ALL: requests are answered within the bound, then the cache recovers', async (t) => {
      const h = await build(t, backend)
      await assertCachingWorks(h)
      const errorsBefore = h.app.apiKeyCache.stats().backendErrors

      const pausedAt = performance.now()
      assert.equal(await redis.admin.call('CLIENT', 'PAUSE', '3000', 'ALL'), 'OK')
      const sent = await keepAuthenticating(h, 'Redis stalled', 2500) + BURST
      assert.ok(h.app.apiKeyCache.stats().backendErrors > errorsBefore, 'the stall is counted in backendErrors')
      assertWarnedOnce(h, sent)

      await sleep(Math.max(0, 3000 - (performance.now() - pausedAt)))
      const recoveredIn = await assertRecovers(h, 'Redis unpaused')
      t.diagnostic(`recovered ${Math.round(recoveredIn)} ms after the pause ended`)
      assertWarnedOnce(h, sent)
    })

    test('delete and clear against a stalled Redis reject within their 5 s bound instead of hanging', async (t) => {
      const h = await build(t, backend)
      await assertCachingWorks(h)
      const pausedAt = performance.now()
      assert.equal(await redis.admin.call('CLIENT', 'PAUSE', '6500', 'ALL'), 'OK')
      const outcomes = await Promise.allSettled([
        h.app.apiKeyCache.delete(hashApiKey(h.key)),
        h.app.apiKeyCache.clear()
      ])
      const took = performance.now() - pausedAt
      for (const outcome of outcomes) {
        assert.equal(outcome.status, 'rejected')
        assert.equal((outcome as PromiseRejectedResult).reason.code, 'FST_AUTH_CACHE_REDIS_TIMEOUT')
      }
      assert.ok(took >= 4900 && took < 6400, `rejected after ${Math.round(took)} ms`)
      // The next test starts on a Redis that answers.
      await sleep(Math.max(0, 6600 - (performance.now() - pausedAt)))
    })
  })
}
