import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Redis from 'ioredis'
import { Child } from '../test/helpers/child-process'
import { startRedis } from '../test/helpers/redis-server'
import type { HostCpu, ScaleHostConfig } from './scale-host'

/**
 * `npm run bench:scale`: what idle tiered processes cost one Redis, as their number grows
 * (CONTRACT 4a, "Many processes": Redis's load must grow linearly with processes, never with
 * their square). For each N, N idle Fastify apps on the tiered backend, each with its own ioredis
 * client, are spread over a few Node processes and share one private redis-server. After they
 * settle, the bench measures over a window:
 *
 * - Redis CPU: the change of `used_cpu_user + used_cpu_sys` (INFO cpu), as a share of one core;
 * - Redis output bytes/s (`total_net_output_bytes`) and commands/s (`total_commands_processed`);
 * - pub/sub messages one instance receives per second: an observer PSUBSCRIBEd to
 *   `fastify-auth-cache:*` counts what is published on each of the plugin's channels, and each
 *   message counts once per subscriber of its channel (PUBSUB NUMSUB); shard channels
 *   (SSUBSCRIBE) are not seen;
 * - the CPU the hosting Node processes spend, per instance.
 *
 * Each figure is given in total and per instance, and the total is extrapolated to 1,000
 * processes by fitting `a·N + b·N²` to the measured points: a per-instance cost that grows with
 * N shows up as `b > 0` and a growth exponent near 2.
 *
 * Environment: SCALE_INSTANCES (default "10,40,160"), SCALE_HOSTS (Node processes, default 4),
 * SCALE_SETTLE_MS (default 5000), SCALE_WINDOW_MS (default 10000).
 */

const INSTANCES = (process.env.SCALE_INSTANCES ?? '10,40,160').split(',').map((n) => Number(n.trim())).filter((n) => n > 0)
const HOSTS = Number(process.env.SCALE_HOSTS || 4)
const SETTLE_MS = Number(process.env.SCALE_SETTLE_MS || 5000)
const WINDOW_MS = Number(process.env.SCALE_WINDOW_MS || 10_000)
const TARGET = 1000

interface Row {
  instances: number
  hosts: number
  /** Per second over the window, for all instances together. */
  redisCpu: number
  outputBytes: number
  commands: number
  /** Messages published on the plugin's channels, and delivered to subscribers. */
  published: number
  delivered: number
  hostCpu: number
  channels: string
}

function parseInfo (text: string): Map<string, string> {
  const fields = new Map<string, string>()
  for (const line of text.split('\r\n')) {
    const colon = line.indexOf(':')
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1))
  }
  return fields
}

async function counters (admin: Redis): Promise<{ cpu: number, output: number, commands: number }> {
  const info = parseInfo(await admin.info())
  return {
    cpu: Number(info.get('used_cpu_user')) + Number(info.get('used_cpu_sys')),
    output: Number(info.get('total_net_output_bytes')),
    commands: Number(info.get('total_commands_processed'))
  }
}

async function measure (redisUrl: string, admin: Redis, instances: number): Promise<Row> {
  const hosts = Math.min(HOSTS, instances)
  const peers: Child[] = []
  const observer = new Redis(redisUrl)
  observer.on('error', () => {})
  try {
    const started = await Promise.all(Array.from({ length: hosts }, (_, i) => {
      const apps = Math.floor(instances / hosts) + (i < instances % hosts ? 1 : 0)
      const config: ScaleHostConfig = { name: `h${i}`, redisUrl, apps }
      return Child.start({ name: `scale host ${i}`, file: join(__dirname, 'scale-host.ts'), args: [JSON.stringify(config)], startTimeoutMs: 180_000 })
    }))
    peers.push(...started)
    await sleep(SETTLE_MS)

    const published = new Map<string, number>()
    observer.on('pmessage', (_pattern: string, channel: string) => {
      published.set(channel, (published.get(channel) ?? 0) + 1)
    })
    await observer.psubscribe('fastify-auth-cache:*')

    const cpuBefore = await Promise.all(peers.map((peer) => peer.call<HostCpu>('cpu')))
    const before = await counters(admin)
    const startedAt = performance.now()
    await sleep(WINDOW_MS)
    const after = await counters(admin)
    const seconds = (performance.now() - startedAt) / 1000
    const cpuAfter = await Promise.all(peers.map((peer) => peer.call<HostCpu>('cpu')))
    await observer.punsubscribe()

    let delivered = 0
    let publishedTotal = 0
    // Channels by kind (the part of the name before a process's own id), with their subscriber counts.
    const kinds = new Map<string, { channels: number, subscribers: Set<number> }>()
    for (const [channel, count] of published) {
      const [, subscribers] = await admin.pubsub('NUMSUB', channel) as [string, number]
      publishedTotal += count
      delivered += count * Number(subscribers)
      const kind = channel.replace(/:[0-9a-f]{16}$/, ':<instance>')
      const entry = kinds.get(kind) ?? { channels: 0, subscribers: new Set<number>() }
      entry.channels++
      entry.subscribers.add(Number(subscribers))
      kinds.set(kind, entry)
    }
    const channels = [...kinds].map(([kind, { channels, subscribers }]) =>
      `${channels} × ${kind} (${[...subscribers].join('/')} subscriber(s) each)`)
    const hostCpuMicros = cpuAfter.reduce((sum, cpu, i) => sum + cpu.cpuMicros - cpuBefore[i]!.cpuMicros, 0)
    return {
      instances,
      hosts,
      redisCpu: (after.cpu - before.cpu) / seconds,
      outputBytes: (after.output - before.output) / seconds,
      commands: (after.commands - before.commands) / seconds,
      published: publishedTotal / seconds,
      delivered: delivered / seconds,
      hostCpu: hostCpuMicros / 1e6 / seconds,
      channels: channels.join(', ') || 'none'
    }
  } finally {
    observer.disconnect()
    await Promise.all(peers.map((peer) => peer.stop(10_000)))
  }
}

