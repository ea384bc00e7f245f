/**
 * CONTRACT 4a, "a restart from a snapshot older than the delete": keys are cached, Redis writes a
 * snapshot (SAVE), some keys are revoked (source of truth first, then delete()), and Redis is
 * killed and restarted from that snapshot, which still holds their records. The apps keep
 * running throughout: within 2000 ms of Redis being back, every app refuses the revoked keys,
 * and keeps refusing them. Valid keys keep being accepted; no 5xx.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { record } from './helpers/key-source'
import {
  FAULT_BOUND_MS, HEALTHY_BOUND_MS, newTestKey, now, RevocationLedger, SHARED_BACKENDS, startPair, type TestKey
} from './helpers/production-redis'
import { usePrivateRedis } from './helpers/redis-server'
import { appClient, restartFromSnapshot, saveSnapshot } from './helpers/redis-topologies'
import { sleepUntil } from './helpers/wait'

const REVOKED = 6
const KEPT = 3
// After the 2000 ms bound, the revoked keys are requested for this much longer.
const KEEP_CHECKING_MS = 3000

describe('Restart from an older snapshot: SAVE, revoke, kill Redis, restart it from the snapshot', () => {
  const redis = usePrivateRedis()

  for (const backend of SHARED_BACKENDS) {
    test(`${backend}: revoked keys are refused by every app within ${FAULT_BOUND_MS} ms of Redis being back, and stay refused`, { timeout: 60_000 }, async (t) => {
      const ledger = new RevocationLedger()
      const { source, pair } = await startPair(t, backend, () => appClient(redis.server.connectionOptions()))

      const toRevoke: TestKey[] = Array.from({ length: REVOKED }, () => newTestKey('snapshot'))
      const kept: TestKey[] = Array.from({ length: KEPT }, () => newTestKey('snapshot'))
      for (const [i, { key, hash }] of [...toRevoke, ...kept].entries()) {
        source.answer(hash, record(`snapshot-${i}`))
        ledger.markValid(key)
      }
      for (const { key } of [...toRevoke, ...kept]) {
        for (const app of pair) assert.equal((await ledger.check(app, key)).status, 200, 'warm-up')
      }
      await redis.admin.set('canary:before-save', '1')
      await saveSnapshot(redis.admin)

      // Revoked on a healthy Redis: refused at once where deleted, within the healthy bound elsewhere.
      for (const [i, { key, hash }] of toRevoke.entries()) {
        source.answer(hash, null)
        const deleter = pair[i % 2]!
        await deleter.app.apiKeyCache.delete(hash)
        const resolvedAt = now()
        ledger.markRevoked(key, resolvedAt, 0, 'before the restart')
        await ledger.check(deleter, key)
        await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
        await ledger.check(pair[(i + 1) % 2]!, key)
      }

      // Proof that the restart loads a snapshot older than the deletes: a write made after SAVE is gone.
      await redis.admin.set('canary:after-save', '1')
      await restartFromSnapshot(redis.server)
      const backAt = now()
      assert.equal(await redis.admin.exists('canary:before-save'), 1, 'the snapshot was loaded')
      assert.equal(await redis.admin.exists('canary:after-save'), 0, 'the snapshot is older than the writes after SAVE')
      // From Redis being back, the fault bound applies.
      for (const { key } of toRevoke) ledger.markRevoked(key, backAt, FAULT_BOUND_MS, 'restored by the snapshot')

      const until = backAt + FAULT_BOUND_MS + KEEP_CHECKING_MS
      while (now() < until) {
        for (const app of pair) {
          for (const { key } of [...toRevoke, ...kept]) await ledger.check(app, key)
        }
        await sleep(20)
      }
      t.diagnostic(ledger.summary())
      ledger.assertClean(`${backend} after a restart from an older snapshot`)
    })
  }
})
