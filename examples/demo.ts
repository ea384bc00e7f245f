import { spawn, type ChildProcess } from 'node:child_process'
import cluster, { type Worker } from 'node:cluster'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Redis from 'ioredis'
import { KEY_PREFIX } from './app'
import type { DropReport, PrimaryMessage, Revocation, TableAnswers, TableRequest, WorkerMessage } from './demo-ipc'
import { CACHE_TTL_SECONDS, runWorker } from './demo-worker'
import { KeyTable } from './key-table'

/**
 * `npm run demo`: why this plugin exists, in one terminal.
 *
 * A few worker processes (node:cluster, `WORKERS`, default 3) share one HTTP port, each a Fastify
 * app with fastify-auth-cache on the tiered backend: each keeps API keys in its own memory for
 * 60 s, in front of one Redis. Revoke a key through any worker and every other worker prints
 * how long after the revocation it stopped accepting it: milliseconds, where a plain per-process
 * cache would go on accepting the key for up to its TTL.
 *
 * The one source of truth is this primary process: it holds the key table (examples/key-table.ts,
 * hashes only) and answers the workers' `lookup(keyHash)` over the IPC channel node:cluster opens
 * with each worker. That keeps the table visibly apart from the cache (nothing of it lives in
 * Redis, whose only job here is the plugin's cache and invalidation channel), needs no database,
 * and makes a lookup cost a round trip to another process, as a database query would. A worker
 * that gets no answer within a second fails the request (503) rather than guess.
 *
 * Redis: `REDIS_URL` if set; else a private `redis-server` on a free loopback port (needs
 * redis-server on the PATH), stopped and its directory removed on exit; else a message saying so.
 * Environment: HOST (127.0.0.1), PORT (3000; 0 for any free port), WORKERS (3), REDIS_URL.
 */

const host = process.env.HOST ?? '127.0.0.1'
const port = Number(process.env.PORT ?? 3000)
const workerCount = Number(process.env.WORKERS ?? 3)
const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 10_000
/** How long the primary waits for every worker's word about a revocation before saying who is silent. */
const REPORT_TIMEOUT_MS = 5_000

const print = (text: string): void => { process.stdout.write(`${text}\n`) }
const ms = (n: number): string => `${n.toFixed(2)} ms`

// ---- Redis -----------------------------------------------------------------------------------

interface DemoRedis {
  url: string
  /** For the banner. */
  description: string
  stop: () => Promise<void>
}

/** Said to the user as it is, without a stack: a missing Redis, a bad setting. */
class UsageError extends Error {}

async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

async function answersPing (url: string): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null, connectTimeout: 2000 })
  client.on('error', () => {})
  try {
    await client.connect()
    return (await client.ping()) === 'PONG'
  } catch {
    return false
  } finally {
    client.disconnect()
  }
}

/** A redis-server of the demo's own; undefined when there is no redis-server to run. */
async function startPrivateRedis (): Promise<DemoRedis | undefined> {
  for (let attempt = 1; ; attempt++) {
    const dir = mkdtempSync(join(tmpdir(), 'fastify-auth-cache-demo-'))
    const redisPort = await freePort()
    const logFile = join(dir, 'redis.log')
    // Its own process group (detached): a Ctrl-C in the terminal reaches the workers and this
    // process, not Redis, which is stopped last, once the workers have closed their connections.
    const child = spawn('redis-server', [
      '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', dir, '--logfile', logFile
    ], { stdio: 'ignore', detached: true })
    // (events.once(child, 'spawn') would reject on the 'error' that a missing program causes.)
    const spawned = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
      child.once('spawn', () => resolve(undefined))
      child.once('error', resolve)
    })
    if (spawned !== undefined) {
      rmSync(dir, { recursive: true, force: true })
      if (spawned.code === 'ENOENT') return undefined
      throw spawned
    }
    const url = `redis://127.0.0.1:${redisPort}`
    const removeDir = (): void => rmSync(dir, { recursive: true, force: true })
    // Last resort, should this process exit without stopping it (an uncaught error).
    const onExit = (): void => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      removeDir()
    }
    process.on('exit', onExit)
    const stop = async (): Promise<void> => {
      process.off('exit', onExit)
      await stopChild(child, 'SIGTERM')
      removeDir()
    }
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline && child.exitCode === null) {
      if (await answersPing(url)) return { url, description: `${url}: a private redis-server (pid ${child.pid}, directory ${dir}), stopped and removed on exit`, stop }
      await sleep(50)
    }
    let log = ''
    try { log = readFileSync(logFile, 'utf8').trim().split('\n').slice(-5).join('\n') } catch {}
    await stop()
    // Most likely the free port was taken in between: try another.
    if (attempt === 3) throw new Error(`redis-server did not start on 127.0.0.1:${redisPort}:\n${log}`)
  }
}

