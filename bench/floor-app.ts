import crypto from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import { LRUCache } from 'lru-cache'

type OneShotHash = (algorithm: string, data: string, encoding: 'hex') => string
const oneShot = (crypto as unknown as { hash: OneShotHash }).hash

/**
 * The floor of bench/hook.ts: a hook that hashes the key with `crypto.hash` and reads one
 * lru-cache entry into a decorated request property, the least an API-key cache hit can do.
 * In a module of its own so that the bench can load a second, independent copy of it.
 */
export function floorApp (keys: string[]): FastifyInstance {
  const app = Fastify({ logger: false })
  const cache = new LRUCache<string, { id: string }>({ max: 10_000 })
  for (const [i, key] of keys.entries()) cache.set(oneShot('sha256', key, 'hex'), { id: `key-${i}` })
  app.decorateRequest('floorKey', null)
  app.addHook('onRequest', (request, _reply, done) => {
    (request as unknown as { floorKey: unknown }).floorKey = cache.get(oneShot('sha256', request.headers['x-api-key'] as string, 'hex'))
    done()
  })
  app.get('/', async () => 'ok')
  return app
}
