/**
 * How the tests and the benchmarks drive child processes over Node's IPC channel:
 *
 * - parent to child: a call `{ id, cmd, args }` gets exactly one answer, `{ id, ok: true, value }`
 *   or `{ id, ok: false, error, code }`; a notice `{ cmd, args }` (no id) gets none;
 * - child to parent: events `{ event, ...fields }`, at any time; its first `ready` event ends
 *   `Child.start`;
 * - the parent closing the channel, or going away, makes the child run its shutdown and exit.
 *
 * The parent's side is `Child`, the child's `answerParent` and `tellParent`. A child is a .ts
 * file run under tsx. `Script` runs one without a channel, as a user would (the examples).
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import type { TestContext } from 'node:test'
import { until } from './wait'

export interface ChildEvent { event: string, [field: string]: any }

interface Call { id?: number, cmd: string, args: unknown }
type Answer = { id: number, ok: true, value: unknown } | { id: number, ok: false, error: string, code?: string }

const ROOT = join(__dirname, '..', '..')

export interface ChildOptions {
  /** Names the child in errors. */
  name: string
  /** The .ts file to run, an absolute path. */
  file: string
  /** Its arguments, such as a JSON configuration. */
  args?: string[]
  /** Added to this process's environment. */
  env?: Record<string, string>
  /** Node's own options, before the file, such as `--cpu-prof`. */
  nodeArgs?: string[]
  /** Default: the repository's root. */
  cwd?: string
  /**
   * 'inherit' (the default) passes the child's stdout and stderr through; 'keep-stderr' drops its
   * stdout and keeps its stderr in `stderr`, which errors about the child then show.
   */
  output?: 'inherit' | 'keep-stderr'
  /** Default 60 s. */
  startTimeoutMs?: number
  /** How long a call may take unless the call says otherwise; default 60 s, Infinity for no bound. */
  callTimeoutMs?: number
}

interface Waiter {
  resolve: (value: any) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout | undefined
}

/** The parent's side of one child process. */
export class Child {
  readonly name: string
  readonly process: ChildProcess
  /** The child's `ready` event. */
  ready: ChildEvent = { event: 'ready' }
  /** What the child wrote to stderr, with output 'keep-stderr'. */
  stderr = ''
  private nextId = 1
  private readonly calls = new Map<number, Waiter>()
  private readonly listeners = new Map<string, Set<(event: ChildEvent) => void>>()
  private readonly exited: Promise<unknown>
  private exitError: Error | undefined
  private readonly callTimeoutMs: number

  private constructor (options: ChildOptions, child: ChildProcess) {
    this.name = options.name
    this.process = child
    this.callTimeoutMs = options.callTimeoutMs ?? 60_000
    this.exited = once(child, 'exit')
    child.stderr?.on('data', (chunk: Buffer) => { this.stderr += chunk.toString() })
    child.on('message', (message: Answer | ChildEvent) => {
      if ('event' in message) {
        for (const listener of [...this.listeners.get(message.event) ?? []]) listener(message)
      } else if ('id' in message) {
        const waiter = this.calls.get(message.id)
        if (waiter === undefined) return
        this.settle(message.id)
        if (message.ok) waiter.resolve(message.value)
        else waiter.reject(Object.assign(new Error(`${this.name}: ${message.error}`), { code: message.code }))
      }
    })
    // A failed spawn or send is reported here; the exit that follows fails what is pending.
    child.on('error', () => {})
    child.on('exit', (code, signal) => {
      this.exitError = new Error(`${this.name} exited (code ${code}, signal ${signal})${this.stderrText()}`)
      for (const [id, waiter] of this.calls) {
        this.settle(id)
        waiter.reject(this.exitError)
      }
    })
  }

  /** Starts the child and resolves once it said `ready`; a child that fails to start is killed. */
  static async start (options: ChildOptions): Promise<Child> {
    const child = spawn(process.execPath, [...options.nodeArgs ?? [], '--import', 'tsx', options.file, ...options.args ?? []], {
      cwd: options.cwd ?? ROOT,
      env: { ...process.env, ...options.env },
      stdio: options.output === 'keep-stderr' ? ['ignore', 'ignore', 'pipe', 'ipc'] : ['ignore', 'inherit', 'inherit', 'ipc']
    })
    const started = new Child(options, child)
    const timeoutMs = options.startTimeoutMs ?? 60_000
    try {
      started.ready = await started.next('ready', () => true, timeoutMs)
      return started
    } catch (err) {
      await started.kill()
      throw new Error(`${options.name} did not start: ${(err as Error).message}`)
    }
  }

  /** Starts `count` children at once; if any fails to start, kills the others and throws. */
  static async startAll (count: number, options: (i: number) => ChildOptions): Promise<Child[]> {
    const started = await Promise.allSettled(Array.from({ length: count }, (_, i) => Child.start(options(i))))
    const running = started.flatMap((outcome) => outcome.status === 'fulfilled' ? [outcome.value] : [])
    const failed = started.find((outcome) => outcome.status === 'rejected')
    if (failed !== undefined) {
      await Promise.all(running.map((child) => child.kill()))
      throw failed.reason
    }
    return running
  }

  get running (): boolean {
    return this.process.exitCode === null && this.process.signalCode === null
  }

