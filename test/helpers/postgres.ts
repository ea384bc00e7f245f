/**
 * A PostgreSQL database of the test's own, on the server at 127.0.0.1:5432 (trust auth for user
 * `postgres`, as .ci/run sets it up): created with a random name before the tests of a file,
 * dropped after them. A server that cannot be reached fails the tests, saying what is missing.
 */
import { randomBytes } from 'node:crypto'
import { after, before } from 'node:test'
import pg from 'pg'

const SERVER = { host: '127.0.0.1', port: 5432, user: 'postgres' }
/** Bounds every wait on the server: connecting and each statement. */
const TIMEOUT_MS = 10_000

export interface PrivateDatabase {
  /** postgres://postgres@127.0.0.1:5432/<random name> */
  readonly url: string
  /** A pool on the database, for the test's own statements. */
  readonly pool: pg.Pool
}

function client (database: string): pg.Client {
  return new pg.Client({ ...SERVER, database, connectionTimeoutMillis: TIMEOUT_MS, query_timeout: TIMEOUT_MS })
}

/** Runs `statement` on the server's `postgres` database. */
async function admin (statement: string): Promise<void> {
  const connection = client('postgres')
  try {
    await connection.connect()
  } catch (err) {
    throw new Error(`PostgreSQL is not reachable at postgres://${SERVER.user}@${SERVER.host}:${SERVER.port} (${(err as Error).message}). ` +
      'These tests need it running with trust auth for local TCP connections of user postgres: .ci/run sets that up ' +
      '(apt-get install postgresql; pg_ctlcluster <version> main start).', { cause: err })
  }
  try {
    await connection.query(statement)
  } finally {
    await connection.end()
  }
}

export function usePrivateDatabase (): PrivateDatabase {
  const name = `fac_test_${randomBytes(6).toString('hex')}`
  let pool: pg.Pool | undefined
  before(async () => {
    await admin(`CREATE DATABASE ${name}`)
    pool = new pg.Pool({ ...SERVER, database: name, connectionTimeoutMillis: TIMEOUT_MS, query_timeout: TIMEOUT_MS })
    pool.on('error', () => {})
  })
  after(async () => {
    await pool?.end()
    // FORCE: a connection an aborted child process left open must not keep the database.
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  })
  return {
    url: `postgres://${SERVER.user}@${SERVER.host}:${SERVER.port}/${name}`,
    get pool () { return pool! }
  }
}
