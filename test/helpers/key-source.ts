import { setTimeout as sleep } from 'node:timers/promises'
import type { ApiKeyLookup, ApiKeyRecord } from '../../lib'
import { deferred, type Deferred } from './wait'

/** An active record; `extra` adds or overrides fields. */
export function record (id: string, extra: Record<string, unknown> = {}): ApiKeyRecord {
  return { id, active: true, ...extra } as ApiKeyRecord
}

type Answer = () => unknown

interface Hold { read: Deferred<void>, wait: () => Promise<unknown> }

/**
 * The source of truth behind `lookup`, as a test controls it: an answer per key hash, changeable
 * at any time, and a count of the calls. A hash it was never told about is an unknown key.
 *
 * A lookup reads its answer when it is called, as a database query would, and may then take a
 * while to give what it read (`delayMs`, `holdNext`): an answer still travelling back when the
 * record changes is stale.
 */
export class KeySource {
  /** Every lookup gives its answer this long after reading it. */
  delayMs = 0
  /** Calls for all keys together. */
  lookups = 0
  private readonly answers = new Map<string, Answer>()
  private readonly counts = new Map<string, number>()
  private readonly holds = new Map<string, Hold>()

  /** A record, null for unknown, an Error to throw, or a function computing the answer per call. */
  answer (keyHash: string, answer: unknown): this {
    this.answers.set(keyHash, typeof answer === 'function' ? answer as Answer : () => answer)
    return this
  }

  calls (keyHash: string): number {
    return this.counts.get(keyHash) ?? 0
  }

  /**
   * The next lookup of `keyHash` reads its answer, then gives it only once `wait()` (called at
   * that moment) settles. Resolves when that lookup has read its answer.
   */
  holdNext (keyHash: string, wait: () => Promise<unknown>): Promise<void> {
    const read = deferred()
    this.holds.set(keyHash, { read, wait })
    return read.promise
  }

  readonly lookup = (async (keyHash: string) => {
    this.lookups++
    this.counts.set(keyHash, this.calls(keyHash) + 1)
    const answer = this.answers.get(keyHash)
    const read = Promise.resolve(answer === undefined ? null : answer())
    // Settled while held, a rejected answer must not count as unhandled.
    read.catch(() => {})
    const hold = this.holds.get(keyHash)
    if (hold !== undefined) {
      this.holds.delete(keyHash)
      hold.read.resolve()
      await hold.wait()
    }
    if (this.delayMs > 0) await sleep(this.delayMs)
    const value = await read
    if (value instanceof Error) throw value
    return value
  }) as ApiKeyLookup
}
