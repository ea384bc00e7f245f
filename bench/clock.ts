/**
 * Milliseconds on a clock that separate processes on one machine share with sub-millisecond
 * precision: `Date.now()` is too coarse to time a 10 ms bound, and `performance.now()` alone
 * starts at zero in every process.
 */
export function sharedClockMs (): number {
  return performance.timeOrigin + performance.now()
}
