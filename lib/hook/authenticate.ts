import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { Resolved, Resolver, Verdict } from '../api-key-cache/resolver'
import type { Counters, Rejection } from '../api-key-cache/stats'
import { hashApiKey } from '../api-keys/hash'
import { addressListOf, admitsAddress } from '../api-keys/allowed-ips'
import { isWellFormedApiKey } from '../api-keys/key-format'
import { holdsScopes } from '../api-keys/scopes'
import { ApiKeyForbiddenError, ApiKeyInvalidError, ApiKeyLookupFailedError, ApiKeyMissingError, ApiKeyQuotaExceededError } from '../errors'
import type { QuotaLeases, Spent } from '../quota/quota-leases'
import type { Telemetry } from '../telemetry'
import type { ApiKeyRecord } from '../types'
import type { UsageRecorder } from '../usage/usage-recorder'
import { MALFORMED, MISSING } from './extract-key'
import { createKeyReader, type KeySources } from './key-sources'
import type { RequiredScopes, RouteSettings, RouteSettingsReader } from './route-settings'

export interface AuthenticatorOptions extends KeySources {
  resolver: Resolver
  counters: Counters
  telemetry: Telemetry
  realm: string
  /** The challenge's scheme: that of the first listed header (`Bearer` for `authorization`). */
  scheme: 'Bearer' | 'ApiKey'
  formatPrefix: string | undefined
  /** The route settings prepared at registration (scopes and their challenge). */
  routes: RouteSettingsReader
  /** Counts accepted requests for `apiKeys.onUsage`; undefined without it. */
  usage: UsageRecorder | undefined
  /** Spends the quotas of records that have one. */
  quotas: QuotaLeases
}

export interface Authenticator {
  /** The `onRequest` hook: synchronous when the answer is in process memory. */
  hook: onRequestHookHandler
  /** The same check as an async handler, for a route's own hooks or @fastify/auth. */
  verify (request: FastifyRequest, reply: FastifyReply): Promise<void>
}

function finishLater (pending: Promise<void>, done: (err?: Error) => void): void {
  pending.then(() => done(), done)
}

