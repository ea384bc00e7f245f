import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, test, type TestContext } from 'node:test'
import fc from 'fast-check'
import Fastify, { type FastifyInstance } from 'fastify'
import type Redis from 'ioredis'
import fastifyAuthCache, {
  encryptedSerializer, generateApiKey, hashApiKey, jsonSerializer,
  type ApiKeyRecord, type CredentialSerializer
} from '../lib'
import { startRedis, type RedisServer } from './helpers/redis-server'
import { until } from './helpers/wait'

type Backend = 'memory' | 'redis' | 'tiered'
type HeaderValue = string | string[]

const KEY_PREFIX = 'apikey:'
const CREDENTIAL_KEY = 'credentials:default'
const VALID = generateApiKey({ prefix: 'hostile' }).key
const VALID_HASH = hashApiKey(VALID)
const VALID_RECORD = { id: 'client-1', active: true, scopes: ['read'] }
const UNKNOWN = generateApiKey({ prefix: 'hostile' }).key
// The Redis backend's own marker for "lookup did not know this key": a real answer, not junk.
const UNKNOWN_MARKER = '{"$unknownKey":true}'
// Generous, so that a loaded machine never turns a slow Redis reply into a skipped fill.
const REDIS_TIMEOUT_MS = 5000

let server: RedisServer

before(async () => {
  server = await startRedis()
})

after(async () => {
  await server.destroy()
})

interface Harness {
  app: FastifyInstance
  /** The test's own connection to the private server; undefined for the memory backend. */
  redis: Redis | undefined
  /** Every hash `lookup` was called with, in order. */
  lookups: string[]
  /** How many requests reached the route handler. */
  handled: number
  /** Per-hash override of what `lookup` does; by default it knows VALID only. */
  answers: Map<string, () => unknown>
}

/**
 * An app, the client it is given and the test's own client (none for memory), closed in that
 * order after the test.
 */
function appWithClients (t: TestContext, backend: Backend): { app: FastifyInstance, appClient: Redis | undefined, redis: Redis | undefined } {
  const appClient = backend === 'memory' ? undefined : server.client()
  const redis = backend === 'memory' ? undefined : server.client()
  const app = Fastify()
  t.after(async () => {
    await app.close()
    appClient?.disconnect()
    redis?.disconnect()
  })
  return { app, appClient, redis }
}

async function harness (t: TestContext, backend: Backend, header = 'x-api-key'): Promise<Harness> {
  const { app, appClient, redis } = appWithClients(t, backend)
  const h: Harness = { app, redis, lookups: [], handled: 0, answers: new Map() }
  await app.register(fastifyAuthCache, {
    backend,
    redis: appClient,
    redisTimeoutMs: REDIS_TIMEOUT_MS,
    apiKeys: {
      header,
      // Not async: an answer that throws must throw synchronously out of lookup itself.
      lookup: (keyHash) => {
        h.lookups.push(keyHash)
        const answer = h.answers.get(keyHash)
        if (answer !== undefined) return answer() as ApiKeyRecord
        return keyHash === VALID_HASH ? VALID_RECORD : null
      }
    }
  })
  app.get('/private', async (request) => {
    h.handled++
    return { id: request.apiKey.id }
  })
  await app.ready()
  return h
}

// ---------------------------------------------------------------------------------------------
// What the contract says a header value must produce.

type Outcome =
  | { status: 200, lookupHash: string }
  | { status: 401, code: 'FST_API_KEY_MISSING' | 'FST_API_KEY_INVALID', lookupHash: string | undefined }

const CONTROL = /[\u0000-\u001f\u007f-\u009f]/ // eslint-disable-line no-control-regex
const BEARER = /^[Bb][Ee][Aa][Rr][Ee][Rr] (.*)$/s
const MISSING: Outcome = { status: 401, code: 'FST_API_KEY_MISSING', lookupHash: undefined }
const MALFORMED: Outcome = { status: 401, code: 'FST_API_KEY_INVALID', lookupHash: undefined }

function outcomeOfKey (raw: string): Outcome {
  const key = raw.replace(/^ +| +$/g, '')
  if (key === '') return MISSING
  if (key.length > 1024 || CONTROL.test(key)) return MALFORMED
  if (key === VALID) return { status: 200, lookupHash: VALID_HASH }
  return { status: 401, code: 'FST_API_KEY_INVALID', lookupHash: hashApiKey(key) }
}

