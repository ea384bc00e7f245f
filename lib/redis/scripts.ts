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
 * reader sees a miss. It reads `~claim:<token>|<stale until, epoch ms>|<stale record>`: the
 * record it replaced, while that may still be served stale (staleIfErrorSeconds), travels in
 * it, so that other processes whose lookup fails meanwhile can still serve it. Only the
 * claim's owner may replace it with an answer.
 */
const CLAIM_MARK = '~claim:'

const NOW_MS = `
local function nowMs ()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
`

/**
 * KEYS: record. ARGV: largest value worth returning (bytes), '1' to return the TTL, the
 * claim's token ('' for none), the claim's TTL in ms, the stale window in ms.
 * Returns { value or false, fresh TTL in ms (when asked, or with a stale window), 1 when a
 * claim was left, a record past its fresh life but within the stale window, or false }.
 * An entry lives its fresh TTL plus the stale window; it is fresh while more than the stale
 * window is left. Anything under the key that is not a value we wrote (another type,
 * oversized) is a miss. On a miss the claim replaces what is there (a stale record travels
 * in it); a full Redis refuses the claim, and then no fill follows.
 */
export const READ_RECORD: RedisScript = {
  name: 'read',
  keys: 1,
  lua: NOW_MS + `
local staleMs = tonumber(ARGV[5])
local stale = false
local staleUntil = 0
local okLength, length = pcall(redis.call, 'STRLEN', KEYS[1])
if okLength and length > 0 and length <= tonumber(ARGV[1]) then
  local value = redis.call('GET', KEYS[1])
  if string.sub(value, 1, ${CLAIM_MARK.length}) ~= '${CLAIM_MARK}' then
    if staleMs == 0 then
      if ARGV[2] == '1' then return { value, redis.call('PTTL', KEYS[1]), 0, false } end
      return { value, 0, 0, false }
    end
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl < 0 then return { value, ttl, 0, false } end
    if ttl > staleMs then return { value, ttl - staleMs, 0, false } end
    stale = value
    staleUntil = nowMs() + ttl
  else
    local first = string.find(value, '|', 1, true)
    local second = first and string.find(value, '|', first + 1, true)
    if second then
      local untilMs = tonumber(string.sub(value, first + 1, second - 1)) or 0
      if untilMs > nowMs() then
        stale = string.sub(value, second + 1)
        staleUntil = untilMs
      end
    end
  end
end
if ARGV[3] == '' then return { false, 0, 0, stale } end
local ttl = tonumber(ARGV[4])
if stale then ttl = math.max(ttl, staleUntil - nowMs()) end
local claim = '${CLAIM_MARK}' .. ARGV[3] .. '|' .. staleUntil .. '|' .. (stale or '')
local claimed = pcall(redis.call, 'SET', KEYS[1], claim, 'PX', ttl)
return { false, 0, claimed and 1 or 0, stale }
`
}

/** Lua: returns 0 unless KEYS[1] still holds the claim that ARGV[1] starts (`claimOf(token)`); leaves it in `current`. */
const HELD_BY_CLAIM = `
local ok, current = pcall(redis.call, 'GET', KEYS[1])
if not ok or not current or string.sub(current, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
`

/** The start of every claim made with `token`. */
export function claimOf (token: string): string {
  return `${CLAIM_MARK}${token}|`
}

/**
 * KEYS: record. ARGV: the claim's start (`claimOf(token)`), the value, its TTL in ms.
 * Writes only while the key still holds that very claim: a delete, a clear, an eviction or
 * another process's claim since then all refuse the fill. Returns 1 when written.
 */
export const FILL_RECORD: RedisScript = {
  name: 'fill',
  keys: 1,
  lua: HELD_BY_CLAIM + `
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`
}

/**
 * KEYS: record. ARGV: the claim's start. No fill follows the claim: it is removed, unless a
 * stale record travels in it, which then stays for the others until its window ends.
 */
export const RELEASE_CLAIM: RedisScript = {
  name: 'releaseClaim',
  keys: 1,
  lua: HELD_BY_CLAIM + `
local first = string.find(current, '|', string.len(ARGV[1]) + 1, true)
if first and first < string.len(current) then return 0 end
return redis.call('DEL', KEYS[1])
`
}

/**
 * KEYS: record, renewal lease. ARGV: the stale window in ms, the lease's TTL in ms.
 * Refresh-ahead, step one: returns { value or false, its fresh TTL in ms, 1 when this caller
 * took the lease }. One process at a time renews a key; an evicted lease only lets a second one
 * renew too, and a full Redis refuses it, and then nobody renews (entries end normally).
 */
export const BEGIN_RENEWAL: RedisScript = {
  name: 'beginRenewal',
  keys: 2,
  lua: `
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if not ok or (value and string.sub(value, 1, ${CLAIM_MARK.length}) == '${CLAIM_MARK}') then value = false end
local ttl = 0
if value then ttl = redis.call('PTTL', KEYS[1]) - tonumber(ARGV[1]) end
local okSet, reply = pcall(redis.call, 'SET', KEYS[2], '1', 'PX', ARGV[2], 'NX')
return { value, ttl, (okSet and reply) and 1 or 0 }
`
}

/**
 * KEYS: record. ARGV: the value a refresh-ahead read, the renewed value, its TTL in ms.
 * Renews only while the key still holds exactly what was read: a delete, a clear or an
 * eviction since then refuses it. Returns 1 when written.
 */
