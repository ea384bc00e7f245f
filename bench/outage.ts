import Fastify, { type FastifyInstance } from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import fastifyAuthCache, { hashApiKey, type ApiKeysOptions, type ApiKeyRecord } from '../lib'
import { benchKeys } from './keys'
import { percentile } from './percentiles'

/**
 * `npm run bench:outage`: what clients see when the database behind `lookup` fails, with and
 * without `staleIfErrorSeconds`, and what `refreshAheadSeconds` does to latency while it is up.
 * A two-minute outage under steady load, compressed: records live TTL_S seconds, the database
 * answers in DB_MS and is down from DOWN_AT_S to UP_AT_S (its lookups hang until
 * `lookupTimeoutMs`), and CONCURRENCY clients send requests for KEYS keys back to back.
 *
 * Environment: OUTAGE_SECONDS (12), OUTAGE_CONCURRENCY (16).
 */

const SECONDS = Number(process.env.OUTAGE_SECONDS || 12)
const CONCURRENCY = Number(process.env.OUTAGE_CONCURRENCY || 16)
const KEYS = benchKeys(200)
const TTL_S = 2
const DB_MS = 20
const DOWN_AT_S = SECONDS / 4
const UP_AT_S = SECONDS * 3 / 4

interface Outcome { label: string, statuses: Record<number, number>, duringOutage: Record<number, number>, p50: number, p99: number, max: number, lookups: number }

async function run (label: string, apiKeys: Omit<ApiKeysOptions, 'lookup'>, outage: boolean): Promise<Outcome> {
  const table = new Map<string, ApiKeyRecord>(KEYS.map((key, i) => [hashApiKey(key), { id: `key-${i}`, active: true }]))
  let down = false
  let lookups = 0
  const app: FastifyInstance = Fastify({ logger: false })
  await app.register(fastifyAuthCache, {
    apiKeys: {
      ...apiKeys,
      ttlSeconds: TTL_S,
      lookupTimeoutMs: 250,
      lookup: async (keyHash) => {
        lookups++
        if (down) return await new Promise(() => {})
        await sleep(DB_MS)
        return table.get(keyHash) ?? null
      }
    }
  })
  app.get('/', async () => 'ok')
  await app.ready()

  const statuses: Record<number, number> = {}
  const duringOutage: Record<number, number> = {}
  const latencies: number[] = []
  const started = performance.now()
  const timers = outage
    ? [setTimeout(() => { down = true }, DOWN_AT_S * 1000), setTimeout(() => { down = false }, UP_AT_S * 1000)]
    : []
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() - started < SECONDS * 1000) {
      const key = KEYS[Math.floor(Math.random() * KEYS.length)]
      const sent = performance.now()
      const response = await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': key } })
      latencies.push(performance.now() - sent)
      statuses[response.statusCode] = (statuses[response.statusCode] ?? 0) + 1
      // Once every record cached before the outage has outlived its TTL.
      const sentS = (sent - started) / 1000
      if (outage && sentS >= DOWN_AT_S + TTL_S && sentS < UP_AT_S) duringOutage[response.statusCode] = (duringOutage[response.statusCode] ?? 0) + 1
      await sleep(1)
    }
  }))
  for (const timer of timers) clearTimeout(timer)
  await app.close()
  latencies.sort((a, b) => a - b)
  return { label, statuses, duringOutage, p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies[latencies.length - 1], lookups }
}

function share (statuses: Record<number, number>, status: number): string {
  const total = Object.values(statuses).reduce((a, b) => a + b, 0)
  return `${(100 * (statuses[status] ?? 0) / total).toFixed(1)}%`
}

async function main (): Promise<void> {
  const outcomes = [
    await run('database down, no staleIfErrorSeconds', {}, true),
    await run(`database down, staleIfErrorSeconds ${SECONDS}`, { staleIfErrorSeconds: SECONDS }, true),
    await run('database up, no refreshAheadSeconds', {}, false),
    await run(`database up, refreshAheadSeconds ${TTL_S / 2}`, { refreshAheadSeconds: TTL_S / 2 }, false)
  ]
  console.log(`${SECONDS} s, ${CONCURRENCY} clients, ${KEYS.length} keys, TTL ${TTL_S} s, database ${DB_MS} ms per lookup` +
    ` (down from ${DOWN_AT_S} s to ${UP_AT_S} s in the outage rows, hanging until lookupTimeoutMs 250 ms), memory backend\n`)
  console.log('| run | requests | 200 | 503 | after every TTL ran out, in the outage: 200 / 503 | p50 ms | p99 ms | max ms | lookups |')
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for (const o of outcomes) {
    const total = Object.values(o.statuses).reduce((a, b) => a + b, 0)
    const outage = Object.keys(o.duringOutage).length === 0 ? '—' : `${share(o.duringOutage, 200)} / ${share(o.duringOutage, 503)}`
    console.log(`| ${o.label} | ${total} | ${share(o.statuses, 200)} | ${share(o.statuses, 503)} | ${outage} | ` +
      `${o.p50.toFixed(2)} | ${o.p99.toFixed(2)} | ${o.max.toFixed(1)} | ${o.lookups} |`)
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
