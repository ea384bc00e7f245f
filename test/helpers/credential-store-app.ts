import type { TestContext } from 'node:test'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyAuthCache, { type BackendName, type CredentialsOptions, type CredentialStore, type FastifyAuthCacheOptions } from '../../lib'
import type { RedisServer } from './redis-server'

/**
 * The credential store of a newly registered, ready app with the API-key hook off, closed after
 * the test. With `redis` (the redis backend unless `backend` says 'tiered'), each app has a client
 * of its own, closed after the test too, as another process of the deployment would.
 */
export async function openCredentialStore<T = unknown> (t: TestContext, redis: RedisServer | undefined,
  credentials: CredentialsOptions, backend: BackendName = redis === undefined ? 'memory' : 'redis'): Promise<CredentialStore<T>> {
  const app = Fastify()
  const options: FastifyAuthCacheOptions = { backend, strict: true, apiKeys: { hook: false }, credentials }
  if (redis !== undefined) {
    const client = redis.client()
    t.after(() => client.quit())
    options.redis = client
  }
  await app.register(fastifyAuthCache, options)
  await app.ready()
  t.after(() => app.close())
  return app.credentialStore as CredentialStore<T>
}

/**
 * For a child process that stands for another process of the deployment: a ready app with the
 * API-key hook off, on @fastify/redis (REDIS_URL, one retry per command), its credentials under
 * KEY_PREFIX, on the tiered backend when BACKEND is 'tiered' and the redis backend otherwise.
 * The caller closes it.
 */
export async function credentialAppFromEnv (): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fastifyRedis, { url: process.env.REDIS_URL!, maxRetriesPerRequest: 1 })
  await app.register(fastifyAuthCache, {
    backend: process.env.BACKEND === 'tiered' ? 'tiered' : 'redis',
    strict: true,
    apiKeys: { hook: false },
    credentials: { keyPrefix: process.env.KEY_PREFIX! }
  })
  await app.ready()
  return app
}
