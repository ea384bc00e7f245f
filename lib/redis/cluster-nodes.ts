/**
 * Whether a revocation on a Cluster should wait for a replica: it should when the master of the
 * key's slot has a replica that has not failed. A client's own slot map omits replicas whose
 * replication offset it has not heard of yet (CLUSTER SLOTS leaves them out), so the answer is
 * read from the cluster's node table (CLUSTER NODES), which lists every replica.
 */

const SLOTS = 16384

/** CRC16/XMODEM, the hash Redis Cluster uses for key slots. */
function crc16 (bytes: Buffer): number {
  let crc = 0
  for (const byte of bytes) {
    crc ^= byte << 8
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  }
  return crc
}

/** The slot of a key as Redis stores it: only a non-empty `{hash tag}` counts, when there is one. */
export function keySlot (storedKey: string): number {
  const open = storedKey.indexOf('{')
  if (open !== -1) {
    const close = storedKey.indexOf('}', open + 1)
    if (close > open + 1) storedKey = storedKey.slice(open + 1, close)
  }
  return crc16(Buffer.from(storedKey, 'utf8')) % SLOTS
}

/** For each slot, whether its master has a replica that has not failed. */
export function replicatedSlots (clusterNodes: string): (slot: number) => boolean {
  const nodes = clusterNodes.split('\n').map((line) => line.trim().split(' ')).filter((fields) => fields.length >= 8)
  // Flags are whole words ('nofailover' is not 'fail').
  const replicated = new Set<string>()
  for (const [, , flagList, master] of nodes) {
    const flags = flagList.split(',')
    if (flags.includes('slave') && !flags.includes('fail') && !flags.includes('noaddr')) replicated.add(master)
  }
  const covered = new Uint8Array(SLOTS)
  for (const [id, , flags, , , , , , ...slots] of nodes) {
    if (!flags.split(',').includes('master') || !replicated.has(id)) continue
    for (const range of slots) {
      if (range.startsWith('[')) continue // a slot being migrated
      const [from, to] = range.split('-').map(Number)
      covered.fill(1, from, (to ?? from) + 1)
    }
  }
  return (slot) => covered[slot] === 1
}

/** How long a Cluster's node table is reused. */
const TABLE_CACHE_MS = 5000

/** Answers "does the master of this stored key have a replica?", reading the node table at most every 5 s. */
export function replicaCheck (readNodeTable: () => Promise<string>): (storedKey: string) => Promise<boolean> {
  let replicated: ((slot: number) => boolean) | undefined
  let readAt = -Infinity
  return async (storedKey) => {
    const now = performance.now()
    if (replicated === undefined || now - readAt > TABLE_CACHE_MS) {
      replicated = replicatedSlots(await readNodeTable())
      readAt = now
    }
    return replicated(keySlot(storedKey))
  }
}
