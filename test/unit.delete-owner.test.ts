import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { encodeMessage, parseMessage } from '../lib/api-key-cache/invalidation-bus'
import { LocalAnswers } from '../lib/api-key-cache/local-answers'
import { RevocationLog } from '../lib/api-key-cache/revocation-log'
import type { ApiKeyRecord } from '../lib'
import { until } from './helpers/wait'

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

  test('an owner\'s removal holds at once and leaves the walk over memory to steps on later turns', async () => {
    const answers = new LocalAnswers(100_000, 60_000)
    for (let i = 0; i < 25_000; i++) answers.write(`a${i}`, owned(`a${i}`, 'A'), 60_000)
    for (let i = 0; i < 1000; i++) answers.write(`b${i}`, owned(`b${i}`, 'B'), 60_000)
    answers.removeOwner('A')
    // Nothing walked yet, and still no read answers an entry of A.
    assert.equal(answers.size, 26_000)
    assert.equal(answers.peek('a17'), undefined)
    assert.equal(answers.staleRecord('a18'), undefined)
    assert.equal((answers.peek('b7') as ApiKeyRecord | undefined)?.id, 'b7')
    // A record of A written after the removal (looked up afresh) is kept, by reads and by the sweep.
    answers.write('a19', owned('a19-fresh', 'A'), 60_000)
    await new Promise((resolve) => setImmediate(resolve))
    assert.ok(answers.size > 1001, `one turn of the event loop walked ${26_000 - answers.size} entries: the walk is stepwise`)
    for (let i = 0; i < 25_000; i += 997) if (i !== 19) assert.equal(answers.peek(`a${i}`), undefined, `a${i}`)
    await until('the sweep has walked every entry', () => answers.size === 1001)
    assert.equal((answers.peek('a19') as ApiKeyRecord | undefined)?.id, 'a19-fresh')
    assert.equal(answers.staleRecord('a19')?.id, 'a19-fresh')
    assert.equal((answers.peek('b999') as ApiKeyRecord | undefined)?.id, 'b999')
  })

  test('a second removal of the same owner during its sweep drops what was written between them', async () => {
    const answers = new LocalAnswers(100_000)
    for (let i = 0; i < 5000; i++) answers.write(`a${i}`, owned(`a${i}`, 'A'), 60_000)
    answers.removeOwner('A')
    answers.write('between', owned('between', 'A'), 60_000)
    answers.write('other', owned('other', 'C'), 60_000)
    assert.equal((answers.peek('between') as ApiKeyRecord | undefined)?.id, 'between')
    answers.removeOwner('A')
    answers.removeOwner('C')
    assert.equal(answers.peek('between'), undefined)
    assert.equal(answers.peek('other'), undefined)
    answers.write('after', owned('after', 'A'), 60_000)
    await until('the sweep has walked every entry', () => answers.size === 1)
    assert.equal((answers.peek('after') as ApiKeyRecord | undefined)?.id, 'after')
  })

  test('a flush during an owner\'s sweep ends it; later records of that owner stay', async () => {
    const answers = new LocalAnswers(100_000)
    for (let i = 0; i < 5000; i++) answers.write(`a${i}`, owned(`a${i}`, 'A'), 60_000)
    answers.removeOwner('A')
    answers.flush()
    answers.write('a1', owned('a1', 'A'), 60_000)
    await new Promise((resolve) => setImmediate(resolve))
    await new Promise((resolve) => setImmediate(resolve))
    assert.equal((answers.peek('a1') as ApiKeyRecord | undefined)?.id, 'a1')
    assert.equal(answers.size, 1)
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