export const RENEW_RECORD: RedisScript = {
  name: 'renew',
  keys: 1,
  lua: `
local ok, current = pcall(redis.call, 'GET', KEYS[1])
if not ok or current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`
}

const DELETE_AND_ANNOUNCE = `
redis.call('DEL', KEYS[1])
local revision = 0
if KEYS[2] then
  local ok, value = pcall(redis.call, 'INCR', KEYS[2])
  if ok then revision = value end
end
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2] .. revision .. ARGV[3]) end
return revision
`

/**
 * KEYS: record. ARGV: channel ('' for none), the message's text before its revision, after it.
 * Deletes first: a full Redis still allows it. Then tells the other processes, with revision 0.
 */
export const DELETE_RECORD: RedisScript = { name: 'delete', keys: 1, lua: DELETE_AND_ANNOUNCE }

/**
 * KEYS: record, the dataset's revision counter. ARGV: as DELETE_RECORD. Deletes, then
 * increments the counter (a full Redis may refuse it: the revision is then 0), then announces
 * with the revision. Returns the revision. One script, so a snapshot holds either both the
 * delete and the new revision or neither.
 */
export const DELETE_COUNTED: RedisScript = { name: 'deleteCounted', keys: 2, lua: DELETE_AND_ANNOUNCE }

/**
 * KEYS: the dataset's revision counter. ARGV: channel, the message's text before its
 * revision, after it. Counts a revocation made by other commands (a clear) and announces it.
 */
export const COUNT_AND_ANNOUNCE: RedisScript = {
  name: 'countAnnounce',
  keys: 1,
  lua: `
local ok, revision = pcall(redis.call, 'INCR', KEYS[1])
if not ok then revision = 0 end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. revision .. ARGV[3])
return revision
`
}

/**
 * KEYS: the dataset's revision counter. ARGV: the highest revision the caller knows.
 * After revocations were made again on a dataset that went back, raises the counter to what it
 * had reached, so that the loss is not detected again.
 */
export const RAISE_REVISION: RedisScript = {
  name: 'raiseRevision',
  keys: 1,
  lua: `
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
`
}

/**
 * KEYS: keys found under the prefix (one hash slot on a Cluster). ARGV: the owner id, '1' when
 * the owner id appears verbatim in the JSON of its records (no character JSON escapes), the
 * largest value worth decoding (bytes).
 * Deletes every record whose `ownerId` is the owner id, and every fill claim: a claim's lookup
 * may answer one of the owner's records, and must not write it back. Unknown-key markers, other
 * owners' records and anything that is not a record stay. Only deletes, which a full Redis
 * allows. Returns how many keys were deleted.
 */
export const DELETE_OWNER_ENTRIES: RedisScript = {
  name: 'deleteOwner',
  keys: -1,
  lua: `
local deleted = 0
local owner = ARGV[1]
local verbatim = ARGV[2] == '1'
local maxLength = tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  local ok, value = pcall(redis.call, 'GET', key)
  if ok and value then
    local doomed = false
    if string.sub(value, 1, ${CLAIM_MARK.length}) == '${CLAIM_MARK}' then
      doomed = true
    elseif string.sub(value, 1, 1) == '{' and string.len(value) <= maxLength
      and (not verbatim or string.find(value, owner, 1, true)) then
      local okJson, record = pcall(cjson.decode, value)
      doomed = okJson and type(record) == 'table' and record.ownerId == owner
    end
    if doomed then deleted = deleted + redis.call('DEL', key) end
  end
end
return deleted
`
}

/** KEYS: lock. ARGV: token. Deletes the lock only while it is still ours. */
export const RELEASE_LOCK: RedisScript = {
  name: 'unlock',
  keys: 1,
  lua: `
local ok, current = pcall(redis.call, 'GET', KEYS[1])
if ok and current == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`
}

/**
 * KEYS: lock. ARGV: token, ttl ms. Takes the lock unless another token holds it; returns 1 when
 * this token holds it now. A client that resends the command after losing its reply (ioredis'
 * autoResendUnfulfilledCommands) finds its own token and is told it holds the lock, where a
 * plain SET NX would answer "taken" and leave the lock orphaned until its TTL.
 */
export const ACQUIRE_LOCK: RedisScript = {
  name: 'lock',
  keys: 1,
  lua: `
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`
}

/** How long a save's receipt is kept: longer than any client takes to resend an unanswered command. */
export const SAVE_RECEIPT_MS = 60_000

/**
 * KEYS: value, lock, receipt. ARGV: token, bytes, ttl ms ('0' for none), channel ('' for none),
 * message, receipt TTL in ms. Saves, releases and announces only while the lock is still ours,
 * and leaves the token in the receipt; returns 1 when saved, also when this is a resend of a
 * save that was made (the receipt holds the token), and 0 when the lock was lost and nothing
 * was written. The receipt lets an error say "nothing was written" truthfully.
 */
export const SAVE_AND_RELEASE: RedisScript = {
  name: 'saveUnlock',
  keys: 3,
  lua: `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  if redis.call('GET', KEYS[3]) == ARGV[1] then return 1 end
  return 0
end
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
pcall(redis.call, 'SET', KEYS[3], ARGV[1], 'PX', ARGV[6])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
`
}

/**
 * KEYS: value. ARGV: bytes, ttl ms ('0' for none), channel, message.
 * Saves and announces in one step, so no process can miss a change that landed.
 */
export const SAVE_AND_ANNOUNCE: RedisScript = {
  name: 'saveAnnounce',
  keys: 1,
  lua: `
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
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