function expectedOutcome (header: string, value: HeaderValue): Outcome {
  if (Array.isArray(value)) {
    // A repeated header is ambiguous (a proxy may have read another copy): never a key.
    if (value.length > 1) return MALFORMED
    value = value[0]
  }
  if (header !== 'authorization') return outcomeOfKey(value)
  const bearer = BEARER.exec(value)
  return bearer === null ? MISSING : outcomeOfKey(bearer[1])
}

// ---------------------------------------------------------------------------------------------
// Arbitraries for hostile header values.

const oddChars = fc.constantFrom(' ', '\t', '\n', '\r', '\0', '\u007f', '\u0085', '\u009f', ',', ';', '"', '\\',
  '=', 'é', 'ß', '😀', '\u200b', '\u00a0', '\ufeff', '\ufffd', '\ud800', '\udfff', 'а' /* Cyrillic */)
const anyChar = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 0xffff }).map((code) => String.fromCharCode(code)), weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 1 },
  { arbitrary: oddChars, weight: 2 })
const anyText = fc.string({ unit: anyChar, maxLength: 64 })
const controlChar = fc.oneof(fc.integer({ min: 0, max: 0x1f }), fc.integer({ min: 0x7f, max: 0x9f }))
  .map((code) => String.fromCharCode(code))
const withControl = fc.tuple(anyText, controlChar, anyText).map(([a, c, b]) => a + c + b)
const spaces = fc.string({ unit: fc.constant(' '), maxLength: 4 })
const padded = fc.tuple(spaces, spaces).map(([a, b]) => a + VALID + b)
const nearMiss = fc.oneof(
  fc.nat(VALID.length - 1).map((i) => VALID.slice(0, i) + VALID.slice(i + 1)),
  fc.tuple(fc.nat(VALID.length), fc.string({ unit: anyChar, minLength: 1, maxLength: 3 }))
    .map(([i, s]) => VALID.slice(0, i) + s + VALID.slice(i)),
  fc.tuple(fc.nat(VALID.length - 1), anyChar).map(([i, c]) => VALID.slice(0, i) + c + VALID.slice(i + 1)),
  fc.constantFrom(VALID.toUpperCase(), VALID.toLowerCase(), `${VALID}\t`, `\t${VALID}`, `${VALID}\r\n`, `${VALID}, ${VALID}`))
const huge = fc.oneof(
  fc.integer({ min: 1025, max: 4096 }).map((n) => 'k'.repeat(n)),
  fc.string({ unit: anyChar, minLength: 1025, maxLength: 1500 }),
  fc.constantFrom(VALID.repeat(40), 'x'.repeat(1024), 'x'.repeat(100_000), ' '.repeat(3000) + VALID))
const keyLike = fc.oneof(
  { arbitrary: anyText, weight: 4 },
  { arbitrary: withControl, weight: 2 },
  { arbitrary: huge, weight: 1 },
  { arbitrary: nearMiss, weight: 3 },
  { arbitrary: padded, weight: 2 },
  { arbitrary: fc.constantFrom('', VALID, UNKNOWN), weight: 1 },
  { arbitrary: spaces, weight: 1 })
const scheme = fc.constantFrom('Bearer', 'bearer', 'BEARER', 'bEaReR', 'Basic', 'Digest', 'Token', 'ApiKey',
  'Bearerxyz', 'Bearer,', 'Bеarer' /* Cyrillic e */, '')
const separator = fc.constantFrom(' ', '  ', '', '\t', ',', ' \t', '\u00a0')
const authorizationLike = fc.oneof(
  { arbitrary: fc.tuple(scheme, separator, keyLike).map(([s, sep, key]) => s + sep + key), weight: 5 },
  { arbitrary: keyLike, weight: 2 },
  { arbitrary: fc.constantFrom('Bearer', 'Bearer ', `Bearer${VALID}`, `Basic ${VALID}`, `Digest ${VALID}`), weight: 1 })

function headerValues (single: fc.Arbitrary<string>): fc.Arbitrary<HeaderValue> {
  return fc.oneof(
    { arbitrary: single, weight: 6 },
    { arbitrary: fc.array(single, { minLength: 1, maxLength: 3 }), weight: 1 })
}

