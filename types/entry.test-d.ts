import type { FastifyPluginAsync } from 'fastify'
import { expectAssignable, expectType } from 'tsd'
import fastifyAuthCache, { fastifyAuthCache as named, errors, hashApiKey, type FastifyAuthCacheOptions } from '..'

// The package's entry is the plugin itself (CommonJS `module.exports`), carrying the helpers and
// itself as properties: every way of naming it has the same type.
expectType<typeof fastifyAuthCache>(named)
expectType<typeof fastifyAuthCache>(fastifyAuthCache.default)
expectType<typeof fastifyAuthCache>(fastifyAuthCache.fastifyAuthCache)
expectType<string>(fastifyAuthCache.default.hashApiKey('k'))
expectType<typeof hashApiKey>(fastifyAuthCache.hashApiKey)
expectType<typeof errors>(fastifyAuthCache.errors)
expectAssignable<FastifyPluginAsync<FastifyAuthCacheOptions>>(fastifyAuthCache)
