/**
 * Redis as production runs it, on private loopback servers the tests start themselves: a
 * memory-bound Redis that evicts (with a client that keeps it under pressure), a full Redis that
 * refuses writes, Sentinel with a replica, a Cluster with one replica per master whose
 * replication can be held back so that a takeover really loses acknowledged writes, a restart
 * from an older snapshot, a least-privilege ACL user, `requirepass` and TLS.
 *
 * Every helper checks that the situation it promises really happened (evictions counted, writes
 * refused, the old master resynced as a replica, a write made while held back gone after the
 * takeover), and fails with a clear message when it did not: a scenario test that passes because
 * the fault never occurred would prove nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Redis, { Cluster, type ClusterOptions, type RedisOptions } from 'ioredis'
import { createCluster, probe, run } from './redis-cluster'
import { freePort, RedisServer, type RedisServerOptions, type TlsFiles } from './redis-server'
import { until, type UntilOptions } from './wait'

const START_TIMEOUT_MS = 30_000
const SETTLE_TIMEOUT_MS = 60_000

/**
 * How the helpers below wait on servers: a probe that fails (a server still starting, a refused
 * connection) only means "not yet".
 */
function probing (deadlineMs: number, pauseMs = 50): UntilOptions {
  return { deadlineMs, pauseMs, retryErrors: true }
}

/** `INFO <section>` as a map of its `field:value` lines. */
export async function info (client: Redis, section: string): Promise<Map<string, string>> {
  const fields = new Map<string, string>()
  for (const line of (await client.info(section)).split('\r\n')) {
    const colon = line.indexOf(':')
    if (colon > 0 && !line.startsWith('#')) fields.set(line.slice(0, colon), line.slice(colon + 1))
  }
  return fields
}

async function infoOf (port: number, section: string, options: RedisOptions = {}): Promise<Map<string, string> | undefined> {
  const client = new Redis({ host: '127.0.0.1', port, ...options, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null })
  client.on('error', () => {})
  try {
    await client.connect()
    return await info(client, section)
  } catch {
    return undefined
  } finally {
    client.disconnect()
  }
}

/** A plain client with ioredis' defaults (it reconnects and queues), as an application would make one. */
export function appClient (options: RedisOptions): Redis {
  const client = new Redis(options)
  // ioredis reconnects by itself; an unhandled 'error' would crash the test process.
  client.on('error', () => {})
  return client
}

/* ---------------------------------------------------------------------------------------------
 * maxmemory with an eviction policy, and a client that keeps it under pressure
 * ------------------------------------------------------------------------------------------- */

export type EvictionPolicy = 'allkeys-lru' | 'allkeys-lfu' | 'allkeys-random' | 'volatile-lru' | 'volatile-lfu' |
  'volatile-random' | 'volatile-ttl'

/** A private Redis bounded by `maxmemory` that evicts with `policy`. */
export async function startEvictingRedis (policy: EvictionPolicy = 'allkeys-lru', maxmemory = '8mb'): Promise<RedisServer> {
  return await new RedisServer(['--maxmemory', maxmemory, '--maxmemory-policy', policy]).start()
}

/** `evicted_keys` from INFO stats: keys the server has evicted since it started. */
export async function evictedKeys (admin: Redis): Promise<number> {
  return Number((await info(admin, 'stats')).get('evicted_keys') ?? 0)
}

export interface FillerOptions {
  /** Bytes per value; default 16 KiB. */
  valueBytes?: number
  /** Values written per round trip; default 16. */
  batch?: number
  /** Pause between round trips; default 20 ms (with the defaults: about 12 MiB/s). */
  pauseMs?: number
  /** The filler stops by itself after this long; default 120 s. */
  maxMs?: number
  /** Give every value this TTL, so that volatile-* policies may evict them too; default none. */
  ttlMs?: number
}

export interface Filler {
  /** Values written so far, and writes Redis refused (OOM under a volatile-* policy). */
  readonly written: number
  readonly refused: number
  /** Stops writing, closes its client; resolves once the loop ended. */
  stop (): Promise<void>
}

/**
 * Writes filler values from a client of its own, round trip after round trip, so that a Redis
 * bounded by `maxmemory` keeps evicting while a test runs. Bounded: it stops by itself after
 * `maxMs`. With the defaults it rewrites 8 MiB in well under a second, which matters for LRU:
 * Redis tracks idleness at one-second resolution, so only when the whole data set turns over
 * within a second are keys written a moment ago as likely to be evicted as any other.
 */