const BACKENDS: Backend[] = ['memory', 'redis', 'tiered']

for (const backend of BACKENDS) {
  for (const header of ['x-api-key', 'authorization']) {
    const single = header === 'authorization' ? authorizationLike : keyLike
    const examples: Array<[HeaderValue]> = header === 'authorization'
      ? [['Bearer ' + VALID], ['Basic ' + VALID], ['Digest ' + VALID], ['Bearer'], ['Bearerxyz'], ['Bearer' + VALID],
          ['bearer   ' + VALID + '  '], [['Bearer ' + VALID, 'Bearer ' + UNKNOWN]], [['Bearer ' + VALID, 'Bearer ' + VALID]],
          ['Bearer ' + VALID + '\u0085'], ['Bearer ' + 'k'.repeat(1025)]]
      : [[VALID], [''], ['   '], ['  ' + VALID + ' '], ['x'.repeat(1025)], [VALID + '\u0000'], [VALID + '\u0085'],
          [[VALID, VALID]], [[VALID]], [[UNKNOWN, VALID]]]

    test(`hostile ${header} values get 200 only for the exact key, else 401 (${backend})`, async (t) => {
      const h = await harness(t, backend, header)
      await fc.assert(fc.asyncProperty(headerValues(single), async (value) => {
        const expected = expectedOutcome(header, value)
        const lookupsBefore = h.lookups.length
        const handledBefore = h.handled
        const res = await h.app.inject({ url: '/private', headers: { [header]: value } })
        const shown = JSON.stringify(value).slice(0, 120)
        assert.equal(res.statusCode, expected.status, `status for ${shown}: ${res.body}`)
        if (expected.status === 200) {
          assert.deepEqual(res.json(), { id: VALID_RECORD.id })
        } else {
          assert.equal(res.json().code, expected.code, `code for ${shown}`)
          assert.equal(h.handled, handledBefore, `route ran for ${shown}`)
          assert.ok(typeof res.headers['www-authenticate'] === 'string', 'a 401 carries a challenge')
        }
        // At most one lookup, and only with the hash of the key the contract extracts.
        const calls = h.lookups.slice(lookupsBefore)
        if (expected.lookupHash === undefined) assert.deepEqual(calls, [], `lookup was called for ${shown}`)
        else assert.ok(calls.length <= 1 && calls.every((c) => c === expected.lookupHash), `lookup calls for ${shown}`)
      }), { numRuns: 250, endOnFailure: true, examples })
    })
  }
}

// ---------------------------------------------------------------------------------------------
// Junk under our Redis keys.

/** What the cache may trust: an object with a string id, a boolean active and a numeric expiresAt if any. */
function isRecordText (raw: string): boolean {
  let value: unknown
  try {
    value = JSON.parse(raw)
  } catch {
    return false
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const record = value as Record<string, unknown>
  return typeof record.id === 'string' && typeof record.active === 'boolean' &&
    (record.expiresAt === undefined || typeof record.expiresAt === 'number')
}

const smallJson = fc.jsonValue({ maxDepth: 1 })
const wrongShape = fc.record({
  id: fc.oneof(smallJson, fc.string()),
  active: fc.oneof(smallJson, fc.boolean()),
  expiresAt: fc.oneof(smallJson, fc.integer()),
  extra: smallJson
}, { requiredKeys: [] }).map((value) => JSON.stringify(value))
const HUGE_JUNK = [
  'x'.repeat((1 << 20) + 1),
  JSON.stringify({ pad: 'x'.repeat(1 << 20) }),
  '[' + '1,'.repeat(400_000) + '1]'
]
const EXPLICIT_JUNK = [
  '', 'null', 'true', '0', '[]', '{}', '"x"', '{', '{"id":"x","active":"true"}', '{"id":1,"active":true}',
  '{"id":"x","active":true,"expiresAt":"tomorrow"}', '{"id":"x","active":true,"expiresAt":null}',
  '{"__proto__":{"id":"x","active":true}}', '{"constructor":{"prototype":{"id":"x","active":true}}}',
  '[{"id":"x","active":true}]', JSON.stringify(JSON.stringify(VALID_RECORD)), '{"$unknownKey":false}',
  '{"$unknownKey":true,"id":"x"}', '{"unknownKey":true}', ' ' + UNKNOWN_MARKER, VALID, VALID_HASH
]
const junkValue = fc.oneof(
  { arbitrary: anyText, weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 100 }), weight: 2 },
  { arbitrary: fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value)), weight: 3 },
  { arbitrary: fc.anything({ maxDepth: 2, withNullPrototype: true }).map((value) => JSON.stringify(value) ?? 'undefined'), weight: 2 },
  { arbitrary: wrongShape, weight: 4 },
  { arbitrary: fc.constantFrom(...EXPLICIT_JUNK), weight: 2 },
  { arbitrary: fc.constantFrom(...HUGE_JUNK), weight: 1 }
).filter((raw) => raw !== UNKNOWN_MARKER && !isRecordText(raw))

