import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { generateApiKey } from '../lib'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { startRedis, type RedisServer } from './helpers/redis-server'
import { setRecordEverywhere, TieredWorker, type WatchOutcome } from './helpers/tiered-worker-process'
import { until } from './helpers/wait'

// CONTRACT section 8, rotation with a grace period: a new key from generateApiKey; the old
// record's expiresAt set to now + grace in the source of truth; apiKeyCache.delete(oldHash) in
// one process. Both keys then work everywhere until expiresAt, and the old one is refused
// everywhere from expiresAt on, long before the workers' ttlSeconds (60 s) would end.

const GRACE_MS = 3000
// The hook compares expiresAt with the clock on every hit, so refusal at expiry is exact: no
// request that started after it is accepted (10 ms for the clocks of two processes), and the
// first refusal comes as soon as a request is served after it (1 s on a busy machine).
const ACCEPTED_AFTER_EXPIRY_MS = 10
const FIRST_REFUSAL_MS = 1000
// Requests sent this close to expiry may be answered after it; the grace check stops before.
const GRACE_MARGIN_MS = 600

describe('key rotation with a grace period, tiered backend, two processes', () => {
  let redis: RedisServer
  let a: TieredWorker
  let b: TieredWorker

  before(async () => {
    redis = await startRedis()
    ;[a, b] = await Promise.all([TieredWorker.start('a', redis.url), TieredWorker.start('b', redis.url)])
  })

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()])
    await redis?.destroy()
    failIfHeldOpen('rotation.multiprocess.test.ts')
  })

  test('both keys work in both processes during the grace; right after it the old key is refused everywhere', async () => {
    const workers = [a, b]
    const old = generateApiKey({ prefix: 'rot' })
    await setRecordEverywhere(workers, old.hash, { id: 'client-7', active: true })
    // Both processes hold the old record, without an expiry, in memory.
    for (const worker of workers) {
      await until(`worker ${worker.name} serves the old key from memory`, async () => {
        assert.equal((await worker.request(old.key)).status, 200)
        const before = await worker.stats()
        assert.equal((await worker.request(old.key)).status, 200)
        return (await worker.stats()).hits === before.hits + 1
      }, 10_000)
    }

    // The rotation, as the README shows it.
    const fresh = generateApiKey({ prefix: 'rot' })
    await setRecordEverywhere(workers, fresh.hash, { id: 'client-7', active: true })
    const expiresAt = Date.now() + GRACE_MS
    await setRecordEverywhere(workers, old.hash, { id: 'client-7', active: true, expiresAt })
    await a.delete(old.hash)

    let rounds = 0
    while (Date.now() < expiresAt - GRACE_MARGIN_MS) {
      for (const worker of workers) {
        for (const key of [old.key, fresh.key]) {
          const outcome = await worker.request(key)
          if (outcome.startedAt < expiresAt - GRACE_MARGIN_MS) {
            assert.equal(outcome.status, 200, `worker ${worker.name}, ${key === old.key ? 'old' : 'new'} key, ${expiresAt - outcome.startedAt} ms before expiry`)
          }
        }
      }
      rounds++
    }
    assert.ok(rounds > 0, 'the grace was checked at least once')

    // Each process requests the old key back to back across its expiry.
    await Promise.all(workers.map((worker) => worker.watchStart(old.key, GRACE_MS + 15_000, 1)))
    const outcomes: WatchOutcome[] = await Promise.all(workers.map((worker) => worker.watchResult()))
    for (const [i, outcome] of outcomes.entries()) {
      const name = workers[i]!.name
      assert.ok(outcome.refused !== undefined, `worker ${name} still accepted the old key ${GRACE_MS + 15_000} ms on`)
      assert.equal(outcome.refused.status, 401)
      assert.equal(outcome.refused.code, 'FST_API_KEY_INVALID')
      assert.ok(outcome.accepted > 0)
      assert.ok(outcome.lastAcceptedStartedAt <= expiresAt + ACCEPTED_AFTER_EXPIRY_MS,
        `worker ${name} accepted a request sent ${outcome.lastAcceptedStartedAt - expiresAt} ms after expiry`)
      assert.ok(outcome.refused.endedAt >= expiresAt - ACCEPTED_AFTER_EXPIRY_MS,
        `worker ${name} refused the old key ${expiresAt - outcome.refused.endedAt} ms before its expiry`)
      assert.ok(outcome.refused.startedAt - expiresAt <= FIRST_REFUSAL_MS,
        `worker ${name} first refused the old key ${outcome.refused.startedAt - expiresAt} ms after expiry`)
    }

    // From then on: the old key refused, the new one accepted, in both.
    for (const worker of workers) {
      for (let i = 0; i < 3; i++) {
        assert.equal((await worker.request(old.key)).status, 401)
        assert.equal((await worker.request(fresh.key)).status, 200)
      }
      assert.ok((await worker.stats()).rejections.expired >= 1, `worker ${worker.name} counts the refusal as expired`)
    }
  })
})
