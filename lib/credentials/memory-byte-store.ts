import type { CredentialByteStore } from './byte-store'

interface Entry { bytes: Buffer, expiresAt: number }
interface Lock { token: string, expiresAt: number }

/** One process's credentials, with the same TTL and lock semantics as Redis (monotonic clock). */
export class MemoryCredentialByteStore implements CredentialByteStore {
  readonly backend = 'memory' as const
  private readonly values = new Map<string, Entry>()
  private readonly locks = new Map<string, Lock>()

  get (key: string): Promise<Buffer | undefined> {
    const entry = this.values.get(key)
    if (entry !== undefined && entry.expiresAt <= performance.now()) this.values.delete(key)
    // A copy, so a caller that mutates what it loaded cannot change what is stored.
    return Promise.resolve(entry && entry.expiresAt > performance.now() ? Buffer.from(entry.bytes) : undefined)
  }

  async getWithTtl (key: string): Promise<{ bytes: Buffer | undefined, ttlMs: number | undefined }> {
    const bytes = await this.get(key)
    const expiresAt = this.values.get(key)?.expiresAt ?? Infinity
    return { bytes, ttlMs: expiresAt === Infinity ? undefined : expiresAt - performance.now() }
  }

  set (key: string, bytes: Buffer, ttlMs: number | undefined): Promise<void> {
    this.write(key, bytes, ttlMs)
    return Promise.resolve()
  }

  private write (key: string, bytes: Buffer, ttlMs: number | undefined): void {
    this.values.set(key, { bytes: Buffer.from(bytes), expiresAt: ttlMs === undefined ? Infinity : performance.now() + ttlMs })
  }

  delete (key: string): Promise<void> {
    this.values.delete(key)
    return Promise.resolve()
  }

  private holds (key: string, token: string): boolean {
    const lock = this.locks.get(key)
    return lock !== undefined && lock.token === token && lock.expiresAt > performance.now()
  }

  tryLock (key: string, token: string, ttlMs: number): Promise<boolean> {
    const lock = this.locks.get(key)
    // The same token holds it already: as in Redis, a repeated try is told so.
    if (lock !== undefined && lock.expiresAt > performance.now() && lock.token !== token) return Promise.resolve(false)
    this.locks.set(key, { token, expiresAt: performance.now() + ttlMs })
    return Promise.resolve(true)
  }

  saveAndUnlock (key: string, token: string, bytes: Buffer, ttlMs: number | undefined): Promise<boolean> {
    if (!this.holds(key, token)) return Promise.resolve(false)
    this.write(key, bytes, ttlMs)
    this.locks.delete(key)
    return Promise.resolve(true)
  }

  unlock (key: string, token: string): Promise<void> {
    if (this.holds(key, token)) this.locks.delete(key)
    return Promise.resolve()
  }
}
