import { Worker } from 'node:worker_threads'

/**
 * How often the worker clock advances, in ms: the most it lags behind the real time.
 */
const WORKER_TICK_MS = 5

// Written by the worker, read by the main thread: one aligned 8-byte value, which 64-bit
// hardware loads and stores whole.
const shared = new Float64Array(new SharedArrayBuffer(8))
let started = false

// The worker keeps the main thread's monotonic clock (performance.now() there) in shared memory.
const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads')
const clock = new Float64Array(workerData.buffer)
const offset = performance.timeOrigin - workerData.timeOrigin
const tick = () => { clock[0] = performance.now() + offset }
tick()
setInterval(tick, workerData.tickMs)
`

/**
 * A monotonic clock, in the main thread's `performance.now()` milliseconds, that keeps running
 * while the event loop does not, and costs one memory load to read.
 *
 * Why: trust in process memory must lapse on time, checked on every hit, and a stalled event
 * loop (a long synchronous task, a GC pause) must be seen by the first hit after it, before any
 * timer has run. A real clock read per hit (`performance.now()`, `Date.now()`) cost about 1 µs
 * per request inside a server in `npm run bench:hook`, several times the rest of a hit. A value
 * that a timer of the main thread refreshes (ticking-clock.ts) is free to read but stands still
 * during a stall. A worker thread's timer does not: it writes the time into shared memory every
 * WORKER_TICK_MS. Where no worker can be started, a main-thread timer writes it instead, and a
 * stall is then seen once that timer runs.
 */
export function workerClock (): Float64Array {
  if (!started) {
    started = true
    shared[0] = performance.now()
    try {
      const worker = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: { buffer: shared.buffer, timeOrigin: performance.timeOrigin, tickMs: WORKER_TICK_MS }
      })
      // The clock must never keep a process alive.
      worker.unref()
      worker.on('error', fallBack)
    } catch {
      fallBack()
    }
  }
  return shared
}

function fallBack (): void {
  const timer = setInterval(() => { shared[0] = performance.now() }, WORKER_TICK_MS)
  timer.unref()
}
