import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, test } from 'node:test'
import { crc32 } from 'node:zlib'
import { generateApiKey, hashApiKey, isWellFormedApiKey } from '../lib'

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
const RANDOM_LENGTH = 27
const CHECKSUM_LENGTH = 6

/** The checksum as the contract describes it, computed independently of lib: base62 CRC32, 6 digits. */
function expectedChecksum (head: string): string {
  let n = crc32(Buffer.from(head, 'utf8'))
  let digits = ''
  for (let i = 0; i < CHECKSUM_LENGTH; i++) {
    digits = BASE62[n % 62] + digits
    n = Math.floor(n / 62)
  }
  return digits
}

/** A key built by hand in the documented format, so isWellFormedApiKey is checked against the spec, not itself. */
function handMade (prefix: string, body: string): string {
  const head = `${prefix}_${body}`
  return head + expectedChecksum(head)
}

function sha256 (text: string): string {
  return createHash('sha256').update(Buffer.from(text, 'utf8')).digest('hex')
}

describe('generateApiKey', () => {
  test('prefix, underscore, 27 base62 random characters, 6-character CRC32 checksum; hash = hashApiKey(key)', () => {
    for (const prefix of ['live', 'test', 'a', 'ACME-prod_v2', 'p'.repeat(32)]) {
      const { key, hash } = generateApiKey({ prefix })
      assert.equal(key.length, prefix.length + 1 + RANDOM_LENGTH + CHECKSUM_LENGTH)
      assert.ok(key.startsWith(`${prefix}_`), key)
      const body = key.slice(prefix.length + 1)
      assert.match(body, /^[0-9A-Za-z]{33}$/)
      const head = key.slice(0, -CHECKSUM_LENGTH)
      assert.equal(key.slice(-CHECKSUM_LENGTH), expectedChecksum(head))
      assert.equal(hash, hashApiKey(key))
      assert.equal(hash, sha256(key))
      assert.ok(isWellFormedApiKey(key, prefix))
    }
  })

  test('the random part carries at least 160 bits: every base62 character is used, evenly, and keys never repeat', () => {
    assert.ok(RANDOM_LENGTH * Math.log2(62) >= 160)
    const keys = new Set<string>()
    const counts = new Map<string, number>()
    const samples = 3000
    for (let i = 0; i < samples; i++) {
      const { key } = generateApiKey({ prefix: 'rnd' })
      keys.add(key)
      for (const char of key.slice(4, 4 + RANDOM_LENGTH)) counts.set(char, (counts.get(char) ?? 0) + 1)
    }
    assert.equal(keys.size, samples)
    assert.equal(counts.size, 62, 'all 62 characters appear')
    // 81 000 draws over 62 characters: about 1306 each; a biased or narrower generator lands far outside.
    const expected = (samples * RANDOM_LENGTH) / 62
    for (const [char, count] of counts) {
      assert.ok(Math.abs(count - expected) < expected * 0.2, `"${char}" appeared ${count} times, expected about ${Math.round(expected)}`)
    }
  })

  test('a bad prefix throws FST_AUTH_CACHE_INVALID_OPTION', () => {
    const bad: unknown[] = ['', 'has space', '_underscore', '-dash', 'p'.repeat(33), 'émoji', 'a.b', 5, null, undefined]
    for (const prefix of bad) {
      assert.throws(() => generateApiKey({ prefix } as { prefix: string }), { code: 'FST_AUTH_CACHE_INVALID_OPTION' }, String(prefix))
    }
    assert.throws(() => (generateApiKey as (options?: unknown) => unknown)(), { code: 'FST_AUTH_CACHE_INVALID_OPTION' })
  })
})

