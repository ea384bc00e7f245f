import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'

export const CLI = join(__dirname, '..', '..', 'dist', 'cli', 'main.js')
// Far above the 10 s the contract allows a failing run, so that a slow run is measured, not killed.
const KILL_AFTER_MS = 30_000

export interface CliRun {
  code: number | null
  stdout: string
  stderr: string
  durationMs: number
}

/**
 * Runs the built command (`node dist/cli/main.js …`, as npm's bin link does) as a real process.
 * REDIS_URL is taken from `env` only, never inherited, so that no test reaches a server by accident.
 */
export async function runCli (args: string[], { env = {}, stdin }: { env?: Record<string, string>, stdin?: string } = {}): Promise<CliRun> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`)
  const { REDIS_URL: _ignored, ...inherited } = process.env
  const startedAt = performance.now()
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...inherited, ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  child.stdin.on('error', () => {})
  child.stdin.end(stdin)
  const timer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS)
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (exitCode) => resolve(exitCode))
  })
  clearTimeout(timer)
  return { code, stdout, stderr, durationMs: performance.now() - startedAt }
}
