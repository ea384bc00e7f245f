// The ESM entry that package.json "exports" names for `import`: the very object CommonJS gets,
// as the default export, with the helpers as named exports.
import plugin from './index.js'

export default plugin
export {
  fastifyAuthCache, hashApiKey, generateApiKey, isWellFormedApiKey, jsonSerializer, encryptedSerializer, rateLimitByApiKey, redactingRequestSerializer, errors
} from './index.js'
export type * from './index.js'
