import assert from 'node:assert/strict'
import { once } from 'node:events'
import { createServer, connect, type Socket } from 'node:net'
import { describe, test } from 'node:test'
import { setImmediate as tick, setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import { RedisGuard } from '../lib/redis/guard'
import { deferred, type Deferred } from './helpers/wait'

// lib/redis/guard.ts: the backoff starts at 250 ms and doubles up to 2 s.
const MIN_BACKOFF_MS = 250
const MAX_BACKOFF_MS = 2000

interface Line { level: string, msg: string | undefined }

/** A logger that keeps what it is told. */
function recordingLog (): { log: FastifyBaseLogger, lines: Line[] } {
  const lines: Line[] = []
  const at = (level: string) => (...args: unknown[]): void => {
    lines.push({ level, msg: args.find((arg): arg is string => typeof arg === 'string') })
  }
  const log: FastifyBaseLogger = {
    level: 'trace',
    fatal: at('fatal'),
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    trace: at('trace'),
    silent: () => {},
    child: () => log
  }
  return { log, lines }
}

/** A Redis call that runs and answers at once with `value`, or fails, counting its calls. */
function call<T> (answer: () => Promise<T>): { run: () => Promise<T>, calls: () => number } {
  let calls = 0
  return { run: () => { calls++; return answer() }, calls: () => calls }
}

const codeOf = (code: string) => (err: NodeJS.ErrnoException): boolean => {
  assert.equal(err.code, code)
  return true
}

const down = (): Promise<never> => Promise.reject(new Error('connection refused'))

interface Window {
  /** The call the guard let through after the window, still waiting for `probe`. */
  attempt: Promise<string>
  probe: Deferred<string>
  refusals: number
}

/**
 * Fails `guard` through `fail`, then asks it again every few ms until it lets a call through,
 * and checks the window it kept closed against `windowMs` in ways no stall of the machine can
 * break: the probe came no earlier than `windowMs` after `fail` began, and no call was refused
 * later than `windowMs` after its failure was seen. Every refused call was never made.
 */
async function measureWindow (guard: RedisGuard, windowMs: number, fail: () => Promise<unknown>): Promise<Window> {
  const failStartedAt = Date.now()
  await assert.rejects(fail())
  await tick()
  const failSeenAt = Date.now()
  const probe = deferred<string>()
  let probedAt: number | undefined
  let refusals = 0
  for (;;) {
    const askedAt = Date.now()
    const attempt = guard.run(async () => { probedAt = Date.now(); return await probe.promise })
    if (probedAt !== undefined) {
      assert.ok(probedAt - failStartedAt >= windowMs, `probed ${probedAt - failStartedAt} ms after the failure, inside the ${windowMs} ms window`)
      // Whoever ends the probe awaits it; until then a rejection is not unhandled.
      attempt.catch(() => {})
      return { attempt, probe, refusals }
    }
    await assert.rejects(attempt, codeOf('FST_AUTH_CACHE_REDIS_UNAVAILABLE'))
    refusals++
    assert.ok(askedAt - failSeenAt < windowMs, `refused ${askedAt - failSeenAt} ms after the failure, past the ${windowMs} ms window`)
    await sleep(5)
  }
}

describe('RedisGuard', () => {
  test('run passes answers and errors through while Redis is healthy', async () => {
    const { log } = recordingLog()
    const guard = new RedisGuard(1000, log)
    assert.equal(await guard.run(async () => 'PONG'), 'PONG')
    const ok = call(async () => 1)
    for (let i = 0; i < 3; i++) assert.equal(await guard.run(ok.run), 1)
    assert.equal(ok.calls(), 3)
    const failure = new Error('WRONGTYPE')
    await assert.rejects(guard.run(() => Promise.reject(failure)), (err) => err === failure)
  })

  test('run times out with FST_AUTH_CACHE_REDIS_TIMEOUT, then refuses at once with FST_AUTH_CACHE_REDIS_UNAVAILABLE', async () => {
    const { log, lines } = recordingLog()
    const guard = new RedisGuard(50, log)
    const startedAt = performance.now()
    await assert.rejects(guard.run(() => new Promise(() => {})), codeOf('FST_AUTH_CACHE_REDIS_TIMEOUT'))
    // Timers may fire a fraction of a millisecond early on this clock.
    assert.ok(performance.now() - startedAt >= 49, `timed out after ${performance.now() - startedAt} ms`)
    assert.deepEqual(lines.map((line) => line.level), ['debug'], 'the first failure is logged once, at debug')

    // Inside the backoff window the call is not even made: nothing to wait for.
    const skipped = call(async () => 'never')
    await assert.rejects(guard.run(skipped.run), codeOf('FST_AUTH_CACHE_REDIS_UNAVAILABLE'))
    assert.equal(skipped.calls(), 0)
  })

  test('after the window, one probe at a time; its success ends the backoff', async () => {
    const { log, lines } = recordingLog()
    const guard = new RedisGuard(1000, log)
    const { attempt, probe } = await measureWindow(guard, MIN_BACKOFF_MS, () => guard.run(down))

    // While the probe is out, every other call is refused without being made.
    const others = call(async () => 'never')
    for (let i = 0; i < 3; i++) await assert.rejects(guard.run(others.run), codeOf('FST_AUTH_CACHE_REDIS_UNAVAILABLE'))
    assert.equal(others.calls(), 0)

    probe.resolve('PONG')
    assert.equal(await attempt, 'PONG')
    const after = call(async () => 'PONG')
    assert.equal(await guard.run(after.run), 'PONG')
    assert.equal(after.calls(), 1)
    assert.ok(lines.some((line) => line.level === 'info' && line.msg?.includes('answers again')), 'the recovery is logged')

    // Recovered: the next failure starts again from the shortest window.
    const again = await measureWindow(guard, MIN_BACKOFF_MS, () => guard.run(down))
    again.probe.resolve('PONG')
    assert.equal(await again.attempt, 'PONG')
  })

  test(`the window doubles while probes fail, up to ${MAX_BACKOFF_MS} ms`, { timeout: 60_000 }, async (t) => {
    const { log } = recordingLog()
    const guard = new RedisGuard(1000, log)
    let fail = (): Promise<unknown> => guard.run(down)
    for (const windowMs of [MIN_BACKOFF_MS, 500, 1000, MAX_BACKOFF_MS, MAX_BACKOFF_MS]) {
      const { attempt, probe, refusals } = await measureWindow(guard, windowMs, fail)
      t.diagnostic(`${windowMs} ms window: ${refusals} calls refused`)
      // The probe fails in turn.
      fail = () => {
        probe.reject(new Error('still down'))
        return attempt
      }
    }
    await assert.rejects(fail(), /still down/)
  })

  test('offPath is bounded but never skipped, even during a backoff', async () => {
    const { log } = recordingLog()
    const guard = new RedisGuard(50, log)
    await assert.rejects(guard.run(down))
    const skipped = call(async () => 'never')
    await assert.rejects(guard.run(skipped.run), codeOf('FST_AUTH_CACHE_REDIS_UNAVAILABLE'))
    const offPath = call(async () => 'OK')
    assert.equal(await guard.offPath(offPath.run), 'OK')
    assert.equal(offPath.calls(), 1)
    await assert.rejects(guard.offPath(down), /connection refused/)
    assert.equal(skipped.calls(), 0)
  })

  test('a reply that arrived in time but is read after the deadline still wins', async (t) => {
    // A real socket: its reply waits in the kernel while the event loop is starved.
    const server = createServer()
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const client = connect((server.address() as { port: number }).port, '127.0.0.1')
    const [[peer]] = await Promise.all([once(server, 'connection') as Promise<[Socket]>, once(client, 'connect')])
    t.after(() => {
      client.destroy()
      peer.destroy()
      server.close()
    })

    /**
     * Starts `race` on a call answered by the next data on the socket, sends that answer at
     * once, then keeps the event loop busy past the 20 ms deadline: when it runs again, the
     * timer has expired and the answer is waiting unread.
     */
    async function starved<T> (race: (call: () => Promise<string>, timeoutMs: number) => Promise<T>): Promise<T> {
      // From a setImmediate callback: the next turn of the loop runs timers first, then reads sockets.
      await tick()
      const reply = race(() => new Promise<string>((resolve) => client.once('data', (data) => resolve(data.toString()))), 20)
      peer.write('PONG')
      const until = performance.now() + 100
      while (performance.now() < until) { /* starved */ }
      return await reply
    }

    // Without care, the expired timer wins although the answer was there in time.
    const naive = (run: () => Promise<string>, timeoutMs: number): Promise<string> => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out')), timeoutMs)
      run().then((value) => { clearTimeout(timer); resolve(value) })
    })
    await assert.rejects(starved(naive), /timed out/, 'the setup starves the loop as intended')

    const { log } = recordingLog()
    const guard = new RedisGuard(20, log)
    assert.equal(await starved((run) => guard.run(run)), 'PONG')
    // Nothing failed: the guard is not skipping Redis.
    const next = call(async () => 'OK')
    assert.equal(await guard.run(next.run), 'OK')
    assert.equal(next.calls(), 1)
  })
})
