/**
 * CONTRACT 4a, "Start-up": a tiered app's `ready()` resolves once it can serve from process
 * memory (its invalidation channel is proven to work), so the first requests of a new process
 * are memory hits; or after at most 2 s if Redis does not answer, and then it serves through
 * `lookup` as in any outage.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { requestPathCommandCalls } from './helpers/command-stats'
import { KeySource, record } from './helpers/key-source'
import { AppSet, newTestKey, now, request } from './helpers/production-redis'
import { startRedis, usePrivateRedis } from './helpers/redis-server'
import { appClient } from './helpers/redis-topologies'

// The contract's 2 s, with room for a busy machine.
const READY_WITHOUT_REDIS_MS = 5000
const KEY_PREFIX = 'apikey:'

describe('Start-up: ready() of a tiered app', () => {
  const redis = usePrivateRedis()

  test('resolves once the app serves from process memory: the second request of a key cached in Redis is a memory hit', { timeout: 60_000 }, async (t) => {
    const source = new KeySource()
    const keys = [newTestKey('startup'), newTestKey('startup')]
    // Another process cached the keys in Redis, then went away.
    const writers = new AppSet()
    const writer = await writers.start({ name: 'W', backend: 'redis', redis: appClient(redis.server.connectionOptions()), source })
    for (const [i, { key, hash }] of keys.entries()) {
      source.answer(hash, record(`startup-${i}`))
      assert.equal((await request(writer, key)).status, 200)
    }
    await writers.closeAll()
    const lookupsBefore = source.lookups

    // Several fresh processes, each used the moment ready() resolved.
    for (let round = 0; round < 3; round++) {
      const apps = new AppSet()
      try {
        const fresh = await apps.start({ name: `N${round}`, backend: 'tiered', redis: appClient(redis.server.connectionOptions()), source })
        for (const [i, { key, hash }] of keys.entries()) {
          const first = await request(fresh, key)
          assert.equal(first.status, 200, `round ${round}, key ${i}: first request`)
          // Behind the plugin's back, Redis's copy now says the key is inactive: only a request
          // served from process memory still accepts it.
          const stored = await redis.admin.get(KEY_PREFIX + hash)
          assert.ok(stored !== null, 'the record is in Redis')
          await redis.admin.set(KEY_PREFIX + hash, JSON.stringify({ ...JSON.parse(stored), active: false }), 'KEEPTTL')
          const hitsBefore = fresh.app.apiKeyCache.stats().hits
          const commandsBefore = await requestPathCommandCalls(redis.admin)
          const second = await request(fresh, key)
          const commandsAfter = await requestPathCommandCalls(redis.admin)
          await redis.admin.set(KEY_PREFIX + hash, stored, 'KEEPTTL')
          t.diagnostic(`round ${round}, key ${i}: second request ${second.status}, request-path commands sent meanwhile: ${commandsAfter - commandsBefore}`)
          assert.equal(second.status, 200, `round ${round}, key ${i}: the second request right after ready() was not served from process memory (it saw Redis's copy)`)
          assert.equal(fresh.app.apiKeyCache.stats().hits, hitsBefore + 1, `round ${round}, key ${i}: counted as a hit`)
          assert.equal(commandsAfter, commandsBefore, `round ${round}, key ${i}: the memory hit sent no request-path command to Redis`)
        }
      } finally {
        await apps.closeAll()
      }
    }
    assert.equal(source.lookups, lookupsBefore, 'every answer came from a cache, none from lookup')
  })

  for (const outage of ['stopped', 'stalled'] as const) {
    test(`with Redis ${outage === 'stopped' ? 'stopped (connections refused)' : 'stalled (SIGSTOP: connections hang)'}, ready() resolves within ${READY_WITHOUT_REDIS_MS} ms and requests authenticate through lookup`, { timeout: 60_000 }, async (t) => {
      const down = await startRedis()
      const pid = down.pid!
      t.after(async () => {
        if (outage === 'stalled') process.kill(pid, 'SIGCONT')
        await down.destroy()
      })
      if (outage === 'stopped') await down.stop()
      else process.kill(pid, 'SIGSTOP')

      const source = new KeySource()
      const apps = new AppSet()
      t.after(() => apps.closeAll())
      const startedAt = now()
      const app = await apps.start({
        name: 'N', backend: 'tiered', redis: appClient({ ...down.connectionOptions(), connectTimeout: 1000 }), source, redisTimeoutMs: 200
      })
      const readyMs = now() - startedAt
      t.diagnostic(`ready() resolved after ${readyMs.toFixed(0)} ms`)
      assert.ok(readyMs <= READY_WITHOUT_REDIS_MS, `ready() took ${readyMs.toFixed(0)} ms with Redis ${outage}`)

      const valid = newTestKey('startup')
      source.answer(valid.hash, record('startup-valid'))
      const unknown = newTestKey('startup')
      for (let i = 0; i < 5; i++) {
        const accepted = await request(app, valid.key)
        const refused = await request(app, unknown.key)
        assert.equal(accepted.status, 200, `valid key, request ${i}: ${accepted.status} ${accepted.code ?? ''}`)
        assert.equal(refused.status, 401, `unknown key, request ${i}: ${refused.status} ${refused.code ?? ''}`)
      }
      assert.ok(source.calls(valid.hash) >= 1, 'answered through lookup')
    })
  }
})
