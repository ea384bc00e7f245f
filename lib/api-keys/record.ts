import { isQuota } from '../quota/period'
import type { ApiKeyRecord } from '../types'

/**
 * The shape the contract requires of a record: an object with a string `id` and a boolean
 * `active`; a `quota` must be well formed (a malformed one is an invalid record, never unlimited).
 */
export function isApiKeyRecord (value: unknown): value is ApiKeyRecord {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const record = value as Record<string, unknown>
  return typeof record.id === 'string' &&
    typeof record.active === 'boolean' &&
    (record.expiresAt === undefined || (typeof record.expiresAt === 'number' && !Number.isNaN(record.expiresAt))) &&
    (record.quota === undefined || isQuota(record.quota))
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
