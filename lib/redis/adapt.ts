import type { RedisAdapter } from './client'
import { ioredisAdapter, isIoredis } from './ioredis-adapter'

/** The adapter for a client of a supported library, or undefined for anything else. */
export function adaptRedis (client: unknown): RedisAdapter | undefined {
  if (isIoredis(client)) return ioredisAdapter(client)
  return undefined
}
