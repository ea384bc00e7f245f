import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, readFileSync, realpathSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { after, before, test } from 'node:test'
import { promisify } from 'node:util'
import ts from 'typescript'

// CONTRACT section 1: every way of consuming the published package type-checks and runs. The
// built package is packed as npm would publish it and installed, offline, into scratch consumer
// projects: the tarball unpacked into their node_modules, the packages they need besides it
// linked from this repository's node_modules. Each is compiled under strict TypeScript (the
// devDependency) and, where it emits JavaScript, run.

const execFileAsync = promisify(execFile)
const root = resolve(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const fixtures = join(__dirname, 'fixtures', 'consumers')
const quickStart = join(root, 'examples', 'quick-start.ts')
const STEP_TIMEOUT_MS = 120_000

/** What a consumer installs besides fastify-auth-cache: its own imports, and the package's dependencies. */
const LINKED = ['fastify', 'pg', '@types/node', '@types/pg', ...Object.keys(pkg.dependencies)]

interface Outcome { code: number, stdout: string, stderr: string }

// Under c8, every child would write V8 coverage of the compiler (megabytes each) for nothing:
// they run the packed copy in a scratch directory, or tools, never lib/.
const { NODE_V8_COVERAGE: _coverage, ...env } = process.env

/** Runs a command to its end, bounded; a failure is an outcome to assert on, not a rejection. */
async function run (file: string, args: string[], cwd: string): Promise<Outcome> {
  try {
    const { stdout, stderr } = await execFileAsync(file, args, { cwd, env, timeout: STEP_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const failed = err as { code?: unknown, signal?: unknown, stdout?: string, stderr?: string, message: string }
    const stderr = `${failed.stderr ?? ''}\n${failed.message}${failed.signal ? ` (${String(failed.signal)})` : ''}`
    return { code: typeof failed.code === 'number' ? failed.code : 1, stdout: failed.stdout ?? '', stderr }
  }
}

const node = (args: string[], cwd: string): Promise<Outcome> => run(process.execPath, args, cwd)
const binOf = (name: string, bin: string): string => join(root, 'node_modules', name, bin)

interface Consumer {
  /** package.json "type" of the consumer project. */
  type: 'module' | 'commonjs'
  compilerOptions: Record<string, unknown>
  /** Consumer file name → fixture file name. */
  files: Record<string, string>
  /** Whether the README's Quick start is compiled in this project too (as a program of its own:
   * the fixture's declaration merging must not reach it). */
  quickStart: boolean
  /** The file node runs after compilation, if the project emits or is JavaScript. */
  entry?: string
}

// skipLibCheck, as `tsc --init` sets it: checking fastify's and Node's declarations in every
// consumer would double the time on a busy machine. (The package's own are compiled by tsc from
// strict sources, and attw resolves them.)
const STRICT = { strict: true, target: 'ES2022', types: ['node'], skipLibCheck: true }
const CONSUMERS: Record<string, Consumer> = {
  'ESM, nodenext': {
    type: 'module',
    compilerOptions: { ...STRICT, module: 'nodenext', moduleResolution: 'nodenext', outDir: 'dist', rootDir: '.' },
    files: { 'fixture.ts': 'esm.ts' },
    quickStart: true,
    entry: 'dist/fixture.js'
  },
  'CommonJS TypeScript, nodenext': {
    type: 'commonjs',
    compilerOptions: { ...STRICT, module: 'nodenext', moduleResolution: 'nodenext', outDir: 'dist', rootDir: '.' },
    files: { 'fixture.ts': 'commonjs.ts' },
    quickStart: true,
    entry: 'dist/fixture.js'
  },
  'CommonJS JavaScript, checkJs': {
    type: 'commonjs',
    compilerOptions: { ...STRICT, module: 'nodenext', moduleResolution: 'nodenext', allowJs: true, checkJs: true, noEmit: true },
    files: { 'fixture.js': 'commonjs-check.js', 'types.d.ts': 'commonjs-check-types.d.ts' },
    quickStart: false,
    entry: 'fixture.js'
  },
  'ESM, bundler': {
    type: 'module',
    compilerOptions: { ...STRICT, module: 'preserve', moduleResolution: 'bundler', noEmit: true },
    files: { 'fixture.ts': 'esm.ts' },
    quickStart: true
  }
}

let work: string
let tarball: string
/** Consumer name → its compilation (started for all at once: they are independent). */
const compiled = new Map<string, Promise<{ dir: string, tsc: Outcome[] }>>()
let attw: Promise<Outcome>
let publint: Promise<Outcome>

async function createConsumer (name: string, consumer: Consumer): Promise<{ dir: string, tsc: Outcome[] }> {
  const dir = join(work, name.replace(/[^a-z]+/gi, '-').toLowerCase())
  const installed = join(dir, 'node_modules', 'fastify-auth-cache')
  await mkdir(installed, { recursive: true })
  const unpacked = await run('tar', ['-xzf', tarball, '-C', installed, '--strip-components=1'], dir)
  assert.equal(unpacked.code, 0, unpacked.stderr)
  for (const dependency of LINKED) {
    const link = join(dir, 'node_modules', dependency)
    await mkdir(dirname(link), { recursive: true })
    await symlink(realpathSync(join(root, 'node_modules', dependency)), link, 'junction')
  }
  for (const [file, fixture] of Object.entries(consumer.files)) await copyFile(join(fixtures, fixture), join(dir, file))
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: consumer.type }))
  await writeFile(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: consumer.compilerOptions, files: Object.keys(consumer.files) }))
  const compilations = [node([binOf('typescript', 'bin/tsc'), '-p', join(dir, 'tsconfig.json')], dir)]
  if (consumer.quickStart) {
    await copyFile(quickStart, join(dir, 'quick-start.ts'))
    const compilerOptions = { ...consumer.compilerOptions, noEmit: true, outDir: undefined, rootDir: undefined }
    await writeFile(join(dir, 'tsconfig.quick-start.json'), JSON.stringify({ compilerOptions, files: ['quick-start.ts'] }))
    compilations.push(node([binOf('typescript', 'bin/tsc'), '-p', join(dir, 'tsconfig.quick-start.json')], dir))
  }
  return { dir, tsc: await Promise.all(compilations) }
}

