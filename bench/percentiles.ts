/** Nearest-rank percentile of already sorted values; NaN for none. */
export function percentile (sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]
}

export function median (values: number[]): number {
  const sorted = Float64Array.from(values).sort()
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
