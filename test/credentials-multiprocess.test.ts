import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { describe, test, before, after } from 'node:test'
import { startRedis, type RedisServer } from './helpers/redis-server'

const WORKER = join(__dirname, 'fixtures', 'credential-worker.ts')

interface Reply { type: 'reply', id: number, ok: boolean, [field: string]: any }
interface Entered { type: 'entered', id: number, calledAt: number, enteredAt: number }

/** A child process running the plugin on the shared Redis, as another instance of the app. */
class Worker {
  private nextId = 0
  private readonly waiting = new Map<string, (message: any) => void>()
  private readonly exited: Promise<unknown>

  private constructor (readonly child: ChildProcess) {
    this.exited = once(child, 'exit')
    child.on('message', (message: Reply | Entered) => {
      const key = `${message.type}:${message.id}`
      this.waiting.get(key)?.(message)
      this.waiting.delete(key)
    })
  }

  static async start (redisUrl: string, keyPrefix: string): Promise<Worker> {
    const child = spawn(process.execPath, ['--import', 'tsx', WORKER], {
      env: { ...process.env, REDIS_URL: redisUrl, KEY_PREFIX: keyPrefix },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    const [message] = await Promise.race([
      once(child, 'message'),
      once(child, 'exit').then(([code]) => { throw new Error(`worker exited with ${String(code)} before it was ready`) })
    ]) as [{ type: string }]
    assert.equal(message.type, 'ready')
    return new Worker(child)
  }

  private expect<T> (type: string, id: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(`${type}:${id}`, resolve)
      this.exited.then(() => reject(new Error(`worker ${String(this.child.pid)} exited while a ${type} was awaited`)), () => {})
    })
  }

  /** Sends a request; `entered` resolves once an update with `hold` runs its fn. */
  send (op: string, args: Record<string, unknown> = {}): { id: number, reply: Promise<Reply>, entered: Promise<Entered> } {
    const id = ++this.nextId
    const reply = this.expect<Reply>('reply', id)
    const entered = this.expect<Entered>('entered', id)
    // Pending when a worker is killed on purpose, or never entered by requests that do not hold:
    // neither may count as unhandled. Awaiting them still sees the rejection.
    reply.catch(() => {})
    entered.catch(() => {})
    this.child.send({ id, op, ...args })
    return { id, reply, entered }
  }

  async request (op: string, args: Record<string, unknown> = {}): Promise<Reply> {
    const reply = await this.send(op, args).reply
    assert.ok(reply.ok, `worker failed on ${op}: ${String(reply.error)}`)
    return reply
  }

  release (id: number): void {
    this.child.send({ id, op: 'release' })
  }

  async kill (): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    this.child.kill('SIGKILL')
    await this.exited
  }
}

