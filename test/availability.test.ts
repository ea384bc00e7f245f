import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type Redis from 'ioredis'
import { hashApiKey } from '../lib'
import { buildApp, call, newKey, newPrefix, type ApiKeyCacheContractFixture } from './helpers/api-key-cache-contract'
import { KeySource, record } from './helpers/key-source'
import { usePrivateRedis } from './helpers/redis-server'
import { deferred, until } from './helpers/wait'

/**
 * CONTRACT section 9 on every backend: a bounded lookup, stale-if-error, refresh-ahead. The
 * windows are short so that the test runs in seconds; every assertion waits for a condition with
 * a generous deadline, so a busy machine only makes it slower.
 */

const redis = usePrivateRedis()
const createClient = (): Redis => redis.server.client({ maxRetriesPerRequest: 3 })
const FIXTURES: ApiKeyCacheContractFixture[] = [
  { backend: 'memory' },
  { backend: 'redis', createClient, inspect: () => redis.admin },
  { backend: 'tiered', createClient, inspect: () => redis.admin }
]
const options = { timeout: 60_000 }

/** Ways a source of truth fails. */
const FAILURES: Record<string, () => unknown> = {
  throws: () => new Error('database down'),
  rejects: () => Promise.reject(new Error('database down')),
  hangs: () => new Promise(() => {})
}

