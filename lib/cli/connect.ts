import { adaptRedis } from '../redis/adapt'
import type { RedisAdapter } from '../redis/client'
import { withTimeout } from '../time-bound'
import { redactedUrl } from './arguments'

/** Connecting (TCP, TLS, AUTH) gives up after this long. */
const CONNECT_TIMEOUT_MS = 3000
const COMMAND_TIMEOUT_MS = 5000
const QUIT_TIMEOUT_MS = 1000

/** The part of an ioredis or iovalkey client (Redis or Cluster) the command line drives itself. */
interface ClientLike {
  readonly status: string
  connect (): Promise<void>
  quit (): Promise<unknown>
  disconnect (): void
  call (command: string, ...args: string[]): Promise<unknown>
  on (event: string, listener: (...args: any[]) => void): unknown
}

interface Library {
  Redis: new (url: string, options: Record<string, unknown>) => ClientLike
  Cluster: new (nodes: Array<{ host: string, port: number }>, options: Record<string, unknown>) => ClientLike
}

/** Redis could not be used; the message says why, and the exit code is 1. */
export class RedisFailure extends Error {
  override name = 'RedisFailure'
}

/** ioredis, else iovalkey: the plugin's optional peers, whichever the project installed. */
function loadLibrary (): Library {
  for (const name of ['ioredis', 'iovalkey']) {
    let loaded: Partial<Library> & { default?: Library['Redis'] }
    try {
      loaded = require(name)
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && (err as Error).message.includes(`'${name}'`)
      if (missing) continue
      throw err
    }
    const Redis = loaded.Redis ?? loaded.default
    if (Redis === undefined || loaded.Cluster === undefined) throw new RedisFailure(`the installed ${name} has no Redis or Cluster class`)
    return { Redis, Cluster: loaded.Cluster }
  }
  throw new RedisFailure('neither ioredis nor iovalkey is installed (npm install ioredis)')
}

/**
 * Settings of a client that fails instead of waiting: no offline queue, no retries, no
 * reconnection, a bounded connect. No ready check either: it sends INFO, which a
 * least-privilege ACL user may be refused; the first real command finds out whether Redis answers.
 */
const FAIL_FAST = {
  lazyConnect: true,
  enableOfflineQueue: false,
  enableReadyCheck: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  retryStrategy: () => null,
  reconnectOnError: () => false,
  connectTimeout: CONNECT_TIMEOUT_MS
}

export interface Connection {
  redis: RedisAdapter
  close (): Promise<void>
}

function withDeadline<T> (promise: Promise<T>, ms: number, message: string): Promise<T> {
  return withTimeout(() => promise, ms, () => new Error(message))
}

async function close (client: ClientLike): Promise<void> {
  await withDeadline(client.quit(), QUIT_TIMEOUT_MS, '').catch(() => {})
  // Once ended, disconnect() would only arm a timer that keeps the process alive for seconds.
  if (client.status !== 'end') client.disconnect()
}

async function open (client: ClientLike, url: string): Promise<ClientLike> {
  let lastError: Error | undefined
  client.on('error', (err: Error) => { lastError = err })
  try {
    await withDeadline(client.connect(), CONNECT_TIMEOUT_MS + 500, `no connection to ${redactedUrl(url)} within ${CONNECT_TIMEOUT_MS} ms`)
    return client
  } catch (err) {
    if (client.status !== 'end') client.disconnect()
    throw new RedisFailure(`could not connect to ${redactedUrl(url)}: ${(lastError ?? (err as Error)).message}`)
  }
}

/**
 * Whether the server is a Cluster node, whose keys the other masters share: only a node answers
 * CLUSTER MYID. A single server says cluster support is disabled; a user not allowed to ask is
 * taken for a single server (its revocations of one key still fail loudly on a Cluster: MOVED).
 */
async function isClusterNode (client: ClientLike): Promise<boolean> {
  try {
    const id = await withDeadline(client.call('CLUSTER', 'MYID'), COMMAND_TIMEOUT_MS, `Redis did not answer within ${COMMAND_TIMEOUT_MS} ms`)
    return typeof id === 'string' || Buffer.isBuffer(id)
  } catch (err) {
    if (/did not answer/.test((err as Error).message)) throw new RedisFailure((err as Error).message)
    return false
  }
}

/** One server, or the whole Cluster that the URL's server belongs to, through the plugin's adapter. */
export async function connect (url: string): Promise<Connection> {
  const library = loadLibrary()
  let client = await open(new library.Redis(url, FAIL_FAST), url)
  if (await isClusterNode(client)) {
    await close(client)
    const { hostname, port, username, password, protocol } = new URL(url)
    client = await open(new library.Cluster([{ host: hostname, port: Number(port === '' ? 6379 : port) }], {
      lazyConnect: true,
      enableOfflineQueue: false,
      // Its ready check goes to a node still connecting, which refuses it without a queue.
      enableReadyCheck: false,
      clusterRetryStrategy: () => null,
      slotsRefreshTimeout: CONNECT_TIMEOUT_MS,
      redisOptions: {
        ...FAIL_FAST,
        lazyConnect: false,
        // Nodes connect once the slot map is known: the first command to each waits for it
        // (every command is bounded by the store anyway).
        enableOfflineQueue: true,
        ...(username === '' ? {} : { username: decodeURIComponent(username) }),
        ...(password === '' ? {} : { password: decodeURIComponent(password) }),
        ...(protocol === 'rediss:' ? { tls: {} } : {})
      }
    }), url)
  }
  const redis = adaptRedis(client)
  if (redis === undefined) throw new RedisFailure('the installed Redis client library is not one this package supports')
  const connected = client
  return { redis, close: () => close(connected) }
}
