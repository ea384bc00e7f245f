import assert from 'node:assert/strict'
import { after, before, describe, test, type TestContext } from 'node:test'
import fastifyRedis from '@fastify/redis'
import Fastify, { type FastifyInstance } from 'fastify'
import Redis, { Cluster } from 'ioredis'
import Valkey, { Cluster as ValkeyCluster } from 'iovalkey'
import { createClient, createClientPool, createCluster, createSentinel } from 'redis'
import { fastifyAuthCache, hashApiKey, type BackendName } from '../lib'
import { adaptRedis } from '../lib/redis/adapt'
import { DELETE_RECORD } from '../lib/redis/scripts'
import {
  apiKeyCacheContract, call, newKey, newPrefix,
  type ContractRedis, type InspectRedis
} from './helpers/api-key-cache-contract'
import { CapturedLog, LEVEL } from './helpers/captured-log'
import { credentialStoreContract } from './helpers/credentials-contract'
import { failIfHeldOpen } from './helpers/fail-if-held-open'
import { startRedisCluster, type RedisCluster } from './helpers/redis-cluster'
import { KeySource, record } from './helpers/key-source'
import { freePort, startRedis, usePrivateRedis } from './helpers/redis-server'
import { until } from './helpers/wait'

/**
 * CONTRACT section 11: sections 2-10 hold on every supported client library. The API-key and
 * credential contracts run on iovalkey and node-redis clients (ioredis has its own files), each
 * app on a fresh client of the library, while the test looks at Redis through ioredis. One
 * private redis-server and one private 3-master Cluster serve the whole file.
 */

const HOST = '127.0.0.1'
// Generous for a loaded machine: the 10 ms p99 of a healthy Redis is the benchmark's to measure.
const REVOCATION_BOUND_MS = 1000
// CONTRACT section 4: the bound around dropped connections.
const DISRUPTED_BOUND_MS = 2000
const SUBSCRIBER_NAME = 'fastify-auth-cache:invalidations'
const options = { timeout: 30_000 }

const single = usePrivateRedis()
let cluster: RedisCluster
let clusterInspect: Cluster

before(async () => {
  cluster = await startRedisCluster()
  clusterInspect = cluster.cluster()
})

after(async () => {
  await cluster?.destroy()
  failIfHeldOpen('clients.contract.test.ts')
})

type Client = ContractRedis & Record<string, any>

interface ClientSettings {
  keyPrefix?: string
  username?: string
  password?: string
}

/** ioredis-style Cluster options: the prefix on the Cluster, the credentials for every node. */
function ioredisClusterSettings ({ keyPrefix, ...login }: ClientSettings = {}): Record<string, unknown> {
  return { ...(keyPrefix === undefined ? {} : { keyPrefix }), redisOptions: { maxRetriesPerRequest: 1, ...login } }
}

/** node-redis createCluster options: the prefix on the Cluster, the credentials for every node. */
function nodeRedisClusterSettings ({ keyPrefix, ...login }: ClientSettings = {}): Record<string, unknown> {
  return { ...(keyPrefix === undefined ? {} : { keyPrefix }), defaults: login }
}

interface Library {
  label: string
  onCluster: boolean
  /** Whether the API-key and credential contracts run here (ioredis has them in files of its own). */
  contracts: boolean
  /** A fresh client, ready to use, as a user would pass it, with the library's own options for these settings. */
  create (settings?: ClientSettings): Promise<Client>
  /** Closes a client the test made. */
  close (client: Client): Promise<void>
}

function silenced<T extends { on (event: string, listener: () => void): unknown }> (client: T): T {
  client.on('error', () => {})
  return client
}

const clusterNodes = (): Array<{ host: string, port: number }> => cluster.ports.map((port) => ({ host: HOST, port }))

/** Resolves when `promise` settles or after `ms`, whichever comes first. */
async function atMost (promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  await Promise.race([promise.catch(() => {}), new Promise((resolve) => { timer = setTimeout(resolve, ms) })])
  clearTimeout(timer)
}

// A clean close waits for pending commands, which a client that cannot reconnect never answers.
const CLOSE_WAIT_MS = 2000

async function quit (client: Client): Promise<void> {
  await atMost(client.quit(), CLOSE_WAIT_MS)
  client.disconnect()
}

