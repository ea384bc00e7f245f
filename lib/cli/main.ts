#!/usr/bin/env node
import { parseArguments, UsageError, USAGE, type Invocation, type Revocation } from './arguments'
import { connect, RedisFailure } from './connect'
import { revoke } from './revoke'

/** The longest a key read from standard input may be (the hook refuses longer keys anyway). */
const MAX_KEY_LENGTH = 1024
const STDIN_TIMEOUT_MS = 5000

/** A key piped in (`revoke -`): never an argument, so it stays out of shell history and `ps`. */
async function keyFromStdin (): Promise<string> {
  const chunks: Buffer[] = []
  let length = 0
  const timer = setTimeout(() => process.stdin.destroy(new UsageError(`no key arrived on standard input within ${STDIN_TIMEOUT_MS} ms`)), STDIN_TIMEOUT_MS)
  try {
    for await (const chunk of process.stdin) {
      chunks.push(chunk as Buffer)
      length += (chunk as Buffer).length
      if (length > MAX_KEY_LENGTH + 2) throw new UsageError(`the key on standard input is longer than ${MAX_KEY_LENGTH} characters`)
    }
  } finally {
    clearTimeout(timer)
  }
  const key = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '')
  if (key === '') throw new UsageError('no key on standard input')
  return key
}

async function run (invocation: Extract<Invocation, { command: 'run' }>): Promise<string> {
  const revocation: Exclude<Revocation, { kind: 'key-from-stdin' }> = invocation.revocation.kind === 'key-from-stdin'
    ? { kind: 'key', key: await keyFromStdin() }
    : invocation.revocation
  const connection = await connect(invocation.redisUrl)
  try {
    return await revoke(connection.redis, invocation.prefix, revocation)
  } catch (err) {
    const message = (err as Error).message
    // Redis says NOPERM for a command, and something else for a PUBLISH inside a script.
    const hint = /NOPERM|can't publish|no permissions/i.test(message)
      ? ` (the ACL user needs the keys ~${invocation.prefix}* and the channels &fastify-auth-cache:*)`
      : ''
    throw new RedisFailure(`the revocation failed, and may not have reached every process: ${message}${hint}`)
  } finally {
    await connection.close()
  }
}

async function main (): Promise<number> {
  let invocation: Invocation
  try {
    invocation = parseArguments(process.argv.slice(2), process.env)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`fastify-auth-cache: ${err.message}\n\n${USAGE}\n`)
    return 2
  }
  if (invocation.command === 'help') {
    process.stdout.write(`${USAGE}\n`)
    return 0
  }
  try {
    process.stdout.write(`fastify-auth-cache: ${await run(invocation)}\n`)
    return 0
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`fastify-auth-cache: ${err.message}\n`)
      return 2
    }
    process.stderr.write(`fastify-auth-cache: ${(err as Error).message}\n`)
    return 1
  }
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  process.stderr.write(`fastify-auth-cache: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`)
  process.exitCode = 1
})
