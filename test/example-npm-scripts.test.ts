import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { connect } from 'node:net'
import { join } from 'node:path'
import { describe, test, type TestContext } from 'node:test'
import { usePrivateRedis } from './helpers/redis-server'
import { until, within } from './helpers/wait'

// `npm start` and `npm run demo` build the package first; a busy 2-core machine takes its time.
const START_MS = 120_000
/** How soon the port must close after npm is told to stop. */
const STOP_MS = 10_000
const ROOT = join(__dirname, '..')

interface NpmRun { npm: ChildProcess, output: () => string }

/** `npm <args>` as a user runs it, npm's own process the one spawned; killed (its group) after the test. */
function npmRun (t: TestContext, args: string[], env: Record<string, string>): NpmRun {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, HOST: '127.0.0.1', PORT: '0', ...env }
  if (env.REDIS_URL === undefined) delete childEnv.REDIS_URL
  if (env.DATABASE_URL === undefined) delete childEnv.DATABASE_URL
  // Its own process group, so that whatever it leaves behind can be found and stopped after the test.
  const npm = spawn('npm', args, { cwd: ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let text = ''
  npm.stdout!.on('data', (chunk: Buffer) => { text += chunk.toString() })
  npm.stderr!.on('data', (chunk: Buffer) => { text += chunk.toString() })
  t.after(() => {
    try { process.kill(-npm.pid!, 'SIGKILL') } catch {}
  })
  return { npm, output: () => text }
}

function portOpen (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.setTimeout(2000, () => { socket.destroy(); resolve(false) })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/** The port the server printed in its curl lines. */
async function printedPort (run: NpmRun): Promise<number> {
  const match = await until('the server printed its curl lines', () => {
    if (run.npm.exitCode !== null) assert.fail(`npm exited with ${run.npm.exitCode} first:\n${run.output()}`)
    return /curl -i -X DELETE -H 'x-api-key: \S+' http:\/\/127\.0\.0\.1:(\d+)\/keys\//.exec(run.output()) ?? undefined
  }, START_MS)
  return Number(match[1])
}

/** SIGTERM to npm's own pid, as a process manager sends it: the server behind it must let go of its port. */
async function stopThroughNpm (run: NpmRun, port: number): Promise<void> {
  assert.ok(await portOpen(port), 'the server listens before it is stopped')
  const exited = once(run.npm, 'exit')
  run.npm.kill('SIGTERM')
  await within('npm exiting after SIGTERM', exited, STOP_MS)
  await until(`port ${port} closed after SIGTERM to npm`, async () => !(await portOpen(port)), STOP_MS)
}

describe('npm scripts stop on SIGTERM sent to npm', () => {
  const redis = usePrivateRedis()

  test('npm start', async (t) => {
    const run = npmRun(t, ['start'], {})
    const port = await printedPort(run)
    await stopThroughNpm(run, port)
  })

  test('npm run demo: and a clean shutdown prints no fault warning', async (t) => {
    const run = npmRun(t, ['run', 'demo'], { REDIS_URL: redis.server.url, WORKERS: '2' })
    const port = await printedPort(run)
    await stopThroughNpm(run, port)
    assert.doesNotMatch(run.output(), /cannot hear its invalidation channel|STILL ACCEPTS|failed/, run.output())
    assert.equal(await redis.admin.ping(), 'PONG', 'a Redis given by REDIS_URL is left running')
  })
})
