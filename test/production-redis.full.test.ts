/**
 * CONTRACT 4a, "Redis full": maxmemory reached with noeviction. Redis refuses writes
 * (`OOM command not allowed`) but allows deletes, so delete() and clear() still resolve and
 * revoke (every app refuses the key afterwards, including keys cached before Redis filled up),
 * and requests keep authenticating through lookup, with no 5xx.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { record } from './helpers/key-source'
import { HEALTHY_BOUND_MS, newTestKey, now, RevocationLedger, SHARED_BACKENDS, startPair } from './helpers/production-redis'
import { usePrivateRedis } from './helpers/redis-server'
import { appClient, assertWritesRefused, fillUntilRefused, startNoEvictionRedis } from './helpers/redis-topologies'
import { sleepUntil } from './helpers/wait'

const MAXMEMORY = '8mb'

describe(`Full Redis: maxmemory ${MAXMEMORY} reached, noeviction`, () => {
  const redis = usePrivateRedis(() => startNoEvictionRedis(MAXMEMORY))

  for (const backend of SHARED_BACKENDS) {
    test(`${backend}: delete() and clear() resolve and revoke everywhere; valid keys authenticate through lookup`, { timeout: 60_000 }, async (t) => {
      await redis.admin.flushall()
      await redis.admin.config('SET', 'maxmemory', MAXMEMORY)
      const ledger = new RevocationLedger()
      const { source, a, b, pair } = await startPair(t, backend, () => appClient(redis.server.connectionOptions()))

      // Cached in Redis (and in each tiered process) while Redis still had room.
      const toDelete = newTestKey('full')
      const toClear = newTestKey('full')
      const valid = newTestKey('full')
      for (const [i, { key, hash }] of [toDelete, toClear, valid].entries()) {
        source.answer(hash, record(`before-fill-${i}`))
        ledger.markValid(key)
        for (const app of pair) assert.equal((await ledger.check(app, key)).status, 200)
      }
      const cachedBefore = await redis.admin.dbsize()

      const fill = await fillUntilRefused(redis.admin)
      t.diagnostic(`Redis refused writes after ${fill.written} filler values (used_memory ${fill.usedMemory}); ${cachedBefore} keys were cached before`)

      // A key first seen now authenticates through lookup, every time, in both apps.
      const fresh = newTestKey('full')
      source.answer(fresh.hash, record('after-fill'))
      ledger.markValid(fresh.key)
      for (let i = 0; i < 3; i++) {
        for (const app of pair) assert.equal((await ledger.check(app, fresh.key)).status, 200, `a valid key first seen on a full Redis (${app.name}, request ${i})`)
      }
      assert.ok(source.calls(fresh.hash) >= 1, 'the fresh key was authenticated through lookup')

      // delete(): resolves, and every app refuses the key.
      source.answer(toDelete.hash, null)
      let deleteError: unknown
      await a.app.apiKeyCache.delete(toDelete.hash).catch((err: unknown) => { deleteError = err })
      if (deleteError !== undefined) assert.fail(`delete() must resolve on a full Redis (Redis allows deletes); it rejected: ${(deleteError as Error).message}`)
      let resolvedAt = now()
      ledger.markRevoked(toDelete.key, resolvedAt, 0, 'delete')
      await ledger.check(a, toDelete.key)
      await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
      ledger.markRevoked(toDelete.key, resolvedAt, HEALTHY_BOUND_MS, 'delete')
      await ledger.check(b, toDelete.key)

      // clear(): resolves, and every app refuses what it dropped.
      source.answer(toClear.hash, null)
      let clearError: unknown
      await b.app.apiKeyCache.clear().catch((err: unknown) => { clearError = err })
      if (clearError !== undefined) assert.fail(`clear() must resolve on a full Redis; it rejected: ${(clearError as Error).message}`)
      resolvedAt = now()
      ledger.markRevoked(toClear.key, resolvedAt, 0, 'clear')
      await ledger.check(b, toClear.key)
      await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
      ledger.markRevoked(toClear.key, resolvedAt, HEALTHY_BOUND_MS, 'clear')
      await ledger.check(a, toClear.key)

      // Still full: nothing above freed enough memory to let writes through.
      await assertWritesRefused(redis.admin)
      // And over the next second, the picture holds: revoked keys refused, valid keys accepted.
      const until = now() + 1000
      while (now() < until) {
        for (const app of pair) {
          for (const key of [toDelete.key, toClear.key, valid.key, fresh.key]) await ledger.check(app, key)
        }
        await sleep(20)
      }
      t.diagnostic(ledger.summary())
      ledger.assertClean(`${backend} on a full Redis`)
      await assertWritesRefused(redis.admin)
    })
  }
})
