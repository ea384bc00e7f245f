import { assertKeyPrefix } from '../api-keys/key-format'
import { InvalidOptionError } from '../errors'
import { assertKnownKeys } from '../known-keys'
import type { ApiKeyRecord } from '../types'
import type { MainPluginHandoff } from './handoff'
import { parsePublicKeys, type PublicKeysDocument, type VerificationKeys } from './signature'

/** One leaked key that was active in the source of truth when GitHub reported it. */
export interface LeakedApiKey {
  keyHash: string
  /** The record `lookup` answered for the key, as the hook hands it to routes (a plain JSON copy). */
  record: ApiKeyRecord
  /** Where GitHub found the key (a URL of the commit, issue, gist...), as GitHub reported it. */
  url: string | undefined
  /** What kind of place GitHub found it in ('content', 'commit'...), as GitHub reported it. */
  source: string | undefined
}

/** Revokes a leaked key in the source of truth and tells its owner; the plugin then drops it from the cache. */
export type OnLeak = (leak: LeakedApiKey) => void | Promise<void>

export interface SecretScanningOptions {
  /**
   * Path of the route GitHub posts its reports to (relative to the scope that registers the plugin).
   * @default '/.well-known/secret-scanning'
   */
  path?: string
  /**
   * Prefix of your keys (`generateApiKey({ prefix })`): only reported tokens well-formed for it
   * are looked up, the others are false positives.
   * @default the main plugin's `apiKeys.format.prefix` (one of the two is required)
   */
  prefix?: string
  /**
   * Called for each reported key that is active: revoke it in your source of truth and tell its
   * owner. If it throws, the key is still dropped from the cache and GitHub is answered 500 so
   * that it sends the report again.
   */
  onLeak: OnLeak
  /**
   * Where GitHub publishes its secret scanning public keys; fetched on the first report, cached,
   * and fetched again for a key id it does not list. `http:` is accepted (tests, proxies).
   * @default 'https://api.github.com/meta/public_keys/secret_scanning'
   */
  keysUrl?: string | URL
  /** The public keys themselves, in the shape `keysUrl` answers; nothing is then fetched. */
  publicKeys?: PublicKeysDocument
}

export interface ResolvedSecretScanningOptions {
  path: string
  prefix: string
  onLeak: OnLeak
  lookup: NonNullable<MainPluginHandoff['lookup']>
  lookupTimeoutMs: number
  /** Where to fetch the keys, or undefined when `publicKeys` gave them. */
  keysUrl: URL | undefined
  publicKeys: VerificationKeys | undefined
}

const GITHUB_KEYS_URL = 'https://api.github.com/meta/public_keys/secret_scanning'
const KNOWN = ['path', 'prefix', 'onLeak', 'keysUrl', 'publicKeys']

function fail (name: string, why: string): never {
  throw new InvalidOptionError(name, why)
}

function parseKeysUrl (value: unknown): URL {
  let url: URL
  try {
    url = new URL(value instanceof URL ? value.href : value as string)
  } catch {
    fail('keysUrl', 'must be an absolute http: or https: URL')
  }
  if ((typeof value !== 'string' && !(value instanceof URL)) || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
    fail('keysUrl', 'must be an absolute http: or https: URL')
  }
  return url
}

/** Validates everything at registration, so a bad option fails `ready()` and never a report. */
export function resolveSecretScanningOptions (raw: SecretScanningOptions, main: MainPluginHandoff): ResolvedSecretScanningOptions {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('options', 'must be an object')
  assertKnownKeys(raw, KNOWN, '', [], 'secretScanning')

  const path = raw.path ?? '/.well-known/secret-scanning'
  if (typeof path !== 'string' || !path.startsWith('/')) fail('path', 'must be a string starting with "/"')
  if (typeof raw.onLeak !== 'function') fail('onLeak', 'is required and must be a function')
  if (main.lookup === undefined) fail('apiKeys.lookup', 'is required by secretScanning, which asks it about every reported key')

  const prefix = raw.prefix ?? main.formatPrefix
  if (prefix === undefined) fail('prefix', 'is required when the main plugin has no apiKeys.format.prefix')
  assertKeyPrefix(prefix, 'prefix')

  if (raw.publicKeys !== undefined && raw.keysUrl !== undefined) fail('keysUrl', 'cannot be combined with publicKeys, which replaces fetching')
  let publicKeys: VerificationKeys | undefined
  if (raw.publicKeys !== undefined) {
    try {
      publicKeys = parsePublicKeys(raw.publicKeys)
    } catch (err) {
      fail('publicKeys', (err as Error).message)
    }
  }
  return {
    path,
    prefix,
    onLeak: raw.onLeak,
    lookup: main.lookup,
    lookupTimeoutMs: main.lookupTimeoutMs,
    keysUrl: publicKeys === undefined ? parseKeysUrl(raw.keysUrl ?? GITHUB_KEYS_URL) : undefined,
    publicKeys
  }
}