function generationKey (keyHash: string): string {
  return `${KEY_PREFIX}{${KEY_PREFIX}${keyHash}}:gen`
}

/** The string under `recordKey`, or null when there is none or a key of another type. */
async function storedString (redis: Redis, recordKey: string): Promise<string | null> {
  return (await redis.type(recordKey)) === 'string' ? await redis.get(recordKey) : null
}

/**
 * Sends `key` while junk (`planted`, null for another Redis type) sits under its record key.
 * The first request must ask lookup and answer as lookup says: junk is never trusted. Then the
 * junk must be replaced by the fill. On tiered a fill is refused when the invalidation bus lost or
 * regained trust during the request (a loaded machine can miss a heartbeat), so there the next
 * requests may be needed; each must still answer right. Finally the replacement serves a request
 * without lookup.
 */
async function expectJunkReplaced (h: Harness, backend: Backend, key: string, planted: string | null, what: string): Promise<void> {
  const redis = h.redis!
  const recordKey = KEY_PREFIX + hashApiKey(key)
  const send = async (): Promise<void> => {
    const handledBefore = h.handled
    const res = await h.app.inject({ url: '/private', headers: { 'x-api-key': key } })
    if (key === VALID) {
      assert.equal(res.statusCode, 200, `${what}: ${res.body}`)
      assert.deepEqual(res.json(), { id: VALID_RECORD.id })
    } else {
      assert.equal(res.statusCode, 401, `${what}: ${res.body}`)
      assert.equal(res.json().code, 'FST_API_KEY_INVALID')
      assert.equal(h.handled, handledBefore, `${what}: never accepted`)
    }
  }
  const replaced = async (): Promise<boolean> => {
    const stored = await storedString(redis, recordKey)
    if (stored === null || stored === planted) return false
    if (key !== VALID) return true
    assert.deepEqual(JSON.parse(stored), VALID_RECORD, `${what}: the fill wrote the record`)
    return true
  }

  const lookupsBefore = h.lookups.length
  await send()
  assert.equal(h.lookups.length - lookupsBefore, 1, `${what}: junk is a miss, so lookup is asked`)
  // On redis the first request's fill must have replaced it.
  let asked = 0
  await until(`${what}: the fill replaced the junk`, async () => {
    if (asked++ > 0) await send()
    return await replaced()
  }, backend === 'tiered' ? 5000 : 0)
  const lookupsAfterFill = h.lookups.length
  await send()
  assert.equal(h.lookups.length, lookupsAfterFill, `${what}: the replacement is served from the cache`)
}

