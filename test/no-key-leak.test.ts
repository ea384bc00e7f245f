import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test, type TestContext } from 'node:test'
import Fastify, { type FastifyInstance } from 'fastify'
import type Redis from 'ioredis'
import fastifyAuthCache, { generateApiKey, type ApiKeyRecord } from '../lib'
import { startRedis, type RedisServer } from './helpers/redis-server'
import { until } from './helpers/wait'

type Backend = 'memory' | 'redis' | 'tiered'

const FORMAT_PREFIX = 'leak'
const KEY_PREFIX = 'apikey:'
const FRAGMENT = 16

/** Computed here rather than with the plugin's hashApiKey, so the test also checks which hash is used. */
function sha256 (key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex')
}

/**
 * Every 16-character window of a secret, also in hex and base64: a text that holds none of them
 * holds no 16+ character piece of the key in those forms either.
 */
function fragmentsOf (secret: string): string[] {
  const out = new Set<string>()
  for (const form of [secret, Buffer.from(secret).toString('hex'), Buffer.from(secret).toString('base64')]) {
    for (let i = 0; i + FRAGMENT <= form.length; i++) out.add(form.slice(i, i + FRAGMENT))
  }
  return [...out]
}

class LeakDetector {
  private readonly fragments = new Map<string, string>()

  add (name: string, secret: string): string {
    for (const fragment of fragmentsOf(secret)) this.fragments.set(fragment, name)
    return secret
  }

  /** Fails naming the secret and where it showed up. */
  check (where: string, text: string): void {
    for (const [fragment, name] of this.fragments) {
      const at = text.indexOf(fragment)
      if (at !== -1) assert.fail(`the ${name} key leaked into ${where}: ...${text.slice(Math.max(0, at - 150), at + 150)}...`)
    }
  }
}

function key (): string {
  return generateApiKey({ prefix: FORMAT_PREFIX }).key
}

/** Turns a checksum-valid key into one that fails the format check, by changing its last character. */
function breakChecksum (valid: string): string {
  const last = valid.at(-1) === 'A' ? 'B' : 'A'
  return valid.slice(0, -1) + last
}

interface Case {
  name: string
  /** The key as sent; undefined sends no header at all. */
  sent: string | undefined
  /** Sent as the whole header value, without `Bearer ` in front when the header is Authorization. */
  raw?: boolean
  /** Default '/private'. */
  url?: string
  status: number
  code?: string
}

interface Observed {
  logs: string[]
  responses: string[]
  apiKeys: string[]
  lookups: string[]
  /** What apiKeys.onUsage was given. */
  usage: string[]
}

/** Every key and value on the server, in one text per key. */
async function dumpRedis (redis: Redis): Promise<string[]> {
  const out: string[] = []
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'COUNT', '1000')
    cursor = next
    for (const name of keys) {
      const type = await redis.type(name)
      let value: unknown
      if (type === 'string') value = await redis.get(name)
      else if (type === 'hash') value = await redis.hgetall(name)
      else if (type === 'list') value = await redis.lrange(name, 0, -1)
      else if (type === 'set') value = await redis.smembers(name)
      else if (type === 'zset') value = await redis.zrange(name, '0', '-1')
      else value = await redis.call('DUMP', name)
      out.push(`${name} ${type} ${JSON.stringify(value)}`)
    }
  } while (cursor !== '0')
  return out
}

/** Watches everything sent to and published on the server. */
interface RedisWatch {
  commands: string[]
  messages: string[]
  /** Resolves once everything sent before it has been seen. */
  sync: () => Promise<void>
  stop: () => void
}

async function watchRedis (t: TestContext, server: RedisServer): Promise<RedisWatch> {
  const commands: string[] = []
  const messages: string[] = []
  const base = server.client()
  const monitor = await base.monitor()
  monitor.on('monitor', (_time: string, args: string[]) => { commands.push(args.join(' ')) })
  const subscriber = server.client()
  await subscriber.psubscribe('*')
  subscriber.on('pmessage', (_pattern: string, channel: string, message: string) => { messages.push(`${channel} ${message}`) })
  // Stopped before Redis goes away: ioredis cannot tell a MONITOR line from a reply while it
  // re-enters monitor mode after a reconnect, and throws.
  const stop = (): void => {
    monitor.disconnect()
    subscriber.disconnect()
    base.disconnect()
  }
  t.after(stop)
  let round = 0
  return {
    stop,
    commands,
    messages,
    // Both streams are asynchronous: a marker sent last and seen on both means all before it was seen.
    async sync () {
      const marker = `leak-test-sync-${++round}`
      await base.publish('leak-test-sync', marker)
      await until('MONITOR and pub/sub caught up', () =>
        commands.some((c) => c.includes(marker)) && messages.some((m) => m.includes(marker)))
    }
  }
}

for (const backend of ['memory', 'redis', 'tiered'] as const) {
  for (const header of ['x-api-key', 'authorization']) {
    test(`no plaintext key in logs, responses, request.apiKey or Redis (${backend}, ${header})`, async (t) => {
      await checkNoLeak(t, backend, header)
    })
  }
}