type Node = ReturnType<typeof clusterNodes>[number]
type Emitting = Client & { on (event: string, listener: () => void): unknown }

/**
 * iovalkey is a fork of ioredis and takes the same options: for either, a client of the private
 * redis-server and a Cluster client of the private Cluster, closed alike.
 */
function ioredisFamily (name: string, contracts: boolean, newClient: (options: Record<string, unknown>) => Emitting,
  newCluster: (nodes: Node[], options: Record<string, unknown>) => Emitting): [Library, Library] {
  return [{
    label: `${name} Redis`,
    onCluster: false,
    contracts,
    create: async (settings) => silenced(newClient({ host: HOST, port: single.server.port, maxRetriesPerRequest: 3, ...settings })),
    close: quit
  }, {
    label: `${name} Cluster`,
    onCluster: true,
    contracts,
    create: async (settings) => silenced(newCluster(clusterNodes(), ioredisClusterSettings(settings))),
    close: quit
  }]
}

const [ioredis, ioredisCluster] = ioredisFamily('ioredis', false,
  (options) => new Redis(options), (nodes, options) => new Cluster(nodes, options))
const [iovalkey, iovalkeyCluster] = ioredisFamily('iovalkey', true,
  (options) => new Valkey(options), (nodes, options) => new ValkeyCluster(nodes, options))

async function closeNodeRedis (client: Client): Promise<void> {
  await atMost(client.close(), CLOSE_WAIT_MS)
  client.destroy()
}

function nodeRedis (RESP: 2 | 3): Library {
  return {
    label: `node-redis createClient RESP${RESP}`,
    onCluster: false,
    contracts: true,
    // node-redis clients are connected by their user before they are handed to the plugin.
    create: async (settings) => await silenced(createClient({ socket: { host: HOST, port: single.server.port }, RESP, ...settings })).connect() as Client,
    close: closeNodeRedis
  }
}

const nodeRedisCluster: Library = {
  label: 'node-redis createCluster',
  onCluster: true,
  contracts: true,
  create: async (settings) => await silenced(createCluster({ rootNodes: clusterNodes().map((socket) => ({ socket })), ...nodeRedisClusterSettings(settings) })).connect() as Client,
  close: closeNodeRedis
}

const LIBRARIES = [iovalkey, iovalkeyCluster, nodeRedis(2), nodeRedis(3), nodeRedisCluster, ioredis, ioredisCluster]

/** One ioredis connection per node the library's clients talk to, for CLIENT LIST / KILL / SCRIPT. */
function adminNodes (library: Library): InspectRedis[] {
  return library.onCluster ? cluster.ports.map((port) => cluster.nodeClient(port)) : [single.admin]
}

function inspectOf (library: Library): InspectRedis {
  return library.onCluster ? clusterInspect : single.admin
}

/**
 * Ids of the connections whose name holds `name`, on every node; with `subscribed`, only those
 * in pub/sub mode. (An ioredis or iovalkey Cluster copy gives `name` to its command connections
 * too, and names its subscriber `ioredis-cluster(subscriber):<name>`.)
 */
async function connectionsNamed (nodes: InspectRedis[], name: string, subscribed = false): Promise<Array<[InspectRedis, string]>> {
  const found: Array<[InspectRedis, string]> = []
  for (const node of nodes) {
    const list = String(await node.call('CLIENT', 'LIST'))
    for (const line of list.trim().split('\n')) {
      const fields = new Map(line.split(' ').map((field) => field.split('=', 2) as [string, string]))
      if (fields.get('name')?.includes(name) !== true || (subscribed && !fields.get('flags')!.includes('P'))) continue
      found.push([node, fields.get('id')!])
    }
  }
  return found
}

interface LibraryApp {
  app: FastifyInstance
  source: KeySource
  client: Client
  log: CapturedLog
}

/** A ready app on a fresh client of `library`; the app is closed after the test, then its client. */
async function libraryApp (t: TestContext, library: Library, backend: BackendName, keyPrefix: string,
  settings: ClientSettings = {}, credentialsPrefix?: string): Promise<LibraryApp> {
  const client = await library.create(settings)
  const source = new KeySource()
  const log = new CapturedLog()
  const app = Fastify({ logger: { level: 'info', stream: log.stream } })
  t.after(async () => {
    await app.close()
    await library.close(client)
  })
  await app.register(fastifyAuthCache, {
    backend,
    strict: true,
    redis: client,
    redisTimeoutMs: 2000,
    apiKeys: { keyPrefix, lookup: source.lookup },
    ...(credentialsPrefix === undefined ? {} : { credentials: { keyPrefix: credentialsPrefix } })
  })
  app.get('/', async (request) => request.apiKey)
  await app.ready()
  return { app, source, client, log }
}