export function createAuthenticator (options: AuthenticatorOptions): Authenticator {
  const { resolver, counters, telemetry, formatPrefix, routes, usage, quotas } = options
  const extractKey = createKeyReader(options)
  const scheme = options.scheme
  // Requests that ran an optional route without a key, so that verify does not count them twice.
  const anonymousRequests = new WeakSet<FastifyRequest>()
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

  function forbid (request: FastifyRequest, reply: FastifyReply, keyHash: string, scopes: RequiredScopes, startedAt: number): Error {
    counters.rejections.forbidden++
    if (startedAt !== 0) telemetry.authenticated('forbidden', keyHash, startedAt)
    request.log.debug({ keyHash, scopes: scopes.list }, 'fastify-auth-cache: refused, the API key lacks a scope of the route')
    reply.header('www-authenticate', scopes.challenge)
    return new ApiKeyForbiddenError()
  }

  /** A key used from an address outside its record's `allowedIps`: a 403 that no other key or scope would change. */
  function forbidAddress (request: FastifyRequest, keyHash: string, startedAt: number): Error {
    counters.rejections.forbidden++
    if (startedAt !== 0) telemetry.authenticated('forbidden', keyHash, startedAt)
    request.log.debug({ keyHash, ip: request.ip }, 'fastify-auth-cache: refused, the API key may not be used from this address')
    return new ApiKeyForbiddenError()
  }

  function anonymous (request: FastifyRequest, startedAt: number): void {
    counters.anonymous++
    anonymousRequests.add(request)
    if (startedAt !== 0) telemetry.authenticated('anonymous', undefined, startedAt)
  }

  function overQuota (request: FastifyRequest, reply: FastifyReply, keyHash: string, retryAfterSeconds: number, startedAt: number): Error {
    counters.rejections.quota++
    if (startedAt !== 0) telemetry.authenticated('quota', keyHash, startedAt)
    request.log.debug({ keyHash }, 'fastify-auth-cache: refused, the API key\'s owner is over its quota')
    reply.header('retry-after', retryAfterSeconds)
    return new ApiKeyQuotaExceededError()
  }

  /**
   * Authentication first (401), then the key's address list (403, no challenge: the key may not
   * be used from here, whatever the route), then the route's scopes (403), then the quota (429);
   * nothing here allocates on success, and a record without `allowedIps` or `quota` costs one
   * property read for each.
   */
  function accept (request: FastifyRequest, reply: FastifyReply, keyHash: string, verdict: Verdict,
    settings: RouteSettings, source: Resolved['source'], startedAt: number): void | Promise<void> {
    if (typeof verdict === 'string') throw refuse(request, reply, verdict, keyHash, startedAt)
    if (verdict.allowedIps !== undefined) checkAddress(request, keyHash, verdict, startedAt)
    const scopes = settings.scopes
    if (scopes !== undefined && !holdsScopes(verdict, scopes.list)) throw forbid(request, reply, keyHash, scopes, startedAt)
    const quota = verdict.quota
    if (quota !== undefined) {
      const spent = quotas.spend(verdict, quota, settings.cost)
      if (spent !== 0) return acceptAfterQuota(request, reply, keyHash, verdict, spent, source, startedAt)
    }
    admit(request, keyHash, verdict, source, startedAt)
  }

  function admit (request: FastifyRequest, keyHash: string, record: ApiKeyRecord, source: Resolved['source'], startedAt: number): void {
    if (usage !== undefined) usage.record(keyHash, record.id)
    request.apiKey = record
    if (startedAt !== 0) telemetry.authenticated(source, keyHash, startedAt)
  }

  function checkAddress (request: FastifyRequest, keyHash: string, record: ApiKeyRecord, startedAt: number): void {
    const list = addressListOf(record)
    if (list === undefined) {
      // Only a record changed after it was validated can get here: it is as invalid as any.
      if (startedAt !== 0) telemetry.authenticated('lookup-failed', keyHash, startedAt)
      request.log.error({ keyHash }, 'fastify-auth-cache: the API key record has a malformed allowedIps')
      throw new ApiKeyLookupFailedError()
    }
    if (!admitsAddress(list, request.ip)) throw forbidAddress(request, keyHash, startedAt)
  }

  /** A request over the quota (a number: its Retry-After), or one that waits for a lease. */
  function acceptAfterQuota (request: FastifyRequest, reply: FastifyReply, keyHash: string, record: ApiKeyRecord,
    spent: Spent, source: Resolved['source'], startedAt: number): void | Promise<void> {
    if (typeof spent === 'number') throw overQuota(request, reply, keyHash, spent, startedAt)
    return spent.then((retryAfterSeconds) => {
      if (retryAfterSeconds !== 0) throw overQuota(request, reply, keyHash, retryAfterSeconds, startedAt)
      admit(request, keyHash, record, source, startedAt)
    }, (err: unknown) => {
      counters.backendErrors++
      throw err
    })
  }

  /** Throws the 401 or 403; returns a promise only when the cache must load. */
  function authenticate (request: FastifyRequest, reply: FastifyReply, settings: RouteSettings): void | Promise<void> {
    // The clock is read only when someone watches the outcome.
    const startedAt = telemetry.watchingRequests ? performance.now() : 0
    const key = extractKey(request)
    if (key === MISSING) {
      if (settings.optional) return anonymous(request, startedAt)
      throw refuse(request, reply, 'missing', undefined, startedAt)
    }
    if (key === MALFORMED) throw refuse(request, reply, 'malformed', undefined, startedAt)
    if (formatPrefix !== undefined && !isWellFormedApiKey(key, formatPrefix)) throw refuse(request, reply, 'malformed', undefined, startedAt)
    const keyHash = hashApiKey(key)
    const verdict = resolver.cached(keyHash, request)
    if (verdict !== undefined) return accept(request, reply, keyHash, verdict, settings, 'hit', startedAt)
    return acceptLoaded(request, reply, keyHash, resolver.load(keyHash, request), settings, startedAt)
  }

  // The callbacks of a load live in functions of their own: a function holding closures over its
  // arguments allocates a context for them on every call, so a hit would pay for them too.
  function acceptLoaded (request: FastifyRequest, reply: FastifyReply, keyHash: string, loading: Promise<Resolved>,
    settings: RouteSettings, startedAt: number): Promise<void> {
    return loading.then(
      (resolved) => accept(request, reply, keyHash, resolved.verdict, settings, resolved.source, startedAt),
      (err: unknown) => {
        if (startedAt !== 0 && err instanceof ApiKeyLookupFailedError) telemetry.authenticated('lookup-failed', keyHash, startedAt)
        throw err
      })
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
    else finishLater(pending, done)
  }

  /**
   * Authenticates whatever the route's `config.apiKey` says of the hook, and enforces its scopes.
   * A request the hook already accepted on this route (with a key, or without one on an
   * optional route) is not checked (nor counted) twice.
   */
  async function verify (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (request.apiKey !== null || anonymousRequests.has(request)) return
    await authenticate(request, reply, routes.settingsOf(request))
  }

  return { hook: hook as onRequestHookHandler, verify }
}
