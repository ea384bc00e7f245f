/**
 * Tells when Redis came back with a dataset older than one this process saw: a restart from an
 * older snapshot, a failover to a replica that had not received the latest writes, or an older
 * dataset loaded in place (`DEBUG RELOAD`, a restore) without any connection being dropped.
 *
 * Every revocation increments one counter, `<keyPrefix>~revision`, in the script that makes it
 * (on a standalone or Sentinel-managed Redis; a Cluster cannot update a key of another slot in
 * that script, and relies on replica acknowledgements instead). The value travels in the
 * revocation's message, so every process that hears a revocation knows a revision the dataset
 * must have reached. A dataset whose counter is found lower than that lost writes: revocations
 * heard or made within their retention window are then made again (see RevocationLog).
 */
export class DatasetRevision {
  #highest = 0

  /** The highest revision this process knows the dataset reached. */
  get highest (): number {
    return this.#highest
  }

  /** A revision the dataset reached: set by a revocation, or read from Redis. */
  seen (revision: number): void {
    if (revision > this.#highest) this.#highest = revision
  }

  /**
   * Whether `current`, read from Redis, shows that the dataset went back. `knownWhenAsked` is
   * `highest` as it was when the read was sent: a revocation heard on the subscriber connection
   * while the read was under way may be newer than the value read, and is no sign of going back.
   */
  wentBack (current: number, knownWhenAsked: number): boolean {
    this.seen(current)
    return current < knownWhenAsked
  }
}

/** The counter's key: under the API-key prefix (so the prefix's ACL grant covers it), never a key hash. */
export function revisionKey (keyPrefix: string): string {
  return `${keyPrefix}~revision`
}