/**
 * Whether the app answers from its process memory: a record set through the cache keeps being
 * served after its Redis copy was changed behind the plugin's back.
 */
async function servesFromMemory (app: FastifyInstance, inspect: InspectRedis, keyPrefix: string): Promise<boolean> {
  const probe = hashApiKey(newKey())
  await app.apiKeyCache.set(probe, record('probe-local'), 60)
  await inspect.set(keyPrefix + probe, JSON.stringify(record('probe-redis')), 'PX', 60_000)
  const served = (await app.apiKeyCache.get(probe))?.id === 'probe-local'
  await inspect.del(keyPrefix + probe)
  return served
}

/** Milliseconds until `key` is refused, asking back to back (an event-loop turn apart); fails past `boundMs`. */
async function msUntilRefused (app: FastifyInstance, key: string, boundMs: number): Promise<number> {
  const startedAt = performance.now()
  while ((await call(app, key)).status !== 401) {
    if (performance.now() - startedAt > boundMs) assert.fail(`the key was still accepted ${boundMs} ms after its revocation`)
    await new Promise<void>((resolve) => setImmediate(resolve))
  }
  return performance.now() - startedAt
}

/** Caches `key` in the serving app until a request is answered without lookup. */
async function cached (serving: LibraryApp, key: string): Promise<void> {
  await until('the key is cached', async () => {
    const before = serving.source.calls(hashApiKey(key))
    assert.equal((await call(serving.app, key)).status, 200)
    return serving.source.calls(hashApiKey(key)) === before
  })
}

/**
 * A new key, cached in the serving app and then made inactive in its source only: until the
 * serving app hears of a revocation (or loses its memory), it still lets the key through.
 */
async function cachedThenDeactivated (serving: LibraryApp, id: string): Promise<string> {
  const key = newKey()
  serving.source.answer(hashApiKey(key), record(id))
  await cached(serving, key)
  serving.source.answer(hashApiKey(key), record(id, { active: false }))
  return key
}

