import Redis from 'ioredis'
import { apiKeyCacheContract } from './helpers/api-key-cache-contract'
import { usePrivateRedis } from './helpers/redis-server'

const redis = usePrivateRedis()

// The apps' clients get the settings a user would give a shared connection.
const createClient = (): Redis => redis.server.client({ maxRetriesPerRequest: 3 })

apiKeyCacheContract('memory', { backend: 'memory' })
apiKeyCacheContract('redis', { backend: 'redis', createClient, inspect: () => redis.admin })
apiKeyCacheContract('tiered', { backend: 'tiered', createClient, inspect: () => redis.admin })
