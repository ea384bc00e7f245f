import Fastify, { type FastifyInstance } from 'fastify'
import bearerAuth from '@fastify/bearer-auth'
import Redis from 'ioredis'
import { answerParent, tellParent } from '../test/helpers/child-process'
import fastifyAuthCache, { hashApiKey } from '../lib'
import { benchKeys } from './keys'
import type { ServerConfig } from './rows'

/**
 * One row's server: the same route behind the row's authentication, on an ephemeral loopback
 * port. Started by bench/run.ts with the row as its JSON argument.
 */

// Long enough that no cached record expires during a run, so every row measures steady state.
const TTL_SECONDS = 3600
// What a typical key holds, and what the scoped row's route asks of it.
const HELD_SCOPES = ['orders:read', 'orders:write', 'invoices:read', 'customers:read']
const ROUTE_SCOPES = ['orders:read', 'orders:write']

class Unauthorized extends Error {
  statusCode = 401
}

async function build (config: ServerConfig): Promise<{ app: FastifyInstance, redis: Redis | undefined }> {
  const { row, redisUrl, redisPrefix } = config
  const auth = row.authentication
  const app = Fastify({ logger: false })
  const keys = benchKeys(row.keys)
  const needsRedis = (auth.kind === 'plugin' && auth.backend !== 'memory') || auth.kind === 'redis-get'
  const redis = needsRedis ? new Redis(redisUrl) : undefined
  redis?.on('error', (err) => console.error(`${row.label}: redis: ${err.message}`))

  if (auth.kind === 'plugin') {
    // The source of truth is a table in process memory: only misses reach it, and the warm-up
    // leaves none, so its speed does not show in the measured rounds.
    const table = new Map(keys.map((key, i) => [hashApiKey(key), { id: `key-${i}`, active: true, scopes: HELD_SCOPES }]))
    await app.register(fastifyAuthCache, {
      backend: auth.backend,
      strict: true,
      ...(redis !== undefined && { redis }),
      apiKeys: {
        lookup: (keyHash) => table.get(keyHash) ?? null,
        ttlSeconds: TTL_SECONDS,
        max: Math.max(10_000, row.keys * 2),
        keyPrefix: redisPrefix
      }
    })
  } else if (auth.kind === 'bearer-auth') {
    await app.register(bearerAuth, { keys: new Set(keys) })
  } else if (auth.kind === 'redis-get') {
    const client = redis!
    await Promise.all(keys.map((key, i) =>
      client.set(redisPrefix + hashApiKey(key), JSON.stringify({ id: `key-${i}`, active: true }))))
    app.addHook('onRequest', async (request) => {
      const key = request.headers['x-api-key']
      if (typeof key !== 'string' || key.length === 0) throw new Unauthorized('Missing API key')
      const raw = await client.get(redisPrefix + hashApiKey(key))
      const record = raw === null ? undefined : JSON.parse(raw) as { active?: boolean }
      if (record?.active !== true) throw new Unauthorized('Invalid API key')
    })
  }

  const scoped = auth.kind === 'plugin' && auth.scoped === true
  app.get('/', scoped ? { config: { apiKey: { scopes: ROUTE_SCOPES } } } : {}, async () => ({ hello: 'world' }))
  return { app, redis }
}

async function main (): Promise<void> {
  const config = JSON.parse(process.argv[2]) as ServerConfig
  const { app, redis } = await build(config)
  const shutdown = async (): Promise<void> => {
    await app.close()
    await redis?.quit()
  }
  answerParent({
    stats: () => config.row.authentication.kind === 'plugin' ? app.apiKeyCache.stats() : null,
    /** CPU time this process has used, in µs: per request it is steadier than requests/s on a shared machine. */
    cpu: () => {
      const usage = process.cpuUsage()
      return usage.user + usage.system
    }
  }, shutdown)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address() as { port: number }
  tellParent('ready', { port: address.port })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