  /** Resolves with the child's answer; rejects with its error, when it exits first, or after `timeoutMs`. */
  call<T = any> (cmd: string, args: unknown = {}, timeoutMs = this.callTimeoutMs): Promise<T> {
    if (this.exitError !== undefined) return Promise.reject(this.exitError)
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      const timer = Number.isFinite(timeoutMs)
        ? setTimeout(() => {
          this.settle(id)
          reject(new Error(`${this.name}: ${cmd} did not answer within ${timeoutMs} ms${this.stderrText()}`))
        }, timeoutMs)
        : undefined
      this.calls.set(id, { resolve, reject, timer })
      this.process.send({ id, cmd, args } satisfies Call, (err) => {
        if (err === null || !this.calls.has(id)) return
        this.settle(id)
        reject(new Error(`${this.name}: ${cmd} could not be sent: ${err.message}`))
      })
    })
  }

  /** A message that gets no answer. */
  notify (cmd: string, args: unknown = {}): void {
    if (this.process.connected) this.process.send({ cmd, args } satisfies Call, () => {})
  }

  on (event: string, listener: (event: ChildEvent) => void): void {
    const listeners = this.listeners.get(event) ?? new Set()
    listeners.add(listener)
    this.listeners.set(event, listeners)
  }

  off (event: string, listener: (event: ChildEvent) => void): void {
    this.listeners.get(event)?.delete(listener)
  }

  /** The next `event` from now on for which `match` holds; rejects when the child exits first or after `timeoutMs`. */
  next (event: string, match: (event: ChildEvent) => boolean = () => true, timeoutMs = this.callTimeoutMs): Promise<ChildEvent> {
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer)
        this.off(event, listener)
        this.process.off('exit', onExit)
      }
      const listener = (message: ChildEvent): void => {
        if (!match(message)) return
        done()
        resolve(message)
      }
      const onExit = (code: number | null, signal: string | null): void => {
        done()
        reject(new Error(`${this.name} exited (code ${code}, signal ${signal}) before its ${event} event${this.stderrText()}`))
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`${this.name} sent no ${event} event within ${timeoutMs} ms${this.stderrText()}`))
      }, Number.isFinite(timeoutMs) ? timeoutMs : 2 ** 31 - 1)
      if (!this.running) return onExit(this.process.exitCode, this.process.signalCode)
      this.on(event, listener)
      this.process.on('exit', onExit)
    })
  }

  /** Closes the channel, so the child shuts down as it would when its parent goes away; killed after `graceMs`. */
  async stop (graceMs = 5000): Promise<void> {
    if (!this.running) return
    const timer = setTimeout(() => this.process.kill('SIGKILL'), graceMs)
    if (this.process.connected) this.process.disconnect()
    await this.exited
    clearTimeout(timer)
  }

  /** SIGKILL, as a crash would. */
  async kill (): Promise<void> {
    if (!this.running) return
    this.process.kill('SIGKILL')
    await this.exited
  }

  private settle (id: number): void {
    clearTimeout(this.calls.get(id)?.timer)
    this.calls.delete(id)
  }

  private stderrText (): string {
    const text = this.stderr.trim()
    return text === '' ? '' : `; its stderr: ${text}`
  }
}

export type Handler = (args: any) => unknown

/**
 * The child's side: answers the parent's calls and notices with `handlers`, and runs `shutdown`
 * once, then exits, when the parent closes the channel or goes away, so that nothing is left
 * running behind an aborted test or benchmark.
 */
export function answerParent (handlers: Record<string, Handler>, shutdown: () => Promise<unknown> = async () => {}): void {
  if (process.send === undefined) throw new Error('this file runs as a child process: start it through test/helpers/child-process.ts')
  process.on('message', (message: Call) => {
    const handler = handlers[message.cmd]
    Promise.resolve()
      .then(() => {
        if (handler === undefined) throw new Error(`unknown command "${message.cmd}"`)
        return handler(message.args)
      })
      .then(
        (value) => { if (message.id !== undefined) send({ id: message.id, ok: true, value }) },
        (err: NodeJS.ErrnoException) => {
          if (message.id !== undefined) send({ id: message.id, ok: false, error: err?.message ?? String(err), code: err?.code })
          else console.error(err)
        })
  })
  let closing = false
  process.on('disconnect', () => {
    if (closing) return
    closing = true
    shutdown().then(() => process.exit(0), (err: unknown) => {
      console.error(err)
      process.exit(1)
    })
  })
}

/** An event for the parent; dropped once the parent is gone. */
export function tellParent (event: string, fields: Record<string, unknown> = {}): void {
  send({ ...fields, event })
}

function send (message: Answer | ChildEvent): void {
  if (process.connected) process.send!(message)
}

/**
 * A .ts file run under tsx as a user runs it, without an IPC channel: its stdout and stderr
 * gathered in one text. Killed (SIGKILL) after the test unless it ended before.
 */
export class Script {
  private text = ''

  private constructor (readonly process: ChildProcess) {
    process.stdout!.on('data', (chunk: Buffer) => { this.text += chunk.toString() })
    process.stderr!.on('data', (chunk: Buffer) => { this.text += chunk.toString() })
  }

  /** `file` relative to the repository's root; `env` is the whole environment. */
  static run (t: TestContext, file: string, env: NodeJS.ProcessEnv): Script {
    const script = new Script(spawn(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] }))
    t.after(async () => {
      const child = script.process
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGKILL')
      await exited
    })
    return script
  }

  output (): string {
    return this.text
  }

  /** The match of `pattern` once the output has one; fails when the process exits first, or after `deadlineMs`. */
  async printed (what: string, pattern: RegExp, deadlineMs: number): Promise<RegExpExecArray> {
    return await until(what, () => {
      if (this.process.exitCode !== null) assert.fail(`${what}: it exited with ${this.process.exitCode} first:\n${this.text}`)
      return pattern.exec(this.text) ?? undefined
    }, deadlineMs)
  }

  /** SIGTERM, and a clean exit (code 0) expected. */
  async terminate (): Promise<void> {
    const exited = once(this.process, 'exit')
    this.process.kill('SIGTERM')
    const [code, signal] = await exited
    assert.equal(code, 0, `a clean exit on SIGTERM (signal ${signal}):\n${this.text}`)
  }
}
