import diagnostics from 'node:diagnostics_channel'
import type { TestContext } from 'node:test'
import { metrics } from '@opentelemetry/api'
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics'

/** Every message published on the diagnostics channel `name` until `stop` is called. */
export function subscribe (name: string): { messages: any[], stop: () => void } {
  const messages: any[] = []
  const listener = (message: unknown): void => { messages.push(message) }
  diagnostics.subscribe(name, listener)
  return { messages, stop: () => diagnostics.unsubscribe(name, listener) }
}

/**
 * An in-memory meter provider as the global one for the test (its 60 s interval leaves exports to `forceFlush`),
 * shut down and the global one removed after it.
 */
export function useGlobalMeterProvider (t: TestContext): { exporter: InMemoryMetricExporter, reader: PeriodicExportingMetricReader } {
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 60_000 })
  const provider = new MeterProvider({ readers: [reader] })
  metrics.setGlobalMeterProvider(provider)
  t.after(async () => {
    await provider.shutdown()
    metrics.disable()
  })
  return { exporter, reader }
}
