import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { Resolver, Verdict } from '../api-key-cache/resolver'
import type { Counters, Rejection } from '../api-key-cache/stats'
import { hashApiKey } from '../api-keys/hash'
import { isWellFormedApiKey } from '../api-keys/key-format'
import { holdsScopes } from '../api-keys/scopes'
import { ApiKeyForbiddenError, ApiKeyInvalidError, ApiKeyMissingError } from '../errors'
import type { UsageRecorder } from '../usage/usage-recorder'
import { extractKey, MALFORMED, MISSING } from './extract-key'
import type { RequiredScopes, RouteSettings, RouteSettingsReader } from './route-settings'

export interface AuthenticatorOptions {
  resolver: Resolver
  counters: Counters
  header: string
  realm: string
  formatPrefix: string | undefined
  /** The route settings prepared at registration (scopes and their challenge). */
  routes: RouteSettingsReader
  /** Counts accepted requests for `apiKeys.onUsage`; undefined without it. */
  usage: UsageRecorder | undefined
}

export interface Authenticator {
  /** The `onRequest` hook: synchronous when the answer is in process memory. */
  hook: onRequestHookHandler
  /** The same check as an async handler, for a route's own hooks or @fastify/auth. */
  verify (request: FastifyRequest, reply: FastifyReply): Promise<void>
}

export function createAuthenticator (options: AuthenticatorOptions): Authenticator {
  const { resolver, counters, header, formatPrefix, routes, usage } = options
  const scheme = header === 'authorization' ? 'Bearer' : 'ApiKey'
  // RFC 6750 §3: no error code when no credentials were sent, invalid_token when they were bad.
  const missingChallenge = `${scheme} realm="${options.realm}"`
  const invalidChallenge = scheme === 'Bearer' ? `${missingChallenge}, error="invalid_token"` : missingChallenge

  function refuse (request: FastifyRequest, reply: FastifyReply, reason: Rejection, keyHash?: string): Error {
    counters.rejections[reason]++
    if (reason === 'missing') {
      request.log.debug('fastify-auth-cache: refused, no API key')
      reply.header('www-authenticate', missingChallenge)
      return new ApiKeyMissingError()
    }
    request.log.debug({ reason, keyHash }, 'fastify-auth-cache: refused API key')
    reply.header('www-authenticate', invalidChallenge)
    return new ApiKeyInvalidError()
  }

  function forbid (request: FastifyRequest, reply: FastifyReply, keyHash: string, scopes: RequiredScopes): Error {
    counters.rejections.forbidden++
    request.log.debug({ keyHash, scopes: scopes.list }, 'fastify-auth-cache: refused, the API key lacks a scope of the route')
    reply.header('www-authenticate', scopes.challenge)
    return new ApiKeyForbiddenError()
  }

  /** Authentication first (401), then the route's scopes (403); nothing here allocates on success. */
  function accept (request: FastifyRequest, reply: FastifyReply, keyHash: string, verdict: Verdict, settings: RouteSettings): void {
    if (typeof verdict === 'string') throw refuse(request, reply, verdict, keyHash)
    const scopes = settings.scopes
    if (scopes !== undefined && !holdsScopes(verdict, scopes.list)) throw forbid(request, reply, keyHash, scopes)
    if (usage !== undefined) usage.record(keyHash, verdict.id)
    request.apiKey = verdict
  }

  /** Throws the 401 or 403; returns a promise only when the cache must load. */
  function authenticate (request: FastifyRequest, reply: FastifyReply, settings: RouteSettings): void | Promise<void> {
    const key = extractKey(request, header)
    if (key === MISSING) throw refuse(request, reply, 'missing')
    if (key === MALFORMED) throw refuse(request, reply, 'malformed')
    if (formatPrefix !== undefined && !isWellFormedApiKey(key, formatPrefix)) throw refuse(request, reply, 'malformed')
    const keyHash = hashApiKey(key)
    const verdict = resolver.resolve(keyHash, request)
    if (verdict instanceof Promise) return verdict.then((loaded) => accept(request, reply, keyHash, loaded, settings))
    accept(request, reply, keyHash, verdict, settings)
  }

  function hook (this: unknown, request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    let pending: void | Promise<void>
    try {
      const settings = routes.settingsOf(request)
      pending = settings.authenticate ? authenticate(request, reply, settings) : undefined
    } catch (err) {
      return done(err as Error)
    }
    if (pending === undefined) done()
    else pending.then(() => done(), done)
  }

  /**
   * Authenticates whatever the route's `config.apiKey` says of the hook, and enforces its scopes.
   * A request the hook already accepted on this route is not checked (nor counted) twice.
   */
  async function verify (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (request.apiKey !== null) return
    await authenticate(request, reply, routes.settingsOf(request))
  }

  return { hook: hook as onRequestHookHandler, verify }
}