for (const fixture of FIXTURES) {
  describe(`availability when lookup fails: ${fixture.backend}`, () => {
    const shared = fixture.backend !== 'memory'

    test('a hanging lookup answers 503 within lookupTimeoutMs, counts as a lookup error, and its late answer is not cached', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix: newPrefix('hang'), lookupTimeoutMs: 300 } })
      const key = newKey()
      const late = deferred<unknown>()
      source.answer(hashApiKey(key), () => late.promise)
      const started = performance.now()
      const reply = await call(app, key)
      const tookMs = performance.now() - started
      assert.equal(reply.status, 503)
      assert.equal(reply.code, 'FST_API_KEY_LOOKUP_FAILED')
      assert.ok(tookMs >= 290, `answered after ${tookMs.toFixed(0)} ms, before the timeout`)
      // Generous: a busy machine may be late to run the timer, never early.
      assert.ok(tookMs < 300 + 2000, `answered after ${tookMs.toFixed(0)} ms`)
      assert.equal(app.apiKeyCache.stats().lookupErrors, 1)

      // The late answer arrives after the request gave up: it is dropped, never cached.
      late.resolve(record('late'))
      await sleep(50)
      assert.equal(await app.apiKeyCache.get(hashApiKey(key)), undefined)
      source.answer(hashApiKey(key), record('late', { active: false }))
      assert.equal((await call(app, key)).status, 401)
    })

    for (const [how, failure] of Object.entries(FAILURES)) {
      test(`lookup that ${how}: known keys are served stale for staleIfErrorSeconds, then 503; unknown keys never 200`, options, async (t) => {
        const source = new KeySource()
        const app = await buildApp(t, fixture, {
          source,
          apiKeys: { keyPrefix: newPrefix('stale'), ttlSeconds: 0.5, negativeTtlSeconds: 0.5, staleIfErrorSeconds: 1.5, lookupTimeoutMs: 200 }
        })
        const known = newKey()
        const unknown = newKey()
        const inactive = newKey()
        source.answer(hashApiKey(known), record('known'))
        source.answer(hashApiKey(inactive), record('inactive', { active: false }))
        assert.equal((await call(app, known)).status, 200)
        assert.equal((await call(app, unknown)).status, 401)
        assert.equal((await call(app, inactive)).status, 401)
        const cachedAt = performance.now()

        // The database goes down.
        for (const key of [known, unknown, inactive]) source.answer(hashApiKey(key), failure)
        const statuses = new Set<number>()
        // Through the fresh life and the stale window: the known key keeps answering 200.
        let staleSeen = false
        while (performance.now() - cachedAt < 1200) {
          const reply = await call(app, known)
          assert.equal(reply.status, 200, `known key at ${(performance.now() - cachedAt).toFixed(0)} ms`)
          assert.equal(reply.body.id, 'known')
          if (app.apiKeyCache.stats().staleServed > 0) staleSeen = true
          for (const key of [unknown, inactive]) statuses.add((await call(app, key)).status)
          await sleep(25)
        }
        assert.ok(staleSeen, 'a stale record was served')
        assert.ok(!statuses.has(200), `unknown or inactive keys answered ${[...statuses].join(',')}`)
        for (const status of statuses) assert.ok(status === 401 || status === 503)

        // After the stale window: 503.
        await until('the stale window is over', async () => (await call(app, known)).status === 503, 10_000)
        assert.ok(performance.now() - cachedAt >= 1800, `503 after ${(performance.now() - cachedAt).toFixed(0)} ms, before the stale window ended`)
        assert.ok(app.apiKeyCache.stats().lookupErrors > 0)

        // The database is back: normal service.
        source.answer(hashApiKey(known), record('known'))
        assert.equal((await call(app, known)).status, 200)
      })
    }

    test('a key deleted during the outage is refused at once and never served stale' + (shared ? ', in two processes' : ''), options, async (t) => {
      const keyPrefix = newPrefix('revoke')
      const source = new KeySource()
      const settings = { source, apiKeys: { keyPrefix, ttlSeconds: 0.3, staleIfErrorSeconds: 30, lookupTimeoutMs: 200 } }
      const apps = [await buildApp(t, fixture, settings)]
      if (shared) apps.push(await buildApp(t, fixture, settings))
      const revoked = newKey()
      const kept = newKey()
      source.answer(hashApiKey(revoked), record('revoked'))
      source.answer(hashApiKey(kept), record('kept'))
      for (const app of apps) {
        assert.equal((await call(app, revoked)).status, 200)
        assert.equal((await call(app, kept)).status, 200)
      }
      source.answer(hashApiKey(revoked), FAILURES.throws)
      source.answer(hashApiKey(kept), FAILURES.throws)
      // Past the fresh life: both are served stale now.
      await until('the records are stale', async () => {
        await call(apps[0], kept)
        return apps[0].apiKeyCache.stats().staleServed > 0
      })
      for (const app of apps) assert.equal((await call(app, revoked)).status, 200, 'served stale before the revocation')

      await apps[0].apiKeyCache.delete(hashApiKey(revoked))
      // In this process at once; in the other within the contract's bound, and then for good.
      assert.notEqual((await call(apps[0], revoked)).status, 200)
      if (shared) await until('the other process refuses the revoked key', async () => (await call(apps[1], revoked)).status !== 200, 2000)
      for (let i = 0; i < 20; i++) {
        for (const app of apps) {
          const reply = await call(app, revoked)
          assert.equal(reply.status, 503, 'a revoked key is never served stale')
          assert.equal((await call(app, kept)).status, 200, 'the other key is still served stale')
        }
      }
      // clear() removes every stale copy too.
      await apps[apps.length - 1].apiKeyCache.clear()
      for (const app of apps) {
        await until('the stale copy is gone after clear()', async () => (await call(app, kept)).status === 503, 2000)
      }
    })

    test('a stale record is not served past its own expiresAt, nor when it was inactive', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix: newPrefix('exp'), ttlSeconds: 0.3, staleIfErrorSeconds: 30 } })
      const expiring = newKey()
      source.answer(hashApiKey(expiring), record('expiring', { expiresAt: Date.now() + 800 }))
      assert.equal((await call(app, expiring)).status, 200)
      source.answer(hashApiKey(expiring), FAILURES.throws)
      await until('the record expired at its expiresAt', async () => (await call(app, expiring)).status !== 200, 5000)
      for (let i = 0; i < 5; i++) assert.notEqual((await call(app, expiring)).status, 200)
    })

    test('refresh-ahead: a steady stream on a hot key never waits for lookup, which runs about once per TTL', options, async (t) => {
      const source = new KeySource()
      const ttlSeconds = 1
      const app = await buildApp(t, fixture, {
        source,
        apiKeys: { keyPrefix: newPrefix('ahead'), ttlSeconds, refreshAheadSeconds: 0.5 }
      })
      const key = newKey()
      const keyHash = hashApiKey(key)
      let slowLookups = 0
      source.answer(keyHash, async () => {
        slowLookups++
        await sleep(100)
        return record('hot')
      })
      assert.equal((await call(app, key)).status, 200)
      const first = app.apiKeyCache.stats()
      const started = performance.now()
      let waited = 0
      while (performance.now() - started < 4000) {
        const before = performance.now()
        assert.equal((await call(app, key)).status, 200)
        // A request that waited for the 100 ms lookup.
        if (performance.now() - before >= 95) waited++
        await sleep(10)
      }
      const stats = app.apiKeyCache.stats()
      const elapsedS = (performance.now() - started) / 1000
      t.diagnostic(`${stats.hits - first.hits} hits, ${stats.misses - first.misses} misses, ${stats.refreshes} refreshes, ${slowLookups} lookups in ${elapsedS.toFixed(1)} s; ${waited} requests waited`)
      assert.equal(stats.misses, first.misses, 'no request after the first missed the cache')
      assert.equal(waited, 0, 'no request after the first waited for lookup')
      assert.ok(stats.refreshes >= 3, `${stats.refreshes} refreshes in ${elapsedS.toFixed(1)} s`)
      // About once per TTL: at most one per half TTL, whatever the request rate (~80/s here).
      assert.ok(slowLookups <= 1 + Math.ceil(elapsedS / (ttlSeconds / 2)) + 1, `${slowLookups} lookups`)
    })

    test('refresh-ahead: a failing refresh keeps the current entry until its normal end', options, async (t) => {
      const source = new KeySource()
      const app = await buildApp(t, fixture, { source, apiKeys: { keyPrefix: newPrefix('ahead-fail'), ttlSeconds: 1, refreshAheadSeconds: 0.8 } })
      const key = newKey()
      source.answer(hashApiKey(key), record('kept'))
      assert.equal((await call(app, key)).status, 200)
      source.answer(hashApiKey(key), FAILURES.throws)
      await until('a refresh was tried', async () => {
        assert.equal((await call(app, key)).status, 200)
        return app.apiKeyCache.stats().refreshes > 0
      })
      assert.equal((await call(app, key)).status, 200, 'still served after the failed refresh')
      await until('the entry ended', async () => (await call(app, key)).status === 503, 5000)
    })
  })
}

