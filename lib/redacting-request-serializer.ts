import { InvalidOptionError } from './errors'

/** What the serializer reads of a request: Fastify's request, or Node's IncomingMessage. */
export interface SerializableRequest {
  method?: string
  url?: string
  headers?: Record<string, string | string[] | undefined>
  /** Fastify's; Node's request has none, and its headers are read instead. */
  host?: string
  /** Fastify's (so `trustProxy` applies); Node's request has none, and its socket is read instead. */
  ip?: string
  socket?: { remoteAddress?: string, remotePort?: number } | null
}

/** What Fastify's own `req` serializer writes, with the URL's query key replaced. */
export interface SerializedRequest {
  method?: string
  url?: string
  version?: string
  host?: string
  remoteAddress?: string
  remotePort?: number
  [field: string]: unknown
}

const REDACTED = '[REDACTED]'
// Where a parameter's name may begin. Fastify's router starts the query string at '?', '#' or
// (with useSemicolonDelimiter) ';', and its parser splits it at '&' only: every one of them is
// taken as a start here, so that no router setting leaves a key out, while a value is read to
// the next '&' only, as the parser reads it (a '#' or ';' inside a value is part of the value).
const NAME_START = /[?#;&]/
const QUERY_START = /[?#;]/

/** The name as Fastify's parser decodes it ('+' is a space); undefined when it cannot be decoded. */
function decodedName (raw: string): string | undefined {
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '))
  } catch {
    return undefined
  }
}

/** `url` with the value of every parameter named `name` (however encoded) replaced. */
function redactQuery (url: string, name: string): string {
  const start = url.search(QUERY_START)
  if (start === -1) return url
  let redacted = url.slice(0, start)
  let rest = url.slice(start)
  for (;;) {
    const at = rest.slice(1).search(NAME_START) + 1
    const segment = at === 0 ? rest : rest.slice(0, at)
    const equals = segment.indexOf('=')
    const rawName = equals === -1 ? '' : segment.slice(1, equals)
    if (equals !== -1 && (rawName === name || decodedName(rawName) === name)) {
      // The value runs to the next '&', whatever it holds.
      const end = rest.indexOf('&', equals)
      redacted += `${rest.slice(0, equals + 1)}${REDACTED}`
      if (end === -1) return redacted
      rest = rest.slice(end)
      continue
    }
    redacted += segment
    if (at === 0) return redacted
    rest = rest.slice(at)
  }
}

/**
 * A `req` serializer for Fastify's logger that writes what Fastify's own does (method, url,
 * version, host, remoteAddress, remotePort), with the value of the query parameter `queryParam`
 * replaced by `[REDACTED]` in the URL, every time it appears and however it is encoded:
 *
 *     Fastify({ logger: { serializers: { req: redactingRequestSerializer('api_key') } } })
 *
 * Give it the name given to `apiKeys.query`. It covers the `req` field of log lines only:
 * Fastify's default 404 handler also writes the URL into its message (see docs/access.md).
 */
export function redactingRequestSerializer (queryParam: string): (req: SerializableRequest) => SerializedRequest {
  if (typeof queryParam !== 'string' || queryParam.length === 0) {
    throw new InvalidOptionError('redactingRequestSerializer(queryParam)', 'must be a non-empty string')
  }
  return function serializeRequest (req) {
    const headers = req.headers
    const version = headers?.['accept-version']
    return {
      method: req.method,
      url: typeof req.url === 'string' ? redactQuery(req.url, queryParam) : req.url,
      version: typeof version === 'string' ? version : undefined,
      host: req.host ?? (typeof headers?.host === 'string' ? headers.host : undefined),
      remoteAddress: req.ip ?? req.socket?.remoteAddress,
      remotePort: req.socket?.remotePort
    }
  }
}
