import { replicaCheck } from './cluster-nodes'
import { readyAfterLoss } from './reconnection'
import type { RedisAdapter, RedisArg, RedisScanNode, RedisScript, RedisSubscriber, RedisSubscriberEvents } from './client'

/**
 * The part of an ioredis (or iovalkey, its fork with the same API) `Redis` or `Cluster` used
 * here, declared structurally so that a memory-only user needs neither library nor its types.
 */
interface IoredisLike {
  options?: { keyPrefix?: string, redisOptions?: { keyPrefix?: string }, sentinels?: unknown }
  isCluster?: boolean
  status?: string
  getBuffer (key: string): Promise<Buffer | null>
  set (key: string, value: string | Buffer, ...args: unknown[]): Promise<unknown>
  del (key: string): Promise<number>
  unlink (...keys: string[]): Promise<number>
  scan (cursor: string, ...args: unknown[]): Promise<[string, string[]]>
  publish (channel: string, message: string): Promise<number>
  defineCommand (name: string, definition: { numberOfKeys?: number, lua: string }): void
  duplicate (...args: unknown[]): IoredisLike
  pipeline (): { exec (): Promise<Array<[Error | null, unknown]> | null>, [command: string]: any }
  on (event: string, listener: (...args: any[]) => void): unknown
  removeListener (event: string, listener: (...args: any[]) => void): unknown
  subscribe (...channels: string[]): Promise<unknown>
  quit (): Promise<unknown>
  disconnect (): void
  nodes? (role: 'master' | 'slave' | 'all'): IoredisLike[]
  [command: string]: any
}

/** Duck typing: ioredis is an optional peer, so `instanceof` is not available. */
export function isIoredis (value: unknown): value is IoredisLike {
  if (typeof value !== 'object' || value === null) return false
  const candidate = value as Record<string, unknown>
  return typeof candidate.getBuffer === 'function' &&
    typeof candidate.defineCommand === 'function' &&
    typeof candidate.duplicate === 'function' &&
    typeof candidate.pipeline === 'function'
}

function prefixOf (client: IoredisLike): string {
  return client.options?.keyPrefix ?? client.options?.redisOptions?.keyPrefix ?? ''
}

/** ioredis runs a defined command by EVALSHA and falls back to EVAL when the script is not loaded. */
function define (client: IoredisLike, script: RedisScript): string {
  const name = `fastifyAuthCache_${script.name}`
  // Without numberOfKeys, ioredis takes the key count as the command's first argument.
  if (typeof client[name] !== 'function') client.defineCommand(name, { numberOfKeys: script.keys < 0 ? undefined : script.keys, lua: script.lua })
  return name
}

/** The arguments of a defined command: a script of any number of keys is told their count first. */
function scriptArgs (script: RedisScript, keys: string[], args: RedisArg[]): RedisArg[] {
  return script.keys < 0 ? [keys.length, ...keys, ...args] : [...keys, ...args]
}

function scanNode (node: IoredisLike, oneKeyPerCommand: boolean): RedisScanNode {
  // SCAN ignores the client's own keyPrefix and returns keys with it, while UNLINK adds the
  // node's prefix again: strip it before deleting.
  const nodePrefix = prefixOf(node)
  return {
    scan: (cursor, pattern, count) => node.scan(cursor, 'MATCH', pattern, 'COUNT', count),
    async unlink (storedKeys) {
      const keys = storedKeys.map((key) => key.slice(nodePrefix.length))
      if (!oneKeyPerCommand) return await node.unlink(...keys)
      // Cluster nodes refuse multi-key commands across hash slots.
      const pipeline = node.pipeline()
      for (const key of keys) pipeline.unlink(key)
      let removed = 0
      for (const [err, count] of (await pipeline.exec()) ?? []) {
        if (err) throw err
        removed += count as number
      }
      return removed
    }
  }
}

function isRedirect (err: Error | null): boolean {
  return err !== null && /^(MOVED|ASK) /.test(err.message)
}

/**
 * An ioredis or iovalkey Cluster subscribes on a connection of its own to one node; when that
 * connection ends, it quietly opens another and subscribes it again, and the Cluster itself
 * emits nothing: messages published in between would be missed unnoticed. Its current
 * subscriber connection (`subscriber.getInstance()`, which both libraries have but do not
 * document) is followed here: its loss is reported, and its replacement as a return. Without it
 * (another version), the bus's heartbeat deadline still notices a long silence.
 */
function followClusterSubscriber (connection: IoredisLike, events: RedisSubscriberEvents): () => void {
  const source = connection.subscriber as { getInstance?: () => IoredisLike | null } | undefined
  if (typeof source?.getInstance !== 'function') return () => {}
  let current: IoredisLike | null = null
  const onLost = (): void => events.lost()
  const onEnd = (): void => {
    events.lost()
    follow()
  }
  const onReady = (): void => events.ready()
  function follow (): void {
    const instance = source!.getInstance!() ?? null
    if (instance === current) return
    current?.removeListener('close', onLost)
    current?.removeListener('end', onEnd)
    current?.removeListener('ready', onReady)
    current = instance
    if (instance === null) return
    instance.on('close', onLost)
    instance.on('end', onEnd)
    instance.on('ready', onReady)
    // The replacement connects with its first command: subscribing there now opens it.
    events.ready()
  }
  // The Cluster picks a subscriber when it is ready, and again when a node appears after it had none.
  connection.on('ready', follow)
  connection.on('+node', follow)
  follow()
  return () => {
    connection.removeListener('ready', follow)
    connection.removeListener('+node', follow)
    current?.removeListener('close', onLost)
    current?.removeListener('end', onEnd)
    current?.removeListener('ready', onReady)
  }
}

