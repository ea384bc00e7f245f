/**
 * Lua run atomically on the Redis node that owns the key. Every script names the record key
 * and its generation key, which share a hash slot (see `slotSibling`), so they run on
 * Redis Cluster too.
 */

/**
 * KEYS: record, generation. ARGV: largest value worth returning, in bytes.
 * Returns the stored bytes, their TTL in ms, and the generation.
 * A key of another type under our name is junk like any other: a miss (not an error that would
 * put Redis in backoff) that the next fill overwrites. So is a value too large to be ours: it is
 * not shipped to the client, where reading it on every request could outlast redisTimeoutMs.
 */
export const READ_RECORD = `
local okLength, length = pcall(redis.call, 'STRLEN', KEYS[1])
local value = false
if okLength and length <= tonumber(ARGV[1]) then value = redis.call('GET', KEYS[1]) end
local ttl = redis.call('PTTL', KEYS[1])
local ok, generation = pcall(redis.call, 'GET', KEYS[2])
if not ok then generation = false end
return { value, ttl, generation }
`

/**
 * KEYS: record, generation. ARGV: generation seen before lookup ('' for none), value, ttl ms.
 * Writes only when no delete bumped the generation since it was read; returns 1 when written.
 */
export const FILL_RECORD = `
local ok, generation = pcall(redis.call, 'GET', KEYS[2])
if not ok or not generation then generation = '' end
if generation ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`

/**
 * KEYS: record, generation. ARGV: generation ttl ms, channel ('' for none), message.
 * Bumps the generation (overwriting junk rather than failing on it), drops the record and
 * tells the other processes, all in one step.
 */
export const DELETE_RECORD = `
local ok, generation = pcall(redis.call, 'GET', KEYS[2])
generation = ok and tonumber(generation) or 0
redis.call('SET', KEYS[2], generation + 1, 'PX', ARGV[1])
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
`

/** KEYS: lock. ARGV: token. Deletes the lock only while it is still ours. */
export const RELEASE_LOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`

/**
 * KEYS: value, lock. ARGV: token, bytes, ttl ms ('0' for none).
 * Saves and releases only while the lock is still ours; returns 0 when it was lost.
 */
export const SAVE_AND_RELEASE = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
`

/**
 * A key in the hash slot of `key`: Redis hashes only the part between the first braces, so
 * `{<key>}...` lands beside `<key>` (when `<key>` holds no braces of its own).
 */
export function slotSibling (key: string, suffix: string, prefix = ''): string {
  return `${prefix}{${key}}${suffix}`
}
