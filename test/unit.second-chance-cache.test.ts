import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { SecondChanceCache } from '../lib/api-key-cache/second-chance-cache'
import { until } from './helpers/wait'

const LONG_MS = 60_000

describe('SecondChanceCache: process memory\'s bounded, expiring map', () => {
  test('get answers what set kept; set replaces; delete and clear remove', () => {
    const cache = new SecondChanceCache<string>(10)
    assert.equal(cache.get('a'), undefined)
    cache.set('a', 'one', LONG_MS)
    assert.equal(cache.get('a'), 'one')
    cache.set('a', 'two', LONG_MS)
    assert.equal(cache.get('a'), 'two')
    assert.equal(cache.size, 1)
    cache.set('b', 'b', LONG_MS)
    cache.delete('a')
    assert.equal(cache.get('a'), undefined)
    assert.equal(cache.get('b'), 'b')
    cache.clear()
    assert.equal(cache.get('b'), undefined)
    assert.equal(cache.size, 0)
  })

  test('an entry lives its TTL, never less, and then is gone', async () => {
    const cache = new SecondChanceCache<string>(10)
    const writtenAt = performance.now()
    cache.set('short', 'v', 120)
    cache.set('long', 'v', LONG_MS)
    assert.ok(cache.remainingMs('short') > 0 && cache.remainingMs('short') <= 120)
    await until('the short entry expired', () => cache.get('short') === undefined, 5_000)
    assert.ok(performance.now() - writtenAt >= 120, `expired after ${performance.now() - writtenAt} ms`)
    assert.equal(cache.remainingMs('short'), 0)
    assert.equal(cache.get('long'), 'v')
  })

  test('a rewrite gives the entry a new TTL', async () => {
    const cache = new SecondChanceCache<string>(10)
    cache.set('a', 'short', 50)
    cache.set('a', 'long', LONG_MS)
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.equal(cache.get('a'), 'long')
  })

  test('it never holds more than max entries', () => {
    const cache = new SecondChanceCache<number>(100)
    for (let i = 0; i < 1_000; i++) {
      cache.set(`k${i}`, i, LONG_MS)
      if (i % 3 === 0) cache.get(`k${i}`)
      assert.ok(cache.size <= 100)
    }
    assert.equal(cache.size, 100)
    assert.equal(cache.get('k999'), 999, 'the newest entry is held')
  })

  test('when full, an unread entry goes before one read since the last pass', () => {
    const cache = new SecondChanceCache<string>(3)
    cache.set('old-read', 'v', LONG_MS)
    cache.set('old-unread', 'v', LONG_MS)
    cache.set('young', 'v', LONG_MS)
    cache.get('old-read')
    cache.set('new', 'v', LONG_MS)
    assert.equal(cache.get('old-unread'), undefined, 'the oldest unread entry was evicted')
    assert.equal(cache.get('old-read'), 'v', 'the read entry had a second chance')
    assert.equal(cache.get('young'), 'v')
    assert.equal(cache.get('new'), 'v')
  })

  test('when every entry was read, one full pass clears the marks and the oldest goes', () => {
    const cache = new SecondChanceCache<string>(3)
    for (const key of ['a', 'b', 'c']) cache.set(key, key, LONG_MS)
    for (const key of ['a', 'b', 'c']) cache.get(key)
    cache.set('d', 'd', LONG_MS)
    assert.equal(cache.size, 3)
    assert.equal(cache.get('a'), undefined)
    for (const key of ['b', 'c', 'd']) assert.equal(cache.get(key), key)
  })

  test('when full, an expired entry goes before an unread live one', async () => {
    const cache = new SecondChanceCache<string>(3)
    cache.set('live-old', 'v', LONG_MS)
    // Long enough to be read before it expires even on a busy machine, so it carries a mark.
    cache.set('expiring', 'v', 300)
    assert.equal(cache.get('expiring'), 'v')
    cache.set('live-young', 'v', LONG_MS)
    cache.get('live-old')
    await until('the entry expired', () => cache.remainingMs('expiring') === 0, 5_000)
    cache.set('new', 'v', LONG_MS)
    assert.equal(cache.size, 3)
    for (const key of ['live-old', 'live-young', 'new']) assert.equal(cache.get(key), 'v', key)
  })
  test('a sweeper walks in steps, drops what matches, and sees entries written meanwhile', () => {
    const cache = new SecondChanceCache<number>(100)
    for (let i = 0; i < 10; i++) cache.set(`k${i}`, i, LONG_MS)
    const step = cache.sweeper((key, value) => value % 2 === 0 && key !== 'k8')
    assert.equal(step(4), false, 'four of ten examined')
    assert.equal(cache.size, 8, 'k0 and k2 dropped')
    cache.set('late-even', 20, LONG_MS)
    cache.set('late-odd', 21, LONG_MS)
    assert.equal(step(100), true)
    assert.deepEqual(['k1', 'k3', 'k5', 'k7', 'k8', 'k9', 'late-odd'].map((key) => cache.get(key) !== undefined), Array(7).fill(true))
    assert.equal(cache.size, 7, 'k4, k6 and late-even dropped too')
    assert.equal(step(1), true, 'a finished walk stays finished')
  })

  test('a clear ends a sweeper\'s walk', () => {
    const cache = new SecondChanceCache<number>(100)
    for (let i = 0; i < 10; i++) cache.set(`k${i}`, i, LONG_MS)
    const step = cache.sweeper(() => true)
    step(2)
    cache.clear()
    cache.set('after', 1, LONG_MS)
    // The walk may examine what was written after the clear; it never throws and then ends.
    assert.equal(step(100), true)
  })
})
