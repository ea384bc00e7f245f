import { performance } from 'node:perf_hooks'
import type { CreatedKey, StoredKey } from './key-table'

/**
 * The messages of `npm run demo` between the primary process, which owns the key table, and its
 * workers, over the IPC channel node:cluster opens with each of them.
 */

/** What a worker asks of the table; the primary answers each with a `reply` of the same `id`. */
export type TableRequest =
  | { op: 'lookup', keyHash: string }
  | { op: 'create', name: string }
  | { op: 'revoke', keyId: string }

export interface TableAnswers {
  lookup: StoredKey | null
  create: CreatedKey
  /** The revoked key's hash, or null for an unknown id. */
  revoke: string | null
}

/** A revocation as the revoking worker made it, announced to every worker by the primary. */
export interface Revocation {
  keyId: string
  keyHash: string
  /** The cluster id of the worker that revoked the key. */
  by: number
  /** Wall-clock milliseconds (see `wallClockMs`) when `apiKeyCache.delete()` was called, and when it returned. */
  calledAt: number
  returnedAt: number
}

/** A worker's account of when it stopped accepting a revoked key, for the primary's summary. */
export interface DropReport {
  keyId: string
  worker: number
  /** Milliseconds from the `delete()` call to the drop (or to the check that found the key gone). */
  afterMs: number
  how: 'invalidation message' | 'check' | 'revoked it'
}

export type WorkerMessage =
  | { type: 'request', id: number, request: TableRequest }
  | { type: 'listening', port: number }
  | { type: 'revoked', revocation: Revocation }
  | { type: 'dropped', report: DropReport }

export type PrimaryMessage =
  | { type: 'reply', id: number, answer: TableAnswers[TableRequest['op']] }
  | { type: 'revoked', revocation: Revocation }
  | { type: 'shutdown' }

/**
 * Epoch milliseconds with sub-millisecond precision, comparable across the processes of one
 * machine: each process's `timeOrigin` is the wall clock read when it started, and
 * `performance.now()` counts monotonically from there. `Date.now()` would round to whole
 * milliseconds, coarser than what the demo measures.
 */
export function wallClockMs (): number {
  return performance.timeOrigin + performance.now()
}
