import type { FastifyBaseLogger } from 'fastify'
import type { RedisAdapter } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import type { Telemetry } from '../telemetry'
import type { InvalidationBus } from './invalidation-bus'
import { LocalAnswers, type LocalTicket } from './local-answers'
import { RedisApiKeyStore } from './redis-store'
import type { ApiKeyStore, CachedAnswer, StoreLoad } from './store'

interface TieredTicket { local: LocalTicket, shared: unknown }

export interface TieredStoreOptions {
  bus: InvalidationBus
  redis: RedisAdapter
  keyPrefix: string
  max: number
  guard: RedisGuard
  log: FastifyBaseLogger
  revocationRetainMs: number
  staleMs: number
  telemetry: Telemetry
}

/**
 * Process memory (L1) in front of Redis (L2), kept honest by the invalidation bus. L1 is used
 * only while the bus is trusted; every invalidation, and every change of trust, drops the
 * affected L1 entries, and L1 refuses the copies of L2 reads and lookups that were in flight
 * meanwhile, so their possibly stale answers do not come back.
 */
export function createTieredStore (options: TieredStoreOptions): ApiKeyStore {
  const local = new LocalAnswers(options.max, options.staleMs)
  let invalidated = (_keyHash: string | undefined): void => {}
  // Every invalidation seen here drops the entry, and tells the resolver that loads in flight
  // for the key are stale for requests that come after it.
  function remove (keyHash: string): void {
    local.remove(keyHash)
    invalidated(keyHash)
  }
  function flush (): void {
    local.flush()
    invalidated(undefined)
  }
  // An owner's entries go; loads in flight for any key may be the owner's, so they all go too.
  function removeOwner (ownerId: string): void {
    local.removeOwner(ownerId)
    invalidated(undefined)
  }
  const { bus } = options
  bus.listen({
    invalidated (message) {
      if (message.kind === 'credential') return
      if (message.kind === 'owner') {
        removeOwner(message.payload!)
        options.telemetry.invalidated('owner')
        return
      }
      if (message.kind === 'delete') remove(message.payload!)
      else flush()
      options.telemetry.invalidated(message.kind, message.payload)
    },
    trustChanged (trusted) {
      flush()
      options.telemetry.invalidated(trusted ? 'trust-regained' : 'trust-lost')
    }
  })
  const l2 = new RedisApiKeyStore({
    ...options,
    readsTtl: true,
    // This process does not hear its own replayed announcements: memory filled from Redis before
    // the replay (perhaps with what the older dataset brought back) goes once it is done.
    replayed: flush,
    bus
  })

  /**
   * Drops from memory, revokes in Redis, and drops from memory again: a read in this process
   * between the first two steps may have copied the old value from Redis.
   */
  async function revokeInBothTiers (dropFromMemory: () => void, revokeInRedis: () => Promise<void>): Promise<void> {
    dropFromMemory()
    try {
      await revokeInRedis()
    } finally {
      dropFromMemory()
    }
  }

  function copyToLocal (keyHash: string, answer: CachedAnswer, ttlMs: number, ticket: LocalTicket): void {
    if (bus.trusted) local.fill(keyHash, answer, ttlMs, ticket)
  }

  return {
    backend: 'tiered',
    hearing: () => bus.hearing(),
    get entries () {
      return local.size
    },
    onInvalidate (listener) {
      invalidated = listener
    },
    get invalidationsReceived () {
      return bus.received
    },

    peek: (keyHash) => bus.trusted ? local.peek(keyHash) : undefined,

    async load (keyHash): Promise<StoreLoad> {
      const ticket = local.ticket()
      const read = await l2.read(keyHash, true)
      if (read.answer !== undefined) {
        copyToLocal(keyHash, read.answer, read.freshMs, ticket)
        return read
      }
      // Memory's stale copy counts only while the bus vouches that no revocation was missed.
      const stale = read.stale ?? (bus.trusted ? local.staleRecord(keyHash) : undefined)
      return { answer: undefined, stale, ticket: read.ticket === undefined ? undefined : { local: ticket, shared: read.ticket } }
    },

    freshMs: (keyHash) => local.remainingMs(keyHash),

    async beginRenewal (keyHash) {
      const ticket = local.ticket()
      return { ...await l2.beginRenewal(keyHash), ticket }
    },

    endRenewal: (keyHash) => l2.endRenewal(keyHash),

    async renew (keyHash, previous, answer, ttlMs, ticket) {
      if (!local.accepts(keyHash, ticket as LocalTicket)) return
      await l2.renew(keyHash, previous, answer, ttlMs)
      copyToLocal(keyHash, answer, ttlMs, ticket as LocalTicket)
    },

    async fill (keyHash, answer, ttlMs, ticket) {
      const { local: localTicket, shared: sharedTicket } = ticket as TieredTicket
      // Invalidated here since the read (a delete or clear, ours or announced, or a loss of the
      // bus): then the answer is stale for both tiers.
      if (!local.accepts(keyHash, localTicket)) return false
      const written = await l2.fill(keyHash, answer, ttlMs, sharedTicket)
      if (written) copyToLocal(keyHash, answer, ttlMs, localTicket)
      return written
    },

    release: (keyHash, ticket) => l2.release(keyHash, (ticket as TieredTicket).shared),

    async get (keyHash) {
      return (bus.trusted ? local.peek(keyHash) : undefined) ?? await l2.get(keyHash)
    },

    async set (keyHash, answer, ttlMs) {
      const ticket = local.ticket()
      await l2.set(keyHash, answer, ttlMs)
      copyToLocal(keyHash, answer, ttlMs, ticket)
    },

    delete: (keyHash) => revokeInBothTiers(() => remove(keyHash), () => l2.delete(keyHash)),
    deleteOwner: (ownerId) => revokeInBothTiers(() => removeOwner(ownerId), () => l2.deleteOwner(ownerId)),
    clear: () => revokeInBothTiers(flush, () => l2.clear()),

    async close () {
      await l2.close()
      local.flush()
    }
  }
}
