import type { FastifyRequest, RouteOptions } from 'fastify'
import { isScope } from '../api-keys/scopes'
import { InvalidOptionError } from '../errors'
import { routeName, type DeclaredRoute } from './route-declarations'

/** The scopes a route requires, with the 403 challenge that names them, made once per route. */
export interface RequiredScopes {
  /** Non-empty, without repeats. */
  readonly list: readonly string[]
  /** `WWW-Authenticate` of the 403 (RFC 6750 §3.1). */
  readonly challenge: string
}

/** What the hook needs to know of a route, prepared once when the route is declared. */
export interface RouteSettings {
  /** Whether the `onRequest` hook authenticates the route (`config.apiKey !== false`). */
  readonly authenticate: boolean
  /** Undefined when any valid key will do. */
  readonly scopes: RequiredScopes | undefined
  /** Whether a request without a key runs the route (`request.apiKey` null); a key sent is still checked. */
  readonly optional: boolean
  /** What one request spends of a record's `quota` (`config.apiKey.cost`, default 1). */
  readonly cost: number
}

const AUTHENTICATE: RouteSettings = Object.freeze({ authenticate: true, scopes: undefined, optional: false, cost: 1 })
const OPEN: RouteSettings = Object.freeze({ authenticate: false, scopes: undefined, optional: false, cost: 1 })
const OPTIONAL: RouteSettings = Object.freeze({ authenticate: true, scopes: undefined, optional: true, cost: 1 })

type Config = Record<PropertyKey, unknown>

export interface RouteSettingsOptions {
  /** 'ApiKey' or 'Bearer'. */
  scheme: string
  realm: string
}

export interface RouteSettingsReader {
  /** The `onRoute` hook: validates `config.apiKey` and stores the route's settings in its config. */
  prepareRoute (routeOptions: RouteOptions): void
  /**
   * Validates the `config.apiKey` of routes declared before the plugin loaded, which onRoute
   * never saw: a bad one fails `ready()` as it would have at declaration.
   */
  checkDeclaredRoutes (routes: readonly DeclaredRoute[]): void
  /** The settings of the request's route, read through Fastify's route context. */
  settingsOf (request: FastifyRequest): RouteSettings
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

function configOf (request: FastifyRequest): Config | undefined {
  if (contextSymbol === undefined) contextSymbol = findContextSymbol(request)
  return (contextSymbol === null
    ? request.routeOptions.config
    : (request as unknown as Record<symbol, { config?: Config }>)[contextSymbol].config) as Config | undefined
}

/**
 * Route settings of one registration of the plugin, under a symbol of its own so that two
 * registrations (another realm, another header) never read each other's challenges.
 */
export function createRouteSettings (options: RouteSettingsOptions): RouteSettingsReader {
  const settingsKey = Symbol('fastify-auth-cache.route')
  const forbiddenChallenge = `${options.scheme} realm="${options.realm}", error="insufficient_scope", scope="`
  // Routes declared before the plugin loaded, read on their first request (see settingsOf).
  const unseen = new WeakMap<Config, RouteSettings>()

  /** `config.apiKey` of a route: `false`, `true`, absent, or `{ scopes?: string[], optional?: boolean, cost?: number }`; anything else throws. */
  function parse (apiKey: unknown, route: string): RouteSettings {
    if (apiKey === undefined || apiKey === true) return AUTHENTICATE
    if (apiKey === false) return OPEN
    const invalid = (why: string): never => {
      throw new InvalidOptionError('config.apiKey', `on route ${route}: ${why}`)
    }
    if (typeof apiKey !== 'object' || apiKey === null || Array.isArray(apiKey)) {
      return invalid('must be true, false or { scopes?: string[], optional?: boolean, cost?: number }')
    }
    for (const name of Object.keys(apiKey)) {
      if (name !== 'scopes' && name !== 'optional' && name !== 'cost') invalid(`unknown property "${name}" (only "scopes", "optional" and "cost" are known)`)
    }
    const { scopes, optional = false, cost = 1 } = apiKey as { scopes?: unknown, optional?: unknown, cost?: unknown }
    if (typeof optional !== 'boolean') invalid('optional must be a boolean')
    if (!Number.isSafeInteger(cost) || (cost as number) <= 0) invalid('cost must be a positive integer')
    const plain = cost === 1
      ? (optional === true ? OPTIONAL : AUTHENTICATE)
      : Object.freeze({ authenticate: true, scopes: undefined, optional: optional as boolean, cost: cost as number })
    if (scopes === undefined) return plain
    if (!Array.isArray(scopes)) return invalid('scopes must be an array of strings')
    for (const [i, scope] of scopes.entries()) {
      if (!isScope(scope)) invalid(`scopes[${i}] must be a non-empty string of printable ASCII without spaces, quotes or backslashes`)
    }
    const list: readonly string[] = Object.freeze([...new Set(scopes as string[])])
    if (list.length === 0) return plain
    return Object.freeze({
      authenticate: true,
      scopes: Object.freeze({ list, challenge: `${forbiddenChallenge}${list.join(' ')}"` }),
      optional: optional as boolean,
      cost: cost as number
    })
  }

  function prepareRoute (routeOptions: RouteOptions): void {
    const config = (routeOptions.config ?? {}) as Config
    const settings = parse(config.apiKey, routeName(routeOptions))
    routeOptions.config = { ...config, [settingsKey]: settings } as RouteOptions['config']
  }

  function checkDeclaredRoutes (routes: readonly DeclaredRoute[]): void {
    for (const route of routes) parse(route.apiKey, route.name)
  }

  /**
   * A route the plugin did not see being declared: the 404 handler (authenticated: fail closed),
   * or a route declared before the plugin loaded, whose `config.apiKey` (checked when the plugin
   * loaded, see checkDeclaredRoutes) is honoured as if it had been seen, read once on its first
   * request. Should one have escaped that check (an application created before this package was
   * loaded), a bad `config.apiKey` fails its requests (500) rather than let them through.
   */
  function unseenRoute (config: Config | undefined, request: FastifyRequest): RouteSettings {
    const apiKey = config?.apiKey
    if (apiKey === undefined || apiKey === true) return AUTHENTICATE
    let settings = unseen.get(config!)
    if (settings === undefined) {
      settings = parse(apiKey, routeName(request.routeOptions))
      unseen.set(config!, settings)
    }
    return settings
  }

  function settingsOf (request: FastifyRequest): RouteSettings {
    const config = configOf(request)
    return (config?.[settingsKey] as RouteSettings | undefined) ?? unseenRoute(config, request)
  }

  return { prepareRoute, checkDeclaredRoutes, settingsOf }
}
