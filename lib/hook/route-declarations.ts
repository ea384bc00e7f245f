import { subscribe } from 'node:diagnostics_channel'
import type { FastifyInstance, RouteOptions } from 'fastify'

/** A route declared with a `config.apiKey`, as declared. */
export interface DeclaredRoute {
  /** 'GET /orders', as errors name it. */
  readonly name: string
  readonly apiKey: unknown
}

/** Fastify instance (an application's root) → its routes declared with `config.apiKey`. */
const declaredRoutes = new WeakMap<object, DeclaredRoute[]>()

export function routeName (routeOptions: { method: RouteOptions['method'], url?: string }): string {
  const method = Array.isArray(routeOptions.method) ? routeOptions.method.join(',') : routeOptions.method
  return `${method} ${routeOptions.url}`
}

/**
 * A route declared before the plugin loaded (`register` without await, then `app.get`, as
 * CommonJS code is written) never reaches the plugin's `onRoute` hook, and Fastify offers no
 * list of routes. So from the moment this module is loaded, every Fastify application created
 * gets, through the channel Fastify publishes each new instance on (the one APM agents use for
 * the same purpose), an `onRoute` hook of its own that notes the routes carrying `config.apiKey`
 * (those only: nothing for applications that do not use it). The plugin checks them when it loads.
 */
subscribe('fastify.initialization', (message) => {
  const { fastify } = message as { fastify: FastifyInstance }
  const routes: DeclaredRoute[] = []
  declaredRoutes.set(fastify, routes)
  fastify.addHook('onRoute', (routeOptions) => {
    const apiKey = (routeOptions.config as { apiKey?: unknown } | undefined)?.apiKey
    if (apiKey !== undefined) routes.push({ name: routeName(routeOptions), apiKey })
  })
})

/**
 * The routes with `config.apiKey` declared so far in the application of `fastify` (any of its
 * scopes: an encapsulated instance inherits from its parent, up to the root); undefined when the
 * application was created before this module was loaded, and nothing was noted.
 */
export function routesDeclaredIn (fastify: FastifyInstance): readonly DeclaredRoute[] | undefined {
  for (let instance: object | null = fastify; instance !== null; instance = Object.getPrototypeOf(instance)) {
    const routes = declaredRoutes.get(instance)
    if (routes !== undefined) return routes
  }
  return undefined
}
