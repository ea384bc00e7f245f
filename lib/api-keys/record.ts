import type { ApiKeyRecord } from '../types'
import { rememberAddressList } from './allowed-ips'

/**
 * The shape the contract requires of a record: an object with a string `id` and a boolean
 * `active`, and an `allowedIps` that parses when it has one. Every record reaches process
 * memory through here (from `lookup`, from Redis, from `apiKeyCache.set`), so its address list
 * is parsed here, once per record object, and never on a request.
 */
export function isApiKeyRecord (value: unknown): value is ApiKeyRecord {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const record = value as Record<string, unknown>
  return typeof record.id === 'string' &&
    typeof record.active === 'boolean' &&
    (record.expiresAt === undefined || (typeof record.expiresAt === 'number' && !Number.isNaN(record.expiresAt))) &&
    (record.allowedIps === undefined || rememberAddressList(record, record.allowedIps))
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
