import assert from 'node:assert/strict'
import { test } from 'node:test'
import { keySlot, replicatedSlots } from '../lib/redis/cluster-nodes'

test('keySlot is Redis Cluster\'s CRC16 slot, hash tags included', () => {
  // Values Redis answers to CLUSTER KEYSLOT.
  assert.equal(keySlot('foo'), 12182)
  assert.equal(keySlot('bar'), 5061)
  assert.equal(keySlot('{foo}.anything'), 12182)
  assert.equal(keySlot('prefix:{foo}:lock'), 12182)
  // An empty tag does not count: the whole key is hashed.
  assert.notEqual(keySlot('{}foo'), keySlot('foo'))
})

test('replicatedSlots: the slots of masters with a replica that has not failed', () => {
  const table = [
    'r1 127.0.0.1:7004@17004 slave,nofailover m1 0 1 1 connected',
    'r2 127.0.0.1:7005@17005 slave,fail m2 0 1 2 connected',
    'm1 127.0.0.1:7001@17001 myself,master,nofailover - 0 1 1 connected 0-5460',
    'm2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922',
    'm3 127.0.0.1:7003@17003 master - 0 1 3 connected 10923-16382 16383 [16383->-m1]',
    ''
  ].join('\n')
  const replicated = replicatedSlots(table)
  assert.equal(replicated(0), true)
  assert.equal(replicated(5460), true)
  assert.equal(replicated(5461), false, 'its only replica failed')
  assert.equal(replicated(12000), false, 'no replica')
  assert.equal(replicated(16383), false)
})