for (const backend of ['redis', 'tiered'] as const) {
  test(`junk under our Redis keys is a miss, replaced, and never accepted (${backend})`, async (t) => {
    const h = await harness(t, backend)
    const redis = h.redis!
    const junkGeneration = fc.option(fc.oneof(anyText, fc.constantFrom('', '-1', 'NaN', '1e999', '{}')), { nil: undefined })
    await fc.assert(fc.asyncProperty(fc.constantFrom(VALID, UNKNOWN), junkValue, junkGeneration, async (key, junk, generation) => {
      const keyHash = hashApiKey(key)
      // Starts each run from "nothing cached in this process", as if another writer planted the junk.
      await h.app.apiKeyCache.delete(keyHash)
      await redis.set(KEY_PREFIX + keyHash, junk)
      if (generation !== undefined) await redis.set(generationKey(keyHash), generation)
      const planted = await redis.get(KEY_PREFIX + keyHash)
      await expectJunkReplaced(h, backend, key, planted, `junk ${JSON.stringify(junk.slice(0, 80))}`)
    }), { numRuns: 120, endOnFailure: true, examples: HUGE_JUNK.map((junk) => [UNKNOWN, junk, undefined]) })
  })

  test(`a key of another Redis type under our keys is a miss and replaced (${backend})`, async (t) => {
    const h = await harness(t, backend)
    const redis = h.redis!
    const plant: Record<string, (key: string) => Promise<unknown>> = {
      list: (key) => redis.rpush(key, 'a', 'b'),
      hash: (key) => redis.hset(key, { id: 'x', active: 'true' }),
      set: (key) => redis.sadd(key, 'x'),
      zset: (key) => redis.zadd(key, 1, 'x'),
      stream: (key) => redis.xadd(key, '*', 'id', 'x')
    }
    for (const [type, write] of Object.entries(plant)) {
      for (const key of [VALID, UNKNOWN]) {
        for (const where of ['record', 'generation']) {
          const keyHash = hashApiKey(key)
          await h.app.apiKeyCache.delete(keyHash)
          await redis.del(KEY_PREFIX + keyHash, generationKey(keyHash))
          await write(where === 'record' ? KEY_PREFIX + keyHash : generationKey(keyHash))
          const what = `${type} under the ${where} key of the ${key === VALID ? 'valid' : 'unknown'} key`
          await expectJunkReplaced(h, backend, key, null, what)
        }
      }
    }
    assert.equal(h.app.apiKeyCache.stats().backendErrors, 0, 'another type under our keys is junk, not a backend failure')
  })
}

// ---------------------------------------------------------------------------------------------
// lookup answering junk.

function looksLikeRecord (value: unknown): boolean {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const record = value as Record<string, unknown>
  return typeof record.id === 'string' && typeof record.active === 'boolean'
}

const junkAnswer = fc.oneof(
  fc.anything({ maxDepth: 2, withNullPrototype: true, withBigInt: true, withDate: true, withMap: true, withSet: true, withTypedArray: true }),
  fc.record({ id: fc.anything({ maxDepth: 1 }), active: fc.anything({ maxDepth: 1 }) }, { requiredKeys: [] }),
  fc.constantFrom<unknown>(0, '', false, NaN, [], [VALID_RECORD], 'null', { id: 'x' }, { active: true },
    { id: 1, active: true }, { id: 'x', active: 'true' }, { id: null, active: true })
).filter((value) => value !== null && value !== undefined && !looksLikeRecord(value))
const anyThrown = fc.oneof(fc.anything({ maxDepth: 1 }), fc.string().map((message) => new Error(message)),
  fc.constantFrom<unknown>(undefined, null, VALID_RECORD, new TypeError('boom')))
const junkLookup: fc.Arbitrary<{ how: string, answer: () => unknown }> = fc.oneof(
  junkAnswer.map((value) => ({ how: 'returns', answer: () => value })),
  junkAnswer.map((value) => ({ how: 'resolves', answer: () => Promise.resolve(value) })),
  junkAnswer.map((value) => ({ how: 'thenable', answer: () => ({ then: (resolve: (v: unknown) => void) => resolve(value) }) })),
  anyThrown.map((thrown) => ({ how: 'rejects', answer: () => Promise.reject(thrown) })),
  anyThrown.map((thrown) => ({ how: 'throws', answer: () => { throw thrown } })))

