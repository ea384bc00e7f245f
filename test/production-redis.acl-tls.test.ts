/**
 * CONTRACT 4a, "A least-privilege ACL user" and "TLS, passwords and ACL users on every
 * connection, including any the plugin makes itself".
 *
 * - ACL: a user granted only `~apikey:* ~credentials:* &fastify-auth-cache:* +@all -@dangerous
 *   +info`. Every feature works (the hook on hits, misses and unknown keys; delete, clear,
 *   set/get; the credential store's load, save, update and clear), no Redis call fails on the
 *   request path, and `ACL LOG` records nothing: the plugin touched no other key or channel and
 *   sent no command outside the grant.
 * - requirepass, and TLS (with a password too): a tiered app, whose subscriber connection is a
 *   `duplicate()` of the user's client, serves hits from process memory and refuses a key that
 *   another app deleted within the healthy bound, which it can only do if that connection
 *   authenticated (and spoke TLS) and hears the invalidation channel.
 */
import assert from 'node:assert/strict'
import { before, describe, test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type Redis from 'ioredis'
import type { RedisOptions } from 'ioredis'
import { requestPathCommandCalls } from './helpers/command-stats'
import { usePrivateRedis } from './helpers/redis-server'
import {
  aclLog, appClient, createLeastPrivilegeUser, resetAclLog, startPasswordRedis, startTlsRedis, type AclUser
} from './helpers/redis-topologies'
import { record } from './helpers/key-source'
import {
  HEALTHY_BOUND_MS, newTestKey, now, request, SHARED_BACKENDS, startPair, type ScenarioApp
} from './helpers/production-redis'
import { sleepUntil, until } from './helpers/wait'

describe('ACL: a least-privilege user (~apikey:* ~credentials:* &fastify-auth-cache:* +@all -@dangerous +info)', () => {
  const redis = usePrivateRedis()
  let user: AclUser

  before(async () => {
    user = await createLeastPrivilegeUser(redis.admin)
  })

  for (const backend of SHARED_BACKENDS) {
    test(`${backend}: every feature works and ACL LOG stays empty`, { timeout: 60_000 }, async (t) => {
      await resetAclLog(redis.admin)
      const options: RedisOptions = { ...redis.server.connectionOptions(), username: user.username, password: user.password }
      const { source, a, b, pair } = await startPair(t, backend, () => appClient(options))
      const failures: string[] = []
      const step = async (what: string, run: () => Promise<void>): Promise<void> => {
        try {
          await run()
        } catch (err) {
          failures.push(`${what}: ${(err as Error).message}`)
        }
      }
      const expectStatus = async (app: ScenarioApp, key: string, status: number, what: string): Promise<void> => {
        const answer = await request(app, key)
        assert.equal(answer.status, status, `${what} on ${app.name}: ${answer.status} ${answer.code ?? ''}`)
      }

      const valid = newTestKey('acl')
      source.answer(valid.hash, record('acl-valid'))
      const unknown = newTestKey('acl')
      await step('the hook: a miss, then hits', async () => {
        for (const app of pair) {
          await expectStatus(app, valid.key, 200, 'miss')
          await expectStatus(app, valid.key, 200, 'hit')
        }
        assert.ok(pair.every(({ app }) => app.apiKeyCache.stats().hits >= 1), 'hits were counted')
      })
      await step('the hook: an unknown key, then a cached unknown key', async () => {
        for (const app of pair) {
          await expectStatus(app, unknown.key, 401, 'unknown')
          await expectStatus(app, unknown.key, 401, 'cached unknown')
        }
      })
      await step('set and get', async () => {
        const hash = newTestKey('acl').hash
        await a.app.apiKeyCache.set(hash, record('acl-set'), 60)
        assert.equal((await a.app.apiKeyCache.get(hash))?.id, 'acl-set')
        assert.equal((await b.app.apiKeyCache.get(hash))?.id, 'acl-set')
      })
      await step('delete', async () => {
        source.answer(valid.hash, null)
        await a.app.apiKeyCache.delete(valid.hash)
        const resolvedAt = now()
        await expectStatus(a, valid.key, 401, 'deleted')
        await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
        await expectStatus(b, valid.key, 401, 'deleted in the other app')
      })
      await step('clear', async () => {
        const cleared = newTestKey('acl')
        source.answer(cleared.hash, record('acl-cleared'))
        for (const app of pair) await expectStatus(app, cleared.key, 200, 'before clear')
        source.answer(cleared.hash, null)
        await b.app.apiKeyCache.clear()
        const resolvedAt = now()
        await expectStatus(b, cleared.key, 401, 'cleared')
        await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
        await expectStatus(a, cleared.key, 401, 'cleared in the other app')
      })
      await step('credentialStore save and load', async () => {
        await a.app.credentialStore.save({ token: 'acl-1' })
        assert.deepEqual(await b.app.credentialStore.load(), { token: 'acl-1' })
      })
      await step('credentialStore update', async () => {
        const next = await b.app.credentialStore.update((current) => ({ ...(current as object | undefined), token: 'acl-2' }))
        assert.deepEqual(next, { token: 'acl-2' })
        // Another tiered process sees the change once its announcement arrives (milliseconds).
        await until('the other app loads the update', async () =>
          JSON.stringify(await a.app.credentialStore.load()) === JSON.stringify({ token: 'acl-2' }), 2000)
      })
      await step('credentialStore clear', async () => {
        await a.app.credentialStore.clear()
        await until('the other app sees the clear', async () => (await b.app.credentialStore.load()) === undefined, 2000)
      })
      for (const app of pair) {
        const errors = app.app.apiKeyCache.stats().backendErrors
        if (errors !== 0) failures.push(`${app.name}: stats().backendErrors is ${errors}: a Redis call on the request path failed`)
      }
      // Heartbeats and subscriptions keep going: give them a moment to be refused, if they are.
      await sleep(1000)
      const log = await aclLog(redis.admin)
      if (log.length > 0) {
        failures.push(`ACL LOG: ${log.map((entry) => `${entry.reason} ${entry.context} "${entry.object}" by ${entry.username} (x${entry.count})`).join('; ')}`)
      }
      assert.deepEqual(failures, [], `with ACL user rules ${user.rules.join(' ')}:\n${failures.join('\n')}`)
    })
  }
})

/**
 * A tiered app A and B on `server`, with clients made from `options`: B serves a key from process
 * memory (a hit that sends no request-path command to Redis), then refuses it once A deleted it.
 */
async function hitsAndCrossAppRevocation (t: TestContext, admin: Redis, options: RedisOptions): Promise<void> {
  const { source, a, b } = await startPair(t, 'tiered', () => appClient(options))

  const { key, hash } = newTestKey('conn')
  source.answer(hash, record('conn'))
  for (const app of [a, b]) assert.equal((await request(app, key)).status, 200)
  // Served from process memory: only possible while the app's own subscriber connection works.
  await until('B serves the key from process memory', async () => {
    const hitsBefore = b.app.apiKeyCache.stats().hits
    const before = await requestPathCommandCalls(admin)
    const answer = await request(b, key)
    const after = await requestPathCommandCalls(admin)
    assert.equal(answer.status, 200)
    return after === before && b.app.apiKeyCache.stats().hits === hitsBefore + 1
  }, { deadlineMs: 10_000, pauseMs: 50, retryErrors: true })

  source.answer(hash, null)
  await a.app.apiKeyCache.delete(hash)
  const resolvedAt = now()
  await sleepUntil(resolvedAt + HEALTHY_BOUND_MS)
  const answer = await request(b, key)
  t.diagnostic(`B's first request ${(answer.startedAt - resolvedAt).toFixed(1)} ms after the delete in A resolved: ${answer.status}`)
  assert.equal(answer.status, 401, 'B refuses the key A deleted')
  assert.ok(b.app.apiKeyCache.stats().invalidations >= 1, 'B received the invalidation')
}

describe('requirepass: a tiered app and its own subscriber connection authenticate', () => {
  const redis = usePrivateRedis(startPasswordRedis)

  test('hits from process memory; a delete in one app is refused by the other within the bound', { timeout: 60_000 }, async (t) => {
    await hitsAndCrossAppRevocation(t, redis.admin, redis.server.connectionOptions())
  })
})

describe('TLS (with a password): a tiered app and its own subscriber connection speak TLS', () => {
  const redis = usePrivateRedis(() => startTlsRedis({ password: 'tls-secret' }))

  test('hits from process memory; a delete in one app is refused by the other within the bound', { timeout: 60_000 }, async (t) => {
    assert.match(redis.server.url, /^rediss:/)
    await hitsAndCrossAppRevocation(t, redis.admin, redis.server.connectionOptions())
  })
})
