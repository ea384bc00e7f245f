import cluster from 'node:cluster'
import diagnosticsChannel from 'node:diagnostics_channel'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import fastifyRedis from '@fastify/redis'
import Fastify from 'fastify'
// As in app.ts: the package's own sources, which `from 'fastify-auth-cache'` would load once built.
import fastifyAuthCache, { type ApiKeyRecord } from '../lib'
import { KEY_PREFIX } from './app'
import { wallClockMs, type DropReport, type PrimaryMessage, type Revocation, type TableAnswers, type TableRequest, type WorkerMessage } from './demo-ipc'

/**
 * One worker of `npm run demo` (examples/demo.ts forks them): a Fastify app on the tiered backend
 * whose `lookup` asks the primary process, the one holder of the key table.
 */

/** Published by the plugin when it applies an invalidation that came from another process. */
export const INVALIDATION_CHANNEL = 'fastify-auth-cache:invalidation'
/** A table request the primary has not answered by then fails, and the request with it (503). */
const TABLE_TIMEOUT_MS = 1000
/** How long a worker told of a revocation waits for the plugin's message about it. */
const MESSAGE_GRACE_MS = 250
/** Longer than this still accepting a revoked key is reported as a failure (the contract's outage bound). */
const ACCEPT_LIMIT_MS = 2000
export const CACHE_TTL_SECONDS = 60

const ms = (n: number): string => `${n.toFixed(2)} ms`

/** Would this cached record still let the key in? */
function accepts (record: ApiKeyRecord | undefined): boolean {
  return record !== undefined && record.active && (record.expiresAt === undefined || record.expiresAt > Date.now())
}

