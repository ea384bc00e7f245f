import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Redis, { type RedisOptions } from 'ioredis'
import { after, before } from 'node:test'
import { until } from './wait'

/** A port the kernel just handed out on loopback, free at the time of asking. */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

/** PEM files of a server certificate and of the CA that signed it. */
export interface TlsFiles {
  certFile: string
  keyFile: string
  caFile: string
}

export interface RedisServerOptions {
  /** `requirepass`: the default user needs this password; the server's own clients send it. */
  password?: string
  /** Serve TLS only (`--port 0 --tls-port <port>`), without client certificates. */
  tls?: TlsFiles
}

/**
 * A private redis-server on a free loopback port, so each test file can stop, stall, restart
 * or empty it without touching anyone else's Redis. Nothing is saved on its own, but a `SAVE`
 * writes `dump.rdb` in its private directory, which the next `start()` (same port, same
 * directory) loads: that is a restart from a snapshot.
 */
export class RedisServer {
  port = 0
  private process: ChildProcess | undefined
  readonly dir = mkdtempSync(join(tmpdir(), 'fastify-auth-cache-redis-'))
  private readonly extraArgs: string[]
  private readonly options: RedisServerOptions

  constructor (extraArgs: string[] = [], options: RedisServerOptions = {}) {
    this.extraArgs = extraArgs
    this.options = options
  }

  get url (): string {
    return `${this.options.tls === undefined ? 'redis' : 'rediss'}://127.0.0.1:${this.port}`
  }

  /** The process id while it runs, for signals (SIGSTOP/SIGCONT) a test sends itself. */
  get pid (): number | undefined {
    return this.process?.pid
  }

  /** What an ioredis client needs to reach this server: host, port, and the password or CA if any. */
  connectionOptions (): RedisOptions {
    const { password, tls } = this.options
    return {
      host: '127.0.0.1',
      port: this.port,
      ...(password === undefined ? {} : { password }),
      ...(tls === undefined ? {} : { tls: { ca: readFileSync(tls.caFile) } })
    }
  }

  async start (): Promise<this> {
    if (this.port === 0) this.port = await freePort()
    const { password, tls } = this.options
    const listen = tls === undefined
      ? ['--port', String(this.port)]
      : ['--port', '0', '--tls-port', String(this.port), '--tls-cert-file', tls.certFile,
          '--tls-key-file', tls.keyFile, '--tls-ca-cert-file', tls.caFile, '--tls-auth-clients', 'no']
    const child = spawn('redis-server', [
      ...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', this.dir, '--protected-mode', 'no',
      ...(password === undefined ? [] : ['--requirepass', password]),
      ...this.extraArgs
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.process = child
    let output = ''
    child.stdout!.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.stderr!.on('data', (chunk: Buffer) => { output += chunk.toString() })
    let spawnError: Error | undefined
    child.on('error', (err) => { spawnError = err })
    try {
      await until(`redis-server on 127.0.0.1:${this.port} answers PING`, async () => {
        if (spawnError !== undefined) throw spawnError
        if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`)
        return await this.ping()
      }, { deadlineMs: 10_000, pauseMs: 50 })
      return this
    } catch (err) {
      child.kill('SIGKILL')
      throw new Error(`Could not start redis-server on 127.0.0.1:${this.port} (is redis-server installed and on PATH?): ${(err as Error).message}: ${output.trim()}`)
    }
  }

  private async ping (): Promise<boolean> {
    const probe = new Redis({ ...this.connectionOptions(), lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null })
    probe.on('error', () => {})
    try {
      await probe.connect()
      return (await probe.ping()) === 'PONG'
    } catch {
      return false
    } finally {
      probe.disconnect()
    }
  }

  /** Kills the server at once, as a crash would. */
  async stop (): Promise<void> {
    const child = this.process
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
    this.process = undefined
  }

  /** A restart on the same port: empty, unless a `SAVE` left a snapshot, which it then loads. */
  async restart (): Promise<void> {
    await this.stop()
    await this.start()
  }

  /** A client for the test itself to look at and change what is stored. */
  client (options: Record<string, unknown> = {}): Redis {
    const client = new Redis({ ...this.connectionOptions(), maxRetriesPerRequest: 1, ...options })
    client.on('error', () => {})
    return client
  }

  async destroy (): Promise<void> {
    await this.stop()
    rmSync(this.dir, { recursive: true, force: true })
  }
}

export async function startRedis (extraArgs: string[] = [], options: RedisServerOptions = {}): Promise<RedisServer> {
  return await new RedisServer(extraArgs, options).start()
}

export interface PrivateRedis {
  /** The file's private server; available from the first test on. */
  readonly server: RedisServer
  /** A client of the test's own, to look at and change what is stored. */
  readonly admin: Redis
}

/**
 * One private server for a whole test file, or for the suite this is called in: started (by
 * `start`, a plain `startRedis()` unless told) before its first test and destroyed after its last.
 */
export function usePrivateRedis (start: () => Promise<RedisServer> = () => startRedis()): PrivateRedis {
  let server: RedisServer | undefined
  let admin: Redis | undefined
  before(async () => {
    server = await start()
    admin = server.client()
  })
  after(async () => {
    admin?.disconnect()
    await server?.destroy()
  })
  return {
    get server () { return server! },
    get admin () { return admin! }
  }
}
