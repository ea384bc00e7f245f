import { once } from 'node:events'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { isWellFormedApiKey } from '../lib'
import { KEY_PREFIX } from '../examples/app'
import { Script } from './helpers/child-process'
import { usePrivateRedis } from './helpers/redis-server'
import { until } from './helpers/wait'

// A busy 2-core machine starts tsx, the workers and Redis slowly; nothing here waits when things go well.
const START_MS = 60_000
const STEP_MS = 30_000

interface Demo {
  script: Script
  output: () => string
  base: string
  key: string
  keyId: string
  /** Worker cluster id → pid, from the banner. */
  workers: Map<number, number>
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Runs examples/demo.ts as `npm run demo` does (without the build), with only `env` set of the demo's own variables. */
function spawnDemo (t: TestContext, env: Record<string, string>): Script {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, HOST: '127.0.0.1', PORT: '0', ...env }
  // The developer's own Redis must never be touched by the test.
  if (env.REDIS_URL === undefined) delete childEnv.REDIS_URL
  // Killed after the test if it still runs: its workers exit on their own once the primary's IPC channel closes.
  return Script.run(t, join('examples', 'demo.ts'), childEnv)
}

async function startDemo (t: TestContext, env: Record<string, string>): Promise<Demo> {
  const script = spawnDemo(t, env)
  const [, key, base, keyId] = await script.printed('the demo printed its curl lines', /x-api-key: (\S+)' (http:\/\/\S+)\/keys\/(\S+)\n/, START_MS)
  const output = (): string => script.output()
  const listed = /^Workers: (.*)\.$/m.exec(output())
  assert.ok(listed !== null, `the banner lists the workers:\n${output()}`)
  const workers = new Map([...listed[1].matchAll(/(\d+) \(pid (\d+)\)/g)].map(([, id, pid]) => [Number(id), Number(pid)]))
  return { script, output, base, key, keyId, workers }
}

interface Answer { status: number, worker: number, body: any }

/** One request on a connection of its own, so that the cluster hands it to the next worker. */
function call (method: string, url: string, key?: string, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {}
    if (key !== undefined) headers['x-api-key'] = key
    if (body !== undefined) headers['content-type'] = 'application/json'
    const req = httpRequest(url, { method, agent: false, headers }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode!, worker: Number(res.headers['x-demo-worker']), body: text === '' ? undefined : JSON.parse(text) }))
      res.on('error', reject)
    })
    req.setTimeout(STEP_MS, () => req.destroy(new Error(`${method} ${url}: no answer within ${STEP_MS} ms`)))
    req.on('error', reject)
    req.end(body === undefined ? undefined : JSON.stringify(body))
  })
}

