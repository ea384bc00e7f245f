import assert from 'node:assert/strict'
import diagnostics from 'node:diagnostics_channel'
import { after, describe, test, type TestContext } from 'node:test'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import fastifyAuthCache, { hashApiKey, type ApiKeyRecord } from '../lib'
import { isQuota, periodAt, secondsUntil } from '../lib/quota/period'
import { quotaKey } from '../lib/quota/redis-quota-store'
import { BACKENDS, RecordKeys, registerOnBackend, send, type Backend } from './helpers/backend-app'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { usePrivateRedis } from './helpers/redis-server'
import { until } from './helpers/wait'

// CONTRACT section 14 in one process: the 429 and its order after 401/403, route cost, bad
// input, verifyApiKey, the 503 when no lease can be granted, and the periods' arithmetic.

const redis = usePrivateRedis()

after(() => {
  failIfHeldOpen('quota.test.ts')
})

class Keys extends RecordKeys {
  constructor () { super('quota') }
}

let apps = 0

async function build (t: TestContext, backend: Backend, keys: Keys, options: { redisTimeoutMs?: number } = {}): Promise<FastifyInstance> {
  const app = await registerOnBackend(t, redis, backend, { lookup: keys.lookup, keyPrefix: `quota-${++apps}:` }, options)
  app.get('/one', async () => 'ok')
  app.get('/three', { config: { apiKey: { cost: 3 } } }, async () => 'ok')
  app.get('/admin', { config: { apiKey: { scopes: ['admin'], cost: 2 } } }, async () => 'ok')
  app.get('/verified', { config: { apiKey: false }, onRequest: (request, reply) => app.verifyApiKey(request, reply) }, async () => 'ok')
  await app.ready()
  return app
}

function get (app: FastifyInstance, url: string, key?: string): Promise<LightMyRequestResponse> {
  return send(app, 'GET', url, key)
}

async function statuses (app: FastifyInstance, url: string, key: string, count: number): Promise<number[]> {
  const answers: number[] = []
  for (let i = 0; i < count; i++) answers.push((await get(app, url, key)).statusCode)
  return answers
}

describe('periods', () => {
  test('calendar periods are UTC; a numeric period is aligned on the epoch', () => {
    const at = Date.UTC(2026, 1, 28, 23, 59, 59, 500) // 28 February 2026, half a second before March
    assert.deepEqual(periodAt('month', at), { id: `M${2026 * 12 + 1}`, startMs: Date.UTC(2026, 1, 1), endMs: Date.UTC(2026, 2, 1) })
    assert.equal(periodAt('day', at).endMs, Date.UTC(2026, 2, 1))
    assert.equal(periodAt('hour', at).startMs, Date.UTC(2026, 1, 28, 23))
    assert.equal(periodAt('minute', at).endMs, Date.UTC(2026, 2, 1))
    assert.equal(periodAt('month', Date.UTC(2026, 11, 31, 12)).endMs, Date.UTC(2027, 0, 1), 'December ends at the next year')
    assert.deepEqual(periodAt(2000, 5_999), { id: '2000:2', startMs: 4000, endMs: 6000 })
    assert.notEqual(periodAt(60_000, at).id, periodAt('hour', at).id)
    assert.equal(secondsUntil(6000, 4001), 2, 'rounded up')
    assert.equal(secondsUntil(6000, 5999), 1)
  })

  test('a quota is { limit: positive integer, period: minute | hour | day | month | positive integer ms }', () => {
    for (const good of [{ limit: 1, period: 'minute' }, { limit: 10, period: 'month' }, { limit: 5, period: 2000 }]) {
      assert.ok(isQuota(good), JSON.stringify(good))
    }
    for (const bad of [null, 5, [], {}, { limit: 0, period: 'day' }, { limit: 1.5, period: 'day' }, { limit: -1, period: 'day' },
      { limit: '5', period: 'day' }, { limit: 5, period: 'week' }, { limit: 5, period: 0 }, { limit: 5, period: 1.5 },
      { limit: 5, period: 'toString' }, { limit: 5 }]) {
      assert.ok(!isQuota(bad), JSON.stringify(bad))
    }
  })
})

