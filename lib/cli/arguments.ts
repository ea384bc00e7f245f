/** What the command line asks for, once parsed; nothing here touches Redis. */

export type Revocation =
  | { kind: 'key', key: string }
  | { kind: 'key-from-stdin' }
  | { kind: 'hash', keyHash: string }
  | { kind: 'owner', ownerId: string }
  | { kind: 'clear' }

export type Invocation =
  | { command: 'help' }
  | { command: 'run', revocation: Revocation, redisUrl: string, prefix: string }

/** A mistake on the command line: the usage is printed with it, and the exit code is 2. */
export class UsageError extends Error {
  override name = 'UsageError'
}

const DEFAULT_PREFIX = 'apikey:'

export const USAGE = `Usage:
  fastify-auth-cache revoke <key>            revoke one API key (its SHA-256 is used, never the key)
  fastify-auth-cache revoke -                the same, reading the key from standard input
  fastify-auth-cache revoke --hash <hex>     revoke one API key by its SHA-256 hex
  fastify-auth-cache revoke --owner <id>     revoke every cached key whose record has this ownerId
  fastify-auth-cache clear                   drop every cached entry under the prefix

Options:
  --redis <url>     redis:// or rediss:// URL (default: the REDIS_URL environment variable)
  --prefix <text>   the Redis key prefix of the cache: the client's own keyPrefix, if any,
                    followed by apiKeys.keyPrefix (default: ${DEFAULT_PREFIX})
  -h, --help        show this help

Every process sharing that Redis stops accepting the revoked keys. Exit status: 0 revoked,
1 Redis refused or could not be reached (nothing may have been revoked), 2 bad usage.`

const HASH = /^[0-9a-f]{64}$/i
const OPTIONS_WITH_VALUE = new Set(['--redis', '--prefix', '--hash', '--owner'])

/** `--redis` must name a Redis server, never something guessed or half-written. */
function checkedRedisUrl (text: string): string {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new UsageError(`--redis: "${redactedUrl(text)}" is not a URL (expected redis://[[user]:password@]host[:port][/db])`)
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new UsageError(`--redis: the URL must start with redis:// or rediss://, not ${url.protocol}//`)
  }
  if (url.hostname === '') throw new UsageError('--redis: the URL names no host')
  if (url.pathname !== '' && url.pathname !== '/' && !/^\/\d+$/.test(url.pathname)) {
    throw new UsageError(`--redis: "${url.pathname}" is not a database number`)
  }
  return text
}

/** A URL as it may be shown: without its password. */
export function redactedUrl (text: string): string {
  return text.replace(/\/\/([^@/]*?):[^@/]*@/, '//$1:***@')
}

export function parseArguments (argv: readonly string[], env: NodeJS.ProcessEnv): Invocation {
  const positional: string[] = []
  const values = new Map<string, string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '-h' || arg === '--help') return { command: 'help' }
    // After `--`, everything is positional: a key may start with a dash.
    if (arg === '--') {
      positional.push(...argv.slice(i + 1))
      break
    }
    if (arg === '-' || !arg.startsWith('-')) {
      positional.push(arg)
      continue
    }
    const equals = arg.indexOf('=')
    const name = equals === -1 ? arg : arg.slice(0, equals)
    if (!OPTIONS_WITH_VALUE.has(name)) throw new UsageError(`unknown option ${name}`)
    if (values.has(name)) throw new UsageError(`${name} is given twice`)
    const value = equals === -1 ? argv[++i] : arg.slice(equals + 1)
    if (value === undefined || value === '') throw new UsageError(`${name} needs a value`)
    values.set(name, value)
  }

  const [command, ...rest] = positional
  let revocation: Revocation
  if (command === 'clear') {
    if (rest.length > 0 || values.has('--hash') || values.has('--owner')) throw new UsageError('clear takes no key, --hash or --owner')
    revocation = { kind: 'clear' }
  } else if (command === 'revoke') {
    const hash = values.get('--hash')
    const ownerId = values.get('--owner')
    const given = rest.length + (hash === undefined ? 0 : 1) + (ownerId === undefined ? 0 : 1)
    if (given !== 1) throw new UsageError('revoke takes exactly one of: <key>, -, --hash <hex>, --owner <id>')
    if (hash !== undefined) {
      if (!HASH.test(hash)) throw new UsageError('--hash must be 64 hexadecimal characters (the SHA-256 of the key)')
      revocation = { kind: 'hash', keyHash: hash.toLowerCase() }
    } else if (ownerId !== undefined) {
      revocation = { kind: 'owner', ownerId }
    } else {
      revocation = rest[0] === '-' ? { kind: 'key-from-stdin' } : { kind: 'key', key: rest[0]! }
    }
  } else {
    throw new UsageError(command === undefined ? 'no command given' : `unknown command "${command}"`)
  }

  const redisUrl = values.get('--redis') ?? env.REDIS_URL
  if (redisUrl === undefined || redisUrl === '') {
    throw new UsageError('no Redis given: pass --redis <url> or set REDIS_URL (no server is guessed)')
  }
  return { command: 'run', revocation, redisUrl: checkedRedisUrl(redisUrl), prefix: values.get('--prefix') ?? DEFAULT_PREFIX }
}
