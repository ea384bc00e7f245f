import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, describe, test, type TestContext } from 'node:test'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyAuthCache, { generateApiKey, type ApiKeyRecord } from '../lib'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { usePrivateRedis } from './helpers/redis-server'

// CONTRACT section 2: registration order does not matter. A route's config.apiKey is honoured
// whether the route was declared after `await app.register(plugin)` or before the plugin loaded
// (CommonJS style, register without await); a bad one is an error at start.

const redis = usePrivateRedis()
let apps = 0

after(() => {
  failIfHeldOpen('registration-order.test.ts')
})

/** A source of truth with one reader key (scope 'reports:read') and one key without scopes. */
function keys (): { lookup: (hash: string) => Promise<ApiKeyRecord | null>, reader: string, plain: string } {
  const records = new Map<string, ApiKeyRecord>()
  const reader = generateApiKey({ prefix: 'order' })
  const plain = generateApiKey({ prefix: 'order' })
  records.set(reader.hash, { id: 'reader', active: true, scopes: ['reports:read'] })
  records.set(plain.hash, { id: 'plain', active: true })
  return { lookup: async (hash) => structuredClone(records.get(hash)) ?? null, reader: reader.key, plain: plain.key }
}

function declareRoutes (app: FastifyInstance): void {
  app.get('/health', { config: { apiKey: false } }, async () => ({ ok: true }))
  app.get('/me', async (request) => ({ id: request.apiKey.id }))
  app.get('/reports', { config: { apiKey: { scopes: ['reports:read'] } } }, async (request) => ({ id: request.apiKey.id }))
}

async function statuses (app: FastifyInstance, reader: string, plain: string): Promise<Record<string, number>> {
  const status = async (url: string, key?: string): Promise<number> =>
    (await app.inject({ url, headers: key === undefined ? {} : { 'x-api-key': key } })).statusCode
  return {
    health: await status('/health'),
    meWithoutKey: await status('/me'),
    meWithKey: await status('/me', plain),
    reportsWithoutScope: await status('/reports', plain),
    reportsWithScope: await status('/reports', reader)
  }
}

const EXPECTED = { health: 200, meWithoutKey: 401, meWithKey: 200, reportsWithoutScope: 403, reportsWithScope: 200 }

type Order = 'after await register' | 'after register without await' | 'before register' | 'in a plugin registered before'

async function declareIn (order: Order, app: FastifyInstance, register: () => unknown): Promise<void> {
  switch (order) {
    case 'after await register':
      await register()
      declareRoutes(app)
      break
    case 'after register without await':
      register()
      declareRoutes(app)
      break
    case 'before register':
      declareRoutes(app)
      register()
      break
    case 'in a plugin registered before':
      app.register(async (child) => declareRoutes(child))
      register()
      break
  }
}

const ORDERS: Order[] = ['after await register', 'after register without await', 'before register', 'in a plugin registered before']

for (const backend of ['memory', 'tiered'] as const) {
  describe(`${backend} backend`, () => {
    for (const order of ORDERS) {
      test(`routes declared ${order}: opt-out, authentication and scopes all hold`, async (t: TestContext) => {
        const app = Fastify()
        const client = backend === 'memory' ? undefined : redis.server.client()
        t.after(async () => {
          await app.close()
          client?.disconnect()
        })
        const { lookup, reader, plain } = keys()
        await declareIn(order, app, () => app.register(fastifyAuthCache, {
          backend, strict: true, redis: client, redisTimeoutMs: 2000, apiKeys: { lookup, keyPrefix: `order-${++apps}:` }
        }))
        await app.ready()
        assert.deepEqual(await statuses(app, reader, plain), EXPECTED)
      })
    }
  })
}

const INVALID: Array<[string, unknown]> = [
  ['a typo (scope)', { scope: ['reports:read'] }],
  ['a string', 'reports:read'],
  ['a scope with a space', { scopes: ['reports read'] }]
]

for (const order of ORDERS.filter((o) => o !== 'after await register')) {
  for (const [what, apiKey] of INVALID) {
    test(`a route declared ${order} with ${what} as config.apiKey fails ready() naming the route`, async (t) => {
      const app = Fastify()
      t.after(() => app.close())
      await declareIn(order, app, () => {
        app.register(fastifyAuthCache, { apiKeys: { lookup: async () => null } })
      })
      app.get('/bad', { config: { apiKey: apiKey as never } }, async () => 'never served')
      await assert.rejects(async () => { await app.ready() }, (err: unknown) => {
        const { code, message } = err as Error & { code?: string }
        assert.equal(code, 'FST_AUTH_CACHE_INVALID_OPTION', message)
        assert.match(message, /config\.apiKey/)
        assert.match(message, /GET \/bad/)
        return true
      })
    })
  }
}

test('a route declared before the plugin has its config.apiKey read once, not on every request', async (t) => {
  const app = Fastify()
  t.after(() => app.close())
  const { lookup, reader } = keys()
  let reads = 0
  // Counts every read of the settings' one property: reading the settings again would show.
  const apiKey = new Proxy({ scopes: ['reports:read'] }, {
    get (target, property, receiver) {
      if (property === 'scopes') reads++
      return Reflect.get(target, property, receiver)
    }
  })
  app.register(fastifyAuthCache, { apiKeys: { lookup } })
  app.get('/reports', { config: { apiKey } }, async () => 'ok')
  await app.ready()
  const first = await app.inject({ url: '/reports', headers: { 'x-api-key': reader } })
  assert.equal(first.statusCode, 200)
  const readsAfterFirst = reads
  for (let i = 0; i < 5; i++) {
    assert.equal((await app.inject({ url: '/reports', headers: { 'x-api-key': reader } })).statusCode, 200)
  }
  assert.equal(reads, readsAfterFirst)
})

test('an application created before the package was loaded: opt-out and scopes still hold, a bad config.apiKey fails its requests closed', async () => {
  const execFileAsync = promisify(execFile)
  const root = resolve(__dirname, '..')
  const { stdout } = await execFileAsync(process.execPath, [join(__dirname, 'fixtures', 'app-before-package.cjs'), root], { timeout: 60_000 })
  assert.deepEqual(JSON.parse(stdout), { ready: true, health: 200, me: 401, bad: 500 })
})