for (const backend of BACKENDS) {
  describe(`quotas on the ${backend} backend`, () => {
    test('over the quota: 429 FST_API_KEY_QUOTA_EXCEEDED with Retry-After, counted; route cost spends more', async (t) => {
      const keys = new Keys()
      const key = keys.add({ id: 'k', active: true, quota: { limit: 7, period: 'hour' } })
      const app = await build(t, backend, keys)
      const channel = diagnostics.channel('fastify-auth-cache:authenticate')
      const outcomes: string[] = []
      const listen = (message: unknown): void => { outcomes.push((message as { outcome: string }).outcome) }
      channel.subscribe(listen)
      t.after(() => channel.unsubscribe(listen))

      // 3 + 3 + 1 = 7, then nothing more.
      assert.deepEqual(await statuses(app, '/three', key, 2), [200, 200])
      assert.equal((await get(app, '/three', key)).statusCode, 429, 'three units do not fit in the one left')
      assert.equal((await get(app, '/one', key)).statusCode, 200, 'a refused request spent nothing')
      const refused = await get(app, '/one', key)
      assert.equal(refused.statusCode, 429)
      assert.equal(refused.json().code, 'FST_API_KEY_QUOTA_EXCEEDED')
      const retryAfter = Number(refused.headers['retry-after'])
      const untilEnd = Math.ceil((periodAt('hour', Date.now()).endMs - Date.now()) / 1000)
      assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && Math.abs(retryAfter - untilEnd) <= 1, `Retry-After ${retryAfter}, period ends in ${untilEnd} s`)
      assert.equal(app.apiKeyCache.stats().rejections.quota, 2)
      assert.deepEqual(outcomes.filter((outcome) => outcome === 'quota').length, 2)
    })

    test('authentication and scopes come first: 401 and 403 spend nothing; every key of one owner shares one count', async (t) => {
      const keys = new Keys()
      const quota = { limit: 4, period: 'day' as const }
      const first = keys.add({ id: 'a1', active: true, ownerId: 'acme', quota, scopes: ['admin'] })
      const second = keys.add({ id: 'a2', active: true, ownerId: 'acme', quota })
      const namedLikeOwner = keys.add({ id: 'acme', active: true, quota })
      const app = await build(t, backend, keys)

      assert.equal((await get(app, '/one')).statusCode, 401)
      assert.deepEqual(await statuses(app, '/admin', second, 3), [403, 403, 403], 'a2 lacks the scope: 403, not a spend')
      assert.deepEqual(await statuses(app, '/admin', first, 2), [200, 200], 'cost 2 twice')
      assert.equal((await get(app, '/one', second)).statusCode, 429, 'acme\'s 4 units are spent, through a1')
      assert.equal((await get(app, '/one', first)).statusCode, 429)
      assert.deepEqual(await statuses(app, '/one', namedLikeOwner, 4), [200, 200, 200, 200], 'a key whose id is the owner\'s name has its own count')
      assert.equal(app.apiKeyCache.stats().rejections.forbidden, 3)
    })

    test('verifyApiKey enforces quota and cost as the hook does', async (t) => {
      const keys = new Keys()
      const key = keys.add({ id: 'v', active: true, quota: { limit: 2, period: 'hour' } })
      const app = await build(t, backend, keys)
      assert.deepEqual(await statuses(app, '/verified', key, 3), [200, 200, 429])
    })

    test('a malformed quota makes the record invalid (503 FST_API_KEY_LOOKUP_FAILED), never unlimited', async (t) => {
      const keys = new Keys()
      const malformed = [{ limit: 0, period: 'day' }, { limit: 10, period: 'week' }, { limit: 10 }, 'unlimited', { limit: 2.5, period: 1000 }]
      const app = await build(t, backend, keys)
      for (const quota of malformed) {
        const key = keys.add({ id: 'bad', active: true, quota } as unknown as ApiKeyRecord)
        const answer = await get(app, '/one', key)
        assert.equal(answer.statusCode, 503, JSON.stringify(quota))
        assert.equal(answer.json().code, 'FST_API_KEY_LOOKUP_FAILED')
      }
    })

    test('a quota changed in the source of truth applies once the record is reloaded (at once after delete)', async (t) => {
      const keys = new Keys()
      const key = keys.add({ id: 'changing', active: true, quota: { limit: 2, period: 'hour' } })
      const app = await build(t, backend, keys)
      assert.deepEqual(await statuses(app, '/one', key, 3), [200, 200, 429])
      keys.replace(key, { id: 'changing', active: true, quota: { limit: 5, period: 'hour' } })
      assert.equal((await get(app, '/one', key)).statusCode, 429, 'the cached record still says 2')
      await app.apiKeyCache.delete(hashApiKey(key))
      assert.deepEqual(await statuses(app, '/one', key, 4), [200, 200, 200, 429], 'the same period\'s count, against the new limit')
      keys.replace(key, { id: 'changing', active: true, quota: { limit: 1, period: 'hour' } })
      await app.apiKeyCache.delete(hashApiKey(key))
      assert.equal((await get(app, '/one', key)).statusCode, 429, 'lowered below what was spent')
    })

    test('clear() forgets cached records, never quota counts', async (t) => {
      const keys = new Keys()
      const key = keys.add({ id: 'cleared', active: true, quota: { limit: 3, period: 'hour' } })
      const app = await build(t, backend, keys)
      assert.deepEqual(await statuses(app, '/one', key, 2), [200, 200])
      await app.apiKeyCache.clear()
      assert.deepEqual(await statuses(app, '/one', key, 2), [200, 429])
    })

    test('records without a quota are never limited by one', async (t) => {
      const keys = new Keys()
      const key = keys.add({ id: 'free', active: true })
      const app = await build(t, backend, keys)
      assert.ok((await statuses(app, '/three', key, 20)).every((status) => status === 200))
    })
  })
}

