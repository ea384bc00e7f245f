/**
 * The part of an ioredis `Redis` or `Cluster` this plugin uses. Declared structurally so that a
 * memory-only user needs neither ioredis nor its types.
 */
export interface RedisClient {
  status?: string
  options?: { keyPrefix?: string, redisOptions?: { keyPrefix?: string } }
  get (key: string): Promise<string | null>
  getBuffer (key: string): Promise<Buffer | null>
  // unknown[]: ioredis' overloads end in an optional callback (and SCAN TYPE takes a Buffer), which
  // a narrower rest type would reject, so an ioredis client would not type-check as a RedisClient.
  set (key: string, value: string | Buffer, ...args: unknown[]): Promise<unknown>
  del (...keys: string[]): Promise<number>
  unlink (...keys: string[]): Promise<number>
  scan (cursor: string | number, ...args: unknown[]): Promise<[string, string[]]>
  publish (channel: string, message: string): Promise<number>
  defineCommand (name: string, definition: { numberOfKeys: number, lua: string }): void
  /** Redis takes (options), Cluster (startupNodes, options). */
  duplicate (...args: unknown[]): RedisClient
  on (event: string, listener: (...args: any[]) => void): unknown
  removeListener (event: string, listener: (...args: any[]) => void): unknown
  subscribe (...channels: string[]): Promise<unknown>
  ping (): Promise<unknown>
  quit (): Promise<unknown>
  disconnect (reconnect?: boolean): void
  nodes? (role?: 'master' | 'slave' | 'all'): RedisClient[]
  [command: string]: any
}

/** Duck typing: ioredis is an optional peer, so `instanceof` is not available. */
export function isRedisClient (value: unknown): value is RedisClient {
  if (typeof value !== 'object' || value === null) return false
  const candidate = value as Record<string, unknown>
  return typeof candidate.get === 'function' &&
    typeof candidate.set === 'function' &&
    typeof candidate.defineCommand === 'function' &&
    typeof candidate.duplicate === 'function'
}

export function isCluster (client: RedisClient): boolean {
  return typeof client.nodes === 'function' && (client as { isCluster?: boolean }).isCluster === true
}

/**
 * The `keyPrefix` ioredis adds to every key argument. It is not added to `SCAN MATCH`
 * patterns, and keys returned by `SCAN` already carry it.
 */
export function clientKeyPrefix (client: RedisClient): string {
  return client.options?.keyPrefix ?? client.options?.redisOptions?.keyPrefix ?? ''
}

/** Defines a Lua command once per client; ioredis runs it by EVALSHA and falls back to EVAL. */
export function defineScript (client: RedisClient, name: string, numberOfKeys: number, lua: string): void {
  if (typeof client[name] !== 'function') client.defineCommand(name, { numberOfKeys, lua })
}
