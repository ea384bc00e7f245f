// Placeholder for the README's Quick start (its docs helper writes the real one): a server whose
// API keys live in PostgreSQL, table api_keys (key_hash text primary key, id text, active boolean).
// It imports only what a user installs: fastify, pg and fastify-auth-cache.
import Fastify from 'fastify'
import pg from 'pg'
import fastifyAuthCache from 'fastify-auth-cache'

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL })
const app = Fastify({ logger: true })

app.register(fastifyAuthCache, {
  backend: 'memory',
  apiKeys: {
    lookup: async (keyHash) => {
      const { rows } = await pool.query<{ id: string, active: boolean }>(
        'SELECT id, active FROM api_keys WHERE key_hash = $1', [keyHash])
      return rows[0] ?? null
    }
  }
})
app.addHook('onClose', async () => { await pool.end() })

app.get('/health', { config: { apiKey: false } }, async () => ({ ok: true }))
app.get('/me', async (request) => ({ id: request.apiKey.id }))

app.listen({ port: Number(process.env.PORT ?? 3000) }).catch((err: unknown) => {
  app.log.error(err)
  process.exit(1)
})
