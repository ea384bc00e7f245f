import assert from 'node:assert/strict'
import { test } from 'node:test'
import { DatasetRevision } from '../lib/api-key-cache/dataset-revision'

test('DatasetRevision: a read lower than what was known when it was sent went back; a revision heard during the read did not', () => {
  const revision = new DatasetRevision()
  revision.seen(5)
  const knownWhenAsked = revision.highest
  // The read is under way; a revocation elsewhere reaches revision 6 and is heard first.
  revision.seen(6)
  assert.equal(revision.wentBack(5, knownWhenAsked), false, 'the read answered before revision 6 was made')
  assert.equal(revision.highest, 6)

  assert.equal(revision.wentBack(4, revision.highest), true, 'the dataset lost revisions 5 and 6')
  assert.equal(revision.highest, 6, 'what was known is kept, so that the replay raises the counter past it')
  assert.equal(revision.wentBack(9, revision.highest), false)
  assert.equal(revision.highest, 9, 'a read raises what is known')
})
