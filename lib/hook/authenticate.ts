import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { ApiKeyCache, ApiKeyCacheStats } from '../api-key-cache/api-key-cache'
import { UNKNOWN_KEY, type CachedAnswer } from '../api-key-cache/store'
import { hashApiKey } from '../api-keys/hash'
import { isWellFormedApiKey } from '../api-keys/key-format'
import { rejectReason } from '../api-keys/record'
import { ApiKeyInvalidError, ApiKeyMissingError } from '../errors'
import type { ApiKeyRecord } from '../types'
import { extractKey } from './extract-key'

export interface AuthenticatorOptions {
  cache: ApiKeyCache
  header: string
  realm: string
  formatPrefix: string | undefined
}

export interface Authenticator {
  /** The `onRequest` hook: synchronous when the answer is in process memory. */
  hook: onRequestHookHandler
  /** The same check as an async handler, for a route's own hooks or @fastify/auth. */
  verify (request: FastifyRequest, reply: FastifyReply): Promise<void>
}

export function createAuthenticator (options: AuthenticatorOptions): Authenticator {
  const { cache, header, formatPrefix } = options
  const scheme = header === 'authorization' ? 'Bearer' : 'ApiKey'
  // RFC 6750 §3: no error code when no credentials were sent, invalid_token when they were bad.
  const missingChallenge = `${scheme} realm="${options.realm}"`
  const invalidChallenge = scheme === 'Bearer'
    ? `${missingChallenge}, error="invalid_token"`
    : missingChallenge

  function refuseMissing (request: FastifyRequest, reply: FastifyReply): Error {
    cache.countRejection('missing')
    request.log.debug('fastify-auth-cache: refused, no API key')
    reply.header('www-authenticate', missingChallenge)
    return new ApiKeyMissingError()
  }

  function refuseInvalid (request: FastifyRequest, reply: FastifyReply, reason: keyof ApiKeyCacheStats['rejections'], keyHash?: string): Error {
    cache.countRejection(reason)
    request.log.debug({ reason, keyHash }, 'fastify-auth-cache: refused API key')
    reply.header('www-authenticate', invalidChallenge)
    return new ApiKeyInvalidError()
  }

  function decide (request: FastifyRequest, reply: FastifyReply, keyHash: string, answer: CachedAnswer): ApiKeyRecord {
    const record = answer === UNKNOWN_KEY ? undefined : answer as ApiKeyRecord
    const reason = rejectReason(record)
    if (reason !== undefined) throw refuseInvalid(request, reply, reason, keyHash)
    request.apiKey = record!
    return record!
  }

  /** Throws the 401; returns the record, or a promise of it when the cache must load. */
  function authenticate (request: FastifyRequest, reply: FastifyReply): ApiKeyRecord | Promise<ApiKeyRecord> {
    const extracted = extractKey(request, header)
    if (extracted.kind === 'missing') throw refuseMissing(request, reply)
    if (extracted.kind === 'malformed') throw refuseInvalid(request, reply, 'malformed')
    if (formatPrefix !== undefined && !isWellFormedApiKey(extracted.key, formatPrefix)) {
      throw refuseInvalid(request, reply, 'malformed')
    }
    const keyHash = hashApiKey(extracted.key)
    const answer = cache.resolve(keyHash, request)
    if (answer instanceof Promise) return answer.then((loaded) => decide(request, reply, keyHash, loaded))
    return decide(request, reply, keyHash, answer)
  }

  function hook (this: unknown, request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    if (request.routeOptions.config.apiKey === false) return done()
    let result: ApiKeyRecord | Promise<ApiKeyRecord>
    try {
      result = authenticate(request, reply)
    } catch (err) {
      return done(err as Error)
    }
    if (result instanceof Promise) result.then(() => done(), done)
    else done()
  }

  async function verify (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    await authenticate(request, reply)
  }

  return { hook: hook as onRequestHookHandler, verify }
}
