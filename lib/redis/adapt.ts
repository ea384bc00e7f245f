import type { RedisAdapter } from './client'
import { ioredisAdapter, isIoredis } from './ioredis-adapter'
import { isNodeRedis, nodeRedisAdapter } from './node-redis-adapter'

/**
 * The adapter for a client of a supported library (ioredis or iovalkey `Redis`/`Cluster`,
 * node-redis `createClient`/`createCluster`), or undefined for anything else.
 */
export function adaptRedis (client: unknown): RedisAdapter | undefined {
  if (isIoredis(client)) return ioredisAdapter(client)
  if (isNodeRedis(client)) return nodeRedisAdapter(client)
  return undefined
}
