import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import fastifyRateLimit, { normalizeIP } from '@fastify/rate-limit'
import Fastify from 'fastify'
import Redis from 'ioredis'
import fastifyAuthCache, { generateApiKey, hashApiKey, rateLimitByApiKey, type ApiKeyRecord } from '../lib'
import { clientIpKey } from '../lib/rate-limit/client-ip'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { Child } from './helpers/child-process'
import { startRedis, type RedisServer } from './helpers/redis-server'
import { until } from './helpers/wait'

// CONTRACT section 8: per-key rate limits, enforced by the real @fastify/rate-limit with its
// Redis store, in two server processes sharing one private redis-server.

const WORKER = join(__dirname, 'fixtures', 'rate-limit-worker.ts')
const NAMESPACE = 'test-rate-limit:'
const DEFAULT_MAX = 4
// Long enough that no window ends during a test on a busy machine, unless a record says otherwise.
const DEFAULT_WINDOW_MS = 120_000

const table: Record<string, ApiKeyRecord> = {}
function key (record: ApiKeyRecord): string {
  const generated = generateApiKey({ prefix: 'limit' })
  table[generated.hash] = record
  return generated.key
}

const KEYS = {
  solo: key({ id: 'solo', active: true }),
  acme1: key({ id: 'acme-1', active: true, ownerId: 'acme' }),
  acme2: key({ id: 'acme-2', active: true, ownerId: 'acme' }),
  // Its id is the other owner's id: still a budget of its own.
  namedLikeOwner: key({ id: 'acme', active: true }),
  premium: key({ id: 'premium', active: true, rateLimit: { max: 2, timeWindowMs: DEFAULT_WINDOW_MS } }),
  short: key({ id: 'short', active: true, rateLimit: { max: 1, timeWindowMs: 1500 } }),
  junkLimit: key({ id: 'junk-limit', active: true, rateLimit: { max: -1, timeWindowMs: 'soon' } }),
  reader: key({ id: 'reader', active: true }),
  exhaustedThenIp: key({ id: 'by-ip', active: true }),
  inactive: key({ id: 'off', active: false })
}

interface Answer { status: number, code?: string, headers: Record<string, string> }

let redis: RedisServer
let admin: Redis
let workers: Child[] = []

before(async () => {
  redis = await startRedis()
  admin = redis.client()
  const env = {
    REDIS_URL: redis.url,
    NAMESPACE,
    RECORDS: JSON.stringify(table),
    DEFAULT_MAX: String(DEFAULT_MAX),
    DEFAULT_WINDOW_MS: String(DEFAULT_WINDOW_MS)
  }
  workers = await Child.startAll(2, (i) => ({ name: `rate-limit worker ${i}`, file: WORKER, env }))
})

after(async () => {
  await Promise.all(workers.map((worker) => worker.kill()))
  admin?.disconnect()
  await redis?.destroy()
  failIfHeldOpen('rate-limit.multiprocess.test.ts')
})

async function request (worker: Child, options: { url?: string, method?: 'GET' | 'POST', key?: string, remoteAddress?: string }): Promise<Answer> {
  const reply: Answer = await worker.call('request', { method: 'GET', url: '/orders', ...options })
  return { status: reply.status, code: reply.code, headers: reply.headers }
}

/** Sends one request per process in turn (A, B, A, ...). */
async function alternate (count: number, options: Parameters<typeof request>[1]): Promise<Answer[]> {
  const answers: Answer[] = []
  for (let i = 0; i < count; i++) answers.push(await request(workers[i % 2]!, options))
  return answers
}

function assertLimited (answer: Answer, limit: number, what: string): void {
  assert.equal(answer.status, 429, `${what}: ${JSON.stringify(answer)}`)
  assert.equal(answer.headers['x-ratelimit-limit'], String(limit))
  assert.equal(answer.headers['x-ratelimit-remaining'], '0')
  const retryAfter = Number(answer.headers['retry-after'])
  assert.ok(Number.isInteger(retryAfter) && retryAfter > 0, `retry-after: ${answer.headers['retry-after']}`)
}

