import { startRedis } from '../test/helpers/redis-server'

/**
 * The command line of a bench module: `--json URL` measures against the Redis at URL and prints
 * JSON for bench/run.ts; with no argument it starts a private redis-server and prints a table.
 */
export function benchCommand<T> (measure: (redisUrl: string) => Promise<T[]>, print: (figures: T[]) => void): void {
  run().catch((err) => {
    console.error(err)
    process.exit(1)
  })

  async function run (): Promise<void> {
    if (process.argv[2] === '--json') {
      process.stdout.write(JSON.stringify(await measure(process.argv[3])) + '\n')
      return
    }
    const redis = await startRedis()
    try {
      print(await measure(redis.url))
    } finally {
      await redis.destroy()
    }
  }
}
