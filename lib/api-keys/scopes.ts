import type { ApiKeyRecord } from '../types'

/**
 * A scope: RFC 6750's scope-token (printable ASCII without space, `"` or `\`), less the single
 * quote, so that every scope can stand inside the quoted `scope` of a challenge as it is.
 */
const SCOPE = /^[\x21\x23-\x26\x28-\x5b\x5d-\x7e]+$/

export function isScope (value: unknown): value is string {
  return typeof value === 'string' && SCOPE.test(value)
}

/**
 * A record's scopes up to this many are searched with `includes`, which allocates nothing and
 * is the cheaper way for such sizes (about 20-60 ns for one to three route scopes). A longer
 * array is indexed in a Set once per record object: a record kept in process memory is the same
 * object on every hit, so the index is built once for as long as the record is cached.
 */
const SEARCHED_UP_TO = 16
const indexes = new WeakMap<object, Set<unknown>>()

/**
 * Whether the record holds every one of `required` (a non-empty list without repeats). A record
 * without a `scopes` array holds none. Records are not to be changed once `lookup` answered them.
 */
export function holdsScopes (record: ApiKeyRecord, required: readonly string[]): boolean {
  const held = record.scopes
  if (!Array.isArray(held)) return false
  if (held.length <= SEARCHED_UP_TO) {
    for (let i = 0; i < required.length; i++) {
      if (!held.includes(required[i])) return false
    }
    return true
  }
  let index = indexes.get(record)
  if (index === undefined) {
    index = new Set(held)
    indexes.set(record, index)
  }
  for (let i = 0; i < required.length; i++) {
    if (!index.has(required[i])) return false
  }
  return true
}
