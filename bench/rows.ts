import type { BackendName } from '../lib'

/** How a row's server authenticates the one route every row serves. */
export type Authentication =
  | { kind: 'none' }
  | { kind: 'plugin', backend: BackendName, scoped?: boolean }
  | { kind: 'bearer-auth' }
  | { kind: 'redis-get' }

export interface Row {
  label: string
  authentication: Authentication
  /** Size of the key table; requests rotate through all of it. */
  keys: number
  /** The request header carrying the key. */
  header: 'x-api-key' | 'authorization'
  /** Compared with the bare route in the ratio column. */
  yardstick?: boolean
}

/** What a server child is told: its row and where the bench's private Redis listens. */
export interface ServerConfig {
  row: Row
  redisUrl: string
  /** Keys under which this row's server keeps its data in the shared private Redis. */
  redisPrefix: string
}

export function benchRows (largeTable: number): Row[] {
  const plugin = (backend: BackendName, keys: number): Row => ({
    label: `fastify-auth-cache, ${backend}, ${keys.toLocaleString('en-US')} keys`,
    authentication: { kind: 'plugin', backend },
    keys,
    header: 'x-api-key'
  })
  const bearer = (keys: number): Row => ({
    label: `@fastify/bearer-auth, ${keys.toLocaleString('en-US')} key${keys === 1 ? '' : 's'}`,
    authentication: { kind: 'bearer-auth' },
    keys,
    header: 'authorization'
  })
  return [
    // The bare route receives the same requests, key header included, and ignores the key.
    { label: 'bare route, no authentication', authentication: { kind: 'none' }, keys: 10, header: 'x-api-key', yardstick: true },
    plugin('memory', 10),
    plugin('memory', largeTable),
    // A route that requires scopes every key holds: a hit must cost what it costs unscoped.
    { ...plugin('memory', 10), label: 'fastify-auth-cache, memory, scoped route, 10 keys', authentication: { kind: 'plugin', backend: 'memory', scoped: true } },
    plugin('redis', 10),
    plugin('redis', largeTable),
    plugin('tiered', 10),
    plugin('tiered', largeTable),
    bearer(1),
    bearer(Math.min(10_000, largeTable)),
    { label: 'Redis GET on every request, no process cache (10 keys)', authentication: { kind: 'redis-get' }, keys: 10, header: 'x-api-key' }
  ]
}
