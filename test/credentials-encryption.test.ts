import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, test, before, after, type TestContext } from 'node:test'
import { encryptedSerializer, jsonSerializer, type CredentialSerializer, type CredentialStore } from '../lib'
import { openCredentialStore } from './helpers/credential-store-app'
import { startRedis, type RedisServer } from './helpers/redis-server'

type Store = CredentialStore<unknown>

const k1 = randomBytes(32)
const k2 = randomBytes(32)
const secret = { accessToken: 'at-3c1f9e-very-secret', refreshToken: 'rt-77ab-very-secret', expiresAt: 1_900_000_000_000 }
const ctx = { key: 'credentials:default' }

const isInvalidOption = (name: string) => (err: NodeJS.ErrnoException): boolean => {
  assert.equal(err.code, 'FST_AUTH_CACHE_INVALID_OPTION')
  assert.ok(err.message.includes(name), `"${err.message}" should name ${name}`)
  return true
}

/** The serializer refuses `raw` with FST_CREDENTIALS_DESERIALIZE, synchronously over the default inner serializer. */
function failsToDecrypt (serializer: CredentialSerializer<unknown>, raw: Buffer, context = ctx): void {
  assert.throws(() => serializer.deserialize(raw, context), (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, 'FST_CREDENTIALS_DESERIALIZE')
    assert.ok(err.message.includes(context.key), 'the message names the storage key')
    assert.ok(err.cause !== undefined, 'the cause is kept')
    return true
  })
}

