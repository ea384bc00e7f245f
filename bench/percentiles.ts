/**
 * The p-th percentile (p in 0..100) of already sorted values; NaN for none. By nearest rank: the
 * smallest value with at least p % of the values at or below it. With `'upper'`, the smallest
 * value with more than p % at or below it: the two differ only where p % of the count is a whole
 * number, as for the median of an even count, where 'upper' takes the upper middle value. It is
 * never below the nearest rank, so a test that asserts an upper bound on it asks no less.
 * The benchmarks and tests share this one definition (bench/, test/).
 */
export function percentile (sorted: ArrayLike<number>, p: number, rank: 'nearest' | 'upper' = 'nearest'): number {
  if (sorted.length === 0) return NaN
  const share = (p / 100) * sorted.length
  const index = rank === 'nearest' ? Math.ceil(share) - 1 : Math.floor(share)
  return sorted[Math.min(sorted.length - 1, Math.max(0, index))]
}

/** The values in ascending numeric order, in a new array (NaN last). */
export function sortedCopy (values: ArrayLike<number>): Float64Array {
  return Float64Array.from(values).sort()
}

/** The mean of the two middle values for an even count. */
export function median (values: number[]): number {
  const sorted = sortedCopy(values)
  const middle = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/** Grows by doubling, so recording a sample on the load generator's hot path allocates rarely. */
export class SampleBuffer {
  private values = new Float64Array(1 << 16)
  length = 0

  push (value: number): void {
    if (this.length === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2)
      bigger.set(this.values)
      this.values = bigger
    }
    this.values[this.length++] = value
  }

  append (other: SampleBuffer): void {
    for (let i = 0; i < other.length; i++) this.push(other.values[i])
  }

  sorted (): Float64Array {
    return this.values.slice(0, this.length).sort()
  }
}
