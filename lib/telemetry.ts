import diagnostics from 'node:diagnostics_channel'
import { InvalidOptionError } from './errors'
import type { BackendName } from './types'

/**
 * What the plugin tells operators: `node:diagnostics_channel` messages, published only while
 * someone subscribes, and OpenTelemetry instruments with `metrics: true`. With neither, the
 * request path pays one `hasSubscribers` read.
 */

const authenticateChannel = diagnostics.channel('fastify-auth-cache:authenticate')
const invalidationChannel = diagnostics.channel('fastify-auth-cache:invalidation')
const lookupChannel = diagnostics.channel('fastify-auth-cache:lookup')

/**
 * How a request's authentication ended; hit, miss and stale are accepted requests, anonymous a
 * request without a key on a route whose key is optional, quota a 429.
 */
export type AuthOutcome = 'hit' | 'miss' | 'stale' | 'missing' | 'malformed' | 'unknown' | 'inactive' | 'expired' | 'forbidden' | 'lookup-failed' | 'anonymous' | 'quota'
export type InvalidationEvent = 'delete' | 'clear' | 'owner' | 'trust-lost' | 'trust-regained'

interface Instruments {
  requests: { add (value: number, attributes: Record<string, string>): void }
  lookupDuration: { record (value: number): void }
  invalidations: { add (value: number, attributes: Record<string, string>): void }
}

export interface Telemetry {
  /** Whether a request's outcome is wanted at all; read once per request. */
  readonly watchingRequests: boolean
  readonly watchingLookups: boolean
  authenticated (outcome: AuthOutcome, keyHash: string | undefined, startedAt: number): void
  lookedUp (keyHash: string, durationMs: number, ok: boolean): void
  invalidated (kind: InvalidationEvent, keyHash?: string): void
}

export interface TelemetryOptions {
  backend: BackendName
  metrics: boolean
  /** Entries held in process memory, for the `entries` gauge. */
  entries: () => number
}

type OtelApi = {
  metrics: {
    getMeter (name: string): {
      createCounter (name: string, options: object): Instruments['requests']
      createHistogram (name: string, options: object): Instruments['lookupDuration']
      createObservableGauge (name: string, options: object): { addCallback (callback: (result: { observe (value: number): void }) => void): void }
    }
  }
}

/** @opentelemetry/api is an optional peer: loaded only with `metrics: true`. */
function loadOtel (): OtelApi {
  try {
    return require('@opentelemetry/api') as OtelApi
  } catch {
    throw new InvalidOptionError('metrics', 'needs @opentelemetry/api installed (npm install @opentelemetry/api)')
  }
}

function createInstruments (options: TelemetryOptions): Instruments {
  // The global meter provider the application registered before the plugin.
  const meter = loadOtel().metrics.getMeter('fastify-auth-cache')
  const entries = meter.createObservableGauge('fastify_auth_cache.entries', {
    description: 'API-key cache entries held in process memory'
  })
  entries.addCallback((result) => result.observe(options.entries()))
  return {
    requests: meter.createCounter('fastify_auth_cache.requests', { description: 'Requests authenticated, by outcome and backend' }),
    lookupDuration: meter.createHistogram('fastify_auth_cache.lookup.duration', { description: 'Duration of lookup calls', unit: 'ms' }),
    invalidations: meter.createCounter('fastify_auth_cache.invalidations', { description: 'Invalidations received from other processes, and changes of trust in the channel, by kind' })
  }
}

export function createTelemetry (options: TelemetryOptions): Telemetry {
  const { backend } = options
  const instruments = options.metrics ? createInstruments(options) : undefined
  // One attributes object per outcome, made once: recording allocates nothing.
  const requestAttributes = new Map<AuthOutcome, Record<string, string>>()
  const attributesFor = (outcome: AuthOutcome): Record<string, string> => {
    let attributes = requestAttributes.get(outcome)
    if (attributes === undefined) requestAttributes.set(outcome, attributes = { outcome, backend })
    return attributes
  }
  return {
    get watchingRequests () {
      return instruments !== undefined || authenticateChannel.hasSubscribers
    },
    get watchingLookups () {
      return instruments !== undefined || lookupChannel.hasSubscribers
    },
    authenticated (outcome, keyHash, startedAt) {
      instruments?.requests.add(1, attributesFor(outcome))
      if (authenticateChannel.hasSubscribers) {
        const durationMs = performance.now() - startedAt
        authenticateChannel.publish(keyHash === undefined ? { outcome, backend, durationMs } : { outcome, keyHash, backend, durationMs })
      }
    },
    lookedUp (keyHash, durationMs, ok) {
      instruments?.lookupDuration.record(durationMs)
      if (lookupChannel.hasSubscribers) lookupChannel.publish({ keyHash, durationMs, ok })
    },
    invalidated (kind, keyHash) {
      instruments?.invalidations.add(1, { kind })
      if (invalidationChannel.hasSubscribers) invalidationChannel.publish(keyHash === undefined ? { kind } : { kind, keyHash })
    }
  }
}
