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
