import { clientKeyPrefix, isCluster, type RedisClient } from './client'

const SCAN_BATCH = 500

/** Escapes the glob characters of SCAN MATCH so a prefix matches only itself. */
export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\^-]/g, '\\$&')
}

/**
 * Deletes every key that starts with `prefix`, in bounded SCAN batches, on every master of a
 * Cluster. Returns how many keys were removed.
 */
export async function clearPrefix (client: RedisClient, prefix: string): Promise<number> {
  const nodes = isCluster(client) ? client.nodes!('master') : [client]
  let removed = 0
  // A keyPrefix set on a Cluster itself, not in its redisOptions, is not passed to its node
  // connections: the keys to match carry the prefix of the client we were given.
  const stored = clientKeyPrefix(client) + prefix
  for (const node of nodes) removed += await clearNode(node, stored, isCluster(client))
  return removed
}

async function clearNode (node: RedisClient, stored: string, oneKeyPerCommand: boolean): Promise<number> {
  // SCAN ignores the client's own keyPrefix, and the keys it returns already carry it,
  // while UNLINK will add the node's again: match the stored form, then strip the node's.
  const clientPrefix = clientKeyPrefix(node)
  const pattern = escapeGlob(stored) + '*'
  let cursor = '0'
  let removed = 0
  do {
    const [next, found] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_BATCH)
    cursor = next
    if (found.length === 0) continue
    const keys = found.map((key) => key.slice(clientPrefix.length))
    if (oneKeyPerCommand) {
      // Cluster nodes refuse multi-key commands across hash slots.
      const pipeline = node.pipeline()
      for (const key of keys) pipeline.unlink(key)
      const results: Array<[Error | null, number]> = await pipeline.exec()
      for (const [err, count] of results) {
        if (err) throw err
        removed += count
      }
    } else {
      removed += await node.unlink(...keys)
    }
  } while (cursor !== '0')
  return removed
}