async function checkNoLeak (t: TestContext, backend: Backend, header: string): Promise<void> {
  const leaks = new LeakDetector()
  const valid = leaks.add('valid', key())
  const inactive = leaks.add('inactive', key())
  const expired = leaks.add('expired', key())
  const unknown = leaks.add('unknown', key())
  const throwing = leaks.add('throwing-lookup', key())
  const junk = leaks.add('junk-lookup', key())
  const control = leaks.add('control-character', key())
  const long = leaks.add('too-long', key())
  const badFormat = leaks.add('bad-checksum', key())
  const wrongScheme = leaks.add('wrong-scheme', key())
  const downValid = leaks.add('valid-while-redis-down', key())
  const downUnknown = leaks.add('unknown-while-redis-down', key())
  const unscoped = leaks.add('lacking-a-scope', key())

  // The detector must see a leak when there is one, or every check below proves nothing.
  assert.throws(() => leaks.check('self-test', `{"msg":"x${valid.slice(5, 5 + FRAGMENT)}y"}`), /valid key leaked/)
  assert.throws(() => leaks.check('self-test', Buffer.from(unknown).toString('base64')), /unknown key leaked/)

  const records: Record<string, ApiKeyRecord> = {
    [sha256(valid)]: { id: 'valid-id', active: true, plan: 'pro' },
    [sha256(inactive)]: { id: 'inactive-id', active: false },
    [sha256(expired)]: { id: 'expired-id', active: true, expiresAt: Date.now() - 60_000 },
    [sha256(downValid)]: { id: 'down-id', active: true },
    [sha256(unscoped)]: { id: 'unscoped-id', active: true, scopes: ['read'] }
  }
  const observed: Observed = { logs: [], responses: [], apiKeys: [], lookups: [], usage: [] }

  let server: RedisServer | undefined
  let appClient: Redis | undefined
  let inspector: Redis | undefined
  let watch: RedisWatch | undefined
  if (backend !== 'memory') {
    server = await startRedis()
    t.after(() => server!.destroy())
    watch = await watchRedis(t, server)
    appClient = server.client()
    inspector = server.client()
  }

  const app: FastifyInstance = Fastify({
    logger: { level: 'trace', stream: { write: (line: string) => { observed.logs.push(line) } } }
  })
  t.after(async () => {
    await app.close()
    appClient?.disconnect()
    inspector?.disconnect()
  })
  await app.register(fastifyAuthCache, {
    backend,
    redis: appClient,
    // Generous, so that a loaded machine does not skip the fills whose keys are looked for in Redis.
    redisTimeoutMs: 1000,
    apiKeys: {
      header,
      negativeTtlSeconds: 60,
      format: { prefix: FORMAT_PREFIX },
      lookup: (keyHash) => {
        observed.lookups.push(keyHash)
        if (keyHash === sha256(throwing)) throw new Error('connection to the accounts database was refused')
        if (keyHash === sha256(junk)) return { id: 42, active: 'yes' } as unknown as ApiKeyRecord
        return records[keyHash] ?? null
      },
      onUsage: (batch) => { observed.usage.push(JSON.stringify(batch)) },
      usageFlushMs: 50
    }
  })
  app.addHook('onResponse', async (request) => {
    observed.apiKeys.push(JSON.stringify(request.apiKey ?? null))
  })
  app.get('/private', async (request) => ({ id: request.apiKey.id }))
  app.get('/scoped', { config: { apiKey: { scopes: ['write'] } } }, async (request) => ({ id: request.apiKey.id }))
  await app.ready()
  assert.equal(app.apiKeyCache.backend, backend)

  const send = async (c: Case): Promise<void> => {
    const headers: Record<string, string> = {}
    if (c.sent !== undefined) {
      headers[header] = header === 'authorization' && c.raw !== true ? `Bearer ${c.sent}` : c.sent
    }
    const res = await app.inject({ url: c.url ?? '/private', headers })
    assert.equal(res.statusCode, c.status, `${c.name}: ${res.body}`)
    if (c.code !== undefined) assert.equal(res.json().code, c.code, c.name)
    observed.responses.push(`${c.name} ${JSON.stringify(res.headers)} ${res.body}`)
  }

  const INVALID = 'FST_API_KEY_INVALID'
  const cases: Case[] = [
    { name: 'missing', sent: undefined, status: 401, code: 'FST_API_KEY_MISSING' },
    {
      name: 'wrong scheme',
      sent: header === 'authorization' ? `Basic ${wrongScheme}` : `Bearer ${wrongScheme}`,
      raw: true,
      status: 401,
      code: header === 'authorization' ? 'FST_API_KEY_MISSING' : INVALID
    },
    { name: 'control character', sent: `${control}\u0007`, status: 401, code: INVALID },
    { name: 'too long', sent: long.repeat(Math.ceil(1025 / long.length)), status: 401, code: INVALID },
    { name: 'bad checksum', sent: breakChecksum(badFormat), status: 401, code: INVALID },
    { name: 'unknown', sent: unknown, status: 401, code: INVALID },
    { name: 'inactive', sent: inactive, status: 401, code: INVALID },
    { name: 'expired', sent: expired, status: 401, code: INVALID },
    { name: 'valid', sent: valid, status: 200 },
    { name: 'lacks a scope', sent: unscoped, url: '/scoped', status: 403, code: 'FST_API_KEY_FORBIDDEN' },
    { name: 'lookup throws', sent: throwing, status: 503, code: 'FST_API_KEY_LOOKUP_FAILED' },
    { name: 'lookup junk', sent: junk, status: 503, code: 'FST_API_KEY_LOOKUP_FAILED' }
  ]
  // Twice, so that answers served from the cache are checked as well as answers from lookup.
  for (const c of [...cases, ...cases]) await send(c)
  await app.apiKeyCache.delete(sha256(valid))
  await send({ name: 'valid after delete', sent: valid, status: 200 })

  const looked = [valid, inactive, expired, unknown, throwing, junk, unscoped]
  if (server !== undefined) {
    await watch!.sync()
    const stored = await dumpRedis(inspector!)
    for (const line of stored) leaks.check('a Redis key or value', line)
    for (const line of watch!.commands) leaks.check('a command sent to Redis', line)
    assert.ok(watch!.commands.some((line) => line.includes(sha256(valid))), 'MONITOR saw the plugin\'s own commands')
    for (const line of watch!.messages) leaks.check('a pub/sub message', line)
    // The hash is what names everything stored: a cached answer, or the generation beside it.
    const hashes = new Set(looked.map(sha256))
    for (const line of stored) {
      const name = line.slice(0, line.indexOf(' '))
      // The dataset's revision counter names no key and holds a number (docs/gray-faults.md).
      if (name === 'apikey:~revision') {
        assert.match(line, /^apikey:~revision string "\d+"$/)
        continue
      }
      const named = /^apikey:(?:\{apikey:)?([0-9a-f]{64})(?:\}:gen)?$/.exec(name)
      assert.ok(named !== null && hashes.has(named[1]), `${name} is named by the hash of a key that was looked up`)
    }
    const cached = [valid, inactive, expired, unknown].filter((k) => stored.some((line) => line.startsWith(KEY_PREFIX + sha256(k) + ' ')))
    // On tiered a fill is refused when the bus lost or regained trust meanwhile (a loaded machine
    // can miss a heartbeat); the Redis backend has no such reason to skip one.
    if (backend === 'redis') assert.equal(cached.length, 4, `every answer is cached under ${KEY_PREFIX}<sha256>: ${stored.join('\n')}`)
    else assert.ok(cached.length > 0, `answers are cached under ${KEY_PREFIX}<sha256>: ${stored.join('\n')}`)
    watch!.stop()

    // A backend failure: Redis gone, the hook falls back to lookup, and logs about it.
    await server.stop()
    await send({ name: 'valid while Redis is down', sent: downValid, status: 200 })
    await send({ name: 'unknown while Redis is down', sent: downUnknown, status: 401, code: INVALID })
    looked.push(downValid, downUnknown)
    assert.ok(app.apiKeyCache.stats().backendErrors > 0, 'the requests really met a backend error')
    // One warning per outage, not per request: it may already have been given for an earlier hiccup.
    assert.ok(observed.logs.some((line) => JSON.parse(line).level === 40), 'the backend error was logged at warn')

    // Whatever the client had queued while Redis was away reaches the restarted server.
    await server.restart()
    await until('the plugin\'s client reconnected', () => appClient!.status === 'ready')
    await send({ name: 'valid after Redis is back', sent: downValid, status: 200 })
    for (const line of await dumpRedis(inspector!)) leaks.check('a Redis key or value after the restart', line)
  }

  for (const line of observed.logs) leaks.check('a log line', line)
  for (const text of observed.responses) leaks.check('a response', text)
  for (const text of observed.apiKeys) leaks.check('request.apiKey', text)
  await until('a usage report', () => observed.usage.length > 0)
  for (const text of observed.usage) leaks.check('a usage batch', text)
  assert.ok(observed.usage.some((text) => text.includes(sha256(valid))), 'usage names keys by hash')
  leaks.check('stats()', JSON.stringify(app.apiKeyCache.stats()))

  // The hash is what lookup sees, and only keys that pass every cheap check reach it.
  assert.deepEqual(new Set(observed.lookups), new Set(looked.map(sha256)))
  // The hash is what the refusal of an unknown key logs (allowed: it reveals nothing).
  const refusals = observed.logs.map((line) => JSON.parse(line)).filter((entry) => entry.reason === 'unknown')
  assert.ok(refusals.length > 0 && refusals.every((entry) => entry.keyHash === sha256(unknown) || entry.keyHash === sha256(downUnknown)),
    'unknown keys are logged by hash at debug')
  assert.ok(observed.apiKeys.includes(JSON.stringify(records[sha256(valid)])), 'request.apiKey is the record lookup gave')
  assert.ok(observed.logs.length > 20, 'the log really was captured at trace level')
}
