import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import diagnostics from 'node:diagnostics_channel'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { promisify } from 'node:util'
import type { ResourceMetrics } from '@opentelemetry/sdk-metrics'
import Fastify from 'fastify'
import fastifyAuthCache, { hashApiKey } from '../lib'
import { buildApp, call, newKey, newPrefix } from './helpers/api-key-cache-contract'
import { KeySource, record } from './helpers/key-source'
import { usePrivateRedis } from './helpers/redis-server'
import { subscribe, useGlobalMeterProvider } from './helpers/telemetry'
import { until } from './helpers/wait'

/** CONTRACT section 11: diagnostics_channel messages and OpenTelemetry instruments. */

const redis = usePrivateRedis()

describe('diagnostics_channel', () => {
  test('fastify-auth-cache:authenticate reports every outcome, with the hash and never the key', async (t) => {
    const source = new KeySource()
    // A TTL long enough for the "miss then hit" pair to fall within it on a busy machine.
    const app = await buildApp(t, { backend: 'memory' }, { source, apiKeys: { lookupTimeoutMs: 200, staleIfErrorSeconds: 30, ttlSeconds: 1 } })
    const [good, unknown, inactive, expired, failing, stale] = Array.from({ length: 6 }, newKey)
    source.answer(hashApiKey(good), record('good'))
    source.answer(hashApiKey(inactive), record('inactive', { active: false }))
    source.answer(hashApiKey(expired), record('expired', { expiresAt: Date.now() - 1 }))
    source.answer(hashApiKey(failing), new Error('down'))
    source.answer(hashApiKey(stale), record('stale'))
    assert.equal((await call(app, stale)).status, 200)
    source.answer(hashApiKey(stale), new Error('down'))
    await until('the stale key left its fresh life', async () => (await app.apiKeyCache.get(hashApiKey(stale))) === undefined)

    const { messages, stop } = subscribe('fastify-auth-cache:authenticate')
    t.after(stop)
    const expected: Array<[string | undefined, string]> = [
      [undefined, 'missing'], ['x'.repeat(2000), 'malformed'], [good, 'miss'], [good, 'hit'], [unknown, 'unknown'],
      [unknown, 'unknown'], [inactive, 'inactive'], [expired, 'expired'], [failing, 'lookup-failed'], [stale, 'stale']
    ]
    for (const [key] of expected) await call(app, key)
    assert.deepEqual(messages.map((m) => m.outcome), expected.map(([, outcome]) => outcome))
    for (const [i, message] of messages.entries()) {
      const key = expected[i][0]
      assert.equal(message.backend, 'memory')
      assert.ok(typeof message.durationMs === 'number' && message.durationMs >= 0)
      if (message.outcome === 'missing' || message.outcome === 'malformed') assert.equal('keyHash' in message, false)
      else assert.equal(message.keyHash, hashApiKey(key!))
      assert.ok(!JSON.stringify(message).includes(key ?? '\u0000'), 'no plaintext key')
    }
  })

  test('fastify-auth-cache:lookup reports each lookup with its duration and success', async (t) => {
    const source = new KeySource()
    const app = await buildApp(t, { backend: 'memory' }, { source })
    const [good, failing] = [newKey(), newKey()]
    source.answer(hashApiKey(good), record('good'))
    source.answer(hashApiKey(failing), new Error('down'))
    const { messages, stop } = subscribe('fastify-auth-cache:lookup')
    t.after(stop)
    await call(app, good)
    await call(app, good)
    await call(app, failing)
    assert.deepEqual(messages.map((m) => [m.keyHash, m.ok]), [[hashApiKey(good), true], [hashApiKey(failing), false]])
    for (const message of messages) assert.ok(message.durationMs >= 0)
  })

  test('fastify-auth-cache:invalidation reports deletes, clears and changes of trust received by a tiered process', async (t) => {
    const fixture = { backend: 'tiered' as const, createClient: () => redis.server.client({ maxRetriesPerRequest: 3 }), inspect: () => redis.admin }
    const keyPrefix = newPrefix('diag')
    const [a, b] = [await buildApp(t, fixture, { apiKeys: { keyPrefix } }), await buildApp(t, fixture, { apiKeys: { keyPrefix } })]
    const { messages, stop } = subscribe('fastify-auth-cache:invalidation')
    t.after(stop)
    const hash = hashApiKey(newKey())
    await a.apiKeyCache.delete(hash)
    await a.apiKeyCache.clear()
    await until('b heard both', () => messages.length >= 2)
    assert.deepEqual(messages.slice(0, 2), [{ kind: 'delete', keyHash: hash }, { kind: 'clear' }])
    assert.equal(b.apiKeyCache.stats().invalidations, 2)
    // Dropping b's subscriber connection: trust is lost, then regained.
    await redis.admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
    await until('trust lost and regained', () =>
      messages.some((m) => m.kind === 'trust-lost') && messages.some((m) => m.kind === 'trust-regained'), 10_000)
  })

  test('nothing is published, and no clock is read, without subscribers', async (t) => {
    const source = new KeySource()
    const app = await buildApp(t, { backend: 'memory' }, { source })
    const key = newKey()
    source.answer(hashApiKey(key), record('quiet'))
    const channel = diagnostics.channel('fastify-auth-cache:authenticate')
    assert.equal(channel.hasSubscribers, false)
    const realNow = performance.now
    let reads = 0
    performance.now = () => { reads++; return realNow.call(performance) }
    try {
      await call(app, key)
      reads = 0
      for (let i = 0; i < 50; i++) await call(app, key)
    } finally {
      performance.now = realNow
    }
    // Whatever else reads the clock per request, the hook adds no read of its own unless watched.
    const perRequest = reads / 50
    const app2 = await buildApp(t, { backend: 'memory' }, { source })
    await call(app2, key)
    const { stop } = subscribe('fastify-auth-cache:authenticate')
    let watchedReads = 0
    performance.now = () => { watchedReads++; return realNow.call(performance) }
    try {
      for (let i = 0; i < 50; i++) await call(app2, key)
    } finally {
      performance.now = realNow
      stop()
    }
    assert.ok(watchedReads / 50 >= perRequest + 2, `watched: ${watchedReads / 50} clock reads per request, unwatched: ${perRequest}`)
  })
})

