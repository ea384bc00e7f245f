import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { LocalAnswers } from '../lib/api-key-cache/local-answers'
import { UNKNOWN_KEY } from '../lib/api-key-cache/store'
import { FILL_WINDOW_MS } from '../lib/limits'
import { record } from './helpers/key-source'

const TTL_MS = 60_000

describe('LocalAnswers: the fill guard', () => {
  test('a ticket is accepted when nothing happened since it was taken', () => {
    const answers = new LocalAnswers(100)
    const ticket = answers.ticket()
    assert.equal(answers.accepts('a', ticket), true)
    assert.equal(answers.fill('a', record('a'), TTL_MS, ticket), true)
    assert.deepEqual(answers.peek('a'), record('a'))
    // Another fill on the same ticket is accepted too: only invalidations void it.
    assert.equal(answers.fill('b', UNKNOWN_KEY, TTL_MS, ticket), true)
    assert.equal(answers.peek('b'), UNKNOWN_KEY)
  })

  test('a removal of its key voids a ticket; a removal of another key does not', () => {
    const answers = new LocalAnswers(100)
    const ticket = answers.ticket()
    answers.remove('other')
    assert.equal(answers.accepts('a', ticket), true, 'another key was removed')
    answers.remove('a')
    assert.equal(answers.accepts('a', ticket), false)
    assert.equal(answers.fill('a', record('stale'), TTL_MS, ticket), false)
    assert.equal(answers.peek('a'), undefined, 'the refused fill wrote nothing')
    assert.equal(answers.fill('b', record('b'), TTL_MS, ticket), true, 'keys not removed still fill')

    // A ticket taken after the removal knows of it.
    const later = answers.ticket()
    assert.equal(answers.fill('a', record('fresh'), TTL_MS, later), true)
    assert.deepEqual(answers.peek('a'), record('fresh'))
  })

  test('a removal also drops what memory held for the key', () => {
    const answers = new LocalAnswers(100)
    answers.write('a', record('a'), TTL_MS)
    answers.write('u', UNKNOWN_KEY, TTL_MS)
    answers.remove('a')
    answers.remove('u')
    assert.equal(answers.peek('a'), undefined)
    assert.equal(answers.peek('u'), undefined)
    assert.equal(answers.size, 0)
  })

  test('a flush voids every ticket taken before it, and empties memory', () => {
    const answers = new LocalAnswers(100)
    answers.write('kept', record('kept'), TTL_MS)
    const before = answers.ticket()
    answers.flush()
    assert.equal(answers.size, 0)
    for (const key of ['a', 'kept', 'never-seen']) {
      assert.equal(answers.accepts(key, before), false, key)
      assert.equal(answers.fill(key, record(key), TTL_MS, before), false, key)
    }
    assert.equal(answers.size, 0)
    const after = answers.ticket()
    assert.equal(answers.fill('a', record('a'), TTL_MS, after), true)
  })

  test(`a ticket older than FILL_WINDOW_MS (${FILL_WINDOW_MS} ms) is refused`, () => {
    // The window cannot be waited out in a unit test, and the clock is not injectable: a ticket
    // is a plain value its holder keeps, so one taken that long ago is built from a fresh one.
    const answers = new LocalAnswers(100)
    const fresh = answers.ticket()
    const old = { ...fresh, takenAt: fresh.takenAt - FILL_WINDOW_MS - 1 }
    assert.equal(answers.accepts('a', old), false)
    assert.equal(answers.fill('a', record('late'), TTL_MS, old), false)
    assert.equal(answers.peek('a'), undefined)
    const inside = { ...fresh, takenAt: fresh.takenAt - FILL_WINDOW_MS + 5_000 }
    assert.equal(answers.accepts('a', inside), true)
  })

  test('writes with a TTL of 0 or less, or NaN, are ignored', () => {
    const answers = new LocalAnswers(100)
    for (const ttl of [0, -1, Number.NaN]) {
      answers.write('a', record('a'), ttl)
      answers.fill('a', record('a'), ttl, answers.ticket())
      answers.write('u', UNKNOWN_KEY, ttl)
    }
    assert.equal(answers.peek('a'), undefined)
    assert.equal(answers.peek('u'), undefined)
    assert.equal(answers.size, 0)
  })

  test('a flood of unknown keys never evicts a record', () => {
    const answers = new LocalAnswers(10)
    answers.write('client', record('client'), TTL_MS)
    for (let i = 0; i < 1000; i++) answers.write(`random-${i}`, UNKNOWN_KEY, TTL_MS)
    assert.deepEqual(answers.peek('client'), record('client'))
    assert.equal(answers.peek('random-0'), undefined, 'the oldest unknown keys were evicted')
    assert.equal(answers.peek('random-999'), UNKNOWN_KEY)
    // A key moves between the two: an answer replaces the other kind.
    answers.write('client', UNKNOWN_KEY, TTL_MS)
    assert.equal(answers.peek('client'), UNKNOWN_KEY)
    answers.write('client', record('again'), TTL_MS)
    assert.deepEqual(answers.peek('client'), record('again'))
  })
})
