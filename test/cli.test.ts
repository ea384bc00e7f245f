/**
 * CONTRACT 15: the `fastify-auth-cache` command, run as a real process (`node dist/cli/main.js`,
 * after `npm run build`) against private Redis servers while tiered processes serve keys from
 * memory. Once it exits 0, every process refuses what it revoked (from memory, so only the
 * message on the invalidation channel can have told them). When it cannot revoke, it exits
 * non-zero within 10 s with a clear message. The plaintext key is never printed.
 */
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { createServer, type Server, type Socket } from 'node:net'
import { after, before, describe, test } from 'node:test'
import type Redis from 'ioredis'
import { generateApiKey } from '../lib'
import { runCli, type CliRun } from './helpers/cli-process'
import { freePort, type RedisServer } from './helpers/redis-server'
import { createLeastPrivilegeUser } from './helpers/redis-topologies'
import { cachedEverywhere, setRecordEverywhere, untilRefusedEverywhere, useTieredWorkers } from './helpers/tiered-worker-process'

const FAILURE_BOUND_MS = 10_000
const newKey = (): { key: string, hash: string } => generateApiKey({ prefix: 'cli' })

function assertSucceeded (run: CliRun, what: string): void {
  assert.equal(run.code, 0, `${what}: exit ${run.code}; stderr: ${run.stderr}`)
}

/** Exits non-zero, in time, saying what went wrong. */
function assertFailed (run: CliRun, code: number, message: RegExp, what: string): void {
  assert.equal(run.code, code, `${what}: exit ${run.code}; stdout: ${run.stdout}; stderr: ${run.stderr}`)
  assert.match(run.stderr, message, what)
  assert.ok(run.durationMs < FAILURE_BOUND_MS, `${what}: exited after ${Math.round(run.durationMs)} ms`)
}

