import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'

/** Polls `check` every 20 ms until it holds, or fails the test after `deadlineMs`. */
export async function waitUntil (what: string, deadlineMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + deadlineMs
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${deadlineMs} ms waiting until ${what}`)
    await sleep(20)
  }
}
