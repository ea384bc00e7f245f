import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { LocalAnswers } from '../lib/api-key-cache/local-answers'
import { UNKNOWN_KEY } from '../lib/api-key-cache/store'
import { catchUp, TICK_MS, tickingClock } from '../lib/ticking-clock'
import { record } from './helpers/key-source'
import { until } from './helpers/wait'

/** Blocks the event loop, so that the clock's interval cannot run. */
function busyFor (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end);
}

describe('the ticking clock of process-memory TTLs', () => {
  test('it is never ahead of the real clock, and advances while the event loop turns', async () => {
    const clock = tickingClock()
    const first = clock.now()
    assert.ok(first <= performance.now())
    await until('the clock advanced', () => clock.now() > first, 2_000)
    assert.ok(clock.now() <= performance.now())
  })

  test('it stands still while the event loop is blocked; catchUp brings it to the real time', () => {
    const clock = tickingClock()
    catchUp()
    const before = clock.now()
    busyFor(5 * TICK_MS)
    assert.equal(clock.now(), before, 'no interval ran')
    catchUp()
    const now = performance.now()
    assert.ok(clock.now() >= before + 5 * TICK_MS && clock.now() <= now)
  })

  test('an entry written after the event loop was blocked does not expire early', async () => {
    const answers = new LocalAnswers(100)
    tickingClock()
    // The interval is late now: without catchUp the entry would start its life in the past.
    busyFor(100)
    const writtenAt = performance.now()
    answers.write('record', record('r'), 150)
    answers.write('unknown', UNKNOWN_KEY, 150)
    await until('both entries expired', () => answers.peek('record') === undefined && answers.peek('unknown') === undefined, 5_000)
    assert.ok(performance.now() - writtenAt >= 150, `expired after ${performance.now() - writtenAt} ms`)
  })
})
