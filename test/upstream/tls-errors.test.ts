/**
 * An https upstream whose TLS handshake fails is a configuration fault: the
 * client gets 502 CANARYD_ERR_UPSTREAM_TLS (not a generic 502), and the
 * operator one warn line per origin per minute with the cause. Certificates
 * are made with the openssl binary (Debian package), as a user would.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import t from 'tap'
import { App } from '../../src/app.js'
import { createLogger } from '../../src/logger.js'
import { classifyUpstreamError, isTlsErrorCode } from '../../src/upstream/classify.js'
import { send } from '../helpers/http.js'
import { testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

t.test('TLS failure codes map to CANARYD_ERR_UPSTREAM_TLS, kind connect', async (t) => {
  for (const code of ['CERT_HAS_EXPIRED', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'ERR_TLS_CERT_ALTNAME_INVALID', 'ERR_SSL_WRONG_VERSION_NUMBER', 'EPROTO']) {
    t.ok(isTlsErrorCode(code), code)
    const f = classifyUpstreamError(Object.assign(new Error(code), { code }))
    t.equal(f.code, 'CANARYD_ERR_UPSTREAM_TLS', `${code} → TLS`)
    t.equal(f.kind, 'connect', `${code}: kind connect (nothing was sent)`)
  }
  for (const code of ['ECONNREFUSED', 'ECONNRESET', 'UND_ERR_HEADERS_TIMEOUT', '']) t.notOk(isTlsErrorCode(code), `${code || '(none)'} is not TLS`)
})

const hasOpenssl = spawnSync('openssl', ['version']).status === 0

t.test('https upstreams that fail the handshake: 502 TLS, one warn per origin per minute', { skip: hasOpenssl ? false : 'openssl not installed (apt-get install openssl)' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-tls-'))
  const made = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' })
  t.equal(made.status, 0, 'openssl made a self-signed certificate')
  // a self-signed certificate: Node's default CAs do not trust it (unknown CA)
  const tls = createHttpsServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (_req, res) => { res.end('tls ok') })
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { tls.closeAllConnections(); tls.close() })
  // an https origin that only speaks plain HTTP (the wrong scheme)
  const plain = await startUpstream('plain')
  t.teardown(plain.close)

  const lines: Array<Record<string, unknown>> = []
  const out = new PassThrough()
  out.on('data', (d: Buffer) => { for (const l of d.toString().split('\n')) if (l.length !== 0) lines.push(JSON.parse(l) as Record<string, unknown>) })
  const selfSigned = `https://localhost:${(tls.address() as AddressInfo).port}`
  const wrongScheme = plain.origin.replace('http:', 'https:')
  const app = new App(testConfig([twoVersionRoute(selfSigned, wrongScheme, [50, 50])], { health: { consecutiveFailures: 0 } }), { logger: createLogger('warn', out) })
  await app.start()
  t.teardown(async () => { await app.close(500) })
  const url = `http://127.0.0.1:${app.proxyAddress!.port}/`

  for (const [version, origin] of [['stable', selfSigned], ['canary', wrongScheme]] as const) {
    for (let i = 0; i < 4; i++) {
      const r = await send(url, { headers: { host: 'app.test', 'x-canary': version } })
      t.equal(r.status, 502, `${version} #${i}: 502`)
      t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_TLS', `${version} #${i}: CANARYD_ERR_UPSTREAM_TLS`)
    }
    const warns = lines.filter((l) => l.origin === origin)
    t.equal(warns.length, 1, `${version}: one warn line for ${origin} however many failures`)
    t.equal(warns[0]?.level, 40, 'at warn')
    t.match(String(warns[0]?.code), /^(?:DEPTH_ZERO_SELF_SIGNED_CERT|ERR_SSL_WRONG_VERSION_NUMBER|EPROTO|ERR_SSL_.*)$/, `${version}: the cause code is logged (${String(warns[0]?.code)})`)
  }
  // a large body goes through Node's http client (upstream.largeBodyBytes): same answer
  const big = await send(url, { method: 'POST', headers: { host: 'app.test', 'x-canary': 'stable', 'content-type': 'application/octet-stream' }, body: Buffer.alloc(100_000, 1) })
  t.equal(big.status, 502, 'large POST: 502')
  t.equal(big.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_TLS', 'large POST over the http client: CANARYD_ERR_UPSTREAM_TLS')
  t.equal(plain.seen.length, 0, 'the plain upstream never received a request')
})
