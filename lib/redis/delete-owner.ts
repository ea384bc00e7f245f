import { RevocationNotReplicatedError } from '../errors'
import type { RedisAdapter } from './client'
import { keySlot } from './cluster-nodes'
import type { Bound } from './guard'
import { scanPrefix } from './scan-prefix'
import { DELETE_OWNER_ENTRIES } from './scripts'

const BATCHES_IN_FLIGHT = 4
// A larger value under the prefix is not a record the plugin reads (see redis-store.ts).
const MAX_VALUE_LENGTH = 1 << 20

export interface DeleteOwnerOptions {
  redis: RedisAdapter
  /** `apiKeys.keyPrefix`, without the client's own keyPrefix. */
  prefix: string
  ownerId: string
  bound: Bound
  /**
   * How long a replica may take to acknowledge each deletion where the key's master has one
   * (Cluster, Sentinel); the deletion rejects when none does, so that the caller retries.
   */
  replicaAckMs: number
}

/** JSON.stringify writes these escaped, so an owner id holding one is not found verbatim in a record. */
function escapedByJson (text: string): boolean {
  // eslint-disable-next-line no-control-regex
  return /["\\\u0000-\u001f\ud800-\udfff]/.test(text)
}

/**
 * Deletes every record under the prefix whose `ownerId` is `ownerId`, and every fill claim, on
 * every master: SCAN batches, each judged and deleted by one script where Redis decides on the
 * stored value itself, so that nothing is read into the process and no index is needed. On a
 * Cluster a script may only name keys of one slot: a batch the node refuses as CROSSSLOT is
 * split by slot, and so are the batches after it. Returns how many keys were deleted.
 */
export async function deleteOwnerEntries (options: DeleteOwnerOptions): Promise<number> {
  const { redis, bound, ownerId } = options
  // SCAN answers stored keys; scripts get keys without the client's keyPrefix.
  const clientPrefix = redis.keyPrefix
  const args = [ownerId, escapedByJson(ownerId) ? '0' : '1', MAX_VALUE_LENGTH]
  let bySlot = false
  let deleted = 0

  async function run (keys: string[]): Promise<number> {
    if (!(await bound(() => redis.hasReplica(keys[0]!)))) {
      return Number(await bound(() => redis.run(DELETE_OWNER_ENTRIES, keys, args)))
    }
    const [count, acknowledged] = await bound(() =>
      redis.runReplicated(DELETE_OWNER_ENTRIES, keys, args, 1, options.replicaAckMs))
    if (acknowledged < 1) throw new RevocationNotReplicatedError(options.replicaAckMs)
    return Number(count)
  }

  async function runBySlot (storedKeys: string[]): Promise<number> {
    const groups = new Map<number, string[]>()
    for (const storedKey of storedKeys) {
      const slot = keySlot(storedKey)
      let group = groups.get(slot)
      if (group === undefined) groups.set(slot, group = [])
      group.push(storedKey.slice(clientPrefix.length))
    }
    const counts = await Promise.all([...groups.values()].map(run))
    return counts.reduce((sum, count) => sum + count, 0)
  }

  async function judge (found: string[]): Promise<number> {
    if (bySlot) return await runBySlot(found)
    try {
      return await run(found.map((storedKey) => storedKey.slice(clientPrefix.length)))
    } catch (err) {
      if (!/CROSSSLOT|same slot/i.test((err as Error).message)) throw err
      bySlot = true
      return await runBySlot(found)
    }
  }

  // The scan goes on while earlier batches are judged, a few at a time.
  const inFlight: Array<Promise<number>> = []
  let failure: unknown
  const settle = async (batch: Promise<number>): Promise<void> => {
    try {
      deleted += await batch
    } catch (err) {
      failure ??= err
    }
  }
  try {
    for await (const { storedKeys } of scanPrefix(redis, options.prefix, bound)) {
      inFlight.push(judge(storedKeys))
      if (inFlight.length >= BATCHES_IN_FLIGHT) await settle(inFlight.shift()!)
      if (failure !== undefined) throw failure
    }
  } finally {
    // Never leave a batch's rejection unobserved, even when the scan failed.
    for (const batch of inFlight.splice(0)) await settle(batch)
  }
  if (failure !== undefined) throw failure
  return deleted
}