describe('encryptedSerializer on its own', () => {
  const serializer = encryptedSerializer({ keys: { k1 }, current: 'k1' })

  test('over the default JSON serializer it is synchronous: serialize answers a Buffer, deserialize the value', () => {
    const raw = serializer.serialize(secret, ctx)
    assert.ok(Buffer.isBuffer(raw), 'a Buffer, not a promise')
    assert.deepEqual(serializer.deserialize(raw, ctx), secret)
  })

  test('over an asynchronous inner serializer it answers promises, and its failures are FST_CREDENTIALS_DESERIALIZE too', async () => {
    const inner: CredentialSerializer<string> = {
      serialize: async (value) => Buffer.from(value),
      deserialize: async (raw) => {
        if (raw.toString() === 'bad') throw new Error('inner refused')
        return raw.toString()
      }
    }
    const wrapped = encryptedSerializer({ keys: { k1 }, current: 'k1' }, inner)
    const pending = wrapped.serialize('abc', ctx)
    assert.ok(pending instanceof Promise)
    const raw = await pending as Buffer
    assert.equal(await wrapped.deserialize(raw, ctx), 'abc')
    await assert.rejects(async () => await wrapped.deserialize(await wrapped.serialize('bad', ctx) as Buffer, ctx),
      (err: NodeJS.ErrnoException) => err.code === 'FST_CREDENTIALS_DESERIALIZE' && (err.cause as Error).message === 'inner refused')
    // An envelope that does not open fails before the inner serializer is asked.
    assert.throws(() => wrapped.deserialize(Buffer.from('junk'), ctx), { code: 'FST_CREDENTIALS_DESERIALIZE' })
  })

  test('round trip, a fresh IV per value, the key id readable in the envelope, no plaintext', async () => {
    const first = await serializer.serialize(secret, ctx) as Buffer
    const second = await serializer.serialize(secret, ctx) as Buffer
    assert.ok(Buffer.isBuffer(first))
    assert.notDeepEqual(first, second, 'two encryptions of one value must differ')
    assert.deepEqual(await serializer.deserialize(first, ctx), secret)
    assert.deepEqual(await serializer.deserialize(second, ctx), secret)
    assert.ok(first.includes(Buffer.from('k1')), 'the key id is in the envelope')
    assert.ok(!first.includes(Buffer.from('very-secret')), 'no plaintext in the envelope')
    // Same length, same key, same value: only randomness (the IV) can tell them apart.
    assert.equal(first.length, second.length)
  })

  test('keys as Buffers and as base64 strings are interchangeable', async () => {
    const fromBase64 = encryptedSerializer({ keys: { k1: k1.toString('base64') }, current: 'k1' })
    assert.deepEqual(await fromBase64.deserialize(await serializer.serialize(secret, ctx) as Buffer, ctx), secret)
    assert.deepEqual(await serializer.deserialize(await fromBase64.serialize(secret, ctx) as Buffer, ctx), secret)
  })

  test('changing the caller\'s key Buffer after creation changes nothing', async () => {
    const key = Buffer.from(k1)
    const copyHolder = encryptedSerializer({ keys: { k1: key }, current: 'k1' })
    key.fill(0)
    assert.deepEqual(await serializer.deserialize(await copyHolder.serialize(secret, ctx) as Buffer, ctx), secret)
  })

  test('every flipped byte, every truncation and foreign bytes fail to load', async () => {
    const raw = await serializer.serialize(secret, ctx) as Buffer
    for (let i = 0; i < raw.length; i++) {
      const tampered = Buffer.from(raw)
      tampered[i] ^= 0x01
      failsToDecrypt(serializer, tampered)
    }
    for (let length = 0; length < raw.length; length++) failsToDecrypt(serializer, raw.subarray(0, length))
    failsToDecrypt(serializer, Buffer.concat([raw, Buffer.from([0])]))

    // Same id, another key: another deployment's (or an attacker's) ciphertext.
    const foreign = encryptedSerializer({ keys: { k1: k2 }, current: 'k1' })
    failsToDecrypt(serializer, await foreign.serialize(secret, ctx) as Buffer)
    failsToDecrypt(serializer, Buffer.from(jsonSerializer.serialize(secret, ctx) as string))
    failsToDecrypt(serializer, Buffer.from('{}'))
    failsToDecrypt(serializer, randomBytes(raw.length))
  })

  test('ctx.key is authenticated: bytes made for one storage key do not load under another', async () => {
    const raw = await serializer.serialize(secret, { key: 'credentials:a' }) as Buffer
    assert.deepEqual(await serializer.deserialize(raw, { key: 'credentials:a' }), secret)
    failsToDecrypt(serializer, raw, { key: 'credentials:b' })
    failsToDecrypt(serializer, raw, { key: 'credentials:a ' })
  })

  test('wraps a given inner serializer and hands it ctx', async () => {
    const seen: string[] = []
    const inner: CredentialSerializer<string> = {
      serialize: (value, context) => { seen.push(`s:${context.key}`); return Buffer.from(value.split('').reverse().join('')) },
      deserialize: (raw, context) => { seen.push(`d:${context.key}`); return raw.toString().split('').reverse().join('') }
    }
    const wrapped = encryptedSerializer({ keys: { k1 }, current: 'k1' }, inner)
    const raw = await wrapped.serialize('abc', ctx) as Buffer
    assert.ok(!raw.includes(Buffer.from('cba')))
    assert.equal(await wrapped.deserialize(raw, ctx), 'abc')
    assert.deepEqual(seen, [`s:${ctx.key}`, `d:${ctx.key}`])
  })

  test('a key that is not 32 bytes fails with FST_AUTH_CACHE_INVALID_OPTION when the serializer is made', () => {
    const bad: Array<Buffer | string> = [
      randomBytes(16), randomBytes(31), randomBytes(33), Buffer.alloc(0),
      randomBytes(31).toString('base64'), randomBytes(48).toString('base64'), '', 'not base64 at all!'
    ]
    for (const key of bad) {
      assert.throws(() => encryptedSerializer({ keys: { k1, broken: key }, current: 'k1' }), isInvalidOption('broken'))
    }
  })

  test('`current` that is not one of the keys fails with FST_AUTH_CACHE_INVALID_OPTION', () => {
    assert.throws(() => encryptedSerializer({ keys: { k1 }, current: 'k2' }), isInvalidOption('current'))
    assert.throws(() => encryptedSerializer({ keys: {}, current: 'k1' }), isInvalidOption('current'))
    assert.throws(() => encryptedSerializer({ keys: { k1 }, current: undefined as unknown as string }), isInvalidOption('current'))
  })
})

