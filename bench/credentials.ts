import Fastify, { type FastifyInstance } from 'fastify'
import Redis from 'ioredis'
import fastifyAuthCache, { encryptedSerializer, type BackendName } from '../lib'
import { benchCommand } from './cli'

/**
 * `credentialStore.load()` per second on one thread, on each backend, for a small OAuth token
 * set, plain JSON and AES-256-GCM encrypted: what an app that reads its provider token on
 * every outgoing call pays. Each figure is the best of a few 1 s samples, measured in turn.
 *   npx tsx bench/credentials.ts            prints a table (starts its own redis-server)
 *   npx tsx bench/credentials.ts --json URL prints JSON, using the Redis at URL (bench/run.ts)
 */

export interface CredentialFigure { label: string, loadsPerSecond: number }

const SAMPLES = Number(process.env.BENCH_CREDENTIAL_SAMPLES || 3)
const SAMPLE_MS = Number(process.env.BENCH_CREDENTIAL_SAMPLE_MS || 1000)
const TOKEN = { accessToken: 'a'.repeat(40), refreshToken: 'r'.repeat(40), expiresAt: 1_900_000_000_000, scope: 'read write' }
const ENCRYPTION = encryptedSerializer({ keys: { k1: Buffer.alloc(32, 7) }, current: 'k1' })

async function loadsPerSecond (app: FastifyInstance): Promise<number> {
  const store = app.credentialStore
  let best = 0
  for (let s = 0; s < SAMPLES; s++) {
    const started = performance.now()
    let loads = 0
    // Batches of concurrent loads keep one Redis connection busy, as concurrent callers would.
    while (performance.now() - started < SAMPLE_MS) {
      await Promise.all(Array.from({ length: 32 }, () => store.load()))
      loads += 32
    }
    best = Math.max(best, loads / ((performance.now() - started) / 1000))
  }
  return best
}

async function measure (backend: BackendName, encrypted: boolean, redisUrl: string): Promise<number> {
  const client = backend === 'memory' ? undefined : new Redis(redisUrl)
  const app = Fastify()
  await app.register(fastifyAuthCache, {
    backend,
    strict: true,
    ...(client !== undefined && { redis: client }),
    apiKeys: { hook: false },
    credentials: { keyPrefix: `bench:cred:${backend}:${encrypted}:`, ...(encrypted ? ENCRYPTION : {}) }
  })
  await app.ready()
  await app.credentialStore.save(TOKEN)
  try {
    return await loadsPerSecond(app)
  } finally {
    await app.close()
    await client?.quit()
  }
}

export async function measureCredentialLoads (redisUrl: string): Promise<CredentialFigure[]> {
  const figures: CredentialFigure[] = []
  for (const encrypted of [false, true]) {
    for (const backend of ['memory', 'redis', 'tiered'] as const) {
      figures.push({
        label: `credentialStore.load(), ${backend}${encrypted ? ', AES-256-GCM' : ''}`,
        loadsPerSecond: await measure(backend, encrypted, redisUrl)
      })
    }
  }
  return figures
}

if (require.main === module) {
  benchCommand(measureCredentialLoads, (figures) => {
    for (const { label, loadsPerSecond } of figures) {
      console.log(`${label.padEnd(48)} ${Math.round(loadsPerSecond).toLocaleString('en-US').padStart(12)} loads/s`)
    }
  })
}
