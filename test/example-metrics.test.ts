import assert from 'node:assert/strict'
import { once } from 'node:events'
import { join } from 'node:path'
import { test } from 'node:test'
import { buildExampleApp } from '../examples/app'
import { startPrometheus } from '../examples/metrics'
import { Script } from './helpers/child-process'
import { within } from './helpers/wait'

test('the example server exposes the plugin\'s metrics to Prometheus at /metrics, unauthenticated', async (t) => {
  const metrics = await startPrometheus()
  assert.ok(metrics !== undefined, '@opentelemetry/exporter-prometheus is a devDependency')
  const { app, demoKey } = await buildExampleApp({ metrics })
  t.after(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': demoKey.key } })).status, 200)
  assert.equal((await fetch(`${base}/whoami`, { headers: { 'x-api-key': demoKey.key } })).status, 200)
  assert.equal((await fetch(`${base}/whoami`)).status, 401)
  const response = await fetch(`${base}/metrics`)
  assert.equal(response.status, 200)
  const text = await response.text()
  assert.match(text, /fastify_auth_cache_requests_total\{outcome="miss",backend="memory"[^}]*\} 1/)
  assert.match(text, /fastify_auth_cache_requests_total\{outcome="hit",backend="memory"[^}]*\} 1/)
  assert.match(text, /fastify_auth_cache_requests_total\{outcome="missing",backend="memory"[^}]*\} 1/)
  assert.match(text, /fastify_auth_cache_lookup_duration_count\{[^}]*\} 1/)
  assert.match(text, /fastify_auth_cache_entries\{[^}]*\} 1/)
  assert.ok(!text.includes(demoKey.key), 'no plaintext key')
})

test('examples/metrics.ts run on its own prints a Prometheus scrape and exits', async (t) => {
  const script = Script.run(t, join('examples', 'metrics.ts'), process.env)
  // A busy 2-core machine starts tsx slowly.
  const [code] = await within('examples/metrics.ts exits', once(script.process, 'exit'), 60_000)
  const text = script.output()
  assert.equal(code, 0, text)
  assert.match(text, /^GET \/metrics after a miss, a hit and a request without a key \(200\):$/m)
  assert.match(text, /^# TYPE fastify_auth_cache_requests_total counter$/m)
  for (const outcome of ['miss', 'hit', 'missing']) {
    assert.match(text, new RegExp(`^fastify_auth_cache_requests_total\\{outcome="${outcome}",backend="memory"[^}]*\\} 1$`, 'm'))
  }
  assert.match(text, /^fastify_auth_cache_lookup_duration_count\{[^}]*\} 1$/m)
  assert.doesNotMatch(text, /demo_[A-Za-z0-9]{20,}/, 'no plaintext key')
})
