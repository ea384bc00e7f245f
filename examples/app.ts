import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
// A user writes `from 'fastify-auth-cache'`. That name resolves to dist/ under tsx after a build,
// but not for the type check (moduleResolution node10 has no package self-reference), and the
// tests would then run stale compiled code; the sources are the same package.
import fastifyAuthCache, { type BackendName } from '../lib'
import { KeyTable, type CreatedKey, type KeyStore } from './key-table'
import type { PrometheusMetrics } from './metrics'

export const KEY_PREFIX = 'demo'

/** Every scope of the example: reading keys and counters, and creating or revoking keys. */
export const SCOPES = ['keys:read', 'keys:write'] as const

export interface ExampleAppOptions<K extends KeyStore = KeyTable> {
  /** Default: 'redis' when `redisUrl` is set, else 'memory'. */
  backend?: BackendName
  /** Registers @fastify/redis with this url, for the redis and tiered backends. */
  redisUrl?: string
  logger?: FastifyServerOptions['logger']
  /**
   * Where keys are kept; default a new in-memory KeyTable. Apps given one table behave as
   * processes sharing one database of keys.
   */
  keys?: K
  /** Serves /metrics (Prometheus text) with this handler, and turns the plugin's metrics on. */
  metrics?: PrometheusMetrics
}

export interface ExampleApp<K extends KeyStore = KeyTable> {
  app: FastifyInstance
  keys: K
  /** Seeded at start so that the routes can be tried at once: scopes keys:read and keys:write. */
  demoKey: CreatedKey
  /** Seeded too, with keys:read only: creating or revoking keys with it answers 403. */
  readOnlyKey: CreatedKey
}

const keyView = {
  type: 'object',
  properties: { id: { type: 'string' }, name: { type: 'string' } },
  required: ['id', 'name']
} as const

export async function buildExampleApp<K extends KeyStore = KeyTable> (options: ExampleAppOptions<K> = {}): Promise<ExampleApp<K>> {
  // K is KeyTable whenever no table is given (its default).
  const keys = options.keys ?? new KeyTable(KEY_PREFIX) as KeyStore as K
  const demoKey = await keys.create('demo', [...SCOPES])
  const readOnlyKey = await keys.create('read-only', ['keys:read'])
  const app = Fastify({ logger: options.logger ?? false })

  if (options.redisUrl !== undefined) await app.register(fastifyRedis, { url: options.redisUrl })
  await app.register(fastifyAuthCache, {
    backend: options.backend ?? (options.redisUrl !== undefined ? 'redis' : 'memory'),
    metrics: options.metrics !== undefined,
    apiKeys: {
      lookup: async (keyHash) => (await keys.find(keyHash)) ?? null,
      // Junk and mistyped keys are refused before they cost a cache access or a lookup.
      format: { prefix: KEY_PREFIX },
      // Once a minute, and at shutdown: how often each key was used (ids and counts, never keys).
      onUsage: (batch) => {
        app.log.info({ usage: batch.map(({ id, count, lastUsedAt }) => ({ id, count, lastUsedAt })) }, 'API key usage')
      }
    }
  })
  const canWrite = { apiKey: { scopes: ['keys:write'] } }

  app.get('/health', { config: { apiKey: false } }, async () => ({ status: 'ok' }))
  const metrics = options.metrics
  if (metrics !== undefined) {
    app.get('/metrics', { config: { apiKey: false } }, (request, reply) => {
      reply.hijack()
      metrics.handle(request.raw, reply.raw)
    })
  }

  // The response schema is an allow-list: nothing else of the record reaches the client.
  app.get('/whoami', { schema: { response: { 200: keyView } } }, async (request) => request.apiKey)

  app.post<{ Body: { name: string, scopes?: string[] } }>('/keys', {
    config: canWrite,
    schema: {
      body: {
        type: 'object',
        properties: {
          name: { type: 'string', minLength: 1, maxLength: 100 },
          scopes: { type: 'array', items: { enum: SCOPES }, uniqueItems: true }
        },
        required: ['name'],
        additionalProperties: false
      },
      response: {
        201: {
          type: 'object',
          properties: { ...keyView.properties, key: { type: 'string' } },
          required: ['id', 'name', 'key']
        }
      }
    }
  }, async (request, reply) => {
    // A new key may read unless it is given more.
    const created = await keys.create(request.body.name, request.body.scopes ?? ['keys:read'])
    request.log.info({ keyId: created.id, by: request.apiKey.id }, 'API key created')
    return reply.code(201).send(created)
  })

  app.delete<{ Params: { id: string } }>('/keys/:id', { config: canWrite }, async (request, reply) => {
    const hash = await keys.revoke(request.params.id)
    if (hash === undefined) return reply.code(404).send({ statusCode: 404, error: 'Not Found', message: 'No such key' })
    // The table first: a lookup racing with this delete must already read the revoked row.
    await app.apiKeyCache.delete(hash)
    request.log.info({ keyId: request.params.id, by: request.apiKey.id }, 'API key revoked')
    return reply.code(204).send()
  })

  app.get('/stats', { config: { apiKey: { scopes: ['keys:read'] } } }, async () => ({ backend: app.apiKeyCache.backend, ...app.apiKeyCache.stats() }))

  return { app, keys, demoKey, readOnlyKey }
}
