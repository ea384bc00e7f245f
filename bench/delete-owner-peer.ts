import { subscribe } from 'node:diagnostics_channel'
import Fastify from 'fastify'
import Redis from 'ioredis'
import { answerParent, tellParent } from '../test/helpers/child-process'
import fastifyAuthCache, { hashApiKey, type ApiKeyRecord } from '../lib'
import { sharedClockMs } from './clock'

/**
 * One process of a tiered deployment for bench/delete-owner.ts. Its source of truth is a table
 * in its own memory that the parent keeps in step over IPC; it reports when it heard an owner's
 * deletion on the invalidation channel (its memory is already rid of the owner's entries then).
 */

export interface Seed { ownerId: string, keys: string[], ownerOf: string[] }
export interface Verdicts { ownerRefused: number, ownerAccepted: number, othersAccepted: number, othersLookedUp: number }
/** A request for one of the owner's keys sent on the turn of the event loop after the message was heard. */
export interface Probe { status: number, lookedUp: boolean }

async function main (): Promise<void> {
  const { name, redisUrl } = JSON.parse(process.argv[2]!) as { name: string, redisUrl: string }
  const redis = new Redis(redisUrl)
  redis.on('error', () => {})
  const table = new Map<string, ApiKeyRecord>()
  let lookups = 0
  const heard: number[] = []
  let probeKey: string | undefined
  let probe: Probe | undefined
  subscribe('fastify-auth-cache:invalidation', (message) => {
    if ((message as { kind: string }).kind !== 'owner') return
    heard.push(sharedClockMs())
    // Before memory's sweep of the owner's entries can have got far: the refusal must not wait for it.
    const key = probeKey
    if (key !== undefined) {
      setImmediate(() => {
        const before = lookups
        status(key).then((code) => { probe = { status: code, lookedUp: lookups > before } }, () => {})
      })
    }
  })
  let keysSeeded: Seed | undefined

  const app = Fastify({ logger: { level: 'warn' } })
  await app.register(fastifyAuthCache, {
    backend: 'tiered',
    strict: true,
    redis,
    apiKeys: {
      max: 100_000,
      ttlSeconds: 600,
      lookup: async (keyHash) => {
        lookups++
        return table.get(keyHash) ?? null
      }
    }
  })
  app.get('/', async () => 'ok')
  await app.ready()
  const status = async (key: string): Promise<number> =>
    (await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': key } })).statusCode

  answerParent({
    seed: (seed: Seed) => {
      const { keys, ownerOf } = seed
      keysSeeded = seed
      probe = undefined
      for (const [i, key] of keys.entries()) table.set(hashApiKey(key), { id: `k${i}`, active: true, ownerId: ownerOf[i]! })
    },
    /** Requests every key until a whole pass makes no lookup: all are in this process's memory. */
    warm: async ({ keys }: { keys: string[] }): Promise<number> => {
      for (let pass = 1; ; pass++) {
        const before = lookups
        for (const key of keys) if (await status(key) !== 200) throw new Error(`${name}: a live key was refused`)
        if (lookups === before) return pass
      }
    },
    revokeInSource: ({ ownerId }: { ownerId: string }) => {
      probeKey = keysSeeded?.keys.find((_, i) => keysSeeded!.ownerOf[i] === ownerId)
      for (const [hash, record] of table) if (record.ownerId === ownerId) table.set(hash, { ...record, active: false })
    },
    deleteOwner: async ({ ownerId }: { ownerId: string }) => {
      const startedAt = sharedClockMs()
      await app.apiKeyCache.deleteOwner(ownerId)
      return { startedAt, endedAt: sharedClockMs() }
    },
    /** When this process heard an owner's deletion made after `since` (shared clock), or null. */
    heardAt: ({ since }: { since: number }) => heard.find((at) => at >= since) ?? null,
    probe: () => probe ?? null,
    verdicts: async ({ ownerId, keys }: { ownerId: string, keys: string[] }): Promise<Verdicts> => {
      const verdicts = { ownerRefused: 0, ownerAccepted: 0, othersAccepted: 0, othersLookedUp: 0 }
      for (const key of keys) {
        const before = lookups
        const code = await status(key)
        if (table.get(hashApiKey(key))!.ownerId === ownerId) {
          if (code === 401) verdicts.ownerRefused++
          else verdicts.ownerAccepted++
        } else {
          if (code === 200) verdicts.othersAccepted++
          if (lookups !== before) verdicts.othersLookedUp++
        }
      }
      return verdicts
    }
  }, async () => {
    await app.close()
    await redis.quit().catch(() => {})
  })
  tellParent('ready')
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
