/**
 * How often the clock of process-memory TTLs advances. An entry kept in process memory never
 * expires early, and may outlive its TTL by up to this, or by as long as the event loop is blocked.
 */
export const TICK_MS = 10

/** What lru-cache's `perf` option asks of a clock. */
export interface Clock { now (): number }

let now = 0
let ticking: NodeJS.Timeout | undefined
const clock: Clock = { now: () => now }

/**
 * A monotonic clock (`performance.now()`, in ms) that costs nothing to read: one interval timer
 * per process refreshes it every TICK_MS, started by the first cache that asks for it and never
 * keeping the process alive.
 *
 * Why not read the real clock: every cache hit checks a TTL, and in `npm run bench:hook` a
 * `performance.now()` per hit (lru-cache's `ttlResolution: 0`) cost 0.1–0.5 µs per request
 * inside a server, as much as the rest of the hook; lru-cache's default (the clock cached for
 * 1 ms behind a new timer each time) cost more, as each busy millisecond then arms a timer.
 */
export function tickingClock (): Clock {
  if (ticking === undefined) {
    now = performance.now()
    ticking = setInterval(() => { now = performance.now() }, TICK_MS)
    ticking.unref()
  }
  return clock
}

/**
 * Brings the clock to the real time. A cache calls it before each write: an entry's life then
 * starts at the true moment of the write, never in the past, so it cannot expire early (the
 * interval may be late when the event loop was busy). Reads, which are many, only ever see the
 * clock behind the real time, which can keep an entry a little longer, never shorter.
 */
export function catchUp (): void {
  now = performance.now()
}
