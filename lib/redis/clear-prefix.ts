import { clientKeyPrefix, isCluster, type RedisClient } from './client'

const SCAN_BATCH = 500

/** Escapes the glob characters of SCAN MATCH so a prefix matches only itself. */
export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\^-]/g, '\\$&')
}

/** Runs one Redis call under a time bound. */
export type Bound = <T>(call: () => Promise<T>) => Promise<T>

/**
 * Deletes every key that starts with `prefix`, in SCAN batches, on every master of a Cluster,
 * each batch under `bound` so a stalled Redis fails the clear instead of hanging it. Returns
 * how many keys were removed.
 */
export async function clearPrefix (client: RedisClient, prefix: string, bound: Bound): Promise<number> {
  const nodes = isCluster(client) ? client.nodes!('master') : [client]
  let removed = 0
  // A keyPrefix set on a Cluster itself, not in its redisOptions, is not passed to its node
  // connections: the keys to match carry the prefix of the client we were given.
  const stored = clientKeyPrefix(client) + prefix
  for (const node of nodes) removed += await clearNode(node, stored, isCluster(client), bound)
  return removed
}

async function clearNode (node: RedisClient, stored: string, oneKeyPerCommand: boolean, bound: Bound): Promise<number> {
  // SCAN ignores the client's own keyPrefix, and the keys it returns already carry it,
  // while UNLINK will add the node's again: match the stored form, then strip the node's.
  const clientPrefix = clientKeyPrefix(node)
  const pattern = escapeGlob(stored) + '*'
  let cursor = '0'
  let removed = 0
  do {
    const [next, found] = await bound(() => node.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_BATCH))
    cursor = next
    if (found.length === 0) continue
    const keys = found.map((key) => key.slice(clientPrefix.length))
    if (oneKeyPerCommand) {
      // Cluster nodes refuse multi-key commands across hash slots.
      const pipeline = node.pipeline()
      for (const key of keys) pipeline.unlink(key)
      const results: Array<[Error | null, number]> = await bound(() => pipeline.exec())
      for (const [err, count] of results) {
        if (err) throw err
        removed += count
      }
    } else {
      removed += await bound(() => node.unlink(...keys))
    }
  } while (cursor !== '0')
  return removed
}
