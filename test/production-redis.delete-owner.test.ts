/**
 * CONTRACT 13 with 4a: `deleteOwner` on Redis as production runs it.
 *
 * Eviction (allkeys-lru, a filler client writing throughout): each round caches one key of an
 * owner in both apps, starts a lookup for a second key of that owner that nobody cached yet
 * (it reads the active record and takes 30-80 ms to answer), removes both keys from the source
 * of truth and calls deleteOwner (through one app or the other). Requests that start after
 * deleteOwner resolved must be refused: at once in the app that called it, and in both apps
 * once the lookup in flight ended (when its stale answer would be written back), and in a final
 * sweep. Another owner's key stays valid throughout.
 *
 * Full Redis (noeviction, maxmemory reached): writes are refused but deletes allowed, so
 * deleteOwner still resolves and revokes everywhere, and valid keys keep authenticating.
 *
 * On a Sentinel-managed master (which has a replica), deleteOwner resolves only once the replica
 * has the deletions, and rejects with FST_AUTH_CACHE_NOT_REPLICATED when the replica cannot
 * acknowledge them, so that the caller retries.
 *
 * A restart from a snapshot older than deleteOwner brings the owner's records back into Redis:
 * the app that called it makes it again once reconnected, so every app refuses them within the
 * fault bound of Redis being back.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { record } from './helpers/key-source'
import {
  FAULT_BOUND_MS, HEALTHY_BOUND_MS, inParallel, newTestKey, now, request, RevocationLedger, SHARED_BACKENDS, startPair, type Answer
} from './helpers/production-redis'
import { usePrivateRedis } from './helpers/redis-server'
import {
  appClient, assertWritesRefused, evictedKeys, fillUntilRefused, restartFromSnapshot, saveSnapshot, SentinelTopology, startEvictingRedis,
  startFiller, startNoEvictionRedis, type Filler
} from './helpers/redis-topologies'
import { sleepUntil } from './helpers/wait'

const ROUNDS = 60
const CONCURRENCY = 4

describe('deleteOwner on an evicting Redis: maxmemory 8mb, allkeys-lru, a filler client writing throughout', () => {
  let filler: Filler
  after(async () => {
    await filler?.stop()
  })
  const redis = usePrivateRedis(() => startEvictingRedis('allkeys-lru', '8mb'))
  before(() => {
    filler = startFiller(redis.server)
  })

  for (const backend of SHARED_BACKENDS) {
    test(`${backend}: ${ROUNDS} deleteOwner calls, each racing a lookup in flight; no key of the owner accepted afterwards`, { timeout: 120_000 }, async (t) => {
      const { source, a, b, pair } = await startPair(t, backend, () => appClient(redis.server.connectionOptions()))
      const bystander = newTestKey('bystander')
      source.answer(bystander.hash, record('bystander', { ownerId: 'bystander-owner' }))
      const evictedBefore = await evictedKeys(redis.admin)
      const accepted: string[] = []
      const revoked: Array<{ keys: string[], round: number }> = []

      const judge = (round: number, phase: string, answer: Answer): void => {
        if (answer.status >= 500) assert.fail(`round ${round}: ${answer.app} answered ${answer.status} ${answer.code} (${phase})`)
        if (answer.status === 200) accepted.push(`round ${round}, ${answer.app}, ${phase}`)
      }

      await inParallel(ROUNDS, CONCURRENCY, async (round) => {
        const ownerId = `evicting-owner-${round}`
        const cached = newTestKey('owner')
        const inFlightKey = newTestKey('owner')
        source.answer(cached.hash, record(`cached-${round}`, { ownerId }))
        source.answer(inFlightKey.hash, record(`in-flight-${round}`, { ownerId }))
        for (const app of pair) assert.equal((await request(app, cached.key)).status, 200)
        const holder = pair[round % 2]!
        const revoker = pair[Math.floor(round / 2) % 2]!

        const lookupStarted = source.holdNext(inFlightKey.hash, () => sleep(30 + Math.random() * 50))
        const inFlight = request(holder, inFlightKey.key)
        await lookupStarted
        source.answer(cached.hash, null)
        source.answer(inFlightKey.hash, null)
        await revoker.app.apiKeyCache.deleteOwner(ownerId)
        revoked.push({ keys: [cached.key, inFlightKey.key], round })

        // New requests in the app that called deleteOwner never join the lookup in flight.
        for (const key of [cached.key, inFlightKey.key]) judge(round, 'calling app, at once', await request(revoker, key))
        await inFlight
        for (const app of pair) {
          for (const key of [cached.key, inFlightKey.key]) judge(round, 'after the lookup in flight ended', await request(app, key))
        }
      })
      for (const { keys, round } of revoked) {
        for (const app of pair) for (const key of keys) judge(round, 'final sweep', await request(app, key))
      }
      for (const app of [a, b]) assert.equal((await request(app, bystander.key)).status, 200, `another owner's key is still valid in ${app.name}`)

      const evicted = await evictedKeys(redis.admin) - evictedBefore
      t.diagnostic(`Redis evicted ${evicted} keys during the rounds`)
      assert.ok(evicted > 0, 'the filler must keep Redis evicting during the rounds')
      assert.deepEqual(accepted.slice(0, 5), [], `${backend}: keys of a deleted owner were accepted after deleteOwner resolved (${accepted.length} answers)`)
    })
  }
})

describe('deleteOwner on a full Redis: maxmemory 8mb reached, noeviction', () => {
  const redis = usePrivateRedis(() => startNoEvictionRedis('8mb'))

  for (const backend of SHARED_BACKENDS) {
    test(`${backend}: deleteOwner resolves and revokes the owner's keys everywhere; valid keys authenticate`, { timeout: 60_000 }, async (t) => {
      await redis.admin.flushall()
      await redis.admin.config('SET', 'maxmemory', '8mb')
      const ledger = new RevocationLedger()
      const { source, a, b, pair } = await startPair(t, backend, () => appClient(redis.server.connectionOptions()))

      const owned = [newTestKey('full'), newTestKey('full'), newTestKey('full')]
      const other = newTestKey('full')
      for (const [i, { hash }] of owned.entries()) source.answer(hash, record(`owned-${i}`, { ownerId: 'full-owner' }))
      source.answer(other.hash, record('other', { ownerId: 'full-other' }))
      ledger.markValid(other.key)
      for (const { key } of [...owned, other]) {
        for (const app of pair) assert.equal((await request(app, key)).status, 200)
      }

      const fill = await fillUntilRefused(redis.admin)
      t.diagnostic(`Redis refused writes after ${fill.written} filler values`)

      for (const { hash } of owned) source.answer(hash, null)
      let failure: unknown
      await a.app.apiKeyCache.deleteOwner('full-owner').catch((err: unknown) => { failure = err })
      if (failure !== undefined) assert.fail(`deleteOwner() must resolve on a full Redis (Redis allows deletes); it rejected: ${(failure as Error).message}`)
      const resolvedAt = now()
      for (const { key } of owned) {
        ledger.markRevoked(key, resolvedAt, 0, 'deleteOwner')
        await ledger.check(a, key)
      }
      await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
      for (const { key } of owned) {
        ledger.markRevoked(key, resolvedAt, HEALTHY_BOUND_MS, 'deleteOwner')
        await ledger.check(b, key)
      }
      const until = now() + 1000
      while (now() < until) {
        for (const app of pair) for (const key of [...owned.map(({ key }) => key), other.key]) await ledger.check(app, key)
        await sleep(20)
      }
      t.diagnostic(ledger.summary())
      ledger.assertClean(`${backend}: deleteOwner on a full Redis`)
      await assertWritesRefused(redis.admin)
    })
  }
})

describe('deleteOwner, then a restart of Redis from a snapshot taken before it', () => {
  const redis = usePrivateRedis()

  for (const backend of SHARED_BACKENDS) {
    test(`${backend}: the owner's keys are refused by every app within ${FAULT_BOUND_MS} ms of Redis being back`, { timeout: 60_000 }, async (t) => {
      const ledger = new RevocationLedger()
      const { source, a, b, pair } = await startPair(t, backend, () => appClient(redis.server.connectionOptions()))
      const owned = [newTestKey('snap'), newTestKey('snap'), newTestKey('snap')]
      const kept = newTestKey('snap')
      for (const [i, { hash }] of owned.entries()) source.answer(hash, record(`owned-${i}`, { ownerId: 'snapshot-owner' }))
      source.answer(kept.hash, record('kept', { ownerId: 'snapshot-other' }))
      ledger.markValid(kept.key)
      for (const { key } of [...owned, kept]) for (const app of pair) assert.equal((await request(app, key)).status, 200)
      await saveSnapshot(redis.admin)

      for (const { hash } of owned) source.answer(hash, null)
      await a.app.apiKeyCache.deleteOwner('snapshot-owner')
      const resolvedAt = now()
      for (const { key } of owned) {
        ledger.markRevoked(key, resolvedAt, 0, 'before the restart')
        await ledger.check(a, key)
      }
      await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
      for (const { key } of owned) {
        ledger.markRevoked(key, resolvedAt, HEALTHY_BOUND_MS, 'before the restart')
        await ledger.check(b, key)
      }

      await restartFromSnapshot(redis.server)
      const backAt = now()
      for (const { key } of owned) ledger.markRevoked(key, backAt, FAULT_BOUND_MS, 'restored by the snapshot')
      const until = backAt + FAULT_BOUND_MS + 3000
      while (now() < until) {
        for (const app of pair) for (const { key } of [...owned, kept]) await ledger.check(app, key)
        await sleep(20)
      }
      t.diagnostic(ledger.summary())
      ledger.assertClean(`${backend}: deleteOwner after a restart from an older snapshot`)
    })
  }
})

describe('deleteOwner on a Sentinel-managed master with a replica', () => {
  let topology: SentinelTopology
  before(async () => {
    topology = await new SentinelTopology().start()
  })
  after(async () => {
    await topology?.destroy()
  })

  test('resolves once the replica has the deletions; rejects with FST_AUTH_CACHE_NOT_REPLICATED when the replica cannot acknowledge', { timeout: 120_000 }, async (t) => {
    const { source, a, pair } = await startPair(t, 'tiered', () => topology.client())
    const replica = topology.directClient(await topology.replicaPort())
    const owned = [newTestKey('sentinel'), newTestKey('sentinel'), newTestKey('sentinel')]
    for (const [i, { hash }] of owned.entries()) source.answer(hash, record(`owned-${i}`, { ownerId: 'replicated-owner' }))
    for (const app of pair) for (const { key } of owned) assert.equal((await request(app, key)).status, 200)
    for (const { hash } of owned) assert.equal(await replica.exists(`apikey:${hash}`), 1, 'the replica holds the cached record')

    for (const { hash } of owned) source.answer(hash, null)
    await a.app.apiKeyCache.deleteOwner('replicated-owner')
    for (const { hash } of owned) assert.equal(await replica.exists(`apikey:${hash}`), 0, 'the replica had the deletion when deleteOwner resolved')
    for (const app of pair) for (const { key } of owned) assert.equal((await request(app, key)).status, 401)

    const stranded = newTestKey('sentinel')
    source.answer(stranded.hash, record('stranded', { ownerId: 'unreplicated-owner' }))
    for (const app of pair) assert.equal((await request(app, stranded.key)).status, 200)
    const replicaPid = topology.server(await topology.replicaPort()).pid!
    process.kill(replicaPid, 'SIGSTOP')
    try {
      await assert.rejects(a.app.apiKeyCache.deleteOwner('unreplicated-owner'), { code: 'FST_AUTH_CACHE_NOT_REPLICATED' })
    } finally {
      process.kill(replicaPid, 'SIGCONT')
    }
  })
})
