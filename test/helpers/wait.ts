/**
 * Waiting in tests and benchmarks, one way each: polling a condition (`until`), bounding a
 * promise (`within`), retrying an action that may reject for a while (`retryUntilResolved`),
 * sleeping to a point on the monotonic clock (`sleepUntil`), and a promise settled from outside
 * (`deferred`). Times are `performance.now()` milliseconds.
 */
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'

/** What a check answers: undefined or false for "not yet", anything else ends the wait. */
export type Pending<T> = T | undefined | false

export interface UntilOptions {
  /** How long to keep asking; default 10 s. The check is asked at least once. */
  deadlineMs?: number
  /** Between two asks; default 20 ms. */
  pauseMs?: number
  /**
   * Whether a check that throws only means "not yet" (the last error is named on timeout). By
   * default a throw, such as a failed assertion inside the check, fails at once.
   */
  retryErrors?: boolean
}

/**
 * Asks `check` until it answers something other than undefined or false, and returns that
 * answer; fails the test, naming `what`, once the deadline passed. A number for `options` is
 * the deadline in ms.
 */
export async function until<T> (what: string, check: () => Pending<T> | Promise<Pending<T>>,
  options: number | UntilOptions = {}): Promise<T> {
  const { deadlineMs = 10_000, pauseMs = 20, retryErrors = false } = typeof options === 'number' ? { deadlineMs: options } : options
  const deadline = performance.now() + deadlineMs
  let lastError: unknown
  for (;;) {
    try {
      const answer = await check()
      if (answer !== undefined && answer !== false) return answer as T
    } catch (err) {
      if (!retryErrors) throw err
      lastError = err
    }
    if (performance.now() >= deadline) {
      const detail = lastError === undefined ? '' : ` (last error: ${(lastError as Error)?.message ?? String(lastError)})`
      assert.fail(`timed out after ${deadlineMs} ms waiting until ${what}${detail}`)
    }
    await sleep(pauseMs)
  }
}

/** Settles as `promise` does, unless `ms` pass first: then fails the test, naming `what`. */
export async function within<T> (what: string, promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new assert.AssertionError({ message: `timed out after ${ms} ms waiting until ${what}` })), ms)
  })
  try {
    return await Promise.race([promise, late])
  } finally {
    clearTimeout(timer)
  }
}

export interface Resolved<T> {
  value: T
  /** `performance.now()` right after `action` resolved. */
  resolvedAt: number
  /** The messages of the rejections before it did. */
  rejections: string[]
}

/**
 * Calls `action` until it resolves, as an application retries a `delete()` that rejects while
 * Redis fails over or restarts; pauses 100 ms after a rejection and gives up after 30 s unless
 * told otherwise.
 */
export async function retryUntilResolved<T> (what: string, action: () => Promise<T>,
  { deadlineMs = 30_000, pauseMs = 100 }: Omit<UntilOptions, 'retryErrors'> = {}): Promise<Resolved<T>> {
  const rejections: string[] = []
  const { value, resolvedAt } = await until(what, async () => {
    try {
      const value = await action()
      return { value, resolvedAt: performance.now() }
    } catch (err) {
      rejections.push((err as Error)?.message ?? String(err))
      throw err
    }
  }, { deadlineMs, pauseMs, retryErrors: true })
  return { value, resolvedAt, rejections }
}

/** Sleeps until `performance.now()` reads at least `at` (a timer may fire a fraction of a millisecond early). */
export async function sleepUntil (at: number): Promise<void> {
  while (performance.now() < at) await sleep(Math.max(1, Math.ceil(at - performance.now())))
}

export interface Deferred<T> {
  promise: Promise<T>
  resolve (value: T): void
  reject (err: Error): void
}

/** A promise and the functions that settle it, for a test to decide when something ends. */
export function deferred<T = void> (): Deferred<T> {
  let resolve!: (value: T) => void
  let reject!: (err: Error) => void
  const promise = new Promise<T>((_resolve, _reject) => { resolve = _resolve; reject = _reject })
  return { promise, resolve, reject }
}
