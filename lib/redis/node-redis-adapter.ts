import { createHash } from 'node:crypto'
import { replicaCheck } from './cluster-nodes'
import { readyAfterLoss } from './reconnection'
import type { RedisAdapter, RedisArg, RedisScanNode, RedisScript, RedisSubscriber, RedisSubscriberEvents } from './client'

/**
 * node-redis (the `redis` package, v6) `createClient` and `createCluster` clients, declared
 * structurally so that a memory-only user needs neither the library nor its types.
 *
 * Every command goes through `sendCommand`, which node-redis sends as given: it neither adds the
 * client's `keyPrefix` (so this adapter adds it to every key itself, as ioredis would) nor maps
 * the reply through the client's default type mapping when a mapping is passed with the
 * command (so a user's `withTypeMapping` cannot turn our strings into Buffers).
 */

type Arg = string | Buffer
type Listener = (...args: any[]) => void

interface CommandOptions {
  typeMapping?: Record<number, unknown>
}

interface EventSource {
  on (event: string, listener: Listener): unknown
  removeListener (event: string, listener: Listener): unknown
}

/** A `createClient` client, or a node client of a cluster. */
interface NodeRedisClientLike extends EventSource {
  readonly isOpen: boolean
  readonly isReady: boolean
  readonly options?: { keyPrefix?: Arg, socket?: Record<string, unknown> }
  sendCommand (args: readonly Arg[], options?: CommandOptions): Promise<unknown>
  duplicate (overrides?: Record<string, unknown>): NodeRedisClientLike
  connect (): Promise<unknown>
  subscribe (channels: string[], listener: (message: string, channel: string) => void): Promise<void>
  close (): Promise<void>
  destroy (): void
}

/** One node of a cluster's topology, as `masters` lists them. */
interface NodeRedisShardNode {
  address?: string
}

interface NodeRedisClusterLike extends EventSource {
  readonly isOpen: boolean
  readonly isReady: boolean
  readonly _options?: { keyPrefix?: Arg, useReplicas?: boolean, defaults?: Record<string, unknown> }
  readonly masters: NodeRedisShardNode[]
  readonly replicas: NodeRedisShardNode[]
  readonly pubSubNode?: { client?: { isReady?: boolean } }
  sendCommand (firstKey: Arg | undefined, isReadonly: boolean | undefined, args: readonly Arg[], options?: CommandOptions): Promise<unknown>
  nodeClient (node: NodeRedisShardNode): Promise<NodeRedisClientLike>
  getNodeClientForKey? (key: Arg, isReadonly?: boolean): Promise<NodeRedisClientLike>
  duplicate (overrides?: Record<string, unknown>): NodeRedisClusterLike
  connect (): Promise<unknown>
  subscribe (channels: string[], listener: (message: string, channel: string) => void): Promise<void>
  close (): Promise<void>
  destroy (): void
}

export type NodeRedisLike = NodeRedisClientLike | NodeRedisClusterLike

function hasFunctions (value: unknown, names: string[]): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false
  const candidate = value as Record<string, unknown>
  return names.every((name) => typeof candidate[name] === 'function')
}

/**
 * Duck typing: node-redis is an optional peer, so `instanceof` is not available. ioredis also has
 * `sendCommand` and `duplicate`, but no `isOpen`; node-redis' Sentinel and pool (not supported)
 * take other `sendCommand` arguments, and are told apart by `getMasterNode` and by lacking
 * `duplicate`.
 */
function looksLikeNodeRedis (value: unknown): value is Record<string, unknown> {
  return hasFunctions(value, ['sendCommand', 'duplicate', 'connect', 'withTypeMapping', 'subscribe', 'on', 'removeListener']) &&
    typeof value.isOpen === 'boolean' &&
    typeof value.getMasterNode !== 'function'
}

function isNodeRedisCluster (value: unknown): value is NodeRedisClusterLike {
  return looksLikeNodeRedis(value) && typeof value.nodeClient === 'function' && Array.isArray(value.masters)
}

function isNodeRedisClient (value: unknown): value is NodeRedisClientLike {
  return looksLikeNodeRedis(value) && typeof value.nodeClient !== 'function' && !('masters' in value)
}

export function isNodeRedis (value: unknown): value is NodeRedisLike {
  return isNodeRedisCluster(value) || isNodeRedisClient(value)
}

// RESP_TYPES.BLOB_STRING: bulk strings come back as Buffers under this mapping, on RESP2 and RESP3.
const BLOB_STRING = 36
/** Replies as node-redis gives them by default (strings, numbers, arrays, null), whatever the client's own mapping. */
const PLAIN: CommandOptions = { typeMapping: {} }
const BYTES: CommandOptions = { typeMapping: { [BLOB_STRING]: Buffer } }

