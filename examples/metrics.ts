import type { IncomingMessage, ServerResponse } from 'node:http'

/**
 * Prometheus for the example server, when `@opentelemetry/exporter-prometheus` (and so the
 * OpenTelemetry SDK) is installed: `npm start` works without it, and then has no /metrics.
 * The meter provider is registered globally BEFORE the plugin, which records on it.
 */
export interface PrometheusMetrics {
  handle (request: IncomingMessage, response: ServerResponse): void
}

export async function startPrometheus (): Promise<PrometheusMetrics | undefined> {
  let exporterModule: typeof import('@opentelemetry/exporter-prometheus')
  let sdk: typeof import('@opentelemetry/sdk-metrics')
  let api: typeof import('@opentelemetry/api')
  try {
    exporterModule = await import('@opentelemetry/exporter-prometheus')
    sdk = await import('@opentelemetry/sdk-metrics')
    api = await import('@opentelemetry/api')
  } catch {
    return undefined
  }
  // The route serves the scrape; the exporter's own HTTP server is not needed.
  const exporter = new exporterModule.PrometheusExporter({ preventServerStart: true })
  api.metrics.setGlobalMeterProvider(new sdk.MeterProvider({ readers: [exporter] }))
  return { handle: (request, response) => exporter.getMetricsRequestHandler(request, response) }
}

/**
 * `npx tsx examples/metrics.ts`: the example app with metrics on, three requests (a miss, a hit
 * and one without a key), and the scrape Prometheus would get from /metrics, printed.
 */
async function printScrape (): Promise<void> {
  const metrics = await startPrometheus()
  if (metrics === undefined) {
    process.stderr.write('examples/metrics.ts needs @opentelemetry/api, @opentelemetry/sdk-metrics and @opentelemetry/exporter-prometheus installed\n')
    process.exitCode = 1
    return
  }
  // Loaded here, not at the top: app.ts only needs this module's types, and importing it at the
  // top would make every user of startPrometheus load Fastify and the plugin through it.
  const { buildExampleApp } = await import('./app')
  const { app, demoKey } = await buildExampleApp({ metrics })
  try {
    for (const headers of [{ 'x-api-key': demoKey.key }, { 'x-api-key': demoKey.key }, {}]) {
      await app.inject({ method: 'GET', url: '/whoami', headers })
    }
    const scrape = await app.inject({ method: 'GET', url: '/metrics' })
    process.stdout.write(`GET /metrics after a miss, a hit and a request without a key (${scrape.statusCode}):\n\n${scrape.body}`)
  } finally {
    await app.close()
  }
}

if (require.main === module) {
  printScrape().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
