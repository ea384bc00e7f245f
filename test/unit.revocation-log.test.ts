import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { RevocationLog } from '../lib/api-key-cache/revocation-log'

const LONG_MS = 60_000
// Kept for SHORT_MS: long beside two statements in a row, short to wait out.
const SHORT_MS = 300

const del = (keyHash: string): { kind: 'delete', keyHash: string } => ({ kind: 'delete', keyHash })
const CLEAR = { kind: 'clear' }

describe('RevocationLog', () => {
  test('nothing to replay at first', () => {
    assert.deepEqual(new RevocationLog(LONG_MS, 10).pending(), [])
  })

  test('pending lists the clear first, then the deletes since, oldest first', () => {
    const log = new RevocationLog(LONG_MS, 10)
    log.deleted('a')
    log.deleted('b')
    assert.deepEqual(log.pending(), [del('a'), del('b')])
    // A clear covers every delete before it.
    log.cleared()
    assert.deepEqual(log.pending(), [CLEAR])
    log.deleted('c')
    log.deleted('d')
    log.deleted('c')
    // A key deleted again counts from its latest delete.
    assert.deepEqual(log.pending(), [CLEAR, del('d'), del('c')])
    // Asking does not consume.
    assert.deepEqual(log.pending(), [CLEAR, del('d'), del('c')])
  })

  test('revocations older than retainMs are forgotten, newer ones kept', async () => {
    const log = new RevocationLog(SHORT_MS, 10)
    log.deleted('older')
    await sleep(SHORT_MS + 100)
    log.deleted('newer')
    assert.deepEqual(log.pending(), [del('newer')])

    log.cleared()
    await sleep(SHORT_MS + 100)
    log.deleted('latest')
    assert.deepEqual(log.pending(), [del('latest')], 'the clear was forgotten too')
    await sleep(SHORT_MS + 100)
    assert.deepEqual(log.pending(), [])
  })

  test('more deletes than max collapse into a clear', () => {
    const log = new RevocationLog(LONG_MS, 3)
    for (const key of ['a', 'b', 'c']) log.deleted(key)
    assert.deepEqual(log.pending(), [del('a'), del('b'), del('c')])
    log.deleted('d')
    assert.deepEqual(log.pending(), [CLEAR])
    log.deleted('e')
    assert.deepEqual(log.pending(), [CLEAR, del('e')])
  })

  test('deleting a key already held does not count twice towards max', () => {
    const log = new RevocationLog(LONG_MS, 3)
    for (const key of ['a', 'b', 'c', 'a', 'b']) log.deleted(key)
    assert.deepEqual(log.pending(), [del('c'), del('a'), del('b')])
  })
})
