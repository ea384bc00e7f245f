import type { FastifyRequest, RouteOptions } from 'fastify'

/** What the hook needs to know of a route, prepared once when the route is declared. */
export interface RouteSettings {
  authenticate: boolean
}

const AUTHENTICATE: RouteSettings = Object.freeze({ authenticate: true })
const OPEN: RouteSettings = Object.freeze({ authenticate: false })

const SETTINGS = Symbol('fastify-auth-cache.route')
type ConfigWithSettings = Record<PropertyKey, unknown> & { [SETTINGS]?: RouteSettings }

/** The `onRoute` hook: stores the route's settings in its config, which Fastify copies into the route's context. */
export function prepareRoute (routeOptions: RouteOptions): void {
  const config = (routeOptions.config ?? {}) as ConfigWithSettings
  const prepared: ConfigWithSettings = { ...config, [SETTINGS]: config.apiKey === false ? OPEN : AUTHENTICATE }
  routeOptions.config = prepared as RouteOptions['config']
}

/**
 * Fastify keeps a route's context (and in it the config) under a symbol of its own on each
 * request. `request.routeOptions` would give the config too, but it builds a new object of a
 * dozen fields on every access; the context is read directly where that symbol can be found.
 */
let contextSymbol: symbol | null | undefined

function findContextSymbol (request: FastifyRequest): symbol | null {
  return Object.getOwnPropertySymbols(request).find((symbol) => symbol.description === 'fastify.context') ?? null
}

/**
 * The settings of the request's route. A route the plugin did not see being declared (the 404
 * handler, or a route added while the plugin was still loading) is authenticated: fail closed.
 */
export function routeSettings (request: FastifyRequest): RouteSettings {
  if (contextSymbol === undefined) contextSymbol = findContextSymbol(request)
  const config = (contextSymbol === null
    ? request.routeOptions.config
    : (request as unknown as Record<symbol, { config?: ConfigWithSettings }>)[contextSymbol].config) as ConfigWithSettings | undefined
  return config?.[SETTINGS] ?? AUTHENTICATE
}
