import autocannon from 'autocannon'
import { SampleBuffer } from './percentiles'
import type { Row } from './rows'

export interface LoadSettings {
  connections: number
  pipelining: number
}

export interface LoadResult {
  completed: number
  seconds: number
  /** Response times in ms, from autocannon's own per-request timing. */
  latencies: SampleBuffer
  statuses: Record<string, number>
  errors: number
}

/**
 * Drives one row's server over HTTP and keeps rotating through the row's keys across calls,
 * so consecutive rounds spread over the whole table rather than its first keys.
 */
export class RowLoad {
  private readonly values: string[]
  private next = 0

  constructor (private readonly row: Row, keys: string[], private readonly port: number, private readonly settings: LoadSettings) {
    this.values = keys.map((key) => row.header === 'authorization' ? `Bearer ${key}` : key)
  }

  /** Either for `seconds`, or until `amount` requests completed. */
  async run (limit: { seconds: number } | { amount: number }): Promise<LoadResult> {
    const header = this.row.header
    const values = this.values
    const latencies = new SampleBuffer()
    const instance = autocannon({
      url: `http://127.0.0.1:${this.port}`,
      connections: this.settings.connections,
      pipelining: this.settings.pipelining,
      ...('seconds' in limit ? { duration: limit.seconds } : { amount: limit.amount }),
      requests: [{
        method: 'GET',
        path: '/',
        // Every row pays the same for this, the bare route included, so it cancels out in the ratio.
        setupRequest: (request) => {
          request.headers![header] = values[this.next]
          this.next = this.next + 1 === values.length ? 0 : this.next + 1
          return request
        }
      }]
    })
    instance.on('response', (_client: unknown, _status: number, _bytes: number, ms: number) => latencies.push(ms))
    const result = await instance
    const statuses: Record<string, number> = {}
    for (const [code, { count }] of Object.entries(result.statusCodeStats)) statuses[code] = count
    return {
      completed: result.requests.total,
      seconds: result.duration,
      latencies,
      statuses,
      errors: result.errors + result.timeouts
    }
  }
}
