import type { FastifyRequest } from 'fastify'

const MAX_KEY_LENGTH = 1024
// Unicode's control characters (C0, DEL and C1); a key holding them is junk or an injection attempt.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/ // eslint-disable-line no-control-regex
const BEARER = /^bearer$/i
const SPACES = /^ +| +$/g
// Headers of which Node's IncomingMessage keeps the first value and drops repeats.
const FIRST_ONLY = new Set(['age', 'authorization', 'content-length', 'content-type', 'etag', 'expires', 'from', 'host',
  'if-modified-since', 'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization',
  'referer', 'retry-after', 'server', 'user-agent'])

// Control characters, so that no key can be mistaken for them (a key holding one is malformed).
/** No key: the header is absent or empty, or `Authorization` carries another scheme. */
export const MISSING = '\u0000missing'
/** A key that cannot be one: too long, control characters, or sent in repeated headers. */
export const MALFORMED = '\u0000malformed'

/** The key of a request, or MISSING or MALFORMED. A string, so a hit allocates nothing here. */
export type KeyExtractor = (request: FastifyRequest) => string

/**
 * Reads the key from `header` (lower case). For `authorization` only a `Bearer` token counts,
 * whatever the case of the scheme. What depends on the header alone is decided here, once.
 */
export function createKeyExtractor (header: string): KeyExtractor {
  const bearer = header === 'authorization'
  // A proxy may have read another copy of a repeated header than we would. Node joins repeats
  // of most headers with ', ', and keeps only the first of a few (Authorization among them),
  // where a repeat shows only in rawHeaders; scanning those costs more than the rest of this,
  // so the others are scanned only when a comma shows a join.
  const firstOnly = FIRST_ONLY.has(header)
  return function extractKey (request) {
    let value = request.headers[header]
    if (value === undefined) return MISSING
    if (typeof value !== 'string') return value.length === 0 ? MISSING : MALFORMED
    if ((firstOnly || value.includes(',')) && isRepeated(request.raw.rawHeaders, header)) return MALFORMED
    if (bearer) {
      const space = value.indexOf(' ')
      if (space === -1 || !BEARER.test(value.slice(0, space))) return MISSING
      value = value.slice(space + 1)
    }
    // Only spaces are padding; a tab or newline is a control character and makes the key malformed.
    if (value.charCodeAt(0) === 32 || value.charCodeAt(value.length - 1) === 32) value = value.replace(SPACES, '')
    if (value.length === 0) return MISSING
    if (value.length > MAX_KEY_LENGTH || CONTROL.test(value)) return MALFORMED
    return value
  }
}

function isRepeated (rawHeaders: string[] | undefined, header: string): boolean {
  if (rawHeaders === undefined) return false
  let seen = 0
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]
    if (name.length === header.length && name.toLowerCase() === header && ++seen > 1) return true
  }
  return false
}

/** A key read from elsewhere than a header (the query string), judged as a header's would be. */
export function checkedKey (value: string): string {
  if (value.charCodeAt(0) === 32 || value.charCodeAt(value.length - 1) === 32) value = value.replace(SPACES, '')
  if (value.length === 0) return MISSING
  if (value.length > MAX_KEY_LENGTH || CONTROL.test(value)) return MALFORMED
  return value
}
