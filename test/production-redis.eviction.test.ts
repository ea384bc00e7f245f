/**
 * CONTRACT 4a, "Any eviction policy": Redis bounded by maxmemory may evict any key of ours at any
 * moment, including one written a millisecond ago; a revoked key is still never accepted after
 * delete() resolved, and a lookup in flight during a delete still cannot write its stale answer.
 *
 * Each round races a revocation against a lookup in flight: a request for a key nobody cached
 * yet starts a lookup that reads the active record and takes 30-80 ms to answer it; meanwhile the
 * key is removed from the source of truth and deleted (through the same app, or the other one).
 * The request in flight may answer either way. Every request that starts after delete()
 * resolved must be refused: at once in the app that deleted, within the healthy bound in the
 * other, and in both after the lookup in flight has ended (that is when its stale answer would
 * be written back). A filler client keeps Redis evicting throughout.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { record } from './helpers/key-source'
import { HEALTHY_BOUND_MS, inParallel, newTestKey, now, request, SHARED_BACKENDS, startPair, type Answer } from './helpers/production-redis'
import { usePrivateRedis } from './helpers/redis-server'
import { appClient, evictedKeys, startEvictingRedis, startFiller, type EvictionPolicy, type Filler } from './helpers/redis-topologies'
import { sleepUntil } from './helpers/wait'

const ROUNDS = 200
const CONCURRENCY = 8
const POLICIES: EvictionPolicy[] = ['allkeys-lru', 'allkeys-random']

type Phase = 'deleting app, at once' | 'other app, past the healthy bound' | 'after the lookup in flight ended' | 'final sweep'

interface Acceptance { round: number, phase: Phase, app: string, lookupStillInFlight: boolean, startedAfterResolveMs: number }

for (const policy of POLICIES) {
  describe(`Eviction: maxmemory 8mb, ${policy}, a filler client writing throughout`, () => {
    let filler: Filler
    // Hooks run in the order they are registered: the filler starts after the server, and stops before it.
    after(async () => {
      await filler?.stop()
    })
    const redis = usePrivateRedis(() => startEvictingRedis(policy, '8mb'))
    before(() => {
      filler = startFiller(redis.server)
    })

    for (const backend of SHARED_BACKENDS) {
      test(`${backend}: ${ROUNDS} revocations, each racing a lookup in flight; no revoked key accepted`, { timeout: 120_000 }, async (t) => {
        const { source, a, b, pair } = await startPair(t, backend, () => appClient(redis.server.connectionOptions()))

        const evictedBefore = await evictedKeys(redis.admin)
        const writtenBefore = filler.written
        const accepted: Acceptance[] = []
        const revoked: Array<{ key: string, resolvedAt: number }> = []
        let inFlightAccepted = 0
        let inFlightRefused = 0

        const judge = (round: number, phase: Phase, answer: Answer, resolvedAt: number, lookupStillInFlight: boolean): void => {
          if (answer.status >= 500) assert.fail(`round ${round}: ${answer.app} answered ${answer.status} ${answer.code} (${phase})`)
          if (answer.status === 200) {
            accepted.push({ round, phase, app: answer.app, lookupStillInFlight, startedAfterResolveMs: answer.startedAt - resolvedAt })
          }
        }

        await inParallel(ROUNDS, CONCURRENCY, async (round) => {
          const { key, hash } = newTestKey('evict')
          source.answer(hash, record(`evict-${round}`))
          const holder = pair[round % 2]!
          const revoker = pair[Math.floor(round / 2) % 2]!
          const other = revoker === a ? b : a

          const lookupStarted = source.holdNext(hash, () => sleep(30 + Math.random() * 50))
          let settled = false
          const inFlight = request(holder, key).finally(() => { settled = true })
          await lookupStarted
          source.answer(hash, null)
          await revoker.app.apiKeyCache.delete(hash)
          const resolvedAt = now()
          revoked[round] = { key, resolvedAt }

          // In the app that deleted: refused at once. In the other one: once the healthy bound passed.
          // Whether the lookup was still running is noted when each request starts.
          let stillInFlight = !settled
          judge(round, 'deleting app, at once', await request(revoker, key), resolvedAt, stillInFlight)
          await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
          stillInFlight = !settled
          judge(round, 'other app, past the healthy bound', await request(other, key), resolvedAt, stillInFlight)

          const outcome = await inFlight
          if (outcome.status === 200) inFlightAccepted++
          else inFlightRefused++
          // The lookup in flight has answered: had it written its stale answer anywhere, it is there now.
          for (const app of pair) judge(round, 'after the lookup in flight ended', await request(app, key), resolvedAt, false)
        })

        // Every revoked key, once more, on both apps: a stale record lives for its 60 s TTL.
        for (const [round, { key, resolvedAt }] of revoked.entries()) {
          for (const app of pair) judge(round, 'final sweep', await request(app, key), resolvedAt, false)
        }

        const evicted = await evictedKeys(redis.admin) - evictedBefore
        t.diagnostic(`filler wrote ${filler.written - writtenBefore} values, Redis evicted ${evicted} keys during the rounds; ` +
          `requests in flight at the revocation: ${inFlightAccepted} answered 200, ${inFlightRefused} refused`)
        assert.ok(evicted > 0, `the filler must keep Redis evicting during the rounds (evicted_keys did not move; filler wrote ${filler.written - writtenBefore})`)

        const describeAcceptances = (list: Acceptance[]): string => {
          const byPhase: Record<string, number> = {}
          for (const acceptance of list) {
            const label = `${acceptance.phase}${acceptance.lookupStillInFlight ? ' (joined the lookup in flight)' : ''}`
            byPhase[label] = (byPhase[label] ?? 0) + 1
          }
          return `in ${new Set(list.map((acceptance) => acceptance.round)).size} of ${ROUNDS} rounds; by phase: ${JSON.stringify(byPhase)}; ` +
            `first: ${JSON.stringify(list.slice(0, 4))}`
        }
        // First what eviction threatens: the stale answer of the lookup in flight written back
        // into a cache once the lookup ended, and found there by later requests.
        const restored = accepted.filter((acceptance) => !acceptance.lookupStillInFlight)
        assert.equal(restored.length, 0,
          `${backend} on ${policy}: revoked keys were accepted after delete() resolved, by requests that did not join the lookup in flight: ${describeAcceptances(restored)}`)
        // Then requests that started after delete() resolved while the revoked key's lookup was
        // still running, and were answered with that lookup's stale answer: never in the app that
        // deleted; in the other app, the healthy bound is a p99, so 1% of rounds may be late.
        const joined = accepted.filter((acceptance) => acceptance.lookupStillInFlight)
        const joinedHere = joined.filter((acceptance) => acceptance.phase === 'deleting app, at once')
        const joinedThere = joined.filter((acceptance) => acceptance.phase !== 'deleting app, at once')
        assert.ok(joinedHere.length === 0 && joinedThere.length <= Math.floor(ROUNDS / 100),
          `${backend} on ${policy}: requests started after delete() resolved joined the lookup that was in flight and accepted the revoked key ` +
          `(${joinedHere.length} in the app that deleted, ${joinedThere.length} in the other app past the ${HEALTHY_BOUND_MS} ms bound, ` +
          `of which at most ${Math.floor(ROUNDS / 100)} may be late at p99): ${describeAcceptances(joined)}`)
      })
    }
  })
}
