import { randomBytes } from 'node:crypto'
import { generateApiKey, type BaseApiKeyRecord } from '../lib'

/** The record the example app's `lookup` answers, whichever table holds the keys. */
export interface ExampleKeyRecord extends BaseApiKeyRecord {
  id: string
  name: string
  active: boolean
  /** What the key may do; routes list the scopes they need. */
  scopes: string[]
}

export interface StoredKey extends ExampleKeyRecord {
  createdAt: number
}

export interface CreatedKey {
  id: string
  name: string
  /** The plaintext: handed to the caller once and kept nowhere. */
  key: string
}

/**
 * What the example app needs of a table of API keys: this in-memory KeyTable, or the
 * PostgreSQL one of examples/postgres.ts.
 */
export interface KeyStore {
  /** Stores a new key's hash and answers its plaintext, which nothing keeps. */
  create (name: string, scopes: readonly string[]): CreatedKey | Promise<CreatedKey>
  find (hash: string): ExampleKeyRecord | undefined | Promise<ExampleKeyRecord | undefined>
  /** Marks the key revoked; answers its hash, for the cache, or undefined for an unknown id. */
  revoke (id: string): string | undefined | Promise<string | undefined>
}

/**
 * Stands in for the application's database of API keys. Rows are found by the key's hash, the
 * only form in which a key is stored; ids exist so that a key can be revoked without its plaintext.
 */
export class KeyTable implements KeyStore {
  private readonly byHash = new Map<string, StoredKey>()
  private readonly hashById = new Map<string, string>()
  private readonly prefix: string

  constructor (prefix: string) {
    this.prefix = prefix
  }

  create (name: string, scopes: readonly string[] = []): CreatedKey {
    const { key, hash } = generateApiKey({ prefix: this.prefix })
    const id = `key_${randomBytes(8).toString('hex')}`
    this.byHash.set(hash, { id, name, active: true, createdAt: Date.now(), scopes: [...scopes] })
    this.hashById.set(id, hash)
    return { id, name, key }
  }

  /**
   * A copy, as a database would return: the cache must not see a later revocation through a
   * shared object, or the example would hide a missing `apiKeyCache.delete`.
   */
  find (hash: string): StoredKey | undefined {
    const row = this.byHash.get(hash)
    return row === undefined ? undefined : { ...row, scopes: [...row.scopes] }
  }

  /** Marks the key revoked; answers its hash, for the cache, or undefined for an unknown id. */
  revoke (id: string): string | undefined {
    const hash = this.hashById.get(id)
    if (hash === undefined) return undefined
    this.byHash.get(hash)!.active = false
    return hash
  }

  /** Every stored row with its hash, for inspection. */
  rows (): Array<StoredKey & { hash: string }> {
    return [...this.byHash].map(([hash, row]) => ({ ...row, hash }))
  }
}
