/**
 * CONTRACT 4a, "Failover (a Cluster replica promoted with writes lost)": three masters with one
 * replica each. Replication of one shard is held back (its replica cannot resync), keys whose
 * records live in that shard are revoked, and the replica takes over with
 * `CLUSTER FAILOVER TAKEOVER`: the old master then resyncs from it and everything it
 * acknowledged meanwhile is gone (the harness proves it with a write of its own). A delete()
 * that resolved must not be undone by that: either it rejects (allowed; the test retries it after
 * the takeover and counts only what resolved), or the plugin re-applies it, but a resolved
 * revocation never comes back. A trickle of requests runs throughout: no 5xx, valid keys 200.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ReplicatedCluster, waitReplicated } from './helpers/redis-topologies'
import { record } from './helpers/key-source'
import {
  FAULT_BOUND_MS, newTestKey, now, RevocationLedger, SHARED_BACKENDS, startPair, type TestKey
} from './helpers/production-redis'
import { retryUntilResolved } from './helpers/wait'

const KEY_PREFIX = 'apikey:'
const DOOMED = 10
const SWEEP_MS = 4000

describe('Cluster failover with lost writes: 3 masters + 3 replicas, one replica held back, then CLUSTER FAILOVER TAKEOVER', () => {
  let cluster: ReplicatedCluster

  before(async () => {
    cluster = await new ReplicatedCluster().start()
  })

  after(async () => {
    await cluster?.destroy()
  })

  for (const [index, backend] of SHARED_BACKENDS.entries()) {
    test(`${backend}: revocations acknowledged by the master that loses them stay revoked after the takeover`, { timeout: 120_000 }, async (t) => {
      const ledger = new RevocationLedger()
      const { source, a, pair } = await startPair(t, backend, () => cluster.cluster(), { keyPrefix: KEY_PREFIX })

      const shard = (await cluster.shards())[index]!
      // Keys whose records (`${keyPrefix}${hash}`, CONTRACT section 3) live in the shard that will lose writes.
      const doomed: TestKey[] = []
      while (doomed.length < DOOMED) {
        const candidate = newTestKey('cluster')
        if (await cluster.masterOf(KEY_PREFIX + candidate.hash) === shard.masterPort) doomed.push(candidate)
      }
      const valid = [newTestKey('cluster'), newTestKey('cluster'), newTestKey('cluster')]
      for (const [i, { hash }] of [...doomed, ...valid].entries()) source.answer(hash, record(`cluster-${i}`))
      for (const { key } of valid) ledger.markValid(key)
      for (const { key } of [...doomed, ...valid]) {
        for (const app of pair) assert.equal((await ledger.check(app, key)).status, 200, 'warm-up')
      }
      // The records are on the replica too: the takeover will bring them back unless the plugin prevents it.
      await waitReplicated(shard.masterPort, shard.replicaPort)

      const revoked: string[] = []
      const running = { traffic: true }
      const traffic = (async () => {
        for (let i = 0; running.traffic; i++) {
          const app = pair[i % 2]!
          await ledger.check(app, valid[i % valid.length]!.key)
          if (revoked.length > 0) await ledger.check(app, revoked[i % revoked.length]!)
          await sleep(10)
        }
      })()

      const held = await cluster.holdBack(shard.masterPort)
      const rejected: Array<{ key: TestKey, error: string }> = []
      try {
        for (const [i, key] of doomed.entries()) {
          source.answer(key.hash, null)
          try {
            await pair[i % 2]!.app.apiKeyCache.delete(key.hash)
            ledger.markRevoked(key.key, now(), FAULT_BOUND_MS, 'while held back')
            revoked.push(key.key)
          } catch (err) {
            rejected.push({ key, error: (err as Error).message })
          }
        }
        t.diagnostic(`while replication was held back: ${revoked.length} delete() resolved, ${rejected.length} rejected` +
          (rejected.length === 0 ? '' : ` (${rejected[0]!.error})`))

        await held.takeover()
        t.diagnostic(`takeover done: ${shard.replicaPort} is the master, ${shard.masterPort} resynced as its replica; a write acknowledged while held back is gone`)

        // The deletes that rejected are retried now, as a caller would; they count from now on.
        for (const { key } of rejected) {
          const { resolvedAt } = await retryUntilResolved('the retried delete() resolves', () => a.app.apiKeyCache.delete(key.hash))
          ledger.markRevoked(key.key, resolvedAt, FAULT_BOUND_MS, 'retried after the takeover')
          revoked.push(key.key)
        }

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

      t.diagnostic(ledger.summary())
      ledger.assertClean(`${backend} after CLUSTER FAILOVER TAKEOVER`)
    })
  }
})
