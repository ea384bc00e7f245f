import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { describe, test, before, after, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { jsonSerializer, type CredentialStore, type GetFreshOptions, type SerializerContext } from '../lib'
import { openCredentialStore } from './helpers/credential-store-app'
import { startRedis, type RedisServer } from './helpers/redis-server'
import { deferred, until } from './helpers/wait'

/** What these tests store: a version and the epoch ms at which it stops being good. */
interface Token { v: number, expiresAt: number }
type Store = CredentialStore<Token>

/**
 * Another tiered process sees a save once its announcement arrives (milliseconds): the tests
 * that start from a saved value wait for that, generously. Elsewhere there is nothing to wait for.
 */
async function seenBy (reader: { load (): Promise<unknown> }, writer: { load (): Promise<unknown> }): Promise<void> {
  if (reader === writer) return
  const expected = JSON.stringify(await writer.load())
  await until('the other process sees the saved value', async () => JSON.stringify(await reader.load()) === expected, 2000)
}

// A background refresh that fails, or anything else left unobserved, must never surface here.
const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => { unhandled.push(reason) })

const HOUR = 3_600_000
const valid = (v: number, lifeMs = HOUR): Token => ({ v, expiresAt: Date.now() + lifeMs })
const expired = (v: number): Token => ({ v, expiresAt: Date.now() - 1000 })

/** The `isFresh` and `refresh` of one test, counting their calls; `isFresh(undefined)` fails the test. */
class Provider {
  refreshes = 0
  readonly seen: Array<Token | undefined> = []
  readonly askedAt: number[] = []
  undefinedAsked = 0
  next: (current: Token | undefined) => Token | Promise<Token>

  constructor (next?: (current: Token | undefined) => Token | Promise<Token>) {
    this.next = next ?? ((current) => valid((current?.v ?? 0) + 1))
  }

  isFresh = (value: Token, atMs: number): boolean => {
    if (value === undefined) this.undefinedAsked++
    this.askedAt.push(atMs)
    return atMs < value.expiresAt
  }

  refresh = async (current: Token | undefined): Promise<Token> => {
    this.refreshes++
    this.seen.push(current)
    return await this.next(current)
  }

  options (extra: Partial<GetFreshOptions<Token>> = {}): GetFreshOptions<Token> {
    return { isFresh: this.isFresh, refresh: this.refresh, ...extra }
  }
}

/** JSON, counting writes and reads per storage key, so a test can tell that nothing was written. */
class CountingSerializer {
  writes = 0
  reads = 0
  serialize = (value: unknown, ctx: SerializerContext): string | Buffer => {
    this.writes++
    return jsonSerializer.serialize(value, ctx) as string
  }

  deserialize = (raw: Buffer, ctx: SerializerContext): unknown => {
    this.reads++
    return jsonSerializer.deserialize(raw, ctx)
  }
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i)

