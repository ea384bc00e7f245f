import { randomUUID } from 'node:crypto'
import pg from 'pg'
// As in app.ts: the package's own sources, which `from 'fastify-auth-cache'` would load once built.
import { generateApiKey } from '../lib'
import type { CreatedKey, ExampleKeyRecord, KeyStore } from './key-table'

/**
 * The example's keys in PostgreSQL (`DATABASE_URL=postgres://… npm start`): the table, the
 * mapping of a row to the record the plugin caches, and the three statements the routes of
 * examples/app.ts need. The same table as examples/quick-start.ts, so both run on one database.
 *
 * A key is stored by its SHA-256 only (`hash`, the primary key: `lookup` is called with it);
 * its plaintext is handed to the client once, when it is created, and kept nowhere.
 */
export const SCHEMA = `CREATE TABLE IF NOT EXISTS api_keys (
  hash text PRIMARY KEY,
  id text NOT NULL UNIQUE,
  owner_id text NOT NULL,
  scopes text[] NOT NULL DEFAULT '{}',
  active boolean NOT NULL DEFAULT true,
  expires_at timestamptz
)`

/** A row as `pg` hands it over: `text[]` as an array, `timestamptz` as a Date (or null). */
export interface KeyRow {
  hash: string
  id: string
  owner_id: string
  scopes: string[]
  active: boolean
  expires_at: Date | null
}

/**
 * The record for one row. The plugin compares `expiresAt`, epoch ms, with the clock on every
 * hit; a column that does not come back as a Date (a schema that drifted: `text`, `bigint`) is
 * an error, which the plugin answers with 503 rather than guess at a key's expiry.
 */
export function rowToRecord (row: KeyRow): ExampleKeyRecord {
  const expires: unknown = row.expires_at
  if (expires !== null && !(expires instanceof Date)) {
    throw new TypeError(`api_keys.expires_at of key ${row.id} is not a timestamptz (got ${typeof expires})`)
  }
  return {
    id: row.id,
    // The example app names a key's client; here its owner is that name.
    name: row.owner_id,
    ownerId: row.owner_id,
    scopes: row.scopes,
    active: row.active,
    ...(expires === null ? {} : { expiresAt: expires.getTime() })
  }
}

/** How long the example waits for PostgreSQL to accept a connection, and for any statement. */
const CONNECT_TIMEOUT_MS = 5000
const STATEMENT_TIMEOUT_MS = 5000

export class PostgresKeyTable implements KeyStore {
  readonly #pool: pg.Pool
  readonly #prefix: string

  private constructor (pool: pg.Pool, prefix: string) {
    this.#pool = pool
    this.#prefix = prefix
  }

  /** Connects, and creates the table if it is missing. */
  static async open (connectionString: string, prefix: string): Promise<PostgresKeyTable> {
    const pool = new pg.Pool({
      connectionString,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: STATEMENT_TIMEOUT_MS,
      query_timeout: STATEMENT_TIMEOUT_MS
    })
    // An idle client losing its connection (a database restart) must not crash the process.
    pool.on('error', () => {})
    try {
      await pool.query(SCHEMA)
    } catch (err) {
      await pool.end().catch(() => {})
      throw err
    }
    return new PostgresKeyTable(pool, prefix)
  }

  async create (name: string, scopes: readonly string[]): Promise<CreatedKey> {
    const { key, hash } = generateApiKey({ prefix: this.#prefix })
    const id = `key_${randomUUID()}`
    await this.#pool.query('INSERT INTO api_keys (hash, id, owner_id, scopes) VALUES ($1, $2, $3, $4)', [hash, id, name, [...scopes]])
    return { id, name, key }
  }

  async find (hash: string): Promise<ExampleKeyRecord | undefined> {
    const { rows } = await this.#pool.query<KeyRow>('SELECT hash, id, owner_id, scopes, active, expires_at FROM api_keys WHERE hash = $1', [hash])
    return rows.length === 0 ? undefined : rowToRecord(rows[0]!)
  }

  /** The row first: the caller then deletes the hash from the cache (`apiKeyCache.delete`). */
  async revoke (id: string): Promise<string | undefined> {
    const { rows } = await this.#pool.query<{ hash: string }>('UPDATE api_keys SET active = false WHERE id = $1 RETURNING hash', [id])
    return rows[0]?.hash
  }

  async close (): Promise<void> {
    await this.#pool.end()
  }
}
