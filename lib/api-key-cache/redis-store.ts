import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import sjson from 'secure-json-parse'
import { isApiKeyRecord } from '../api-keys/record'
import { RevocationNotReplicatedError } from '../errors'
import { FILL_WINDOW_MS, wholeMs } from '../limits'
import { clearPrefix } from '../redis/clear-prefix'
import { deleteOwnerEntries } from '../redis/delete-owner'
import type { RedisAdapter } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import { BEGIN_RENEWAL, claimOf, DELETE_RECORD, slotSibling, FILL_RECORD, READ_RECORD, RELEASE_CLAIM, RENEW_RECORD } from '../redis/scripts'
import { RevocationLog } from './revocation-log'
import type { ApiKeyRecord } from '../types'
import { UNKNOWN_KEY, type ApiKeyStore, type CachedAnswer, type Renewal, type StoreLoad } from './store'

// The stored form of "lookup did not know this key": not a record, so older or foreign
// readers that ignore it only see a miss.
const UNKNOWN_JSON = '{"$unknownKey":true}'
// A larger value under our prefix is junk: the read script does not even return it, since
// shipping and parsing it on the request path would cost more than the lookup it saves.
const MAX_VALUE_LENGTH = 1 << 20
// How long a revocation waits for a replica of a Cluster master to acknowledge it.
const REPLICA_ACK_MS = 500

function encodeAnswer (answer: CachedAnswer): string {
  return answer === UNKNOWN_KEY ? UNKNOWN_JSON : JSON.stringify(answer)
}

/** Anything under our prefix that is not a record we wrote is a miss, never trusted. */
function decodeAnswer (raw: string | null): CachedAnswer | undefined {
  if (raw === null) return undefined
  if (raw === UNKNOWN_JSON) return UNKNOWN_KEY
  try {
    const value: unknown = sjson.parse(raw, undefined, { protoAction: 'remove', constructorAction: 'remove' })
    return isApiKeyRecord(value) ? value : undefined
  } catch {
    return undefined
  }
}

/** Tells other processes about a revocation, from inside the script that makes it. */
export interface Announcer {
  channel: string
  deleted (keyHash: string): string
  cleared (): string
  /** The message of a deleteOwner; without it, none is sent. */
  ownerDeleted? (ownerId: string): string
}

export interface RedisStoreOptions {
  redis: RedisAdapter
  keyPrefix: string
  guard: RedisGuard
  log: FastifyBaseLogger
  /** How long a revocation is kept for replaying (see RevocationLog). */
  revocationRetainMs: number
  /** The most revocations kept for replaying; beyond it a clear is replayed. */
  max: number
  /** How long an entry outlives its fresh life, for staleIfErrorSeconds. */
  staleMs: number
  /** Whether request-path reads should return the TTL (refresh-ahead). */
  readsTtl: boolean
  /** Called once revocations were made again after a reconnection (tiered: memory filled meanwhile goes). */
  replayed?: () => void
  announcer?: Announcer
}

export interface RedisLoad extends StoreLoad {
  /** Fresh life left of a stored answer, in ms; only when asked for (or with a stale window). */
  freshMs: number
}

interface Claim { token: string, at: number }

function staleRecord (raw: string | false): ApiKeyRecord | undefined {
  if (raw === false) return undefined
  const answer = decodeAnswer(raw)
  return answer === undefined || answer === UNKNOWN_KEY ? undefined : answer as ApiKeyRecord
}

/**
 * One key `${keyPrefix}${hash}` per answer, holding compact JSON, with a server-side TTL. While
 * `lookup` runs, the key holds this process's claim instead (see scripts.ts), which a delete,
 * a clear or an eviction removes, so a late fill is refused by the key's absence.
 */
export class RedisApiKeyStore implements ApiKeyStore {
  readonly backend = 'redis' as const
  readonly invalidationsReceived = 0
  readonly hearsInvalidations = false
  readonly entries = 0
  #invalidated = (_keyHash: string | undefined): void => {}
  readonly #redis: RedisAdapter
  readonly #prefix: string
  readonly #guard: RedisGuard
  readonly #log: FastifyBaseLogger
  readonly #announcer: Announcer | undefined
  readonly #revocations: RevocationLog
  readonly #stopReplaying: () => void
  readonly #staleMs: number
  readonly #readsTtl: boolean

