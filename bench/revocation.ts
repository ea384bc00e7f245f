import { join } from 'node:path'
import { Child } from '../test/helpers/child-process'
import { startRedis } from '../test/helpers/redis-server'
import { within } from '../test/helpers/wait'
import { percentile, sortedCopy } from './percentiles'
import type { Figure } from './report'
import type { CreatedKey, Refusal, Revocation } from './tiered-peer'

/**
 * Revocation latency across two processes on the tiered backend, as bench/run.ts reports it.
 *   npx tsx bench/revocation.ts [count]   on its own, with a redis-server of its own
 */

/** A deletes a key that B serves from process memory; B's first refusal is timed from the delete call. */
export async function measureRevocation (redisUrl: string, revocations: number): Promise<{ figures: Figure[], p99: number }> {
  const peer = (name: string): Promise<Child> => Child.start({
    name: `peer ${name}`,
    file: join(__dirname, 'tiered-peer.ts'),
    args: [JSON.stringify({ name, cacheRedisUrl: redisUrl, dbRedisUrl: redisUrl })]
  })
  const [a, b] = await Promise.all([peer('A'), peer('B')])
  try {
    const waiting = new Map<string, (refusal: Refusal) => void>()
    b.on('refused', (message) => waiting.get(message.hash as string)?.(message as unknown as Refusal))
    const fromCall: number[] = []
    const fromReturn: number[] = []
    let beforeReturn = 0
    for (let i = 0; i < revocations; i++) {
      const { key, hash } = await a.call<CreatedKey>('create')
      await b.call('warm', { key })
      const refused = new Promise<Refusal>((resolve) => waiting.set(hash, resolve))
      await b.call('watch', { key })
      const revocation = await a.call<Revocation>('revoke', { hash })
      if (revocation.error !== undefined) throw new Error(`delete failed: ${revocation.error}`)
      const refusal = await within('peer B reported its first refusal after the delete', refused, 10_000)
      waiting.delete(hash)
      if (refusal.error !== undefined) throw new Error(`peer B: ${refusal.error}`)
      if (refusal.at === null) throw new Error('peer B still accepted a revoked key 5 s after the delete')
      if (refusal.status !== 401) throw new Error(`peer B answered ${refusal.status} to a revoked key`)
      fromCall.push(refusal.at - revocation.startedAt)
      fromReturn.push(Math.max(0, refusal.at - revocation.endedAt))
      if (refusal.at < revocation.endedAt) beforeReturn++
    }
    const call = sortedCopy(fromCall)
    const ret = sortedCopy(fromReturn)
    const stat = (s: Float64Array): string =>
      `p50 ${percentile(s, 50).toFixed(2)} ms, p99 ${percentile(s, 99).toFixed(2)} ms, max ${s[s.length - 1].toFixed(2)} ms`
    return {
      p99: percentile(ret, 99),
      figures: [
        { label: 'revocations', value: `${revocations} (A: source of truth, then \`apiKeyCache.delete\`; B: requests through \`inject\` back to back)` },
        { label: 'from B\'s view, after A\'s `delete()` returned (the contract\'s measure; 0 = refused before it returned)', value: stat(ret) },
        { label: 'from the `delete()` call to B\'s first 401 (includes the delete itself)', value: stat(call) },
        { label: 'B refused before A\'s `delete()` had returned', value: `${beforeReturn} of ${revocations}` }
      ]
    }
  } finally {
    await Promise.all([a.stop(), b.stop()])
  }
}

async function main (): Promise<void> {
  const redis = await startRedis()
  try {
    const { figures } = await measureRevocation(redis.url, Number(process.argv[2] ?? 200))
    for (const { label, value } of figures) console.log(`- ${label}: ${value}`)
  } finally {
    await redis.destroy()
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err)
    process.exitCode = 1
  })
}
