import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import fastifyAuthCache, {
  jsonSerializer, type CredentialStore, type CredentialsOptions, type FastifyAuthCacheOptions,
  type SerializerContext
} from '../../lib'
import type { ContractRedis, InspectRedis } from './api-key-cache-contract'
import { deferred, until } from './wait'

type Store = CredentialStore<unknown>

/**
 * What the credential contract needs from the caller. The functions are called only inside
 * tests, so a caller may start its Redis in a `before` hook.
 */
export interface CredentialStoreContractFixture {
  backend: 'memory' | 'redis' | 'tiered'
  /**
   * A fresh client for one app (another process, as far as the lock is concerned), ready to
   * use; the suite closes it after the app. Never called for 'memory'.
   */
  createClient?: () => ContractRedis | Promise<ContractRedis>
  /** An ioredis client without keyPrefix for raw looks at exact keys; the suite never closes it. */
  inspect?: () => InspectRedis
}

/**
 * JSON by default; in 'raw' mode it passes Buffers through untouched, so a test can write and
 * read the stored bytes through the public API on the memory backend, which has no outside view.
 */
class SwitchableSerializer {
  raw = false

  serialize = (value: unknown, ctx: SerializerContext): string | Buffer =>
    this.raw ? value as Buffer : jsonSerializer.serialize(value, ctx) as string

  deserialize = (bytes: Buffer, ctx: SerializerContext): unknown =>
    this.raw ? bytes : jsonSerializer.deserialize(bytes, ctx)
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i)