/** Everything this file checks on one library. */
function libraryTests (library: Library): void {
  describe(library.label, () => {
    const inspect = (): InspectRedis => inspectOf(library)
    const createClient = (): Promise<Client> => library.create()
    /** Two tiered apps on `keyPrefix`, once the serving one answers from its process memory. */
    const tieredPair = async (t: TestContext, keyPrefix: string): Promise<{ revoking: LibraryApp, serving: LibraryApp }> => {
      const revoking = await libraryApp(t, library, 'tiered', keyPrefix)
      const serving = await libraryApp(t, library, 'tiered', keyPrefix)
      await until('the serving app uses its process memory', () => servesFromMemory(serving.app, inspect(), keyPrefix))
      return { revoking, serving }
    }

    if (library.contracts) {
      apiKeyCacheContract(`redis on ${library.label}`, { backend: 'redis', createClient, inspect })
      apiKeyCacheContract(`tiered on ${library.label}`, { backend: 'tiered', createClient, inspect })
      credentialStoreContract(`redis backend on ${library.label}`, { backend: 'redis', createClient, inspect })
    }

    test('a delete or clear in one tiered app is refused by another app on its own client within a bound', options, async (t) => {
      const keyPrefix = newPrefix('tiered-bus')
      const { revoking, serving } = await tieredPair(t, keyPrefix)
      const elapsed: number[] = []

      for (let round = 0; round < 10; round++) {
        const viaClear = round === 9
        const key = newKey()
        const keyHash = hashApiKey(key)
        serving.source.answer(keyHash, record(`round-${round}`))
        await cached(serving, key)
        const calls = serving.source.calls(keyHash)

        serving.source.answer(keyHash, record(`round-${round}`, { active: false }))
        if (viaClear) await revoking.app.apiKeyCache.clear()
        else await revoking.app.apiKeyCache.delete(keyHash)
        // Nothing but the invalidation can make the serving app forget a record cached for 60 s.
        elapsed.push(await msUntilRefused(serving.app, key, REVOCATION_BOUND_MS))
        assert.equal(serving.source.calls(keyHash), calls + 1)
      }
      elapsed.sort((a, b) => a - b)
      t.diagnostic(`revocation refused by the other app after (ms, sorted): ${elapsed.map((ms) => ms.toFixed(1)).join(', ')}`)
      assert.ok(serving.app.apiKeyCache.stats().invalidations >= 10)
      assert.equal(serving.app.apiKeyCache.stats().backendErrors, 0)
      assert.equal(revoking.app.apiKeyCache.stats().backendErrors, 0)
    })

    test('app.close() closes the connection the plugin made, never the user\'s client', options, async (t) => {
      const keyPrefix = newPrefix('close')
      const nodes = adminNodes(library)
      const client = await library.create()
      t.after(() => library.close(client))
      await until('the connections of earlier tests\' apps are gone', async () => (await connectionsNamed(nodes, SUBSCRIBER_NAME)).length === 0)

      const app = Fastify({ logger: false })
      await app.register(fastifyAuthCache, { backend: 'tiered', strict: true, redis: client, apiKeys: { keyPrefix, lookup: () => null } })
      await app.ready()
      await until('the plugin subscribed on a connection of its own', async () =>
        (await connectionsNamed(nodes, SUBSCRIBER_NAME, true)).length === 1)
      await app.close()
      await until('the plugin\'s connections are closed', async () =>
        (await connectionsNamed(nodes, SUBSCRIBER_NAME)).length === 0, DISRUPTED_BOUND_MS)

      // The user's client is untouched: its own API works, and so does another app on it.
      const key = `${keyPrefix}user-key`
      await client.set(key, 'still here')
      assert.equal(await client.get(key), 'still here')
      const again = Fastify({ logger: false })
      t.after(() => again.close())
      await again.register(fastifyAuthCache, { backend: 'redis', strict: true, redis: client, apiKeys: { keyPrefix, lookup: () => null } })
      await again.ready()
      const keyHash = hashApiKey(newKey())
      await again.apiKeyCache.set(keyHash, record('after-close'), 60)
      assert.equal((await again.apiKeyCache.get(keyHash))?.id, 'after-close')
      assert.equal(await inspect().exists(keyPrefix + keyHash), 1)
    })

    test('a killed subscriber connection flushes process memory, comes back and hears revocations again', options, async (t) => {
      const keyPrefix = newPrefix('resubscribe')
      const nodes = adminNodes(library)
      const { revoking, serving } = await tieredPair(t, keyPrefix)

      // A revocation whose message never arrives: only the loss of the connection can flush it.
      const stale = await cachedThenDeactivated(serving, 'stale')
      assert.equal(await inspect().del(keyPrefix + hashApiKey(stale)), 1)
      assert.equal((await call(serving.app, stale)).status, 200, 'the silently revoked key is still in process memory')

      const subscribers = await connectionsNamed(nodes, SUBSCRIBER_NAME, true)
      assert.equal(subscribers.length, 2, 'one subscriber per app')
      for (const [node, id] of subscribers) await node.call('CLIENT', 'KILL', 'ID', id)

      await until('both subscribers are back', async () => {
        const now = await connectionsNamed(nodes, SUBSCRIBER_NAME, true)
        // Ids are per node: a new connection elsewhere may reuse a killed one's number.
        return now.length === 2 && now.every(([node, id]) => !subscribers.some(([killedOn, killed]) => killedOn === node && killed === id))
      }, DISRUPTED_BOUND_MS * 5)
      await until('the serving app uses its process memory again', () => servesFromMemory(serving.app, inspect(), keyPrefix))
      assert.equal((await call(serving.app, stale)).status, 401, 'the stale entry did not survive the lost connection')

      const key = await cachedThenDeactivated(serving, 'after')
      await revoking.app.apiKeyCache.delete(hashApiKey(key))
      await until('the serving app refuses the revoked key', async () => (await call(serving.app, key)).status === 401, REVOCATION_BOUND_MS)
    })

    if (!library.onCluster) {
      test('after a Redis restart both apps come back to process memory, flushed, and hear revocations again', options, async (t) => {
        const keyPrefix = newPrefix('restart')
        const { revoking, serving } = await tieredPair(t, keyPrefix)
        const stale = await cachedThenDeactivated(serving, 'stale')

        // Down for a while (connections refused), then back empty on the same port.
        await single.server.stop()
        await new Promise((resolve) => setTimeout(resolve, 300))
        await single.server.start()
        const restartedAt = performance.now()
        await until('the serving app uses its process memory again', () => servesFromMemory(serving.app, inspect(), keyPrefix))
        t.diagnostic(`process memory in use again ${(performance.now() - restartedAt).toFixed(0)} ms after the restart`)
        assert.equal((await call(serving.app, stale)).status, 401, 'nothing cached before the outage survived it')

        const key = await cachedThenDeactivated(serving, 'after')
        await revoking.app.apiKeyCache.delete(hashApiKey(key))
        await msUntilRefused(serving.app, key, REVOCATION_BOUND_MS)
      })
    }

    test('the client\'s own keyPrefix comes first in every key, as in its own commands', options, async (t) => {
      const clientPrefix = `${newPrefix('tenant')}`
      const keyPrefix = newPrefix('prefixed')
      const a = await libraryApp(t, library, 'tiered', keyPrefix, { keyPrefix: clientPrefix })
      const b = await libraryApp(t, library, 'tiered', keyPrefix, { keyPrefix: clientPrefix })
      const stored = (key: string): string => clientPrefix + key

      const set = hashApiKey(newKey())
      await a.app.apiKeyCache.set(set, record('prefixed'), 60)
      assert.equal(await inspect().exists(stored(keyPrefix + set)), 1)
      // The library's own commands see the same key, their prefix added as the plugin's is.
      assert.equal(JSON.parse(await a.client.get(keyPrefix + set)).id, 'prefixed')
      assert.equal((await b.app.apiKeyCache.get(set))?.id, 'prefixed')

      // A fill lands there too, and a delete in one app reaches the other on the prefixed channel.
      const key = newKey()
      b.source.answer(hashApiKey(key), record('filled'))
      await until('b serves from its process memory', () => servesFromMemory(b.app, inspect(), stored(keyPrefix)))
      await cached(b, key)
      assert.equal(await inspect().exists(stored(keyPrefix + hashApiKey(key))), 1)
      b.source.answer(hashApiKey(key), record('filled', { active: false }))
      await a.app.apiKeyCache.delete(hashApiKey(key))
      await msUntilRefused(b.app, key, REVOCATION_BOUND_MS)

      // clear() finds the prefixed keys with SCAN and deletes them as stored; the same names
      // without the client's prefix are someone else's.
      const foreign = keyPrefix + hashApiKey(newKey())
      await inspect().set(foreign, JSON.stringify(record('foreign')))
      t.after(() => inspect().del(foreign))
      await a.app.apiKeyCache.clear()
      assert.equal(await inspect().exists(stored(keyPrefix + set)), 0)
      assert.equal(await inspect().exists(foreign), 1)
      assert.equal(await b.app.apiKeyCache.get(set), undefined)

      // Credentials: value and lock under the client's prefix (in one slot on a Cluster), the
      // lock exclusive across the two apps.
      const scope = 'counter'
      const results = await Promise.all(Array.from({ length: 10 }, (_, i) =>
        (i % 2 === 0 ? a : b).app.credentialStore.scope(scope).update(async (current) => {
          await new Promise((resolve) => setTimeout(resolve, 2))
          return ((current as number | undefined) ?? 0) + 1
        }, { waitMs: 20_000 })))
      assert.deepEqual([...results].sort((x, y) => (x as number) - (y as number)), Array.from({ length: 10 }, (_, i) => i + 1))
      assert.equal(await inspect().get(stored(`credentials:${scope}`)), '10')
      assert.equal(await a.client.get(`credentials:${scope}`), '10')
    })

    test('when the user\'s client reconnects, recent revocations are made again', options, async (t) => {
      const keyPrefix = newPrefix('replay')
      const nodes = adminNodes(library)
      const { app, source, log } = await libraryApp(t, library, 'redis', keyPrefix)
      const key = newKey()
      source.answer(hashApiKey(key), record('replayed'))
      assert.equal((await call(app, key)).status, 200)
      await app.apiKeyCache.delete(hashApiKey(key))

      // Every ordinary connection but the test's own: the app's client loses its connection(s).
      // (An ioredis or iovalkey Cluster connects a lost node again when it next needs it: the
      // requests below are that need.)
      for (const node of nodes) await node.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
      await until('the revocation is made again', async () => {
        // Keys of every slot, so that every node is needed.
        await call(app, newKey())
        return log.at(LEVEL.info).some((line) => line.msg?.includes('making recent revocations again') === true)
      }, DISRUPTED_BOUND_MS * 5)
      // The client works again, through the plugin: the refusal is cached again (a replay still
      // under way may remove it once more; the next request caches it again).
      source.answer(hashApiKey(key), record('replayed', { active: false }))
      await until('the app caches through its reconnected client', async () =>
        (await call(app, key)).status === 401 && (await inspectOf(library).exists(keyPrefix + hashApiKey(key))) === 1)
    })
  })
}