// The subscriber's own reconnection: soon, and for ever (the user's client may give up; ours may not).
const reconnectStrategy = (retries: number): number => Math.min((retries + 1) * 50, 500)

const shas = new WeakMap<RedisScript, string>()

function shaOf (script: RedisScript): string {
  let sha = shas.get(script)
  if (sha === undefined) {
    sha = createHash('sha1').update(script.lua).digest('hex')
    shas.set(script, sha)
  }
  return sha
}

function isNoScript (err: unknown): boolean {
  return (err as Error | undefined)?.message?.startsWith('NOSCRIPT') === true
}

function isRedirect (err: unknown): boolean {
  const message = (err as Error | undefined)?.message
  return message?.startsWith('MOVED') === true || message?.startsWith('ASK') === true
}

function prefixText (prefix: Arg | undefined): string {
  if (prefix === undefined) return ''
  return typeof prefix === 'string' ? prefix : prefix.toString('utf8')
}

function scriptArgs (script: RedisScript, command: 'EVALSHA' | 'EVAL', keys: string[], args: RedisArg[]): Arg[] {
  return [command, command === 'EVALSHA' ? shaOf(script) : script.lua, String(keys.length), ...keys,
    ...args.map((arg) => typeof arg === 'number' ? String(arg) : arg)]
}

/** Runs a script by SHA on one node client, then by its text if that node does not have it yet. */
async function runOn (send: (args: Arg[]) => Promise<unknown>, script: RedisScript, keys: string[], args: RedisArg[]): Promise<unknown> {
  try {
    return await send(scriptArgs(script, 'EVALSHA', keys, args))
  } catch (err) {
    if (!isNoScript(err)) throw err
    return await send(scriptArgs(script, 'EVAL', keys, args))
  }
}

/**
 * The script and WAIT written together on one connection, so that WAIT counts the replicas
 * that have this very write: sent apart, a reconnection in between would leave WAIT on a new
 * connection with nothing to wait for, answering at once.
 */
async function runAndWaitOn (node: NodeRedisClientLike, script: RedisScript, keys: string[], args: RedisArg[],
  replicas: number, timeoutMs: number): Promise<[unknown, number]> {
  const wait: Arg[] = ['WAIT', String(replicas), String(Math.max(0, Math.floor(timeoutMs)))]
  for (let command: 'EVALSHA' | 'EVAL' = 'EVALSHA'; ; command = 'EVAL') {
    const [ran, waited] = await Promise.allSettled([
      node.sendCommand(scriptArgs(script, command, keys, args), PLAIN),
      node.sendCommand(wait, PLAIN)
    ])
    if (ran.status === 'rejected') {
      if (command === 'EVALSHA' && isNoScript(ran.reason)) continue
      throw ran.reason
    }
    if (waited.status === 'rejected') throw waited.reason
    return [ran.value, Number(waited.value)]
  }
}

function scanNode (node: () => Promise<NodeRedisClientLike>, oneKeyPerCommand: boolean): RedisScanNode {
  return {
    async scan (cursor, pattern, count) {
      const [next, keys] = await (await node()).sendCommand(['SCAN', cursor, 'MATCH', pattern, 'COUNT', String(count)], PLAIN) as [string, string[]]
      return [String(next), keys]
    },
    // Raw commands add no prefix: the keys go back exactly as SCAN returned them.
    async unlink (storedKeys) {
      const client = await node()
      if (!oneKeyPerCommand) return Number(await client.sendCommand(['UNLINK', ...storedKeys], PLAIN))
      // Cluster nodes refuse multi-key commands across hash slots; these go out in one write all the same.
      const counts = await Promise.all(storedKeys.map((key) => client.sendCommand(['UNLINK', key], PLAIN)))
      return counts.reduce<number>((sum, count) => sum + Number(count), 0)
    }
  }
}

/** Adds the listeners; returns their remover. */
function watch (source: EventSource, events: Record<string, Listener>): () => void {
  for (const [event, listener] of Object.entries(events)) source.on(event, listener)
  return () => {
    for (const [event, listener] of Object.entries(events)) source.removeListener(event, listener)
  }
}