before(async () => {
  for (const entry of [pkg.main, pkg.exports['.'].import.default, pkg.exports['.'].import.types]) {
    if (!existsSync(join(root, entry))) throw new Error(`dist/ is missing ${entry}: run \`npm run build\` first (npm test does)`)
  }
  work = await mkdtemp(join(tmpdir(), 'fastify-auth-cache-consumers-'))
  const packed = await run(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['pack', '--json', '--pack-destination', work], root)
  assert.equal(packed.code, 0, packed.stderr)
  tarball = join(work, JSON.parse(packed.stdout)[0].filename)
  attw = node([binOf('@arethetypeswrong/cli', 'dist/index.js'), '--format', 'json', tarball], work)
  publint = node([binOf('publint', 'src/cli.js'), tarball], work)
  for (const [name, consumer] of Object.entries(CONSUMERS)) {
    const creation = createConsumer(name, consumer)
    creation.catch(() => {}) // asserted by its own test
    compiled.set(name, creation)
  }
})

after(async () => {
  await Promise.allSettled([...compiled.values(), attw, publint])
  if (work !== undefined) await rm(work, { recursive: true, force: true })
})

test('the ESM declarations export exactly what the CommonJS entry carries: its types and its properties', () => {
  const files = [pkg.exports['.'].import.types, pkg.exports['.'].require.types].map((file: string) => join(root, file))
  const program = ts.createProgram(files, {
    module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, noEmit: true, skipLibCheck: true, types: []
  })
  const checker = program.getTypeChecker()
  const moduleOf = (file: string): ts.Symbol => checker.getSymbolAtLocation(program.getSourceFile(file)!)!
  const esm = checker.getExportsOfModule(moduleOf(files[0]!)).map((symbol) => symbol.name)
  // `export =`: the namespace's types, and the properties of the value.
  const exportEquals = program.getSourceFile(files[1]!)!.statements.find(ts.isExportAssignment)!
  const commonJs = [
    ...checker.getExportsOfModule(moduleOf(files[1]!)).map((symbol) => symbol.name),
    ...checker.getPropertiesOfType(checker.getTypeAtLocation(exportEquals.expression)).map((symbol) => symbol.name)
  ]
  assert.deepEqual(esm.sort(), [...new Set(commonJs)].sort())
  assert.ok(esm.includes('default') && esm.includes('hashApiKey') && esm.includes('FastifyAuthCacheTypes'))
})

test('the tarball ships the licence, the changelog, and source maps only with the sources inlined', async () => {
  const listed = await run('tar', ['-tzf', tarball], work)
  assert.equal(listed.code, 0, listed.stderr)
  const files = listed.stdout.split('\n').filter(Boolean)
  for (const required of ['package/LICENSE', 'package/CHANGELOG.md', 'package/README.md', 'package/dist/esm.d.mts', 'package/dist/index.d.ts']) {
    assert.ok(files.includes(required), `${required} is packed`)
  }
  const maps = files.filter((file) => file.endsWith('.map'))
  assert.ok(maps.length > 0)
  for (const map of maps) {
    const source = JSON.parse(readFileSync(join(root, map.replace(/^package\//, '')), 'utf8'))
    assert.equal(source.sourcesContent?.length, source.sources.length, `${map} carries the sources it names`)
  }
})

test('@arethetypeswrong/cli finds no problem in the tarball', async () => {
  const outcome = await attw
  assert.equal(outcome.code, 0, outcome.stdout + outcome.stderr)
  const report = JSON.parse(outcome.stdout)
  assert.deepEqual(report.analysis.problems, [])
  // Every resolution mode resolved the entry to types: CommonJS for require and node10, ESM for import.
  const kinds = report.analysis.entrypoints['.'].resolutions
  assert.deepEqual(Object.keys(kinds).sort(), ['bundler', 'node10', 'node16-cjs', 'node16-esm'])
})

test('publint reports nothing, not even a suggestion', async () => {
  const outcome = await publint
  assert.equal(outcome.code, 0, outcome.stdout + outcome.stderr)
  assert.match(outcome.stdout, /All good!/, outcome.stdout)
})

for (const [name, consumer] of Object.entries(CONSUMERS)) {
  test(`${name}: strict TypeScript accepts the fixture${consumer.quickStart ? ' and the Quick start' : ''}; it runs: 401 without a key, 200 with one`, async () => {
    const { dir, tsc } = await compiled.get(name)!
    for (const compilation of tsc) assert.equal(compilation.code, 0, `tsc failed:\n${compilation.stdout}${compilation.stderr}`)
    if (consumer.entry === undefined) return
    const ran = await node([consumer.entry], dir)
    assert.equal(ran.code, 0, ran.stderr)
    assert.deepEqual(JSON.parse(ran.stdout), {
      ...(consumer.type === 'module' ? { sameExports: true } : {}),
      namedIsDefault: true,
      hashMatches: true,
      json: { a: 1 },
      noKey: 401,
      withKey: 200,
      owner: 'ada',
      health: 200,
      lookups: 1
    })
  })
}