async function stopChild (child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill(signal)
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
  await exited
  clearTimeout(timer)
}

async function chooseRedis (): Promise<DemoRedis> {
  const url = process.env.REDIS_URL
  if (url !== undefined && url !== '') {
    if (!await answersPing(url)) throw new UsageError(`Cannot reach Redis at ${url} (REDIS_URL). Start it, or unset REDIS_URL to let the demo start a private redis-server.`)
    return { url, description: `${url} (REDIS_URL)`, stop: async () => {} }
  }
  const started = await startPrivateRedis()
  if (started !== undefined) return started
  throw new UsageError([
    'npm run demo needs Redis, and found none: REDIS_URL is not set, and there is no redis-server on the PATH',
    'for the demo to start a private one.',
    '',
    'Either install Redis (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) and run it',
    'again (the demo then starts its own redis-server on a free loopback port and removes it on exit),',
    'or point it at a Redis you run:  REDIS_URL=redis://127.0.0.1:6379 npm run demo',
    '',
    '(npm start runs the single-process example on the memory backend, without Redis.)'
  ].join('\n'))
}

// ---- The primary -----------------------------------------------------------------------------

function curlLines (base: string, key: string, keyId: string): string[] {
  const auth = `-H 'x-api-key: ${key}'`
  const turns = Array.from({ length: 2 * workerCount }, (_, i) => i + 1).join(' ')
  return [
    '# open route, no key needed',
    `curl -i ${base}/health`,
    '# without a key: 401',
    `curl -i ${base}/whoami`,
    '# each curl opens a new connection, and the workers take turns answering',
    `for i in ${turns}; do curl -s ${auth} ${base}/whoami; echo; done`,
    '# create a key (its plaintext is shown once, in this answer)',
    `curl -s -X POST ${auth} -H 'content-type: application/json' -d '{"name":"my-client"}' ${base}/keys; echo`,
    '# revoke the demo key through whichever worker takes the request; each worker prints when it stops accepting it',
    `curl -i -X DELETE ${auth} ${base}/keys/${keyId}`,
    `# then the loop again: every worker answers 401 now, not in ${CACHE_TTL_SECONDS} s`
  ]
}

/** Gathers every worker's word about one revocation, and says how it went. */
class RevocationSummary {
  private readonly waitingFor: Set<number>
  private readonly reports: DropReport[] = []
  private readonly timer: NodeJS.Timeout

  constructor (private readonly revocation: Revocation, workerIds: number[], private readonly done: () => void) {
    this.waitingFor = new Set(workerIds)
    this.timer = setTimeout(() => {
      print(`[primary] no word about ${revocation.keyId} from worker(s) ${[...this.waitingFor].join(', ')} within ${REPORT_TIMEOUT_MS} ms`)
      this.done()
    }, REPORT_TIMEOUT_MS)
  }

  add (report: DropReport): void {
    this.reports.push(report)
    this.waitingFor.delete(report.worker)
    if (this.waitingFor.size > 0) return
    clearTimeout(this.timer)
    const others = this.reports.filter((r) => r.how !== 'revoked it')
    const slowest = others.length === 0 ? '' : `; the slowest of the others stopped accepting it ${ms(Math.max(...others.map((r) => r.afterMs)))} after the revocation`
    print(`[primary] every worker refuses ${this.revocation.keyId} now: worker ${this.revocation.by} revoked it${slowest}. ` +
      `A per-process cache would have accepted it on the other workers for up to ${CACHE_TTL_SECONDS} s.`)
    this.done()
  }

  cancel (): void {
    clearTimeout(this.timer)
  }
}