export async function runWorker (): Promise<void> {
  const worker = cluster.worker!
  const self = { id: worker.id, pid: process.pid }
  const say = (line: string): void => { process.stdout.write(`[worker ${self.id} pid ${self.pid}] ${line}\n`) }
  const send = (message: WorkerMessage): void => {
    if (process.connected) process.send!(message, undefined, {}, () => {})
  }

  // ---- The key table, over IPC to the primary ----------------------------------------------
  let nextRequestId = 0
  const pending = new Map<number, (answer: unknown) => void>()
  function askTable<R extends TableRequest> (request: R): Promise<TableAnswers[R['op']]> {
    const id = ++nextRequestId
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id)
        reject(new Error(`the primary process did not answer "${request.op}" within ${TABLE_TIMEOUT_MS} ms`))
      }, TABLE_TIMEOUT_MS)
      pending.set(id, (answer) => {
        clearTimeout(timer)
        resolve(answer as TableAnswers[R['op']])
      })
      send({ type: 'request', id, request })
    })
  }

  // ---- When this worker stops accepting a revoked key ---------------------------------------
  // The plugin publishes { kind, keyHash? } on INVALIDATION_CHANNEL as it applies an invalidation
  // from another process. Its time is remembered per hash, since it usually comes before the
  // primary's word about the revocation (it travels straight from Redis, not through the
  // revoking worker and the primary). The channel object is held here: a channel nobody holds
  // may be collected with its subscription on older Node versions.
  const heardAt = new Map<string, number>()
  const waitingFor = new Map<string, (at: number) => void>()
  let serving = false
  const channel = diagnosticsChannel.channel(INVALIDATION_CHANNEL)
  channel.subscribe((message) => {
    const { kind, keyHash } = (message ?? {}) as { kind?: unknown, keyHash?: unknown }
    const at = wallClockMs()
    if (kind === 'delete' && typeof keyHash === 'string') {
      heardAt.set(keyHash, at)
      // Bounded: only recent revocations matter.
      if (heardAt.size > 1000) heardAt.delete(heardAt.keys().next().value!)
      waitingFor.get(keyHash)?.(at)
    } else if (serving && kind === 'clear') {
      say('dropped every key from its memory: clear() in another process')
    } else if (serving && kind === 'trust-lost') {
      say('cannot hear its invalidation channel: memory flushed, serving through Redis and the table until it can')
    } else if (serving && kind === 'trust-regained') {
      say('hears its invalidation channel again: serving from memory')
    }
  })

  /** The plugin's message about this hash, or undefined if none comes within `graceMs`. */
  function messageAbout (keyHash: string, graceMs: number): Promise<number | undefined> {
    const known = heardAt.get(keyHash)
    if (known !== undefined) return Promise.resolve(known)
    return new Promise((resolve) => {
      const done = (at: number | undefined): void => {
        clearTimeout(timer)
        waitingFor.delete(keyHash)
        resolve(at)
      }
      const timer = setTimeout(done, graceMs, undefined)
      waitingFor.set(keyHash, done)
    })
  }

  /**
   * Told by the primary that another worker revoked a key: say when this one stopped accepting
   * it. The plugin's message gives the moment; without it (a plugin that does not publish it),
   * the cache itself is asked until it no longer holds the key as valid, which is an upper bound.
   */
  async function reportDrop (revocation: Revocation): Promise<void> {
    const message = messageAbout(revocation.keyHash, MESSAGE_GRACE_MS)
    let checkedAt: number | undefined
    const deadline = Date.now() + ACCEPT_LIMIT_MS
    while (checkedAt === undefined && Date.now() < deadline) {
      if (!accepts(await app.apiKeyCache.get(revocation.keyHash))) checkedAt = wallClockMs()
      else await Promise.race([sleep(1), message])
    }
    const messageAt = await message
    const since = (at: number): number => at - revocation.calledAt
    let report: DropReport
    if (messageAt !== undefined) {
      report = { keyId: revocation.keyId, worker: self.id, afterMs: since(messageAt), how: 'invalidation message' }
      say(`dropped ${revocation.keyId} from its memory ${ms(report.afterMs)} after worker ${revocation.by} revoked it (${INVALIDATION_CHANNEL})`)
    } else if (checkedAt !== undefined) {
      report = { keyId: revocation.keyId, worker: self.id, afterMs: since(checkedAt), how: 'check' }
      say(`no longer accepts ${revocation.keyId}: gone from its cache when checked ${ms(report.afterMs)} after worker ${revocation.by} revoked it ` +
        `(no ${INVALIDATION_CHANNEL} message within ${MESSAGE_GRACE_MS} ms, so that is an upper bound)`)
    } else {
      say(`STILL ACCEPTS ${revocation.keyId} ${ACCEPT_LIMIT_MS} ms after worker ${revocation.by} revoked it`)
      return
    }
    send({ type: 'dropped', report })
  }

  // ---- The app -------------------------------------------------------------------------------
  const app = Fastify({ logger: { level: 'warn' } })
  await app.register(fastifyRedis, { url: process.env.DEMO_REDIS_URL })
  await app.register(fastifyAuthCache, {
    backend: 'tiered',
    // A demo of the tiered backend must not quietly fall back to memory.
    strict: true,
    apiKeys: {
      lookup: (keyHash) => askTable({ op: 'lookup', keyHash }),
      ttlSeconds: CACHE_TTL_SECONDS,
      // Apart from anything else a REDIS_URL's server holds.
      keyPrefix: 'fastify-auth-cache-demo:apikey:',
      format: { prefix: KEY_PREFIX }
    }
  })

  // Every answer names its worker, 401s included, so that a client can tell who refused.
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('x-demo-worker', String(self.id))
    return payload
  })

  app.get('/health', { config: { apiKey: false } }, async () => ({ status: 'ok', worker: self }))

  app.get('/whoami', {
    schema: {
      response: {
        200: {
          type: 'object',
          properties: {
            worker: { type: 'object', properties: { id: { type: 'integer' }, pid: { type: 'integer' } } },
            key: { type: 'object', properties: { id: { type: 'string' }, name: { type: 'string' } } }
          }
        }
      }
    }
  }, async (request) => ({ worker: self, key: request.apiKey }))

  app.post<{ Body: { name: string } }>('/keys', {
    schema: {
      body: {
        type: 'object',
        properties: { name: { type: 'string', minLength: 1, maxLength: 100 } },
        required: ['name'],
        additionalProperties: false
      }
    }
  }, async (request, reply) => {
    // Made with generateApiKey({ prefix: 'demo' }) by the table; the plaintext is in this answer
    // and nowhere else: the table keeps its hash.
    const created = await askTable({ op: 'create', name: request.body.name })
    return reply.code(201).send({ ...created, worker: self })
  })

  app.delete<{ Params: { id: string } }>('/keys/:id', async (request, reply) => {
    const keyId = request.params.id
    // The source of truth first: a lookup racing with the delete must already read "inactive".
    const keyHash = await askTable({ op: 'revoke', keyId })
    if (keyHash === null) return reply.code(404).send({ statusCode: 404, error: 'Not Found', message: 'No such key' })
    const calledAt = wallClockMs()
    await app.apiKeyCache.delete(keyHash)
    const returnedAt = wallClockMs()
    say(`revoked ${keyId}: the table says inactive, and apiKeyCache.delete() returned after ${ms(returnedAt - calledAt)}`)
    send({ type: 'revoked', revocation: { keyId, keyHash, by: self.id, calledAt, returnedAt } })
    send({ type: 'dropped', report: { keyId, worker: self.id, afterMs: returnedAt - calledAt, how: 'revoked it' } })
    return { revoked: keyId, by: self, deleteMs: Number((returnedAt - calledAt).toFixed(3)) }
  })

  // ---- Messages from the primary, and shutting down ------------------------------------------
  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    // Closing the app closes its invalidation channel, which the plugin reports as trust lost:
    // true, and expected now, so it is not said as if it were a fault.
    serving = false
    app.close().then(() => process.exit(0), (err: unknown) => {
      say(`closing failed: ${String(err)}`)
      process.exit(1)
    })
  }
  // The primary stops the workers on SIGINT/SIGTERM; a Ctrl-C also reaches every worker
  // directly (one process group), and a signal may be sent to one worker alone.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, stop)
  process.on('message', (message: PrimaryMessage) => {
    if (message.type === 'reply') pending.get(message.id)?.(message.answer)
    else if (message.type === 'shutdown') stop()
    else if (message.type === 'revoked' && message.revocation.by !== self.id) {
      reportDrop(message.revocation).catch((err: unknown) => say(`could not tell when it dropped the key: ${String(err)}`))
    }
  })

  try {
    await app.listen({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
  } catch (err) {
    say(`could not listen: ${(err as Error).message}`)
    await app.close().catch(() => {})
    process.exit(1)
  }
  serving = true
  send({ type: 'listening', port: (app.server.address() as AddressInfo).port })
}
