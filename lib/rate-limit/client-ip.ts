import { isIPv6 } from 'node:net'

// Requests from one IPv6 /64 (what one subscriber usually gets) share one budget.
const IPV6_NETWORK_GROUPS = 4

/** The 8 groups of an IPv6 address (no zone), or undefined when it is not one. */
function ipv6Groups (address: string): number[] | undefined {
  let text = address
  const groups: number[] = []
  // An embedded IPv4 tail (::ffff:192.0.2.1) is the last two groups.
  const lastColon = text.lastIndexOf(':')
  const tail = text.slice(lastColon + 1)
  let tailGroups: number[] = []
  if (tail.includes('.')) {
    const bytes = tail.split('.').map(Number)
    tailGroups = [(bytes[0] << 8) | bytes[1], (bytes[2] << 8) | bytes[3]]
    text = text.slice(0, lastColon + 1) + '0:0'
  }
  const parse = (part: string): number[] => part === '' ? [] : part.split(':').map((group) => parseInt(group, 16))
  const gap = text.indexOf('::')
  if (gap === -1) {
    groups.push(...parse(text))
  } else {
    const head = parse(text.slice(0, gap))
    const rest = parse(text.slice(gap + 2))
    groups.push(...head, ...new Array<number>(Math.max(0, 8 - head.length - rest.length)).fill(0), ...rest)
  }
  if (groups.length !== 8 || groups.some((group) => !(group >= 0 && group <= 0xffff))) return undefined
  if (tailGroups.length > 0) groups.splice(6, 2, ...tailGroups)
  return groups
}

/** RFC 5952: lower-case hex without leading zeros, the longest run of two or more zero groups as `::`. */
function formatIPv6 (groups: number[]): string {
  let bestStart = -1
  let bestLength = 1
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++
      continue
    }
    let end = i
    while (end < 8 && groups[end] === 0) end++
    if (end - i > bestLength) {
      bestStart = i
      bestLength = end - i
    }
    i = end
  }
  const hex = groups.map((group) => group.toString(16))
  if (bestStart === -1) return hex.join(':')
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`
}

/**
 * What @fastify/rate-limit counts a client by when no key generator is given: the IP address,
 * with an IPv4-mapped IPv6 address as its IPv4 form and any other IPv6 address as its /64.
 */
export function clientIpKey (ip: string): string {
  if (!isIPv6(ip)) return ip.toLowerCase()
  const zone = ip.indexOf('%')
  const groups = ipv6Groups((zone === -1 ? ip : ip.slice(0, zone)).toLowerCase())
  if (groups === undefined) return ip.toLowerCase()
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) {
    return `${groups[6] >> 8}.${groups[6] & 255}.${groups[7] >> 8}.${groups[7] & 255}`
  }
  for (let i = IPV6_NETWORK_GROUPS; i < 8; i++) groups[i] = 0
  return formatIPv6(groups)
}