// The libraries on the single server run one after the other (some tests kill its connections),
// and so do those on the Cluster; the two groups, on separate Redis servers, run side by side.
describe('every library', { concurrency: true }, () => {
  // A suite's concurrency is inherited: each group sets its own back to one test at a time.
  describe('on one redis-server', { concurrency: 1 }, () => { for (const library of LIBRARIES.filter((one) => !one.onCluster)) libraryTests(library) })
  describe('on a Redis Cluster', { concurrency: 1 }, () => { for (const library of LIBRARIES.filter((one) => one.onCluster)) libraryTests(library) })
})

describe('which clients are accepted, and how', () => {
  test('each library\'s clients are recognised; a node-redis pool or Sentinel and other objects are refused by name', options, async (t) => {
    for (const library of LIBRARIES) {
      const client = await library.create()
      t.after(() => library.close(client))
      assert.notEqual(adaptRedis(client), undefined, library.label)
    }
    const pool = createClientPool({ socket: { host: HOST, port: single.server.port } })
    const sentinel = createSentinel({ name: 'mymaster', sentinelRootNodes: [{ host: HOST, port: single.server.port }] })
    for (const [label, unsupported] of [['a node-redis pool', pool], ['a node-redis Sentinel', sentinel], ['a plain object', { get () {} }]] as const) {
      assert.equal(adaptRedis(unsupported), undefined, label)
      const app = Fastify({ logger: false })
      await assert.rejects(async () => {
        await app.register(fastifyAuthCache, { backend: 'redis', redis: unsupported, apiKeys: { hook: false } })
        await app.ready()
      }, (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION', label)
        assert.match(err.message, /ioredis or iovalkey .* node-redis createClient or createCluster/)
        return true
      })
    }
  })

  test('fastify.redis (as @fastify/redis decorates it, namespaced or not) may hold an iovalkey or node-redis client', options, async (t) => {
    for (const library of [iovalkey, nodeRedis(3), nodeRedisCluster]) {
      for (const namespace of [undefined, 'cache']) {
        const client = await library.create()
        const app = Fastify({ logger: false })
        t.after(async () => {
          await app.close()
          await library.close(client)
        })
        if (library === iovalkey) {
          // @fastify/redis itself waits for an ioredis-style `status`; node-redis has none (see the README).
          await app.register(fastifyRedis, { client: client as never, ...(namespace === undefined ? {} : { namespace }) })
        } else {
          app.decorate('redis', (namespace === undefined ? client : { [namespace]: client }) as never)
        }
        await app.register(fastifyAuthCache, { backend: 'tiered', strict: true, ...(namespace === undefined ? {} : { redis: namespace }), apiKeys: { hook: false } })
        await app.ready()
        assert.equal(app.apiKeyCache.backend, 'tiered', `${library.label}, namespace ${String(namespace)}`)
        const keyHash = hashApiKey(newKey())
        await app.apiKeyCache.set(keyHash, record('decorated'), 60)
        assert.equal(await inspectOf(library).exists(`apikey:${keyHash}`), 1)
        await app.apiKeyCache.delete(keyHash)
      }
    }
  })
})

