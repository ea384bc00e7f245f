import sjson from 'secure-json-parse'
import { isQuota } from '../quota/period'
import type { ApiKeyRecord } from '../types'
import { rememberAddressList } from './allowed-ips'

/**
 * The shape the contract requires of a record: an object with a string `id` and a boolean
 * `active`, as its OWN properties, and an `allowedIps` that parses when it has one. An inherited
 * `id` or `active` (a record built with `Object.assign({}, JSON.parse('{"__proto__":…}'))`)
 * does not count. Every record reaches process memory through here (from `lookup`, from Redis,
 * from `apiKeyCache.set`), so its address list is parsed here, once per record object, and
 * never on a request.
 * A `quota` must be well formed (a malformed one is an invalid record, never unlimited).
 */
export function isApiKeyRecord (value: unknown): value is ApiKeyRecord {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const record = value as Record<string, unknown>
  return Object.hasOwn(record, 'id') && typeof record.id === 'string' &&
    Object.hasOwn(record, 'active') && typeof record.active === 'boolean' &&
    (record.expiresAt === undefined || (Object.hasOwn(record, 'expiresAt') && typeof record.expiresAt === 'number' && !Number.isNaN(record.expiresAt))) &&
    (record.quota === undefined || isQuota(record.quota)) &&
    (record.allowedIps === undefined || rememberAddressList(record, record.allowedIps))
}

/** Why `toStoredRecord` refused an answer. */
export type UnstorableReason = 'not-a-record' | 'not-serializable'

/**
 * What `lookup` answered, as the record every backend stores: its own enumerable JSON properties
 * only, read once. Getters run here (a throwing one refuses the record, its message kept out of
 * any reply), inherited properties are dropped, and a value that JSON cannot hold (a BigInt, a
 * cycle) refuses the record here, for its key alone, instead of failing later inside a Redis
 * write. The memory backend then holds exactly what Redis would give back.
 */
export function toStoredRecord (answer: unknown): ApiKeyRecord | UnstorableReason {
  let json: string | undefined
  try {
    json = JSON.stringify(answer)
  } catch {
    return 'not-serializable'
  }
  if (json === undefined) return 'not-a-record'
  const record: unknown = sjson.parse(json, undefined, { protoAction: 'remove', constructorAction: 'remove' })
  return isApiKeyRecord(record) ? record : 'not-a-record'
}

export type RejectReason = 'unknown' | 'inactive' | 'expired'

/** Why a record (or its absence) is refused, or undefined when it is valid now. */
export function rejectReason (record: ApiKeyRecord | undefined): RejectReason | undefined {
  if (record === undefined) return 'unknown'
  if (!record.active) return 'inactive'
  // The clock is read only for records that can expire.
  if (record.expiresAt !== undefined && record.expiresAt <= Date.now()) return 'expired'
  return undefined
}

/**
 * The owner a record's keys share a budget under (rate limits, quotas): its `ownerId` when that
 * is a non-empty string or a finite number, as text; undefined for a key on its own.
 */
export function ownerOf (record: ApiKeyRecord): string | undefined {
  const owner = record.ownerId
  if (typeof owner === 'string') return owner.length > 0 ? owner : undefined
  return typeof owner === 'number' && Number.isFinite(owner) ? String(owner) : undefined
}
