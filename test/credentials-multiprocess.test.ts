import assert from 'node:assert/strict'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { describe, test, before, after } from 'node:test'
import { Child, type ChildEvent } from './helpers/child-process'
import { startRedis, type RedisServer } from './helpers/redis-server'

const WORKER = join(__dirname, 'fixtures', 'credential-worker.ts')

interface Entered extends ChildEvent { hold: number, calledAt: number, enteredAt: number }

let holds = 0

/**
 * An update that holds the key inside its fn: `entered` resolves once fn runs, `reply` once
 * `release()` let it finish. Neither may count as unhandled when the worker is killed on
 * purpose; awaiting them still sees the rejection.
 */
function holdingUpdate (worker: Child, args: Record<string, unknown>): { reply: Promise<any>, entered: Promise<Entered>, release: () => void } {
  const hold = ++holds
  const entered = worker.next('entered', (event) => event.hold === hold, Infinity) as Promise<Entered>
  const reply = worker.call('update', { ...args, hold })
  reply.catch(() => {})
  entered.catch(() => {})
  return { reply, entered, release: () => worker.notify('release', { hold }) }
}

describe('credential store shared by several processes through Redis', () => {
  let redis: RedisServer
  let keys = 0
  // Shared by the tests, each on a key of its own: starting a worker costs seconds on a loaded machine.
  let workers: Child[] = []

  before(async () => {
    redis = await startRedis()
    workers = await startWorkers(4)
  })
  after(async () => {
    await Promise.all(workers.map((worker) => worker.kill()))
    await redis.destroy()
  })

  const startWorkers = (count: number): Promise<Child[]> =>
    Child.startAll(count, (i) => ({ name: `credential worker ${i}`, file: WORKER, env: { REDIS_URL: redis.url, KEY_PREFIX: 'multi:' } }))

  const freshKey = (): string => `credential-${++keys}`

  test('4 processes x 25 increments through update end at exactly 100, never overlapping', async () => {
    const key = freshKey()
    await workers[0].call('save', { key, value: 0 })
    const replies = await Promise.all(workers.map((worker) => worker.call('increment', { key, times: 25 })))
    for (const reply of replies) assert.equal(reply.maxRunning, 1, 'two fn ran at once in different processes')
    assert.equal((await workers[1].call('load', { key })).value, 100)
  })

  test('a holder killed with SIGKILL mid-fn frees the key after lockTtlMs, and not before', async (t) => {
    const lockTtlMs = 4000
    const key = freshKey()
    const [holder] = await startWorkers(1)
    t.after(() => holder.kill())
    const other = workers[0]
    await other.call('save', { key, value: 'initial' })

    const held = holdingUpdate(holder, { key, value: 'never saved', lockTtlMs })
    const entered = await held.entered
    await holder.kill()

    // Well inside lockTtlMs: the dead holder's lock still stands.
    const early = await other.call('update', { key, value: 'too early', waitMs: 300 })
    assert.equal(early.error, 'FST_CREDENTIALS_LOCK_TIMEOUT')
    assert.equal(early.enteredAt, undefined, 'fn ran while the dead holder had the key')
    assert.ok(early.failedAt - entered.calledAt < lockTtlMs,
      `the probe ended ${early.failedAt - entered.calledAt} ms in, after the lock expired: the machine is too slow for this check`)

    const late = await other.call('update', { key, value: 'after the holder died', waitMs: 10_000 })
    assert.equal(late.result, 'after the holder died')
    assert.equal(late.seen, 'initial', 'the killed holder wrote nothing')
    // The lock was taken after the holder's update was called, so it cannot expire sooner than this.
    const handedOverAfter = late.enteredAt - entered.calledAt
    assert.ok(handedOverAfter >= lockTtlMs - 5, `key handed over ${handedOverAfter} ms after it was taken`)
    assert.ok(handedOverAfter < lockTtlMs + 3000, `key handed over only ${handedOverAfter} ms after it was taken`)
    assert.equal((await other.call('load', { key })).value, 'after the holder died')
  })

  test('a waiter past waitMs gets FST_CREDENTIALS_LOCK_TIMEOUT and the value is unchanged', async () => {
    const key = freshKey()
    const [holder, waiter] = workers
    await holder.call('save', { key, value: 'before' })
    const held = holdingUpdate(holder, { key, value: 'from the holder' })
    await held.entered

    const waitMs = 500
    const timedOut = await waiter.call('update', { key, value: 'from the waiter', waitMs })
    assert.equal(timedOut.error, 'FST_CREDENTIALS_LOCK_TIMEOUT')
    assert.equal(timedOut.enteredAt, undefined, 'the waiter\'s fn must not run')
    assert.ok(timedOut.failedAt - timedOut.calledAt >= waitMs - 5, 'gave up before waitMs')
    assert.equal((await waiter.call('load', { key })).value, 'before')

    held.release()
    const done = await held.reply
    assert.equal(done.result, 'from the holder')
    assert.equal((await waiter.call('load', { key })).value, 'from the holder')
  })

  describe('refreshing a token with a provider that rotates refresh tokens', () => {
    const provider = {
      validRefreshToken: 'rt-0',
      rotate: true,
      issued: 0,
      refreshes: 0,
      refused: 0
    }
    let server: Server
    let tokenUrl: string

    before(async () => {
      server = createServer((request, response) => {
        let body = ''
        request.on('data', (chunk: Buffer) => { body += chunk.toString() })
        request.on('end', () => {
          const form = new URLSearchParams(body)
          response.setHeader('content-type', 'application/json')
          if (request.url !== '/token' || form.get('grant_type') !== 'refresh_token' ||
            form.get('refresh_token') !== provider.validRefreshToken) {
            provider.refused++
            response.statusCode = 400
            response.end(JSON.stringify({ error: 'invalid_grant' }))
            return
          }
          provider.refreshes++
          const n = ++provider.issued
          // Used up at once, as a rotating provider does; the slow answer lets callers pile up.
          if (provider.rotate) provider.validRefreshToken = `rt-${n}`
          const answer: Record<string, unknown> = { access_token: `at-${n}`, token_type: 'Bearer', expires_in: 3600 }
          if (provider.rotate) answer.refresh_token = provider.validRefreshToken
          setTimeout(() => response.end(JSON.stringify(answer)), 150)
        })
      })
      server.listen(0, '127.0.0.1')
      await once(server, 'listening')
      tokenUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`
    })
    after(() => { server.close() })

    test('10 concurrent callers across 2 processes refresh exactly once, and a missing refresh token is kept', async () => {
      const key = freshKey()
      const [a, b] = workers
      const expired = (refreshToken: string, accessToken: string): Record<string, unknown> =>
        ({ accessToken, refreshToken, expiresAt: Date.now() - 1000 })

      async function tenCallers (): Promise<string[]> {
        const replies = await Promise.all([a, b].map((worker) => worker.call('getValidToken', { key, tokenUrl, count: 5 })))
        for (const reply of replies) assert.deepEqual(reply.errors, [])
        return replies.flatMap((reply) => reply.tokens as string[])
      }

      await a.call('save', { key, value: expired('rt-0', 'at-0') })
      assert.deepEqual(await tenCallers(), Array(10).fill('at-1'))
      assert.equal(provider.refreshes, 1)
      assert.equal(provider.refused, 0, 'a stale refresh token reached the provider')
      const first = (await b.call('load', { key })).value
      assert.equal(first.accessToken, 'at-1')
      assert.equal(first.refreshToken, 'rt-1')
      assert.ok(first.expiresAt > Date.now() + 3_000_000)

      // Still valid: nobody goes to the provider.
      assert.deepEqual(await tenCallers(), Array(10).fill('at-1'))
      assert.equal(provider.refreshes, 1)

      // A provider answer without a refresh token must not erase the stored one.
      provider.rotate = false
      await b.call('save', { key, value: expired('rt-1', 'at-1') })
      assert.deepEqual(await tenCallers(), Array(10).fill('at-2'))
      assert.equal(provider.refreshes, 2)
      assert.equal((await a.call('load', { key })).value.refreshToken, 'rt-1')

      // And the kept token still works once the provider rotates again.
      provider.rotate = true
      await a.call('save', { key, value: expired('rt-1', 'at-2') })
      assert.deepEqual(await tenCallers(), Array(10).fill('at-3'))
      assert.equal(provider.refreshes, 3)
      assert.equal(provider.refused, 0)
      assert.equal((await b.call('load', { key })).value.refreshToken, 'rt-3')
    })

    test('the provider really does refuse a used refresh token', async () => {
      // Guards the checks above: were used tokens accepted, "refused = 0" would prove nothing.
      const refresh = (refreshToken: string): Promise<Response> => fetch(tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken })
      })
      provider.rotate = true
      const used = provider.validRefreshToken
      assert.equal((await refresh(used)).status, 200)
      const refusedBefore = provider.refused
      assert.equal((await refresh(used)).status, 400)
      assert.equal(provider.refused, refusedBefore + 1)
    })
  })
})