describe('revocations acknowledged by a replica (WAIT on the connection that ran the script)', () => {
  const script = DELETE_RECORD
  const noAnnouncement = ['', '', '']
  // The delete script answers the revision it set: 0, as it counts none on a single key.
  const DELETED = 0

  test('on a single node with one replica, after a SCRIPT FLUSH too', options, async (t) => {
    // Redis waits 5 s for more replicas before a first full sync by default.
    await single.admin.config('SET', 'repl-diskless-sync-delay', '0')
    const replica = await startRedis(['--replicaof', HOST, String(single.server.port)])
    t.after(() => replica.destroy())
    const replicaAdmin = replica.client()
    t.after(() => replicaAdmin.disconnect())
    await until('the replica is in sync', async () => (await replicaAdmin.info('replication')).includes('master_link_status:up'))

    for (const library of LIBRARIES.filter((one) => !one.onCluster)) {
      const client = await library.create()
      t.after(() => library.close(client))
      const adapter = adaptRedis(client)!
      // A plain connection cannot tell whether there are replicas: the plugin waits for none.
      assert.equal(await adapter.hasReplica('any'), false, library.label)
      for (const flush of [false, true]) {
        if (flush) await single.admin.script('FLUSH')
        const key = `replicated:${library.label}:${String(flush)}`
        await single.admin.set(key, 'x')
        await until('the replica has the key', async () => (await replicaAdmin.exists(key)) === 1)
        assert.deepEqual(await adapter.runReplicated(script, [key], noAnnouncement, 1, 5000), [DELETED, 1], `${library.label}, flushed: ${String(flush)}`)
        assert.equal(await replicaAdmin.exists(key), 0, 'the replica has the delete when WAIT answers')
      }
    }
    // Asking for more replicas than there are: WAIT gives up after its timeout with what it has.
    const adapter = adaptRedis(await nodeRedis(2).create().then((client) => { t.after(() => closeNodeRedis(client)); return client }))!
    const startedAt = performance.now()
    assert.deepEqual(await adapter.runReplicated(script, ['replicated:none'], noAnnouncement, 2, 200), [DELETED, 1])
    assert.ok(performance.now() - startedAt >= 150, 'WAIT waited for the second replica')
  })

  test('on a Cluster, on the master of the key, which alone has a replica', options, async (t) => {
    // A replica joins the master that serves the first key; WAIT sent anywhere else would count 0.
    const key = 'replicated:{cluster}'
    const slot = Number(await clusterInspect.cluster('KEYSLOT', key))
    const ranges = await clusterInspect.cluster('SLOTS') as unknown as Array<[number, number, [string, number, string]]>
    const [, , [, masterPort, masterId]] = ranges.find(([from, to]) => slot >= from && slot <= to)!
    const busPort = await freePort()
    const replica = await startRedis(['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000', '--cluster-port', String(busPort)])
    t.after(() => replica.destroy())
    const replicaAdmin = replica.client()
    t.after(() => replicaAdmin.disconnect())
    await cluster.nodeClient(masterPort).config('SET', 'repl-diskless-sync-delay', '0')
    await replicaAdmin.cluster('MEET', HOST, masterPort, String(await busPortOf(masterPort)))
    // Refused until the replica has heard of the master through the cluster bus.
    await until('the replica is told to replicate the master', async () =>
      await replicaAdmin.cluster('REPLICATE', masterId).then(() => true, () => false))
    await until('the replica is in sync', async () => (await replicaAdmin.info('replication')).includes('master_link_status:up'))

    for (const library of LIBRARIES.filter((one) => one.onCluster)) {
      const client = await library.create()
      t.after(() => library.close(client))
      const adapter = adaptRedis(client)!
      for (const flush of [false, true]) {
        if (flush) for (const port of cluster.ports) await cluster.nodeClient(port).script('FLUSH')
        await clusterInspect.set(key, 'x')
        assert.deepEqual(await adapter.runReplicated(script, [key], noAnnouncement, 1, 5000), [DELETED, 1], `${library.label}, flushed: ${String(flush)}`)
        assert.equal(await clusterInspect.exists(key), 0)
      }
      // Another master has no replica: WAIT there answers 0 after its timeout.
      const elsewhere = await keyOnAnotherMaster(masterPort)
      await clusterInspect.set(elsewhere, 'x')
      assert.deepEqual(await adapter.runReplicated(script, [elsewhere], noAnnouncement, 1, 100), [DELETED, 0], library.label)
      // One master of three has a replica: revocations wait for one on that master only.
      await until(`${library.label}: the node table lists the replica`, () => adapter.hasReplica(key))
      assert.equal(await adapter.hasReplica(elsewhere), false, `${library.label}: a key of a master without a replica`)
    }
  })

  /** The cluster bus port of a master, from its own CLUSTER NODES line ("ip:port@busport ... myself"). */
  async function busPortOf (port: number): Promise<number> {
    const nodes = String(await cluster.nodeClient(port).cluster('NODES'))
    const mine = nodes.split('\n').find((line) => line.includes('myself'))!
    return Number(/@(\d+)/.exec(mine)![1])
  }

  async function keyOnAnotherMaster (port: number): Promise<string> {
    const ranges = await clusterInspect.cluster('SLOTS') as unknown as Array<[number, number, [string, number]]>
    for (let i = 0; ; i++) {
      const key = `replicated:other-${i}`
      const slot = Number(await clusterInspect.cluster('KEYSLOT', key))
      if (ranges.find(([from, to]) => slot >= from && slot <= to)![2][1] !== port) return key
    }
  }
})