describe('credential store shared by several processes through Redis', () => {
  let redis: RedisServer
  let keys = 0
  // Shared by the tests, each on a key of its own: starting a worker costs seconds on a loaded machine.
  let workers: Worker[] = []

  before(async () => {
    redis = await startRedis()
    workers = await startWorkers(4)
  })
  after(async () => {
    await Promise.all(workers.map((worker) => worker.kill()))
    await redis.destroy()
  })

  async function startWorkers (count: number): Promise<Worker[]> {
    const started = await Promise.allSettled(Array.from({ length: count }, () => Worker.start(redis.url, 'multi:')))
    const running = started.flatMap((outcome) => outcome.status === 'fulfilled' ? [outcome.value] : [])
    for (const outcome of started) {
      if (outcome.status === 'rejected') {
        await Promise.all(running.map((worker) => worker.kill()))
        throw outcome.reason
      }
    }
    return running
  }

  const freshKey = (): string => `credential-${++keys}`

  test('4 processes x 25 increments through update end at exactly 100, never overlapping', async () => {
    const key = freshKey()
    await workers[0].request('save', { key, value: 0 })
    const replies = await Promise.all(workers.map((worker) => worker.request('increment', { key, times: 25 })))
    for (const reply of replies) assert.equal(reply.maxRunning, 1, 'two fn ran at once in different processes')
    assert.equal((await workers[1].request('load', { key })).value, 100)
  })

  test('a holder killed with SIGKILL mid-fn frees the key after lockTtlMs, and not before', async (t) => {
    const lockTtlMs = 4000
    const key = freshKey()
    const [holder] = await startWorkers(1)
    t.after(() => holder.kill())
    const other = workers[0]
    await other.request('save', { key, value: 'initial' })

    const held = holder.send('update', { key, value: 'never saved', hold: true, lockTtlMs })
    const entered = await held.entered
    await holder.kill()

    // Well inside lockTtlMs: the dead holder's lock still stands.
    const early = await other.request('update', { key, value: 'too early', waitMs: 300 })
    assert.equal(early.error, 'FST_CREDENTIALS_LOCK_TIMEOUT')
    assert.equal(early.enteredAt, undefined, 'fn ran while the dead holder had the key')
    assert.ok(early.failedAt - entered.calledAt < lockTtlMs,
      `the probe ended ${early.failedAt - entered.calledAt} ms in, after the lock expired: the machine is too slow for this check`)

    const late = await other.request('update', { key, value: 'after the holder died', waitMs: 10_000 })
    assert.equal(late.result, 'after the holder died')
    assert.equal(late.seen, 'initial', 'the killed holder wrote nothing')
    // The lock was taken after the holder's update was called, so it cannot expire sooner than this.
    const handedOverAfter = late.enteredAt - entered.calledAt
    assert.ok(handedOverAfter >= lockTtlMs - 5, `key handed over ${handedOverAfter} ms after it was taken`)
    assert.ok(handedOverAfter < lockTtlMs + 3000, `key handed over only ${handedOverAfter} ms after it was taken`)
    assert.equal((await other.request('load', { key })).value, 'after the holder died')
  })

  test('a waiter past waitMs gets FST_CREDENTIALS_LOCK_TIMEOUT and the value is unchanged', async () => {
    const key = freshKey()
    const [holder, waiter] = workers
    await holder.request('save', { key, value: 'before' })
    const held = holder.send('update', { key, value: 'from the holder', hold: true })
    await held.entered

    const waitMs = 500
    const timedOut = await waiter.request('update', { key, value: 'from the waiter', waitMs })
    assert.equal(timedOut.error, 'FST_CREDENTIALS_LOCK_TIMEOUT')
    assert.equal(timedOut.enteredAt, undefined, 'the waiter\'s fn must not run')
    assert.ok(timedOut.failedAt - timedOut.calledAt >= waitMs - 5, 'gave up before waitMs')
    assert.equal((await waiter.request('load', { key })).value, 'before')

    holder.release(held.id)
    const done = await held.reply
    assert.equal(done.result, 'from the holder')
    assert.equal((await waiter.request('load', { key })).value, 'from the holder')
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
        const replies = await Promise.all([a, b].map((worker) => worker.request('getValidToken', { key, tokenUrl, count: 5 })))
        for (const reply of replies) assert.deepEqual(reply.errors, [])
        return replies.flatMap((reply) => reply.tokens as string[])
      }

      await a.request('save', { key, value: expired('rt-0', 'at-0') })
      assert.deepEqual(await tenCallers(), Array(10).fill('at-1'))
      assert.equal(provider.refreshes, 1)
      assert.equal(provider.refused, 0, 'a stale refresh token reached the provider')
      const first = (await b.request('load', { key })).value
      assert.equal(first.accessToken, 'at-1')
      assert.equal(first.refreshToken, 'rt-1')
      assert.ok(first.expiresAt > Date.now() + 3_000_000)

      // Still valid: nobody goes to the provider.
      assert.deepEqual(await tenCallers(), Array(10).fill('at-1'))
      assert.equal(provider.refreshes, 1)

      // A provider answer without a refresh token must not erase the stored one.
      provider.rotate = false
      await b.request('save', { key, value: expired('rt-1', 'at-1') })
      assert.deepEqual(await tenCallers(), Array(10).fill('at-2'))
      assert.equal(provider.refreshes, 2)
      assert.equal((await a.request('load', { key })).value.refreshToken, 'rt-1')

      // And the kept token still works once the provider rotates again.
      provider.rotate = true
      await a.request('save', { key, value: expired('rt-1', 'at-2') })
      assert.deepEqual(await tenCallers(), Array(10).fill('at-3'))
      assert.equal(provider.refreshes, 3)
      assert.equal(provider.refused, 0)
      assert.equal((await b.request('load', { key })).value.refreshToken, 'rt-3')
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
