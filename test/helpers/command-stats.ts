import type Redis from 'ioredis'

// Heartbeats (PUBLISH), the periodic read of the dataset's revision (GETRANGE), subscriptions,
// connection set-up and the test's own probes and admin commands: everything that is not a
// request touching the cache.
const NOT_REQUEST_PATH = /^(publish|getrange|subscribe|psubscribe|unsubscribe|ping|info|hello|select|client\|.*|config\|.*|command(\|.*)?)$/

/** Calls per command the server has executed so far, from INFO commandstats ('client|list', ...). */
export async function commandCalls (admin: Redis): Promise<Map<string, number>> {
  const info = await admin.info('commandstats')
  const calls = new Map<string, number>()
  for (const line of info.split('\n')) {
    const match = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim())
    if (match !== null) calls.set(match[1]!, Number(match[2]))
  }
  return calls
}

/**
 * Calls so far of every command a request could send (GET, EVALSHA, EVAL, SET, ...): a count
 * that does not move proves a request was answered from process memory.
 */
export async function requestPathCommandCalls (admin: Redis): Promise<number> {
  let total = 0
  for (const [command, calls] of await commandCalls(admin)) {
    if (!NOT_REQUEST_PATH.test(command)) total += calls
  }
  return total
}
