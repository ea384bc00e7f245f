import { after, before } from 'node:test'
import Redis from 'ioredis'
import { apiKeyCacheContract } from './helpers/api-key-cache-contract'
import { startRedis, type RedisServer } from './helpers/redis-server'

let server: RedisServer
let inspect: Redis

before(async () => {
  server = await startRedis()
  inspect = server.client()
})

after(async () => {
  inspect?.disconnect()
  await server?.destroy()
})

// The apps' clients get the settings a user would give a shared connection.
const createClient = (): Redis => server.client({ maxRetriesPerRequest: 3 })

apiKeyCacheContract('memory', { backend: 'memory' })
apiKeyCacheContract('redis', { backend: 'redis', createClient, inspect: () => inspect })
apiKeyCacheContract('tiered', { backend: 'tiered', createClient, inspect: () => inspect })