async function runPrimary (): Promise<void> {
  if (!Number.isInteger(workerCount) || workerCount < 1 || workerCount > 64) {
    throw new UsageError(`WORKERS must be a whole number from 1 to 64, not "${process.env.WORKERS}"`)
  }
  // Set once Redis is up; the signal handlers may run before that.
  const running: { redis?: DemoRedis } = {}
  let stopping = false
  const summaries = new Map<string, RevocationSummary>()
  const live = (): Worker[] => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead())
  const tell = (worker: Worker, message: PrimaryMessage): void => {
    if (worker.isConnected()) worker.send(message, undefined, () => {})
  }

  const stop = async (code: number): Promise<void> => {
    if (stopping) return
    stopping = true
    for (const summary of summaries.values()) summary.cancel()
    const workers = live()
    await Promise.all(workers.map(async (worker) => {
      if (worker.isDead()) return
      const exited = once(worker, 'exit')
      tell(worker, { type: 'shutdown' })
      const timer = setTimeout(() => worker.process.kill('SIGKILL'), STOP_TIMEOUT_MS)
      // Bounded too: a worker that exited just before `once` was called never emits it again.
      await Promise.race([exited, sleep(STOP_TIMEOUT_MS + 1000)])
      clearTimeout(timer)
    }))
    await running.redis?.stop()
    process.exit(code)
  }
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => { stop(0).catch(() => process.exit(1)) })
  }

  const redis = running.redis = await chooseRedis()
  if (stopping) return
  const keys = new KeyTable(KEY_PREFIX)
  const demoKey = keys.create('demo')

  const answer = (request: TableRequest): TableAnswers[TableRequest['op']] => {
    switch (request.op) {
      case 'lookup': return keys.find(request.keyHash) ?? null
      case 'create': return keys.create(request.name)
      case 'revoke': return keys.revoke(request.keyId) ?? null
    }
  }

  const listening = new Map<number, number>()
  let allListening: () => void = () => {}
  const started = new Promise<void>((resolve) => { allListening = resolve })

  cluster.on('message', (worker: Worker, message: WorkerMessage) => {
    switch (message.type) {
      case 'request':
        tell(worker, { type: 'reply', id: message.id, answer: answer(message.request) })
        break
      case 'listening':
        listening.set(worker.id, message.port)
        if (listening.size === workerCount) allListening()
        break
      case 'revoked': {
        const { revocation } = message
        const workers = live()
        summaries.get(revocation.keyId)?.cancel()
        summaries.set(revocation.keyId, new RevocationSummary(revocation, workers.map((w) => w.id), () => summaries.delete(revocation.keyId)))
        for (const w of workers) tell(w, { type: 'revoked', revocation })
        break
      }
      case 'dropped':
        summaries.get(message.report.keyId)?.add(message.report)
        break
    }
  })
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return
    print(`[primary] worker ${worker.id} (pid ${worker.process.pid}) exited (${signal ?? `code ${code}`}); stopping the demo`)
    stop(code === 0 ? 0 : 1).catch(() => process.exit(1))
  })

  cluster.setupPrimary({ silent: false })
  for (let i = 0; i < workerCount; i++) cluster.fork({ DEMO_REDIS_URL: redis.url, HOST: host, PORT: String(port) })
  const timeout = sleep(START_TIMEOUT_MS, 'timeout' as const)
  if (await Promise.race([started, timeout]) === 'timeout') {
    print(`[primary] the workers did not all listen within ${START_TIMEOUT_MS / 1000} s; stopping`)
    await stop(1)
    return
  }

  // Every worker listens on the one port the cluster shares (with PORT=0, the first worker's pick).
  const sharedPort = [...listening.values()][0]
  const reachable = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host
  const base = `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${sharedPort}`
  const workers = live().map((w) => `${w.id} (pid ${w.process.pid})`).join(', ')
  // The demo key is printed for the person at the terminal; it is a throwaway of this run.
  print([
    '',
    `fastify-auth-cache demo: ${workerCount} worker process(es) share ${base}; node:cluster hands each new connection to the next.`,
    `Each worker keeps API keys in its own memory for ${CACHE_TTL_SECONDS} s (backend "tiered"), in front of Redis at ${redis.description}.`,
    `The key table, the one source of truth, is in the primary process (pid ${process.pid}); a worker asks it over IPC on a cache miss.`,
    `Workers: ${workers}.`,
    '',
    ...curlLines(base, demoKey.key, demoKey.id),
    '',
    'Ctrl-C stops the workers, then Redis.',
    ''
  ].join('\n'))
}

if (cluster.isPrimary) {
  runPrimary().catch((err: unknown) => {
    process.stderr.write(`${err instanceof UsageError ? err.message : String((err as Error)?.stack ?? err)}\n`)
    process.exit(1)
  })
} else {
  runWorker().catch((err: unknown) => {
    process.stderr.write(`[worker ${cluster.worker?.id} pid ${process.pid}] failed to start: ${String((err as Error)?.stack ?? err)}\n`)
    process.exit(1)
  })
}
