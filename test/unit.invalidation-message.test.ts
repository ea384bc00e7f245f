import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, test } from 'node:test'
import { encodeMessage, messageParts, parseMessage, type InvalidationMessage } from '../lib/api-key-cache/invalidation-bus'
import { hashApiKey } from '../lib'

const instance = randomBytes(8).toString('hex')
const keyHash = hashApiKey('k_round_trip')

describe('invalidation bus messages', () => {
  test('a delete, a clear and a credential change survive encoding and parsing unchanged', () => {
    const messages: InvalidationMessage[] = [
      { kind: 'delete', instance, revision: 7, payload: keyHash },
      { kind: 'clear', instance, revision: 0 },
      { kind: 'credential', instance, revision: 0, payload: 'credentials:default' },
      // The payload is everything after the revision, whatever it holds.
      { kind: 'delete', instance: 'a', revision: 12345678, payload: 'x:y' }
    ]
    for (const message of messages) {
      const text = encodeMessage(message)
      assert.deepEqual(parseMessage(text), message, text)
    }
  })

  test('the wire format is <kind>:<instance>:<revision>[:<payload>]', () => {
    assert.equal(encodeMessage({ kind: 'delete', instance, revision: 3, payload: keyHash }), `d:${instance}:3:${keyHash}`)
    assert.equal(encodeMessage({ kind: 'clear', instance, revision: 4 }), `c:${instance}:4`)
    assert.deepEqual(parseMessage(`d:${instance}:0:${keyHash}`), { kind: 'delete', instance, revision: 0, payload: keyHash })
    assert.deepEqual(parseMessage(`c:${instance}:9`), { kind: 'clear', instance, revision: 9 })
  })

  test('messageParts puts the revision where a script can write it', () => {
    const [head, tail] = messageParts('delete', instance, keyHash)
    assert.deepEqual(parseMessage(`${head}42${tail}`), { kind: 'delete', instance, revision: 42, payload: keyHash })
    const [clearHead, clearTail] = messageParts('clear', instance)
    assert.deepEqual(parseMessage(`${clearHead}5${clearTail}`), { kind: 'clear', instance, revision: 5 })
  })

  const junk: Array<[string, string]> = [
    ['nothing', ''],
    ['a kind alone', 'd'],
    ['a clear without its instance', 'c:'],
    ['a clear without its revision', `c:${instance}`],
    ['a delete without its instance', `d::0:${keyHash}`],
    ['a delete without a revision', `d:${instance}:${keyHash}`],
    ['a delete without a hash', `d:${instance}:0`],
    ['a delete with an empty hash', `d:${instance}:0:`],
    ['a revision that is not a number', `d:${instance}:x:${keyHash}`],
    ['a negative revision', `d:${instance}:-1:${keyHash}`],
    ['a revision with a leading zero', `c:${instance}:01`],
    ['a clear with an extra part', `c:${instance}:0:${keyHash}`],
    ['a clear with an empty extra part', `c:${instance}:0:`],
    ['an unknown kind', `x:${instance}:0:${keyHash}`],
    ['a known kind spelt out', `delete:${instance}:0:${keyHash}`],
    ['an upper-case kind', `D:${instance}:0:${keyHash}`],
    ['no separator after the kind', `d${instance}:0:${keyHash}`],
    ['plain text', 'hello']
  ]
  for (const [what, text] of junk) {
    test(`rejects ${what}: ${JSON.stringify(text.slice(0, 24))}`, () => {
      assert.equal(parseMessage(text), undefined)
    })
  }
})
