/**
 * CONTRACT 13: `apiKeyCache.deleteOwner` across processes of the tiered backend sharing one
 * Redis. After it resolves in one process, every process refuses the keys of that owner that it
 * had in memory; other owners' keys stay in memory (hits, no lookup); a lookup in flight in
 * another process when it was called cannot write its answer back anywhere.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { generateApiKey } from '../lib'
import { record } from './helpers/key-source'
import { setRecordEverywhere, type TieredWorker, untilCachedIn, useTieredWorkers } from './helpers/tiered-worker-process'
import { until } from './helpers/wait'

const newKey = (): { key: string, hash: string } => generateApiKey({ prefix: 'owner' })

describe('deleteOwner across processes of the tiered backend', () => {
  const { workers } = useTieredWorkers()

  test('after deleteOwner resolves in one process, every process refuses the owner\'s keys and still serves others from memory', { timeout: 120_000 }, async () => {
    const [a] = workers as [TieredWorker]
    const owned = Array.from({ length: 20 }, newKey)
    const others = Array.from({ length: 5 }, newKey)
    for (const [i, { hash }] of owned.entries()) await setRecordEverywhere(workers, hash, record(`owned-${i}`, { ownerId: 'mp-owner' }))
    for (const [i, { hash }] of others.entries()) await setRecordEverywhere(workers, hash, record(`other-${i}`, { ownerId: 'mp-other' }))
    for (const worker of workers) for (const { key } of [...owned, ...others]) await untilCachedIn(worker, key)
    const invalidationsBefore = await Promise.all(workers.map(async (worker) => (await worker.stats()).invalidations))

    for (const { hash } of owned) await setRecordEverywhere(workers, hash, record('revoked', { ownerId: 'mp-owner', active: false }))
    await a.deleteOwner('mp-owner')
    // Section 4b's bound, which deleteOwner shares: every process refuses within 2000 ms of the
    // call resolving (on a healthy Redis it is milliseconds; see npm run bench:delete-owner).
    await Promise.all(workers.map((worker) => until(`${worker.name} refuses the owner's key within 2000 ms`,
      async () => (await worker.request(owned[0]!.key)).status === 401, { deadlineMs: 2000, pauseMs: 5 })))
    for (const worker of workers) {
      for (const { key } of owned) {
        await until(`${worker.name} refuses the owner's key`, async () => (await worker.request(key)).status === 401)
      }
      const lookupsBefore = (await worker.stats()).lookupCalls
      for (const { key } of others) assert.equal((await worker.request(key)).status, 200, `${worker.name} still accepts another owner's key`)
      assert.equal((await worker.stats()).lookupCalls, lookupsBefore, `${worker.name} served other owners' keys from memory`)
    }
    // One message, whatever the number of keys: the other processes each heard exactly one.
    for (const [i, worker] of workers.entries()) {
      if (worker === a) continue
      assert.equal((await worker.stats()).invalidations, invalidationsBefore[i]! + 1, `${worker.name} heard one invalidation`)
    }
  })

  test('a lookup in flight in another process when deleteOwner is called does not write its answer back', { timeout: 120_000 }, async () => {
    const [a, b] = workers as [TieredWorker, TieredWorker]
    const { key, hash } = newKey()
    await setRecordEverywhere(workers, hash, record('in-flight', { ownerId: 'mp-in-flight' }))
    // B's lookup reads the active record, then takes a second to answer it.
    await b.setLookupDelay(1000)
    try {
      const lookupsBefore = (await b.stats()).lookupCalls
      const inFlight = b.request(key)
      await until('B\'s lookup started', async () => (await b.stats()).lookupCalls > lookupsBefore)
      await setRecordEverywhere(workers, hash, record('in-flight', { ownerId: 'mp-in-flight', active: false }))
      await a.deleteOwner('mp-in-flight')
      await inFlight
    } finally {
      await b.setLookupDelay(0)
    }
    for (const worker of workers) {
      assert.equal((await worker.request(key)).status, 401, `${worker.name} refuses the key: the stale answer was not cached`)
    }
  })
})
