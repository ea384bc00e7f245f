/**
 * CONTRACT 4a, "Failover (Sentinel)": a master, its replica and three Sentinels; two tiered apps
 * that find the master through ioredis `sentinels`/`name`. Replication is asynchronous, and
 * Sentinel leaves a live old master accepting writes for seconds after it promoted the replica:
 * a revocation acknowledged by the old master in that window is lost when it resyncs as a
 * replica. A delete() that resolved must not be undone by that: either a replica acknowledged
 * it, or the plugin re-applies it, or delete() rejects (the test then retries it, and counts only
 * the call that resolved).
 *
 * A steady trickle of requests runs throughout (valid keys must get 200, revoked ones 401 once
 * their bound passed), revocations are made before, during and after the failover, and every
 * revoked key is requested on both apps for ten more seconds once the failover settled. No 5xx at
 * all, and credentialStore.update() works on the new master.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { SentinelTopology, waitReplicated, type FailoverResult } from './helpers/redis-topologies'
import { record } from './helpers/key-source'
import { FAULT_BOUND_MS, newTestKey, now, RevocationLedger, startPair, type TestKey } from './helpers/production-redis'
import { retryUntilResolved } from './helpers/wait'

const VALID_KEYS = 4
// Warmed before the failover, so that their records are on both servers and can come back.
const POOL = 80
const REVOKE_EVERY_MS = 200
const TRAFFIC_PAUSE_MS = 10
const SWEEP_MS = 10_000

describe('Sentinel failover: master, replica, three Sentinels; two tiered apps through ioredis sentinels/name', () => {
  let topology: SentinelTopology

  before(async () => {
    topology = await new SentinelTopology().start()
  })

  after(async () => {
    await topology?.destroy()
  })

  test('revocations before, during and after SENTINEL FAILOVER stay revoked on both apps; no 5xx; credentialStore.update works after', { timeout: 240_000 }, async (t) => {
    const ledger = new RevocationLedger()
    const { source, a, b, pair } = await startPair(t, 'tiered', () => topology.client())

    const valid: TestKey[] = []
    for (let i = 0; i < VALID_KEYS; i++) {
      const key = newTestKey('sentinel')
      source.answer(key.hash, record(`valid-${i}`))
      ledger.markValid(key.key)
      valid.push(key)
    }
    const pool: TestKey[] = []
    for (let i = 0; i < POOL; i++) {
      const key = newTestKey('sentinel')
      source.answer(key.hash, record(`pool-${i}`))
      pool.push(key)
    }
    for (const { key } of [...valid, ...pool]) {
      for (const app of pair) assert.equal((await ledger.check(app, key)).status, 200, 'warm-up')
    }
    await waitReplicated(await topology.masterPort(), await topology.replicaPort())

    // The trickle: each app, in turn, a valid key and a revoked one.
    const revoked: string[] = []
    const running = { traffic: true }
    const traffic = (async () => {
      for (let i = 0; running.traffic; i++) {
        const app = pair[i % 2]!
        await ledger.check(app, valid[i % valid.length]!.key)
        if (revoked.length > 0) await ledger.check(app, revoked[Math.floor(Math.random() * revoked.length)]!)
        await sleep(TRAFFIC_PAUSE_MS)
      }
    })()

    let rejections = 0
    const revocationsBy: Record<string, number> = { before: 0, during: 0, after: 0 }
    const revoke = async (phase: string): Promise<boolean> => {
      const next = pool.shift()
      if (next === undefined) return false
      source.answer(next.hash, null)
      const app = pair[Math.floor(Math.random() * 2)]!
      const { resolvedAt, rejections: failed } = await retryUntilResolved('delete() resolves', () => app.app.apiKeyCache.delete(next.hash), { deadlineMs: 60_000 })
      rejections += failed.length
      ledger.markRevoked(next.key, resolvedAt, FAULT_BOUND_MS, phase)
      revoked.push(next.key)
      revocationsBy[phase]!++
      return true
    }

    try {
      for (let i = 0; i < 5; i++) {
        await revoke('before')
        await sleep(REVOKE_EVERY_MS)
      }

      const failover: { result?: FailoverResult, error?: unknown, done: boolean } = { done: false }
      const failing = topology.failover().then(
        (result) => { failover.result = result },
        (err: unknown) => { failover.error = err }
      ).finally(() => { failover.done = true })
      while (!failover.done) {
        if (!(await revoke('during'))) break
        await sleep(REVOKE_EVERY_MS)
      }
      await failing
      if (failover.result === undefined) throw failover.error
      const { from, to, startedAt, settledAt } = failover.result
      t.diagnostic(`failover ${from} -> ${to} settled ${settledAt - startedAt} ms after SENTINEL FAILOVER`)

      for (let i = 0; i < 5; i++) {
        if (!(await revoke('after'))) break
        await sleep(REVOKE_EVERY_MS)
      }

      // Every revoked key, on both apps, for ten more seconds.
      const sweepUntil = now() + SWEEP_MS
      while (now() < sweepUntil) {
        for (const key of revoked) {
          for (const app of pair) await ledger.check(app, key)
        }
        await sleep(50)
      }
    } finally {
      running.traffic = false
      await traffic
    }

    t.diagnostic(`revocations ${JSON.stringify(revocationsBy)}, ${rejections} delete() calls rejected and retried; ${ledger.summary()}`)
    assert.ok(revocationsBy.during! > 0, 'revocations were made while the failover was under way')
    ledger.assertClean('Sentinel failover')

    // The credential store's exclusive update works on the new master, and both apps see its result.
    const updated = await a.app.credentialStore.update((current) => ({ ...(current as object | undefined), afterFailover: true }))
    assert.deepEqual(updated, { afterFailover: true })
    assert.deepEqual(await b.app.credentialStore.load(), { afterFailover: true })
  })
})
