import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { encodeMessage, parseMessage } from '../lib/api-key-cache/invalidation-bus'
import { LocalAnswers } from '../lib/api-key-cache/local-answers'
import { RevocationLog } from '../lib/api-key-cache/revocation-log'
import type { ApiKeyRecord } from '../lib'

const owned = (id: string, ownerId: string): ApiKeyRecord => ({ id, active: true, ownerId })

describe('deleteOwner: the pieces', () => {
  test('the owner message is o:<instance>:<revision>:<ownerId>, the owner id verbatim to the end', () => {
    for (const ownerId of ['acme', 'org:7:"x"\\é', ':']) {
      const text = encodeMessage({ kind: 'owner', instance: 'abc', revision: 3, payload: ownerId })
      assert.equal(text, `o:abc:3:${ownerId}`)
      assert.deepEqual(parseMessage(text), { kind: 'owner', instance: 'abc', revision: 3, payload: ownerId })
    }
    assert.equal(parseMessage('o:abc:0'), undefined, 'no owner id')
    assert.equal(parseMessage('o:abc:0:'), undefined, 'an empty owner id')
    assert.equal(parseMessage('o::0:acme'), undefined, 'no instance')
  })

  test('process memory drops the owner\'s records, fresh and stale, and keeps every other entry', () => {
    const answers = new LocalAnswers(100, 60_000)
    answers.write('a1', owned('a1', 'A'), 60_000)
    answers.write('a2', owned('a2', 'A'), 60_000)
    answers.write('b1', owned('b1', 'B'), 60_000)
    answers.write('n1', { id: 'n1', active: true }, 60_000)
    // Inherited properties never count.
    answers.write('p1', Object.create({ ownerId: 'A' }, { id: { value: 'p1', enumerable: true }, active: { value: true, enumerable: true } }), 60_000)
    answers.removeOwner('A')
    assert.equal(answers.peek('a1'), undefined)
    assert.equal(answers.peek('a2'), undefined)
    assert.equal(answers.staleRecord('a1'), undefined)
    assert.equal((answers.peek('b1') as ApiKeyRecord | undefined)?.id, 'b1')
    assert.equal((answers.peek('n1') as ApiKeyRecord | undefined)?.id, 'n1')
    assert.equal((answers.peek('p1') as ApiKeyRecord | undefined)?.id, 'p1')
    assert.equal(answers.staleRecord('b1')?.id, 'b1')
  })

  test('tickets taken before an owner\'s removal are void for every key; later ones are not', () => {
    const answers = new LocalAnswers(100)
    const before = answers.ticket()
    answers.removeOwner('A')
    const afterwards = answers.ticket()
    assert.equal(answers.fill('k1', owned('k1', 'A'), 60_000, before), false)
    assert.equal(answers.fill('k2', owned('k2', 'B'), 60_000, before), false)
    assert.equal(answers.peek('k1'), undefined)
    assert.equal(answers.fill('k1', owned('k1', 'A'), 60_000, afterwards), true)
    assert.equal((answers.peek('k1') as ApiKeyRecord | undefined)?.id, 'k1')
  })

  test('the revocation log replays an owner\'s deletion, once, until a clear covers it', () => {
    const log = new RevocationLog(60_000, 10)
    log.ownerDeleted('A')
    log.deleted('h1')
    log.ownerDeleted('B')
    log.ownerDeleted('A')
    assert.deepEqual(log.pending(), [{ kind: 'delete', keyHash: 'h1' }, { kind: 'owner', ownerId: 'B' }, { kind: 'owner', ownerId: 'A' }])
    log.cleared()
    assert.deepEqual(log.pending(), [{ kind: 'clear' }])
  })

  test('more owners than the log holds: a clear is replayed instead', () => {
    const log = new RevocationLog(60_000, 2)
    for (const ownerId of ['A', 'B', 'C']) log.ownerDeleted(ownerId)
    assert.deepEqual(log.pending(), [{ kind: 'clear' }])
  })
})