export function startFiller (server: RedisServer, options: FillerOptions = {}): Filler {
  const { valueBytes = 16_384, batch = 16, pauseMs = 20, maxMs = 120_000, ttlMs } = options
  const client = appClient({ ...server.connectionOptions(), connectionName: 'test-filler', maxRetriesPerRequest: 1 })
  const value = randomBytes(valueBytes / 2).toString('hex')
  const tag = randomBytes(4).toString('hex')
  const deadline = Date.now() + maxMs
  const state = { written: 0, refused: 0, stopped: false }
  const loop = (async () => {
    let n = 0
    while (!state.stopped && Date.now() < deadline) {
      const pipeline = client.pipeline()
      for (let i = 0; i < batch; i++) {
        const key = `filler:${tag}:${n++}`
        if (ttlMs === undefined) pipeline.set(key, value)
        else pipeline.set(key, value, 'PX', ttlMs)
      }
      try {
        for (const [err] of await pipeline.exec() ?? []) {
          if (err === null) state.written++
          else state.refused++
        }
      } catch {
        state.refused += batch
      }
      await sleep(pauseMs)
    }
  })()
  return {
    get written () { return state.written },
    get refused () { return state.refused },
    async stop () {
      state.stopped = true
      await loop
      client.disconnect()
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * noeviction, filled until Redis refuses writes
 * ------------------------------------------------------------------------------------------- */

/** A private Redis with `maxmemory` and `noeviction`: once full it refuses writes. */
export async function startNoEvictionRedis (maxmemory = '8mb'): Promise<RedisServer> {
  return await new RedisServer(['--maxmemory', maxmemory, '--maxmemory-policy', 'noeviction']).start()
}

const OOM = /OOM command not allowed/

/** Fails unless Redis refuses a write with `OOM command not allowed`. */
export async function assertWritesRefused (admin: Redis): Promise<void> {
  let error: unknown
  try {
    await admin.set(`probe:oom:${randomBytes(4).toString('hex')}`, 'x')
  } catch (err) {
    error = err
  }
  if (!OOM.test((error as Error | undefined)?.message ?? '')) {
    throw new Error(`Redis was expected to refuse writes with "OOM command not allowed", but the write ${error === undefined ? 'succeeded' : `failed with: ${(error as Error).message}`}`)
  }
}

/**
 * Writes filler values until Redis answers `OOM command not allowed`, then lowers `maxmemory` to
 * `marginBytes` below what is used, so that the few bytes a test frees (deleting an entry or a
 * whole prefix of small ones) cannot bring it back under the limit. Verifies that a write is
 * refused before returning. Idempotent: call it again to top up after a test freed memory.
 */
export async function fillUntilRefused (admin: Redis, { valueBytes = 65_536, marginBytes = 1 << 20 } = {}): Promise<{ written: number, usedMemory: number }> {
  const value = randomBytes(valueBytes / 2).toString('hex')
  const tag = randomBytes(4).toString('hex')
  const maxmemory = Number((await admin.config('GET', 'maxmemory') as string[])[1])
  if (!(maxmemory > 0)) throw new Error('fillUntilRefused needs a Redis started with --maxmemory')
  const limit = Math.ceil(2 * maxmemory / valueBytes) + 1000
  let written = 0
  for (;;) {
    try {
      await admin.set(`fill:${tag}:${written}`, value)
      written++
    } catch (err) {
      if (OOM.test((err as Error).message)) break
      throw err
    }
    if (written > limit) throw new Error(`Redis accepted ${written} writes of ${valueBytes} bytes without refusing one (maxmemory ${maxmemory})`)
  }
  const usedMemory = Number((await info(admin, 'memory')).get('used_memory'))
  await admin.config('SET', 'maxmemory', String(Math.max(1 << 20, usedMemory - marginBytes)))
  await assertWritesRefused(admin)
  return { written, usedMemory }
}

/* ---------------------------------------------------------------------------------------------
 * Snapshots
 * ------------------------------------------------------------------------------------------- */

/** `SAVE`: writes the snapshot that the next `start()` of the same server loads. */
export async function saveSnapshot (admin: Redis): Promise<void> {
  const reply = await admin.call('SAVE')
  if (reply !== 'OK') throw new Error(`SAVE answered ${String(reply)}`)
}

/**
 * Kills the server (as a crash would: nothing is saved) and starts it again on the same port and
 * directory, so that it loads the last snapshot. Resolves with `Date.now()` once it answers PING.
 */
export async function restartFromSnapshot (server: RedisServer): Promise<number> {
  await server.stop()
  await server.start()
  return Date.now()
}

/* ---------------------------------------------------------------------------------------------
 * ACL: a least-privilege user
 * ------------------------------------------------------------------------------------------- */

export interface AclUser {
  username: string
  password: string
  /** The rules given to ACL SETUSER, for messages. */
  rules: string[]
}

/** Escapes Redis glob characters so that a prefix matches only itself. */
function globEscape (text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`)
}

/**
 * An ACL user granted exactly what CONTRACT 4a promises the plugin needs: its key prefixes, the
 * `fastify-auth-cache:*` channels and ordinary commands (no @dangerous, so no CONFIG, no KEYS),
 * plus INFO for ioredis' ready check.
 */
export async function createLeastPrivilegeUser (admin: Redis, {
  username = `fac-app-${randomBytes(3).toString('hex')}`,
  password = randomBytes(12).toString('hex'),
  keyPrefixes = ['apikey:', 'credentials:'],
  channelPatterns = ['fastify-auth-cache:*']
}: { username?: string, password?: string, keyPrefixes?: string[], channelPatterns?: string[] } = {}): Promise<AclUser> {
  const rules = [
    'reset', 'on', `>${password}`,
    ...keyPrefixes.map((prefix) => `~${globEscape(prefix)}*`),
    ...channelPatterns.map((pattern) => `&${pattern}`),
    '+@all', '-@dangerous', '+info'
  ]
  await admin.call('ACL', 'SETUSER', username, ...rules)
  return { username, password, rules: rules.map((rule) => rule.startsWith('>') ? '>***' : rule) }
}

export interface AclLogEntry {
  count: number
  reason: string
  context: string
  object: string
  username: string
  clientInfo: string
}

/** `ACL LOG`: what the server refused, newest first. */
export async function aclLog (admin: Redis): Promise<AclLogEntry[]> {
  const entries = await admin.call('ACL', 'LOG') as unknown[][]
  return entries.map((flat) => {
    const fields = new Map<string, unknown>()
    for (let i = 0; i + 1 < flat.length; i += 2) fields.set(String(flat[i]), flat[i + 1])
    return {
      count: Number(fields.get('count')),
      reason: String(fields.get('reason')),
      context: String(fields.get('context')),
      object: String(fields.get('object')),
      username: String(fields.get('username')),
      clientInfo: String(fields.get('client-info'))
    }
  })
}

export async function resetAclLog (admin: Redis): Promise<void> {
  await admin.call('ACL', 'LOG', 'RESET')
}

/* ---------------------------------------------------------------------------------------------
 * requirepass and TLS
 * ------------------------------------------------------------------------------------------- */

/** A server whose extra directories (certificates) go away with it. */
class OwningRedisServer extends RedisServer {
  private readonly ownedDirs: string[]

  constructor (extraArgs: string[], options: RedisServerOptions, ownedDirs: string[]) {
    super(extraArgs, options)
    this.ownedDirs = ownedDirs
  }

  override async destroy (): Promise<void> {
    await super.destroy()
    for (const dir of this.ownedDirs) rmSync(dir, { recursive: true, force: true })
  }
}

/** A private Redis whose default user needs `password`. */
export async function startPasswordRedis (password = randomBytes(12).toString('hex')): Promise<RedisServer> {
  return await new RedisServer([], { password }).start()
}

async function openssl (args: string[], cwd: string): Promise<void> {
  const { code, output } = await run('openssl', args.map((arg) => arg.startsWith('@') ? join(cwd, arg.slice(1)) : arg), 30_000)
  if (code !== 0) throw new Error(`openssl ${args[0]} exited with ${code}: ${output.trim()}`)
}

/** A self-signed CA and a server certificate it signed, for 127.0.0.1, in `dir`. */
export async function makeTlsFiles (dir: string): Promise<TlsFiles> {
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n')
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', '@ca.key', '-out', '@ca.crt',
    '-days', '2', '-subj', '/CN=fastify-auth-cache test CA'], dir)
  await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', '@server.key', '-out', '@server.csr',
    '-subj', '/CN=127.0.0.1'], dir)
  await openssl(['x509', '-req', '-in', '@server.csr', '-CA', '@ca.crt', '-CAkey', '@ca.key', '-CAcreateserial',
    '-out', '@server.crt', '-days', '2', '-extfile', '@server.ext'], dir)
  return { certFile: join(dir, 'server.crt'), keyFile: join(dir, 'server.key'), caFile: join(dir, 'ca.crt') }
}

/**
 * A private Redis that speaks only TLS (`--port 0 --tls-port <port>`) with a certificate of a CA
 * made for it; `connectionOptions()` carries `tls: { ca }`. Fails clearly if this redis-server
 * was built without TLS.
 */
export async function startTlsRedis (options: { password?: string } = {}): Promise<RedisServer> {
  const dir = mkdtempSync(join(tmpdir(), 'fastify-auth-cache-tls-'))
  try {
    const tls = await makeTlsFiles(dir)
    return await new OwningRedisServer([], { ...options, tls }, [dir]).start()
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`Could not start a TLS redis-server (is it built with TLS? try redis-server --tls-port): ${(err as Error).message}`)
  }
}

/* ---------------------------------------------------------------------------------------------
 * Processes that are not plain servers: Sentinels and Cluster nodes
 * ------------------------------------------------------------------------------------------- */

class RedisProcess {
  output = ''
  private readonly child: ChildProcess
  private spawnError: Error | undefined

  constructor (readonly port: number, args: string[]) {
    this.child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    this.child.stdout!.on('data', (chunk: Buffer) => { this.output += chunk.toString() })
    this.child.stderr!.on('data', (chunk: Buffer) => { this.output += chunk.toString() })
    this.child.on('error', (err) => { this.spawnError = err })
  }

  get running (): boolean {
    return this.spawnError === undefined && this.child.exitCode === null && this.child.signalCode === null
  }

  async waitForPing (): Promise<void> {
    await until(`redis-server on 127.0.0.1:${this.port} answers PING`, async () => {
      if (!this.running) throw new Error('it is not running')
      return await probe(this.port, (client) => client.ping()) === 'PONG'
    }, { deadlineMs: START_TIMEOUT_MS, pauseMs: 50 }).catch((err: Error) => {
      throw new Error(`${err.message} (is redis-server on PATH?)${this.spawnError === undefined ? '' : `: ${this.spawnError.message}`}\n${this.output.trim()}`)
    })
  }

  async kill (): Promise<void> {
    if (!this.running) return
    const exited = once(this.child, 'exit')
    this.child.kill('SIGKILL')
    await exited
  }
}

/* ---------------------------------------------------------------------------------------------
 * Sentinel: one master, one replica, three sentinels
 * ------------------------------------------------------------------------------------------- */

export interface FailoverResult {
  /** Port of the master before and after. */
  from: number
  to: number
  /** Date.now() when SENTINEL FAILOVER was accepted, and when the old master was a synced replica of the new one. */
  startedAt: number
  settledAt: number
}

async function replicationOf (port: number): Promise<Map<string, string> | undefined> {
  return await infoOf(port, 'replication')
}

/** Whether the server on `port` is a replica of `masterPort`, connected, synced and caught up. */
async function isSyncedReplicaOf (port: number, masterPort: number): Promise<boolean> {
  const [replica, master] = await Promise.all([replicationOf(port), replicationOf(masterPort)])
  if (replica === undefined || master === undefined) return false
  if (replica.get('role') !== 'slave' || replica.get('master_port') !== String(masterPort) ||
    replica.get('master_link_status') !== 'up' || replica.get('master_sync_in_progress') !== '0') return false
  if (master.get('role') !== 'master') return false
  const listed = [...master.entries()].some(([field, value]) => /^slave\d+$/.test(field) &&
    value.includes(`port=${port},`) && value.includes('state=online'))
  return listed
}

/**
 * Resolves once the replica on `replicaPort` has received everything the master on `masterPort`
 * had written when this was called (replication offsets), so what was cached before survives
 * a failover.
 */
export async function waitReplicated (masterPort: number, replicaPort: number, deadlineMs = 20_000): Promise<void> {
  const master = await replicationOf(masterPort)
  const target = Number(master?.get('master_repl_offset'))
  if (!Number.isFinite(target)) throw new Error(`no replication offset from the master ${masterPort}`)
  await until(`the replica ${replicaPort} reached offset ${target} of ${masterPort}`, async () =>
    Number((await replicationOf(replicaPort))?.get('slave_repl_offset')) >= target, probing(deadlineMs))
}

/**
 * A master and its replica watched by three Sentinels (quorum 2), all on loopback. Clients made
 * by `client()` find the master through the Sentinels, as ioredis users configure them.
 */
export class SentinelTopology {
  readonly name = 'fac-master'
  readonly servers: RedisServer[] = []
  private readonly sentinels: RedisProcess[] = []
  private readonly clients: Redis[] = []
  private readonly dir = mkdtempSync(join(tmpdir(), 'fastify-auth-cache-sentinel-'))

  get sentinelPorts (): number[] {
    return this.sentinels.map((sentinel) => sentinel.port)
  }

  async start (): Promise<this> {
    try {
      const master = await new RedisServer(['--repl-diskless-sync-delay', '0']).start()
      this.servers.push(master)
      const replica = await new RedisServer(['--repl-diskless-sync-delay', '0', '--replicaof', '127.0.0.1', String(master.port)]).start()
      this.servers.push(replica)
      await until('the replica is synced with the master', () => isSyncedReplicaOf(replica.port, master.port), probing(START_TIMEOUT_MS))
      for (let i = 0; i < 3; i++) {
        const port = await freePort()
        const config = join(this.dir, `sentinel-${port}.conf`)
        writeFileSync(config, [
          `port ${port}`,
          'bind 127.0.0.1',
          'protected-mode no',
          `dir ${this.dir}`,
          `sentinel monitor ${this.name} 127.0.0.1 ${master.port} 2`,
          // Short enough for a test, long enough that a busy machine does not look like a dead master.
          `sentinel down-after-milliseconds ${this.name} 2000`,
          `sentinel failover-timeout ${this.name} 10000`,
          `sentinel parallel-syncs ${this.name} 1`,
          ''
        ].join('\n'))
        this.sentinels.push(new RedisProcess(port, [config, '--sentinel']))
      }
      await Promise.all(this.sentinels.map((sentinel) => sentinel.waitForPing()))
      // Each Sentinel knows the replica and the two other Sentinels: a failover can elect and
      // its new configuration reaches every Sentinel.
      await until('every Sentinel knows the replica and the other Sentinels', async () => {
        const views = await Promise.all(this.sentinels.map((sentinel) => probe(sentinel.port, (client) =>
          client.call('SENTINEL', 'MASTER', this.name) as Promise<string[]>)))
        return views.every((view) => {
          if (view === undefined) return false
          const fields = new Map<string, string>()
          for (let i = 0; i + 1 < view.length; i += 2) fields.set(view[i]!, view[i + 1]!)
          return Number(fields.get('num-slaves')) >= 1 && Number(fields.get('num-other-sentinels')) === 2 &&
            fields.get('flags') === 'master'
        })
      }, probing(START_TIMEOUT_MS))
      return this
    } catch (err) {
      const logs = this.sentinels.map((sentinel) => `--- sentinel ${sentinel.port}:\n${sentinel.output.trim()}`).join('\n')
      await this.destroy()
      throw new Error(`Could not start Redis Sentinel (redis-server --sentinel): ${(err as Error).message}\n${logs}`)
    }
  }

  /** Port of the master as the Sentinels report it; fails unless they all agree. */
  async masterPort (): Promise<number> {
    const answers = await Promise.all(this.sentinels.map((sentinel) => probe(sentinel.port, (client) =>
      client.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', this.name) as Promise<[string, string]>)))
    const ports = new Set(answers.map((answer) => answer?.[1]))
    if (ports.size !== 1 || answers[0] === undefined) throw new Error(`the Sentinels disagree on the master: ${JSON.stringify(answers)}`)
    return Number(answers[0][1])
  }

  /** The server that is not the master now. */
  async replicaPort (): Promise<number> {
    const master = await this.masterPort()
    return this.servers.find((server) => server.port !== master)!.port
  }

  /** The server process listening on `port`. */
  server (port: number): RedisServer {
    const server = this.servers.find((candidate) => candidate.port === port)
    if (server === undefined) throw new Error(`no server of this topology listens on ${port}`)
    return server
  }

  /** An ioredis client that finds the master through the Sentinels; closed by `destroy()`. */
  client (options: RedisOptions = {}): Redis {
    const client = appClient({
      sentinels: this.sentinels.map((sentinel) => ({ host: '127.0.0.1', port: sentinel.port })),
      name: this.name,
      ...options
    })
    this.clients.push(client)
    return client
  }

  /** A direct client to one server, for the test's own looks; closed by `destroy()`. */
  directClient (port: number): Redis {
    const client = appClient({ host: '127.0.0.1', port, maxRetriesPerRequest: 1 })
    this.clients.push(client)
    return client
  }

  /**
   * `SENTINEL FAILOVER`: resolves once every Sentinel reports the new master AND the old master
   * is a connected, synced replica of it (Sentinel demotes a live old master only some seconds
   * after the switch; until then it keeps accepting writes).
   */
  async failover (): Promise<FailoverResult> {
    const from = await this.masterPort()
    const sentinel = this.sentinels[0]!
    await until('a Sentinel accepts SENTINEL FAILOVER', async () =>
      await probe(sentinel.port, (client) => client.call('SENTINEL', 'FAILOVER', this.name)) === 'OK', probing(20_000, 200))
    const startedAt = Date.now()
    const to = await until('every Sentinel reports the new master', async () => {
      const port = await this.masterPort().catch(() => from)
      return port !== from ? port : undefined
    }, probing(SETTLE_TIMEOUT_MS, 100))
    await until(`the old master (${from}) is a connected, synced replica of the new one (${to})`,
      () => isSyncedReplicaOf(from, to), probing(SETTLE_TIMEOUT_MS, 100))
    return { from, to, startedAt, settledAt: Date.now() }
  }

  async destroy (): Promise<void> {
    for (const client of this.clients.splice(0)) client.disconnect()
    await Promise.all(this.sentinels.splice(0).map((sentinel) => sentinel.kill()))
    await Promise.all(this.servers.splice(0).map((server) => server.destroy()))
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/* ---------------------------------------------------------------------------------------------
 * Cluster: three masters, one replica each, with replication that can be held back
 * ------------------------------------------------------------------------------------------- */

export interface ClusterNodeView {
  id: string
  port: number
  role: 'master' | 'replica'
  /** For a replica, the id of its master. */
  masterId: string | undefined
  /** Inclusive slot ranges served (masters). */
  slots: Array<[number, number]>
}

/** One node's CLUSTER NODES, parsed. */
function parseClusterNodes (text: string): ClusterNodeView[] {
  return text.split('\n').filter((line) => line.trim().length > 0).map((line) => {
    const [id, address, flags, masterId, , , , , ...slotFields] = line.trim().split(' ')
    const slots: Array<[number, number]> = []
    for (const field of slotFields) {
      if (field.startsWith('[')) continue // slots being migrated
      const [start, end] = field.split('-')
      slots.push([Number(start), Number(end ?? start)])
    }
    return {
      id: id!,
      port: Number(/:(\d+)@/.exec(address!)![1]),
      role: flags!.split(',').includes('master') ? 'master' : 'replica',
      masterId: masterId === '-' ? undefined : masterId,
      slots
    }
  })
}

export interface HeldBack {
  masterPort: number
  replicaPort: number
  /**
   * `CLUSTER FAILOVER TAKEOVER` on the held-back replica, then replication is allowed again so
   * that the old master resyncs as its replica. Resolves once every node agrees on the new roles,
   * the old master is a synced replica and the cluster is ok; throws if the write this helper
   * made while holding back survived (then nothing was lost and the scenario would prove nothing).
   */
  takeover (): Promise<void>
  /** Allows replication again without a takeover; resolves once the replica is synced. */
  release (): Promise<void>
}

const REPLICATION_USER = 'fac-replication'

/**
 * A private Redis Cluster of three masters with one replica each. Replicas authenticate to their
 * master as an ACL user used for nothing else (`masteruser`/`masterauth` on every node), which
 * is how `holdBack` stops replication of one shard: that user is switched off on the master and
 * its replication link is killed, so the replica cannot resync, while the master keeps
 * acknowledging writes. A `CLUSTER FAILOVER TAKEOVER` on the replica then loses those writes:
 * the old master turns into a replica of the new one and resyncs from it (a plain
 * `CLUSTER FAILOVER` would wait for the replica to catch up and lose nothing).
 */
export class ReplicatedCluster {
  private readonly nodes: RedisProcess[] = []
  private readonly clients: Array<Redis | Cluster> = []
  private readonly dir = mkdtempSync(join(tmpdir(), 'fastify-auth-cache-cluster-repl-'))
  private readonly replicationPassword = randomBytes(12).toString('hex')

  get ports (): number[] {
    return this.nodes.map((node) => node.port)
  }

  async start (): Promise<this> {
    try {
      for (let i = 0; i < 6; i++) {
        const port = await freePort()
        let busPort = await freePort()
        while (busPort === port) busPort = await freePort()
        this.nodes.push(new RedisProcess(port, [
          '--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'no',
          '--cluster-enabled', 'yes', '--cluster-config-file', join(this.dir, `nodes-${port}.conf`),
          '--cluster-node-timeout', '3000', '--cluster-port', String(busPort),
          // Only the test promotes replicas: a node slowed down by a busy machine must not be failed over.
          '--cluster-replica-no-failover', 'yes',
          '--repl-diskless-sync-delay', '0',
          '--user', REPLICATION_USER, 'on', `>${this.replicationPassword}`, '+@all', '~*', '&*',
          '--masteruser', REPLICATION_USER, '--masterauth', this.replicationPassword,
          '--save', '', '--appendonly', 'no', '--dir', this.dir
        ]))
      }
      await Promise.all(this.nodes.map((node) => node.waitForPing()))
      await createCluster(this.ports, 1, START_TIMEOUT_MS)
      await this.waitUntilSettled()
      return this
    } catch (err) {
      const logs = this.nodes.map((node) => `--- node ${node.port}:\n${node.output.trim().split('\n').slice(-20).join('\n')}`).join('\n')
      await this.destroy()
      throw new Error(`Could not start a Redis Cluster with replicas (are redis-server >= 7 and redis-cli on PATH?): ${(err as Error).message}\n${logs}`)
    }
  }

  /** The cluster as `port` sees it. */
  async view (port: number): Promise<ClusterNodeView[]> {
    const text = await probe(port, async (client) => String(await client.cluster('NODES')))
    if (text === undefined) throw new Error(`node ${port} did not answer CLUSTER NODES`)
    return parseClusterNodes(text)
  }

  /** Masters with their replica, as every node agrees. */
  async shards (): Promise<Array<{ masterPort: number, replicaPort: number, slots: Array<[number, number]> }>> {
    const view = await this.view(this.ports[0]!)
    return view.filter((node) => node.role === 'master' && node.slots.length > 0).map((master) => {
      const replica = view.find((node) => node.masterId === master.id)
      if (replica === undefined) throw new Error(`master ${master.port} has no replica`)
      return { masterPort: master.port, replicaPort: replica.port, slots: master.slots }
    })
  }

  /** Every node: cluster_state ok, the same three masters with one replica each, and every replica synced. */
  private async waitUntilSettled (): Promise<void> {
    await until('the cluster is ok on every node, with three synced replicas', async () => {
      const states = await Promise.all(this.ports.map((port) => probe(port, async (client) => String(await client.cluster('INFO')))))
      if (!states.every((state) => state?.includes('cluster_state:ok') === true)) return false
      const views = await Promise.all(this.ports.map((port) => this.view(port)))
      const summary = (view: ClusterNodeView[]): string => view
        .map((node) => `${node.port}:${node.role}:${node.masterId === undefined ? '' : view.find((m) => m.id === node.masterId)?.port}`)
        .sort().join(',')
      const first = summary(views[0]!)
      if (!views.every((view) => summary(view) === first)) return false
      const shards = await this.shards()
      if (shards.length !== 3) return false
      const synced = await Promise.all(shards.map((shard) => isSyncedReplicaOf(shard.replicaPort, shard.masterPort)))
      return synced.every(Boolean)
    }, probing(SETTLE_TIMEOUT_MS, 100))
  }

  /** The slot of `key`, as Redis computes it. */
  async slotOf (key: string): Promise<number> {
    const slot = await probe(this.ports[0]!, (client) => client.cluster('KEYSLOT', key))
    if (typeof slot !== 'number') throw new Error(`CLUSTER KEYSLOT ${key} failed`)
    return slot
  }

  /** The port of the master serving `key`'s slot. */
  async masterOf (key: string): Promise<number> {
    const slot = await this.slotOf(key)
    const shard = (await this.shards()).find((candidate) => candidate.slots.some(([start, end]) => slot >= start && slot <= end))
    if (shard === undefined) throw new Error(`no master serves slot ${slot}`)
    return shard.masterPort
  }

  /** An ioredis Cluster client, closed by `destroy()`. */
  cluster (options: ClusterOptions = {}): Cluster {
    const client = new Cluster(this.ports.map((port) => ({ host: '127.0.0.1', port })), options)
    client.on('error', () => {})
    this.clients.push(client)
    return client
  }

  /** A direct client to one node, closed by `destroy()`. */
  nodeClient (port: number): Redis {
    const client = appClient({ host: '127.0.0.1', port, maxRetriesPerRequest: 1 })
    this.clients.push(client)
    return client
  }

  /** Stops replication from `masterPort` to its replica; see the class comment. */
  async holdBack (masterPort: number): Promise<HeldBack> {
    const shard = (await this.shards()).find((candidate) => candidate.masterPort === masterPort)
    if (shard === undefined) throw new Error(`${masterPort} is not a master`)
    const { replicaPort, slots } = shard
    const master = this.nodeClient(masterPort)
    await master.call('ACL', 'SETUSER', REPLICATION_USER, 'off')
    await master.call('CLIENT', 'KILL', 'TYPE', 'replica')
    await until(`the replica ${replicaPort} lost its link to ${masterPort}`, async () => {
      const [replica, primary] = await Promise.all([replicationOf(replicaPort), replicationOf(masterPort)])
      return replica?.get('master_link_status') === 'down' && primary?.get('connected_slaves') === '0'
    }, probing(20_000))
    // The replica retries every second and must keep failing to authenticate.
    await sleep(1200)
    if ((await replicationOf(replicaPort))?.get('master_link_status') !== 'down') {
      throw new Error(`holding back replication failed: the replica ${replicaPort} reconnected to ${masterPort}`)
    }
    // A canary in this shard, acknowledged by the master while held back: the takeover must lose it.
    let canary = ''
    for (let i = 0; canary === ''; i++) {
      const candidate = `canary:${randomBytes(4).toString('hex')}:${i}`
      const slot = await this.slotOf(candidate)
      if (slots.some(([start, end]) => slot >= start && slot <= end)) canary = candidate
    }
    const acknowledged = await master.set(canary, 'written while replication was held back')
    if (acknowledged !== 'OK') throw new Error(`the canary write was not acknowledged: ${acknowledged}`)

    const allowReplication = async (): Promise<void> => {
      await until(`replication user switched back on at ${masterPort}`, async () =>
        await probe(masterPort, (client) => client.call('ACL', 'SETUSER', REPLICATION_USER, 'on')) === 'OK', probing(20_000))
    }

    return {
      masterPort,
      replicaPort,
      takeover: async () => {
        const replica = this.nodeClient(replicaPort)
        const reply = await replica.cluster('FAILOVER', 'TAKEOVER')
        if (reply !== 'OK') throw new Error(`CLUSTER FAILOVER TAKEOVER answered ${String(reply)}`)
        await until(`every node sees ${replicaPort} as the master of the shard, and ${masterPort} as its replica`, async () => {
          const views = await Promise.all(this.ports.map((port) => this.view(port)))
          return views.every((view) => {
            const promoted = view.find((node) => node.port === replicaPort)
            const demoted = view.find((node) => node.port === masterPort)
            return promoted?.role === 'master' && promoted.slots.length > 0 &&
              demoted?.role === 'replica' && demoted.masterId === promoted.id
          })
        }, probing(SETTLE_TIMEOUT_MS, 100))
        await allowReplication()
        await this.waitUntilSettled()
        const onNewMaster = await replica.get(canary)
        const demoted = this.nodeClient(masterPort)
        await demoted.call('READONLY')
        const onOldMaster = await demoted.get(canary)
        if (onNewMaster !== null || onOldMaster !== null) {
          throw new Error(`the takeover lost nothing: a write acknowledged by ${masterPort} while its replication was held back survived (new master: ${onNewMaster}, old master: ${onOldMaster})`)
        }
      },
      release: async () => {
        await allowReplication()
        await this.waitUntilSettled()
      }
    }
  }

  async destroy (): Promise<void> {
    for (const client of this.clients.splice(0)) client.disconnect()
    await Promise.all(this.nodes.splice(0).map((node) => node.kill()))
    rmSync(this.dir, { recursive: true, force: true })
  }
}
