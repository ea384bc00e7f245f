import Fastify, { type FastifyInstance } from 'fastify'
import Redis from 'ioredis'
import { answerParent, tellParent } from '../test/helpers/child-process'
import fastifyAuthCache from '../lib'

/**
 * One Node process of the scale benchmark (bench/scale.ts): it hosts `apps` idle Fastify apps on
 * the tiered backend, each with its own ioredis client, as that many separate application
 * processes would be. Nothing is requested: what they cost Redis is what idle processes cost.
 */

export interface ScaleHostConfig {
  name: string
  redisUrl: string
  apps: number
}

export interface HostCpu {
  /** CPU time this process used (user + system), in microseconds since it started. */
  cpuMicros: number
  /** Apps this process hosts. */
  apps: number
}

async function main (): Promise<void> {
  const config = JSON.parse(process.argv[2]!) as ScaleHostConfig
  const apps: FastifyInstance[] = []
  const clients: Redis[] = []

  const shutdown = async (): Promise<void> => {
    await Promise.all(apps.map((app) => app.close().catch(() => {})))
    for (const client of clients) client.disconnect()
  }

  answerParent({
    cpu: (): HostCpu => {
      const usage = process.cpuUsage()
      return { cpuMicros: usage.user + usage.system, apps: apps.length }
    }
  }, shutdown)

  for (let i = 0; i < config.apps; i++) {
    const client = new Redis(config.redisUrl, { connectionName: `scale-${config.name}-${i}` })
    client.on('error', () => {})
    clients.push(client)
    const app = Fastify({ logger: { level: 'error' } })
    await app.register(fastifyAuthCache, {
      backend: 'tiered',
      strict: true,
      redis: client,
      apiKeys: { lookup: async () => null }
    })
    app.get('/', async () => 'ok')
    await app.ready()
    apps.push(app)
  }
  tellParent('ready', { apps: apps.length })
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
