/**
 * Keeping one OAuth access token for many processes, with a provider that rotates refresh tokens.
 *
 * Every caller asks `getValidToken`, which is `credentialStore.getFresh`. A stored token that is
 * still good is returned at once. A stale one is refreshed once across every process sharing the
 * backend: under the store's lock, after re-reading the token, so a refresh another process has
 * just made is used instead of repeated. That matters with a provider that rotates refresh
 * tokens: it accepts each one once, and one that detects reuse revokes the whole token family.
 * A token close to its end is still handed out, and renewed once in the background.
 *
 * Run it: `npx tsx examples/token-refresher.ts` (memory), or with `REDIS_URL=redis://...` to
 * share the token through Redis between two app instances.
 */
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyAuthCache, { type CredentialStore } from '../lib'

export interface TokenSet {
  accessToken: string
  refreshToken: string
  /** Epoch milliseconds. */
  expiresAt: number
}

/** What a provider answers to a refresh; many omit `refreshToken` when they do not rotate it. */
export interface RefreshedToken {
  accessToken: string
  expiresInSeconds: number
  refreshToken?: string
}

export interface TokenProvider {
  refresh (refreshToken: string): Promise<RefreshedToken>
}

/** A token is not handed out in its last 30 s: clocks drift and requests take time. */
const EXPIRY_MARGIN_MS = 30_000
/** In its last 2 minutes it is still handed out, and renewed in the background. */
const REFRESH_AHEAD_MS = 120_000
const PROVIDER_TIMEOUT_MS = 5_000
/** Longer than the provider's own timeout, so a live refresh never outlives the lock. */
const REFRESH_LOCK_MS = 15_000

/** A valid access token, refreshed at most once per expiry across every process. */
export async function getValidToken (store: Pick<CredentialStore<TokenSet>, 'getFresh'>, provider: TokenProvider): Promise<string> {
  const token = await store.getFresh({
    isFresh: (token, atMs) => atMs < token.expiresAt - EXPIRY_MARGIN_MS,
    refresh: async (current) => {
      if (current === undefined) throw new Error('no token stored: complete the authorization flow first')
      const answer = await provider.refresh(current.refreshToken)
      return {
        accessToken: answer.accessToken,
        // Saving the answer as is would erase a refresh token the provider did not repeat.
        refreshToken: answer.refreshToken ?? current.refreshToken,
        expiresAt: Date.now() + answer.expiresInSeconds * 1000
      }
    },
    refreshAheadMs: REFRESH_AHEAD_MS,
    lockTtlMs: REFRESH_LOCK_MS,
    waitMs: REFRESH_LOCK_MS + PROVIDER_TIMEOUT_MS
  })
  return token.accessToken
}

/** The OAuth 2.0 refresh-token grant (RFC 6749, section 6) against a token endpoint. */
export function oauthTokenProvider (tokenUrl: string, clientId: string): TokenProvider {
  return {
    async refresh (refreshToken) {
      const response = await fetch(tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: clientId }),
        signal: AbortSignal.timeout(PROVIDER_TIMEOUT_MS)
      })
      const body = await response.json() as Record<string, unknown>
      if (!response.ok) throw new Error(`token refresh failed: ${response.status} ${String(body.error)}`)
      return {
        accessToken: String(body.access_token),
        expiresInSeconds: Number(body.expires_in),
        refreshToken: typeof body.refresh_token === 'string' ? body.refresh_token : undefined
      }
    }
  }
}

/** A stand-in token endpoint that rotates refresh tokens and counts refreshes. */
async function startDemoProvider (): Promise<{ server: Server, url: string, refreshes: () => number }> {
  let validRefreshToken = 'refresh-0'
  let refreshes = 0
  const server = createServer((request, response) => {
    let body = ''
    request.on('data', (chunk: Buffer) => { body += chunk.toString() })
    request.on('end', () => {
      const presented = new URLSearchParams(body).get('refresh_token')
      response.setHeader('content-type', 'application/json')
      if (presented !== validRefreshToken) {
        response.statusCode = 400
        response.end(JSON.stringify({ error: 'invalid_grant' }))
        return
      }
      refreshes++
      validRefreshToken = `refresh-${refreshes}`
      // A slow provider, so that the callers really do overlap.
      setTimeout(() => response.end(JSON.stringify({
        access_token: `access-${refreshes}`, token_type: 'Bearer', expires_in: 3600, refresh_token: validRefreshToken
      })), 200)
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return { server, url: `http://127.0.0.1:${port}/token`, refreshes: () => refreshes }
}

async function createApp (redisUrl: string | undefined): Promise<FastifyInstance> {
  const app = Fastify()
  if (redisUrl !== undefined) {
    const { default: fastifyRedis } = await import('@fastify/redis')
    await app.register(fastifyRedis, { url: redisUrl })
  }
  await app.register(fastifyAuthCache, {
    backend: redisUrl === undefined ? 'memory' : 'redis',
    strict: true,
    apiKeys: { hook: false },
    credentials: { key: 'demo-provider', keyPrefix: 'example:credentials:' }
  })
  return app
}

async function main (): Promise<void> {
  const callers = Number(process.env.CALLERS ?? 20)
  const redisUrl = process.env.REDIS_URL
  const provider = await startDemoProvider()
  // With Redis, two app instances stand for two processes sharing the token.
  const apps = await Promise.all((redisUrl === undefined ? [1] : [1, 2]).map(() => createApp(redisUrl)))
  const stores = apps.map((app) => app.credentialStore as CredentialStore<TokenSet>)
  const client = oauthTokenProvider(provider.url, 'demo-client')

  // As left by the authorization flow, long ago: the access token has expired.
  await stores[0].save({ accessToken: 'access-0', refreshToken: 'refresh-0', expiresAt: Date.now() - 1000 })

  const ask = (): Promise<string[]> => Promise.all(Array.from({ length: callers }, (_, i) => getValidToken(stores[i % stores.length], client)))
  console.log(`backend: ${stores[0].backend}, app instances: ${apps.length}, concurrent callers: ${callers}`)
  let startedAt = performance.now()
  let tokens = await ask()
  console.log(`expired token: ${new Set(tokens).size} distinct token(s) handed out in ${(performance.now() - startedAt).toFixed(0)} ms, ` +
    `provider refreshes: ${provider.refreshes()}`)

  // A token in its last two minutes: handed out at once, and renewed once in the background.
  await stores[0].update((token) => ({ ...token!, expiresAt: Date.now() + 60_000 }))
  startedAt = performance.now()
  tokens = await ask()
  console.log(`token near its end: ${[...new Set(tokens)].join(', ')} handed out in ${(performance.now() - startedAt).toFixed(0)} ms`)
  while ((await stores[0].load())?.accessToken === tokens[0]) await new Promise((resolve) => setTimeout(resolve, 20))
  console.log(`renewed in the background to ${(await stores[0].load())!.accessToken}, provider refreshes: ${provider.refreshes()}`)

  // Leave nothing behind in a shared Redis.
  await stores[0].clear()
  for (const app of apps) await app.close()
  provider.server.closeAllConnections()
  provider.server.close()
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exitCode = 1
  })
}
