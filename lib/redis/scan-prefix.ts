import type { RedisAdapter, RedisScanNode } from './client'
import type { Bound } from './guard'

const SCAN_BATCH = 500

/** Escapes the glob characters of SCAN MATCH so a prefix matches only itself. */
function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\^-]/g, '\\$&')
}

/**
 * Every key under `prefix` (without the client's own keyPrefix), in SCAN batches on every master
 * of a Cluster, each SCAN under `bound` so that a stalled Redis fails the walk instead of hanging
 * it. Keys come as stored (client prefix included), with the node that holds them.
 */
export async function * scanPrefix (redis: RedisAdapter, prefix: string, bound: Bound): AsyncGenerator<{ node: RedisScanNode, storedKeys: string[] }> {
  // SCAN MATCH ignores the client's keyPrefix, so the pattern is the stored form of the keys.
  const pattern = escapeGlob(redis.keyPrefix + prefix) + '*'
  for (const node of redis.masters()) {
    let cursor = '0'
    do {
      const [next, storedKeys] = await bound(() => node.scan(cursor, pattern, SCAN_BATCH))
      cursor = next
      if (storedKeys.length > 0) yield { node, storedKeys }
    } while (cursor !== '0')
  }
}
