import sjson from 'secure-json-parse'
import { CredentialsDeserializeError } from '../errors'

export interface SerializerContext {
  /** The full storage key, `${keyPrefix}${key}`. */
  key: string
}

/** Explicit conversion between a credential and bytes; `deserialize` must never run code. */
export interface CredentialSerializer<T = unknown> {
  serialize (value: T, ctx: SerializerContext): string | Buffer | Promise<string | Buffer>
  deserialize (raw: Buffer, ctx: SerializerContext): T | Promise<T>
}

/** JSON, parsed with prototype-poisoning protection: `__proto__` or `constructor.prototype` is refused. */
export const jsonSerializer: CredentialSerializer<any> = {
  serialize (value: unknown): string {
    const text = JSON.stringify(value)
    if (text === undefined) throw new TypeError('value has no JSON representation')
    return text
  },
  deserialize (raw: Buffer): unknown {
    return sjson.parse(raw.toString('utf8'), undefined, { protoAction: 'error', constructorAction: 'error' })
  }
}

/**
 * FST_CREDENTIALS_DESERIALIZE for the storage key `key`, with `cause` kept, whichever step could
 * not read the bytes (Redis' type, the envelope, the cipher, a serializer); a `cause` that
 * already is one is answered as it is.
 */
export function unreadableCredential (key: string, cause: unknown): Error {
  if (cause instanceof CredentialsDeserializeError) return cause
  const err = new CredentialsDeserializeError(key)
  err.cause = cause
  return err
}
