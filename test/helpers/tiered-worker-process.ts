import assert from 'node:assert/strict'
import { until } from './wait'
import { join } from 'node:path'
import { after, before } from 'node:test'
import type { ApiKeyCacheStats, ApiKeyRecord } from '../../lib'
import { Child } from './child-process'
import { record } from './key-source'
import { startRedis, type RedisServer } from './redis-server'

export interface RequestOutcome {
  status: number
  code: string | undefined
  /** Wall-clock ms (performance.timeOrigin + performance.now()) when the request was sent. */
  startedAt: number
  /** Wall-clock ms when the response was complete. */
  endedAt: number
  durationMs: number
}

export interface Revocation {
  /** Wall-clock ms when `delete`/`clear` was called and when it resolved. */
  calledAt: number
  resolvedAt: number
}

export interface WorkerStats extends ApiKeyCacheStats {
  /** Calls the worker's `lookup` actually received, counted by the lookup itself. */
  lookupCalls: number
  /** The backend actually in use. */
  backend: string
}

export interface WatchOutcome {
  /** Requests answered 200 before the first refusal. */
  accepted: number
  /** Wall-clock ms when the last accepted request completed. */
  lastAcceptedAt: number
  /** Wall-clock ms when the last accepted request was sent. */
  lastAcceptedStartedAt: number
  /** Undefined when the watch timed out without a refusal. */
  refused: RequestOutcome | undefined
}

const FIXTURE = join(__dirname, '..', 'fixtures', 'tiered-worker.ts')
const START_TIMEOUT_MS = 30_000
const CALL_TIMEOUT_MS = 20_000

/**
 * One child process running a Fastify app with the tiered backend (test/fixtures/tiered-worker.ts),
 * with a method per command it answers. Its stderr (warnings of the app) is kept so that a
 * failing test can show it.
 */
export class TieredWorker {
  private constructor (readonly name: string, private readonly child: Child) {}

  static async start (name: string, redisUrl: string): Promise<TieredWorker> {
    const child = await Child.start({
      name: `worker ${name}`,
      file: FIXTURE,
      env: { REDIS_URL: redisUrl, WORKER_NAME: name },
      output: 'keep-stderr',
      startTimeoutMs: START_TIMEOUT_MS,
      callTimeoutMs: CALL_TIMEOUT_MS
    })
    return new TieredWorker(name, child)
  }

  get stderr (): string {
    return this.child.stderr
  }

  setRecord (hash: string, record: ApiKeyRecord | null): Promise<void> {
    return this.child.call('setRecord', { hash, record })
  }

  setLookupDelay (ms: number): Promise<void> {
    return this.child.call('setLookupDelay', { ms })
  }

  request (key: string): Promise<RequestOutcome> {
    return this.child.call('request', { key })
  }

  /** `count` requests for one key injected in the same tick. */
  burst (key: string, count: number): Promise<RequestOutcome[]> {
    return this.child.call('burst', { key, count })
  }

  delete (hash: string): Promise<Revocation> {
    return this.child.call('delete', { hash })
  }

  deleteOwner (ownerId: string): Promise<Revocation> {
    return this.child.call('deleteOwner', { ownerId })
  }

  clear (): Promise<Revocation> {
    return this.child.call('clear')
  }

  stats (): Promise<WorkerStats> {
    return this.child.call('stats')
  }

  /**
   * Starts requesting `key` in a loop, `pauseMs` apart (0: back to back through setImmediate);
   * resolves once the loop has been answered 200.
   */
  watchStart (key: string, timeoutMs: number, pauseMs = 0): Promise<void> {
    return this.child.call('watchStart', { key, timeoutMs, pauseMs })
  }

  /** The running watch's outcome, once it saw a refusal or timed out. */
  watchResult (): Promise<WatchOutcome> {
    return this.child.call('watchResult')
  }

  /** The worker closes its app and exits; killed after 5 s. */
  async stop (): Promise<void> {
    await this.child.stop(5000)
  }
}

/** Every worker learns the same truth before the test goes on. */
export async function setRecordEverywhere (workers: TieredWorker[], hash: string, record: ApiKeyRecord | null): Promise<void> {
  await Promise.all(workers.map((worker) => worker.setRecord(hash, record)))
}

/** Requests `key` in `worker` until a request makes no lookup call: it is in the worker's memory. */
export async function untilCachedIn (worker: TieredWorker, key: string): Promise<void> {
  await until(`${worker.name} serves the key from memory`, async () => {
    const before = (await worker.stats()).lookupCalls
    assert.equal((await worker.request(key)).status, 200)
    return (await worker.stats()).lookupCalls === before
  })
}

/** Keys with active records (`<idPrefix>-<i>`, plus `extra`) in every worker's source, each in every worker's memory. */
export async function cachedEverywhere (workers: TieredWorker[], keys: Array<{ key: string, hash: string }>, idPrefix: string,
  extra: Record<string, unknown> = {}): Promise<void> {
  for (const [i, { hash }] of keys.entries()) await setRecordEverywhere(workers, hash, record(`${idPrefix}-${i}`, extra))
  for (const worker of workers) for (const { key } of keys) await untilCachedIn(worker, key)
}

/** Waits until every worker refuses every key. */
export async function untilRefusedEverywhere (workers: TieredWorker[], keys: Array<{ key: string }>): Promise<void> {
  for (const worker of workers) {
    for (const { key } of keys) await until(`${worker.name} refuses the key`, async () => (await worker.request(key)).status === 401)
  }
}

export interface TieredWorkers {
  /** The private Redis the workers share; available from the first test on. */
  readonly redis: RedisServer
  /** The workers, in the order of their names; filled before the first test. */
  readonly workers: TieredWorker[]
}

/**
 * For the suite this is called in: a private Redis and one worker per name on it, started before
 * its first test; the workers stopped and the Redis destroyed after its last.
 */
export function useTieredWorkers (names: string[] = ['A', 'B', 'C']): TieredWorkers {
  let redis: RedisServer | undefined
  const workers: TieredWorker[] = []
  before(async () => {
    redis = await startRedis()
    for (const name of names) workers.push(await TieredWorker.start(name, redis.url))
  })
  after(async () => {
    await Promise.all(workers.map((worker) => worker.stop()))
    await redis?.destroy()
  })
  return {
    get redis () { return redis! },
    workers
  }
}
