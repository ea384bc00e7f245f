import { LocalAnswers, type LocalTicket } from './local-answers'
import type { ApiKeyStore, CachedAnswer, StoreLoad } from './store'

/** The memory backend: one process's LocalAnswers behind the store interface. */
export function createMemoryStore (max: number, staleMs: number): ApiKeyStore {
  const local = new LocalAnswers(max, staleMs)
  let invalidated = (_keyHash: string | undefined): void => {}
  return {
    backend: 'memory',
    invalidationsReceived: 0,
    hearing: () => 0,
    get entries () {
      return local.size
    },
    onInvalidate (listener) {
      invalidated = listener
    },
    peek: (keyHash) => local.peek(keyHash),
    // Called right after `peek` missed: memory has only a ticket to give, and a stale copy.
    load: (keyHash): Promise<StoreLoad> =>
      Promise.resolve({ answer: undefined, ticket: local.ticket(), stale: local.staleRecord(keyHash) }),
    freshMs: (keyHash) => local.remainingMs(keyHash),
    endRenewal: () => Promise.resolve(),
    beginRenewal: () => Promise.resolve({ ticket: local.ticket(), freshMs: 0, mine: true }),
    renew (keyHash, _previous, answer, ttlMs, ticket) {
      local.fill(keyHash, answer, ttlMs, ticket as LocalTicket)
      return Promise.resolve()
    },
    fill: (keyHash: string, answer: CachedAnswer, ttlMs: number, ticket: unknown) =>
      Promise.resolve(local.fill(keyHash, answer, ttlMs, ticket as LocalTicket)),
    release: () => Promise.resolve(),
    get: (keyHash) => Promise.resolve(local.peek(keyHash)),
    set (keyHash, answer, ttlMs) {
      local.write(keyHash, answer, ttlMs)
      return Promise.resolve()
    },
    delete (keyHash) {
      local.remove(keyHash)
      invalidated(keyHash)
      return Promise.resolve()
    },
    deleteOwner (ownerId) {
      local.removeOwner(ownerId)
      invalidated(undefined)
      return Promise.resolve()
    },
    clear () {
      local.flush()
      invalidated(undefined)
      return Promise.resolve()
    },
    close () {
      local.flush()
      return Promise.resolve()
    }
  }
}
