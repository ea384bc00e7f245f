import type { KeyObject } from 'node:crypto'
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { InvalidOptionError, SecretScanningSignatureError } from '../errors'
import { FetchedPublicKeys } from './github-keys'
import { MAIN_PLUGIN_HANDOFF, type MainPluginHandoff } from './handoff'
import { resolveSecretScanningOptions, type SecretScanningOptions } from './options'
import { parseReport } from './report'
import { isSignedBy, signatureHeaders } from './signature'
import { triage, type TokenFeedback } from './triage'

/** The largest report accepted, whatever the app's own `bodyLimit`. */
const MAX_REPORT_BYTES = 1024 * 1024

/**
 * The route GitHub's secret scanning partner program posts leaked tokens to. It must be
 * registered after fastify-auth-cache, whose source of truth and cache it uses.
 */
const secretScanningPlugin: FastifyPluginAsync<SecretScanningOptions> = async (fastify, rawOptions) => {
  const main = (fastify as unknown as Record<symbol, MainPluginHandoff | undefined>)[MAIN_PLUGIN_HANDOFF]
  if (main === undefined) throw new InvalidOptionError('secretScanning', 'must be registered after fastify-auth-cache, on the same scope or inside it')
  const options = resolveSecretScanningOptions(rawOptions, main)

  let keyFor: (keyId: string) => KeyObject | undefined | Promise<KeyObject | undefined>
  if (options.publicKeys !== undefined) {
    const keys = options.publicKeys
    keyFor = (keyId) => keys.get(keyId)
  } else {
    const fetched = new FetchedPublicKeys(options.keysUrl!, fastify.log)
    fastify.addHook('onClose', async () => fetched.close())
    keyFor = (keyId) => fetched.keyFor(keyId)
  }

  /** Rejects (401) unless the raw body carries the signature of a key GitHub lists. */
  async function verifySignature (request: FastifyRequest, body: Buffer): Promise<void> {
    const claimed = signatureHeaders(request.headers)
    if (claimed === undefined) throw new SecretScanningSignatureError()
    const key = await keyFor(claimed.keyId)
    if (key === undefined || !isSignedBy(key, body, claimed.signature)) throw new SecretScanningSignatureError()
  }

  // The signature covers the exact bytes sent, so this route (and only it: an encapsulated
  // context) takes its body as a Buffer, under its own bound.
  await fastify.register(async (scope: FastifyInstance) => {
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: MAX_REPORT_BYTES }, (_request, body, done) => { done(null, body) })
    scope.post(options.path, { bodyLimit: MAX_REPORT_BYTES, config: { apiKey: false } }, async (request): Promise<TokenFeedback[]> => {
      const body = request.body as Buffer | undefined
      // The report's shape is checked before its signature, so that junk never makes the
      // plugin fetch GitHub's keys.
      const tokens = parseReport(body)
      await verifySignature(request, body!)
      return await triage(tokens, { ...options, cache: fastify.apiKeyCache }, request)
    })
  })
}

export const secretScanning = fp(secretScanningPlugin, {
  fastify: '5.x',
  name: 'fastify-auth-cache-secret-scanning',
  dependencies: ['fastify-auth-cache']
})
