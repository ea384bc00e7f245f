import type { Period } from './period'
import type { QuotaGrant, QuotaStore } from './quota-store'

interface Count {
  counted: number
  endMs: number
}

// Ended periods are forgotten after this many steps, so memory follows the owners in use.
const PURGE_EVERY = 1024

/** Counts in process memory: one plugin registration's quotas (the memory backend). */
export class MemoryQuotaStore implements QuotaStore {
  readonly #counts = new Map<string, Count>()
  #steps = 0

  async take (owner: string, period: Period, limit: number, requested: number): Promise<QuotaGrant> {
    if (++this.#steps % PURGE_EVERY === 0) this.#purge()
    const name = `${owner}|${period.id}`
    let count = this.#counts.get(name)
    if (count === undefined) this.#counts.set(name, count = { counted: 0, endMs: period.endMs })
    const granted = Math.max(0, Math.min(requested, limit - count.counted))
    count.counted += granted
    return { granted, left: Math.max(0, limit - count.counted) }
  }

  async giveBack (owner: string, period: Period, units: number): Promise<void> {
    const count = this.#counts.get(`${owner}|${period.id}`)
    if (count !== undefined) count.counted -= Math.min(units, count.counted)
  }

  #purge (): void {
    const now = Date.now()
    for (const [name, count] of this.#counts) {
      if (count.endMs <= now) this.#counts.delete(name)
    }
  }
}
