import type { KeyObject } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import sjson from 'secure-json-parse'
import { SecretScanningKeysUnavailableError } from '../errors'
import { parsePublicKeys } from './signature'

/** The bound on one fetch of the keys, headers and body together. */
const KEYS_FETCH_TIMEOUT_MS = 5_000
// GitHub's answer is a few kilobytes; a bigger one is not GitHub's.
const MAX_ANSWER_BYTES = 1024 * 1024
// Keys held this long are fetched again before the next report, so that a key GitHub withdrew
// stops being trusted; if that fetch fails, the keys held are kept.
const MAX_AGE_MS = 24 * 60 * 60 * 1000
// After a fetch for an unknown key id that the answer did not list either, reports naming
// unknown ids are refused without fetching for this long: made-up ids cannot make the plugin
// hammer GitHub's API (and spend its rate limit) one fetch after the other.
const UNKNOWN_ID_COOLDOWN_MS = 10_000

async function readBounded (response: Response): Promise<string> {
  const declared = Number(response.headers.get('content-length'))
  if (declared > MAX_ANSWER_BYTES) throw new Error(`answer of ${declared} bytes is over ${MAX_ANSWER_BYTES}`)
  if (response.body === null) return ''
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let length = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    length += value.byteLength
    if (length > MAX_ANSWER_BYTES) {
      await reader.cancel().catch(() => {})
      throw new Error(`answer is over ${MAX_ANSWER_BYTES} bytes`)
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * GitHub's secret scanning public keys, fetched from `url` when a report needs them (never at
 * start), cached, and fetched again for a key id they do not list: one fetch at a time, each
 * bounded by KEYS_FETCH_TIMEOUT_MS.
 */
export class FetchedPublicKeys {
  readonly #url: URL
  readonly #log: FastifyBaseLogger
  #keys: Map<string, KeyObject> | undefined
  #fetchedAt = -Infinity
  #unknownIdMissAt = -Infinity
  #inFlight: Promise<boolean> | undefined
  #abort: AbortController | undefined
  #closed = false

  constructor (url: URL, log: FastifyBaseLogger) {
    this.#url = url
    this.#log = log
  }

  /**
   * The key GitHub lists under `keyId`, or undefined when it lists none. Rejects with
   * FST_SECRET_SCANNING_KEYS_UNAVAILABLE when the keys needed could not be fetched.
   */
  async keyFor (keyId: string): Promise<KeyObject | undefined> {
    const askedAt = performance.now()
    if (this.#keys === undefined || askedAt - this.#fetchedAt > MAX_AGE_MS) await this.#load()
    const held = this.#keys
    if (held === undefined) throw new SecretScanningKeysUnavailableError()
    const key = held.get(keyId)
    if (key !== undefined) return key
    // Keys fetched after this report arrived already answered for it; a recent fetch that did
    // not list an unknown id is not repeated for another one.
    if (this.#fetchedAt > askedAt || performance.now() - this.#unknownIdMissAt < UNKNOWN_ID_COOLDOWN_MS) return undefined
    if (!await this.#load()) throw new SecretScanningKeysUnavailableError()
    const fetched = this.#keys?.get(keyId)
    if (fetched === undefined) this.#unknownIdMissAt = performance.now()
    return fetched
  }

  /** Aborts a fetch in flight; later reports are answered 503 without fetching. */
  close (): void {
    this.#closed = true
    this.#abort?.abort(new Error('the app is closing'))
  }

  /** Joins the fetch in flight or starts one; whether it brought keys. */
  #load (): Promise<boolean> {
    if (this.#inFlight === undefined) {
      this.#inFlight = this.#fetchKeys().finally(() => { this.#inFlight = undefined })
    }
    return this.#inFlight
  }

  async #fetchKeys (): Promise<boolean> {
    if (this.#closed) return false
    const abort = new AbortController()
    this.#abort = abort
    const timer = setTimeout(() => abort.abort(new Error(`no complete answer within ${KEYS_FETCH_TIMEOUT_MS} ms`)), KEYS_FETCH_TIMEOUT_MS)
    try {
      const response = await fetch(this.#url, {
        signal: abort.signal,
        headers: { accept: 'application/json', 'user-agent': 'fastify-auth-cache' }
      })
      if (!response.ok) {
        await response.body?.cancel().catch(() => {})
        throw new Error(`answered HTTP ${response.status}`)
      }
      const keys = parsePublicKeys(sjson.parse(await readBounded(response), undefined, { protoAction: 'error', constructorAction: 'error' }), true)
      if (keys.size === 0) throw new Error('listed no ECDSA P-256 key')
      this.#keys = keys
      this.#fetchedAt = performance.now()
      return true
    } catch (err) {
      // An abort rejects with the reason given to abort(), which says why.
      const reason = abort.signal.aborted ? abort.signal.reason as Error : err as Error
      this.#log.error({ err: reason, url: this.#url.href }, 'fastify-auth-cache: fetching GitHub secret scanning public keys failed')
      return false
    } finally {
      clearTimeout(timer)
      if (this.#abort === abort) this.#abort = undefined
    }
  }
}
