/**
 * CONTRACT 15: docs/protocol.md is enough to revoke correctly from another language. This test
 * revokes with `redis-cli` (a real process) doing only what that page says, while tiered
 * processes serve the keys from memory, and every process refuses them afterwards. Names come
 * from the page's defaults: prefix `apikey:`, channel `fastify-auth-cache:invalidate:apikey:`.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { describe, test } from 'node:test'
import { promisify } from 'node:util'
import { generateApiKey } from '../lib'
import { cachedEverywhere, setRecordEverywhere, untilRefusedEverywhere, useTieredWorkers } from './helpers/tiered-worker-process'

const run = promisify(execFile)
const PREFIX = 'apikey:'
const CHANNEL = 'fastify-auth-cache:invalidate:apikey:'
const newKey = (): { key: string, hash: string } => generateApiKey({ prefix: 'proto' })

/** A revoker's instance id, as the page asks: fresh random hex, no colon. */
const instance = randomBytes(8).toString('hex')

describe('revoking with redis-cli, following docs/protocol.md only', () => {
  const started = useTieredWorkers()
  const { workers } = started

  /** One redis-cli process; its reply as text (raw mode, one line per element). */
  async function cli (...args: string[]): Promise<string> {
    const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(started.redis.port), '--raw', ...args], { timeout: 10_000 })
    return stdout
  }

  /** SCAN MATCH over the (single) master, as the page describes, until the cursor is 0. */
  async function scanPrefix (): Promise<string[]> {
    const keys: string[] = []
    let cursor = '0'
    do {
      const [next, ...found] = (await cli('SCAN', cursor, 'MATCH', `${PREFIX}*`, 'COUNT', '500')).split('\n').filter((line) => line !== '')
      cursor = next!
      keys.push(...found)
    } while (cursor !== '0')
    return keys
  }

  test('one key: DEL, INCR the revision and PUBLISH d:<instance>:<revision>:<hash> in one script', { timeout: 120_000 }, async () => {
    const target = newKey()
    const bystander = newKey()
    await cachedEverywhere(workers, [target, bystander], 'proto')
    await setRecordEverywhere(workers, target.hash, null)
    const revision = Number((await cli('EVAL', "redis.call('DEL', KEYS[1]) local r = redis.call('INCR', KEYS[2]) redis.call('PUBLISH', ARGV[1], ARGV[2] .. r .. ARGV[3]) return r",
      '2', `${PREFIX}${target.hash}`, `${PREFIX}~revision`, CHANNEL, `d:${instance}:`, `:${target.hash}`)).trim())
    assert.ok(revision >= 1, 'the script answers the revision it set')
    assert.equal(await cli('EXISTS', `${PREFIX}${target.hash}`).then((text) => text.trim()), '0')
    await untilRefusedEverywhere(workers, [target])
    for (const worker of workers) assert.equal((await worker.request(bystander.key)).status, 200)
  })

  test('one key without a script: DEL, then PUBLISH d:<instance>:0:<hash>', { timeout: 120_000 }, async () => {
    const target = newKey()
    const bystander = newKey()
    await cachedEverywhere(workers, [target, bystander], 'proto')
    await setRecordEverywhere(workers, target.hash, null)
    assert.equal((await cli('DEL', `${PREFIX}${target.hash}`)).trim(), '1')
    const receivers = Number((await cli('PUBLISH', CHANNEL, `d:${instance}:0:${target.hash}`)).trim())
    assert.ok(receivers >= workers.length, `every worker subscribes to the documented channel (${receivers} receivers)`)
    await untilRefusedEverywhere(workers, [target])
    for (const worker of workers) assert.equal((await worker.request(bystander.key)).status, 200)
  })

  test('one owner: SCAN, GET, DEL the owner\'s records and every claim, then INCR and PUBLISH o:<instance>:<revision>:<ownerId>', { timeout: 120_000 }, async () => {
    const ownerId = 'org:7:"proto"'
    const owned = [newKey(), newKey(), newKey()]
    const others = [newKey(), newKey()]
    await cachedEverywhere(workers, owned, 'proto', { ownerId })
    await cachedEverywhere(workers, others, 'proto', { ownerId: 'org:8' })
    for (const { hash } of owned) await setRecordEverywhere(workers, hash, null)

    let deleted = 0
    for (const key of await scanPrefix()) {
      const value = (await cli('GET', key)).replace(/\n$/, '')
      let doomed = value.startsWith('~claim:')
      if (!doomed && value.startsWith('{')) {
        try {
          const parsed = JSON.parse(value) as Record<string, unknown>
          doomed = Object.hasOwn(parsed, 'ownerId') && parsed.ownerId === ownerId
        } catch {}
      }
      if (doomed) deleted += Number((await cli('DEL', key)).trim())
    }
    assert.equal(deleted, owned.length)
    const revision = (await cli('INCR', `${PREFIX}~revision`)).trim()
    await cli('PUBLISH', CHANNEL, `o:${instance}:${revision}:${ownerId}`)

    await untilRefusedEverywhere(workers, owned)
    for (const worker of workers) {
      const lookups = (await worker.stats()).lookupCalls
      for (const { key } of others) assert.equal((await worker.request(key)).status, 200)
      assert.equal((await worker.stats()).lookupCalls, lookups, `${worker.name} still serves other owners' keys from memory`)
    }
  })

  test('everything: SCAN and DEL every key under the prefix but the revision, then INCR and PUBLISH c:<instance>:<revision>', { timeout: 120_000 }, async () => {
    const keys = [newKey(), newKey()]
    await cachedEverywhere(workers, keys, 'proto')
    for (const { hash } of keys) await setRecordEverywhere(workers, hash, null)
    const found = (await scanPrefix()).filter((key) => key !== `${PREFIX}~revision`)
    assert.ok(found.length >= keys.length)
    await cli('DEL', ...found)
    const revision = (await cli('INCR', `${PREFIX}~revision`)).trim()
    await cli('PUBLISH', CHANNEL, `c:${instance}:${revision}`)
    await untilRefusedEverywhere(workers, keys)
  })
})