for (const backend of BACKENDS) {
  test(`lookup answering junk is a 503, never accepted and never cached (${backend})`, async (t) => {
    const h = await harness(t, backend)
    await fc.assert(fc.asyncProperty(junkLookup, async ({ how, answer }) => {
      // A fresh key per run, so nothing a previous run cached can answer for it.
      const key = generateApiKey({ prefix: 'hostile' }).key
      const keyHash = hashApiKey(key)
      const lookupsBefore = h.lookups.length
      const handledBefore = h.handled
      const errorsBefore = h.app.apiKeyCache.stats().lookupErrors
      h.answers.set(keyHash, answer)
      const res = await h.app.inject({ url: '/private', headers: { 'x-api-key': key } })
      assert.equal(res.statusCode, 503, `lookup ${how}: ${res.body}`)
      assert.equal(res.json().code, 'FST_API_KEY_LOOKUP_FAILED')
      assert.equal(h.handled, handledBefore, 'never accepted')
      assert.equal(h.app.apiKeyCache.stats().lookupErrors - errorsBefore, 1)
      if (h.redis !== undefined) assert.equal(await h.redis.exists(KEY_PREFIX + keyHash), 0, 'nothing written to Redis')

      // Had anything (even "unknown") been cached, this request would not reach lookup again.
      h.answers.set(keyHash, () => ({ id: 'recovered', active: true }))
      const retry = await h.app.inject({ url: '/private', headers: { 'x-api-key': key } })
      h.answers.delete(keyHash)
      assert.equal(retry.statusCode, 200, retry.body)
      assert.deepEqual(retry.json(), { id: 'recovered' })
      assert.deepEqual(h.lookups.slice(lookupsBefore), [keyHash, keyHash])
    }), { numRuns: 120, endOnFailure: true })
  })
}

// ---------------------------------------------------------------------------------------------
// Corrupt credential bytes.

/** Lets a test store exact bytes through the memory backend, which has no other way in. */
class RawBytes {
  constructor (readonly bytes: Buffer) {}
}

interface CredentialHarness {
  load: () => Promise<unknown>
  update: (fn: (current: unknown) => unknown) => Promise<unknown>
  write: (bytes: Buffer) => Promise<void>
  /** The bytes stored now, as the store itself hands them out. */
  stored: () => Promise<Buffer | undefined>
  /** Every buffer `deserialize` was given. */
  seen: Buffer[]
  redis: Redis | undefined
}

async function credentialHarness (t: TestContext, backend: 'memory' | 'redis', inner: CredentialSerializer<unknown>): Promise<CredentialHarness> {
  const { app, appClient, redis } = appWithClients(t, backend)
  const seen: Buffer[] = []
  await app.register(fastifyAuthCache, {
    backend,
    redis: appClient,
    apiKeys: { hook: false },
    credentials: {
      serialize: (value, ctx) => value instanceof RawBytes ? value.bytes : inner.serialize(value, ctx),
      deserialize: (raw, ctx) => {
        seen.push(Buffer.from(raw))
        return inner.deserialize(raw, ctx)
      }
    }
  })
  await app.ready()
  const store = app.credentialStore
  assert.equal(store.backend, backend)
  return {
    load: () => store.load(),
    update: (fn) => store.update(fn, { waitMs: 5000 }),
    write: async (bytes) => {
      if (redis !== undefined) await redis.set(CREDENTIAL_KEY, bytes)
      else await store.save(new RawBytes(bytes))
    },
    stored: async () => {
      if (redis !== undefined) return (await redis.getBuffer(CREDENTIAL_KEY)) ?? undefined
      // The memory store has no raw read: the bytes it hands to deserialize are what it holds.
      seen.length = 0
      await store.load().catch(() => {})
      return seen[0]
    },
    seen,
    redis
  }
}

/** Bytes no JSON parser accepts (a leading byte order mark is tolerated, as secure-json-parse does). */
function notJson (bytes: Buffer): boolean {
  try {
    JSON.parse(bytes.toString('utf8').replace(/^\ufeff/, ''))
    return false
  } catch {
    return true
  }
}

const anyBytes = fc.uint8Array({ maxLength: 512 }).map((bytes) => Buffer.from(bytes))
const jsonText = fc.jsonValue({ maxDepth: 2 }).map((value) => JSON.stringify(value))
const poisoned = fc.tuple(fc.jsonValue({ maxDepth: 2 }), fc.jsonValue({ maxDepth: 2 }), fc.boolean(), fc.nat(2))
  .map(([a, b, proto, depth]) => {
    let text = proto
      ? `{"a":${JSON.stringify(a)},"__proto__":${JSON.stringify(b)}}`
      : `{"constructor":{"prototype":${JSON.stringify(b)}},"a":${JSON.stringify(a)}}`
    for (let i = 0; i < depth; i++) text = i % 2 === 0 ? `[${text}]` : `{"nested":${text}}`
    return Buffer.from(text)
  })