describe('npm run demo (examples/demo.ts)', () => {
  const redis = usePrivateRedis()

  test('workers take turns; a key revoked through one is refused by every worker; SIGTERM stops them all', async (t) => {
    const demo = await startDemo(t, { REDIS_URL: redis.server.url, WORKERS: '2' })
    const { base, key, keyId } = demo
    assert.ok(isWellFormedApiKey(key, KEY_PREFIX), 'the printed key is a demo key')
    assert.deepEqual([...demo.workers.keys()].sort(), [1, 2])
    assert.match(demo.output(), new RegExp(`for i in 1 2 3 4; do curl -s -H 'x-api-key: ${key}' ${base}/whoami; echo; done`))

    const health = await call('GET', `${base}/health`)
    assert.equal(health.status, 200)
    assert.equal((await call('GET', `${base}/whoami`)).status, 401)

    // Every worker serves the key (and so holds it in its memory) before it is revoked.
    const served = new Set<number>()
    await until('every worker answering /whoami with the key', async () => {
      const answer = await call('GET', `${base}/whoami`, key)
      assert.equal(answer.status, 200)
      assert.equal(answer.body.key.id, keyId)
      assert.equal(answer.body.worker.id, answer.worker, 'the body and the header name the same worker')
      assert.equal(answer.body.worker.pid, demo.workers.get(answer.worker))
      assert.equal(answer.body.key.key, undefined, 'nothing but id and name of the record')
      served.add(answer.worker)
      return served.size === demo.workers.size
    }, STEP_MS)
    assert.ok(served.size > 1, 'more than one worker answered')

    const created = await call('POST', `${base}/keys`, key, { name: 'my-client' })
    assert.equal(created.status, 201)
    assert.ok(isWellFormedApiKey(created.body.key, KEY_PREFIX))
    assert.equal((await call('GET', `${base}/whoami`, created.body.key)).status, 200, 'a created key works at once')

    const revoked = await call('DELETE', `${base}/keys/${keyId}`, key)
    assert.equal(revoked.status, 200)
    assert.equal(revoked.body.revoked, keyId)
    const revokedAt = Date.now()
    const revoker = revoked.body.by.id as number

    // Every worker refuses it from then on. The contract allows a few milliseconds (10 at p99
    // while Redis is healthy) before another process stops accepting it; this busy machine gets
    // the outage bound, 2 s. After a worker's first 401 it never accepts the key again.
    const refused = new Set<number>()
    await until('every worker refusing the revoked key', async () => {
      const answer = await call('GET', `${base}/whoami`, key)
      if (answer.status === 200) {
        assert.ok(!refused.has(answer.worker), `worker ${answer.worker} accepted the revoked key after refusing it`)
        assert.ok(Date.now() - revokedAt < 2000, `worker ${answer.worker} still accepts the key ${Date.now() - revokedAt} ms after its revocation`)
      } else {
        assert.equal(answer.status, 401)
        assert.equal(answer.body.code, 'FST_API_KEY_INVALID')
        refused.add(answer.worker)
      }
      return refused.size === demo.workers.size
    }, STEP_MS)
    assert.equal((await call('GET', `${base}/whoami`, created.body.key)).status, 200, 'other keys still work')

    // Each worker says when it stopped accepting the key, and the primary sums up.
    await until('the primary\'s summary', async () => demo.output().includes(`[primary] every worker refuses ${keyId} now: worker ${revoker} revoked it`), STEP_MS)
    for (const [id, pid] of demo.workers) {
      const said = new RegExp(id === revoker
        ? `^\\[worker ${id} pid ${pid}\\] revoked ${keyId}: .* returned after [\\d.]+ ms$`
        : `^\\[worker ${id} pid ${pid}\\] (dropped ${keyId} from its memory|no longer accepts ${keyId}: gone from its cache when checked) [\\d.]+ ms after worker ${revoker} revoked it`, 'm')
      assert.match(demo.output(), said)
    }
    assert.doesNotMatch(demo.output(), /STILL ACCEPTS/)
    assert.ok(!demo.output().includes(created.body.key), 'a created key is never printed')

    await demo.script.terminate()
    for (const pid of demo.workers.values()) assert.ok(!alive(pid), `worker pid ${pid} is gone`)
    assert.equal(await redis.admin.ping(), 'PONG', 'a Redis given by REDIS_URL is left running')
  })

  test('without REDIS_URL it runs a private redis-server, and stops and removes it on exit', async (t) => {
    const demo = await startDemo(t, { WORKERS: '1' })
    const started = /Redis at (redis:\/\/127\.0\.0\.1:\d+): a private redis-server \(pid (\d+), directory (\S+)\)/.exec(demo.output())
    assert.ok(started !== null, `the banner describes the private Redis:\n${demo.output()}`)
    const [, url, pidText, dir] = started
    const pid = Number(pidText)
    t.after(() => {
      if (alive(pid)) process.kill(pid, 'SIGKILL')
      rmSync(dir, { recursive: true, force: true })
    })
    assert.notEqual(url, redis.server.url)
    assert.ok(alive(pid) && existsSync(dir))
    assert.equal((await call('GET', `${demo.base}/whoami`, demo.key)).status, 200)

    await demo.script.terminate()
    await until('the private redis-server exiting', async () => !alive(pid), STEP_MS)
    assert.ok(!existsSync(dir), 'its directory is removed')
  })

  test('with neither REDIS_URL nor redis-server on the PATH it says what it needs and exits 1', async (t) => {
    const emptyDir = mkdtempSync(join(tmpdir(), 'fastify-auth-cache-no-redis-'))
    t.after(() => rmSync(emptyDir, { recursive: true, force: true }))
    const demo = spawnDemo(t, { PATH: emptyDir })
    const [code] = await once(demo.process, 'exit')
    assert.equal(code, 1)
    const said = demo.output()
    assert.match(said, /npm run demo needs Redis, and found none: REDIS_URL is not set, and there is no redis-server on the PATH/)
    assert.match(said, /REDIS_URL=redis:\/\/127\.0\.0\.1:6379 npm run demo/)
    assert.match(said, /apt-get install redis-server/)
    assert.doesNotMatch(said, /curl|at \S+:\d+:\d+/, 'no curl lines, no stack trace')
  })
})
