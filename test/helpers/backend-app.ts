import type { TestContext } from 'node:test'
import Fastify, { type FastifyInstance, type FastifyServerOptions, type LightMyRequestResponse } from 'fastify'
import fastifyAuthCache, { generateApiKey, hashApiKey, type ApiKeyRecord, type ApiKeysOptions } from '../../lib'
import type { PrivateRedis } from './redis-server'

/** The backends a single-process test file runs its tests on. */
export const BACKENDS = ['memory', 'redis', 'tiered'] as const
export type Backend = typeof BACKENDS[number]

/**
 * A source of truth: key → record, and every hash it was asked for. `lookup` answers a copy, as
 * a database does: nothing of the cache can be changed through it (unless `shareRecords`).
 */
export class RecordKeys<R = ApiKeyRecord> {
  readonly records = new Map<string, R>()
  readonly calls: string[] = []
  /** Answer the record object itself rather than a copy (to watch what the cache does with it). */
  shareRecords = false

  /** `prefix`: the prefix of the keys `add` generates. */
  constructor (private readonly prefix: string) {}

  /** A new key whose lookup answers `record`. */
  add (record: R): string {
    const { key, hash } = generateApiKey({ prefix: this.prefix })
    this.records.set(hash, record)
    return key
  }

  /** The source of truth changes the key's record. */
  replace (key: string, record: R): void {
    this.records.set(hashApiKey(key), record)
  }

  readonly lookup: NonNullable<ApiKeysOptions['lookup']> = async (keyHash) => {
    this.calls.push(keyHash)
    const record = this.records.get(keyHash)
    if (record === undefined) return null
    return (this.shareRecords ? record : structuredClone(record)) as ApiKeyRecord
  }
}

export interface BackendAppOptions {
  fastify?: FastifyServerOptions
  /** 2000 unless told. */
  redisTimeoutMs?: number
}

/**
 * An app with the plugin registered (strict) on `backend`, not yet ready, for routes to be added.
 * For redis and tiered it has a fresh client of `redis`, pinged first. Closed after the test,
 * then its client disconnected.
 */
export async function registerOnBackend (t: TestContext, redis: PrivateRedis, backend: Backend, apiKeys: ApiKeysOptions,
  options: BackendAppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify(options.fastify)
  const client = backend === 'memory' ? undefined : redis.server.client()
  t.after(async () => {
    await app.close()
    client?.disconnect()
  })
  await client?.ping()
  await app.register(fastifyAuthCache, {
    backend,
    strict: true,
    redis: client,
    // Timeouts are not under test here; a loaded machine must not turn a slow Redis call into a miss.
    redisTimeoutMs: options.redisTimeoutMs ?? 2000,
    apiKeys
  })
  return app
}

/** One request with `key` in `header` (`authorization` as a Bearer token); no key, no header. */
export function send (app: FastifyInstance, method: 'GET' | 'POST' | 'DELETE' | 'HEAD', url: string, key?: string, header = 'x-api-key'): Promise<LightMyRequestResponse> {
  const value = key === undefined ? undefined : header === 'authorization' ? `Bearer ${key}` : key
  return app.inject({ method, url, headers: value === undefined ? {} : { [header]: value } })
}