/** The contract of `fastify.credentialStore`, for one backend and client. */
export function credentialStoreContract (label: string, fixture: CredentialStoreContractFixture): void {
  const { backend } = fixture
  describe(`credential store contract, ${label}`, () => {
    /** The raw view of Redis, or undefined on the memory backend. */
    const redis = backend !== 'memory' ? { client: () => fixture.inspect!() } : undefined
    // Several runs of the contract may share one Redis.
    const run = randomBytes(3).toString('hex')
    let prefixes = 0

    /** A prefix no other test uses, so tests never see each other's keys. */
    const freshPrefix = (): string => `cred-${backend}-${run}-${++prefixes}:`

    /**
     * A load that must see a change made through another handle. Another tiered process sees it
     * once the change's announcement arrives (milliseconds; the contract's bound is 10 ms at p99
     * while Redis is healthy): waited for, generously, for a busy machine. Elsewhere at once.
     */
    async function expectLoad (store: Store, expected: unknown): Promise<void> {
      if (backend === 'tiered') {
        await until(`a load gives ${JSON.stringify(expected)}`, async () => JSON.stringify(await store.load()) === JSON.stringify(expected),
          { deadlineMs: 2000, pauseMs: 5 })
      }
      assert.deepEqual(await store.load(), expected)
    }

    /** The credential store of a newly registered app; on Redis each app is a separate client, like another process. */
    async function open (t: TestContext, credentials: CredentialsOptions): Promise<Store> {
      const app = Fastify()
      const options: FastifyAuthCacheOptions = { backend, strict: true, apiKeys: { hook: false }, credentials }
      const client = backend !== 'memory' ? await fixture.createClient!() : undefined
      // The app closes first, then its client: the plugin never closes a client it did not create.
      t.after(async () => {
        await app.close()
        await client?.quit().catch(() => client.disconnect())
      })
      if (client !== undefined) options.redis = client
      await app.register(fastifyAuthCache, options)
      await app.ready()
      return app.credentialStore as Store
    }

    /**
     * Two handles on one key: the same store (callers in one process), and on Redis also two apps
     * with their own clients (callers in two processes, which only the Redis lock keeps apart).
     */
    async function contenders (t: TestContext, credentials: CredentialsOptions): Promise<Array<[string, Store, Store]>> {
      const first = await open(t, credentials)
      const pairs: Array<[string, Store, Store]> = [['one process', first, first]]
      if (backend !== 'memory') pairs.push(['two processes', first, await open(t, credentials)])
      return pairs
    }

    /** The stored bytes of `key`: straight from Redis, or on memory through a switchable serializer. */
    async function rawGet (store: Store, serializer: SwitchableSerializer, fullKey: string): Promise<Buffer | undefined> {
      if (redis !== undefined) return (await redis.client().getBuffer(fullKey)) ?? undefined
      serializer.raw = true
      try {
        return await store.load() as Buffer | undefined
      } finally {
        serializer.raw = false
      }
    }

    async function rawSet (store: Store, serializer: SwitchableSerializer, fullKey: string, bytes: Buffer): Promise<void> {
      if (redis !== undefined) {
        await redis.client().set(fullKey, bytes)
        return
      }
      serializer.raw = true
      try {
        await store.save(bytes)
      } finally {
        serializer.raw = false
      }
    }

    test('load of an absent key is undefined; save/load round trip; clear removes it', async (t) => {
      const keyPrefix = freshPrefix()
      const store = await open(t, { keyPrefix })
      assert.equal(store.backend, backend)
      assert.equal(await store.load(), undefined)

      const value = { accessToken: 'a1', refreshToken: 'r1', expiresAt: 1_700_000_000_000, scopes: ['x', 'y'] }
      await store.save(value)
      assert.deepEqual(await store.load(), value)
      await store.save({ accessToken: 'a2' })
      assert.deepEqual(await store.load(), { accessToken: 'a2' })

      await store.clear()
      assert.equal(await store.load(), undefined)
      if (redis !== undefined) {
        const client = redis.client()
        assert.equal(await client.exists(`${keyPrefix}default`), 0)
      }
      // Clearing what is absent is not an error.
      await store.clear()
    })

    test('scope(key) shares backend and serializer, keys are independent, Redis holds keyPrefix + key', async (t) => {
      const keyPrefix = freshPrefix()
      const contexts: string[] = []
      const store = await open(t, {
        keyPrefix,
        key: 'main',
        serialize: (value, ctx) => { contexts.push(`s:${ctx.key}`); return JSON.stringify(value) },
        deserialize: (raw, ctx) => { contexts.push(`d:${ctx.key}`); return JSON.parse(raw.toString('utf8')) }
      })
      const other = store.scope('other')
      assert.equal(other.backend, backend)

      await store.save({ who: 'main' })
      await other.save({ who: 'other' })
      assert.deepEqual(await store.load(), { who: 'main' })
      assert.deepEqual(await other.load(), { who: 'other' })
      // Same serializer on both, each told its own full storage key.
      // The tiered backend decodes what it saved once, at the save, then loads from process memory.
      assert.deepEqual(contexts, backend === 'tiered'
        ? [`s:${keyPrefix}main`, `d:${keyPrefix}main`, `s:${keyPrefix}other`, `d:${keyPrefix}other`]
        : [`s:${keyPrefix}main`, `s:${keyPrefix}other`, `d:${keyPrefix}main`, `d:${keyPrefix}other`])

      await other.clear()
      assert.equal(await other.load(), undefined)
      assert.deepEqual(await store.load(), { who: 'main' })
      await other.save({ who: 'other again' })
      await store.clear()
      assert.deepEqual(await other.load(), { who: 'other again' })

      if (redis !== undefined) {
        const client = redis.client()
        assert.deepEqual(await client.getBuffer(`${keyPrefix}other`), Buffer.from('{"who":"other again"}'))
        assert.equal(await client.exists(`${keyPrefix}main`), 0)
        // Another app on the same Redis and prefix sees the scoped value: the layout is the contract.
        const peer = await open(t, { keyPrefix })
        assert.deepEqual(await peer.scope('other').load(), { who: 'other again' })
      }
    })

    test('a serializer returning a Buffer has its bytes stored exactly, and gets ctx.key on both sides', async (t) => {
      const keyPrefix = freshPrefix()
      const seen: Array<{ side: string, key: string, raw?: Buffer }> = []
      const bytes = Buffer.from([0xff, 0x00, 0xfe, 0x0a, 0x80, 0x7f])
      const store = await open(t, {
        keyPrefix,
        key: 'bin',
        serialize: (_value, ctx) => { seen.push({ side: 'serialize', key: ctx.key }); return bytes },
        deserialize: (raw, ctx) => { seen.push({ side: 'deserialize', key: ctx.key, raw: Buffer.from(raw) }); return 'decoded' }
      })
      await store.save('anything')
      assert.equal(await store.load(), 'decoded')
      assert.deepEqual(seen, [
        { side: 'serialize', key: `${keyPrefix}bin` },
        { side: 'deserialize', key: `${keyPrefix}bin`, raw: bytes }
      ])
      if (redis !== undefined) {
        const client = redis.client()
        assert.deepEqual(await client.getBuffer(`${keyPrefix}bin`), bytes)
      }
    })

    test('ttlSeconds: save and update apply it, the value is gone after it', async (t) => {
      const keyPrefix = freshPrefix()
      const ttlMs = 400
      const store = await open(t, { keyPrefix, ttlSeconds: ttlMs / 1000 })
      const client = redis?.client()

      async function expectExpiry (fullKey: string, store: Store, writtenAfter: number): Promise<void> {
        if (client !== undefined) {
          const pttl = await client.pttl(fullKey)
          assert.ok(pttl > 0 && pttl <= ttlMs, `PTTL ${pttl} should be within (0, ${ttlMs}]`)
        }
        await until('the credential expired', async () => (await store.load()) === undefined, 10_000)
        const lived = performance.now() - writtenAfter
        assert.ok(lived >= ttlMs - 5, `expired after ${lived} ms, before its TTL of ${ttlMs} ms`)
      }

      let startedAt = performance.now()
      await store.save('saved')
      assert.equal(await store.load(), 'saved')
      await expectExpiry(`${keyPrefix}default`, store, startedAt)

      startedAt = performance.now()
      assert.equal(await store.update((current) => current === undefined ? 'updated' : 'unexpected'), 'updated')
      assert.equal(await store.load(), 'updated')
      await expectExpiry(`${keyPrefix}default`, store, startedAt)

      const scoped = store.scope('scoped')
      startedAt = performance.now()
      await scoped.save('scoped')
      await expectExpiry(`${keyPrefix}scoped`, scoped, startedAt)

      if (client !== undefined) {
        // Without ttlSeconds nothing expires.
        const lastingPrefix = freshPrefix()
        const lasting = await open(t, { keyPrefix: lastingPrefix })
        await lasting.save('forever')
        assert.equal(await client.pttl(`${lastingPrefix}default`), -1)
      }
    })

    test('load of bytes that deserialize rejects fails with FST_CREDENTIALS_DESERIALIZE and keeps the bytes', async (t) => {
      const keyPrefix = freshPrefix()
      const serializer = new SwitchableSerializer()
      const store = await open(t, { keyPrefix, serialize: serializer.serialize, deserialize: serializer.deserialize })
      const fullKey = `${keyPrefix}default`
      const junk = Buffer.from('{"accessToken": "trunc')
      await rawSet(store, serializer, fullKey, junk)

      await assert.rejects(store.load(), (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, 'FST_CREDENTIALS_DESERIALIZE')
        assert.ok(err.message.includes(fullKey), 'the message names the storage key')
        assert.ok(!err.message.includes('trunc'), 'the message does not echo the stored bytes')
        assert.ok(err.cause instanceof SyntaxError, 'the deserializer error is kept as the cause')
        return true
      })
      assert.deepEqual(await rawGet(store, serializer, fullKey), junk)
      // A second load fails the same way: nothing was repaired or dropped.
      await assert.rejects(store.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
      assert.deepEqual(await rawGet(store, serializer, fullKey), junk)

      // A rejecting async deserializer is treated the same.
      const asyncStore = await open(t, {
        keyPrefix: freshPrefix(),
        deserialize: async () => { throw new Error('refused') }
      })
      await asyncStore.save({ fine: true })
      await assert.rejects(asyncStore.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
    })

    test('another Redis type under the key is unreadable like corrupt bytes, and is left as it is', async (t) => {
      if (redis === undefined) {
        // Memory holds only what the store wrote; there is no other type to meet.
        assert.equal(backend, 'memory')
        return
      }
      const keyPrefix = freshPrefix()
      const store = await open(t, { keyPrefix })
      const client = redis.client()
      await client.hset(`${keyPrefix}default`, 'accessToken', 'x')
      await assert.rejects(store.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
      await assert.rejects(store.update(() => 'never'), { code: 'FST_CREDENTIALS_DESERIALIZE' })
      assert.equal(await client.type(`${keyPrefix}default`), 'hash')
      assert.equal(await client.hget(`${keyPrefix}default`, 'accessToken'), 'x')
      // The failed update released its lock at once.
      await store.clear()
      assert.equal(await store.update(() => 'written', { waitMs: 0 }), 'written')
    })

    test('a serialize that throws leaves the previous value untouched, in save and in update', async (t) => {
      const keyPrefix = freshPrefix()
      const store = await open(t, {
        keyPrefix,
        serialize: (value) => {
          if (value === 'poison') throw new Error('cannot serialize')
          return JSON.stringify(value)
        }
      })
      await store.save('good')
      await assert.rejects(store.save('poison'), { code: 'FST_CREDENTIALS_SERIALIZE' })
      assert.equal(await store.load(), 'good')

      await assert.rejects(store.update(() => 'poison'), { code: 'FST_CREDENTIALS_SERIALIZE' })
      assert.equal(await store.load(), 'good')
      // The failed update let go of the key.
      assert.equal(await store.update((current) => `${current as string}!`, { waitMs: 0 }), 'good!')

      // Values JSON cannot represent are refused by the default serializer instead of stored as nothing.
      const json = await open(t, { keyPrefix: freshPrefix() })
      await json.save('kept')
      await assert.rejects(json.save(undefined), { code: 'FST_CREDENTIALS_SERIALIZE' })
      await assert.rejects(json.save(() => 1), { code: 'FST_CREDENTIALS_SERIALIZE' })
      assert.equal(await json.load(), 'kept')
    })

    test('jsonSerializer refuses prototype poisoning', async (t) => {
      const keyPrefix = freshPrefix()
      const store = await open(t, { keyPrefix })
      const poisons = ['{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}']
      for (const text of poisons) {
        // JSON.parse makes "__proto__" an own property, so the default serializer writes it back
        // as is: the poisoned bytes reach the store through the public API on every backend.
        await store.save(JSON.parse(text))
        await assert.rejects(store.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
        if (redis !== undefined) {
          const client = redis.client()
          assert.equal(await client.get(`${keyPrefix}default`), text)
          await client.set(`${keyPrefix}default`, ` ${text.replace(':', ' : ')}`)
          await assert.rejects(store.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
        }
      }
      assert.equal(({} as Record<string, unknown>).polluted, undefined)
      await store.save({ plain: { nested: true } })
      assert.deepEqual(await store.load(), { plain: { nested: true } })
    })

    test('update: fn sees the latest saved value, no two fn overlap, the result is saved and returned', async (t) => {
      for (const [label, a, b] of await contenders(t, { keyPrefix: freshPrefix() })) {
        await t.test(label, async () => {
          await a.save(0)
          let active = 0
          let maxActive = 0
          const seen: number[] = []
          const results = await Promise.all(range(1, 20).map((i) => (i % 2 === 0 ? a : b).update(async (current) => {
            active++
            maxActive = Math.max(maxActive, active)
            seen.push(current as number)
            // Awaits inside fn give any overlapping caller the chance to run.
            await sleep(1)
            await new Promise<void>((resolve) => setImmediate(resolve))
            active--
            return (current as number) + 1
          }, { waitMs: 30_000 })))
          assert.equal(maxActive, 1, 'two fn ran at once')
          assert.deepEqual([...seen].sort((x, y) => x - y), range(0, 19), 'every fn saw the value its predecessor saved')
          assert.deepEqual((results as number[]).sort((x, y) => x - y), range(1, 20))
          await expectLoad(a, 20)
          await expectLoad(b, 20)
        })
      }
    })

    test('update past waitMs fails with FST_CREDENTIALS_LOCK_TIMEOUT and writes nothing', async (t) => {
      for (const [label, a, b] of await contenders(t, { keyPrefix: freshPrefix() })) {
        await t.test(label, async () => {
          await a.save('before')
          const entered = deferred()
          const gate = deferred()
          const holder = a.update(async () => {
            entered.resolve()
            await gate.promise
            return 'holder'
          })
          await entered.promise

          let waiterRan = false
          const waitMs = 200
          const startedAt = performance.now()
          await assert.rejects(b.update(() => { waiterRan = true; return 'waiter' }, { waitMs }),
            { code: 'FST_CREDENTIALS_LOCK_TIMEOUT' })
          const waited = performance.now() - startedAt
          assert.ok(waited >= waitMs - 5, `gave up after ${waited} ms, before waitMs`)
          assert.equal(waiterRan, false)
          assert.equal(await b.load(), 'before')

          gate.resolve()
          assert.equal(await holder, 'holder')
          assert.equal(await a.load(), 'holder')
          await expectLoad(b, 'holder')
        })
      }
    })

    test('a fn that outlives lockTtlMs loses the key, and its late save is refused', async (t) => {
      for (const [label, a, b] of await contenders(t, { keyPrefix: freshPrefix() })) {
        await t.test(label, async () => {
          const lockTtlMs = 300
          await a.save('initial')
          const entered = deferred()
          const gate = deferred()
          const holderCalledAt = performance.now()
          const holder = a.update(async () => {
            entered.resolve()
            await gate.promise
            return 'late'
          }, { lockTtlMs })
          // Observe the outcome early so the rejection is never unhandled while the test goes on.
          const holderOutcome = holder.then(() => undefined, (err: unknown) => err)
          await entered.promise

          let nextEnteredAt = 0
          const next = await b.update((current) => {
            nextEnteredAt = performance.now()
            assert.equal(current, 'initial', 'the stale holder wrote nothing')
            return 'newer'
          }, { waitMs: 10_000 })
          assert.equal(next, 'newer')
          const after = nextEnteredAt - holderCalledAt
          assert.ok(after >= lockTtlMs - 5, `the key was handed over after ${after} ms, before lockTtlMs`)
          assert.ok(after < lockTtlMs + 5_000, `the key was handed over only after ${after} ms`)

          gate.resolve()
          const err = await holderOutcome as NodeJS.ErrnoException
          assert.equal(err?.code, 'FST_CREDENTIALS_LOCK_LOST')
          assert.equal(await a.load(), 'newer')
          assert.equal(await b.load(), 'newer')
          // Nobody holds the key now.
          assert.equal(await a.update(() => 'free', { waitMs: 0 }), 'free')
        })
      }
    })

    test('a throwing fn writes nothing and frees the key', async (t) => {
      for (const [label, a, b] of await contenders(t, { keyPrefix: freshPrefix() })) {
        await t.test(label, async () => {
          await a.save('kept')
          await assert.rejects(a.update(() => { throw new Error('sync boom') }), /sync boom/)
          assert.equal(await a.load(), 'kept')
          await assert.rejects(a.update(async () => { await sleep(5); throw new Error('async boom') }), /async boom/)
          assert.equal(await b.load(), 'kept')
          // waitMs 0: this only succeeds if the failed update released the key at once.
          assert.equal(await b.update((current) => `${current as string}+`, { waitMs: 0 }), 'kept+')
          await expectLoad(a, 'kept+')
        })
      }
    })
  })
}