for (const backend of ['memory', 'redis', 'tiered'] as const) {
  describe(`credentialStore.getFresh, ${backend} backend`, () => {
    let redis: RedisServer | undefined
    let prefixes = 0

    before(async () => {
      if (backend !== 'memory') redis = await startRedis()
    })
    after(async () => {
      await redis?.destroy()
      assert.deepEqual(unhandled, [], 'an unhandled rejection escaped')
    })

    const freshPrefix = (): string => `fresh-${backend}-${++prefixes}:`

    /** A newly registered app's store; on Redis each app has its own client, like another process. */
    const open = (t: TestContext, keyPrefix: string, serializer = new CountingSerializer()): Promise<Store> =>
      openCredentialStore(t, redis, { keyPrefix, serialize: serializer.serialize, deserialize: serializer.deserialize }, backend)

    interface Contenders { label: string, a: Store, b: Store, serializer: CountingSerializer }

    /** One process (a single store), and on Redis two processes (two apps) on one key. */
    async function contenders (t: TestContext): Promise<Contenders[]> {
      const serializer = new CountingSerializer()
      const keyPrefix = freshPrefix()
      const first = await open(t, keyPrefix, serializer)
      const all: Contenders[] = [{ label: 'one process', a: first, b: first, serializer }]
      if (backend !== 'memory') {
        const second = new CountingSerializer()
        all.push({ label: 'two processes', a: await open(t, keyPrefix, second), b: first, serializer: second })
      }
      return all
    }

    test('a fresh stored value is returned at once: no refresh, no lock, no write', async (t) => {
      const serializer = new CountingSerializer()
      const store = await open(t, freshPrefix(), serializer)
      const provider = new Provider()
      const token = valid(7)
      await store.save(token)
      const writes = serializer.writes

      // Another caller holds the update lock: a fresh value needs no lock, so waitMs 0 cannot fail.
      const entered = deferred()
      const gate = deferred()
      const holder = store.update(async (current) => { entered.resolve(); await gate.promise; return current! })
      await entered.promise
      const startedAt = performance.now()
      assert.deepEqual(await store.getFresh(provider.options({ waitMs: 0 })), token)
      assert.ok(performance.now() - startedAt < 2_000)
      gate.resolve()
      await holder

      assert.equal(provider.refreshes, 0)
      assert.equal(serializer.writes, writes + 1, 'only the holder\'s update wrote')
      assert.equal(provider.undefinedAsked, 0)
    })

    test('an absent value is refreshed from undefined, saved and returned; isFresh is never asked about undefined', async (t) => {
      const serializer = new CountingSerializer()
      const store = await open(t, freshPrefix(), serializer)
      const provider = new Provider()
      const got = await store.getFresh(provider.options())
      assert.equal(got.v, 1)
      assert.equal(provider.refreshes, 1)
      assert.deepEqual(provider.seen, [undefined])
      assert.equal(serializer.writes, 1)
      assert.deepEqual(await store.load(), got)
      assert.equal(provider.undefinedAsked, 0)
      // Now stored and fresh: the next caller is served without a refresh.
      assert.deepEqual(await store.getFresh(provider.options()), got)
      assert.equal(provider.refreshes, 1)

      // After a clear, absent again: refreshed again, still never asking isFresh about undefined.
      await store.clear()
      assert.equal((await store.getFresh(provider.options({ refreshAheadMs: 1000 }))).v, 1)
      assert.equal(provider.refreshes, 2)
      assert.equal(provider.undefinedAsked, 0)
    })

    test('50 concurrent callers on an expired value: exactly one refresh, all get its value', async (t) => {
      for (const { label, a, b, serializer } of await contenders(t)) {
        await t.test(label, async () => {
          await a.save(expired(1))
          await seenBy(b, a)
          const writes = serializer.writes
          const readsBefore = serializer.reads
          const provider = new Provider(async (current) => {
            await sleep(100)
            return valid(current!.v + 1)
          })
          const results = await Promise.all(range(50).map((i) => (i % 2 === 0 ? a : b).getFresh(provider.options({ waitMs: 30_000 }))))
          assert.equal(provider.refreshes, 1)
          assert.equal(provider.seen[0]?.v, 1)
          for (const result of results) assert.equal(result.v, 2)
          assert.equal((await a.load())?.v, 2)
          assert.equal((await b.load())?.v, 2)
          assert.equal(provider.undefinedAsked, 0)
          if (a === b) {
            assert.equal(serializer.writes, writes + 1)
            // One process: 50 reads, then one flight re-reads under the lock and writes once. The
            // tiered backend decodes once per change instead: the re-read under the lock and
            // what it saved; every other load comes from process memory.
            if (backend === 'tiered') assert.ok(serializer.reads - readsBefore <= 3, `${serializer.reads - readsBefore} decodes`)
            else assert.equal(serializer.reads - readsBefore, 50 + 1 + 2)
          }
        })
      }
    })

    test('a refresh already done by another holder is used, not repeated, and nothing is written again', async (t) => {
      for (const { label, a, b, serializer } of await contenders(t)) {
        await t.test(label, async () => {
          await a.save(expired(1))
          await seenBy(b, a)
          const entered = deferred()
          const gate = deferred()
          // Another caller (or process) is mid-refresh under the lock.
          const holder = a.update(async () => { entered.resolve(); await gate.promise; return valid(5) })
          await entered.promise
          const provider = new Provider()
          const waiting = b.getFresh(provider.options({ waitMs: 30_000 }))
          await sleep(50)
          const writes = serializer.writes
          gate.resolve()
          await holder
          assert.equal((await waiting).v, 5)
          assert.equal(provider.refreshes, 0, 'the value re-read under the lock was fresh')
          if (a === b) assert.equal(serializer.writes, writes + 1, 'only the holder wrote')
        })
      }
    })

    test('refresh-ahead: the old value comes back at once, one background refresh renews it', async (t) => {
      for (const { label, a, b } of await contenders(t)) {
        await t.test(label, async () => {
          // Fresh for 30 s, but not 60 s from now.
          const old = valid(1, 30_000)
          await a.save(old)
          await seenBy(b, a)
          const gate = deferred()
          const provider = new Provider(async (current) => {
            await gate.promise
            return valid(current!.v + 1)
          })
          const options = provider.options({ refreshAheadMs: 60_000 })
          const startedAt = performance.now()
          const first = await Promise.all(range(50).map((i) => (i % 2 === 0 ? a : b).getFresh(options)))
          assert.ok(performance.now() - startedAt < 5_000)
          for (const result of first) assert.deepEqual(result, old)
          // isFresh was asked about now and about now + refreshAheadMs.
          assert.ok(provider.askedAt.some((at) => Math.abs(at - Date.now() - 60_000) < 5_000))

          await until('the background refresh starts', async () => provider.refreshes > 0, 10_000)
          // Callers during the background refresh still get the old value at once.
          assert.deepEqual(await b.getFresh(options), old)
          gate.resolve()
          await until('the renewed value is stored', async () => (await b.load())?.v === 2, 10_000)
          assert.equal(provider.refreshes, 1, 'one background refresh across all callers and processes')
          assert.equal((await a.getFresh(options)).v, 2)
          await sleep(100)
          assert.equal(provider.refreshes, 1)
          assert.equal(provider.undefinedAsked, 0)
        })
      }
    })

    test('refresh-ahead is skipped, without waiting, while another caller holds the lock', async (t) => {
      const store = await open(t, freshPrefix())
      await store.save(valid(1, 30_000))
      const entered = deferred()
      const gate = deferred()
      const holder = store.update(async () => { entered.resolve(); await gate.promise; return valid(9) })
      await entered.promise
      const provider = new Provider()
      assert.equal((await store.getFresh(provider.options({ refreshAheadMs: 60_000 }))).v, 1)
      // The background attempt finds the lock held and gives up without waiting.
      await sleep(200)
      gate.resolve()
      await holder
      assert.equal(provider.refreshes, 0)
      assert.equal((await store.load())?.v, 9)
    })

    test('a refresh that throws rejects every waiting caller with FST_CREDENTIALS_REFRESH_FAILED and its cause; nothing is written', async (t) => {
      for (const { label, a, b, serializer } of await contenders(t)) {
        await t.test(label, async () => {
          const stale = expired(3)
          await a.save(stale)
          await seenBy(b, a)
          const writes = serializer.writes
          const boom = new Error('invalid_grant')
          const provider = new Provider(async () => { await sleep(50); throw boom })
          const outcomes = await Promise.allSettled(range(10).map((i) => (i % 2 === 0 ? a : b).getFresh(provider.options({ waitMs: 30_000 }))))
          for (const outcome of outcomes) {
            assert.equal(outcome.status, 'rejected')
            const err = (outcome as PromiseRejectedResult).reason as NodeJS.ErrnoException
            assert.equal(err.code, 'FST_CREDENTIALS_REFRESH_FAILED')
            assert.equal(err.cause, boom)
          }
          assert.ok(provider.refreshes >= 1 && provider.refreshes <= (a === b ? 1 : 2),
            `${provider.refreshes} refreshes: in-process callers share one failed refresh`)
          assert.deepEqual(await a.load(), stale)
          if (a === b) assert.equal(serializer.writes, writes)

          // A refresh throwing synchronously is the same failure, and the lock was freed at once.
          const sync = new TypeError('sync')
          await assert.rejects(b.getFresh({ isFresh: provider.isFresh, refresh: () => { throw sync }, waitMs: 0 }),
            (err: NodeJS.ErrnoException) => err.code === 'FST_CREDENTIALS_REFRESH_FAILED' && err.cause === sync)
          assert.deepEqual(await b.load(), stale)
          assert.equal((await a.getFresh(new Provider().options({ waitMs: 0 }))).v, 4)
        })
      }
    })

    test('a failed background refresh rejects no one; the value stays and is renewed later', async (t) => {
      const store = await open(t, freshPrefix())
      const old = valid(1, 30_000)
      await store.save(old)
      const failing = new Provider(async () => { throw new Error('provider down') })
      const results = await Promise.all(range(20).map(() => store.getFresh(failing.options({ refreshAheadMs: 60_000 }))))
      for (const result of results) assert.deepEqual(result, old)
      await until('the background refresh fails', async () => failing.refreshes > 0, 10_000)
      await sleep(100)
      assert.equal(failing.refreshes, 1)
      assert.deepEqual(await store.load(), old)
      // A later caller triggers another attempt, which works.
      const working = new Provider()
      assert.deepEqual(await store.getFresh(working.options({ refreshAheadMs: 60_000 })), old)
      await until('the later background refresh renews the value', async () => (await store.load())?.v === 2, 10_000)
      assert.equal(working.refreshes, 1)
      assert.deepEqual(unhandled, [])
    })

    test('a refresh that outlives lockTtlMs fails the caller and writes nothing; the key is free afterwards', async (t) => {
      for (const { label, a, b, serializer } of await contenders(t)) {
        await t.test(label, async () => {
          const stale = expired(1)
          await a.save(stale)
          await seenBy(b, a)
          const writes = serializer.writes
          const never = deferred<Token>()
          const lockTtlMs = 300
          const provider = new Provider(() => never.promise)
          const startedAt = performance.now()
          await assert.rejects(a.getFresh(provider.options({ lockTtlMs })), (err: NodeJS.ErrnoException) => {
            assert.equal(err.code, 'FST_CREDENTIALS_REFRESH_FAILED')
            assert.equal((err.cause as Error).name, 'TimeoutError')
            return true
          })
          const took = performance.now() - startedAt
          assert.ok(took >= lockTtlMs - 5 && took < lockTtlMs + 5_000, `failed after ${took} ms`)
          // The late answer is dropped: nothing written, nothing unhandled.
          never.resolve(valid(99))
          await sleep(50)
          assert.deepEqual(await b.load(), stale)
          if (a === b) assert.equal(serializer.writes, writes)
          assert.equal((await b.getFresh(new Provider().options({ waitMs: 5_000 }))).v, 2)
        })
      }
    })

    test('a refresh whose value isFresh refuses fails the callers, and its value is kept', async (t) => {
      const store = await open(t, freshPrefix())
      await store.save(expired(1))
      const provider = new Provider((current) => expired(current!.v + 1))
      await assert.rejects(store.getFresh(provider.options()), (err: NodeJS.ErrnoException) =>
        err.code === 'FST_CREDENTIALS_REFRESH_FAILED' && /isFresh/.test((err.cause as Error).message))
      // Saved all the same: it may carry a rotated refresh token.
      assert.equal((await store.load())?.v, 2)
    })

    test('past waitMs behind another holder: FST_CREDENTIALS_LOCK_TIMEOUT, no refresh', async (t) => {
      for (const { label, a, b } of await contenders(t)) {
        await t.test(label, async () => {
          await a.save(expired(1))
          await seenBy(b, a)
          const entered = deferred()
          const gate = deferred()
          const holder = a.update(async (current) => { entered.resolve(); await gate.promise; return current! })
          await entered.promise
          const provider = new Provider()
          const waitMs = 200
          const startedAt = performance.now()
          await assert.rejects(b.getFresh(provider.options({ waitMs })), { code: 'FST_CREDENTIALS_LOCK_TIMEOUT' })
          assert.ok(performance.now() - startedAt >= waitMs - 5)
          assert.equal(provider.refreshes, 0)
          gate.resolve()
          await holder
        })
      }
    })

    test('scopes of one store share a single flight per key, and keys are independent', async (t) => {
      const serializer = new CountingSerializer()
      const store = await open(t, freshPrefix(), serializer)
      await store.scope('x').save(expired(1))
      await store.scope('y').save(expired(10))
      const provider = new Provider(async (current) => { await sleep(50); return valid(current!.v + 1) })
      const results = await Promise.all(range(20).map((i) => store.scope(i % 2 === 0 ? 'x' : 'y').getFresh(provider.options())))
      assert.equal(provider.refreshes, 2, 'one refresh per key')
      assert.deepEqual(results.map((r) => r.v), range(20).map((i) => i % 2 === 0 ? 2 : 11))
      assert.equal(serializer.writes, 2 + 2)
    })

    test('a caller sharing another caller\'s refresh checks its value with its own isFresh, and refreshes again if that refuses it', async (t) => {
      const store = await open(t, freshPrefix())
      await store.save(expired(1))
      // The first caller is content with a value good for 10 s; the second wants a minute.
      const lenient = new Provider(async (current) => { await sleep(50); return valid(current!.v + 1, 10_000) })
      const strict = new Provider((current) => valid(current!.v + 1))
      const strictOptions = { ...strict.options(), isFresh: (value: Token, atMs: number) => strict.isFresh(value, atMs + 60_000) }
      const [first, second] = await Promise.all([store.getFresh(lenient.options()), store.getFresh(strictOptions)])
      assert.equal(first.v, 2)
      assert.equal(second.v, 3)
      assert.deepEqual([lenient.refreshes, strict.refreshes], [1, 1])
      assert.equal((await store.load())?.v, 3)
    })

    test('bad options reject with FST_AUTH_CACHE_INVALID_OPTION naming the option, even for a fresh value', async (t) => {
      const store = await open(t, freshPrefix())
      await store.save(valid(1))
      const provider = new Provider()
      const bad: Array<[string, unknown]> = [
        ['options', undefined],
        ['isFresh', { refresh: provider.refresh }],
        ['refresh', { isFresh: provider.isFresh, refresh: 'nope' }],
        ['refreshAheadMs', provider.options({ refreshAheadMs: -1 })],
        ['refreshAheadMs', provider.options({ refreshAheadMs: Number.NaN })],
        ['lockTtlMs', provider.options({ lockTtlMs: 0 })],
        ['lockTtlMs', provider.options({ lockTtlMs: '5' as unknown as number })],
        ['waitMs', provider.options({ waitMs: -5 })],
        ['waitMs', provider.options({ waitMs: Infinity })]
      ]
      for (const [name, options] of bad) {
        await assert.rejects(store.getFresh(options as GetFreshOptions<Token>), (err: NodeJS.ErrnoException) => {
          assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
          assert.ok(err.message.includes(`"${name}"`), err.message)
          return true
        })
      }
      assert.equal(provider.refreshes, 0)
      // Zero is allowed for both.
      assert.equal((await store.getFresh(provider.options({ refreshAheadMs: 0, waitMs: 0 }))).v, 1)
    })
  })
}

test('examples/token-refresher.ts runs: one refresh for 20 callers, then one in the background', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'examples', 'token-refresher.ts')], {
    // The memory run: no REDIS_URL, even if the environment has one.
    env: Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== 'REDIS_URL')),
    timeout: 60_000
  })
  assert.match(stdout, /expired token: 1 distinct token\(s\) handed out in \d+ ms, provider refreshes: 1\n/)
  assert.match(stdout, /token near its end: access-1 handed out/)
  assert.match(stdout, /renewed in the background to access-2, provider refreshes: 2\n/)
})