describe('a password-protected ACL user granted only the plugin\'s keys and channels', () => {
  const user = 'fastify-auth-cache-user'
  const password = 'acl-secret'
  const login = { username: user, password }

  test('works on every library, its credentials on every connection the plugin makes itself', options, async (t) => {
    const admins: InspectRedis[] = [single.admin, ...cluster.ports.map((port) => cluster.nodeClient(port))]
    // CONTRACT section 4a: the plugin's prefixes and channels, ordinary commands, +info for ioredis' ready check.
    for (const admin of admins) {
      await admin.call('ACL', 'SETUSER', user, 'reset', 'on', `>${password}`, '~acl-apikey:*', '~acl-credentials:*',
        '&fastify-auth-cache:*', '+@all', '-@dangerous', '+info')
      // A connection that does not log in as the user is refused (connections open now stay logged in).
      await admin.config('SET', 'requirepass', 'not-the-users')
    }
    t.after(async () => {
      for (const admin of admins) {
        await admin.config('SET', 'requirepass', '')
        await admin.call('ACL', 'DELUSER', user)
      }
    })
    const singleInspect = single.server.client(login)
    const clusterInspect = cluster.cluster({ redisOptions: login })
    t.after(() => {
      singleInspect.disconnect()
      clusterInspect.disconnect()
    })

    for (const library of LIBRARIES) {
      const inspect = library.onCluster ? clusterInspect : singleInspect
      const revoking = await libraryApp(t, library, 'tiered', 'acl-apikey:', login, 'acl-credentials:')
      const serving = await libraryApp(t, library, 'tiered', 'acl-apikey:', login, 'acl-credentials:')
      // Only a subscriber that logged in and may hear the channel lets the app use its memory.
      await until(`${library.label}: the serving app uses its process memory`, () => servesFromMemory(serving.app, inspect, 'acl-apikey:'))
      const key = await cachedThenDeactivated(serving, 'acl')
      // A replica another test of this file added, then stopped, stays in the cluster's node table
      // until the cluster marks it failed: meanwhile revocations on its master reject as not
      // replicated, and a caller retries them, as the contract expects.
      await until(`${library.label}: the revocation resolves`, () => revoking.app.apiKeyCache.delete(hashApiKey(key)).then(
        () => true,
        (err: { code?: string }) => { if (err.code === 'FST_AUTH_CACHE_NOT_REPLICATED') return false; throw err }), 20_000)
      await msUntilRefused(serving.app, key, REVOCATION_BOUND_MS)
      await revoking.app.apiKeyCache.clear()

      const scope = `acl-${library.label.replace(/\W+/g, '-')}`
      await Promise.all([revoking, serving, revoking, serving].map(({ app }) =>
        app.credentialStore.scope(scope).update((current) => ((current as number | undefined) ?? 0) + 1)))
      assert.equal(await inspect.get(`acl-credentials:${scope}`), '4', library.label)
      assert.equal(serving.app.apiKeyCache.stats().backendErrors + revoking.app.apiKeyCache.stats().backendErrors, 0, library.label)
      // Closed now, before the user is deleted (which drops its connections) at the end.
      for (const { app, client } of [revoking, serving]) {
        await app.close()
        await library.close(client)
      }
    }
  })
})
