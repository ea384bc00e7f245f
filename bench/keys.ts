import { createHash } from 'node:crypto'

/**
 * The bench's key table: key `i` is the same in every process, so a server child can build its
 * lookup table from a count alone and the load generator never has to ship keys to it.
 * The keys are only ever used against the bench's own servers.
 */
export function benchKeys (count: number): string[] {
  const keys = new Array<string>(count)
  for (let i = 0; i < count; i++) {
    keys[i] = 'bench_' + createHash('sha256').update(`fastify-auth-cache bench key ${i}`).digest('base64url').slice(0, 32)
  }
  return keys
}