describe('rateLimitByApiKey with @fastify/rate-limit and its Redis store, two processes', () => {
  test('one key\'s budget is shared by both processes; the 429 carries @fastify/rate-limit\'s headers', async () => {
    const answers = await alternate(DEFAULT_MAX, { key: KEYS.solo })
    assert.deepEqual(answers.map((a) => a.status), [200, 200, 200, 200])
    assert.deepEqual(answers.map((a) => a.headers['x-ratelimit-remaining']), ['3', '2', '1', '0'])
    assert.ok(answers.every((a) => a.headers['x-ratelimit-limit'] === String(DEFAULT_MAX)))
    for (const worker of workers) {
      const limited = await request(worker, { key: KEYS.solo })
      assertLimited(limited, DEFAULT_MAX, 'the fifth request, in either process')
      assert.ok(Number(limited.headers['retry-after']) <= DEFAULT_WINDOW_MS / 1000)
    }
  })

  test('every key of one owner shares one budget; a key whose id is that owner\'s name does not', async () => {
    const answers = [
      await request(workers[0]!, { key: KEYS.acme1 }),
      await request(workers[1]!, { key: KEYS.acme2 }),
      await request(workers[1]!, { key: KEYS.acme1 }),
      await request(workers[0]!, { key: KEYS.acme2 })
    ]
    assert.deepEqual(answers.map((a) => a.headers['x-ratelimit-remaining']), ['3', '2', '1', '0'])
    assertLimited(await request(workers[0]!, { key: KEYS.acme1 }), DEFAULT_MAX, 'acme-1 after four uses by acme')
    assertLimited(await request(workers[1]!, { key: KEYS.acme2 }), DEFAULT_MAX, 'acme-2 after four uses by acme')
    const other = await request(workers[0]!, { key: KEYS.namedLikeOwner })
    assert.equal(other.status, 200)
    assert.equal(other.headers['x-ratelimit-remaining'], '3')
  })

  test('a record\'s own rateLimit sets its budget and window; a malformed one falls back to the defaults', async () => {
    const premium = await alternate(2, { key: KEYS.premium })
    assert.deepEqual(premium.map((a) => [a.status, a.headers['x-ratelimit-limit'], a.headers['x-ratelimit-remaining']]), [[200, '2', '1'], [200, '2', '0']])
    assertLimited(await request(workers[0]!, { key: KEYS.premium }), 2, 'premium\'s third request')

    assert.equal((await request(workers[0]!, { key: KEYS.short })).status, 200)
    const limited = await request(workers[1]!, { key: KEYS.short })
    assertLimited(limited, 1, 'short\'s second request')
    assert.ok(Number(limited.headers['retry-after']) <= 2, 'its own 1.5 s window')
    await until('short\'s window of 1.5 s ends', async () => (await request(workers[1]!, { key: KEYS.short })).status === 200, 15_000)

    const junk = await request(workers[0]!, { key: KEYS.junkLimit })
    assert.equal(junk.status, 200)
    assert.equal(junk.headers['x-ratelimit-limit'], String(DEFAULT_MAX))
  })

  test('authentication comes first: no key or a bad key is a 401 (not a 429), and a 403 costs no budget', async () => {
    // solo is past its budget (first test); the 401s neither pass nor count.
    for (const worker of workers) {
      for (const key of [undefined, generateApiKey({ prefix: 'limit' }).key, KEYS.inactive]) {
        const answer = await request(worker, { key })
        assert.equal(answer.status, 401, JSON.stringify(answer))
        assert.equal(answer.headers['x-ratelimit-limit'], undefined)
      }
    }
    for (let i = 0; i < DEFAULT_MAX + 2; i++) {
      const forbidden = await request(workers[i % 2]!, { key: KEYS.reader, method: 'POST' })
      assert.equal(forbidden.status, 403)
      assert.equal(forbidden.code, 'FST_API_KEY_FORBIDDEN')
    }
    const reader = await request(workers[0]!, { key: KEYS.reader })
    assert.equal(reader.status, 200)
    assert.equal(reader.headers['x-ratelimit-remaining'], String(DEFAULT_MAX - 1))
  })

  test('a route with config: { apiKey: false } is limited by IP, as @fastify/rate-limit does by default', async () => {
    const ip = '203.0.113.7'
    const open = await alternate(DEFAULT_MAX, { url: '/health', remoteAddress: ip })
    assert.deepEqual(open.map((a) => a.status), [200, 200, 200, 200])
    assertLimited(await request(workers[1]!, { url: '/health', remoteAddress: ip }), DEFAULT_MAX, 'a fifth request from one IP')
    // Sending a key changes nothing there: the route does not authenticate.
    assertLimited(await request(workers[0]!, { url: '/health', remoteAddress: ip, key: KEYS.exhaustedThenIp }), DEFAULT_MAX, 'with a key')
    assert.equal((await request(workers[0]!, { url: '/health', remoteAddress: '203.0.113.8' })).status, 200)
    // The IP's budget is not the key's, and the other way round.
    const authenticated = await request(workers[1]!, { key: KEYS.exhaustedThenIp, remoteAddress: ip })
    assert.equal(authenticated.status, 200)
    assert.equal(authenticated.headers['x-ratelimit-remaining'], String(DEFAULT_MAX - 1))

    // IPv6 addresses of one /64 share a budget.
    const v6 = await alternate(DEFAULT_MAX, { url: '/health', remoteAddress: '2001:db8:1:2::1' })
    assert.ok(v6.every((a) => a.status === 200))
    assertLimited(await request(workers[0]!, { url: '/health', remoteAddress: '2001:db8:1:2:ffff::9' }), DEFAULT_MAX, 'the same /64')
    assert.equal((await request(workers[0]!, { url: '/health', remoteAddress: '2001:db8:1:3::1' })).status, 200)
  })

  test('Redis holds one counter per owner, key id or IP under the namespace, and never a plaintext key', async () => {
    const stored = (await admin.keys('*')).sort()
    for (const name of stored) assert.ok(name.startsWith(NAMESPACE), `${name} is under the rate limiter's namespace`)
    for (const expected of ['apikey-id:solo', 'apikey-owner:acme', 'apikey-id:acme', 'apikey-id:premium', '203.0.113.7', '2001:db8:1:2::']) {
      assert.ok(stored.includes(NAMESPACE + expected), `${expected} in ${JSON.stringify(stored)}`)
    }
    const everything = JSON.stringify(stored) + JSON.stringify(await Promise.all(stored.map((name) => admin.get(name))))
    for (const plaintext of Object.values(KEYS)) assert.ok(!everything.includes(plaintext))
  })
})

