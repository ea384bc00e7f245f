import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'

export interface WorkerReply { type: 'reply', id: number, ok: boolean, error?: string, [field: string]: any }

/**
 * A child process running a test fixture under tsx, driven over IPC: it sends `{ type: 'ready' }`
 * once started, answers each `{ id, op, ...args }` with one `{ type: 'reply', id, ok, ... }`,
 * and takes `{ op, ... }` messages without an id as notices that get no reply.
 */
export class IpcWorker {
  private nextId = 0
  private readonly waiting = new Map<number, (reply: WorkerReply) => void>()
  private readonly exited: Promise<unknown>

  private constructor (readonly child: ChildProcess) {
    this.exited = once(child, 'exit')
    child.on('message', (message: WorkerReply) => {
      if (message.type !== 'reply') return
      this.waiting.get(message.id)?.(message)
      this.waiting.delete(message.id)
    })
  }

  static async start (file: string, env: Record<string, string>): Promise<IpcWorker> {
    const child = spawn(process.execPath, ['--import', 'tsx', file], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    const [message] = await Promise.race([
      once(child, 'message'),
      once(child, 'exit').then(([code]) => { throw new Error(`worker exited with ${String(code)} before it was ready`) })
    ]) as [{ type: string }]
    if (message.type !== 'ready') throw new Error(`worker said ${message.type} instead of ready`)
    return new IpcWorker(child)
  }

  /** Sends a request and resolves with its reply; rejects when the reply is not ok or the worker exits. */
  async request (op: string, args: Record<string, unknown> = {}): Promise<WorkerReply> {
    const id = ++this.nextId
    const reply = new Promise<WorkerReply>((resolve, reject) => {
      this.waiting.set(id, resolve)
      this.exited.then(() => reject(new Error(`worker ${String(this.child.pid)} exited while ${op} was awaited`)), () => {})
    })
    this.child.send({ id, op, ...args })
    const answer = await reply
    if (!answer.ok) throw new Error(`worker failed on ${op}: ${String(answer.error)}`)
    return answer
  }

  notify (op: string, args: Record<string, unknown> = {}): void {
    this.child.send({ op, ...args })
  }

  async kill (): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    this.child.kill('SIGKILL')
    await this.exited
  }
}

/** Starts `count` workers at once; if any fails to start, kills the others and throws. */
export async function startWorkers (count: number, file: string, env: Record<string, string>): Promise<IpcWorker[]> {
  const started = await Promise.allSettled(Array.from({ length: count }, () => IpcWorker.start(file, env)))
  const running = started.flatMap((outcome) => outcome.status === 'fulfilled' ? [outcome.value] : [])
  for (const outcome of started) {
    if (outcome.status === 'rejected') {
      await Promise.all(running.map((worker) => worker.kill()))
      throw outcome.reason
    }
  }
  return running
}
