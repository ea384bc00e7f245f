import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import type { ApiKeyCacheStats, ApiKeyRecord } from '../../lib'

/** Commands a tiered worker answers over IPC; see test/fixtures/tiered-worker.ts. */
export type WorkerCommand =
  | { cmd: 'setRecord', hash: string, record: ApiKeyRecord | null }
  | { cmd: 'setLookupDelay', ms: number }
  | { cmd: 'request', key: string }
  | { cmd: 'burst', key: string, count: number }
  | { cmd: 'delete', hash: string }
  | { cmd: 'clear' }
  | { cmd: 'stats' }
  | { cmd: 'watchStart', key: string, timeoutMs: number, pauseMs: number }
  | { cmd: 'watchResult' }
  | { cmd: 'close' }

export interface RequestOutcome {
  status: number
  code: string | undefined
  /** Wall-clock ms (performance.timeOrigin + performance.now()) when the request was sent. */
  startedAt: number
  /** Wall-clock ms when the response was complete. */
  endedAt: number
  durationMs: number
}

export interface Revocation {
  /** Wall-clock ms when `delete`/`clear` was called and when it resolved. */
  calledAt: number
  resolvedAt: number
}

export interface WorkerStats extends ApiKeyCacheStats {
  /** Calls the worker's `lookup` actually received, counted by the lookup itself. */
  lookupCalls: number
  /** The backend actually in use. */
  backend: string
}

export interface WatchOutcome {
  /** Requests answered 200 before the first refusal. */
  accepted: number
  /** Wall-clock ms when the last accepted request completed. */
  lastAcceptedAt: number
  /** Wall-clock ms when the last accepted request was sent. */
  lastAcceptedStartedAt: number
  /** Undefined when the watch timed out without a refusal. */
  refused: RequestOutcome | undefined
}

export type WorkerMessage =
  | { ready: true }
  | { id: number, ok: true, result: unknown }
  | { id: number, ok: false, error: string }

const FIXTURE = join(__dirname, '..', 'fixtures', 'tiered-worker.ts')
const START_TIMEOUT_MS = 30_000
const CALL_TIMEOUT_MS = 20_000

/**
 * One child process running a Fastify app with the tiered backend, driven over IPC. Its stderr
 * (warnings of the app) is kept so that a failing test can show it.
 */
export class TieredWorker {
  readonly name: string
  private readonly child: ChildProcess
  private nextId = 0
  private readonly pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()
  stderr = ''

  private constructor (name: string, child: ChildProcess) {
    this.name = name
    this.child = child
    child.stderr!.on('data', (chunk: Buffer) => { this.stderr += chunk.toString() })
    child.on('message', (message: WorkerMessage) => {
      if (!('id' in message)) return
      const waiter = this.pending.get(message.id)
      if (waiter === undefined) return
      this.pending.delete(message.id)
      if (message.ok) waiter.resolve(message.result)
      else waiter.reject(new Error(`worker ${this.name}: ${message.error}`))
    })
    child.on('exit', (code, signal) => {
      for (const waiter of this.pending.values()) {
        waiter.reject(new Error(`worker ${this.name} exited (${code ?? signal}): ${this.stderr.trim()}`))
      }
      this.pending.clear()
    })
  }

  static async start (name: string, redisUrl: string): Promise<TieredWorker> {
    const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE], {
      env: { ...process.env, REDIS_URL: redisUrl, WORKER_NAME: name },
      stdio: ['ignore', 'ignore', 'pipe', 'ipc']
    })
    const worker = new TieredWorker(name, child)
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL')
        reject(new Error(`worker ${name} did not start within ${START_TIMEOUT_MS} ms: ${worker.stderr.trim()}`))
      }, START_TIMEOUT_MS)
      child.on('message', (message: WorkerMessage) => {
        if ('ready' in message) { clearTimeout(timer); resolve() }
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`worker ${name} exited during start (${code}): ${worker.stderr.trim()}`))
      })
    })
    return worker
  }

  call<T> (command: WorkerCommand, timeoutMs = CALL_TIMEOUT_MS): Promise<T> {
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`worker ${this.name}: ${command.cmd} did not answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, {
        resolve: (value) => { clearTimeout(timer); resolve(value as T) },
        reject: (err) => { clearTimeout(timer); reject(err) }
      })
      this.child.send({ id, ...command })
    })
  }

  setRecord (hash: string, record: ApiKeyRecord | null): Promise<void> {
    return this.call({ cmd: 'setRecord', hash, record })
  }

  setLookupDelay (ms: number): Promise<void> {
    return this.call({ cmd: 'setLookupDelay', ms })
  }

  request (key: string): Promise<RequestOutcome> {
    return this.call({ cmd: 'request', key })
  }

  /** `count` requests for one key injected in the same tick. */
  burst (key: string, count: number): Promise<RequestOutcome[]> {
    return this.call({ cmd: 'burst', key, count })
  }

  delete (hash: string): Promise<Revocation> {
    return this.call({ cmd: 'delete', hash })
  }

  clear (): Promise<Revocation> {
    return this.call({ cmd: 'clear' })
  }

  stats (): Promise<WorkerStats> {
    return this.call({ cmd: 'stats' })
  }

  /**
   * Starts requesting `key` in a loop, `pauseMs` apart (0: back to back through setImmediate);
   * resolves once the loop has been answered 200.
   */
  watchStart (key: string, timeoutMs: number, pauseMs = 0): Promise<void> {
    return this.call({ cmd: 'watchStart', key, timeoutMs, pauseMs })
  }

  /** The running watch's outcome, once it saw a refusal or timed out. */
  watchResult (): Promise<WatchOutcome> {
    return this.call({ cmd: 'watchResult' })
  }

  async stop (): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    const exited = once(this.child, 'exit')
    const killer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    this.call({ cmd: 'close' }).catch(() => {})
    await exited
    clearTimeout(killer)
  }
}

/** Every worker learns the same truth before the test goes on. */
export async function setRecordEverywhere (workers: TieredWorker[], hash: string, record: ApiKeyRecord | null): Promise<void> {
  await Promise.all(workers.map((worker) => worker.setRecord(hash, record)))
}
