/**
 * Keeping one OAuth access token for many processes, with a provider that rotates refresh tokens.
 *
 * Every process asks `getValidToken`. While the stored token is valid it is returned from the
 * store. When it is not, one caller refreshes it under `credentialStore.update`, which is
 * exclusive across every process sharing the backend; the others wait, then find the fresh token
 * and return it. A provider that rotates refresh tokens accepts each one once, so two processes
 * refreshing at the same time would leave one of them holding a revoked token.
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

/** Refresh this long before expiry, so a token is never handed out a moment before it dies. */
const EXPIRY_MARGIN_MS = 30_000
/** Longer than the provider's own timeout, so a live refresher never loses the key mid-call. */
const REFRESH_LOCK_MS = 15_000
const PROVIDER_TIMEOUT_MS = 5_000

function isFresh (token: TokenSet): boolean {
  return token.expiresAt - EXPIRY_MARGIN_MS > Date.now()
}

/** A valid access token, refreshed at most once across every process when it runs out. */
export async function getValidToken (
  store: Pick<CredentialStore<TokenSet>, 'load' | 'update'>,
  provider: TokenProvider
): Promise<string> {
  const stored = await store.load()
  if (stored !== undefined && isFresh(stored)) return stored.accessToken

  const updated = await store.update(async (current) => {
    if (current === undefined) throw new Error('no token stored: complete the authorization flow first')
    // `current` was read under the lock: whoever held it before us may have refreshed already.
    if (isFresh(current)) return current
    const answer = await provider.refresh(current.refreshToken)
    return {
      accessToken: answer.accessToken,
      // Saving the answer as is would erase a refresh token the provider did not repeat.
      refreshToken: answer.refreshToken ?? current.refreshToken,
      expiresAt: Date.now() + answer.expiresInSeconds * 1000
    }
  }, { lockTtlMs: REFRESH_LOCK_MS, waitMs: REFRESH_LOCK_MS + PROVIDER_TIMEOUT_MS })
  return updated.accessToken
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

  const tokens = await Promise.all(Array.from({ length: callers },
    (_, i) => getValidToken(stores[i % stores.length], client)))
  const distinct = new Set(tokens)
  console.log(`backend: ${stores[0].backend}, app instances: ${apps.length}, concurrent callers: ${callers}`)
  console.log(`provider refreshes: ${provider.refreshes()}, distinct access tokens handed out: ${distinct.size}`)

  // Leave nothing behind in a shared Redis.
  await stores[0].clear()
  for (const app of apps) await app.close()
  provider.server.close()
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exitCode = 1
  })
}
