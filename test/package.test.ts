import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve, sep } from 'node:path'
import { before, test } from 'node:test'
import { promisify } from 'node:util'

const run = promisify(execFile)
const root = resolve(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const ABC_SHA256 = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
const PLUGIN_META = { fastify: '5.x', name: 'fastify-auth-cache' }

/**
 * Runs a consumer fixture on plain Node, without tsx, as a user of the published package would,
 * from a directory outside the repository; it prints one JSON report.
 */
async function consume (fixture: string): Promise<Record<string, unknown>> {
  const { stdout } = await run(process.execPath, [join(__dirname, 'fixtures', fixture), root], { cwd: tmpdir(), timeout: 30_000 })
  return JSON.parse(stdout)
}

let required: Record<string, unknown>
let imported: Record<string, unknown>

before(async () => {
  const { import: esm, require: commonJs } = pkg.exports['.']
  const entries = [pkg.main, pkg.types, commonJs.default, commonJs.types, esm.default, esm.types]
  const missing = entries.filter((entry: string) => !existsSync(join(root, entry)))
  if (missing.length > 0) {
    throw new Error(`dist/ is missing or incomplete (${missing.join(', ')}): run \`npm run build\` first (npm test does)`)
  }
  [required, imported] = await Promise.all([consume('package-require.cjs'), consume('package-import.mjs')])
})

test('require(root) is the plugin; .default and .fastifyAuthCache are it; the helpers work', () => {
  const report = required
  assert.equal(report.resolved, join('dist', 'index.js'))
  assert.equal(report.pluginType, 'function')
  assert.equal(report.defaultIsPlugin, true)
  assert.equal(report.namedIsPlugin, true)
  assert.equal(report.selfReferenceIsPlugin, true, "require('fastify-auth-cache') through exports is the same object")
  assert.equal(report.hashOfAbc, ABC_SHA256)
  assert.equal(report.generatedIsWellFormed, true)
  assert.deepEqual(report.jsonRoundTrip, { a: 1 })
  assert.equal(report.encryptedSerializerType, 'function')
  assert.equal(report.missingErrorCode, 'FST_API_KEY_MISSING')
  assert.equal(report.forbiddenErrorCode, 403)
  assert.equal(report.rateLimitHook, 'preHandler')
})

test('the plugin is wrapped by fastify-plugin: name "fastify-auth-cache", fastify "5.x", decorating the registering scope', () => {
  const report = required
  assert.deepEqual(report.meta, PLUGIN_META)
  assert.equal(report.skipOverride, true)
  assert.equal(report.rootDecorated, true)
  assert.equal(report.deniedStatus, 401, 'its onRequest hook guards routes of the registering scope')
})

test('a memory-only user needs no Redis package: loading and serving never touch ioredis or @fastify/redis', () => {
  const report = required
  assert.equal(report.redisLoaded, false)
  assert.equal(report.rateLimitLoaded, false, 'rateLimitByApiKey makes options; @fastify/rate-limit is the user\'s')
  assert.equal(report.deniedStatus, 401)
})

test("import('fastify-auth-cache') gives the plugin as default and named exports, the same object as require", () => {
  const report = imported
  assert.equal(report.resolved, pkg.exports['.'].import.default.replace(/^\.\//, '').split('/').join(sep))
  assert.equal(report.defaultType, 'function')
  assert.equal(report.defaultIsCommonJsPlugin, true)
  assert.equal(report.namedIsDefault, true)
  assert.deepEqual(report.meta, PLUGIN_META)
  assert.equal(report.hashOfAbc, ABC_SHA256)
  assert.equal(report.generatedIsWellFormed, true)
  assert.equal(report.jsonSerializer, true)
  assert.equal(report.encryptedSerializerType, 'function')
  assert.equal(report.invalidErrorCode, 'FST_API_KEY_INVALID')
  assert.equal(report.rateLimitByApiKeyIsCommonJs, true)
})

test('runtime dependencies are exactly the four allowed; @fastify/redis is an optional peer', () => {
  assert.equal(pkg.name, 'fastify-auth-cache')
  assert.deepEqual(Object.keys(pkg.dependencies ?? {}).sort(), ['@fastify/error', 'fastify-plugin', 'lru-cache', 'secure-json-parse'])
  assert.ok(pkg.peerDependencies?.['@fastify/redis'], '@fastify/redis is a peer dependency')
  assert.equal(pkg.peerDependenciesMeta?.['@fastify/redis']?.optional, true)
  assert.equal(pkg.dependencies?.ioredis, undefined)
  assert.equal(pkg.optionalDependencies, undefined)
})
