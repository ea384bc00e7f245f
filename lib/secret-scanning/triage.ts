import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { ApiKeyCache } from '../api-key-cache/api-key-cache'
import { hashApiKey } from '../api-keys/hash'
import { isWellFormedApiKey } from '../api-keys/key-format'
import { rejectReason, toStoredRecord } from '../api-keys/record'
import { ApiKeyLookupFailedError, SecretScanningOnLeakFailedError } from '../errors'
import type { ApiKeyLookup } from '../options'
import type { ApiKeyRecord } from '../types'
import type { OnLeak } from './options'
import type { ReportedToken } from './report'
import { withTimeout } from '../time-bound'

/** GitHub's feedback for one reported token. */
export interface TokenFeedback {
  token_hash: string
  token_type: string
  label: 'true_positive' | 'false_positive'
}

export interface TriageSettings {
  prefix: string
  lookup: ApiKeyLookup
  lookupTimeoutMs: number
  onLeak: OnLeak
  cache: ApiKeyCache
}

// Lookups of one report run this many at a time: a large report neither waits for them one by
// one nor floods the source of truth.
const CONCURRENT_LOOKUPS = 8

/**
 * Judges each reported token: a key well-formed for the prefix and active in the source of truth
 * is a true positive, handed to `onLeak` and then dropped from the cache. Every token is judged
 * even when one fails; then a failed `onLeak` or cache delete rejects (500) and a failed lookup
 * rejects (503), so that GitHub sends the report again. Only key hashes are ever logged.
 */
export async function triage (tokens: ReportedToken[], settings: TriageSettings, request: FastifyRequest): Promise<TokenFeedback[]> {
  const log: FastifyBaseLogger = request.log
  let revocationFailed = false
  let lookupFailed = false

  async function judge ({ token, url, source }: ReportedToken, keyHash: string): Promise<TokenFeedback['label']> {
    if (!isWellFormedApiKey(token, settings.prefix)) return 'false_positive'
    let record: ApiKeyRecord | undefined
    try {
      const ms = settings.lookupTimeoutMs
      const answer = await withTimeout(() => settings.lookup(keyHash, request), ms, () => new Error(`lookup did not answer within ${ms} ms`))
      // The same plain JSON copy the hook would cache and hand to routes as request.apiKey.
      const stored = answer === null || answer === undefined ? undefined : toStoredRecord(answer)
      if (typeof stored === 'string') throw new Error(`lookup answered something that is not a record (${stored})`)
      record = stored
    } catch (err) {
      lookupFailed = true
      log.error({ err, keyHash }, 'fastify-auth-cache: secret scanning could not look up a reported key')
      return 'false_positive'
    }
    if (record === undefined || rejectReason(record) !== undefined) return 'false_positive'
    log.warn({ keyHash, url, source }, 'fastify-auth-cache: GitHub secret scanning reported an active API key; revoking it')
    try {
      await settings.onLeak({ keyHash, record, url, source })
    } catch (err) {
      revocationFailed = true
      log.error({ err, keyHash }, 'fastify-auth-cache: onLeak failed for a leaked API key; it is dropped from the cache all the same')
    }
    try {
      await settings.cache.delete(keyHash)
    } catch (err) {
      revocationFailed = true
      log.error({ err, keyHash }, 'fastify-auth-cache: a leaked API key could not be dropped from the cache')
    }
    return 'true_positive'
  }

  // A token reported twice is judged once: after its revocation a second lookup would call it inactive.
  const judged = new Map<string, Promise<TokenFeedback['label']>>()
  const hashes = tokens.map((reported) => hashApiKey(reported.token))
  const pending = tokens.map((reported, i) => ({ reported, keyHash: hashes[i] }))
  async function worker (): Promise<void> {
    for (let next = pending.shift(); next !== undefined; next = pending.shift()) {
      if (!judged.has(next.keyHash)) {
        const label = judge(next.reported, next.keyHash)
        judged.set(next.keyHash, label)
        await label
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONCURRENT_LOOKUPS, tokens.length) }, worker))

  if (revocationFailed) throw new SecretScanningOnLeakFailedError()
  if (lookupFailed) throw new ApiKeyLookupFailedError()
  const feedback: TokenFeedback[] = []
  for (const [i, reported] of tokens.entries()) {
    feedback.push({ token_hash: hashes[i], token_type: reported.type, label: await judged.get(hashes[i])! })
  }
  return feedback
}