const corruptJson = fc.oneof(
  { arbitrary: anyBytes.filter(notJson), weight: 3 },
  {
    arbitrary: jsonText.chain((text) => fc.nat(Math.max(0, text.length - 1)).map((n) => Buffer.from(text.slice(0, n))))
      .filter(notJson),
    weight: 2
  },
  { arbitrary: poisoned, weight: 3 },
  {
    arbitrary: fc.constantFrom('', '{"\\u005f_proto__":{"x":1}}', '{"__proto__":null}', '{"a":1}x', 'undefined', 'NaN')
      .map((text) => Buffer.from(text)).filter((bytes) => bytes.length === 0 || notJson(bytes) || bytes.includes('proto')),
    weight: 1
  },
  { arbitrary: fc.constant(Buffer.from([0xc3, 0x28, 0xa0, 0xa1, 0xff])), weight: 1 })

for (const backend of ['memory', 'redis'] as const) {
  test(`corrupt bytes under the credential key fail to load as FST_CREDENTIALS_DESERIALIZE and stay (${backend}, json)`, async (t) => {
    const h = await credentialHarness(t, backend, jsonSerializer)
    await checkCorruptBytes(h, corruptJson)
  })

  test(`corrupt bytes under the credential key fail to load as FST_CREDENTIALS_DESERIALIZE and stay (${backend}, encrypted)`, async (t) => {
    const keys = { a: randomBytes(32), b: randomBytes(32).toString('base64') }
    const serializer = encryptedSerializer({ keys, current: 'a' })
    const h = await credentialHarness(t, backend, serializer)
    const value = { accessToken: 'token', refreshToken: 'refresh' }
    const ctx = { key: CREDENTIAL_KEY }
    const genuine = Buffer.from(await serializer.serialize(value, ctx))
    // The genuine envelope loads; every corruption of it below must not.
    await h.write(genuine)
    assert.deepEqual(await h.load(), value)
    const foreign = [
      await serializer.serialize(value, { key: 'credentials:other' }),
      await encryptedSerializer({ keys: { a: randomBytes(32) }, current: 'a' }).serialize(value, ctx),
      await encryptedSerializer({ keys: { z: randomBytes(32) }, current: 'z' }).serialize(value, ctx),
      Buffer.from(JSON.stringify(value))
    ].map((bytes) => Buffer.from(bytes))
    const corruptEnvelope = fc.oneof(
      { arbitrary: anyBytes, weight: 2 },
      {
        arbitrary: fc.tuple(fc.nat(genuine.length - 1), fc.integer({ min: 1, max: 255 })).map(([i, mask]) => {
          const bytes = Buffer.from(genuine)
          bytes[i] ^= mask
          return bytes
        }),
        weight: 3
      },
      { arbitrary: fc.nat(genuine.length - 1).map((n) => Buffer.from(genuine.subarray(0, n))), weight: 2 },
      { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 32 }).map((extra) => Buffer.concat([genuine, extra])), weight: 1 },
      {
        arbitrary: fc.tuple(fc.nat(255), fc.uint8Array({ maxLength: 64 }))
          .map(([idLength, rest]) => Buffer.concat([Buffer.from('FAC1'), Buffer.from([idLength]), rest])),
        weight: 2
      },
      { arbitrary: fc.constantFrom(...foreign), weight: 1 })
    await checkCorruptBytes(h, corruptEnvelope)
  })
}

async function checkCorruptBytes (h: CredentialHarness, corrupt: fc.Arbitrary<Buffer>): Promise<void> {
  await fc.assert(fc.asyncProperty(corrupt, async (bytes) => {
    await h.write(bytes)
    h.seen.length = 0
    await assert.rejects(h.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
    let fnRan = false
    await assert.rejects(h.update(() => { fnRan = true; return { replaced: true } }), { code: 'FST_CREDENTIALS_DESERIALIZE' })
    assert.equal(fnRan, false, 'update never hands unreadable bytes to fn')
    // Each attempt read exactly the bytes written, and nothing rewrote them.
    assert.deepEqual(h.seen, [bytes, bytes])
    assert.deepEqual(await h.stored(), bytes)
    if (h.redis !== undefined) assert.equal(await h.redis.exists(`{${CREDENTIAL_KEY}}:lock`), 0, 'the failed update released its lock')
  }), { numRuns: 150, endOnFailure: true })
}
