import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateApiKey } from '../lib'
import { Child } from '../test/helpers/child-process'
import { startRedis } from '../test/helpers/redis-server'
import type { Probe, Verdicts } from './delete-owner-peer'

/**
 * `apiKeyCache.deleteOwner` of an owner with many cached keys, across tiered processes:
 *   npm run bench:delete-owner -- [ownerKeys=10000] [processes=4] [rounds=3] [otherKeys=1000]
 * Every process holds every key in memory (and Redis holds them too). Process 1 calls
 * deleteOwner; each other process is timed from that call to the moment it heard the owner's
 * message (its memory refuses the owner's keys from then on; a sweep in steps then empties it).
 * Each of them sends a request for one of the owner's keys on the turn of the event loop after
 * hearing, before that sweep can be done: it must be refused. Afterwards every key is asked in
 * every process: the owner's must all be refused, the others accepted from memory.
 */

interface Timing { startedAt: number, endedAt: number }

async function main (): Promise<void> {
  const [ownerKeys = 10_000, processes = 4, rounds = 3, otherKeys = 1000] = process.argv.slice(2).map(Number)
  const redis = await startRedis()
  const admin = redis.client()
  const peers = await Child.startAll(processes, (i) => ({
    name: `peer ${i + 1}`,
    file: join(__dirname, 'delete-owner-peer.ts'),
    args: [JSON.stringify({ name: `peer ${i + 1}`, redisUrl: redis.url })]
  }))
  try {
    console.log(`deleteOwner of an owner with ${ownerKeys} cached keys (plus ${otherKeys} of another owner), ${processes} tiered processes, ${rounds} rounds`)
    for (let round = 1; round <= rounds; round++) {
      const ownerId = `bench-owner-${round}`
      const keys = Array.from({ length: ownerKeys + otherKeys }, () => generateApiKey({ prefix: 'bench' }).key)
      const ownerOf = keys.map((_, i) => i < ownerKeys ? ownerId : `bench-other-${round}`)
      await Promise.all(peers.map((peer) => peer.call('seed', { keys, ownerOf }, 60_000)))
      // One after the other: the first fills Redis, the others copy from it.
      for (const peer of peers) await peer.call('warm', { keys }, 300_000)
      const keysInRedis = await admin.dbsize()

      await Promise.all(peers.map((peer) => peer.call('revokeInSource', { ownerId })))
      const { startedAt, endedAt } = await peers[0]!.call<Timing>('deleteOwner', { ownerId }, 60_000)
      // The message may still be on its way when deleteOwner() returns: asked until it arrived (5 s at most).
      const heard = await Promise.all(peers.slice(1).map(async (peer) => {
        for (const deadline = performance.now() + 5000; performance.now() < deadline; await sleep(5)) {
          const at = await peer.call<number | null>('heardAt', { since: startedAt })
          if (at !== null) return at
        }
        return null
      }))
      const probes = await Promise.all(peers.slice(1).map(async (peer) => {
        for (const deadline = performance.now() + 5000; performance.now() < deadline; await sleep(5)) {
          const probe = await peer.call<Probe | null>('probe', {})
          if (probe !== null) return probe
        }
        return null
      }))
      const verdicts = await Promise.all(peers.map((peer) => peer.call<Verdicts>('verdicts', { ownerId, keys }, 300_000)))

      const late = heard.map((at) => at === null ? NaN : at - startedAt)
      const everyone = Math.max(endedAt - startedAt, ...late)
      const wrong = verdicts.filter((v) => v.ownerAccepted > 0 || v.ownerRefused !== ownerKeys || v.othersAccepted !== otherKeys || v.othersLookedUp > 0)
      if (probes.some((p) => p?.status !== 401)) process.exitCode = 1
      console.log(`round ${round}: ${keysInRedis} keys in Redis; deleteOwner() took ${(endedAt - startedAt).toFixed(1)} ms; ` +
        `the other processes heard it ${late.map((ms) => `${ms.toFixed(1)} ms`).join(', ')} after the call ` +
        `(${late.map((ms) => `${(ms - (endedAt - startedAt)).toFixed(1)}`).join(', ')} ms after it resolved); ` +
        `every process refuses all ${ownerKeys} keys ${everyone.toFixed(1)} ms after the call; ` +
        `a request for one of them on the next turn after hearing: ${probes.map((p) => p === null ? 'none' : `${p.status}${p.lookedUp ? ' (looked up afresh)' : ' (a revoked answer another process had cached)'}`).join(', ')}; ` +
        (wrong.length === 0
          ? `checked: every process refused all ${ownerKeys} owner keys and served the ${otherKeys} others from memory`
          : `WRONG: ${JSON.stringify(verdicts)}`))
      if (wrong.length > 0) process.exitCode = 1
    }
  } finally {
    await Promise.all(peers.map((peer) => peer.stop()))
    admin.disconnect()
    await redis.destroy()
  }
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
