import crypto from 'node:crypto'

type OneShotHash = (algorithm: string, data: string, encoding: 'hex') => string
// crypto.hash (Node >= 20.12) is about three times faster than createHash for short inputs,
// and this runs on every authenticated request.
const oneShot = (crypto as unknown as { hash?: OneShotHash }).hash

/** Lower-case hex SHA-256 of the UTF-8 key: the only form in which a key is cached, stored or logged. */
export const hashApiKey: (key: string) => string = typeof oneShot === 'function'
  ? (key) => oneShot('sha256', key, 'hex')
  : /* c8 ignore next */ (key) => crypto.createHash('sha256').update(key, 'utf8').digest('hex')