describe('isWellFormedApiKey', () => {
  test('accepts a key built by hand in the documented format', () => {
    const body = 'Z'.repeat(RANDOM_LENGTH)
    assert.ok(isWellFormedApiKey(handMade('live', body), 'live'))
    assert.ok(isWellFormedApiKey(handMade('live', '0123456789abcdefghijABCDEFG'), 'live'))
  })

  test('the checksum is over UTF-8 bytes also when the prefix given to it is not ASCII', () => {
    const body = 'A'.repeat(RANDOM_LENGTH)
    for (const prefix of ['clé', 'キー', 'k😀']) {
      assert.equal(isWellFormedApiKey(handMade(prefix, body), prefix), true, prefix)
      // The checksum of the UTF-16 code units instead of the bytes would differ.
      const head = `${prefix}_${body}`
      const overCodeUnits = crc32(Buffer.from(head, 'latin1'))
      assert.notEqual(overCodeUnits, crc32(Buffer.from(head, 'utf8')))
    }
  })

  test('detects every single-character substitution, in the random part and in the checksum', () => {
    for (let round = 0; round < 3; round++) {
      const prefix = 'live'
      const { key } = generateApiKey({ prefix })
      for (let position = prefix.length + 1; position < key.length; position++) {
        for (const char of BASE62) {
          if (char === key[position]) continue
          const corrupt = key.slice(0, position) + char + key.slice(position + 1)
          assert.equal(isWellFormedApiKey(corrupt, prefix), false, `${position}: ${corrupt}`)
        }
      }
    }
  })

  test('detects two swapped neighbouring characters', () => {
    const { key } = generateApiKey({ prefix: 'live' })
    for (let position = 5; position < key.length - 1; position++) {
      if (key[position] === key[position + 1]) continue
      const swapped = key.slice(0, position) + key[position + 1] + key[position] + key.slice(position + 2)
      assert.equal(isWellFormedApiKey(swapped, 'live'), false, swapped)
    }
  })

  test('refuses a wrong prefix, even with a valid checksum for it', () => {
    const { key } = generateApiKey({ prefix: 'live' })
    assert.equal(isWellFormedApiKey(key, 'test'), false)
    assert.equal(isWellFormedApiKey(key, 'liv'), false)
    assert.equal(isWellFormedApiKey(key, 'Live'), false)
    const body = key.slice(5, 5 + RANDOM_LENGTH)
    assert.equal(isWellFormedApiKey(handMade('test', body), 'live'), false)
    assert.equal(isWellFormedApiKey(handMade('livf', body), 'live'), false)
    // The separator is part of the format.
    const dashed = `live-${body}`
    assert.equal(isWellFormedApiKey(dashed + expectedChecksum(dashed), 'live'), false)
  })

  test('refuses a wrong length, even with a valid checksum', () => {
    const { key } = generateApiKey({ prefix: 'live' })
    assert.equal(isWellFormedApiKey(key + 'A', 'live'), false)
    assert.equal(isWellFormedApiKey(key.slice(0, -1), 'live'), false)
    assert.equal(isWellFormedApiKey(handMade('live', 'A'.repeat(RANDOM_LENGTH - 1)), 'live'), false)
    assert.equal(isWellFormedApiKey(handMade('live', 'A'.repeat(RANDOM_LENGTH + 1)), 'live'), false)
    assert.equal(isWellFormedApiKey(handMade('live', ''), 'live'), false)
  })

  test('refuses characters outside base62, even with a valid checksum', () => {
    for (const odd of ['-', '_', '+', '/', '=', ' ', 'é', '\u0000']) {
      const body = 'A'.repeat(13) + odd + 'A'.repeat(RANDOM_LENGTH - 14)
      assert.equal(isWellFormedApiKey(handMade('live', body), 'live'), false, JSON.stringify(odd))
    }
  })

  test('refuses what is not a string', () => {
    const { key } = generateApiKey({ prefix: 'live' })
    for (const value of [undefined, null, 42, {}, [key], Buffer.from(key)]) {
      assert.equal(isWellFormedApiKey(value, 'live'), false)
    }
  })
})

describe('hashApiKey', () => {
  test('lower-case hex SHA-256 of the UTF-8 key', () => {
    assert.equal(hashApiKey('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
    assert.equal(hashApiKey(''), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')
    for (const key of ['clé-ключ-鍵-🔑', 'ÀB\u00a0c', 'k'.repeat(1024)]) {
      const hash = hashApiKey(key)
      assert.match(hash, /^[0-9a-f]{64}$/)
      assert.equal(hash, sha256(key))
    }
    // UTF-8, not Latin-1 or UTF-16: the same characters in another encoding hash differently.
    const key = 'clé'
    assert.notEqual(hashApiKey(key), createHash('sha256').update(Buffer.from(key, 'latin1')).digest('hex'))
    assert.notEqual(hashApiKey(key), createHash('sha256').update(Buffer.from(key, 'utf16le')).digest('hex'))
  })
})
