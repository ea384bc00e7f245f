import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, test } from 'node:test'
import { encodeMessage, parseMessage, type InvalidationMessage } from '../lib/api-key-cache/invalidation-bus'
import { hashApiKey } from '../lib'

const instance = randomBytes(8).toString('hex')
const keyHash = hashApiKey('k_round_trip')

describe('invalidation bus messages', () => {
  test('a delete and a clear survive encoding and parsing unchanged', () => {
    const messages: InvalidationMessage[] = [
      { kind: 'delete', instance, payload: keyHash },
      { kind: 'clear', instance },
      // The payload is everything after the instance, whatever it holds.
      { kind: 'delete', instance: 'a', payload: 'x:y' }
    ]
    for (const message of messages) {
      const text = encodeMessage(message)
      assert.deepEqual(parseMessage(text), message, text)
    }
  })

  test('the wire format is <kind>:<instance>[:<payload>]', () => {
    assert.equal(encodeMessage({ kind: 'delete', instance, payload: keyHash }), `d:${instance}:${keyHash}`)
    assert.equal(encodeMessage({ kind: 'clear', instance }), `c:${instance}`)
    assert.deepEqual(parseMessage(`d:${instance}:${keyHash}`), { kind: 'delete', instance, payload: keyHash })
    assert.deepEqual(parseMessage(`c:${instance}`), { kind: 'clear', instance })
  })

  const junk: Array<[string, string]> = [
    ['nothing', ''],
    ['a kind alone', 'd'],
    ['a clear without its instance', 'c:'],
    ['a delete without its instance', `d::${keyHash}`],
    ['a delete without a hash', `d:${instance}`],
    ['a delete with an empty hash', `d:${instance}:`],
    ['a clear with an extra part', `c:${instance}:${keyHash}`],
    ['a clear with an empty extra part', `c:${instance}:`],
    ['an unknown kind', `x:${instance}:${keyHash}`],
    ['a known kind spelt out', `delete:${instance}:${keyHash}`],
    ['an upper-case kind', `D:${instance}:${keyHash}`],
    ['no separator after the kind', `d${instance}:${keyHash}`],
    ['plain text', 'hello']
  ]
  for (const [what, text] of junk) {
    test(`rejects ${what}: ${JSON.stringify(text.slice(0, 24))}`, () => {
      assert.equal(parseMessage(text), undefined)
    })
  }
})
