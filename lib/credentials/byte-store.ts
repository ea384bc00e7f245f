/**
 * Where credential bytes live. Both backends implement this; `CredentialStore` on top of it
 * owns serialization, TTL policy and the update protocol, so they cannot drift apart.
 */
export interface CredentialByteStore {
  readonly backend: 'memory' | 'redis'
  get (key: string): Promise<Buffer | undefined>
  /** The bytes and the ms left of their TTL (undefined: none). */
  getWithTtl (key: string): Promise<{ bytes: Buffer | undefined, ttlMs: number | undefined }>
  set (key: string, bytes: Buffer, ttlMs: number | undefined): Promise<void>
  delete (key: string): Promise<void>
  /** Takes the lock of `key` for `ttlMs` unless another token holds it; resolves true when `token` holds it. */
  tryLock (key: string, token: string, ttlMs: number): Promise<boolean>
  /** Writes and releases in one step, only while `token` still holds the lock; false when it was lost. */
  saveAndUnlock (key: string, token: string, bytes: Buffer, ttlMs: number | undefined): Promise<boolean>
  /** Releases the lock only while `token` still holds it. */
  unlock (key: string, token: string): Promise<void>
}
