import assert from 'node:assert/strict'
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { after, describe, test, type TestContext } from 'node:test'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fastifyAuthCache, {
  generateApiKey, secretScanning, type ApiKeysOptions, type LeakedApiKey, type SecretScanningOptions
} from '../lib'
import { CapturedLog } from './helpers/captured-log'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { KeySource, record } from './helpers/key-source'
import { usePrivateRedis } from './helpers/redis-server'
import { until, within } from './helpers/wait'

const PREFIX = 'leak'
const ROUTE = '/.well-known/secret-scanning'

after(() => failIfHeldOpen('secret-scanning.test.ts'))

/** SHA-256 hex computed here, so that the test also checks which hash GitHub is answered with. */
function sha256 (text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex')
}

/** A P-256 key pair standing in for one of GitHub's secret scanning keys. */
class Signer {
  readonly id: string
  readonly pem: string
  readonly #privateKey: KeyObject

  constructor (id: string) {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    this.id = id
    this.pem = publicKey.export({ type: 'spki', format: 'pem' }) as string
    this.#privateKey = privateKey
  }

  /** The headers GitHub sends with `body`: base64 DER ECDSA over its exact bytes. */
  headers (body: string | Buffer, keyId = this.id): Record<string, string> {
    return {
      'content-type': 'application/json',
      'github-public-key-identifier': keyId,
      'github-public-key-signature': sign('sha256', Buffer.from(body), this.#privateKey).toString('base64')
    }
  }
}

function publicKeys (...signers: Signer[]): SecretScanningOptions['publicKeys'] & object {
  return { public_keys: signers.map((s, i) => ({ key_identifier: s.id, key: s.pem, is_current: i === 0 })) }
}

function report (...tokens: string[]): string {
  return JSON.stringify(tokens.map((token) => ({ token, type: 'fastify_auth_cache_key', url: 'https://github.com/o/r/blob/x/f', source: 'content' })))
}

interface Built {
  app: FastifyInstance
  source: KeySource
  leaks: LeakedApiKey[]
}

interface BuildOptions {
  apiKeys?: ApiKeysOptions
  scanning?: Partial<SecretScanningOptions>
  source?: KeySource
  server?: FastifyServerOptions
  /** Registers @fastify/redis on this URL with the tiered backend. */
  redisUrl?: string
}

const GITHUB = new Signer('github-key-1')

/**
 * An app with fastify-auth-cache (format prefix `leak`) and secretScanning, whose onLeak
 * revokes the key in the test's source of truth, as a user's onLeak would.
 */
async function build (t: TestContext, options: BuildOptions = {}): Promise<Built> {
  const source = options.source ?? new KeySource()
  const leaks: LeakedApiKey[] = []
  const app = Fastify(options.server)
  t.after(() => app.close())
  if (options.redisUrl !== undefined) await app.register(fastifyRedis, { url: options.redisUrl })
  await app.register(fastifyAuthCache, {
    backend: options.redisUrl === undefined ? 'memory' : 'tiered',
    apiKeys: { lookup: source.lookup, format: { prefix: PREFIX }, ...options.apiKeys }
  })
  await app.register(secretScanning, {
    publicKeys: publicKeys(GITHUB),
    onLeak: async (leak) => {
      leaks.push(leak)
      source.answer(leak.keyHash, record(leak.record.id, { active: false }))
    },
    ...options.scanning
  })
  app.get('/', async (request) => ({ id: request.apiKey.id }))
  app.post('/echo', async (request) => ({ body: request.body, isBuffer: Buffer.isBuffer(request.body) }))
  await app.ready()
  return { app, source, leaks }
}

async function status (app: FastifyInstance, key: string): Promise<number> {
  return (await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': key } })).statusCode
}

async function post (app: FastifyInstance, body: string | Buffer, headers: Record<string, string> = GITHUB.headers(body)) {
  return await app.inject({ method: 'POST', url: ROUTE, headers, payload: body })
}

/** A key active in `source`, served once so that the cache holds it. */
async function cachedKey (app: FastifyInstance, source: KeySource, id: string): Promise<{ key: string, hash: string }> {
  const made = generateApiKey({ prefix: PREFIX })
  source.answer(made.hash, record(id))
  assert.equal(await status(app, made.key), 200)
  assert.ok(await app.apiKeyCache.get(made.hash), 'the key is cached')
  return made
}

describe('reports signed with a key given through publicKeys', () => {
  test('an active key is handed to onLeak and dropped from the cache; everything else is a false positive', async (t) => {
    const { app, source, leaks } = await build(t)
    const leaked = await cachedKey(app, source, 'leaked')
    const inactive = generateApiKey({ prefix: PREFIX })
    source.answer(inactive.hash, record('inactive', { active: false }))
    const expired = generateApiKey({ prefix: PREFIX })
    source.answer(expired.hash, record('expired', { expiresAt: Date.now() - 1000 }))
    const unknown = generateApiKey({ prefix: PREFIX }).key
    const otherPrefix = generateApiKey({ prefix: 'other' })
    source.answer(otherPrefix.hash, record('other'))
    const badChecksum = leaked.key.slice(0, -1) + (leaked.key.endsWith('A') ? 'B' : 'A')
    const lookupsBefore = source.lookups

    const body = report(leaked.key, inactive.key, expired.key, unknown, otherPrefix.key, badChecksum, 'not-a-key')
    const response = await post(app, body)
    assert.equal(response.statusCode, 200, response.body)
    assert.deepEqual(response.json(), [
      { token_hash: sha256(leaked.key), token_type: 'fastify_auth_cache_key', label: 'true_positive' },
      { token_hash: sha256(inactive.key), token_type: 'fastify_auth_cache_key', label: 'false_positive' },
      { token_hash: sha256(expired.key), token_type: 'fastify_auth_cache_key', label: 'false_positive' },
      { token_hash: sha256(unknown), token_type: 'fastify_auth_cache_key', label: 'false_positive' },
      { token_hash: sha256(otherPrefix.key), token_type: 'fastify_auth_cache_key', label: 'false_positive' },
      { token_hash: sha256(badChecksum), token_type: 'fastify_auth_cache_key', label: 'false_positive' },
      { token_hash: sha256('not-a-key'), token_type: 'fastify_auth_cache_key', label: 'false_positive' }
    ])
    // The four well-formed keys were asked about, from the source of truth and not the cache
    // (the leaked key was cached); the other prefix and the malformed tokens were not.
    assert.equal(source.lookups - lookupsBefore, 4)
    assert.equal(source.calls(leaked.hash), 2)
    assert.equal(source.calls(otherPrefix.hash), 0)
    assert.deepEqual(leaks, [{ keyHash: leaked.hash, record: record('leaked'), url: 'https://github.com/o/r/blob/x/f', source: 'content' }])
    assert.equal(await app.apiKeyCache.get(leaked.hash), undefined, 'the leaked key left the cache')
    assert.equal(await status(app, leaked.key), 401, 'the leaked key is refused at once')
  })

  test('the route needs no API key, and the app\'s other routes keep their own JSON parser', async (t) => {
    const { app, source } = await build(t)
    const response = await post(app, '[]')
    assert.equal(response.statusCode, 200)
    assert.deepEqual(response.json(), [])
    const { key } = await cachedKey(app, source, 'client')
    const echo = await app.inject({ method: 'POST', url: '/echo', headers: { 'x-api-key': key }, payload: { a: 1 } })
    assert.deepEqual(echo.json(), { body: { a: 1 }, isBuffer: false })
  })

  test('a key reported twice in one report is revoked once, and both are labelled', async (t) => {
    const { app, source, leaks } = await build(t)
    const leaked = await cachedKey(app, source, 'twice')
    const response = await post(app, report(leaked.key, leaked.key))
    assert.equal(response.statusCode, 200)
    assert.deepEqual(response.json().map((f: { label: string }) => f.label), ['true_positive', 'true_positive'])
    assert.equal(leaks.length, 1)
  })

  test('a missing, malformed or wrong signature is a 401 and nothing is revoked', async (t) => {
    const { app, source, leaks } = await build(t)
    const leaked = await cachedKey(app, source, 'kept')
    const body = report(leaked.key)
    const impostor = new Signer(GITHUB.id)
    const unlisted = new Signer('not-listed')
    const good = GITHUB.headers(body)
    const cases: Array<[string, Record<string, string>, string?]> = [
      ['no signature headers', { 'content-type': 'application/json' }],
      ['no key identifier', { ...good, 'github-public-key-identifier': '' }],
      ['no signature', { ...good, 'github-public-key-signature': '' }],
      ['a signature that is not base64', { ...good, 'github-public-key-signature': '!!!' }],
      ['a signature that is not DER', { ...good, 'github-public-key-signature': Buffer.from('junk').toString('base64') }],
      ['a signature by another key under the listed id', impostor.headers(body)],
      ['a key id GitHub does not list', unlisted.headers(body)],
      ['a signature of another body', GITHUB.headers(report(leaked.key, 'x'))],
      ['a body changed after signing', good, report(leaked.key) + ' ']
    ]
    for (const [what, headers, payload] of cases) {
      const response = await post(app, payload ?? body, headers)
      assert.equal(response.statusCode, 401, what)
      assert.equal(response.json().code, 'FST_SECRET_SCANNING_SIGNATURE_INVALID', what)
    }
    assert.equal(leaks.length, 0)
    assert.ok(await app.apiKeyCache.get(leaked.hash), 'the key is still cached')
    assert.equal(source.calls(leaked.hash), 1, 'no lookup was made for an unsigned report')
  })

  test('a body that is not a JSON array of tokens is a 400', async (t) => {
    const { app, leaks } = await build(t)
    for (const body of ['', 'not json', '{"token":"x"}', '"[]"', 'null', '[1]', '[{"type":"t"}]', '[{"token":"x"}]']) {
      const response = await post(app, body)
      assert.equal(response.statusCode, 400, `body ${JSON.stringify(body)}`)
      assert.equal(response.json().code, 'FST_SECRET_SCANNING_BAD_REPORT')
    }
    assert.equal(leaks.length, 0)
  })

  test('over 1 MiB is a 413, also when the app allows larger bodies; 1,001 tokens are a 413, 1,000 are not', async (t) => {
    const { app, source, leaks } = await build(t, { server: { bodyLimit: 10 * 1024 * 1024 } })
    const leaked = await cachedKey(app, source, 'big')
    const huge = JSON.stringify([{ token: leaked.key, type: 't' }, ...Array.from({ length: 20 }, () => ({ token: 'x'.repeat(60_000), type: 't' }))])
    assert.ok(Buffer.byteLength(huge) > 1024 * 1024)
    const tooBig = await post(app, huge)
    assert.equal(tooBig.statusCode, 413)
    assert.equal(tooBig.json().code, 'FST_ERR_CTP_BODY_TOO_LARGE')

    // The app's own routes keep the app's limit.
    const bigEcho = await app.inject({ method: 'POST', url: '/echo', headers: { 'x-api-key': leaked.key, 'content-type': 'application/json' }, payload: huge })
    assert.equal(bigEcho.statusCode, 200)

    const tokens = (n: number): string => report(...Array.from({ length: n - 1 }, (_, i) => `junk-${i}`), leaked.key)
    const tooMany = await post(app, tokens(1001))
    assert.equal(tooMany.statusCode, 413)
    assert.equal(tooMany.json().code, 'FST_SECRET_SCANNING_TOO_MANY_TOKENS')
    assert.equal(leaks.length, 0)
    assert.ok(await app.apiKeyCache.get(leaked.hash), 'nothing was revoked')

    const justRight = await post(app, tokens(1000))
    assert.equal(justRight.statusCode, 200)
    assert.equal(justRight.json().length, 1000)
    assert.equal(leaks.length, 1)
  })

  test('onLeak throwing is a 500 (GitHub retries), and the key is dropped from the cache all the same', async (t) => {
    const { app, source } = await build(t, {
      scanning: { onLeak: async () => { throw new Error('the database is down') } }
    })
    const leaked = await cachedKey(app, source, 'retry')
    const response = await post(app, report(leaked.key))
    assert.equal(response.statusCode, 500)
    assert.equal(response.json().code, 'FST_SECRET_SCANNING_ON_LEAK_FAILED')
    assert.equal(await app.apiKeyCache.get(leaked.hash), undefined)
    // Still active in the source of truth (onLeak failed), the key is now asked about again.
    assert.equal(await status(app, leaked.key), 200)
    assert.equal(source.calls(leaked.hash), 3)
  })

  test('a lookup that fails or hangs is a 503 within lookupTimeoutMs, and revokes nothing', async (t) => {
    const { app, source, leaks } = await build(t, { apiKeys: { lookupTimeoutMs: 300 } })
    const failing = generateApiKey({ prefix: PREFIX })
    source.answer(failing.hash, new Error('db down'))
    assert.equal((await post(app, report(failing.key))).statusCode, 503)

    const hanging = generateApiKey({ prefix: PREFIX })
    source.answer(hanging.hash, () => new Promise(() => {}))
    const response = await within('a report whose lookup hangs is answered', post(app, report(hanging.key)), 10_000)
    assert.equal(response.statusCode, 503)
    assert.equal(response.json().code, 'FST_API_KEY_LOOKUP_FAILED')
    assert.equal(leaks.length, 0)
  })

  test('a plaintext token never reaches the log, whatever happens', async (t) => {
    const log = new CapturedLog()
    let fail = false
    const { app, source } = await build(t, {
      server: { logger: { level: 'trace', stream: log.stream } },
      scanning: { onLeak: async () => { if (fail) throw new Error('down') } }
    })
    const tokens: string[] = []
    for (let i = 0; i < 3; i++) tokens.push((await cachedKey(app, source, `logged-${i}`)).key)
    const broken = generateApiKey({ prefix: PREFIX })
    source.answer(broken.hash, new Error('db down'))
    tokens.push(broken.key)
    await post(app, report(tokens[0]))
    fail = true
    await post(app, report(tokens[1]))
    await post(app, report(broken.key))
    await post(app, report(tokens[2]), { 'content-type': 'application/json' })
    await post(app, report(tokens[2]).slice(0, -1))
    await app.close()
    assert.ok(log.lines.length > 10)
    for (const token of tokens) assert.ok(!log.text.includes(token.slice(PREFIX.length + 1, PREFIX.length + 17)), 'a token reached the log')
  })
})

/** A stand-in for GitHub's public keys endpoint, counting its requests. */
class KeysEndpoint {
  requests = 0
  keys: Signer[]
  /** 'ok' answers the keys, 'error' a 500, 'hang' never answers. */
  mode: 'ok' | 'error' | 'hang' = 'ok'
  readonly #server: Server
  readonly #hanging = new Set<ServerResponse>()

  constructor (...keys: Signer[]) {
    this.keys = keys
    this.#server = createServer((request: IncomingMessage, response: ServerResponse) => {
      this.requests++
      if (this.mode === 'hang') {
        this.#hanging.add(response)
        return
      }
      if (this.mode === 'error') {
        response.writeHead(500).end('oops')
        return
      }
      // GitHub's answer carries a field or two beyond the ones the plugin reads.
      response.writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ ...publicKeys(...this.keys), extra: true }))
    })
  }

  async start (): Promise<string> {
    this.#server.listen(0, '127.0.0.1')
    await once(this.#server, 'listening')
    return `http://127.0.0.1:${(this.#server.address() as { port: number }).port}/meta/public_keys/secret_scanning`
  }

  async stop (): Promise<void> {
    for (const response of this.#hanging) response.destroy()
    this.#server.closeAllConnections()
    this.#server.close()
    await once(this.#server, 'close')
  }
}

describe('GitHub\'s keys fetched from keysUrl', () => {
  async function withEndpoint (t: TestContext, ...keys: Signer[]): Promise<{ endpoint: KeysEndpoint, keysUrl: string }> {
    const endpoint = new KeysEndpoint(...keys)
    const keysUrl = await endpoint.start()
    t.after(() => endpoint.stop())
    return { endpoint, keysUrl }
  }

  test('nothing is fetched at start, one fetch serves many reports, and an unknown key id is fetched again', async (t) => {
    const { endpoint, keysUrl } = await withEndpoint(t, GITHUB)
    const { app, source, leaks } = await build(t, { scanning: { publicKeys: undefined, keysUrl } })
    assert.equal(endpoint.requests, 0, 'ready() fetched nothing')

    const keys = await Promise.all(Array.from({ length: 10 }, (_, i) => cachedKey(app, source, `many-${i}`)))
    const responses = await Promise.all(keys.map(({ key }) => post(app, report(key))))
    assert.deepEqual(responses.map((r) => r.statusCode), keys.map(() => 200))
    assert.equal(leaks.length, 10)
    assert.equal(endpoint.requests, 1, 'concurrent reports shared one fetch')
    for (const { key } of keys.slice(0, 3)) assert.equal((await post(app, '[]', GITHUB.headers('[]'))).statusCode, 200, key)
    assert.equal(endpoint.requests, 1, 'later reports used the cached keys')

    // GitHub rotates: a new key id is fetched once, even by concurrent reports.
    const rotated = new Signer('github-key-2')
    endpoint.keys = [rotated, GITHUB]
    const leaked = await cachedKey(app, source, 'rotated')
    const afterRotation = await Promise.all([post(app, report(leaked.key), rotated.headers(report(leaked.key))), post(app, '[]', rotated.headers('[]'))])
    assert.deepEqual(afterRotation.map((r) => r.statusCode), [200, 200])
    assert.equal(endpoint.requests, 2)
    assert.equal(await app.apiKeyCache.get(leaked.hash), undefined)

    // An id GitHub does not list either: one fetch, a 401; made-up ids right after fetch nothing.
    const unlisted = new Signer('made-up')
    assert.equal((await post(app, '[]', unlisted.headers('[]'))).statusCode, 401)
    assert.equal(endpoint.requests, 3)
    assert.equal((await post(app, '[]', unlisted.headers('[]', 'made-up-2'))).statusCode, 401)
    assert.equal(endpoint.requests, 3)
    assert.equal((await post(app, '[]', GITHUB.headers('[]'))).statusCode, 200, 'listed keys still verify')
  })

  test('an endpoint that never answers makes the report a 503 within the 5 s bound, not a hang', async (t) => {
    const { endpoint, keysUrl } = await withEndpoint(t, GITHUB)
    endpoint.mode = 'hang'
    const { app, leaks } = await build(t, { scanning: { publicKeys: undefined, keysUrl } })
    const started = performance.now()
    const responses = await within('reports waiting on a hung endpoint are answered',
      Promise.all([post(app, '[]'), post(app, '[]')]), 15_000)
    const elapsed = performance.now() - started
    assert.deepEqual(responses.map((r) => r.statusCode), [503, 503])
    assert.equal(responses[0].json().code, 'FST_SECRET_SCANNING_KEYS_UNAVAILABLE')
    assert.ok(elapsed >= 4900, `answered after ${Math.round(elapsed)} ms, not before the 5 s bound`)
    assert.equal(endpoint.requests, 1, 'the two reports shared one fetch')
    assert.equal(leaks.length, 0)

    // Once the endpoint answers, the next report fetches again and succeeds.
    endpoint.mode = 'ok'
    assert.equal((await post(app, '[]')).statusCode, 200)
    assert.equal(endpoint.requests, 2)
  })

  test('an endpoint that fails is a 503; a hung fetch does not hold app.close()', async (t) => {
    const { endpoint, keysUrl } = await withEndpoint(t, GITHUB)
    endpoint.mode = 'error'
    const { app } = await build(t, { scanning: { publicKeys: undefined, keysUrl } })
    assert.equal((await post(app, '[]')).statusCode, 503)
    endpoint.mode = 'hang'
    const pending = post(app, '[]')
    await until('the fetch reached the endpoint', () => endpoint.requests === 2)
    await within('app.close() with a fetch in flight', app.close(), 3000)
    assert.equal((await pending).statusCode, 503)
  })
})

describe('revocation across processes (tiered backend)', () => {
  const redis = usePrivateRedis()

  test('a key reported to one process is refused by another sharing the Redis', async (t) => {
    const source = new KeySource()
    const reporter = await build(t, { source, redisUrl: redis.server.url })
    const other = await build(t, { source, redisUrl: redis.server.url })
    const leaked = generateApiKey({ prefix: PREFIX })
    source.answer(leaked.hash, record('shared'))
    await until('both processes serve the key from memory', async () => {
      assert.equal(await status(reporter.app, leaked.key), 200)
      assert.equal(await status(other.app, leaked.key), 200)
      const lookups = source.lookups
      assert.equal(await status(other.app, leaked.key), 200)
      return source.lookups === lookups
    })
    // The source of truth still answers "active" here: only the cache revocation can refuse it.
    reporter.leaks.length = 0
    const response = await post(reporter.app, report(leaked.key))
    assert.equal(response.statusCode, 200)
    assert.equal(reporter.leaks.length, 1)
    await until('the other process refuses the key', async () => await status(other.app, leaked.key) === 401)
  })
})

describe('options', () => {
  async function registration (options: unknown, apiKeys: ApiKeysOptions = { lookup: async () => null, format: { prefix: PREFIX } }): Promise<Error> {
    const app = Fastify()
    await app.register(fastifyAuthCache, { apiKeys })
    app.register(secretScanning, options as SecretScanningOptions)
    try {
      await app.ready()
    } catch (err) {
      return err as Error
    } finally {
      await app.close()
    }
    assert.fail('registration did not fail')
  }

  const onLeak = async (): Promise<void> => {}

  test('bad options fail at start with FST_AUTH_CACHE_INVALID_OPTION naming the option', async () => {
    const cases: Array<[unknown, RegExp, ApiKeysOptions?]> = [
      [{ onLeak }, /"prefix"/, { lookup: async () => null }],
      [{}, /"onLeak"/],
      [{ onLeak: 'no' }, /"onLeak"/],
      [{ onLeak, onleak: onLeak }, /"onleak".*did you mean onLeak\?/],
      [{ onLeak, prefix: 'bad prefix' }, /"prefix"/],
      [{ onLeak, path: 'no-slash' }, /"path"/],
      [{ onLeak, keysUrl: 'ftp://example.com/keys' }, /"keysUrl"/],
      [{ onLeak, keysUrl: 'not a url' }, /"keysUrl"/],
      [{ onLeak, keysUrl: 'http://127.0.0.1/', publicKeys: publicKeys(GITHUB) }, /"keysUrl"/],
      [{ onLeak, publicKeys: { public_keys: [{ key_identifier: 'a', key: 'not pem' }] } }, /"publicKeys".*public_keys\[0\]/],
      [{ onLeak, publicKeys: { keys: [] } }, /"publicKeys"/],
      [{ onLeak, publicKeys: publicKeys(GITHUB) }, /"apiKeys.lookup"/, { hook: false }]
    ]
    for (const [options, message, apiKeys] of cases) {
      const err = await registration(options, apiKeys)
      assert.equal((err as { code?: string }).code, 'FST_AUTH_CACHE_INVALID_OPTION', `${JSON.stringify(options)}: ${err.message}`)
      assert.match(err.message, message)
    }
  })

  test('a non-P-256 public key is refused', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }) as string
    const err = await registration({ onLeak, publicKeys: { public_keys: [{ key_identifier: 'r', key: rsa, is_current: true }] } })
    assert.match(err.message, /P-256/)
  })

  test('without fastify-auth-cache, registration fails', async () => {
    const app = Fastify()
    app.register(secretScanning, { onLeak, prefix: PREFIX })
    await assert.rejects(async () => { await app.ready() }, /fastify-auth-cache/)
    await app.close()
  })

  test('the prefix option names the keys, a path option moves the route', async (t) => {
    const source = new KeySource()
    const { app, leaks } = await build(t, {
      source,
      apiKeys: { lookup: source.lookup, format: undefined },
      scanning: { prefix: 'mine', path: '/github/leaks' }
    })
    const leaked = generateApiKey({ prefix: 'mine' })
    source.answer(leaked.hash, record('mine'))
    const body = report(leaked.key, generateApiKey({ prefix: PREFIX }).key)
    assert.equal((await app.inject({ method: 'POST', url: ROUTE, headers: GITHUB.headers(body), payload: body })).statusCode, 401, 'no route there: the hook asks for a key')
    const response = await app.inject({ method: 'POST', url: '/github/leaks', headers: GITHUB.headers(body), payload: body })
    assert.equal(response.statusCode, 200)
    assert.deepEqual(response.json().map((f: { label: string }) => f.label), ['true_positive', 'false_positive'])
    assert.equal(leaks.length, 1)
  })
})