/**
 * Least squares fit of y = a·x + b·x² with a, b >= 0 (no constant: no instance, no cost; and no
 * cost that shrinks as instances are added, which noise alone could suggest).
 */
function fitLinearQuadratic (xs: number[], ys: number[]): { a: number, b: number } {
  let s2 = 0; let s3 = 0; let s4 = 0; let sy1 = 0; let sy2 = 0
  for (const [i, x] of xs.entries()) {
    const y = ys[i]!
    s2 += x * x; s3 += x ** 3; s4 += x ** 4; sy1 += x * y; sy2 += x * x * y
  }
  const det = s2 * s4 - s3 * s3
  if (xs.length > 1 && det > 0) {
    const a = (sy1 * s4 - sy2 * s3) / det
    const b = (s2 * sy2 - s3 * sy1) / det
    if (a >= 0 && b >= 0) return { a, b }
  }
  // On the boundary: the better of a purely linear and a purely quadratic fit.
  const linear = { a: Math.max(0, sy1 / s2), b: 0 }
  const quadratic = { a: 0, b: Math.max(0, sy2 / s4) }
  const error = ({ a, b }: { a: number, b: number }): number =>
    xs.reduce((sum, x, i) => sum + (a * x + b * x * x - ys[i]!) ** 2, 0)
  return error(linear) <= error(quadratic) ? linear : quadratic
}

/** Exponent k of total ∝ N^k between the smallest and the largest N. */
function growth (xs: number[], ys: number[]): number {
  const first = 0
  const last = xs.length - 1
  if (last === first || ys[first]! <= 0 || ys[last]! <= 0) return NaN
  return Math.log(ys[last]! / ys[first]!) / Math.log(xs[last]! / xs[first]!)
}

const fmt = (value: number, digits = 1): string =>
  Number.isFinite(value) ? value.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : '—'

async function main (): Promise<void> {
  const redis = await startRedis()
  const admin = redis.client()
  const rows: Row[] = []
  try {
    for (const instances of INSTANCES) {
      console.error(`[scale] ${instances} idle tiered instances over ${Math.min(HOSTS, instances)} Node processes: settling ${SETTLE_MS} ms, measuring ${WINDOW_MS} ms`)
      rows.push(await measure(redis.url, admin, instances))
      // The hosts' connections are gone before the next row starts.
      for (let i = 0; i < 100 && Number(parseInfo(await admin.info('clients')).get('connected_clients')) > 1; i++) await sleep(100)
    }
  } finally {
    admin.disconnect()
    await redis.destroy()
  }

  const lines: string[] = []
  lines.push(`Idle tiered instances sharing one redis-server (${WINDOW_MS / 1000} s window after ${SETTLE_MS / 1000} s to settle).`)
  lines.push('')
  lines.push('| instances | Redis CPU (% of a core) | per instance | Redis output KiB/s | per instance | commands/s | per instance | messages published/s | messages received per instance/s | Node CPU per instance (% of a core) |')
  lines.push('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for (const row of rows) {
    lines.push(`| ${row.instances} | ${fmt(row.redisCpu * 100, 2)} | ${fmt(row.redisCpu * 100 / row.instances, 3)} | ` +
      `${fmt(row.outputBytes / 1024)} | ${fmt(row.outputBytes / 1024 / row.instances, 2)} | ${fmt(row.commands, 0)} | ` +
      `${fmt(row.commands / row.instances, 2)} | ${fmt(row.published)} | ${fmt(row.delivered / row.instances)} | ` +
      `${fmt(row.hostCpu * 100 / row.instances, 3)} |`)
  }
  lines.push('')
  lines.push(`Channels seen: ${rows.map((row) => `N=${row.instances}: ${row.channels}`).join('; ')}`)
  lines.push('')
  const xs = rows.map((row) => row.instances)
  const extrapolate = (label: string, ys: number[], unit: string, scale: number, digits = 1): void => {
    const { a, b } = fitLinearQuadratic(xs, ys)
    const at = (a * TARGET + b * TARGET * TARGET) * scale
    const linear = ys[ys.length - 1]! / xs[xs.length - 1]! * TARGET * scale
    lines.push(`- ${label}: growth exponent ${fmt(growth(xs, ys), 2)} (1 = linear, 2 = quadratic); ` +
      `fit a·N + b·N² gives a = ${a.toExponential(3)}, b = ${b.toExponential(3)}; at ${TARGET.toLocaleString('en-US')} processes ` +
      `≈ ${fmt(at, digits)} ${unit} (a linear extrapolation of the largest row would give ${fmt(linear, digits)} ${unit})`)
  }
  lines.push(`Extrapolated to ${TARGET.toLocaleString('en-US')} processes:`)
  extrapolate('Redis CPU', rows.map((row) => row.redisCpu), '% of a core', 100)
  extrapolate('Redis output', rows.map((row) => row.outputBytes), 'MiB/s', 1 / (1024 * 1024), 2)
  extrapolate('commands', rows.map((row) => row.commands), 'commands/s', 1, 0)
  extrapolate('pub/sub messages delivered', rows.map((row) => row.delivered), 'messages/s', 1, 0)
  console.log(lines.join('\n'))
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
