import { adaptRedis } from '../redis/adapt'
import type { RedisAdapter } from '../redis/client'
import { redactedUrl } from './arguments'

/** Connecting (TCP, TLS, AUTH) gives up after this long. */
export const CONNECT_TIMEOUT_MS = 3000
const QUIT_TIMEOUT_MS = 1000

/** The part of an ioredis or iovalkey client the command line drives itself. */
interface ClientLike {
  readonly status: string
  connect (): Promise<void>
  quit (): Promise<unknown>
  disconnect (): void
  on (event: string, listener: (...args: any[]) => void): unknown
}

type ClientClass = new (url: string, options: Record<string, unknown>) => ClientLike

/** Redis could not be used; the message says why, and the exit code is 1. */
export class RedisFailure extends Error {
  override name = 'RedisFailure'
}

/** ioredis, else iovalkey: the plugin's optional peers, whichever the project installed. */
function loadClientClass (): { library: string, Client: ClientClass } {
  for (const library of ['ioredis', 'iovalkey']) {
    let loaded: { Redis?: ClientClass, default?: ClientClass } & ClientClass
    try {
      loaded = require(library)
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && (err as Error).message.includes(`'${library}'`)
      if (missing) continue
      throw err
    }
    return { library, Client: loaded.Redis ?? loaded.default ?? loaded }
  }
  throw new RedisFailure('neither ioredis nor iovalkey is installed (npm install ioredis)')
}

export interface Connection {
  redis: RedisAdapter
  close (): Promise<void>
}

/**
 * A client that fails instead of waiting: no offline queue, no retries, no reconnection, a
 * bounded connect. No ready check either: it sends INFO, which a least-privilege ACL user may
 * be refused; the first real command finds out whether Redis answers.
 */
export async function connect (url: string): Promise<Connection> {
  const { Client } = loadClientClass()
  const client = new Client(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    enableReadyCheck: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    retryStrategy: () => null,
    reconnectOnError: () => false,
    connectTimeout: CONNECT_TIMEOUT_MS
  })
  let lastError: Error | undefined
  client.on('error', (err: Error) => { lastError = err })
  try {
    await withDeadline(client.connect(), CONNECT_TIMEOUT_MS + 500, `no connection to ${redactedUrl(url)} within ${CONNECT_TIMEOUT_MS} ms`)
  } catch (err) {
    // Once ended, disconnect() would only arm a timer that keeps the process alive for seconds.
    if (client.status !== 'end') client.disconnect()
    const reason = lastError ?? (err as Error)
    throw new RedisFailure(`could not connect to ${redactedUrl(url)}: ${reason.message}`)
  }
  const redis = adaptRedis(client)
  if (redis === undefined) throw new RedisFailure('the installed Redis client library is not one this package supports')
  return {
    redis,
    async close () {
      await withDeadline(client.quit(), QUIT_TIMEOUT_MS, '').catch(() => {})
      if (client.status !== 'end') client.disconnect()
    }
  }
}

function withDeadline<T> (promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms)
  })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}
