import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { after, describe, test, type TestContext } from 'node:test'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyAuthCache, { generateApiKey, type ApiKeyRecord, type ApiKeysOptions, type ApiKeyUsage } from '../lib'
import { CapturedLog, LEVEL } from './helpers/captured-log'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { deferred, until } from './helpers/wait'

// CONTRACT section 8: usage reporting through apiKeys.onUsage.

after(() => {
  failIfHeldOpen('usage.test.ts')
})

// Short enough for several flushes per test, long enough that a busy machine keeps them apart.
const FLUSH_MS = 150
const DEADLINE_MS = 15_000

/** How one call to onUsage behaves. */
type Behaviour = 'ok' | 'throw' | 'reject' | 'hang'

interface Received {
  at: number
  batch: ApiKeyUsage[]
  /** For a hanging call: settles it. */
  resolve: () => void
  reject: (err: Error) => void
}

/** The test's onUsage: records every call, behaving as told call by call (then 'ok'). */
class Reporter {
  readonly calls: Received[] = []
  private readonly script: Behaviour[]

  constructor (...script: Behaviour[]) {
    this.script = script
  }

  readonly onUsage = (batch: ApiKeyUsage[]): void | Promise<void> => {
    const behaviour = this.script[this.calls.length] ?? 'ok'
    const settled = deferred()
    // A deep copy of what was handed over, as it was at the call.
    this.calls.push({ at: Date.now(), batch: structuredClone(batch), resolve: () => settled.resolve(), reject: settled.reject })
    if (behaviour === 'throw') throw new Error('usage sink down')
    if (behaviour === 'reject') return Promise.reject(new Error('usage sink refused'))
    if (behaviour === 'hang') return settled.promise
  }

  /** Total count per key hash over every call (or the calls given). */
  totals (calls = this.calls): Map<string, number> {
    const totals = new Map<string, number>()
    for (const { batch } of calls) {
      for (const entry of batch) totals.set(entry.keyHash, (totals.get(entry.keyHash) ?? 0) + entry.count)
    }
    return totals
  }

  async waitForCalls (count: number): Promise<void> {
    await until(`onUsage was called ${count} times`, async () => this.calls.length >= count, DEADLINE_MS)
  }
}

class Keys {
  private readonly records = new Map<string, ApiKeyRecord>()

  add (record: ApiKeyRecord): { key: string, hash: string } {
    const generated = generateApiKey({ prefix: 'usage' })
    this.records.set(generated.hash, record)
    return generated
  }

  readonly lookup: NonNullable<ApiKeysOptions['lookup']> = async (keyHash) => this.records.get(keyHash) ?? null
}

async function build (t: TestContext, reporter: Reporter | undefined, apiKeys: ApiKeysOptions = {},
  keys = new Keys(), log?: CapturedLog): Promise<{ app: FastifyInstance, keys: Keys }> {
  const app = log === undefined ? Fastify() : Fastify({ logger: { level: 'info', stream: log.stream } })
  t.after(() => app.close())
  await app.register(fastifyAuthCache, {
    apiKeys: {
      lookup: keys.lookup,
      ...(reporter !== undefined && { onUsage: reporter.onUsage, usageFlushMs: FLUSH_MS }),
      ...apiKeys
    }
  })
  app.get('/me', (request) => ({ id: request.apiKey.id }))
  app.post('/orders', { config: { apiKey: { scopes: ['orders:write'] } } }, () => 'ok')
  app.get('/open', { config: { apiKey: false } }, () => 'ok')
  await app.ready()
  return { app, keys }
}

async function use (app: FastifyInstance, key: string | undefined, times: number, url = '/me', expected = 200): Promise<void> {
  for (let i = 0; i < times; i++) {
    const res = await app.inject({ method: url === '/orders' ? 'POST' : 'GET', url, headers: key === undefined ? {} : { 'x-api-key': key } })
    assert.equal(res.statusCode, expected, res.body)
  }
}

function entryOf (batch: ApiKeyUsage[], keyHash: string): ApiKeyUsage | undefined {
  return batch.find((entry) => entry.keyHash === keyHash)
}

