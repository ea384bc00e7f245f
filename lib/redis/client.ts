/**
 * What the plugin needs from a Redis client, whatever the client. Each supported client library
 * gets one adapter (see ioredis-adapter.ts); stores, the bus and clear() see only this.
 */

/** A Lua script with a stable name; adapters may cache it by SHA and fall back to EVAL. */
export interface RedisScript {
  readonly name: string
  /** How many keys it takes; -1 for as many as each call gives. */
  readonly keys: number
  readonly lua: string
}

export type RedisArg = string | number | Buffer

/** One master, for SCAN. Keys go in and come out as stored, with any client prefix included. */
export interface RedisScanNode {
  scan (cursor: string, pattern: string, count: number): Promise<[string, string[]]>
  /** Deletes keys named as SCAN returned them; one command per key where slots may differ. */
  unlink (storedKeys: string[]): Promise<number>
}

export interface RedisSubscriberEvents {
  message (channel: string, message: string): void
  /** The connection is up again (or for the first time): subscribe again. */
  ready (): void
  /** The connection was lost: messages may be missed from now on. */
  lost (): void
}

/** A connection of the plugin's own, made from the user's client with its settings (TLS, auth, Sentinel). */
export interface RedisSubscriber {
  subscribe (channels: string[]): Promise<void>
  /** Closes the connection, waiting at most `timeoutMs` for a clean QUIT. */
  close (timeoutMs: number): Promise<void>
}

export interface RedisAdapter {
  /** The prefix the client itself puts in front of every key (ioredis `keyPrefix`); '' for none. */
  readonly keyPrefix: string
  /** Whether keys live on several masters (Redis Cluster): a script may then name keys of one slot only. */
  readonly cluster: boolean
  run (script: RedisScript, keys: string[], args: RedisArg[]): Promise<unknown>
  /**
   * Runs `script`, then waits (WAIT) on the same connection for `replicas` replicas of the node
   * that ran it to acknowledge, at most `timeoutMs`. Resolves with the script's result and the
   * number of replicas that acknowledged.
   */
  runReplicated (script: RedisScript, keys: string[], args: RedisArg[], replicas: number, timeoutMs: number): Promise<[unknown, number]>
  /**
   * Whether the master that holds `key` has a replica, as far as the client can tell (on a
   * Cluster, from its node table); false when it cannot know (a plain connection).
   */
  hasReplica (key: string): Promise<boolean>
  getBuffer (key: string): Promise<Buffer | null>
  /** The bytes and their TTL in ms (negative: none, or absent), read together. */
  getBufferWithTtl (key: string): Promise<[Buffer | null, number]>
  set (key: string, value: string | Buffer, ttlMs?: number): Promise<void>
  del (key: string): Promise<number>
  /**
   * The integer a counter holds, 0 when absent or not a number. Sent as GETRANGE, which the
   * request path never sends, so that INFO commandstats tells these periodic reads from requests.
   */
  readCounter (key: string): Promise<number>
  publish (channel: string, message: string): Promise<void>
  masters (): RedisScanNode[]
  subscriber (name: string, events: RedisSubscriberEvents): RedisSubscriber
  /** Calls `listener` each time the client's connection is back after a loss; returns the remover. */
  onReconnect (listener: () => void): () => void
}
