import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { hashApiKey } from '../api-keys/hash'
import { channelName, messageParts } from '../api-key-cache/invalidation-bus'
import { RedisApiKeyStore } from '../api-key-cache/redis-store'
import type { RedisAdapter } from '../redis/client'
import { RedisGuard } from '../redis/guard'
import type { Revocation } from './arguments'

const silent = (): void => {}
// The store logs only while replaying revocations after a reconnection, which a command that
// exits right after its revocation never does.
const quietLog = { level: 'silent', fatal: silent, error: silent, warn: silent, info: silent, debug: silent, trace: silent, silent, child: () => quietLog } as unknown as FastifyBaseLogger

/**
 * Revokes through the plugin's own Redis store, as `apiKeyCache.delete`, `deleteOwner` and
 * `clear` do in a running process: the same scripts, the same keys, and the same message on the
 * invalidation channel, from an instance id of its own. Returns what to tell the operator
 * (never the plaintext key).
 */
export async function revoke (redis: RedisAdapter, prefix: string, revocation: Exclude<Revocation, { kind: 'key-from-stdin' }>): Promise<string> {
  const instance = randomBytes(8).toString('hex')
  const store = new RedisApiKeyStore({
    redis,
    keyPrefix: prefix,
    // Off the request path every call is bounded (5 s) and never skipped.
    guard: new RedisGuard(5000, quietLog),
    log: quietLog,
    revocationRetainMs: 0,
    max: 1,
    staleMs: 0,
    readsTtl: false,
    announcer: {
      channel: channelName(redis, prefix),
      messageParts: (kind, payload) => messageParts(kind, instance, payload)
    }
  })
  try {
    switch (revocation.kind) {
      case 'key':
      case 'hash': {
        const keyHash = revocation.kind === 'key' ? hashApiKey(revocation.key) : revocation.keyHash
        await store.delete(keyHash)
        return `revoked the key whose SHA-256 is ${keyHash} (prefix "${prefix}")`
      }
      case 'owner':
        await store.deleteOwner(revocation.ownerId)
        return `revoked every cached key of owner ${JSON.stringify(revocation.ownerId)} (prefix "${prefix}")`
      case 'clear':
        await store.clear()
        return `cleared every cached entry under the prefix "${prefix}"`
    }
  } finally {
    await store.close()
  }
}
