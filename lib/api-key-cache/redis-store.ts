import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import sjson from 'secure-json-parse'
import { isApiKeyRecord } from '../api-keys/record'
import { RevocationNotReplicatedError } from '../errors'
import { FILL_WINDOW_MS, wholeMs } from '../limits'
import { clearPrefix } from '../redis/clear-prefix'
import { deleteOwnerEntries } from '../redis/delete-owner'
import { QUOTA_KEY_MARK } from '../quota/redis-quota-store'
import type { RedisAdapter } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import { BEGIN_RENEWAL, claimOf, COUNT_AND_ANNOUNCE, DELETE_COUNTED, DELETE_RECORD, FILL_RECORD, RAISE_REVISION, READ_RECORD, RELEASE_CLAIM, RENEW_RECORD, slotSibling } from '../redis/scripts'
import { DatasetRevision, revisionKey } from './dataset-revision'
import type { InvalidationBus, InvalidationKind } from './invalidation-bus'
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
  readonly channel: string
  /** The message's text before its revision, and after it. */
  messageParts (kind: InvalidationKind, payload?: string): [string, string]
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
  /** Called once revocations were made again on a dataset that went back (tiered: memory filled meanwhile goes). */
  replayed?: () => void
  /**
   * The app's invalidation channel: revocations are announced on it, and those other processes
   * announce are kept for replay too, so that any process that heard one can make it again on a
   * dataset that lost it.
   */
  bus?: InvalidationBus
  /** Where revocations are announced without a bus to hear them (the command line). */
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
  readonly entries = 0
  #invalidated = (_keyHash: string | undefined): void => {}
  readonly #redis: RedisAdapter
  readonly #prefix: string
  readonly #guard: RedisGuard
  readonly #log: FastifyBaseLogger
  readonly #announcer: Announcer | undefined
  /** Revocations made here, and heard from other processes: each kept for replaying. */
  readonly #revocations: RevocationLog
  readonly #heard: RevocationLog
  readonly #stopReplaying: () => void
  readonly #staleMs: number
  readonly #readsTtl: boolean
  readonly #revision = new DatasetRevision()
  readonly #revisionKey: string
  readonly #replayed: (() => void) | undefined
  readonly #bus: InvalidationBus | undefined
  // One replay at a time; a trigger during one makes it run once more.
  #replaying: Promise<void> | undefined
  #replayAgain = false
  #checkingRevision = false
  #closed = false

  constructor (options: RedisStoreOptions) {
    this.#redis = options.redis
    this.#prefix = options.keyPrefix
    this.#guard = options.guard
    this.#log = options.log
    this.#announcer = options.bus ?? options.announcer
    this.#revocations = new RevocationLog(options.revocationRetainMs, options.max)
    this.#staleMs = options.staleMs
    this.#readsTtl = options.readsTtl
    this.#revisionKey = revisionKey(options.keyPrefix)
    this.#replayed = options.replayed
    this.#bus = options.bus
    this.#heard = new RevocationLog(options.revocationRetainMs, options.max)
    options.bus?.listen({
      invalidated: (message) => {
        if (message.kind === 'delete') this.#heard.deleted(message.payload!)
        else if (message.kind === 'owner') this.#heard.ownerDeleted(message.payload!)
        else if (message.kind === 'clear') this.#heard.cleared()
        else return
        this.#revision.seen(message.revision)
      },
      trustChanged: () => {},
      // A dataset replaced in place drops no connection: the counter is read while there is
      // anything to make again.
      tick: () => {
        if (this.#revocations.holdsAny() || this.#heard.holdsAny()) this.#checkRevision()
      }
    })
    // The client is back after a loss (a failover, a restart from an old snapshot): Redis may
    // have lost revocations. This process makes its own again, as a safeguard that needs no
    // counter (a full Redis refuses to count; a Cluster keeps no counter), and on a dataset that
    // went back, those it heard too.
    this.#stopReplaying = this.#redis.onReconnect(() => {
      this.#replay(false)
      if (!this.#redis.cluster) this.#checkRevision()
    })
  }

  onInvalidate (listener: (keyHash: string | undefined) => void): void {
    this.#invalidated = listener
  }

  hearing (): undefined {
    return undefined
  }

  get invalidationsReceived (): number {
    return this.#bus?.received ?? 0
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
   * could otherwise lose it. Everywhere, it is kept to be made again on a dataset that lost it.
   */
  async delete (keyHash: string): Promise<void> {
    this.#revocations.deleted(keyHash)
    this.#invalidated(keyHash)
    if (!(await this.#guard.offPath(() => this.#redis.hasReplica(this.#prefix + keyHash)))) {
      await this.#deleteOnce(keyHash)
      return
    }
    const [script, keys, args] = this.#deleteCall(keyHash)
    const [revision, acknowledged] = await this.#guard.offPath(() => this.#redis.runReplicated(script, keys, args, 1, REPLICA_ACK_MS))
    this.#revision.seen(Number(revision))
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
   * a replica, each deletion waits for it or this rejects; kept to be made again on a dataset
   * that lost it.
   */
  async deleteOwner (ownerId: string): Promise<void> {
    this.#revocations.ownerDeleted(ownerId)
    this.#invalidated(undefined)
    await this.#deleteOwnerOnce(ownerId)
  }

  async #deleteOwnerOnce (ownerId: string): Promise<void> {
    await deleteOwnerEntries({ redis: this.#redis, prefix: this.#prefix, ownerId, bound: this.#guard.offPath, replicaAckMs: REPLICA_ACK_MS })
    await this.#announceCounted('owner', ownerId)
  }

  /** The delete script for the key: on a single dataset it also counts the revision. */
  #deleteCall (keyHash: string): [typeof DELETE_RECORD, string[], string[]] {
    const [channel, head, tail] = this.#announcement('delete', keyHash)
    return this.#redis.cluster
      ? [DELETE_RECORD, [this.#prefix + keyHash], [channel, head, tail]]
      : [DELETE_COUNTED, [this.#prefix + keyHash, this.#revisionKey], [channel, head, tail]]
  }

  #announcement (kind: InvalidationKind, payload?: string): [string, string, string] {
    const announcer = this.#announcer
    return announcer === undefined ? ['', '', ''] : [announcer.channel, ...announcer.messageParts(kind, payload)]
  }

  async #deleteOnce (keyHash: string): Promise<void> {
    const [script, keys, args] = this.#deleteCall(keyHash)
    this.#revision.seen(Number(await this.#guard.offPath(() => this.#redis.run(script, keys, args))))
  }

  async #clearOnce (): Promise<void> {
    await clearPrefix(this.#redis, this.#prefix, this.#guard.offPath, this.#notACachedAnswer)
    await this.#announceCounted('clear')
  }

  /** Announces a revocation made by several commands (a clear, an owner's deletion), counting it on a single dataset. */
  async #announceCounted (kind: 'clear' | 'owner', payload?: string): Promise<void> {
    const [channel, head, tail] = this.#announcement(kind, payload)
    if (channel === '') return
    if (this.#redis.cluster) {
      await this.#guard.offPath(() => this.#redis.publish(channel, `${head}0${tail}`))
    } else {
      this.#revision.seen(Number(await this.#guard.offPath(() => this.#redis.run(COUNT_AND_ANNOUNCE, [this.#revisionKey], [channel, head, tail]))))
    }
  }

  /**
   * Keys under the prefix that a clear keeps (as stored): the revision counter, which must only
   * grow, and quota counts, which forgetting would let an owner spend the period's limit again.
   */
  readonly #notACachedAnswer = (storedKey: string): boolean => {
    const clientPrefix = this.#redis.keyPrefix
    return storedKey === clientPrefix + this.#revisionKey || storedKey.startsWith(clientPrefix + this.#prefix + QUOTA_KEY_MARK)
  }

  /** Reads the dataset's revision; makes the logged revocations again when it went back. */
  #checkRevision (): void {
    if (this.#checkingRevision || this.#closed) return
    this.#checkingRevision = true
    const knownWhenAsked = this.#revision.highest
    this.#guard.offPath(() => this.#redis.readCounter(this.#revisionKey)).then((current) => {
      this.#checkingRevision = false
      if (!this.#revision.wentBack(current, knownWhenAsked)) return
      this.#log.warn({ revision: current, expected: knownWhenAsked },
        'fastify-auth-cache: Redis holds an older dataset than it had (a restore, a failover, a reload); making recent revocations again')
      this.#replay(true)
    }, () => {
      // A Redis that does not answer is checked again at the next heartbeat or reconnection.
      this.#checkingRevision = false
    })
  }

  /**
   * Makes the recent revocations made here (and with `heard`, those heard from others) again,
   * one replay at a time, then raises the counter past what the dataset had reached.
   */
  #replay (heard: boolean): void {
    if (this.#replaying !== undefined) {
      this.#replayAgain ||= heard
      return
    }
    this.#replaying = this.#replayOnce(heard).catch(() => {}).then(() => {
      this.#replaying = undefined
      this.#replayed?.()
      if (this.#replayAgain && !this.#closed) {
        this.#replayAgain = false
        this.#replay(true)
      }
    })
  }

  async #replayOnce (heard: boolean): Promise<void> {
    const pending = heard ? [...this.#revocations.pending(), ...this.#heard.pending()] : this.#revocations.pending()
    if (pending.length === 0 && !heard) return
    this.#log.info({ revocations: pending.length }, 'fastify-auth-cache: Redis connection is back or its dataset went back; making recent revocations again')
    try {
      // One clear covers every delete.
      const clear = pending.find((revocation) => revocation.kind === 'clear')
      await Promise.all(clear !== undefined
        ? [this.#clearOnce()]
        : pending.map((revocation) => revocation.kind === 'owner' ? this.#deleteOwnerOnce(revocation.ownerId) : this.#deleteOnce((revocation as { keyHash: string }).keyHash)))
      if (!this.#redis.cluster && this.#revision.highest > 0) {
        await this.#guard.offPath(() => this.#redis.run(RAISE_REVISION, [this.#revisionKey], [this.#revision.highest]))
      }
    } catch (err) {
      // The next reconnection or revision check tries again; until then the contract's fault bound applies.
      this.#log.warn({ err }, 'fastify-auth-cache: making recent revocations again failed')
      throw err
    }
  }

  close (): Promise<void> {
    this.#closed = true
    this.#stopReplaying()
    return Promise.resolve()
  }
}
