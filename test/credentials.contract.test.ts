import { credentialStoreContract } from './helpers/credentials-contract'
import { usePrivateRedis } from './helpers/redis-server'

const redis = usePrivateRedis()

credentialStoreContract('memory backend', { backend: 'memory' })
// Each app gets a client of its own, as another process would have.
credentialStoreContract('redis backend', { backend: 'redis', createClient: () => redis.server.client(), inspect: () => redis.admin })
credentialStoreContract('tiered backend', { backend: 'tiered', createClient: () => redis.server.client(), inspect: () => redis.admin })