function clientSubscriber (client: NodeRedisClientLike, name: string, events: RedisSubscriberEvents): RedisSubscriber {
  // The copy keeps the user's address, TLS, credentials, database and RESP version.
  const connection = client.duplicate({
    name,
    socket: { ...client.options?.socket, reconnectStrategy },
    disableOfflineQueue: false,
    clientSideCache: undefined,
    emitInvalidate: false
  })
  const listener = (message: string, channel: string): void => events.message(channel, message)
  const lost = (): void => events.lost()
  const stopWatching = watch(connection, {
    ready: () => events.ready(),
    reconnecting: lost,
    end: lost,
    error: () => { if (!connection.isReady) lost() }
  })
  // node-redis emits 'error' for every failed attempt; unheard (as after close, when the watchers
  // above are gone), it would crash the process.
  connection.on('error', () => {})
  // Keeps retrying with the strategy above until it connects or is closed. A close while it
  // connects may come before the socket exists: the connection is then ended once it does.
  let closed = false
  connection.connect().then(() => { if (closed) destroyQuietly(connection) }, () => {})
  return {
    async subscribe (channels) {
      await connection.subscribe(channels, listener)
    },
    async close (timeoutMs) {
      closed = true
      stopWatching()
      await closeBounded(connection, timeoutMs)
    }
  }
}

function clusterSubscriber (cluster: NodeRedisClusterLike, name: string, events: RedisSubscriberEvents): RedisSubscriber {
  const defaults = cluster._options?.defaults
  // Only the pub/sub connection is opened: the copy learns the topology, then connects to one
  // node (plain PUBLISH reaches every node of a cluster), and moves there again after a failover.
  const connection = cluster.duplicate({
    minimizeConnections: true,
    defaults: { ...defaults, name, socket: { ...(defaults?.socket as Record<string, unknown> | undefined), reconnectStrategy } }
  })
  const listener = (message: string, channel: string): void => events.message(channel, message)
  const lost = (): void => events.lost()
  const pubSubReady = (): boolean => connection.pubSubNode?.client?.isReady === true
  const stopWatching = watch(connection, {
    'node-ready': () => events.ready(),
    'node-reconnecting': lost,
    'node-disconnect': lost,
    'node-error': () => { if (!pubSubReady()) lost() }
  })
  // Kept after close, when the watchers above are gone: an unheard 'error' would crash the process.
  connection.on('error', () => {})

  // A cluster's connect() gives up when no node answers; ours tries again until closed.
  let closed = false
  let retry: NodeJS.Timeout | undefined
  let onClose: (() => void) | undefined
  const connected = new Promise<void>((resolve, reject) => {
    onClose = () => reject(new Error('fastify-auth-cache: the subscriber was closed'))
    const attempt = (retries: number): void => {
      connection.connect().then(() => {
        // Closed while it connected: the nodes it just reached are let go at once.
        if (closed) destroyQuietly(connection)
        resolve()
      }, () => {
        if (!closed) retry = setTimeout(() => attempt(retries + 1), reconnectStrategy(retries))
      })
    }
    attempt(0)
  })
  connected.catch(() => {})
  return {
    async subscribe (channels) {
      await connected
      await connection.subscribe(channels, listener)
    },
    async close (timeoutMs) {
      closed = true
      clearTimeout(retry)
      onClose?.()
      stopWatching()
      await closeBounded(connection, timeoutMs)
    }
  }
}

/** A clean close while it takes at most `timeoutMs` (it waits for queued commands), then a hard one. */
async function closeBounded (connection: { close (): Promise<void>, destroy (): void }, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })
  let closing: Promise<void>
  try {
    closing = connection.close().catch(() => {})
  } catch {
    closing = Promise.resolve()
  }
  await Promise.race([closing, bound])
  clearTimeout(timer)
  destroyQuietly(connection)
}

function destroyQuietly (connection: { destroy (): void }): void {
  try {
    connection.destroy()
  } catch {
    // Already gone.
  }
}

/** Calls `listener` when the client is ready again after a loss; cluster nodes count one by one. */
function reconnections (source: EventSource, cluster: boolean, listener: () => void): () => void {
  const { lost: onLost, ready: onReady } = readyAfterLoss(listener)
  return watch(source, cluster
    ? { 'node-reconnecting': onLost, 'node-disconnect': onLost, disconnect: onLost, 'node-ready': onReady }
    : { reconnecting: onLost, end: onLost, ready: onReady })
}

