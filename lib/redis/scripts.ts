import type { RedisScript } from './client'

/**
 * Lua run atomically on the Redis node that owns the keys. Each script names keys of one hash
 * slot, so they run on Redis Cluster too. Every script is written for a Redis that may evict
 * any key at any moment and may refuse writes when full: the absence of a key never allows a
 * write that a present key would have refused, and nothing that must happen (a delete, a
 * publish) waits behind a write that may be refused.
 */

/**
 * A fill's claim, stored under the record's own key while `lookup` runs: not JSON, so every
 * reader sees a miss. Only the claim's owner may replace it with an answer.
 */
export const CLAIM_MARK = '~claim:'

/**
 * KEYS: record. ARGV: largest value worth returning (bytes), '1' to return the PTTL, the claim
 * to leave on a miss ('' for none), the claim's TTL in ms.
 * Returns { value or false, PTTL (when asked), 1 when the claim was left }.
 * Anything under the key that is not a value we wrote (another type, oversized, a claim) is a
 * miss. On a miss the claim replaces it; a full Redis refuses the claim, and then no fill follows.
 */
export const READ_RECORD: RedisScript = {
  name: 'read',
  keys: 1,
  lua: `
local okLength, length = pcall(redis.call, 'STRLEN', KEYS[1])
if okLength and length > 0 and length <= tonumber(ARGV[1]) then
  local value = redis.call('GET', KEYS[1])
  if string.sub(value, 1, ${CLAIM_MARK.length}) ~= '${CLAIM_MARK}' then
    if ARGV[2] == '1' then return { value, redis.call('PTTL', KEYS[1]), 0 } end
    return { value, 0, 0 }
  end
end
if ARGV[3] == '' then return { false, 0, 0 } end
local claimed = pcall(redis.call, 'SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return { false, 0, claimed and 1 or 0 }
`
}

/**
 * KEYS: record. ARGV: the claim left by READ_RECORD, the value, its TTL in ms.
 * Writes only while the key still holds that very claim: a delete, a clear, an eviction or
 * another process's claim since then all refuse the fill. Returns 1 when written.
 */
export const FILL_RECORD: RedisScript = {
  name: 'fill',
  keys: 1,
  lua: `
local ok, current = pcall(redis.call, 'GET', KEYS[1])
if not ok or current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`
}

/**
 * KEYS: record. ARGV: channel ('' for none), message.
 * Deletes first: a full Redis still allows it. Then tells the other processes.
 */
export const DELETE_RECORD: RedisScript = {
  name: 'delete',
  keys: 1,
  lua: `
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 1
`
}

/** KEYS: a lock or a claim. ARGV: its token. Deletes the key only while it still holds that token. */
export const DELETE_IF_HELD: RedisScript = {
  name: 'release',
  keys: 1,
  lua: `
local ok, current = pcall(redis.call, 'GET', KEYS[1])
if ok and current == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`
}

/**
 * KEYS: value, lock. ARGV: token, bytes, ttl ms ('0' for none).
 * Saves and releases only while the lock is still ours; returns 0 when it was lost.
 */
export const SAVE_AND_RELEASE: RedisScript = {
  name: 'saveUnlock',
  keys: 2,
  lua: `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
`
}

/**
 * A key beside `storedKey` (the key as Redis stores it, client prefix included) in its hash
 * slot and under `prefix`: Redis hashes only the part between the first braces, so
 * `${prefix}{${storedKey}}${suffix}` lands in the slot of `storedKey` (when it holds no braces of
 * its own), and an ACL that grants `~${prefix}*` covers it.
 */
export function slotSibling (prefix: string, storedKey: string, suffix: string): string {
  return `${prefix}{${storedKey}}${suffix}`
}
