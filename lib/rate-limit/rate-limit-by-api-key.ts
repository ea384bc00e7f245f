import type { FastifyRequest } from 'fastify'
import { ownerOf } from '../api-keys/record'
import { InvalidOptionError } from '../errors'
import type { ApiKeyRecord } from '../types'
import { clientIpKey } from './client-ip'

/** A budget: `max` requests per window of `timeWindowMs` milliseconds. */
export interface ApiKeyRateLimit {
  max: number
  timeWindowMs: number
}

/**
 * Options for `@fastify/rate-limit` (v11), spread into its own: `{ ...rateLimitByApiKey(d), redis }`.
 * Declared here, structurally, so that this package needs nothing of `@fastify/rate-limit`.
 */
export interface RateLimitByApiKeyOptions {
  /** After the `onRequest` authentication, so that `request.apiKey` is known. */
  hook: 'preHandler'
  /** `apikey-owner:<ownerId>` or `apikey-id:<id>`; the client's IP where no key was authenticated. */
  keyGenerator: (request: FastifyRequest) => string
  /** The record's `rateLimit.max`, else the default. */
  max: (request: FastifyRequest, key: string) => number
  /** The record's `rateLimit.timeWindowMs`, else the default. */
  timeWindow: (request: FastifyRequest, key: string) => number
}

// Neither can be read as an IP address (IPv6 is hex digits, colons and dots), and they differ
// from each other, so an owner and a key of the same name never share a budget.
const OWNER_PREFIX = 'apikey-owner:'
const KEY_PREFIX = 'apikey-id:'

const isMax = (value: unknown): value is number => Number.isInteger(value) && (value as number) >= 0
const isWindow = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value) && value > 0

/** The record's own `rateLimit`, when it has one; a record on a route without authentication is null. */
function ownLimit (request: FastifyRequest): Record<string, unknown> | undefined {
  const record = request.apiKey as ApiKeyRecord | null
  const limit = record?.rateLimit
  return typeof limit === 'object' && limit !== null ? limit as Record<string, unknown> : undefined
}

/**
 * Options for `@fastify/rate-limit` that count per API key owner: every key of one
 * `record.ownerId` shares one budget, a key without an owner has its own (by `record.id`, never
 * the key). The budget is the record's `rateLimit: { max, timeWindowMs }` when it has one, else
 * `defaults`. Requests that no key authenticated (routes with `config: { apiKey: false }`) are
 * counted by IP, as `@fastify/rate-limit` does by default.
 */
export function rateLimitByApiKey (defaults: ApiKeyRateLimit): RateLimitByApiKeyOptions {
  if (typeof defaults !== 'object' || defaults === null) throw new InvalidOptionError('defaults', 'must be an object { max, timeWindowMs }')
  const { max, timeWindowMs } = defaults
  if (!isMax(max)) throw new InvalidOptionError('defaults.max', 'must be a non-negative integer')
  if (!isWindow(timeWindowMs)) throw new InvalidOptionError('defaults.timeWindowMs', 'must be a positive number of milliseconds')

  return {
    hook: 'preHandler',
    keyGenerator (request) {
      const record = request.apiKey as ApiKeyRecord | null
      if (record === null || record === undefined) return clientIpKey(request.ip)
      const owner = ownerOf(record)
      return owner === undefined ? KEY_PREFIX + record.id : OWNER_PREFIX + owner
    },
    max (request) {
      const limit = ownLimit(request)
      return limit !== undefined && isMax(limit.max) ? limit.max : max
    },
    timeWindow (request) {
      const limit = ownLimit(request)
      return limit !== undefined && isWindow(limit.timeWindowMs) ? limit.timeWindowMs : timeWindowMs
    }
  }
}