describe('refresh-ahead across processes sharing Redis', () => {
  test('a record renewed by one process is not refreshed again by the other (tiered)', options, async (t) => {
    const fixture = FIXTURES[2]
    const keyPrefix = newPrefix('shared-ahead')
    const source = new KeySource()
    const settings = { source, apiKeys: { keyPrefix, ttlSeconds: 2, refreshAheadSeconds: 1 } }
    const [a, b] = [await buildApp(t, fixture, settings), await buildApp(t, fixture, settings)]
    const key = newKey()
    source.answer(hashApiKey(key), record('shared'))
    assert.equal((await call(a, key)).status, 200)
    assert.equal((await call(b, key)).status, 200)
    const started = performance.now()
    while (performance.now() - started < 5000) {
      assert.equal((await call(a, key)).status, 200)
      assert.equal((await call(b, key)).status, 200)
      await sleep(20)
    }
    const refreshes = a.apiKeyCache.stats().refreshes + b.apiKeyCache.stats().refreshes
    t.diagnostic(`${refreshes} refreshes in two processes, ${source.calls(hashApiKey(key))} lookups in 5 s with a 2 s TTL`)
    // A renewal lasts at least the TTL less the refresh window (1 s): at most one per second
    // across both processes; each refreshing on its own would make twice as many.
    assert.ok(refreshes <= Math.ceil(5 / 1) + 1, `${refreshes} refreshes`)
    assert.ok(source.calls(hashApiKey(key)) <= refreshes + 1, `${source.calls(hashApiKey(key))} lookups`)
  })
})
