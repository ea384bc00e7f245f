// The part of autocannon's API the bench uses; autocannon ships no type declarations.
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events'

  namespace autocannon {
    interface Request {
      method?: string
      path?: string
      headers?: Record<string, string>
      setupRequest?: (request: Request, context: Record<string, unknown>) => Request | undefined
    }
    interface Options {
      url: string
      connections?: number
      pipelining?: number
      duration?: number
      amount?: number
      timeout?: number
      requests?: Request[]
    }
    interface Result {
      /** Seconds. */
      duration: number
      requests: { total: number, sent: number }
      errors: number
      timeouts: number
      non2xx: number
      statusCodeStats: Record<string, { count: number }>
    }
    interface Instance extends EventEmitter, PromiseLike<Result> {
      stop (): void
    }
  }

  function autocannon (options: autocannon.Options): autocannon.Instance
  export = autocannon
}
