import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { InvalidOptionError } from '../errors'
import { isThenable } from '../thenable'
import { jsonSerializer, unreadableCredential, type CredentialSerializer, type SerializerContext } from './serializer'

export interface EncryptionKeys {
  /** Key id to 32-byte key, as a Buffer or base64. Ids may be any 1 to 255 bytes of UTF-8. */
  keys: Record<string, Buffer | string>
  /** The id new values are encrypted under. */
  current: string
}

// Envelope: magic (4) | id length (1) | id | IV (12) | GCM tag (16) | ciphertext.
const MAGIC = Buffer.from('FAC1')
const IV_LENGTH = 12
const TAG_LENGTH = 16

function toKey (id: string, key: Buffer | string): Buffer {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'base64') : key
  if (!Buffer.isBuffer(bytes) || bytes.length !== 32) {
    throw new InvalidOptionError(`keys.${id}`, 'must be 32 bytes, as a Buffer or base64')
  }
  return Buffer.from(bytes)
}

/** Binds the ciphertext to its key id and storage key, so bytes copied elsewhere do not decrypt. */
function additionalData (id: Buffer, ctx: SerializerContext): Buffer {
  return Buffer.concat([MAGIC, id, Buffer.from([0]), Buffer.from(ctx.key, 'utf8')])
}

class EnvelopeError extends Error {}

/**
 * Wraps a serializer in AES-256-GCM with a fresh random IV per value. Each value names the id of
 * its key, so keys rotate: values under an old id load while that id is in `keys`, and every
 * save uses `current`. Synchronous over a synchronous inner serializer (the default JSON one):
 * `serialize` answers a Buffer and `deserialize` the value, as the contract's serializer does.
 */
export function encryptedSerializer<T = unknown> (
  options: EncryptionKeys,
  inner: CredentialSerializer<T> = jsonSerializer as CredentialSerializer<T>
): CredentialSerializer<T> {
  if (typeof options !== 'object' || options === null || typeof options.keys !== 'object' || options.keys === null) {
    throw new InvalidOptionError('keys', 'must map key ids to 32-byte keys')
  }
  const keys = new Map<string, Buffer>()
  for (const [id, key] of Object.entries(options.keys)) {
    const idLength = Buffer.byteLength(id, 'utf8')
    if (idLength < 1 || idLength > 255) throw new InvalidOptionError(`keys.${id}`, 'key ids must be 1 to 255 bytes')
    keys.set(id, toKey(id, key))
  }
  if (typeof options.current !== 'string' || !keys.has(options.current)) {
    throw new InvalidOptionError('current', 'must name one of the keys')
  }
  const currentId = Buffer.from(options.current, 'utf8')
  const currentKey = keys.get(options.current)!

  function seal (plain: string | Buffer, ctx: SerializerContext): Buffer {
    const iv = randomBytes(IV_LENGTH)
    const cipher = createCipheriv('aes-256-gcm', currentKey, iv, { authTagLength: TAG_LENGTH })
    cipher.setAAD(additionalData(currentId, ctx))
    const body = Buffer.concat([cipher.update(typeof plain === 'string' ? Buffer.from(plain, 'utf8') : plain), cipher.final()])
    return Buffer.concat([MAGIC, Buffer.from([currentId.length]), currentId, iv, cipher.getAuthTag(), body])
  }

  function open (raw: Buffer, ctx: SerializerContext): Buffer {
    if (!Buffer.isBuffer(raw) || raw.length < MAGIC.length + 1 || !raw.subarray(0, MAGIC.length).equals(MAGIC)) {
      throw new EnvelopeError('not an encrypted credential')
    }
    const idLength = raw[MAGIC.length]
    const idStart = MAGIC.length + 1
    const ivStart = idStart + idLength
    const bodyStart = ivStart + IV_LENGTH + TAG_LENGTH
    if (idLength === 0 || raw.length < bodyStart) throw new EnvelopeError('truncated encrypted credential')
    const id = raw.subarray(idStart, ivStart)
    const key = keys.get(id.toString('utf8'))
    if (key === undefined) throw new EnvelopeError('encrypted under a key id that is not configured')
    const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(ivStart, ivStart + IV_LENGTH), { authTagLength: TAG_LENGTH })
    decipher.setAAD(additionalData(id, ctx))
    decipher.setAuthTag(raw.subarray(ivStart + IV_LENGTH, bodyStart))
    return Buffer.concat([decipher.update(raw.subarray(bodyStart)), decipher.final()])
  }

  return {
    serialize (value: T, ctx: SerializerContext): Buffer | Promise<Buffer> {
      const plain = inner.serialize(value, ctx)
      return isThenable(plain) ? Promise.resolve(plain).then((bytes) => seal(bytes, ctx)) : seal(plain, ctx)
    },

    deserialize (raw: Buffer, ctx: SerializerContext): T | Promise<T> {
      let value: T | Promise<T>
      try {
        value = inner.deserialize(open(raw, ctx), ctx)
      } catch (cause) {
        throw unreadableCredential(ctx.key, cause)
      }
      return isThenable(value) ? Promise.resolve(value).catch((cause: unknown) => { throw unreadableCredential(ctx.key, cause) }) : value
    }
  }
}
