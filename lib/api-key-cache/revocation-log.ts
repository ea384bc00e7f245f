/**
 * The revocations this process made or heard of recently, kept so that they can be made again
 * on a Redis that lost them: a failover to a replica the write had not reached, or a restart from a snapshot
 * taken before it. Redis replication and persistence are asynchronous, so an acknowledged DEL
 * can vanish; the record it removed then comes back. A revocation only needs replaying while
 * what it removed could still be alive, so each is kept for `retainMs`: the longest an entry
 * written before it could live in Redis.
 */
export type Revocation = { kind: 'delete', keyHash: string } | { kind: 'clear' } | { kind: 'owner', ownerId: string }

export class RevocationLog {
  readonly #retainMs: number
  readonly #max: number
  // Oldest first (Map order); a key deleted again moves to the end.
  readonly #deletes = new Map<string, number>()
  // Owners whose entries were removed (deleteOwner), oldest first, as #deletes.
  readonly #owners = new Map<string, number>()
  #clearedAt = -Infinity

  constructor (retainMs: number, max: number) {
    this.#retainMs = retainMs
    this.#max = max
  }

  deleted (keyHash: string): void {
    this.#forgetOld()
    this.#deletes.delete(keyHash)
    this.#deletes.set(keyHash, performance.now())
    // More revocations than memory allows: remembering a clear covers all of them.
    if (this.#deletes.size > this.#max) this.cleared()
  }

  ownerDeleted (ownerId: string): void {
    this.#forgetOld()
    this.#owners.delete(ownerId)
    this.#owners.set(ownerId, performance.now())
    if (this.#owners.size > this.#max) this.cleared()
  }

  cleared (): void {
    this.#deletes.clear()
    this.#owners.clear()
    this.#clearedAt = performance.now()
  }

  /** Whether any revocation is still kept. */
  holdsAny (): boolean {
    this.#forgetOld()
    return this.#clearedAt !== -Infinity || this.#deletes.size > 0 || this.#owners.size > 0
  }

  /** What must be made again, clear first. */
  pending (): Revocation[] {
    this.#forgetOld()
    const pending: Revocation[] = this.#clearedAt === -Infinity ? [] : [{ kind: 'clear' }]
    for (const keyHash of this.#deletes.keys()) pending.push({ kind: 'delete', keyHash })
    for (const ownerId of this.#owners.keys()) pending.push({ kind: 'owner', ownerId })
    return pending
  }

  #forgetOld (): void {
    const horizon = performance.now() - this.#retainMs
    if (this.#clearedAt < horizon) this.#clearedAt = -Infinity
    for (const [keyHash, at] of this.#deletes) {
      if (at >= horizon) break
      this.#deletes.delete(keyHash)
    }
    for (const [ownerId, at] of this.#owners) {
      if (at >= horizon) break
      this.#owners.delete(ownerId)
    }
  }
}