describe('route cost', () => {
  for (const cost of [0, -1, 1.5, '2', null, Number.MAX_SAFE_INTEGER + 1]) {
    test(`cost ${String(cost)} fails at start with FST_AUTH_CACHE_INVALID_OPTION naming the route`, async () => {
      const app = Fastify()
      await app.register(fastifyAuthCache, { apiKeys: { lookup: async () => null } })
      try {
        assert.throws(() => app.get('/priced', { config: { apiKey: { cost: cost as number } } }, async () => 'ok'),
          (err: Error & { code?: string }) => err.code === 'FST_AUTH_CACHE_INVALID_OPTION' && err.message.includes('GET /priced') && err.message.includes('cost'))
      } finally {
        await app.close()
      }
    })
  }
})

describe('leases', () => {
  test('a hot owner\'s unused lease goes back to Redis on close: Redis then counts exactly what was accepted', async (t) => {
    const keys = new Keys()
    const key = keys.add({ id: 'hot', active: true, quota: { limit: 1_000_000, period: 'day' } })
    const app = await build(t, 'redis', keys)
    const quotaCount = (): Promise<string | null> => redis.admin.hget(quotaKey(`quota-${apps}:`, 'k:hot', periodAt('day', Date.now())), 'n')
    const accepted = (await statuses(app, '/one', key, 400)).filter((status) => status === 200).length
    assert.equal(accepted, 400)
    assert.ok(Number(await quotaCount()) > accepted, `a lease is held beyond what was spent: ${await quotaCount()} counted for ${accepted} spent`)
    await app.close()
    assert.equal(Number(await quotaCount()), accepted)
  })
})

describe('quotas when Redis cannot grant a lease', () => {
  test('503 FST_API_KEY_QUOTA_UNAVAILABLE within the bound, never an over-spend; served again once Redis answers', async (t) => {
    const keys = new Keys()
    const key = keys.add({ id: 'stalled', active: true, quota: { limit: 3, period: 'hour' } })
    const app = await build(t, 'redis', keys, { redisTimeoutMs: 200 })
    assert.equal((await get(app, '/one', key)).statusCode, 200, 'the record is cached and one unit spent')
    await redis.admin.client('PAUSE', 1500, 'WRITE')
    const started = performance.now()
    const answer = await get(app, '/one', key)
    const tookMs = performance.now() - started
    assert.equal(answer.statusCode, 503, answer.body)
    assert.equal(answer.json().code, 'FST_API_KEY_QUOTA_UNAVAILABLE')
    assert.ok(tookMs < 1400, `answered in ${Math.round(tookMs)} ms, before Redis came back`)
    // The unanswered grant may still land once Redis resumes: it can only waste units, never add any.
    await until('Redis grants leases again', async () => (await get(app, '/one', key)).statusCode === 200, { deadlineMs: 15_000, pauseMs: 100 })
    const rest = await statuses(app, '/one', key, 5)
    assert.ok(rest.filter((status) => status === 200).length <= 1, `at most 3 accepted in all: ${rest}`)
    assert.equal(rest.at(-1), 429)
  })
})
