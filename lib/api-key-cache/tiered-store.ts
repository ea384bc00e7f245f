import { MemoryApiKeyStore, type LocalFillToken } from './memory-store'
import type { RedisApiKeyStore } from './redis-store'
import type { InvalidationBus } from './invalidation-bus'
import type { ApiKeyStore, CachedAnswer, StoreRead } from './store'

interface TieredToken { local: LocalFillToken, shared: unknown }

/**
 * Process memory (L1) in front of Redis (L2). L1 is used only while the invalidation bus is
 * trusted; every invalidation, and every change of trust, drops the affected L1 entries, and L1
 * refuses the copies of L2 reads and lookups that were in flight meanwhile, so their possibly
 * stale answers do not come back.
 */
export class TieredApiKeyStore implements ApiKeyStore {
  readonly backend = 'tiered' as const
  readonly local: MemoryApiKeyStore
  private readonly shared: RedisApiKeyStore
  private bus: InvalidationBus | undefined

  constructor (max: number, shared: RedisApiKeyStore) {
    this.local = new MemoryApiKeyStore(max)
    this.shared = shared
  }

  /** The bus is built after the store because its handlers call into it. */
  attach (bus: InvalidationBus): void {
    this.bus = bus
  }

  get invalidationsReceived (): number {
    return this.bus?.received ?? 0
  }

  private get trusted (): boolean {
    return this.bus?.trusted === true
  }

  peek (keyHash: string): CachedAnswer | undefined {
    return this.trusted ? this.local.peek(keyHash) : undefined
  }

  async read (keyHash: string): Promise<StoreRead> {
    const local = this.local.token()
    const cached = this.peek(keyHash)
    if (cached !== undefined) return { answer: cached, token: { local, shared: undefined } }
    const read = await this.shared.read(keyHash)
    if (read.answer !== undefined) this.copyToLocal(keyHash, read.answer, read.ttlMs, local)
    return { answer: read.answer, token: { local, shared: read.token } }
  }

  async fill (keyHash: string, answer: CachedAnswer, ttlMs: number, token: unknown): Promise<boolean> {
    const { local, shared } = token as TieredToken
    // Invalidated here since the read (a delete or clear, ours or announced, or a loss of the
    // bus): a clear does not bump the key's generation in Redis, so the L2 check alone would
    // accept the answer.
    if (!this.local.accepts(keyHash, local)) return false
    // Refused in L2 means deleted meanwhile: then L1 must not have it either.
    const written = await this.shared.fill(keyHash, answer, ttlMs, shared)
    if (written) this.copyToLocal(keyHash, answer, ttlMs, local)
    return written
  }

  private copyToLocal (keyHash: string, answer: CachedAnswer, ttlMs: number, token: LocalFillToken): void {
    if (this.trusted) this.local.fillSync(keyHash, answer, ttlMs, token)
  }

  async set (keyHash: string, answer: CachedAnswer, ttlMs: number): Promise<void> {
    const local = this.local.token()
    await this.shared.set(keyHash, answer, ttlMs)
    this.copyToLocal(keyHash, answer, ttlMs, local)
  }

  async delete (keyHash: string): Promise<void> {
    this.local.remove(keyHash)
    try {
      await this.shared.delete(keyHash)
    } finally {
      // A read in this process between the two steps may have copied the old L2 value.
      this.local.remove(keyHash)
    }
  }

  async clear (): Promise<void> {
    this.local.flush()
    try {
      await this.shared.clear()
    } finally {
      this.local.flush()
    }
  }

  /** Called by the bus. */
  invalidated (keyHash: string | undefined): void {
    if (keyHash === undefined) this.local.flush()
    else this.local.remove(keyHash)
  }

  async close (): Promise<void> {
    await this.bus?.close()
    this.local.flush()
  }
}