export function ioredisAdapter (client: IoredisLike): RedisAdapter {
  const cluster = client.isCluster === true && typeof client.nodes === 'function'
  // ioredis puts its keyPrefix in front of the keys it is given: the slot is that of the result.
  const withPrefix = (check: (storedKey: string) => Promise<boolean>) => (key: string) => check(prefixOf(client) + key)
  return {
    keyPrefix: prefixOf(client),
    cluster,

    run (script: RedisScript, keys: string[], args: RedisArg[]) {
      return client[define(client, script)](...scriptArgs(script, keys, args))
    },

    async runReplicated (script, keys, args, replicas, timeoutMs) {
      // One pipeline: a Cluster sends it whole to the node owning the keys, so WAIT counts the
      // replicas of that very node, on the connection that ran the script.
      const name = define(client, script)
      const send = async (): Promise<Array<[Error | null, unknown]>> =>
        (await client.pipeline()[name](...scriptArgs(script, keys, args)).wait(replicas, timeoutMs).exec()) ?? []
      let results = await send()
      // A pipeline whose keyless WAIT did not move with the script does not follow a MOVED: a
      // single command for the key makes the client learn the slot's new owner first.
      if (isRedirect(results[0][0])) {
        await client.exists(keys[0])
        results = await send()
      }
      for (const [err] of results) if (err) throw err
      return [results[0][1], Number(results[1][1])]
    },

    // A Cluster says per slot which masters have replicas. A Sentinel-managed master has one by
    // design: during a failover the old master acknowledges writes it will lose, so a
    // revocation waits for a replica there too. A plain connection cannot tell, and waits for none.
    hasReplica: cluster
      ? withPrefix(replicaCheck(async () => String(await client.cluster('NODES'))))
      : async () => client.options?.sentinels !== undefined && client.options.sentinels !== null,

    getBuffer: (key) => client.getBuffer(key),
    async getBufferWithTtl (key) {
      // One pipeline, one connection: the two replies are adjacent.
      const results = (await client.pipeline().getBuffer(key).pttl(key).exec()) ?? []
      for (const [err] of results) if (err) throw err
      return [results[0][1] as Buffer | null, Number(results[1][1])]
    },
    async set (key, value, ttlMs) {
      await (ttlMs === undefined ? client.set(key, value) : client.set(key, value, 'PX', ttlMs))
    },
    del: (key) => client.del(key),
    readCounter: async (key) => Number(await client.getrange(key, 0, -1)) || 0,
    async publish (channel, message) {
      await client.publish(channel, message)
    },

    masters () {
      return cluster ? client.nodes!('master').map((node) => scanNode(node, true)) : [scanNode(client, false)]
    },

    subscriber (name: string, events: RedisSubscriberEvents): RedisSubscriber {
      const settings = { lazyConnect: false, enableOfflineQueue: true, maxRetriesPerRequest: null, connectionName: name }
      // Cluster.duplicate takes the startup nodes first; the copy keeps TLS, auth and Sentinel
      // settings. ioredis merges the redisOptions given with the cluster's own, iovalkey replaces
      // them: merged here, so that neither loses the user's password or TLS.
      const connection: IoredisLike = cluster
        ? client.duplicate([], { redisOptions: { ...client.options?.redisOptions, ...settings } })
        // The bus subscribes again on every 'ready'. The library's own resubscription would send
        // a second SUBSCRIBE whose promise nobody holds: closed before its reply, it would be an
        // unhandled rejection in the user's process.
        : client.duplicate({ ...settings, autoResubscribe: false, retryStrategy: (times: number) => Math.min(times * 50, 500) })
      const onLost = (): void => events.lost()
      const onReady = (): void => events.ready()
      // ioredis reconnects by itself; without an error listener an error would crash the process.
      const onError = (): void => {}
      connection.on('message', events.message)
      connection.on('close', onLost)
      connection.on('end', onLost)
      connection.on('ready', onReady)
      connection.on('error', onError)
      const stopFollowing = cluster ? followClusterSubscriber(connection, events) : () => {}
      return {
        async subscribe (channels) {
          await connection.subscribe(...channels)
        },
        async close (timeoutMs) {
          connection.removeListener('close', onLost)
          connection.removeListener('end', onLost)
          connection.removeListener('ready', onReady)
          stopFollowing()
          // While Redis is unreachable, QUIT waits behind the queued SUBSCRIBE for ever: bound it.
          let timer: NodeJS.Timeout | undefined
          const bound = new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })
          await Promise.race([connection.quit().catch(() => {}), bound])
          clearTimeout(timer)
          connection.disconnect()
        }
      }
    },

    onReconnect (listener) {
      // A Cluster says 'close' and 'ready' only when it lost every node at once; a node it lost
      // alone (a master restarted, say) leaves with '-node' and comes back with '+node'.
      const { lost: onLost, ready: onReady } = readyAfterLoss(listener)
      const events: Array<[string, () => void]> = [['close', onLost], ['ready', onReady]]
      if (cluster) events.push(['-node', onLost], ['+node', onReady])
      for (const [event, handler] of events) client.on(event, handler)
      return () => {
        for (const [event, handler] of events) client.removeListener(event, handler)
      }
    }
  }
}
