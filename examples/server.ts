import type { AddressInfo } from 'node:net'
import { buildExampleApp, KEY_PREFIX } from './app'
import { startPrometheus } from './metrics'
import { PostgresKeyTable } from './postgres'
import type { CreatedKey, KeyStore } from './key-table'
import type { BackendName } from '../lib'

const host = process.env.HOST ?? '127.0.0.1'
const port = Number(process.env.PORT ?? 3000)
const redisUrl = process.env.REDIS_URL === '' ? undefined : process.env.REDIS_URL
const databaseUrl = process.env.DATABASE_URL === '' ? undefined : process.env.DATABASE_URL

/** For the banner: where the keys are, without a password the URL may hold. */
function describeDatabase (url: string): string {
  try {
    const parsed = new URL(url)
    parsed.password = ''
    return `PostgreSQL at ${parsed.href} (DATABASE_URL), table api_keys`
  } catch {
    return 'PostgreSQL (DATABASE_URL), table api_keys'
  }
}

/** A URL curl can reach: a wildcard listen address is reached through loopback. */
function baseUrl (address: AddressInfo): string {
  const wildcard = address.address === '0.0.0.0' || address.address === '::'
  const reachable = wildcard ? '127.0.0.1' : address.address
  return `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${address.port}`
}

function curlLines (base: string, demo: CreatedKey, readOnly: CreatedKey): string[] {
  const auth = `-H 'x-api-key: ${demo.key}'`
  return [
    '# open route',
    `curl -i ${base}/health`,
    '# without a key: 401',
    `curl -i ${base}/whoami`,
    '# with the demo key: 200',
    `curl -i ${auth} ${base}/whoami`,
    '# create a key (its plaintext is shown once)',
    `curl -i -X POST ${auth} -H 'content-type: application/json' -d '{"name":"my-client"}' ${base}/keys`,
    '# cache counters',
    `curl -s ${auth} ${base}/stats`,
    '# Prometheus metrics (when @opentelemetry/exporter-prometheus is installed)',
    `curl -s ${base}/metrics`,
    '# the read-only key (scope keys:read) may not create keys: 403, WWW-Authenticate names the scope it lacks',
    `curl -i -X POST -H 'x-api-key: ${readOnly.key}' -H 'content-type: application/json' -d '{"name":"my-client"}' ${base}/keys`,
    '# revoke a key by id; this one is the demo key, so /whoami with it answers 401 right after',
    `curl -i -X DELETE ${auth} ${base}/keys/${demo.id}`
  ]
}

async function main (): Promise<void> {
  // Without DATABASE_URL the keys live in process memory, and nothing needs setting up.
  const database = databaseUrl === undefined
    ? undefined
    : await PostgresKeyTable.open(databaseUrl, KEY_PREFIX).catch((err: Error) => {
      throw new Error(`Cannot use ${describeDatabase(databaseUrl)}: ${err.message}. Start PostgreSQL, or unset DATABASE_URL to keep the keys in memory.`, { cause: err })
    })
  const keys: KeyStore | undefined = database
  const { app, demoKey, readOnlyKey } = await buildExampleApp({
    keys,
    metrics: await startPrometheus(),
    redisUrl,
    backend: redisUrl !== undefined ? (process.env.BACKEND as BackendName | undefined) : undefined,
    logger: { level: 'info' }
  })
  if (database !== undefined) app.addHook('onClose', () => database.close())
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      app.close().then(() => process.exit(0), () => process.exit(1))
    })
  }
  await app.listen({ host, port })
  // Printed for the person at the terminal, never through the logger: log lines get shipped
  // and kept, and these keys are throwaways made for this run only.
  const base = baseUrl(app.server.address() as AddressInfo)
  process.stdout.write(`\nfastify-auth-cache example, backend "${app.apiKeyCache.backend}", keys in ${databaseUrl === undefined ? 'process memory' : describeDatabase(databaseUrl)}. Try:\n\n${curlLines(base, demoKey, readOnlyKey).join('\n')}\n\n`)
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
