import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Redis, { Cluster, type ClusterOptions } from 'ioredis'
import { freePort } from './redis-server'
import { until } from './wait'

const MASTERS = 3
const START_TIMEOUT_MS = 30_000

interface ClusterNodeProcess {
  port: number
  busPort: number
  child: ChildProcess
  output: string
  spawnFailed: boolean
}

/** Runs a command to its end, with a deadline; resolves with its exit code and output. */
export async function run (command: string, args: string[], timeoutMs: number): Promise<{ code: number | null, output: string }> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  try {
    const [code] = await Promise.race([
      once(child, 'exit') as Promise<[number | null]>,
      once(child, 'error').then(([err]) => { throw err })
    ])
    return { code, output }
  } finally {
    clearTimeout(timer)
  }
}

/** Joins the nodes on `ports` into one cluster, the first ones masters, each with `replicas` replicas. */
export async function createCluster (ports: number[], replicas: number, timeoutMs: number): Promise<void> {
  const created = await run('redis-cli', [
    '--cluster', 'create', ...ports.map((port) => `127.0.0.1:${port}`),
    '--cluster-replicas', String(replicas), '--cluster-yes'
  ], timeoutMs)
  if (created.code !== 0) throw new Error(`redis-cli --cluster create exited with ${created.code}: ${created.output.trim()}`)
}

/** A node's own view, through a short-lived connection that never queues or retries. */
export async function probe<T> (port: number, ask: (client: Redis) => Promise<T>): Promise<T | undefined> {
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null })
  client.on('error', () => {})
  try {
    await client.connect()
    return await ask(client)
  } catch {
    return undefined
  } finally {
    client.disconnect()
  }
}

/**
 * A private Redis Cluster of three masters, no replicas and no persistence, on free loopback
 * ports, so cluster tests never share state with anyone else's Redis.
 */
export class RedisCluster {
  private readonly nodes: ClusterNodeProcess[] = []
  private readonly clients: Array<Redis | Cluster> = []
  private readonly dir = mkdtempSync(join(tmpdir(), 'fastify-auth-cache-cluster-'))

  /** The ports of the masters, in the order their slot ranges were assigned. */
  get ports (): number[] {
    return this.nodes.map((node) => node.port)
  }

  async start (): Promise<this> {
    try {
      for (let i = 0; i < MASTERS; i++) this.nodes.push(await this.spawnNode())
      await Promise.all(this.nodes.map((node) => this.waitForPing(node)))
      await createCluster(this.ports, 0, START_TIMEOUT_MS)
      await this.waitForClusterOk()
      return this
    } catch (err) {
      const logs = this.nodes.map((node) => `--- node ${node.port}:\n${node.output.trim()}`).join('\n')
      await this.destroy()
      throw new Error(`Could not start a Redis Cluster (are redis-server >= 7 and redis-cli on PATH?): ${(err as Error).message}\n${logs}`)
    }
  }

  private async spawnNode (): Promise<ClusterNodeProcess> {
    const port = await freePort()
    // Redis 7 lets the cluster bus use any port, so we need not hope that port + 10000 is free.
    let busPort = await freePort()
    while (busPort === port) busPort = await freePort()
    const child = spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'no',
      '--cluster-enabled', 'yes', '--cluster-config-file', join(this.dir, `nodes-${port}.conf`),
      '--cluster-node-timeout', '2000', '--cluster-port', String(busPort),
      '--save', '', '--appendonly', 'no', '--dir', this.dir
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    const node: ClusterNodeProcess = { port, busPort, child, output: '', spawnFailed: false }
    child.stdout!.on('data', (chunk: Buffer) => { node.output += chunk.toString() })
    child.stderr!.on('data', (chunk: Buffer) => { node.output += chunk.toString() })
    child.on('error', (err) => {
      node.spawnFailed = true
      node.output += `\nspawn failed: ${err.message}`
    })
    return node
  }

  private async waitForPing (node: ClusterNodeProcess): Promise<void> {
    await until(`redis-server on 127.0.0.1:${node.port} answers PING`, async () => {
      if (node.spawnFailed || node.child.exitCode !== null || node.child.signalCode !== null) {
        throw new Error(`redis-server on 127.0.0.1:${node.port} is not running`)
      }
      return await probe(node.port, (client) => client.ping()) === 'PONG'
    }, { deadlineMs: START_TIMEOUT_MS, pauseMs: 50 })
  }

  /** Every node must see the whole cluster healthy, or a client may be sent to one that does not. */
  private async waitForClusterOk (): Promise<void> {
    await until('cluster_state is ok on every node', async () => {
      const states = await Promise.all(this.nodes.map((node) =>
        probe(node.port, async (client) => String(await client.cluster('INFO')))))
      return states.every((info) => info?.includes('cluster_state:ok') === true)
    }, { deadlineMs: START_TIMEOUT_MS, pauseMs: 100 })
  }

  /** An ioredis Cluster client, closed by `destroy()` unless the caller closes it first. */
  cluster (options: ClusterOptions = {}): Cluster {
    const client = new Cluster(this.ports.map((port) => ({ host: '127.0.0.1', port })), {
      ...options,
      redisOptions: { maxRetriesPerRequest: 1, ...options.redisOptions }
    })
    client.on('error', () => {})
    this.clients.push(client)
    return client
  }

  /** A plain client to one master, for looking at what that node alone holds. */
  nodeClient (port: number): Redis {
    const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 })
    client.on('error', () => {})
    this.clients.push(client)
    return client
  }

  /** Every key held by one master, through SCAN on that node only. */
  async keysOn (port: number, pattern = '*'): Promise<string[]> {
    const client = this.nodeClient(port)
    const keys: string[] = []
    let cursor = '0'
    do {
      const [next, found] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      cursor = next
      keys.push(...found)
    } while (cursor !== '0')
    client.disconnect()
    return keys
  }

  async destroy (): Promise<void> {
    for (const client of this.clients.splice(0)) client.disconnect()
    await Promise.all(this.nodes.splice(0).map(async ({ child }) => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGKILL')
      await exited
    }))
    rmSync(this.dir, { recursive: true, force: true })
  }
}

export async function startRedisCluster (): Promise<RedisCluster> {
  return await new RedisCluster().start()
}
