// DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx examples/quick-start.ts
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import pg from 'pg'
import fastifyAuthCache, { generateApiKey } from 'fastify-auth-cache'

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, connectionTimeoutMillis: 5000 })

// Keys are stored by their SHA-256 (`hash`), never in plaintext.
const schema = `CREATE TABLE IF NOT EXISTS api_keys (
  hash text PRIMARY KEY, id text NOT NULL UNIQUE, owner_id text NOT NULL,
  scopes text[] NOT NULL DEFAULT '{}', active boolean NOT NULL DEFAULT true, expires_at timestamptz)`

interface KeyRow { id: string, owner_id: string, scopes: string[], active: boolean, expires_at: Date | null }

// pg hands a timestamptz over as a Date; the plugin wants epoch ms. Throwing answers 503.
function toRecord (row: KeyRow) {
  if (row.expires_at !== null && !(row.expires_at instanceof Date)) throw new Error('expires_at is not a timestamptz')
  return { id: row.id, ownerId: row.owner_id, scopes: row.scopes, active: row.active, expiresAt: row.expires_at?.getTime() }
}

async function createKey (ownerId: string, scopes: string[]) {
  const { key, hash } = generateApiKey({ prefix: 'live' })
  const id = `key_${randomUUID()}`
  await db.query('INSERT INTO api_keys (hash, id, owner_id, scopes) VALUES ($1, $2, $3, $4)', [hash, id, ownerId, scopes])
  return { id, key } // the plaintext: shown once, stored nowhere
}

async function main () {
  await db.query(schema)
  const app = Fastify({ logger: true })
  await app.register(fastifyAuthCache, {
    apiKeys: {
      format: { prefix: 'live' }, // junk keys are refused before any lookup
      // Called on a cache miss with the key's SHA-256, never the key itself.
      lookup: async (keyHash) => {
        const { rows } = await db.query<KeyRow>('SELECT * FROM api_keys WHERE hash = $1', [keyHash])
        return rows.length === 0 ? null : toRecord(rows[0])
      }
    }
  })

  app.get('/health', { config: { apiKey: false } }, async () => ({ status: 'ok' }))
  app.get('/whoami', async (request) => ({ id: request.apiKey.id, owner: request.apiKey.ownerId }))

  app.post('/keys', { config: { apiKey: { scopes: ['keys:write'] } } }, async (request, reply) => {
    return reply.code(201).send(await createKey(String(request.apiKey.ownerId), ['keys:read']))
  })

  // Revoking: the source of truth first, then the cache.
  app.delete<{ Params: { id: string } }>('/keys/:id', { config: { apiKey: { scopes: ['keys:write'] } } }, async (request, reply) => {
    const { rows } = await db.query<{ hash: string }>('UPDATE api_keys SET active = false WHERE id = $1 RETURNING hash', [request.params.id])
    if (rows.length === 0) return reply.code(404).send({ message: 'no such key' })
    await app.apiKeyCache.delete(rows[0].hash)
    return reply.code(204).send()
  })

  app.addHook('onClose', () => db.end())
  for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close().then(() => process.exit(0)) })
  await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
  const admin = await createKey('admin', ['keys:read', 'keys:write'])
  console.log(`admin key (shown once): ${admin.key}`)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
