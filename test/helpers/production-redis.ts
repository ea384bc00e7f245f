/**
 * What the "Redis as production runs it" scenarios share: a source of truth the test controls,
 * in-process apps (each one a "process" with its own Redis client), requests timed on one clock,
 * and a ledger that judges every answer against the revocations that resolved before it.
 */
import assert from 'node:assert/strict'
import type { TestContext } from 'node:test'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Cluster, Redis } from 'ioredis'
import fastifyAuthCache, { generateApiKey, type FastifyAuthCacheOptions } from '../../lib'
import { KeySource } from './key-source'

export type SharedBackend = 'redis' | 'tiered'
export const SHARED_BACKENDS: SharedBackend[] = ['redis', 'tiered']

/** CONTRACT section 4: while Redis is healthy, and around faults. */
export const HEALTHY_BOUND_MS = 10
export const FAULT_BOUND_MS = 2000

/** Milliseconds on one monotonic clock shared by every app of the test process. */
export const now = (): number => performance.now()

export interface TestKey { key: string, hash: string }

export function newTestKey (prefix = 'prod'): TestKey {
  return generateApiKey({ prefix })
}

export interface ScenarioApp {
  name: string
  app: FastifyInstance
}

export interface AppSettings {
  name: string
  backend: SharedBackend
  redis: Redis | Cluster
  source: KeySource
  /** Default 1000: a stall of a loaded machine is not the subject here. */
  redisTimeoutMs?: number
  apiKeys?: Omit<NonNullable<FastifyAuthCacheOptions['apiKeys']>, 'lookup'>
  credentials?: FastifyAuthCacheOptions['credentials']
  /** Wait for `ready()`; default true. */
  ready?: boolean
}

/**
 * Apps of one test, closed together (and their clients with them: the plugin never closes a
 * client it did not create). Not the contract's `buildApp`: a scenario names its apps for the
 * ledger, may take one before `ready()`, and ends them when it chooses, not after the test.
 */
export class AppSet {
  private readonly apps: ScenarioApp[] = []
  private readonly clients: Array<Redis | Cluster> = []

  async start (settings: AppSettings): Promise<ScenarioApp> {
    const app = Fastify({ logger: false })
    this.clients.push(settings.redis)
    const entry = { name: settings.name, app }
    this.apps.push(entry)
    await app.register(fastifyAuthCache, {
      backend: settings.backend,
      strict: true,
      redis: settings.redis,
      redisTimeoutMs: settings.redisTimeoutMs ?? 1000,
      apiKeys: { ...settings.apiKeys, lookup: settings.source.lookup },
      ...(settings.credentials === undefined ? {} : { credentials: settings.credentials })
    })
    app.get('/', async (request) => ({ id: request.apiKey.id }))
    if (settings.ready !== false) await app.ready()
    return entry
  }

  async closeAll (): Promise<void> {
    await Promise.all(this.apps.splice(0).map(({ app }) => app.close().catch(() => {})))
    for (const client of this.clients.splice(0)) client.disconnect()
  }
}

export interface AppPair {
  source: KeySource
  a: ScenarioApp
  b: ScenarioApp
  pair: ScenarioApp[]
}

/**
 * Two processes of one deployment, apps A and B, each with a client of its own from `client()`,
 * asking one source of truth; closed after the test.
 */
export async function startPair (t: TestContext, backend: SharedBackend, client: () => Redis | Cluster,
  apiKeys?: AppSettings['apiKeys']): Promise<AppPair> {
  const source = new KeySource()
  const apps = new AppSet()
  t.after(() => apps.closeAll())
  const a = await apps.start({ name: 'A', backend, redis: client(), source, apiKeys })
  const b = await apps.start({ name: 'B', backend, redis: client(), source, apiKeys })
  return { source, a, b, pair: [a, b] }
}

export interface Answer {
  app: string
  status: number
  code: string | undefined
  startedAt: number
  endedAt: number
}

