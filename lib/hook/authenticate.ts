import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { Resolved, Resolver, Verdict } from '../api-key-cache/resolver'
import type { Counters, Rejection } from '../api-key-cache/stats'
import { hashApiKey } from '../api-keys/hash'
import { isWellFormedApiKey } from '../api-keys/key-format'
import { ApiKeyInvalidError, ApiKeyLookupFailedError, ApiKeyMissingError } from '../errors'
import type { Telemetry } from '../telemetry'
import { extractKey, MALFORMED, MISSING } from './extract-key'
import { routeSettings } from './route-settings'

export interface AuthenticatorOptions {
  resolver: Resolver
  counters: Counters
  telemetry: Telemetry
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
  const { resolver, counters, telemetry, header, formatPrefix } = options
  const scheme = header === 'authorization' ? 'Bearer' : 'ApiKey'
  // RFC 6750 §3: no error code when no credentials were sent, invalid_token when they were bad.
  const missingChallenge = `${scheme} realm="${options.realm}"`
  const invalidChallenge = scheme === 'Bearer' ? `${missingChallenge}, error="invalid_token"` : missingChallenge

  function refuse (request: FastifyRequest, reply: FastifyReply, reason: Rejection, keyHash: string | undefined, startedAt: number): Error {
    counters.rejections[reason]++
    if (startedAt !== 0) telemetry.authenticated(reason, keyHash, startedAt)
    if (reason === 'missing') {
      request.log.debug('fastify-auth-cache: refused, no API key')
      reply.header('www-authenticate', missingChallenge)
      return new ApiKeyMissingError()
    }
    request.log.debug({ reason, keyHash }, 'fastify-auth-cache: refused API key')
    reply.header('www-authenticate', invalidChallenge)
    return new ApiKeyInvalidError()
  }

  function accept (request: FastifyRequest, reply: FastifyReply, keyHash: string, verdict: Verdict, source: Resolved['source'], startedAt: number): void {
    if (typeof verdict === 'string') throw refuse(request, reply, verdict, keyHash, startedAt)
    request.apiKey = verdict
    if (startedAt !== 0) telemetry.authenticated(source, keyHash, startedAt)
  }

  /** Throws the 401; returns a promise only when the cache must load. */
  function authenticate (request: FastifyRequest, reply: FastifyReply): void | Promise<void> {
    // The clock is read only when someone watches the outcome.
    const startedAt = telemetry.watchingRequests ? performance.now() : 0
    const key = extractKey(request, header)
    if (key === MISSING) throw refuse(request, reply, 'missing', undefined, startedAt)
    if (key === MALFORMED) throw refuse(request, reply, 'malformed', undefined, startedAt)
    if (formatPrefix !== undefined && !isWellFormedApiKey(key, formatPrefix)) throw refuse(request, reply, 'malformed', undefined, startedAt)
    const keyHash = hashApiKey(key)
    const verdict = resolver.resolve(keyHash, request)
    if (!(verdict instanceof Promise)) return accept(request, reply, keyHash, verdict, 'hit', startedAt)
    return verdict.then(
      (resolved) => accept(request, reply, keyHash, resolved.verdict, resolved.source, startedAt),
      (err: unknown) => {
        if (startedAt !== 0 && err instanceof ApiKeyLookupFailedError) telemetry.authenticated('lookup-failed', keyHash, startedAt)
        throw err
      })
  }

  function hook (this: unknown, request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    if (!routeSettings(request).authenticate) return done()
    let pending: void | Promise<void>
    try {
      pending = authenticate(request, reply)
    } catch (err) {
      return done(err as Error)
    }
    if (pending === undefined) done()
    else pending.then(() => done(), done)
  }

  async function verify (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    await authenticate(request, reply)
  }

  return { hook: hook as onRequestHookHandler, verify }
}