describe('OpenTelemetry metrics', () => {
  test('metrics: true records requests, lookup durations, invalidations and entries on the global meter provider', async (t) => {
    const { exporter, reader } = useGlobalMeterProvider(t)
    const fixture = { backend: 'tiered' as const, createClient: () => redis.server.client({ maxRetriesPerRequest: 3 }), inspect: () => redis.admin }
    const keyPrefix = newPrefix('otel')
    const source = new KeySource()
    const client = fixture.createClient()
    t.after(() => client.quit())
    const app = Fastify()
    t.after(() => app.close())
    await app.register(fastifyAuthCache, { backend: 'tiered', redis: client, metrics: true, apiKeys: { keyPrefix, lookup: source.lookup } })
    app.get('/', async (request) => request.apiKey)
    await app.ready()
    const other = await buildApp(t, fixture, { apiKeys: { keyPrefix } })

    const key = newKey()
    source.answer(hashApiKey(key), record('m'))
    await call(app, key)
    await call(app, key)
    await call(app, newKey())
    await other.apiKeyCache.delete(hashApiKey(newKey()))
    await until('the delete was received', () => app.apiKeyCache.stats().invalidations === 1)

    await reader.forceFlush()
    const exported: ResourceMetrics[] = exporter.getMetrics()
    const byName = new Map<string, any>()
    for (const resource of exported) {
      for (const scope of resource.scopeMetrics) {
        assert.equal(scope.scope.name, 'fastify-auth-cache')
        for (const metric of scope.metrics) byName.set(metric.descriptor.name, metric)
      }
    }
    const requests = byName.get('fastify_auth_cache.requests')
    const counts = Object.fromEntries(requests.dataPoints.map((p: any) => [`${p.attributes.outcome}/${p.attributes.backend}`, p.value]))
    assert.deepEqual(counts, { 'miss/tiered': 1, 'hit/tiered': 1, 'unknown/tiered': 1 })
    const durations = byName.get('fastify_auth_cache.lookup.duration')
    assert.equal(durations.dataPoints[0].value.count, 2)
    const invalidations = byName.get('fastify_auth_cache.invalidations')
    assert.ok(invalidations.dataPoints.some((p: any) => p.attributes.kind === 'delete' && p.value === 1))
    const entries = byName.get('fastify_auth_cache.entries')
    assert.equal(entries.dataPoints[0].value, 2, 'a record and an unknown key in process memory')
  })

  test('without metrics: true nothing is recorded', async (t) => {
    const { exporter, reader } = useGlobalMeterProvider(t)
    const source = new KeySource()
    const app = await buildApp(t, { backend: 'memory' }, { source })
    await call(app, newKey())
    await reader.forceFlush()
    const names = exporter.getMetrics().flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics.map((m) => m.descriptor.name)))
    assert.deepEqual(names, [])
  })

  test('metrics: true without @opentelemetry/api installed fails at registration with FST_AUTH_CACHE_INVALID_OPTION', async () => {
    const script = `
      const Module = require('node:module')
      const resolve = Module._resolveFilename
      Module._resolveFilename = function (request, ...rest) {
        if (request === '@opentelemetry/api') { const err = new Error('not found'); err.code = 'MODULE_NOT_FOUND'; throw err }
        return resolve.call(this, request, ...rest)
      }
      const Fastify = require('fastify')
      const plugin = require(${JSON.stringify(join(__dirname, '..', 'dist', 'index.js'))})
      const app = Fastify()
      app.register(plugin, { metrics: true, apiKeys: { lookup: () => null } })
      app.ready().then(() => console.log('ready'), (err) => console.log(err.code, err.message))
    `
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { cwd: join(__dirname, '..') })
    assert.match(stdout, /^FST_AUTH_CACHE_INVALID_OPTION .*metrics.*@opentelemetry\/api/)
  })
})