/** One GET through the hook, timed on the shared clock. */
export async function request ({ name, app }: ScenarioApp, key: string): Promise<Answer> {
  const startedAt = now()
  const response = await app.inject({ method: 'GET', url: '/', headers: { 'x-api-key': key } })
  const endedAt = now()
  const code = response.statusCode === 200 ? undefined : (response.json() as { code?: string }).code
  return { app: name, status: response.statusCode, code, startedAt, endedAt }
}

interface Revoked { key: string, resolvedAt: number, boundMs: number, label: string }

export interface Violation { key: string, label: string, app: string, startedAfterResolveMs: number }

/**
 * Judges answers against revocations: a revoked key answered 200 to a request that started more
 * than `boundMs` after its `delete()` resolved was accepted; any 5xx is an error; a key that was
 * never revoked and is active at the source must be answered 200.
 */
export class RevocationLedger {
  private readonly revoked = new Map<string, Revoked>()
  private readonly valid = new Set<string>()
  readonly violations: Violation[] = []
  readonly serverErrors: Array<{ app: string, status: number, code: string | undefined }> = []
  readonly validRefused: Array<{ app: string, status: number, code: string | undefined }> = []
  readonly statuses: Record<string, number> = {}
  answers = 0

  markValid (key: string): void {
    this.valid.add(key)
  }

  markRevoked (key: string, resolvedAt: number, boundMs: number, label = ''): void {
    this.valid.delete(key)
    this.revoked.set(key, { key, resolvedAt, boundMs, label })
  }

  isRevoked (key: string): boolean {
    return this.revoked.has(key)
  }

  get revokedCount (): number {
    return this.revoked.size
  }

  observe (key: string, answer: Answer): void {
    this.answers++
    this.statuses[answer.status] = (this.statuses[answer.status] ?? 0) + 1
    if (answer.status >= 500) this.serverErrors.push({ app: answer.app, status: answer.status, code: answer.code })
    const revoked = this.revoked.get(key)
    if (revoked !== undefined && answer.status === 200) {
      const after = answer.startedAt - revoked.resolvedAt
      if (after > revoked.boundMs) {
        this.violations.push({ key: `…${key.slice(-6)}`, label: revoked.label, app: answer.app, startedAfterResolveMs: Math.round(after) })
      }
    }
    if (this.valid.has(key) && answer.status !== 200) this.validRefused.push({ app: answer.app, status: answer.status, code: answer.code })
  }

  /** Sends one request and judges it. */
  async check (app: ScenarioApp, key: string): Promise<Answer> {
    const answer = await request(app, key)
    this.observe(key, answer)
    return answer
  }

  summary (): string {
    const keysByLabel: Record<string, Set<string>> = {}
    for (const violation of this.violations) (keysByLabel[violation.label] ??= new Set()).add(violation.key)
    const keys = Object.fromEntries(Object.entries(keysByLabel).map(([label, set]) => [label, set.size]))
    const worst = this.violations.reduce((max, violation) => Math.max(max, violation.startedAfterResolveMs), 0)
    return `${this.answers} answers ${JSON.stringify(this.statuses)}; ${this.revokedCount} revocations resolved; ` +
      `${this.violations.length} answers accepted a revoked key past its bound` +
      (this.violations.length === 0
        ? ''
        : ` (distinct revoked keys accepted, by revocation label: ${JSON.stringify(keys)}; latest started ${worst} ms after its delete() resolved; first: ${JSON.stringify(this.violations.slice(0, 3))})`) +
      `; ${this.serverErrors.length} 5xx; ${this.validRefused.length} valid keys refused`
  }

  assertClean (what: string): void {
    assert.equal(this.serverErrors.length, 0, `${what}: server errors: ${JSON.stringify(this.serverErrors.slice(0, 5))}; ${this.summary()}`)
    assert.equal(this.violations.length, 0, `${what}: revoked keys accepted after delete() resolved: ${this.summary()}`)
    assert.equal(this.validRefused.length, 0, `${what}: valid keys refused: ${JSON.stringify(this.validRefused.slice(0, 5))}; ${this.summary()}`)
  }
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` at a time. */
export async function inParallel (count: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) await task(next++)
  }))
}
