import type { RedisScript } from '../redis/client'

/**
 * A period's count is a hash: field `n` holds the units granted and not given back; a field
 * `r:<token>` per give-back remembers that it was applied. One key per script, so these run on
 * a Cluster in the owner's slot. Written for a Redis that may refuse writes when full: the
 * first write of each script is the one that may be refused, and then nothing was changed.
 */

/**
 * KEYS: count. ARGV: limit, requested, TTL in ms. Grants `min(requested, limit − n)`, counts
 * it and returns { granted, left }. A resent grant only grants again (units never spent: an
 * under-spend, never an over-spend).
 */
export const TAKE_QUOTA: RedisScript = {
  name: 'quotaTake',
  keys: 1,
  lua: `
local counted = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local limit = tonumber(ARGV[1])
local grant = math.min(tonumber(ARGV[2]), limit - counted)
if grant <= 0 then return { 0, math.max(0, limit - counted) } end
redis.call('HINCRBY', KEYS[1], 'n', grant)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return { grant, limit - counted - grant }
`
}

/**
 * KEYS: count. ARGV: units, token. Uncounts at most what is counted, once per token; a count
 * that is gone (expired, evicted) is not recreated. Returns the units given back.
 */
export const GIVE_BACK_QUOTA: RedisScript = {
  name: 'quotaGiveBack',
  keys: 1,
  lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[2], '1') == 0 then return 0 end
local counted = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local back = math.min(tonumber(ARGV[1]), counted)
if back > 0 then redis.call('HINCRBY', KEYS[1], 'n', -back) end
return back
`
}