function nodeRedisClientAdapter (client: NodeRedisClientLike): RedisAdapter {
  const keyPrefix = prefixText(client.options?.keyPrefix)
  const send = (args: readonly Arg[], options: CommandOptions = PLAIN): Promise<unknown> => client.sendCommand(args, options)
  const stored = (key: string): string => keyPrefix + key

  return {
    keyPrefix,
    cluster: false,
    run: (script, keys, args) => runOn((command) => send(command), script, keys.map(stored), args),
    runReplicated: (script, keys, args, replicas, timeoutMs) =>
      runAndWaitOn(client, script, keys.map(stored), args, replicas, timeoutMs),
    hasReplica: async () => false,
    getBuffer: async (key) => await send(['GET', stored(key)], BYTES) as Buffer | null,
    async getBufferWithTtl (key) {
      // Sent in one tick on one connection: the two replies are adjacent.
      const [bytes, ttl] = await Promise.all([send(['GET', stored(key)], BYTES), send(['PTTL', stored(key)])])
      return [bytes as Buffer | null, Number(ttl)]
    },
    async set (key, value, ttlMs) {
      await send(ttlMs === undefined ? ['SET', stored(key), value] : ['SET', stored(key), value, 'PX', String(ttlMs)])
    },
    del: async (key) => Number(await send(['DEL', stored(key)])),
    readCounter: async (key) => Number(await send(['GETRANGE', stored(key), '0', '-1'])) || 0,
    async publish (channel, message) {
      await send(['PUBLISH', channel, message])
    },
    masters: () => [scanNode(async () => client, false)],
    subscriber: (name, events) => clientSubscriber(client, name, events),
    onReconnect: (listener) => reconnections(client, false, listener)
  }
}

function nodeRedisClusterAdapter (cluster: NodeRedisClusterLike): RedisAdapter {
  const keyPrefix = prefixText(cluster._options?.keyPrefix)
  const stored = (key: string): string => keyPrefix + key
  const send = (key: string | undefined, args: readonly Arg[], options: CommandOptions = PLAIN): Promise<unknown> =>
    cluster.sendCommand(key, false, args, options)

  async function runReplicatedOnce (script: RedisScript, keys: string[], args: RedisArg[], replicas: number, timeoutMs: number): Promise<[unknown, number]> {
    if (typeof cluster.getNodeClientForKey !== 'function') {
      throw new Error('fastify-auth-cache: this node-redis version cannot address the node of a key (getNodeClientForKey); upgrade redis to 6.x')
    }
    return await runAndWaitOn(await cluster.getNodeClientForKey(keys[0], false), script, keys, args, replicas, timeoutMs)
  }

  return {
    keyPrefix,
    cluster: true,
    run: (script, keys, args) => {
      const storedKeys = keys.map(stored)
      return runOn((command) => send(storedKeys[0], command), script, storedKeys, args)
    },
    async runReplicated (script, keys, args, replicas, timeoutMs) {
      // Both on the master's own connection: WAIT through the cluster would go to every shard.
      const storedKeys = keys.map(stored)
      try {
        return await runReplicatedOnce(script, storedKeys, args, replicas, timeoutMs)
      } catch (err) {
        if (!isRedirect(err)) throw err
        // The slot moved: a routed command makes the cluster learn where, then once more there.
        await send(storedKeys[0], ['EXISTS', storedKeys[0]])
        return await runReplicatedOnce(script, storedKeys, args, replicas, timeoutMs)
      }
    },
    hasReplica: (() => {
      const check = replicaCheck(async () => String(await send(undefined, ['CLUSTER', 'NODES'])))
      return (key: string) => check(stored(key))
    })(),
    getBuffer: async (key) => await send(stored(key), ['GET', stored(key)], BYTES) as Buffer | null,
    async getBufferWithTtl (key) {
      const storedKey = stored(key)
      const [bytes, ttl] = await Promise.all([send(storedKey, ['GET', storedKey], BYTES), send(storedKey, ['PTTL', storedKey])])
      return [bytes as Buffer | null, Number(ttl)]
    },
    async set (key, value, ttlMs) {
      const storedKey = stored(key)
      await send(storedKey, ttlMs === undefined ? ['SET', storedKey, value] : ['SET', storedKey, value, 'PX', String(ttlMs)])
    },
    del: async (key) => Number(await send(stored(key), ['DEL', stored(key)])),
    readCounter: async (key) => Number(await send(stored(key), ['GETRANGE', stored(key), '0', '-1'])) || 0,
    async publish (channel, message) {
      await send(undefined, ['PUBLISH', channel, message])
    },
    masters: () => cluster.masters.map((node) => scanNode(() => cluster.nodeClient(node), true)),
    subscriber: (name, events) => clusterSubscriber(cluster, name, events),
    onReconnect: (listener) => reconnections(cluster, true, listener)
  }
}

export function nodeRedisAdapter (client: NodeRedisLike): RedisAdapter {
  return isNodeRedisCluster(client) ? nodeRedisClusterAdapter(client) : nodeRedisClientAdapter(client as NodeRedisClientLike)
}
