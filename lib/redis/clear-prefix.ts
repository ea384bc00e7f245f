import type { RedisAdapter } from './client'
import type { Bound } from './guard'

const SCAN_BATCH = 500

/** Escapes the glob characters of SCAN MATCH so a prefix matches only itself. */
export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\^-]/g, '\\$&')
}

/**
 * Deletes every key that starts with `prefix`, in SCAN batches, on every master of a Cluster,
 * each batch under `bound` so a stalled Redis fails the clear instead of hanging it, except the
 * keys that `keep` (given each key as stored, client prefix included). Returns how many keys
 * were removed.
 */
export async function clearPrefix (redis: RedisAdapter, prefix: string, bound: Bound,
  keep: (storedKey: string) => boolean = () => false): Promise<number> {
  // SCAN MATCH ignores the client's keyPrefix, so the pattern is the stored form of the keys.
  const pattern = escapeGlob(redis.keyPrefix + prefix) + '*'
  let removed = 0
  for (const node of redis.masters()) {
    let cursor = '0'
    do {
      const [next, scanned] = await bound(() => node.scan(cursor, pattern, SCAN_BATCH))
      cursor = next
      const found = scanned.filter((key) => !keep(key))
      if (found.length > 0) removed += await bound(() => node.unlink(found))
    } while (cursor !== '0')
  }
  return removed
}