for (const backend of ['memory', 'redis', 'tiered'] as const) {
  test(`encrypted credentials round trip through the ${backend} store`, async (t) => {
    const redis = backend !== 'memory' ? await startRedis() : undefined
    t.after(async () => { await redis?.destroy() })
    const store = await openCredentialStore(t, redis, { ...encryptedSerializer({ keys: { k1 }, current: 'k1' }) }, backend)
    assert.equal(await store.load(), undefined)
    await store.save(secret)
    assert.deepEqual(await store.load(), secret)
    assert.deepEqual(await store.update((current) => ({ ...(current as typeof secret), accessToken: 'at-2' })),
      { ...secret, accessToken: 'at-2' })
    assert.deepEqual(await store.load(), { ...secret, accessToken: 'at-2' })
  })
}

describe('encrypted credentials in Redis', () => {
  let redis: RedisServer
  let prefixes = 0

  before(async () => { redis = await startRedis() })
  after(async () => { await redis.destroy() })

  const freshPrefix = (): string => `enc-${++prefixes}:`

  /** Another app on the shared Redis: a process of the same deployment, maybe with other keys. */
  const open = (t: TestContext, keyPrefix: string, serializer: CredentialSerializer<unknown>): Promise<Store> =>
    openCredentialStore(t, redis, { keyPrefix, serialize: serializer.serialize, deserialize: serializer.deserialize })

  function rawClient (t: TestContext): ReturnType<RedisServer['client']> {
    const client = redis.client()
    t.after(() => client.quit())
    return client
  }

  test('stored bytes are ciphertext tagged with the key id, fresh for every save', async (t) => {
    const keyPrefix = freshPrefix()
    const store = await open(t, keyPrefix, encryptedSerializer({ keys: { 'key-2024': k1 }, current: 'key-2024' }))
    const client = rawClient(t)
    await store.save(secret)
    const first = await client.getBuffer(`${keyPrefix}default`)
    assert.ok(first !== null)
    assert.ok(first.includes(Buffer.from('key-2024')))
    assert.ok(!first.includes(Buffer.from('very-secret')))
    await store.save(secret)
    const second = await client.getBuffer(`${keyPrefix}default`)
    assert.ok(second !== null)
    assert.notDeepEqual(first, second)
    assert.deepEqual(await store.load(), secret)
  })

  test('rotation: old values load while their id is kept, new saves use current, dropping the id retires them', async (t) => {
    const keyPrefix = freshPrefix()
    const client = rawClient(t)
    const before = await open(t, keyPrefix, encryptedSerializer({ keys: { k1 }, current: 'k1' }))
    await before.save(secret)
    await before.scope('untouched').save('written under k1')

    // Rolled out: k2 is current, k1 still known (base64 here, as it would come from the environment).
    const during = await open(t, keyPrefix, encryptedSerializer({ keys: { k1: k1.toString('base64'), k2 }, current: 'k2' }))
    assert.deepEqual(await during.load(), secret)
    assert.equal(await during.scope('untouched').load(), 'written under k1')
    const rotated = { ...secret, accessToken: 'at-rotated' }
    await during.save(rotated)
    const raw = await client.getBuffer(`${keyPrefix}default`)
    assert.ok(raw !== null && raw.includes(Buffer.from('k2')) && !raw.includes(Buffer.from('k1')))
    assert.deepEqual(await during.load(), rotated)
    // A process still on the old keys cannot read what the new key wrote.
    await assert.rejects(before.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
    // update re-encrypts: read under k1, written under k2.
    await before.scope('migrated').save('old value')
    assert.equal(await during.scope('migrated').update((current) => `${current as string}, migrated`), 'old value, migrated')
    assert.ok((await client.getBuffer(`${keyPrefix}migrated`))!.includes(Buffer.from('k2')))

    // k1 retired.
    const afterRotation = await open(t, keyPrefix, encryptedSerializer({ keys: { k2 }, current: 'k2' }))
    assert.deepEqual(await afterRotation.load(), rotated)
    assert.equal(await afterRotation.scope('migrated').load(), 'old value, migrated')
    const untouched = await client.getBuffer(`${keyPrefix}untouched`)
    await assert.rejects(afterRotation.scope('untouched').load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
    assert.deepEqual(await client.getBuffer(`${keyPrefix}untouched`), untouched, 'a failed load leaves the bytes')
  })

  test('tampered, truncated, foreign and plain JSON bytes fail with FST_CREDENTIALS_DESERIALIZE', async (t) => {
    const keyPrefix = freshPrefix()
    const fullKey = `${keyPrefix}default`
    const store = await open(t, keyPrefix, encryptedSerializer({ keys: { k1 }, current: 'k1' }))
    const client = rawClient(t)
    await store.save(secret)
    const good = (await client.getBuffer(fullKey))!

    const tampered = Buffer.from(good)
    tampered[tampered.length - 3] ^= 0x80
    const foreignStore = await open(t, freshPrefix(), encryptedSerializer({ keys: { k1: k2 }, current: 'k1' }))
    const foreign = await encryptedSerializer({ keys: { k1: k2 }, current: 'k1' }).serialize(secret, { key: fullKey }) as Buffer
    const cases: Array<[string, Buffer]> = [
      ['a tampered byte', tampered],
      ['truncated bytes', good.subarray(0, good.length - 1)],
      ['only the header', good.subarray(0, 8)],
      ['bytes of another key under the same id', foreign],
      ['plain JSON', Buffer.from(JSON.stringify(secret))]
    ]
    for (const [what, bytes] of cases) {
      await client.set(fullKey, bytes)
      await assert.rejects(store.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' }, what)
      assert.deepEqual(await client.getBuffer(fullKey), bytes, `${what}: a failed load leaves the bytes`)
    }
    // The foreign serializer itself reads its own bytes: the failure above is the key, not the envelope.
    await foreignStore.save(secret)
    assert.deepEqual(await foreignStore.load(), secret)

    await client.set(fullKey, good)
    assert.deepEqual(await store.load(), secret)
  })

  test('bytes copied under another storage key do not load there', async (t) => {
    const keyPrefix = freshPrefix()
    const serializer = encryptedSerializer({ keys: { k1 }, current: 'k1' })
    const store = await open(t, keyPrefix, serializer)
    const client = rawClient(t)
    const alice = store.scope('alice')
    const bob = store.scope('bob')
    await alice.save({ owner: 'alice' })
    await bob.save({ owner: 'bob' })

    const aliceBytes = (await client.getBuffer(`${keyPrefix}alice`))!
    const bobBytes = (await client.getBuffer(`${keyPrefix}bob`))!
    await client.set(`${keyPrefix}alice`, bobBytes)
    await client.set(`${keyPrefix}bob`, aliceBytes)
    await assert.rejects(alice.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })
    await assert.rejects(bob.load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })

    // Same key name, other prefix: still another storage key.
    const otherPrefix = freshPrefix()
    const elsewhere = await open(t, otherPrefix, serializer)
    await client.set(`${otherPrefix}alice`, aliceBytes)
    await assert.rejects(elsewhere.scope('alice').load(), { code: 'FST_CREDENTIALS_DESERIALIZE' })

    // Put back where they were made, they load again.
    await client.set(`${keyPrefix}alice`, aliceBytes)
    assert.deepEqual(await alice.load(), { owner: 'alice' })
  })
})
