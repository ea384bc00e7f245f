import type { FastifyRequest } from 'fastify'
import { checkedKey, createKeyExtractor, MALFORMED, MISSING, type KeyExtractor } from './extract-key'

/** Where a request's key may travel (`apiKeys.header`, `apiKeys.query`, `apiKeys.hideCredentials`). */
export interface KeySources {
  /** Lower case, at least one; the first present decides. */
  headers: readonly string[]
  /** A query parameter read when no listed header is present. */
  query: string | undefined
  /** Remove the key from the request once it is read. */
  hideCredentials: boolean
}

/**
 * The key of a request from its sources, or MISSING or MALFORMED. With one header, no query and
 * nothing to hide, this is that header's extractor itself: the default pays for no loop.
 */
export function createKeyReader ({ headers, query, hideCredentials }: KeySources): KeyExtractor {
  if (headers.length === 1 && query === undefined && !hideCredentials) return createKeyExtractor(headers[0])
  const extractors = headers.map(createKeyExtractor)
  return function readKey (request) {
    for (let i = 0; i < extractors.length; i++) {
      const key = extractors[i](request)
      if (key === MISSING) continue
      // Present: this header decides, and a bad key in it is never a reason to look further.
      if (hideCredentials) hideHeader(request, headers[i])
      return key
    }
    if (query === undefined) return MISSING
    const key = queryKey(request, query)
    if (key !== MISSING && hideCredentials) delete (request.query as Record<string, unknown>)[query]
    return key
  }
}

function queryKey (request: FastifyRequest, name: string): string {
  const query = request.query
  // Own properties only: a parameter named like a property of Object.prototype is not one of them.
  if (typeof query !== 'object' || query === null || !Object.hasOwn(query, name)) return MISSING
  const value = (query as Record<string, unknown>)[name]
  // Fastify's parser makes an array of a repeated parameter: which copy would a proxy have read?
  if (typeof value !== 'string') return MALFORMED
  return checkedKey(value)
}

/**
 * Removes a header from the request: from the parsed headers, and from `rawHeaders`, which Node
 * keeps beside them and from which it builds `headersDistinct` on demand.
 */
function hideHeader (request: FastifyRequest, header: string): void {
  const raw = request.raw
  delete raw.headers[header]
  if (request.headers !== raw.headers) delete request.headers[header]
  const rawHeaders = raw.rawHeaders
  if (!Array.isArray(rawHeaders)) return
  for (let i = rawHeaders.length - 2; i >= 0; i -= 2) {
    if (rawHeaders[i].length === header.length && rawHeaders[i].toLowerCase() === header) rawHeaders.splice(i, 2)
  }
}
