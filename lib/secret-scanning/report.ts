import sjson from 'secure-json-parse'
import { SecretScanningBadReportError, SecretScanningTooManyTokensError } from '../errors'

/** The most tokens one report may hold; GitHub batches far fewer. */
const MAX_REPORTED_TOKENS = 1000

/** One match GitHub reports: the token it found, the type it was registered as, and where. */
export interface ReportedToken {
  token: string
  type: string
  url: string | undefined
  source: string | undefined
}

const optionalString = (value: unknown): string | undefined => typeof value === 'string' ? value : undefined

/**
 * The tokens of a report body: a JSON array of `{ token, type, url, source }`. Anything else is
 * a 400 (never echoing what was sent, which may hold a secret), more than MAX_REPORTED_TOKENS a 413.
 */
export function parseReport (body: Buffer | undefined): ReportedToken[] {
  let parsed: unknown
  try {
    parsed = body === undefined || body.length === 0
      ? undefined
      : sjson.parse(body.toString('utf8'), undefined, { protoAction: 'remove', constructorAction: 'remove' })
  } catch {
    throw new SecretScanningBadReportError('is not JSON')
  }
  if (!Array.isArray(parsed)) throw new SecretScanningBadReportError('must be a JSON array')
  if (parsed.length > MAX_REPORTED_TOKENS) throw new SecretScanningTooManyTokensError(MAX_REPORTED_TOKENS)
  return parsed.map((item: unknown, i) => {
    const { token, type, url, source } = (typeof item === 'object' && item !== null ? item : {}) as Record<string, unknown>
    if (typeof token !== 'string' || typeof type !== 'string') {
      throw new SecretScanningBadReportError(`item ${i} must be an object with string "token" and "type"`)
    }
    return { token, type, url: optionalString(url), source: optionalString(source) }
  })
}
