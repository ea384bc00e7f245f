import { randomBytes } from 'node:crypto'
import { hashApiKey } from './hash'
import { InvalidOptionError } from '../errors'

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
// 27 base62 characters carry 27 * log2(62) ≈ 160.8 bits, the minimum the contract asks for.
const RANDOM_LENGTH = 27
const CHECKSUM_LENGTH = 6 // 62^6 > 2^32, so any CRC32 fits
const BODY = /^[0-9A-Za-z]+$/
const PREFIX = /^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/

const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** CRC32 of the text's UTF-8 bytes; an ASCII text (every key's head) is read without a copy. */
function crc32 (text: string): number {
  let crc = 0xffffffff
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code > 0x7f) return crc32OfBytes(Buffer.from(text, 'utf8'))
    crc = CRC_TABLE[(crc ^ code) & 0xff] ^ (crc >>> 8)
  }
  return (crc ^ 0xffffffff) >>> 0
}

function crc32OfBytes (bytes: Buffer): number {
  let crc = 0xffffffff
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

function checksum (text: string): string {
  let n = crc32(text)
  let out = ''
  for (let i = 0; i < CHECKSUM_LENGTH; i++) {
    out = BASE62[n % 62] + out
    n = Math.floor(n / 62)
  }
  return out
}

function randomBase62 (length: number): string {
  let out = ''
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      // 248 = 4 * 62: rejecting the top values keeps every character equally likely.
      if (byte < 248 && out.length < length) out += BASE62[byte % 62]
    }
  }
  return out
}

export function assertKeyPrefix (prefix: unknown, option: string): asserts prefix is string {
  if (typeof prefix !== 'string' || !PREFIX.test(prefix)) {
    throw new InvalidOptionError(option, 'must be 1 to 32 letters, digits, "_" or "-", starting with a letter or digit')
  }
}

export interface GeneratedApiKey {
  /** The plaintext key: show it once, store only `hash`. */
  key: string
  hash: string
}

/** A key in GitHub's token format: `${prefix}_`, 160+ random bits in base62, a base62 CRC32 of all before it. */
export function generateApiKey (options: { prefix: string }): GeneratedApiKey {
  assertKeyPrefix(options?.prefix, 'prefix')
  const head = `${options.prefix}_${randomBase62(RANDOM_LENGTH)}`
  const key = head + checksum(head)
  return { key, hash: hashApiKey(key) }
}

/**
 * Checks prefix, length, alphabet and checksum without any I/O. The checksum only filters
 * typos and junk cheaply; it proves nothing about who made the key.
 */
export function isWellFormedApiKey (key: unknown, prefix: string): boolean {
  if (typeof key !== 'string' || typeof prefix !== 'string') return false
  if (key.length !== prefix.length + 1 + RANDOM_LENGTH + CHECKSUM_LENGTH) return false
  if (!key.startsWith(prefix) || key.charCodeAt(prefix.length) !== 95 /* _ */) return false
  const body = key.slice(prefix.length + 1)
  if (!BODY.test(body)) return false
  const head = key.slice(0, key.length - CHECKSUM_LENGTH)
  return checksum(head) === key.slice(-CHECKSUM_LENGTH)
}
