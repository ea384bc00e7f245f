import assert from 'node:assert/strict'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { test } from 'node:test'

const ROOT = join(__dirname, '..')
const README = join(ROOT, 'README.md')
const DOCS = join(ROOT, 'docs')

/**
 * Pages the README's table of contents lists that other branches add. Remove each name once its
 * page exists on this branch: from then on its links are checked like any other.
 */
const read = (file: string): string => readFileSync(file, 'utf8')
const markdownFiles = (): string[] => [README, ...readdirSync(DOCS).filter((name) => name.endsWith('.md')).map((name) => join(DOCS, name))]

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
function anchor (heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-')
}

function anchorsOf (markdown: string): Set<string> {
  const anchors = new Set<string>()
  let fenced = false
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced
    const heading = fenced ? null : /^#{1,6} (.*)$/.exec(line)
    if (heading !== null) anchors.add(anchor(heading[1]!))
  }
  return anchors
}

test('the README\'s Quick start is examples/quick-start.ts, verbatim', () => {
  const readme = read(README)
  const block = /<!-- quick-start:begin -->\n```ts\n([\s\S]*?)```\n<!-- quick-start:end -->/.exec(readme)
  assert.ok(block !== null, 'the README has a ```ts block between <!-- quick-start:begin --> and <!-- quick-start:end -->')
  assert.equal(block[1], read(join(ROOT, 'examples', 'quick-start.ts')))
})

test('the README reads in ten minutes; the rest is in docs/', () => {
  const lines = read(README).split('\n').length
  assert.ok(lines <= 450, `README.md has ${lines} lines`)
})

test('every relative link of the README and docs/ leads to a file, and every #anchor to a heading', () => {
  const broken: string[] = []
  for (const file of markdownFiles()) {
    const text = read(file)
    const where = relative(ROOT, file)
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(target!)) continue
      const [path, hash] = target!.split('#') as [string, string | undefined]
      const resolved = path === '' ? file : join(dirname(file), path)
      if (!existsSync(resolved)) {
        broken.push(`${where}: ${target} (no such file)`)
        continue
      }
      if (hash !== undefined && resolved.endsWith('.md') && !anchorsOf(read(resolved)).has(hash)) {
        broken.push(`${where}: ${target} (no such heading)`)
      }
    }
  }
  assert.deepEqual(broken, [])
})

test('the table of contents lists every page of docs/', () => {
  const readme = read(README)
  for (const name of readdirSync(DOCS).filter((n) => n.endsWith('.md'))) {
    assert.ok(readme.includes(`](docs/${name}`), `README.md links docs/${name}`)
  }
})

test('figures say the command and the machine, not the story of a run', () => {
  for (const file of markdownFiles()) {
    assert.doesNotMatch(read(file), /this session|previous release|this release|the run before|last run on/i, relative(ROOT, file))
  }
})
