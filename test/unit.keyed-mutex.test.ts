import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setImmediate as tick } from 'node:timers/promises'
import { KeyedMutex, type Release } from '../lib/credentials/keyed-mutex'
import { within } from './helpers/wait'

const LONG_MS = 60_000
const noTimeout = (): Error => new Error('unexpected timeout')

/** Whether `promise` settled within a few turns of the event loop. */
async function settles (promise: Promise<unknown>): Promise<boolean> {
  let settled = false
  promise.then(() => { settled = true }, () => { settled = true })
  for (let i = 0; i < 5; i++) await tick()
  return settled
}

describe('KeyedMutex', () => {
  test('grants one key to one holder at a time, in the order of asking', async () => {
    const mutex = new KeyedMutex()
    const granted: number[] = []
    const holds = Array.from({ length: 5 }, (_, i) =>
      mutex.acquire('k', LONG_MS, LONG_MS, noTimeout).then((release) => { granted.push(i); return release }))

    let release = await holds[0]!
    for (let i = 1; i < holds.length; i++) {
      assert.deepEqual(granted, Array.from({ length: i }, (_, j) => j), `only holder ${i - 1} was granted`)
      assert.equal(await settles(holds[i]!), false, `holder ${i} waits while ${i - 1} holds the key`)
      release()
      release = await holds[i]!
    }
    assert.deepEqual(granted, [0, 1, 2, 3, 4])
    release()
  })

  test('other keys are not held up', async () => {
    const mutex = new KeyedMutex()
    const a = await mutex.acquire('a', LONG_MS, LONG_MS, noTimeout)
    const b = await mutex.acquire('b', LONG_MS, LONG_MS, noTimeout)
    a()
    b()
  })

  test('a waiter past waitMs is rejected with the error onTimeout makes, and leaves the queue', async () => {
    const mutex = new KeyedMutex()
    const holder = await mutex.acquire('k', LONG_MS, LONG_MS, noTimeout)
    const expected = new Error('waited too long')
    const startedAt = performance.now()
    await assert.rejects(mutex.acquire('k', 50, LONG_MS, () => expected), (err) => err === expected)
    // Timers may fire a fraction of a millisecond early on this clock.
    assert.ok(performance.now() - startedAt >= 49, `rejected after ${performance.now() - startedAt} ms`)

    // The timed-out waiter is not granted later (it would keep the key for LONG_MS): the next one in line is.
    const next = mutex.acquire('k', LONG_MS, LONG_MS, noTimeout)
    holder()
    const release = await within('the next waiter was granted', next, 5000)
    release()
  })

  test('a hold ends by itself after holdMs, and its late release does not end the next hold', async () => {
    const mutex = new KeyedMutex()
    const startedAt = performance.now()
    const forgotten = await mutex.acquire('k', LONG_MS, 50, noTimeout)
    // Handed on by the hold's own timer: within a bound a loaded machine keeps, far below LONG_MS.
    const next = await within('the expired hold was handed on', mutex.acquire('k', LONG_MS, LONG_MS, noTimeout), 2000)
    assert.ok(performance.now() - startedAt >= 49, `the expired hold was handed on after ${performance.now() - startedAt} ms`)

    forgotten()
    const blocked = new Error('still held')
    await assert.rejects(mutex.acquire('k', 50, LONG_MS, () => blocked), (err) => err === blocked)
    next()
    const after = await mutex.acquire('k', 0, LONG_MS, noTimeout)
    after()
  })

  test('releasing twice hands the key on once', async () => {
    const mutex = new KeyedMutex()
    const first = await mutex.acquire('k', LONG_MS, LONG_MS, noTimeout)
    const second = mutex.acquire('k', LONG_MS, LONG_MS, noTimeout)
    const third = mutex.acquire('k', LONG_MS, LONG_MS, noTimeout)
    first()
    first()
    const secondRelease: Release = await second
    assert.equal(await settles(third), false, 'the third waits for the second')
    secondRelease()
    const thirdRelease = await third
    thirdRelease()
  })

  test('with waitMs 0 a free key is granted and a held one refused at once', async () => {
    const mutex = new KeyedMutex()
    const release = await mutex.acquire('k', 0, LONG_MS, noTimeout)
    const refused = new Error('refused')
    const startedAt = performance.now()
    await assert.rejects(mutex.acquire('k', 0, LONG_MS, () => refused), (err) => err === refused)
    assert.ok(performance.now() - startedAt < 1000, `refused after ${performance.now() - startedAt} ms`)
    release()
  })
})
