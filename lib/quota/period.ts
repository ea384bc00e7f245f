/** A record's `quota`: at most `limit` units of cost per period. */
export interface ApiKeyQuota {
  /** A positive integer. */
  limit: number
  /** A calendar period in UTC, or a fixed length in milliseconds aligned on the epoch. */
  period: 'minute' | 'hour' | 'day' | 'month' | number
}

const FIXED_MS: Record<string, number> = { minute: 60_000, hour: 3_600_000, day: 86_400_000 }

/** Whether `value` is a valid `quota`; anything else makes the record invalid, never unlimited. */
export function isQuota (value: unknown): value is ApiKeyQuota {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const { limit, period } = value as Record<string, unknown>
  if (!Number.isSafeInteger(limit) || (limit as number) <= 0) return false
  if (typeof period === 'number') return Number.isSafeInteger(period) && period > 0
  return period === 'month' || (typeof period === 'string' && Object.hasOwn(FIXED_MS, period))
}

/** One period: its name in the counter's key, and its bounds in epoch ms, [startMs, endMs). */
export interface Period {
  readonly id: string
  readonly startMs: number
  readonly endMs: number
}

/**
 * The period holding `nowMs`. Minutes, hours and days are fixed lengths in UTC (the epoch has no
 * leap seconds), so they are epoch arithmetic as a numeric period is; a month ends at the next
 * first of the month, 00:00 UTC.
 */
export function periodAt (period: ApiKeyQuota['period'], nowMs: number): Period {
  if (period === 'month') {
    const date = new Date(nowMs)
    const year = date.getUTCFullYear()
    const month = date.getUTCMonth()
    return { id: `M${year * 12 + month}`, startMs: Date.UTC(year, month, 1), endMs: Date.UTC(year, month + 1, 1) }
  }
  const lengthMs = typeof period === 'number' ? period : FIXED_MS[period]!
  const index = Math.floor(nowMs / lengthMs)
  return { id: `${lengthMs}:${index}`, startMs: index * lengthMs, endMs: (index + 1) * lengthMs }
}

/** `Retry-After`: whole seconds, rounded up, until the period ends (at least 1). */
export function secondsUntil (endMs: number, nowMs: number): number {
  return Math.max(1, Math.ceil((endMs - nowMs) / 1000))
}
