/**
 * CONTRACT 4a, "a restart from a snapshot older than the delete": keys are cached, Redis writes a
 * snapshot (SAVE), some keys are revoked (source of truth first, then delete()), and Redis is
 * killed and restarted from that snapshot, which still holds their records. The apps keep
 * running throughout: within 2000 ms of Redis being back, every app refuses the revoked keys,
 * and keeps refusing them. Valid keys keep being accepted; no 5xx.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type Redis from 'ioredis'
import type { RedisServer } from './helpers/redis-server'
import { appClient, restartFromSnapshot, saveSnapshot } from './helpers/redis-topologies'
import { KeySource, record } from './helpers/key-source'
import {
  AppSet, FAULT_BOUND_MS, HEALTHY_BOUND_MS, newTestKey, now, RevocationLedger, SHARED_BACKENDS, type ScenarioApp, type TestKey
} from './helpers/production-redis'
import { sleepUntil } from './helpers/wait'
import { startRedis } from './helpers/redis-server'

const REVOKED = 6
const KEPT = 3
// After the 2000 ms bound, the revoked keys are requested for this much longer.
const KEEP_CHECKING_MS = 3000

describe('Restart from an older snapshot: SAVE, revoke, kill Redis, restart it from the snapshot', () => {
  let server: RedisServer
  let admin: Redis

  before(async () => {
    server = await startRedis()
    admin = server.client()
  })

  after(async () => {
    admin?.disconnect()
    await server?.destroy()
  })

  for (const backend of SHARED_BACKENDS) {
    test(`${backend}: revoked keys are refused by every app within ${FAULT_BOUND_MS} ms of Redis being back, and stay refused`, { timeout: 60_000 }, async (t) => {
      const source = new KeySource()
      const ledger = new RevocationLedger()
      const apps = new AppSet()
      t.after(() => apps.closeAll())
      const a = await apps.start({ name: 'A', backend, redis: appClient(server.connectionOptions()), source })
      const b = await apps.start({ name: 'B', backend, redis: appClient(server.connectionOptions()), source })
      const pair: ScenarioApp[] = [a, b]

      const toRevoke: TestKey[] = Array.from({ length: REVOKED }, () => newTestKey('snapshot'))
      const kept: TestKey[] = Array.from({ length: KEPT }, () => newTestKey('snapshot'))
      for (const [i, { key, hash }] of [...toRevoke, ...kept].entries()) {
        source.answer(hash, record(`snapshot-${i}`))
        ledger.markValid(key)
      }
      for (const { key } of [...toRevoke, ...kept]) {
        for (const app of pair) assert.equal((await ledger.check(app, key)).status, 200, 'warm-up')
      }
      await admin.set('canary:before-save', '1')
      await saveSnapshot(admin)

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
      await admin.set('canary:after-save', '1')
      await restartFromSnapshot(server)
      const backAt = now()
      assert.equal(await admin.exists('canary:before-save'), 1, 'the snapshot was loaded')
      assert.equal(await admin.exists('canary:after-save'), 0, 'the snapshot is older than the writes after SAVE')
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
