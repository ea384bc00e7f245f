import type { ApiKeyLookup } from '../options'

/**
 * What the main plugin hands to `secretScanning`, which needs the source of truth and its bound
 * but must not make them public: the object lives on the instance under a symbol only these two
 * modules know, so it is no part of the contract's surface.
 */
export interface MainPluginHandoff {
  lookup: ApiKeyLookup | undefined
  lookupTimeoutMs: number
  formatPrefix: string | undefined
}

export const MAIN_PLUGIN_HANDOFF: unique symbol = Symbol('fastify-auth-cache main plugin handoff')
