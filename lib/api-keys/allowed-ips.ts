import { isIPv4, isIPv6 } from 'node:net'
import type { ApiKeyRecord } from '../types'

/**
 * A record's `allowedIps`, parsed into numeric ranges once per record object. Node's
 * `net.BlockList` would parse the list as well, but its `check` builds socket addresses on every
 * call (about 2.7 µs measured on Node 20, for 10 rules as for one); comparing integers here costs
 * about 0.1 µs for a 10-entry list and an IPv4 client, 0.5 µs for an IPv6 one (measured on a
 * loaded 2-core machine). The list's entries are checked with `net.isIPv4`/`isIPv6` when parsed.
 *
 * IPv4 ranges are 32-bit network/mask pairs. IPv6 ranges are eight 16-bit groups and a prefix.
 * IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is IPv4, in the list as in the client's address.
 */
export interface AddressList {
  /** [network, mask, network, mask, ...], unsigned 32-bit. */
  readonly v4: readonly number[]
  readonly v6: ReadonlyArray<{ readonly groups: readonly number[], readonly prefix: number }>
  /**
   * The address last checked against this list, and the answer: a key is mostly used from one
   * address at a time, so most requests compare one string instead of parsing the address.
   */
  lastAddress: string | undefined
  lastAdmits: boolean
}

/** The 32-bit value of a dotted quad that `net.isIPv4` accepts; -1 for anything else. */
function ipv4Value (address: string): number {
  let value = 0
  let part = 0
  let digits = 0
  let dots = 0
  for (let i = 0; i < address.length; i++) {
    const c = address.charCodeAt(i)
    if (c === 46) {
      if (digits === 0 || ++dots > 3) return -1
      value = value * 256 + part
      part = 0
      digits = 0
    } else if (c >= 48 && c <= 57) {
      // No leading zeros, as net.isIPv4: "010" is ambiguous (octal in some parsers).
      if (digits === 1 && part === 0) return -1
      part = part * 10 + c - 48
      if (++digits > 3 || part > 255) return -1
    } else {
      return -1
    }
  }
  if (dots !== 3 || digits === 0) return -1
  return value * 256 + part
}

function hexValue (c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  if (c >= 97 && c <= 102) return c - 87
  if (c >= 65 && c <= 70) return c - 55
  return -1
}

/**
 * The eight 16-bit groups of an IPv6 address (compressed or not, with or without an embedded
 * IPv4 tail; no zone index), or undefined for anything else. One pass, on the request path.
 */
function ipv6Groups (address: string): number[] | undefined {
  const length = address.length
  const head: number[] = []
  // The groups after '::', once one was seen.
  let tail: number[] | undefined
  let groups = head
  let i = 0
  if (length >= 2 && address.charCodeAt(0) === 58) {
    if (address.charCodeAt(1) !== 58) return undefined
    groups = tail = []
    i = 2
  }
  while (i < length) {
    const start = i
    let value = 0
    for (let hex = hexValue(address.charCodeAt(i)); hex !== -1 && i < length; hex = hexValue(address.charCodeAt(++i))) {
      value = value * 16 + hex
      if (i - start >= 4) return undefined
    }
    if (i < length && address.charCodeAt(i) === 46) {
      // An embedded IPv4 address: the last 32 bits.
      const v4 = ipv4Value(address.slice(start))
      if (v4 === -1) return undefined
      groups.push(v4 >>> 16, v4 & 0xffff)
      break
    }
    if (i === start) return undefined
    groups.push(value)
    if (i === length) break
    if (address.charCodeAt(i) !== 58 || ++i === length) return undefined
    if (address.charCodeAt(i) === 58) {
      if (tail !== undefined) return undefined
      groups = tail = []
      i++
    }
  }
  if (tail === undefined) return head.length === 8 ? head : undefined
  const zeros = 8 - head.length - tail.length
  if (zeros < 1) return undefined
  for (let z = 0; z < zeros; z++) head.push(0)
  for (let t = 0; t < tail.length; t++) head.push(tail[t])
  return head
}

function isMappedIPv4 (groups: readonly number[]): boolean {
  return groups[0] === 0 && groups[1] === 0 && groups[2] === 0 && groups[3] === 0 && groups[4] === 0 && groups[5] === 0xffff
}

const MAPPED_BLOCK: readonly number[] = [0, 0, 0, 0, 0, 0xffff, 0, 0]

function maskOf (bits: number): number {
  return bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0
}

const PREFIX = /^\d{1,3}$/

