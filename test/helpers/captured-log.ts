/** One pino line, parsed. */
export interface LogLine {
  level: number
  msg?: string
  [field: string]: unknown
}

export const LEVEL = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 } as const

/**
 * The lines a Fastify logger writes, kept in memory so a test can count them:
 * `Fastify({ logger: { level: 'trace', stream: log.stream } })`.
 */
export class CapturedLog {
  readonly lines: LogLine[] = []
  readonly stream = {
    write: (line: string): void => {
      this.lines.push(JSON.parse(line) as LogLine)
    }
  }

  at (level: number): LogLine[] {
    return this.lines.filter((line) => line.level === level)
  }

  /** Every line as written, to show in a failed assertion. */
  get text (): string {
    return this.lines.map((line) => JSON.stringify(line)).join('\n')
  }
}
