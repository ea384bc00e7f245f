import Fastify from 'fastify'
import { expectAssignable, expectError, expectNotAssignable, expectType } from 'tsd'
import fastifyAuthCache, {
  secretScanning, type ApiKeyRecord, type LeakedApiKey, type PublicKeysDocument, type SecretScanningOptions
} from '..'

const app = Fastify()
app.register(fastifyAuthCache, { apiKeys: { lookup: async () => null, format: { prefix: 'live' } } })
app.register(secretScanning, {
  onLeak: async (leak) => {
    expectType<LeakedApiKey>(leak)
    expectType<string>(leak.keyHash)
    expectType<ApiKeyRecord>(leak.record)
    expectType<string | undefined>(leak.url)
    expectType<string | undefined>(leak.source)
  }
})
app.register(secretScanning, {
  path: '/github/secret-scanning',
  prefix: 'live',
  onLeak: () => {},
  keysUrl: new URL('http://127.0.0.1:8080/keys')
})
app.register(secretScanning, {
  onLeak: () => {},
  publicKeys: { public_keys: [{ key_identifier: 'abc', key: '-----BEGIN PUBLIC KEY-----\n...', is_current: true }] }
})

expectAssignable<SecretScanningOptions>({ onLeak: () => {}, keysUrl: 'https://api.github.com/meta/public_keys/secret_scanning' })
expectAssignable<PublicKeysDocument>({ public_keys: [] })
// onLeak is required; options are checked by name and type.
expectNotAssignable<SecretScanningOptions>({ prefix: 'live' })
expectNotAssignable<SecretScanningOptions>({ onLeak: () => {}, path: 42 })
expectNotAssignable<SecretScanningOptions>({ onLeak: () => {}, publicKeys: { keys: [] } })
expectError(app.register(secretScanning, { onLeak: () => {}, onleak: () => {} }))