test('the ACL grant the README gives @fastify/rate-limit is enough, and nothing outside it is touched', async (t) => {
  const namespace = 'acl-rate-limit:'
  // The README's grant, with this test's namespace and ioredis' ready check.
  await admin.call('ACL', 'SETUSER', 'rate-limiter', 'on', '>limiter-secret', 'resetkeys', `~${namespace}*`, 'resetchannels',
    '-@all', '+evalsha', '+eval', '+incr', '+pexpire', '+pttl', '+get', '+info')
  await admin.call('ACL', 'LOG', 'RESET')
  const client = new Redis({ ...redis.connectionOptions(), username: 'rate-limiter', password: 'limiter-secret', maxRetriesPerRequest: 1 })
  client.on('error', () => {})
  const app = Fastify()
  t.after(async () => {
    await app.close()
    client.disconnect()
  })
  const { key, hash } = generateApiKey({ prefix: 'limit' })
  assert.equal(hash, hashApiKey(key))
  await app.register(fastifyAuthCache, { apiKeys: { lookup: async (keyHash) => keyHash === hash ? { id: 'acl', active: true } : null } })
  await app.register(fastifyRateLimit, { ...rateLimitByApiKey({ max: 2, timeWindowMs: DEFAULT_WINDOW_MS }), redis: client, nameSpace: namespace })
  app.get('/', () => 'ok')
  app.get('/open', { config: { apiKey: false } }, () => 'ok')
  const statuses = []
  for (let i = 0; i < 3; i++) statuses.push((await app.inject({ url: '/', headers: { 'x-api-key': key } })).statusCode)
  for (let i = 0; i < 3; i++) statuses.push((await app.inject({ url: '/open' })).statusCode)
  assert.deepEqual(statuses, [200, 200, 429, 200, 200, 429])
  assert.deepEqual(await admin.call('ACL', 'LOG'), [], 'no command was refused')
})

