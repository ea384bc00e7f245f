import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import Fastify from 'fastify'
import Redis from 'ioredis'
import { answerParent, tellParent } from '../test/helpers/child-process'
import fastifyAuthCache, { generateApiKey, hashApiKey, type ApiKeyRecord } from '../lib'
import { sharedClockMs } from './clock'

/**
 * One application process of a tiered deployment, for the revocation benchmark and the soak.
 * The source of truth is a table on a Redis of its own (`dbRedisUrl`), as a database would be,
 * so that restarting the cache's Redis does not lose it. The parent creates and revokes keys
 * through IPC; load reaches this process over HTTP or, for the revocation benchmark, through
 * `inject` in a loop here, so that the time of refusal is this process's own.
 */

export interface TieredPeerConfig {
  name: string
  cacheRedisUrl: string
  dbRedisUrl: string
  /** 'tiered' unless a negative control asks for 'memory'. */
  backend?: 'tiered' | 'memory'
}

export interface CreatedKey { key: string, hash: string }
export interface Revocation {
  /** Shared-clock ms just before `apiKeyCache.delete` was called. */
  startedAt: number
  /** When it returned, or failed. */
  endedAt: number
  error?: string
}
/** `at` is null when the key was still accepted at the deadline, or the loop failed (`error`). */
export interface Refusal { hash: string, at: number | null, status?: number, error?: string }

const DB_PREFIX = 'bench:db:'
const WATCH_DEADLINE_MS = 5_000

async function main (): Promise<void> {
  const config = JSON.parse(process.argv[2]) as TieredPeerConfig
  const cacheRedis = new Redis(config.cacheRedisUrl)
  const db = new Redis(config.dbRedisUrl)
  // ioredis reconnects by itself; the soak restarts the cache's Redis on purpose.
  cacheRedis.on('error', () => {})
  db.on('error', (err) => console.error(`${config.name}: database: ${err.message}`))

  const app = Fastify({ logger: { level: 'warn' } })
  await app.register(fastifyAuthCache, {
    backend: config.backend ?? 'tiered',
    strict: true,
    redis: cacheRedis,
    apiKeys: {
      lookup: async (keyHash) => {
        const raw = await db.get(DB_PREFIX + keyHash)
        return raw === null ? null : JSON.parse(raw) as ApiKeyRecord
      }
    }
  })
  app.get('/', async () => ({ hello: 'world' }))

  let created = 0

  const status = async (key: string): Promise<number> =>
    (await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': key } })).statusCode

  answerParent({
    create: async (): Promise<CreatedKey> => {
      const { key, hash } = generateApiKey({ prefix: 'bench' })
      await db.set(DB_PREFIX + hash, JSON.stringify({ id: `${config.name}-${created++}`, active: true }))
      return { key, hash }
    },

    /** The parent revokes as an application would: in the source of truth first, then in the cache. */
    revoke: async ({ hash }: { hash: string }): Promise<Revocation> => {
      const raw = await db.get(DB_PREFIX + hash)
      if (raw === null) throw new Error('no such key')
      await db.set(DB_PREFIX + hash, JSON.stringify({ ...JSON.parse(raw), active: false }))
      const startedAt = sharedClockMs()
      try {
        await app.apiKeyCache.delete(hash)
        return { startedAt, endedAt: sharedClockMs() }
      } catch (err) {
        return { startedAt, endedAt: sharedClockMs(), error: (err as Error).message }
      }
    },

    /**
     * Resolves once this process accepts the key from process memory: `ready()` waited until
     * memory may serve, so the first accepted request put the key there.
     */
    warm: async ({ key }: { key: string }): Promise<void> => {
      const code = await status(key)
      if (code !== 200) throw new Error(`a live key was answered ${code}`)
    },

    /**
     * Sends requests with the key back to back until one is refused, then reports when. Resolves
     * as soon as the loop has seen the key accepted, so the parent can revoke it.
     */
    watch: ({ key }: { key: string }): Promise<void> => new Promise((resolve, reject) => {
      const hash = hashApiKey(key)
      const deadline = Date.now() + WATCH_DEADLINE_MS
      let armed = false
      const loop = async (): Promise<void> => {
        while (Date.now() < deadline) {
          const code = await status(key)
          if (code === 200) {
            if (!armed) { armed = true; resolve() }
          } else {
            const at = sharedClockMs()
            if (!armed) return reject(new Error(`the key was answered ${code} before revocation`))
            return tellParent('refused', { hash, at, status: code })
          }
          // Lets the invalidation, which arrives as I/O, in between two requests.
          await yieldToEventLoop()
        }
        if (!armed) reject(new Error('the key was never accepted'))
        else tellParent('refused', { hash, at: null })
      }
      loop().catch((err: Error) => {
        if (!armed) reject(err)
        else tellParent('refused', { hash, at: null, error: err.message })
      })
    }),

    stats: () => app.apiKeyCache.stats()
  }, async () => {
    await app.close()
    await Promise.all([cacheRedis.quit().catch(() => {}), db.quit()])
  })

  await app.listen({ host: '127.0.0.1', port: 0 })
  tellParent('ready', { port: (app.server.address() as { port: number }).port })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
