import type { RedisAdapter } from './client'
import type { Bound } from './guard'
import { QUOTA_KEY_MARK } from '../quota/redis-quota-store'

const SCAN_BATCH = 500

/** Escapes the glob characters of SCAN MATCH so a prefix matches only itself. */
export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\^-]/g, '\\$&')
}

/**
 * Deletes every key that starts with `prefix`, in SCAN batches, on every master of a Cluster,
 * each batch under `bound` so a stalled Redis fails the clear instead of hanging it, except the
 * keys named in `keep` (as stored, client prefix included). Returns how many keys were removed.
 * Quota counts live under the prefix too, and are kept: they are not cached answers, and
 * forgetting one would let its owner spend the period's limit again.
 */
export async function clearPrefix (redis: RedisAdapter, prefix: string, bound: Bound, keep: readonly string[] = []): Promise<number> {
  // SCAN MATCH ignores the client's keyPrefix, so the pattern is the stored form of the keys.
  const pattern = escapeGlob(redis.keyPrefix + prefix) + '*'
  const quotaCounts = redis.keyPrefix + prefix + QUOTA_KEY_MARK
  let removed = 0
  for (const node of redis.masters()) {
    let cursor = '0'
    do {
      const [next, scanned] = await bound(() => node.scan(cursor, pattern, SCAN_BATCH))
      cursor = next
      const found = scanned.filter((key) => !key.startsWith(quotaCounts) && !keep.includes(key))
      if (found.length > 0) removed += await bound(() => node.unlink(found))
    } while (cursor !== '0')
  }
  return removed
}
