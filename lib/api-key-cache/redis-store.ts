import sjson from 'secure-json-parse'
import type { FastifyBaseLogger } from 'fastify'
import { isApiKeyRecord } from '../api-keys/record'
import { clearPrefix } from '../redis/clear-prefix'
import { clientKeyPrefix, defineScript, type RedisClient } from '../redis/client'
import type { RedisGuard } from '../redis/guard'
import { DELETE_RECORD, FILL_RECORD, READ_RECORD, slotSibling } from '../redis/scripts'
import { UNKNOWN_KEY, type ApiKeyStore, type CachedAnswer, type StoreRead } from './store'

// The stored form of "lookup did not know this key": not a record, so older or foreign
// readers that ignore it only see a miss.
const UNKNOWN_JSON = '{"$unknownKey":true}'
// A larger value under our prefix is junk: the read script does not even return it, since
// shipping and parsing it on the request path would cost more than the lookup it saves.
const MAX_VALUE_LENGTH = 1 << 20
// A delete bumps the key's generation for this long; a lookup that takes longer than half of it
// is not cached, so the generation it read can never have expired and reappeared as absent.
const GENERATION_TTL_MS = 60_000
const MAX_FILL_AGE_MS = GENERATION_TTL_MS / 2
const OFF_PATH_TIMEOUT_MS = 5_000

const READ = 'fastifyAuthCacheRead'
const FILL = 'fastifyAuthCacheFill'
const DELETE = 'fastifyAuthCacheDelete'

interface FillToken { generation: string, epoch: number, startedAt: number }

export interface RedisStoreRead extends StoreRead {
  /** Remaining TTL of the stored entry, in ms. */
  ttlMs: number
}

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

export interface RedisStoreOptions {
  client: RedisClient
  keyPrefix: string
  guard: RedisGuard
  log: FastifyBaseLogger
  /** Channel on which deletes are announced (tiered); none for the plain Redis backend. */
  channel?: string
  /** Identifies this process in announcements so it can ignore its own. */
  instanceId?: string
}

/** One key `${keyPrefix}${hash}` per answer, holding compact JSON, with a server-side TTL. */
export class RedisApiKeyStore implements ApiKeyStore {
  readonly backend = 'redis' as const
  readonly invalidationsReceived = 0
  private readonly client: RedisClient
  private readonly prefix: string
  private readonly guard: RedisGuard
  private readonly channel: string
  private readonly instanceId: string
  private readonly tagPrefix: string
  // Bumped by this process's clear, which cannot bump the generation of every key in Redis: at
  // least the fills in flight in this process are refused. A delete is covered per key by the
  // key's generation.
  private epoch = 0

  constructor (options: RedisStoreOptions) {
    this.client = options.client
    this.prefix = options.keyPrefix
    this.guard = options.guard
    this.channel = options.channel ?? ''
    this.instanceId = options.instanceId ?? ''
    this.tagPrefix = clientKeyPrefix(this.client)
    defineScript(this.client, READ, 2, READ_RECORD)
    defineScript(this.client, FILL, 2, FILL_RECORD)
    defineScript(this.client, DELETE, 2, DELETE_RECORD)
  }

  private keys (keyHash: string): [string, string] {
    const key = this.prefix + keyHash
    // ioredis prepends the client's keyPrefix to both keys; the hash tag must hold it too, or a
    // Cluster puts the two keys in different slots and every script fails with CROSSSLOT.
    return [key, slotSibling(this.tagPrefix + key, ':gen', this.prefix)]
  }

  async read (keyHash: string): Promise<RedisStoreRead> {
    const [key, generationKey] = this.keys(keyHash)
    const startedAt = performance.now()
    const [raw, ttl, generation] = await this.guard.run<[string | null, number, string | null]>(
      () => this.client[READ](key, generationKey, MAX_VALUE_LENGTH))
    const answer = decodeAnswer(raw)
    const token: FillToken = { generation: generation ?? '', epoch: this.epoch, startedAt }
    return { answer, token, ttlMs: answer === undefined ? 0 : Number(ttl) }
  }

  /** Resolves true when written, false when refused because the key was invalidated meanwhile. */
  async fill (keyHash: string, answer: CachedAnswer, ttlMs: number, token: unknown): Promise<boolean> {
    const { generation, epoch, startedAt } = token as FillToken
    if (epoch !== this.epoch || performance.now() - startedAt > MAX_FILL_AGE_MS) return false
    const [key, generationKey] = this.keys(keyHash)
    const value = encodeAnswer(answer)
    const written = await this.guard.run(
      () => this.client[FILL](key, generationKey, generation, value, toPx(ttlMs)))
    return written === 1
  }

  async set (keyHash: string, answer: CachedAnswer, ttlMs: number): Promise<void> {
    const value = encodeAnswer(answer)
    await this.guard.bounded(() => this.client.set(this.prefix + keyHash, value, 'PX', toPx(ttlMs)), OFF_PATH_TIMEOUT_MS)
  }

  async delete (keyHash: string): Promise<void> {
    const [key, generationKey] = this.keys(keyHash)
    await this.guard.bounded(() => this.client[DELETE](
      key, generationKey, GENERATION_TTL_MS, this.channel, `d:${this.instanceId}:${keyHash}`), OFF_PATH_TIMEOUT_MS)
  }

  async clear (): Promise<void> {
    this.epoch++
    try {
      await clearPrefix(this.client, this.prefix, (call) => this.guard.bounded(call, OFF_PATH_TIMEOUT_MS))
    } finally {
      // Reads that started while SCAN was under way may have seen entries it then removed.
      this.epoch++
    }
    if (this.channel !== '') {
      await this.guard.bounded(() => this.client.publish(this.channel, `c:${this.instanceId}`), OFF_PATH_TIMEOUT_MS)
    }
  }

  close (): Promise<void> {
    return Promise.resolve()
  }
}

function toPx (ttlMs: number): number {
  return Math.max(1, Math.floor(ttlMs))
}
