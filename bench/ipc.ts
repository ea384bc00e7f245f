import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'

/**
 * Request/answer messaging between the bench and its child processes over Node's IPC channel.
 * A request is `{ id, type, payload }`, its answer `{ id, ok, value | error }`; a child may also
 * send unsolicited `{ event, ... }` messages (readiness, observations).
 */

interface Answer { id: number, ok: boolean, value?: unknown, error?: string }
export interface ChildEvent { event: string, [field: string]: unknown }

const ROOT = join(__dirname, '..')

export class Peer {
  private nextId = 1
  private readonly pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()
  private readonly listeners = new Map<string, Array<(message: ChildEvent) => void>>()
  private exitError: Error | undefined

  private constructor (readonly name: string, private readonly child: ChildProcess) {
    child.on('message', (message: Answer | ChildEvent) => {
      if ('event' in message) {
        for (const listener of this.listeners.get(message.event) ?? []) listener(message)
        return
      }
      const waiter = this.pending.get(message.id)
      if (waiter === undefined) return
      this.pending.delete(message.id)
      if (message.ok) waiter.resolve(message.value)
      else waiter.reject(new Error(`${name}: ${message.error}`))
    })
    child.on('exit', (code, signal) => {
      this.exitError = new Error(`${name} exited (code ${code}, signal ${signal})`)
      for (const waiter of this.pending.values()) waiter.reject(this.exitError)
      this.pending.clear()
    })
  }

  /**
   * Starts `bench/<file>` under tsx with `config` as its JSON argument, and `nodeArgs` (such as
   * `--cpu-prof`) for Node; resolves on its `ready` event.
   */
  static async start (name: string, file: string, config: unknown, nodeArgs: string[] = [], timeoutMs = 60_000): Promise<{ peer: Peer, ready: ChildEvent }> {
    const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', join(__dirname, file), JSON.stringify(config)], {
      cwd: ROOT,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    const peer = new Peer(name, child)
    const ready = await new Promise<ChildEvent>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} did not start within ${timeoutMs} ms`)), timeoutMs)
      peer.on('ready', (message) => { clearTimeout(timer); resolve(message) })
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited during start-up (code ${code})`)) })
    }).catch(async (err: Error) => {
      await peer.stop()
      throw err
    })
    return { peer, ready }
  }

  on (event: string, listener: (message: ChildEvent) => void): void {
    const list = this.listeners.get(event) ?? []
    list.push(listener)
    this.listeners.set(event, list)
  }

  request<T> (type: string, payload: unknown = null): Promise<T> {
    if (this.exitError !== undefined) return Promise.reject(this.exitError)
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject })
      this.child.send({ id, type, payload })
    })
  }

  /** Closing the channel asks the child to shut down cleanly; it is killed if it lingers. */
  async stop (graceMs = 5000): Promise<void> {
    const child = this.child
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    if (child.connected) child.disconnect()
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    await exited
    clearTimeout(timer)
  }
}

type Handler = (payload: any) => unknown

/**
 * The child's side: answers requests with `handlers`, and runs `shutdown` once when the parent
 * goes away, so an aborted bench leaves no server behind.
 */
export function answerParent (handlers: Record<string, Handler>, shutdown: () => Promise<void>): void {
  if (process.send === undefined) throw new Error('this file is a bench child; start it through bench/run.ts or bench/soak.ts')
  process.on('message', (message: { id: number, type: string, payload: unknown }) => {
    const handler = handlers[message.type]
    Promise.resolve()
      .then(() => {
        if (handler === undefined) throw new Error(`unknown request "${message.type}"`)
        return handler(message.payload)
      })
      .then(
        (value) => send({ id: message.id, ok: true, value }),
        (err: Error) => send({ id: message.id, ok: false, error: err?.message ?? String(err) }))
  })
  let closing = false
  process.on('disconnect', () => {
    if (closing) return
    closing = true
    shutdown().then(() => process.exit(0), (err) => {
      console.error(err)
      process.exit(1)
    })
  })
}

export function send (message: Answer | ChildEvent): void {
  if (process.connected) process.send!(message)
}