  constructor (options: RedisStoreOptions) {
    this.#redis = options.redis
    this.#prefix = options.keyPrefix
    this.#guard = options.guard
    this.#log = options.log
    this.#announcer = options.announcer
    this.#revocations = new RevocationLog(options.revocationRetainMs, options.max)
    this.#staleMs = options.staleMs
    this.#readsTtl = options.readsTtl
    // The one trigger, on every backend: the client is back after a loss (a failover, a restart
    // from an old snapshot), when Redis may have lost revocations made before.
    this.#stopReplaying = this.#redis.onReconnect(() => {
      this.#replay().catch(() => {}).then(() => options.replayed?.(), () => {})
    })
  }

  onInvalidate (listener: (keyHash: string | undefined) => void): void {
    this.#invalidated = listener
  }

  peek (): undefined {
    return undefined
  }

  load (keyHash: string): Promise<StoreLoad> {
    return this.read(keyHash, this.#readsTtl)
  }

  freshMs (): number {
    return 0
  }

  /** One round trip: the answer, or on a miss a claim for the fill to come (and any stale record). */
  async read (keyHash: string, withTtl: boolean): Promise<RedisLoad> {
    const token = randomBytes(12).toString('base64')
    const [raw, ttl, claimed, stale] = await this.#guard.run(() => this.#redis.run(READ_RECORD, [this.#prefix + keyHash],
      [MAX_VALUE_LENGTH, withTtl ? '1' : '0', token, FILL_WINDOW_MS, this.#staleMs]) as Promise<[string | null, number, number, string | false]>)
    const answer = decodeAnswer(raw)
    if (answer !== undefined) return { answer, freshMs: Number(ttl) }
    if (raw !== null) return await this.#claimOverJunk(keyHash, token)
    const ticket: Claim | undefined = claimed === 1 ? { token, at: performance.now() } : undefined
    return { answer, ticket, stale: staleRecord(stale), freshMs: 0 }
  }

  /** A value Lua could not tell from a record: claimed in a second step, replacing it. */
  async #claimOverJunk (keyHash: string, token: string): Promise<RedisLoad> {
    try {
      await this.#guard.run(() => this.#redis.set(this.#prefix + keyHash, `${claimOf(token)}0|`, FILL_WINDOW_MS))
      return { answer: undefined, ticket: { token, at: performance.now() }, freshMs: 0 }
    } catch {
      // A full Redis refuses the claim: then no fill follows, and lookup answers alone.
      return { answer: undefined, freshMs: 0 }
    }
  }

  /** Resolves true when written, false when the claim was gone. */
  async fill (keyHash: string, answer: CachedAnswer, ttlMs: number, ticket: unknown): Promise<boolean> {
    const { token, at } = ticket as Claim
    // Redis expired the claim by now; asking would only confirm it.
    if (performance.now() - at > FILL_WINDOW_MS) return false
    const written = await this.#guard.run(() => this.#redis.run(FILL_RECORD,
      [this.#prefix + keyHash], [claimOf(token), encodeAnswer(answer), wholeMs(ttlMs + this.#staleMs)]))
    return written === 1
  }

  async release (keyHash: string, ticket: unknown): Promise<void> {
    const { token } = ticket as Claim
    await this.#guard.run(() => this.#redis.run(RELEASE_CLAIM, [this.#prefix + keyHash], [claimOf(token)]))
  }

  /** The renewal lease sits beside the record, under the prefix and in its hash slot. */
  #leaseKey (keyHash: string): string {
    return slotSibling(this.#prefix, this.#redis.keyPrefix + this.#prefix + keyHash, ':renewal')
  }

  async endRenewal (keyHash: string): Promise<void> {
    await this.#guard.offPath(() => this.#redis.del(this.#leaseKey(keyHash)))
  }

  async beginRenewal (keyHash: string): Promise<Renewal> {
    const key = this.#prefix + keyHash
    const lease = this.#leaseKey(keyHash)
    const [raw, ttl, leased] = await this.#guard.offPath(() => this.#redis.run(BEGIN_RENEWAL, [key, lease],
      [this.#staleMs, FILL_WINDOW_MS]) as Promise<[string | null, number, number]>)
    return { ticket: undefined, current: decodeAnswer(raw), freshMs: Number(ttl), mine: leased === 1 }
  }

  async renew (keyHash: string, previous: CachedAnswer | undefined, answer: CachedAnswer, ttlMs: number): Promise<void> {
    if (previous === undefined) return
    await this.#guard.offPath(() => this.#redis.run(RENEW_RECORD, [this.#prefix + keyHash],
      [encodeAnswer(previous), encodeAnswer(answer), wholeMs(ttlMs + this.#staleMs)]))
  }

  async #readWithoutClaim (keyHash: string, bound: RedisGuard['offPath']): Promise<{ answer: CachedAnswer | undefined, freshMs: number }> {
    const [raw, ttl] = await bound(() => this.#redis.run(READ_RECORD,
      [this.#prefix + keyHash], [MAX_VALUE_LENGTH, '1', '', 0, this.#staleMs]) as Promise<[string | null, number]>)
    return { answer: decodeAnswer(raw), freshMs: Number(ttl) }
  }

  async get (keyHash: string): Promise<CachedAnswer | undefined> {
    return (await this.#readWithoutClaim(keyHash, this.#guard.offPath)).answer
  }

  async set (keyHash: string, answer: CachedAnswer, ttlMs: number): Promise<void> {
    await this.#guard.offPath(() => this.#redis.set(this.#prefix + keyHash, encodeAnswer(answer), wholeMs(ttlMs + this.#staleMs)))
  }

  /**
   * Removes the key and announces it in one script. On a Cluster whose masters have replicas,
   * a replica must acknowledge it, or the delete rejects so that the caller retries: a failover
   * could otherwise lose it. Everywhere, it is kept to be made again after a reconnection.
   */
  async delete (keyHash: string): Promise<void> {
    this.#revocations.deleted(keyHash)
    this.#invalidated(keyHash)
    if (!(await this.#guard.offPath(() => this.#redis.hasReplica(this.#prefix + keyHash)))) {
      await this.#deleteOnce(keyHash)
      return
    }
    const [, acknowledged] = await this.#guard.offPath(() =>
      this.#redis.runReplicated(DELETE_RECORD, [this.#prefix + keyHash], this.#deleteArgs(keyHash), 1, REPLICA_ACK_MS))
    if (acknowledged < 1) throw new RevocationNotReplicatedError(REPLICA_ACK_MS)
  }

  async clear (): Promise<void> {
    this.#revocations.cleared()
    this.#invalidated(undefined)
    await this.#clearOnce()
  }

  /**
   * Removes every entry whose record has this `ownerId`, and every fill claim, on every master
   * (see delete-owner.ts), then announces it with one message. Like `delete`: where a master has
   * a replica, each deletion waits for it or this rejects; kept to be made again after a reconnection.
   */
  async deleteOwner (ownerId: string): Promise<void> {
    this.#revocations.ownerDeleted(ownerId)
    this.#invalidated(undefined)
    await this.#deleteOwnerOnce(ownerId)
  }

  async #deleteOwnerOnce (ownerId: string): Promise<void> {
    await deleteOwnerEntries({ redis: this.#redis, prefix: this.#prefix, ownerId, bound: this.#guard.offPath, replicaAckMs: REPLICA_ACK_MS })
    const announcer = this.#announcer
    if (announcer?.ownerDeleted !== undefined) {
      const message = announcer.ownerDeleted(ownerId)
      await this.#guard.offPath(() => this.#redis.publish(announcer.channel, message))
    }
  }

  #deleteArgs (keyHash: string): string[] {
    return this.#announcer === undefined ? ['', ''] : [this.#announcer.channel, this.#announcer.deleted(keyHash)]
  }

  async #deleteOnce (keyHash: string): Promise<void> {
    await this.#guard.offPath(() => this.#redis.run(DELETE_RECORD, [this.#prefix + keyHash], this.#deleteArgs(keyHash)))
  }

  async #clearOnce (): Promise<void> {
    await clearPrefix(this.#redis, this.#prefix, this.#guard.offPath)
    const announcer = this.#announcer
    if (announcer !== undefined) await this.#guard.offPath(() => this.#redis.publish(announcer.channel, announcer.cleared()))
  }

  /** Makes this process's recent revocations again, on a Redis that may have lost them. */
  async #replay (): Promise<void> {
    const pending = this.#revocations.pending()
    if (pending.length === 0) return
    this.#log.info({ revocations: pending.length }, 'fastify-auth-cache: Redis connection is back; making recent revocations again')
    try {
      await Promise.all(pending.map((revocation) =>
        revocation.kind === 'clear'
          ? this.#clearOnce()
          : revocation.kind === 'owner' ? this.#deleteOwnerOnce(revocation.ownerId) : this.#deleteOnce(revocation.keyHash)))
    } catch (err) {
      // The next reconnection tries again; until then the contract's fault bound applies.
      this.#log.warn({ err }, 'fastify-auth-cache: replaying recent revocations failed')
      throw err
    }
  }

  close (): Promise<void> {
    this.#stopReplaying()
    return Promise.resolve()
  }
}
