import { test } from 'node:test'
import assert from 'node:assert/strict'
import Fastify from 'fastify'
import fastifyRedis from '@fastify/redis'
import plugin, { hashApiKey } from '../lib'
import { startRedis } from './helpers/redis-server'

test('smoke', async (t) => {
  const redis = await startRedis()
  t.after(() => redis.destroy())
  for (const backend of ['memory', 'redis', 'tiered'] as const) {
    const app = Fastify()
    await app.register(fastifyRedis, { url: redis.url })
    const key = 'secret-key'
    await app.register(plugin, { backend, apiKeys: { lookup: async (h) => h === hashApiKey(key) ? { id: 'a', active: true } : null } })
    app.get('/', async (req) => ({ id: req.apiKey.id }))
    await app.ready()
    await new Promise((resolve) => setTimeout(resolve, 500))
    const ok = await app.inject({ url: '/', headers: { 'x-api-key': key } })
    assert.equal(ok.statusCode, 200, ok.body)
    const ok2 = await app.inject({ url: '/', headers: { 'x-api-key': key } })
    assert.equal(ok2.statusCode, 200, ok2.body)
    const bad = await app.inject({ url: '/', headers: { 'x-api-key': 'nope' } })
    assert.equal(bad.statusCode, 401)
    console.log(backend, app.apiKeyCache.backend, app.apiKeyCache.stats(), bad.headers['www-authenticate'], bad.body)
    await app.close()
  }
})
