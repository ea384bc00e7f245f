import { createPublicKey, verify, type KeyObject } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'

/** The shape of GitHub's `meta/public_keys/secret_scanning` answer, and of the `publicKeys` option. */
export interface PublicKeysDocument {
  public_keys: ReadonlyArray<{ key_identifier: string, key: string, is_current?: boolean }>
}

/** Verification keys by GitHub's key identifier. */
export type VerificationKeys = ReadonlyMap<string, KeyObject>

const KEY_ID_HEADER = 'github-public-key-identifier'
const SIGNATURE_HEADER = 'github-public-key-signature'

// GitHub's identifiers are 64 hex characters and a DER P-256 signature is at most 72 bytes (96
// in base64): anything much longer is not from GitHub and is refused before any work.
const KEY_ID = /^[\x21-\x7e]{1,256}$/
const BASE64 = /^[A-Za-z0-9+/]{1,256}={0,2}$/

/** One verification key from PEM text, refused unless it is an ECDSA P-256 public key. */
function p256Key (pem: unknown): KeyObject {
  if (typeof pem !== 'string') throw new Error('"key" must be a PEM string')
  let key: KeyObject
  try {
    key = createPublicKey(pem)
  } catch {
    throw new Error('"key" is not a PEM public key')
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new Error('"key" must be an ECDSA P-256 public key')
  }
  return key
}

/**
 * The keys of a public-keys document. With `lenient`, entries that are not P-256 keys are
 * skipped (GitHub may one day list keys of another kind); otherwise they are an error.
 */
export function parsePublicKeys (document: unknown, lenient = false): Map<string, KeyObject> {
  const list = (document as { public_keys?: unknown } | null)?.public_keys
  if (typeof document !== 'object' || document === null || !Array.isArray(list)) {
    throw new Error('must be an object { public_keys: [{ key_identifier, key, is_current }] }')
  }
  const keys = new Map<string, KeyObject>()
  for (const [i, entry] of list.entries()) {
    try {
      const id = (entry as { key_identifier?: unknown } | null)?.key_identifier
      if (typeof id !== 'string' || !KEY_ID.test(id)) throw new Error('"key_identifier" must be a non-empty string of printable characters')
      keys.set(id, p256Key((entry as { key?: unknown }).key))
    } catch (err) {
      if (!lenient) throw new Error(`public_keys[${i}]: ${(err as Error).message}`)
    }
  }
  return keys
}

/** The key id and DER signature a report claims, or undefined when either header is missing or malformed. */
export function signatureHeaders (headers: IncomingHttpHeaders): { keyId: string, signature: Buffer } | undefined {
  const keyId = headers[KEY_ID_HEADER]
  const signature = headers[SIGNATURE_HEADER]
  if (typeof keyId !== 'string' || !KEY_ID.test(keyId)) return undefined
  if (typeof signature !== 'string' || !BASE64.test(signature)) return undefined
  return { keyId, signature: Buffer.from(signature, 'base64') }
}

/** Whether `signature` (DER ECDSA) is `key`'s signature of the SHA-256 of `body`. */
export function isSignedBy (key: KeyObject, body: Buffer, signature: Buffer): boolean {
  try {
    return verify('sha256', body, { key, dsaEncoding: 'der' }, signature)
  } catch {
    // OpenSSL rejects some malformed DER with an exception rather than `false`.
    return false
  }
}