describe('the fastify-auth-cache command', () => {
  const shared = useTieredWorkers()
  const { workers } = shared
  let redis: RedisServer
  let admin: Redis

  before(() => {
    redis = shared.redis
    admin = redis.client()
  })
  after(() => admin?.disconnect())

  test('revoke <key>: every process refuses it; the key is hashed and never printed', { timeout: 120_000 }, async () => {
    const target = newKey()
    const bystander = newKey()
    await cachedEverywhere(workers, [target, bystander], 'cli')
    await setRecordEverywhere(workers, target.hash, null)
    const run = await runCli(['revoke', target.key, '--redis', redis.url])
    assertSucceeded(run, 'revoke <key>')
    assert.ok(!run.stdout.includes(target.key) && !run.stderr.includes(target.key), 'the plaintext key was printed')
    assert.match(run.stdout, new RegExp(target.hash))
    await untilRefusedEverywhere(workers, [target])
    for (const worker of workers) assert.equal((await worker.request(bystander.key)).status, 200)
  })

  test('revoke - reads the key from standard input; revoke --hash takes its SHA-256; REDIS_URL is the default server', { timeout: 120_000 }, async () => {
    const piped = newKey()
    const hashed = newKey()
    await cachedEverywhere(workers, [piped, hashed], 'cli')
    await setRecordEverywhere(workers, piped.hash, null)
    await setRecordEverywhere(workers, hashed.hash, null)
    const fromStdin = await runCli(['revoke', '-'], { env: { REDIS_URL: redis.url }, stdin: `${piped.key}\n` })
    assertSucceeded(fromStdin, 'revoke -')
    assert.ok(!fromStdin.stdout.includes(piped.key) && !fromStdin.stderr.includes(piped.key), 'the plaintext key was printed')
    assertSucceeded(await runCli(['revoke', '--hash', hashed.hash.toUpperCase(), `--redis=${redis.url}`]), 'revoke --hash')
    await untilRefusedEverywhere(workers, [piped, hashed])
  })

  test('revoke --owner: every process refuses the owner\'s keys and still serves other owners\' keys from memory', { timeout: 120_000 }, async () => {
    const owned = Array.from({ length: 5 }, newKey)
    const others = Array.from({ length: 3 }, newKey)
    await cachedEverywhere(workers, owned, 'cli', { ownerId: 'cli-owner' })
    await cachedEverywhere(workers, others, 'cli', { ownerId: 'cli-other' })
    for (const { hash } of owned) await setRecordEverywhere(workers, hash, null)
    assertSucceeded(await runCli(['revoke', '--owner', 'cli-owner', '--redis', redis.url]), 'revoke --owner')
    await untilRefusedEverywhere(workers, owned)
    for (const worker of workers) {
      const lookups = (await worker.stats()).lookupCalls
      for (const { key } of others) assert.equal((await worker.request(key)).status, 200)
      assert.equal((await worker.stats()).lookupCalls, lookups, `${worker.name} served other owners' keys from memory`)
    }
  })

  test('clear: every process drops every entry of the prefix; --prefix names another cache, untouched by default', { timeout: 120_000 }, async () => {
    const keys = [newKey(), newKey()]
    await cachedEverywhere(workers, keys, 'cli')
    await admin.set('othercache:x', 'kept')
    for (const { hash } of keys) await setRecordEverywhere(workers, hash, null)
    // Another prefix: nothing of this cache is touched, and no process hears it.
    assertSucceeded(await runCli(['clear', '--redis', redis.url, '--prefix', 'othercache:']), 'clear --prefix othercache:')
    assert.equal(await admin.exists('othercache:x'), 0)
    for (const worker of workers) for (const { key } of keys) assert.equal((await worker.request(key)).status, 200)
    assertSucceeded(await runCli(['clear', '--redis', redis.url]), 'clear')
    await untilRefusedEverywhere(workers, keys)
  })

  test('a least-privilege ACL user (its prefix and the plugin\'s channels) can revoke, clear and revoke an owner', { timeout: 60_000 }, async () => {
    const user = await createLeastPrivilegeUser(admin, { keyPrefixes: ['apikey:'] })
    const url = `redis://${user.username}:${user.password}@127.0.0.1:${redis.port}`
    const { key, hash } = newKey()
    await cachedEverywhere(workers, [{ key, hash }], 'cli', { ownerId: 'acl-owner' })
    await setRecordEverywhere(workers, hash, null)
    assertSucceeded(await runCli(['revoke', '--owner', 'acl-owner', '--redis', url]), 'revoke --owner as a least-privilege user')
    await untilRefusedEverywhere(workers, [{ key }])
    assertSucceeded(await runCli(['revoke', '--hash', hash, '--redis', url]), 'revoke --hash as a least-privilege user')
    assertSucceeded(await runCli(['clear', '--redis', url]), 'clear as a least-privilege user')
  })

  describe('fails clearly, within 10 s, when it cannot revoke', () => {
    let silent: Server
    const sockets: Socket[] = []
    let silentPort = 0
    before(async () => {
      // Accepts connections and never answers a byte, as a hung server or a black-holing proxy.
      silent = createServer((socket) => { sockets.push(socket) })
      silent.listen(0, '127.0.0.1')
      await once(silent, 'listening')
      silentPort = (silent.address() as { port: number }).port
    })
    after(async () => {
      for (const socket of sockets) socket.destroy()
      silent.close()
    })

    test('no --redis and no REDIS_URL: it never guesses a server', async () => {
      assertFailed(await runCli(['revoke', '--hash', 'a'.repeat(64)]), 2, /REDIS_URL/, 'no server given')
    })

    test('a bad URL, or bad usage', async () => {
      assertFailed(await runCli(['clear', '--redis', 'not a url']), 2, /not a URL/, 'not a URL')
      assertFailed(await runCli(['clear', '--redis', 'http://127.0.0.1:6379']), 2, /redis:\/\/ or rediss:\/\//, 'another scheme')
      assertFailed(await runCli(['revoke', '--hash', 'xyz', '--redis', redis.url]), 2, /64 hexadecimal/, 'a bad hash')
      assertFailed(await runCli(['revoke', '--redis', redis.url]), 2, /exactly one/, 'nothing to revoke')
      assertFailed(await runCli(['frobnicate', '--redis', redis.url]), 2, /unknown command/, 'an unknown command')
      assertFailed(await runCli(['clear', '--redis', redis.url, '--force']), 2, /unknown option --force/, 'an unknown option')
    })

    test('an unreachable Redis', async () => {
      const port = await freePort()
      assertFailed(await runCli(['revoke', '--hash', 'a'.repeat(64), '--redis', `redis://127.0.0.1:${port}`]), 1, /could not connect.*ECONNREFUSED/, 'nothing listening')
    })

    test('a silent Redis (accepts TCP, never answers)', async () => {
      for (const args of [['revoke', '--hash', 'a'.repeat(64)], ['revoke', '--owner', 'someone'], ['clear']]) {
        assertFailed(await runCli([...args, '--redis', `redis://127.0.0.1:${silentPort}`]), 1, /could not connect.*within|revocation failed.*(timed out|within)/i, `${args[1] ?? args[0]} on a silent server`)
      }
      // With a password, the silence comes during connection.
      assertFailed(await runCli(['clear', '--redis', `redis://user:pw@127.0.0.1:${silentPort}`]), 1, /could not connect/, 'AUTH to a silent server')
    })

    test('a wrong password', async () => {
      const user = await createLeastPrivilegeUser(admin, { keyPrefixes: ['apikey:'] })
      const run = await runCli(['revoke', '--hash', 'a'.repeat(64), '--redis', `redis://${user.username}:wrong-${user.password}@127.0.0.1:${redis.port}`])
      assertFailed(run, 1, /WRONGPASS/, 'a wrong password')
      assert.ok(!run.stderr.includes(user.password), 'the password was printed')
    })

    test('an ACL user that refuses (NOPERM), for keys and for the channel', async () => {
      const other = await createLeastPrivilegeUser(admin, { keyPrefixes: ['elsewhere:'] })
      const keysRefused = `redis://${other.username}:${other.password}@127.0.0.1:${redis.port}`
      assertFailed(await runCli(['revoke', '--hash', 'a'.repeat(64), '--redis', keysRefused]), 1, /NOPERM/, 'keys outside the grant')
      const noChannel = await createLeastPrivilegeUser(admin, { keyPrefixes: ['apikey:'], channelPatterns: [] })
      const channelRefused = `redis://${noChannel.username}:${noChannel.password}@127.0.0.1:${redis.port}`
      for (const args of [['revoke', '--hash', 'a'.repeat(64)], ['revoke', '--owner', 'someone'], ['clear']]) {
        assertFailed(await runCli([...args, '--redis', channelRefused]), 1, /(NOPERM|can't publish).*needs the keys ~apikey:\* and the channels &fastify-auth-cache:\*/, `${args[1] ?? args[0]} without the channel grant`)
      }
    })
  })
})
