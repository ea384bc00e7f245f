import type { RedisAdapter } from './client'
import type { Bound } from './guard'
import { scanPrefix } from './scan-prefix'

/**
 * Deletes every key that starts with `prefix`, batch by batch as the scan finds them (see
 * scan-prefix.ts), each deletion under `bound`, except the keys that `keep` (given each key as
 * stored, client prefix included). Returns how many keys were removed.
 */
export async function clearPrefix (redis: RedisAdapter, prefix: string, bound: Bound,
  keep: (storedKey: string) => boolean): Promise<number> {
  let removed = 0
  for await (const { node, storedKeys } of scanPrefix(redis, prefix, bound)) {
    const doomed = storedKeys.filter((key) => !keep(key))
    if (doomed.length > 0) removed += await bound(() => node.unlink(doomed))
  }
  return removed
}