describe('apiKeys.onUsage', () => {
  test('exact counts of requests that passed authentication and scopes, over several flushes, at most one call per usageFlushMs', async (t) => {
    const reporter = new Reporter()
    const { app, keys } = await build(t, reporter)
    const a = keys.add({ id: 'a', active: true, scopes: ['orders:write'] })
    const b = keys.add({ id: 'b', active: true })
    const c = keys.add({ id: 'c', active: true, scopes: ['orders:read'] })
    const inactive = keys.add({ id: 'off', active: false })
    const unknown = generateApiKey({ prefix: 'usage' })
    const started = Date.now()
    const rounds = 5
    for (let round = 0; round < rounds; round++) {
      const callsBefore = reporter.calls.length
      await use(app, a.key, 12)
      await use(app, a.key, 8, '/orders')
      await use(app, b.key, 7)
      await use(app, c.key, 3)
      // Refused requests and open routes are not uses.
      await use(app, c.key, 2, '/orders', 403)
      await use(app, b.key, 1, '/orders', 403)
      await use(app, unknown.key, 2, '/me', 401)
      await use(app, inactive.key, 1, '/me', 401)
      await use(app, undefined, 1, '/me', 401)
      await use(app, a.key, 2, '/open')
      await reporter.waitForCalls(callsBefore + 1)
    }
    await app.close()
    const ended = Date.now()

    assert.ok(reporter.calls.length >= rounds, `${reporter.calls.length} calls`)
    assert.deepEqual(Object.fromEntries(reporter.totals()), { [a.hash]: 20 * rounds, [b.hash]: 7 * rounds, [c.hash]: 3 * rounds })
    for (const [i, { at, batch }] of reporter.calls.entries()) {
      assert.ok(batch.length > 0, 'no call for an empty batch')
      assert.equal(new Set(batch.map((entry) => entry.keyHash)).size, batch.length, 'one entry per key in a batch')
      for (const entry of batch) {
        assert.deepEqual(Object.keys(entry).sort(), ['count', 'id', 'keyHash', 'lastUsedAt'])
        assert.equal(entry.id, { [a.hash]: 'a', [b.hash]: 'b', [c.hash]: 'c' }[entry.keyHash])
        assert.ok(Number.isInteger(entry.count) && entry.count > 0)
        assert.ok(entry.lastUsedAt >= started && entry.lastUsedAt <= at, 'lastUsedAt is the epoch ms of a use before the call')
      }
      // The last call is the close flush; the others come from the timer.
      if (i > 0 && i < reporter.calls.length - 1) {
        assert.ok(at - reporter.calls[i - 1]!.at >= FLUSH_MS - 2, `calls ${i - 1} and ${i} were ${at - reporter.calls[i - 1]!.at} ms apart`)
      }
    }
    assert.ok(reporter.calls.at(-1)!.at <= ended)
    const everything = JSON.stringify(reporter.calls.map((call) => call.batch))
    for (const key of [a.key, b.key, c.key]) assert.ok(!everything.includes(key), 'never a plaintext key')
    assert.equal(app.apiKeyCache.stats().usageDropped, 0)
  })

  test('two apps (as two processes) report their own uses, independently', async (t) => {
    const keys = new Keys()
    const a = keys.add({ id: 'shared', active: true })
    const first = new Reporter()
    const second = new Reporter()
    const one = await build(t, first, {}, keys)
    const two = await build(t, second, {}, keys)
    await use(one.app, a.key, 10)
    await use(two.app, a.key, 4)
    await first.waitForCalls(1)
    await use(one.app, a.key, 1)
    await Promise.all([one.app.close(), two.app.close()])
    assert.deepEqual(Object.fromEntries(first.totals()), { [a.hash]: 11 })
    assert.deepEqual(Object.fromEntries(second.totals()), { [a.hash]: 4 })
  })

  for (const failure of ['throw', 'reject'] as const) {
    test(`a callback that ${failure}s: warned, and its batch arrives merged into the next call`, async (t) => {
      const log = new CapturedLog()
      const reporter = new Reporter(failure)
      const { app, keys } = await build(t, reporter, {}, new Keys(), log)
      const a = keys.add({ id: 'a', active: true })
      const b = keys.add({ id: 'b', active: true })
      await use(app, a.key, 5)
      await use(app, b.key, 2)
      await reporter.waitForCalls(2)
      await app.close()
      // The uses may straddle a flush; whatever the failed call held is in the next one, whole.
      const [failed, next] = reporter.calls
      for (const entry of failed!.batch) {
        const merged = entryOf(next!.batch, entry.keyHash)
        assert.ok(merged !== undefined && merged.count >= entry.count, `${entry.id} is merged into the next call`)
        assert.ok(merged.lastUsedAt >= entry.lastUsedAt)
      }
      assert.deepEqual(Object.fromEntries(reporter.totals(reporter.calls.slice(1))), { [a.hash]: 5, [b.hash]: 2 })
      const warnings = log.at(LEVEL.warn).filter((line) => /onUsage failed/.test(line.msg ?? ''))
      assert.equal(warnings.length, 1, log.text)
      assert.ok(!log.text.includes(a.key))
    })
  }

  test('a failure settling after new uses: counts added, the latest use kept; no call overlaps the running one', async (t) => {
    const log = new CapturedLog()
    const reporter = new Reporter('hang')
    const { app, keys } = await build(t, reporter, {}, new Keys(), log)
    const a = keys.add({ id: 'a', active: true })
    const b = keys.add({ id: 'b', active: true })
    const c = keys.add({ id: 'c', active: true })
    await use(app, a.key, 5)
    await use(app, b.key, 2)
    await reporter.waitForCalls(1)
    const firstLastUse = entryOf(reporter.calls[0]!.batch, a.hash)!.lastUsedAt
    await use(app, a.key, 3)
    await use(app, c.key, 1)
    // Several intervals pass while the first call runs: no second call, a warning.
    await until('the running call is warned about', async () =>
      log.at(LEVEL.warn).some((line) => /has not settled within usageFlushMs/.test(line.msg ?? '')), DEADLINE_MS)
    await new Promise((resolve) => setTimeout(resolve, FLUSH_MS * 3))
    assert.equal(reporter.calls.length, 1, 'no call while the previous one runs')
    reporter.calls[0]!.reject(new Error('timed out at last'))
    await reporter.waitForCalls(2)
    const next = reporter.calls[1]!
    assert.deepEqual(Object.fromEntries(reporter.totals([next])), { [a.hash]: 8, [b.hash]: 2, [c.hash]: 1 })
    assert.ok(entryOf(next.batch, a.hash)!.lastUsedAt >= firstLastUse)
    assert.ok(next.at - reporter.calls[0]!.at >= FLUSH_MS)
  })

  test('a hanging callback never delays a request; a late success is not reported again', async (t) => {
    const log = new CapturedLog()
    const reporter = new Reporter('hang')
    const { app, keys } = await build(t, reporter, {}, new Keys(), log)
    const a = keys.add({ id: 'a', active: true })
    await use(app, a.key, 4)
    await reporter.waitForCalls(1)
    // Requests go on as usual for several intervals while onUsage hangs.
    const until = Date.now() + FLUSH_MS * 4
    let served = 0
    while (Date.now() < until) {
      const started = performance.now()
      await use(app, a.key, 1)
      // A generous bound: a busy machine stalls, a request waiting for onUsage would never end.
      assert.ok(performance.now() - started < 2000)
      served++
    }
    assert.equal(reporter.calls.length, 1)
    // It succeeds late: its uses are not sent again, only those that came after it.
    reporter.calls[0]!.resolve()
    await reporter.waitForCalls(2)
    await app.close()
    assert.deepEqual(Object.fromEntries(reporter.totals()), { [a.hash]: 4 + served })
  })

  test('close while a call hangs: close is bounded, and the last call holds the hanging batch and the rest', async (t) => {
    const log = new CapturedLog()
    const reporter = new Reporter('hang', 'ok')
    const { app, keys } = await build(t, reporter, {}, new Keys(), log)
    const a = keys.add({ id: 'a', active: true })
    const b = keys.add({ id: 'b', active: true })
    await use(app, a.key, 3)
    await reporter.waitForCalls(1)
    await use(app, a.key, 2)
    await use(app, b.key, 1)
    const closing = performance.now()
    await app.close()
    assert.ok(performance.now() - closing < 5000, 'close waits a bounded time for the hanging call')
    assert.equal(reporter.calls.length, 2)
    assert.deepEqual(Object.fromEntries(reporter.totals([reporter.calls[1]!])), { [a.hash]: 5, [b.hash]: 1 })
    assert.ok(log.at(LEVEL.warn).some((line) => /did not settle before close/.test(line.msg ?? '')), log.text)
  })

  test('close flushes the last batch (default usageFlushMs: no timer call in between), and makes no call for nothing', async (t) => {
    const reporter = new Reporter()
    const { app, keys } = await build(t, undefined, { onUsage: reporter.onUsage })
    const a = keys.add({ id: 'a', active: true })
    await use(app, a.key, 7)
    await new Promise((resolve) => setTimeout(resolve, 300))
    assert.equal(reporter.calls.length, 0, 'the default interval is a minute')
    await app.close()
    assert.equal(reporter.calls.length, 1)
    assert.deepEqual(reporter.calls[0]!.batch.map(({ keyHash, id, count }) => ({ keyHash, id, count })), [{ keyHash: a.hash, id: 'a', count: 7 }])

    const idle = new Reporter()
    const quiet = await build(t, undefined, { onUsage: idle.onUsage })
    await quiet.app.close()
    assert.equal(idle.calls.length, 0)
  })

  test('a flood of distinct keys holds at most apiKeys.max between calls; the rest is counted in usageDropped', async (t) => {
    const reporter = new Reporter()
    const { app, keys } = await build(t, undefined, { onUsage: reporter.onUsage, max: 20 })
    const first = keys.add({ id: 'first', active: true })
    await use(app, first.key, 1)
    const flood = Array.from({ length: 100 }, (_, i) => keys.add({ id: `k${i}`, active: true }))
    for (const { key } of flood) await use(app, key, 1)
    // A key already held goes on counting.
    await use(app, first.key, 9)
    assert.equal(app.apiKeyCache.stats().usageDropped, 81)
    await app.close()
    const [only] = reporter.calls
    assert.equal(only!.batch.length, 20)
    assert.equal(entryOf(only!.batch, first.hash)!.count, 10)
    assert.deepEqual(only!.batch.filter((entry) => entry.keyHash !== first.hash).map((entry) => entry.id),
      flood.slice(0, 19).map((_, i) => `k${i}`))
  })

  test('a failed batch merged back stays within apiKeys.max; what does not fit is counted in usageDropped', async (t) => {
    const reporter = new Reporter('hang')
    const { app, keys } = await build(t, reporter, { max: 10 })
    const old = Array.from({ length: 10 }, (_, i) => keys.add({ id: `old${i}`, active: true }))
    for (const { key } of old) await use(app, key, 2)
    await reporter.waitForCalls(1)
    const fresh = Array.from({ length: 10 }, (_, i) => keys.add({ id: `new${i}`, active: true }))
    for (const { key } of fresh) await use(app, key, 1)
    await use(app, old[0]!.key, 1)
    reporter.calls[0]!.reject(new Error('down'))
    await reporter.waitForCalls(2)
    await app.close()
    const uses = 10 * 2 + 10 + 1
    for (const { batch } of reporter.calls) assert.ok(batch.length <= 10, `a batch of ${batch.length} keys`)
    const { usageDropped } = app.apiKeyCache.stats()
    assert.ok(usageDropped > 0)
    // Nothing is lost silently: every use was either reported (the failed call aside) or counted as dropped.
    const reported = [...reporter.totals(reporter.calls.slice(1)).values()].reduce((sum, n) => sum + n, 0)
    assert.equal(reported + usageDropped, uses)
  })

  test('without onUsage nothing is counted', async (t) => {
    const { app, keys } = await build(t, undefined, { max: 1 })
    for (let i = 0; i < 3; i++) await use(app, keys.add({ id: `k${i}`, active: true }).key, 1)
    assert.equal(app.apiKeyCache.stats().usageDropped, 0)
  })

  test('verifyApiKey counts the requests it accepts', async (t) => {
    const reporter = new Reporter()
    const keys = new Keys()
    const app = Fastify()
    t.after(() => app.close())
    await app.register(fastifyAuthCache, { apiKeys: { hook: false, lookup: keys.lookup, onUsage: reporter.onUsage } })
    app.get('/guarded', { onRequest: app.verifyApiKey, config: { apiKey: { scopes: ['x'] } } }, () => 'ok')
    const a = keys.add({ id: 'a', active: true, scopes: ['x'] })
    const b = keys.add({ id: 'b', active: true })
    await use(app, a.key, 3, '/guarded')
    await use(app, b.key, 2, '/guarded', 403)
    await app.close()
    assert.deepEqual(Object.fromEntries(reporter.totals()), { [a.hash]: 3 })
  })

  test('a request checked by the hook and by verifyApiKey on its route counts once', async (t) => {
    const reporter = new Reporter()
    const keys = new Keys()
    const app = Fastify()
    t.after(() => app.close())
    await app.register(fastifyAuthCache, { apiKeys: { lookup: keys.lookup, onUsage: reporter.onUsage } })
    app.get('/twice', { onRequest: app.verifyApiKey, config: { apiKey: { scopes: ['x'] } } }, () => 'ok')
    const a = keys.add({ id: 'a', active: true, scopes: ['x'] })
    const b = keys.add({ id: 'b', active: true })
    await use(app, a.key, 4, '/twice')
    await use(app, b.key, 1, '/twice', 403)
    await app.close()
    assert.deepEqual(Object.fromEntries(reporter.totals()), { [a.hash]: 4 })
    assert.equal(app.apiKeyCache.stats().rejections.forbidden, 1)
    assert.equal(app.apiKeyCache.stats().hits, 3)
  })

  const invalid: Array<[string, Record<string, unknown>]> = [
    ['apiKeys.onUsage', { onUsage: 'console.log' }],
    ['apiKeys.onUsage', { onUsage: {} }],
    ['apiKeys.usageFlushMs', { usageFlushMs: 0 }],
    ['apiKeys.usageFlushMs', { usageFlushMs: -1000 }],
    ['apiKeys.usageFlushMs', { usageFlushMs: Number.NaN }],
    ['apiKeys.usageFlushMs', { usageFlushMs: Number.POSITIVE_INFINITY }],
    ['apiKeys.usageFlushMs', { usageFlushMs: '60000' }],
    ['apiKeys.usageFlushMs', { usageFlushMs: 2 ** 31 }]
  ]
  for (const [name, options] of invalid) {
    test(`${name} = ${String(Object.values(options)[0])} → FST_AUTH_CACHE_INVALID_OPTION naming it`, async (t) => {
      const app = Fastify()
      t.after(() => app.close())
      app.register(fastifyAuthCache, { apiKeys: { lookup: async () => null, ...options } as ApiKeysOptions })
      await assert.rejects(async () => { await app.ready() }, (err: { code?: string, message: string }) => {
        assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
        assert.ok(err.message.includes(name), err.message)
        return true
      })
    })
  }

  test('the flush timer never keeps a process alive', async () => {
    const script = `
      const Fastify = require('fastify')
      const { fastifyAuthCache } = require(${JSON.stringify(join(__dirname, '..', 'lib'))})
      const app = Fastify()
      app.register(fastifyAuthCache, { apiKeys: { lookup: async () => null, onUsage: () => {}, usageFlushMs: 10 } })
      app.ready().then(() => { process.stdout.write('ready') })`
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '-e', script], { timeout: 30_000 })
    assert.equal(stdout, 'ready', 'the process exited on its own without close()')
  })
})
