import { createHash } from 'node:crypto'

/** Lower-case hex SHA-256 of the UTF-8 key: the only form in which a key is cached, stored or logged. */
export function hashApiKey (key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex')
}