/** Parses one entry into `v4`/`v6`; false when it is not an address or CIDR range. */
function addEntry (entry: unknown, v4: number[], v6: Array<{ groups: number[], prefix: number }>): boolean {
  if (typeof entry !== 'string') return false
  const slash = entry.indexOf('/')
  const address = slash === -1 ? entry : entry.slice(0, slash)
  const prefixText = slash === -1 ? undefined : entry.slice(slash + 1)
  if (prefixText !== undefined && !PREFIX.test(prefixText)) return false
  if (isIPv4(address)) {
    const bits = prefixText === undefined ? 32 : Number(prefixText)
    if (bits > 32) return false
    const mask = maskOf(bits)
    v4.push((ipv4Value(address) & mask) >>> 0, mask)
    return true
  }
  // A zone index (`fe80::1%eth0`) names an interface, not an address range.
  if (!isIPv6(address) || address.includes('%')) return false
  const bits = prefixText === undefined ? 128 : Number(prefixText)
  if (bits > 128) return false
  const groups = ipv6Groups(address)
  if (groups === undefined) return false
  if (bits >= 96 && isMappedIPv4(groups)) {
    const mask = maskOf(bits - 96)
    v4.push((((groups[6] << 16) | groups[7]) & mask) >>> 0, mask)
    return true
  }
  const range = { groups, prefix: bits }
  // A shorter range either holds all of ::ffff:0:0/96, and so every IPv4 address, or none of it.
  if (bits < 96 && inV6Range(MAPPED_BLOCK, range)) v4.push(0, 0)
  v6.push(range)
  return true
}

/** The parsed list, or undefined when it is malformed (not an array, or any entry bad). */
export function parseAddressList (list: unknown): AddressList | undefined {
  if (!Array.isArray(list)) return undefined
  const v4: number[] = []
  const v6: Array<{ groups: number[], prefix: number }> = []
  for (const entry of list) {
    if (!addEntry(entry, v4, v6)) return undefined
  }
  return { v4, v6, lastAddress: undefined, lastAdmits: false }
}

function inV6Range (groups: readonly number[], range: AddressList['v6'][number]): boolean {
  let bits = range.prefix
  for (let i = 0; bits > 0; i++, bits -= 16) {
    const mask = bits >= 16 ? 0xffff : (0xffff << (16 - bits)) & 0xffff
    if ((groups[i] & mask) !== (range.groups[i] & mask)) return false
  }
  return true
}

function admitsV4 (list: AddressList, value: number): boolean {
  const v4 = list.v4
  for (let i = 0; i < v4.length; i += 2) {
    if (((value & v4[i + 1]) >>> 0) === v4[i]) return true
  }
  return false
}

/** Whether `address` (Fastify's `request.ip`) is in the list; anything that is not an address is not. */
export function admitsAddress (list: AddressList, address: string | undefined): boolean {
  if (typeof address !== 'string') return false
  if (address === list.lastAddress) return list.lastAdmits
  const admits = checkAddress(list, address)
  list.lastAddress = address
  list.lastAdmits = admits
  return admits
}

function checkAddress (list: AddressList, address: string): boolean {
  const value = ipv4Value(address)
  if (value !== -1) return admitsV4(list, value)
  const zone = address.indexOf('%')
  const groups = ipv6Groups(zone === -1 ? address : address.slice(0, zone))
  if (groups === undefined) return false
  if (isMappedIPv4(groups)) return admitsV4(list, ((groups[6] << 16) | groups[7]) >>> 0)
  for (const range of list.v6) {
    if (inV6Range(groups, range)) return true
  }
  return false
}

/**
 * Parsed lists by record object. Records are filled into it when they are validated (see
 * record.ts), so that a request reads a parsed list and never parses one.
 */
const parsedLists = new WeakMap<object, AddressList>()

/**
 * Lists parsed lately, by their JSON text: the redis backend decodes a new record object on
 * every request, and many records carry the same list (an office, a VPC), so each distinct list
 * is parsed once per process while it is in use. Bounded; emptied when full.
 */
const RECENT_LISTS = 1000
const recentLists = new Map<string, AddressList>()

/** Parses and remembers the record's `allowedIps`; false when the list is malformed. */
export function rememberAddressList (record: object, list: unknown): boolean {
  if (!Array.isArray(list)) return false
  // Read once into strings, so that the memo's key and the parse see the very same entries.
  const entries: string[] = []
  for (let i = 0; i < list.length; i++) {
    const entry: unknown = list[i]
    if (typeof entry !== 'string') return false
    entries.push(entry)
  }
  const text = JSON.stringify(entries)
  let parsed = recentLists.get(text)
  if (parsed === undefined) {
    parsed = parseAddressList(entries)
    if (parsed === undefined) return false
    if (recentLists.size >= RECENT_LISTS) recentLists.clear()
    recentLists.set(text, parsed)
  }
  parsedLists.set(record, parsed)
  return true
}

/**
 * The parsed `allowedIps` of a record that has one; undefined when it is malformed. A record
 * validated on its way into the cache is found at once; any other is parsed here, once.
 */
export function addressListOf (record: ApiKeyRecord): AddressList | undefined {
  const parsed = parsedLists.get(record)
  if (parsed !== undefined) return parsed
  return rememberAddressList(record, record.allowedIps) ? parsedLists.get(record) : undefined
}
