import type { FastifyRequest } from 'fastify'

export const MAX_KEY_LENGTH = 1024
// C0 controls and DEL; a key holding them is junk or an injection attempt.
const CONTROL = /[\u0000-\u001f\u007f]/ // eslint-disable-line no-control-regex
const BEARER = /^bearer$/i
const SPACES = /^ +| +$/g

export type ExtractedKey =
  | { kind: 'missing' }
  | { kind: 'malformed' }
  | { kind: 'key', key: string }

const MISSING: ExtractedKey = { kind: 'missing' }
const MALFORMED: ExtractedKey = { kind: 'malformed' }

/**
 * Reads the key from `header` (lower case). For `authorization` only a `Bearer` token counts,
 * whatever the case of the scheme. Absent, empty or another scheme is "missing"; a key that is
 * too long, holds control characters, or comes in repeated headers is "malformed".
 */
export function extractKey (request: FastifyRequest, header: string): ExtractedKey {
  let value = request.headers[header]
  if (value === undefined) return MISSING
  if (typeof value !== 'string') return value.length === 0 ? MISSING : MALFORMED
  if (header === 'authorization') {
    const space = value.indexOf(' ')
    if (space === -1 || !BEARER.test(value.slice(0, space))) return MISSING
    value = value.slice(space + 1)
  }
  // Only spaces are padding; a tab or newline is a control character and makes the key malformed.
  value = value.replace(SPACES, '')
  if (value.length === 0) return MISSING
  if (value.length > MAX_KEY_LENGTH || CONTROL.test(value)) return MALFORMED
  return { kind: 'key', key: value }
}
