/**
 * CONTRACT 15 on a Redis Cluster: given the URL of any one node, the command revokes across the
 * whole Cluster (keys on every master, one message that every node relays), as `delete`,
 * `deleteOwner` and `clear` do in a process. Two tiered apps on Cluster clients serve the keys
 * from memory; after the command exits 0, both refuse what it revoked.
 */
import assert from 'node:assert/strict'
import { after, before, describe, test, type TestContext } from 'node:test'
import Fastify, { type FastifyInstance } from 'fastify'
import { fastifyAuthCache, generateApiKey } from '../lib'
import { call } from './helpers/api-key-cache-contract'
import { runCli } from './helpers/cli-process'
import { KeySource, record } from './helpers/key-source'
import { startRedisCluster, type RedisCluster } from './helpers/redis-cluster'
import { until } from './helpers/wait'

const newKey = (): { key: string, hash: string } => generateApiKey({ prefix: 'clicluster' })

describe('the fastify-auth-cache command on a Redis Cluster', () => {
  let cluster: RedisCluster
  before(async () => {
    cluster = await startRedisCluster()
  })
  after(async () => {
    await cluster?.destroy()
  })

  async function tieredApp (t: TestContext, source: KeySource): Promise<FastifyInstance> {
    const client = cluster.cluster()
    const app = Fastify({ logger: false })
    t.after(async () => {
      await app.close()
      client.disconnect()
    })
    await app.register(fastifyAuthCache, { backend: 'tiered', strict: true, redis: client, redisTimeoutMs: 2000, apiKeys: { lookup: source.lookup } })
    app.get('/', async (request) => request.apiKey)
    await app.ready()
    return app
  }

  async function untilCached (app: FastifyInstance, source: KeySource, key: string, hash: string): Promise<void> {
    await until('the key is served from memory', async () => {
      const before = source.calls(hash)
      assert.equal((await call(app, key)).status, 200)
      return source.calls(hash) === before
    })
  }

  test('revoke --owner, revoke --hash and clear reach keys on every master and every app', { timeout: 120_000 }, async (t) => {
    const source = new KeySource()
    const apps = [await tieredApp(t, source), await tieredApp(t, source)]
    const owned = Array.from({ length: 12 }, newKey)
    const others = Array.from({ length: 6 }, newKey)
    for (const { hash } of owned) source.answer(hash, record('owned', { ownerId: 'cluster-owner' }))
    for (const { hash } of others) source.answer(hash, record('other', { ownerId: 'cluster-other' }))
    for (const app of apps) for (const { key, hash } of [...owned, ...others]) await untilCached(app, source, key, hash)
    // The owner's keys are spread over the masters: a command that saw one node only would miss some.
    const masters = await Promise.all(cluster.ports.map(async (port) => (await cluster.keysOn(port, 'apikey:*')).length))
    assert.ok(masters.every((count) => count > 0), `keys on every master: ${masters.join(', ')}`)
    const url = `redis://127.0.0.1:${cluster.ports[1]}`

    for (const { hash } of owned) source.answer(hash, null)
    const byOwner = await runCli(['revoke', '--owner', 'cluster-owner', '--redis', url])
    assert.equal(byOwner.code, 0, byOwner.stderr)
    for (const app of apps) {
      for (const { key } of owned) await until('the app refuses the owner\'s key', async () => (await call(app, key)).status === 401)
      for (const { key, hash } of others) {
        const before = source.calls(hash)
        assert.equal((await call(app, key)).status, 200)
        assert.equal(source.calls(hash), before, 'another owner\'s key is still served from memory')
      }
    }

    const [first, ...rest] = others as [{ key: string, hash: string }]
    source.answer(first.hash, null)
    const byHash = await runCli(['revoke', '--hash', first.hash, '--redis', url])
    assert.equal(byHash.code, 0, byHash.stderr)
    for (const app of apps) await until('the app refuses the revoked key', async () => (await call(app, first.key)).status === 401)

    for (const { hash } of rest) source.answer(hash, null)
    const cleared = await runCli(['clear', '--redis', url])
    assert.equal(cleared.code, 0, cleared.stderr)
    // Before any request could cache the keys again (as unknown keys, now).
    const left = await Promise.all(cluster.ports.map((port) => cluster.keysOn(port, 'apikey:*')))
    assert.deepEqual(left.flat(), [], 'clear removed every key on every master')
    for (const app of apps) for (const { key } of rest) await until('the app refuses a cleared key', async () => (await call(app, key)).status === 401)
  })
})