describe('rateLimitByApiKey options', () => {
  test('a hook after authentication, and functions of the request for key, max and window', () => {
    const options = rateLimitByApiKey({ max: 10, timeWindowMs: 1000 })
    assert.equal(options.hook, 'preHandler')
    const requestWith = (apiKey: ApiKeyRecord | null, ip = '192.0.2.1'): never => ({ apiKey, ip }) as never
    assert.equal(options.keyGenerator(requestWith({ id: 'k', active: true })), 'apikey-id:k')
    assert.equal(options.keyGenerator(requestWith({ id: 'k', active: true, ownerId: 'o' })), 'apikey-owner:o')
    assert.equal(options.keyGenerator(requestWith({ id: 'k', active: true, ownerId: 42 })), 'apikey-owner:42')
    for (const ownerId of ['', null, {}, ['o'], true, Number.NaN]) {
      assert.equal(options.keyGenerator(requestWith({ id: 'k', active: true, ownerId })), 'apikey-id:k', JSON.stringify(ownerId))
    }
    assert.equal(options.keyGenerator(requestWith(null)), '192.0.2.1')
    const limited = requestWith({ id: 'k', active: true, rateLimit: { max: 0, timeWindowMs: 5 } })
    assert.equal(options.max(limited, 'x'), 0)
    assert.equal(options.timeWindow(limited, 'x'), 5)
    for (const rateLimit of [undefined, null, 'fast', { max: 1.5, timeWindowMs: 0 }, { max: '3', timeWindowMs: Number.POSITIVE_INFINITY }]) {
      const request = requestWith({ id: 'k', active: true, rateLimit })
      assert.equal(options.max(request, 'x'), 10)
      assert.equal(options.timeWindow(request, 'x'), 1000)
    }
    assert.equal(options.max(requestWith(null), 'x'), 10)
  })

  const invalid: Array<[unknown, RegExp]> = [
    [undefined, /defaults/],
    [null, /defaults/],
    [{ timeWindowMs: 1000 }, /defaults\.max/],
    [{ max: -1, timeWindowMs: 1000 }, /defaults\.max/],
    [{ max: 1.5, timeWindowMs: 1000 }, /defaults\.max/],
    [{ max: '10', timeWindowMs: 1000 }, /defaults\.max/],
    [{ max: 10 }, /defaults\.timeWindowMs/],
    [{ max: 10, timeWindowMs: 0 }, /defaults\.timeWindowMs/],
    [{ max: 10, timeWindowMs: '1 minute' }, /defaults\.timeWindowMs/],
    [{ max: 10, timeWindowMs: Number.NaN }, /defaults\.timeWindowMs/]
  ]
  for (const [defaults, name] of invalid) {
    test(`defaults ${JSON.stringify(defaults)} → FST_AUTH_CACHE_INVALID_OPTION`, () => {
      assert.throws(() => rateLimitByApiKey(defaults as never), (err: { code?: string, message: string }) => {
        assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
        assert.match(err.message, name)
        return true
      })
    })
  }

  test('IP keys are what @fastify/rate-limit\'s default key generator makes', () => {
    const addresses = [
      '192.0.2.1', '10.0.0.255', '::1', '::', '2001:db8::1', '2001:DB8:0:0:8:800:200C:417A', '2001:db8:1:2:3:4:5:6',
      'fe80::1%eth0', '::ffff:192.0.2.128', '::FFFF:10.1.2.3', '0:0:0:0:0:ffff:c000:0280', '2001:0:0:1::1', '1::',
      '2001:db8:0:0:1:0:0:1', '::ffff:0:1', '64:ff9b::192.0.2.33', 'a:b:c:d:e:f:1:2'
    ]
    for (const address of addresses) assert.equal(clientIpKey(address), normalizeIP(address), address)
  })
})
