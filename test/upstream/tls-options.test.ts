/**
 * Upstream TLS options (src/upstream/tls.ts): verification on by default, a
 * private CA, an SNI servername for IP origins, mTLS client certificates and
 * insecureSkipVerify, each against a real https server on 127.0.0.1 through
 * both clients the proxy uses (an undici Pool and Node's https.Agent), built
 * only from connectOptions(loadTls(…)). Also pins down how each client picks
 * the SNI name when a request carries a Host header, which the proxy always
 * forwards. Certificates are made with the openssl binary at test time.
 */
import { request as httpsRequest, Agent as HttpsAgent, createServer as createHttpsServer, type ServerOptions } from 'node:https'
import type { AddressInfo } from 'node:net'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import t from 'tap'
import { Pool, buildConnector } from 'undici'
import { classifyUpstreamError } from '../../src/upstream/classify.js'
import { connectOptions, loadTls, mergeTls, tlsKey, type TlsConnectOptions, type UpstreamTls } from '../../src/upstream/tls.js'
import { makeTestPki, opensslSkip, type CertPair } from '../helpers/certs.js'

/** What the test server saw of the TLS session a request came on. */
interface Seen {
  /** The SNI the client sent (false: none). */
  sni: string | false
  /** Whether the client's certificate verified against the server's client CA. */
  authorized: boolean
  clientCn: string | null
}

type Outcome = { ok: true, seen: Seen } | { ok: false, code: string, message: string }

interface TestServer {
  port: number
  /** TLS handshakes completed. */
  handshakes: () => number
  close: () => void
}

async function startServer (pair: CertPair, extra: ServerOptions = {}): Promise<TestServer> {
  let handshakes = 0
  const server = createHttpsServer({ key: pair.key, cert: pair.cert, ...extra }, (req, res) => {
    const s = req.socket as TLSSocket
    const peer = s.getPeerCertificate()
    const seen: Seen = { sni: (s as TLSSocket & { servername: string | false }).servername, authorized: s.authorized, clientCn: typeof peer?.subject?.CN === 'string' ? peer.subject.CN : null }
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(seen))
  })
  server.on('secureConnection', () => { handshakes++ })
  // a refused client handshake is expected in these tests, not a crash
  server.on('tlsClientError', () => {})
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    handshakes: () => handshakes,
    close: () => { server.closeAllConnections(); server.close() }
  }
}

function failed (err: unknown): Outcome {
  const e = err as { code?: string, message?: string, cause?: { code?: string } }
  return { ok: false, code: e.code ?? e.cause?.code ?? '', message: e.message ?? String(err) }
}

interface Send {
  /** Host header to send (the proxy always forwards the client's). */
  host?: string
  /** Per-request servername: undici's dispatch option / https.request's. */
  servername?: string
}

/** GET / over an undici Pool; `connect` replaces the connector built from `co` when given. */
async function viaPool (origin: string, co: TlsConnectOptions, s: Send = {}, pool = new Pool(origin, { connect: co })): Promise<Outcome> {
  try {
    // undici's Request takes `servername` (it defaults to the Host header's
    // name) but DispatchOptions does not declare it
    const opts = { path: '/', method: 'GET' as const, headers: s.host === undefined ? {} : { host: s.host }, ...(s.servername === undefined ? {} : { servername: s.servername }) }
    const r = await pool.request(opts)
    return { ok: true, seen: await r.body.json() as Seen }
  } catch (err) {
    return failed(err)
  }
}

/** GET / over Node's https client with an Agent made from `co`. */
async function viaAgent (origin: string, co: TlsConnectOptions, s: Send = {}): Promise<Outcome> {
  const u = new URL(origin)
  const agent = new HttpsAgent({ ...co, keepAlive: false })
  try {
    return await new Promise<Outcome>((resolve) => {
      const req = httpsRequest({ hostname: u.hostname, port: u.port, path: '/', agent, headers: s.host === undefined ? {} : { host: s.host }, ...(s.servername === undefined ? {} : { servername: s.servername }) }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve({ ok: true, seen: JSON.parse(Buffer.concat(chunks).toString()) as Seen }))
        res.on('error', (err) => resolve(failed(err)))
      })
      req.on('error', (err) => resolve(failed(err)))
      req.end()
    })
  } finally {
    agent.destroy()
  }
}

const CLIENTS = [['undici Pool', viaPool], ['https.Agent', viaAgent]] as const

t.test('mergeTls: field by field, the version wins; cert+key is one field', async (t) => {
  const cases: Array<[string, UpstreamTls | undefined, UpstreamTls | undefined, UpstreamTls | undefined]> = [
    ['both undefined', undefined, undefined, undefined],
    ['both empty', {}, {}, undefined],
    ['defaults only', { ca: '/d/ca.pem' }, undefined, { ca: '/d/ca.pem' }],
    ['own only', undefined, { servername: 'a.internal' }, { servername: 'a.internal' }],
    ['own wins per field', { ca: '/d/ca.pem', servername: 'd.internal' }, { servername: 'o.internal' }, { ca: '/d/ca.pem', servername: 'o.internal' }],
    ['disjoint fields add up', { ca: '/d/ca.pem' }, { cert: '/o/c.pem', key: '/o/k.pem' }, { ca: '/d/ca.pem', cert: '/o/c.pem', key: '/o/k.pem' }],
    ['own pair replaces the default pair', { cert: '/d/c.pem', key: '/d/k.pem' }, { cert: '/o/c.pem', key: '/o/k.pem' }, { cert: '/o/c.pem', key: '/o/k.pem' }],
    ['own cert alone takes no default key', { cert: '/d/c.pem', key: '/d/k.pem' }, { cert: '/o/c.pem' }, { cert: '/o/c.pem' }],
    ['own key alone takes no default cert', { cert: '/d/c.pem', key: '/d/k.pem' }, { key: '/o/k.pem' }, { key: '/o/k.pem' }],
    ['own false overrides default true', { insecureSkipVerify: true }, { insecureSkipVerify: false }, { insecureSkipVerify: false }],
    ['own true over nothing', {}, { insecureSkipVerify: true }, { insecureSkipVerify: true }],
    ['default true kept', { insecureSkipVerify: true, ca: '/d/ca.pem' }, { servername: 'o.internal' }, { insecureSkipVerify: true, ca: '/d/ca.pem', servername: 'o.internal' }]
  ]
  for (const [name, d, o, want] of cases) t.same(mergeTls(d, o), want, name)
  const d = { ca: '/d/ca.pem' }
  const o = { servername: 'o.internal' }
  mergeTls(d, o)
  t.same([d, o], [{ ca: '/d/ca.pem' }, { servername: 'o.internal' }], 'inputs are not changed')
})

t.test('tlsKey: equal settings, equal keys (any field order); different settings, different keys', async (t) => {
  t.equal(tlsKey(undefined), '', 'none: empty')
  t.equal(tlsKey({}), '', 'empty: empty')
  t.equal(tlsKey({ insecureSkipVerify: false }), '', 'insecureSkipVerify false is the default')
  t.equal(tlsKey({ ca: '/a', servername: 's.internal', cert: '/c', key: '/k', insecureSkipVerify: true }),
    tlsKey({ insecureSkipVerify: true, key: '/k', cert: '/c', servername: 's.internal', ca: '/a' }), 'field order does not matter')
  t.equal(tlsKey({ ca: '/a', servername: undefined }), tlsKey({ ca: '/a' }), 'an undefined field is an absent one')
  const distinct: UpstreamTls[] = [
    {},
    { ca: '/a' },
    { ca: '/b' },
    { cert: '/a' },
    { key: '/a' },
    { servername: 'a.internal' },
    { servername: 'b.internal' },
    { insecureSkipVerify: true },
    { ca: '/a', servername: 'a.internal' },
    { cert: '/c', key: '/k' },
    { cert: '/k', key: '/c' },
    // a path holding the separators cannot make two settings collide
    { ca: '/a",cert="/b' },
    { ca: '/a', cert: '/b' }
  ]
  const keys = distinct.map(tlsKey)
  t.equal(new Set(keys).size, keys.length, `${keys.length} settings, ${keys.length} keys`)
})

t.test('connectOptions: the SNI name is decided from servername, else the origin', async (t) => {
  const m = { rejectUnauthorized: true }
  t.same(connectOptions(m, 'https://api.internal:8443'), { rejectUnauthorized: true, servername: 'api.internal' }, 'a name origin: that name')
  t.same(connectOptions(m, 'https://API.Internal'), { rejectUnauthorized: true, servername: 'api.internal' }, 'lower-cased as URL does')
  t.same(connectOptions(m, 'https://127.0.0.1:8443'), { rejectUnauthorized: true, servername: '' }, 'an IPv4 origin: no SNI')
  t.same(connectOptions(m, 'https://[::1]:8443'), { rejectUnauthorized: true, servername: '' }, 'an IPv6 origin: no SNI')
  t.same(connectOptions({ ...m, servername: 'api.internal' }, 'https://10.0.0.1'), { rejectUnauthorized: true, servername: 'api.internal' }, 'servername wins over an IP origin')
  t.same(connectOptions({ ...m, servername: 'api.internal' }, 'https://other.internal'), { rejectUnauthorized: true, servername: 'api.internal' }, 'servername wins over a name origin')
  const ca = Buffer.from('ca')
  const cert = Buffer.from('cert')
  const key = Buffer.from('key')
  t.same(connectOptions({ ca, cert, key, rejectUnauthorized: false }, 'https://a.internal'), { ca, cert, key, rejectUnauthorized: false, servername: 'a.internal' }, 'material passed as is')
})

t.test('upstream TLS against real servers', { skip: opensslSkip }, async (t) => {
  const pki = makeTestPki()
  t.teardown(pki.cleanup)
  const load = (tls: UpstreamTls): ReturnType<typeof loadTls> => loadTls(tls, 'upstream.tls')

  const selfSigned = await startServer(pki.selfSigned)
  const server = await startServer(pki.server)
  const other = await startServer(pki.other)
  const mtls = await startServer(pki.server, { requestCert: true, rejectUnauthorized: true, ca: pki.clientCa.cert })
  t.teardown(() => { for (const s of [selfSigned, server, other, mtls]) s.close() })
  const at = (s: TestServer, host = '127.0.0.1'): string => `https://${host}:${s.port}`

  t.test('verification is on by default', async (t) => {
    for (const [client, send] of CLIENTS) {
      const self = await send(at(selfSigned), connectOptions(load({}), at(selfSigned)))
      t.match(self, { ok: false, code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }, `${client}: a self-signed server is refused`)
      const unknown = await send(at(server), connectOptions(load({}), at(server)))
      t.match(unknown, { ok: false, code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }, `${client}: a server of an unknown CA is refused`)
      if (!unknown.ok) t.equal(classifyUpstreamError(unknown).code, 'CANARYD_ERR_UPSTREAM_TLS', `${client}: classified as a TLS failure`)
    }
  })

  t.test('ca: the private CA is trusted, for a name and for an IP origin', async (t) => {
    const m = load({ ca: pki.ca.certPath })
    for (const [client, send] of CLIENTS) {
      const byName = await send(at(server, 'localhost'), connectOptions(m, at(server, 'localhost')))
      t.match(byName, { ok: true, seen: { sni: 'localhost' } }, `${client}: https://localhost verifies, SNI localhost`)
      const byIp = await send(at(server), connectOptions(m, at(server)))
      t.match(byIp, { ok: true, seen: { sni: false } }, `${client}: https://127.0.0.1 verifies against the IP SAN, no SNI`)
      const selfWithCa = await send(at(selfSigned), connectOptions(m, at(selfSigned)))
      t.match(selfWithCa, { ok: false, code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }, `${client}: the CA does not vouch for a self-signed server`)
      const pinned = await send(at(selfSigned), connectOptions(load({ ca: pki.selfSigned.certPath }), at(selfSigned)))
      t.match(pinned, { ok: true }, `${client}: a self-signed certificate given as ca is trusted (pinned)`)
    }
  })

  t.test('servername: SNI and the name verified, for an IP origin', async (t) => {
    for (const [client, send] of CLIENTS) {
      const good = await send(at(server), connectOptions(load({ ca: pki.ca.certPath, servername: 'api.internal' }), at(server)))
      t.match(good, { ok: true, seen: { sni: 'api.internal' } }, `${client}: servername api.internal on https://127.0.0.1 verifies and is sent as SNI`)
      const wrong = await send(at(server), connectOptions(load({ ca: pki.ca.certPath, servername: 'wrong.internal' }), at(server)))
      t.match(wrong, { ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID', message: /wrong\.internal/ }, `${client}: a name the certificate lacks fails the hostname check`)
      if (!wrong.ok) t.equal(classifyUpstreamError(wrong).code, 'CANARYD_ERR_UPSTREAM_TLS', `${client}: classified as a TLS failure`)
      const otherCert = await send(at(other), connectOptions(load({ ca: pki.ca.certPath, servername: 'api.internal' }), at(other)))
      t.match(otherCert, { ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' }, `${client}: a server with another name's certificate (same CA) fails`)
      const otherName = await send(at(other), connectOptions(load({ ca: pki.ca.certPath, servername: 'other.internal' }), at(other)))
      t.match(otherName, { ok: true, seen: { sni: 'other.internal' } }, `${client}: … and passes with its own name`)
    }
  })

  t.test('a Host header: Node\'s Agent keeps the agent\'s servername, undici takes the request\'s', async (t) => {
    const m = load({ ca: pki.ca.certPath, servername: 'api.internal' })
    const co = connectOptions(m, at(server))
    // the client's Host, forwarded by the proxy, is a name the upstream certificate lacks
    const agent = await viaAgent(at(server), co, { host: 'app.test' })
    t.match(agent, { ok: true, seen: { sni: 'api.internal' } }, 'https.Agent: the agent options override the Host-derived name')
    const agentPerRequest = await viaAgent(at(server), co, { host: 'app.test', servername: 'app.test' })
    t.match(agentPerRequest, { ok: true, seen: { sni: 'api.internal' } }, 'https.Agent: … and a per-request servername (http-client.ts sets one)')
    const pool = await viaPool(at(server), co, { host: 'app.test' })
    t.match(pool, { ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID', message: /app\.test/ }, 'undici Pool: the Host header beats connect.servername (SNI and verified name app.test)')
    const pinnedByRequest = await viaPool(at(server), co, { host: 'app.test', servername: co.servername! })
    t.match(pinnedByRequest, { ok: true, seen: { sni: 'api.internal' } }, 'undici Pool: a dispatch-level servername wins over Host')

    // an IP origin without servername: '' (no SNI) is falsy to undici, so the Host name is used
    const ip = connectOptions(load({ ca: pki.ca.certPath }), at(server))
    t.match(await viaAgent(at(server), ip, { host: 'app.test' }), { ok: true, seen: { sni: false } }, 'https.Agent: servername \'\' keeps SNI off whatever the Host')
    t.match(await viaPool(at(server), ip, { host: 'app.test' }), { ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' }, 'undici Pool: Host app.test becomes SNI for an IP origin')
    t.match(await viaPool(at(server), ip, { host: 'app.test', servername: '' }), { ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' }, 'undici Pool: a dispatch servername \'\' does not stop it')
    // a connector that ignores the per-request name: the settings decide alone
    const pinned = pinnedPool(at(server), ip)
    t.match(await viaPool(at(server), ip, { host: 'app.test' }, pinned), { ok: true, seen: { sni: false } }, 'undici Pool with a pinned connector: no SNI for the IP origin')
    await pinned.destroy()
    const pinnedName = pinnedPool(at(server), co)
    t.match(await viaPool(at(server), co, { host: 'app.test' }, pinnedName), { ok: true, seen: { sni: 'api.internal' } }, 'undici Pool with a pinned connector: the servername, whatever the Host')
    await pinnedName.destroy()
  })

  t.test('undici reconnects when the request servername changes, even with a pinned connector, unless dispatch pins it', async (t) => {
    const origin = at(server, 'localhost')
    const co = connectOptions(load({ ca: pki.ca.certPath }), origin)
    const modes = [
      ['plain Pool, servername from Host', false, false, 4],
      ['pinned connector, servername from Host', true, false, 4],
      ['pinned connector, dispatch servername', true, true, 1]
    ] as const
    for (const [mode, pinConnector, pinDispatch, handshakes] of modes) {
      const before = server.handshakes()
      const pool = pinConnector ? pinnedPool(origin, co, 1) : new Pool(origin, { connect: co, connections: 1 })
      for (const host of ['localhost', 'api.internal', 'localhost', 'api.internal']) {
        const r = await viaPool(origin, co, pinDispatch ? { host, servername: co.servername! } : { host }, pool)
        t.match(r, { ok: true, seen: { sni: pinConnector ? 'localhost' : host } }, `${mode}: Host ${host} answered`)
      }
      await pool.close()
      // undici compares each request's servername with its connection's and reconnects on a change, before any connector runs
      t.equal(server.handshakes() - before, handshakes, `${mode}: ${handshakes} TLS connection(s) for four requests alternating two Hosts`)
    }
  })

  t.test('mTLS: a client certificate for a server that requires one', async (t) => {
    for (const [client, send] of CLIENTS) {
      const without = await send(at(mtls), connectOptions(load({ ca: pki.ca.certPath }), at(mtls)))
      t.equal(without.ok, false, `${client}: no client certificate, refused`)
      if (!without.ok) {
        const f = classifyUpstreamError(without)
        t.comment(`${client} without a client certificate: ${without.code} (${without.message}) → ${f.code}`)
      }
      const wrongCa = await send(at(mtls), connectOptions(load({ ca: pki.ca.certPath, cert: pki.server.certPath, key: pki.server.keyPath }), at(mtls)))
      t.equal(wrongCa.ok, false, `${client}: a certificate of a CA the server does not trust, refused`)
      const good = await send(at(mtls), connectOptions(load({ ca: pki.ca.certPath, cert: pki.client.certPath, key: pki.client.keyPath }), at(mtls)))
      t.match(good, { ok: true, seen: { authorized: true, clientCn: 'canaryd' } }, `${client}: with cert and key, accepted as CN canaryd`)
    }
  })

  t.test('insecureSkipVerify: any certificate, any name', async (t) => {
    for (const [client, send] of CLIENTS) {
      const m = load({ insecureSkipVerify: true })
      t.equal(m.rejectUnauthorized, false, 'rejectUnauthorized false')
      t.match(await send(at(selfSigned), connectOptions(m, at(selfSigned))), { ok: true }, `${client}: a self-signed server is accepted`)
      t.match(await send(at(server), connectOptions(m, at(server))), { ok: true }, `${client}: an unknown CA is accepted`)
      const named = load({ insecureSkipVerify: true, servername: 'wrong.internal' })
      t.match(await send(at(server), connectOptions(named, at(server))), { ok: true, seen: { sni: 'wrong.internal' } }, `${client}: a name mismatch is accepted too (SNI still sent)`)
    }
  })

  t.test('loadTls: errors name the key', async (t) => {
    const garbage = join(pki.dir, 'garbage.pem')
    writeFileSync(garbage, 'not a certificate\n')
    const broken = join(pki.dir, 'broken.pem')
    writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n')
    const bundle = join(pki.dir, 'bundle.pem')
    writeFileSync(bundle, Buffer.concat([pki.ca.cert, pki.clientCa.cert]))
    const missing = join(pki.dir, 'missing.pem')
    const r = 'routes[0].versions[1].tls'
    const cases: Array<[string, UpstreamTls, RegExp]> = [
      ['missing ca file', { ca: missing }, /^routes\[0\]\.versions\[1\]\.tls\.ca: cannot read .*missing\.pem \(ENOENT\)$/],
      ['ca is a directory', { ca: pki.dir }, /^routes\[0\]\.versions\[1\]\.tls\.ca: cannot read .* \(EISDIR\)$/],
      ['garbage ca', { ca: garbage }, /^routes\[0\]\.versions\[1\]\.tls\.ca: .*garbage\.pem holds no PEM certificate/],
      ['ca is a key', { ca: pki.ca.keyPath }, /^routes\[0\]\.versions\[1\]\.tls\.ca: .* holds no PEM certificate/],
      ['ca block that does not parse', { ca: broken }, /^routes\[0\]\.versions\[1\]\.tls\.ca: certificate #1 in .*broken\.pem does not parse/],
      ['cert without key', { cert: pki.client.certPath }, /^routes\[0\]\.versions\[1\]\.tls\.cert: .*needs its key/],
      ['key without cert', { key: pki.client.keyPath }, /^routes\[0\]\.versions\[1\]\.tls\.key: .*needs its certificate/],
      ['missing cert file', { cert: missing, key: pki.client.keyPath }, /^routes\[0\]\.versions\[1\]\.tls\.cert: cannot read .* \(ENOENT\)$/],
      ['missing key file', { cert: pki.client.certPath, key: missing }, /^routes\[0\]\.versions\[1\]\.tls\.key: cannot read .* \(ENOENT\)$/],
      ['garbage cert', { cert: garbage, key: pki.client.keyPath }, /^routes\[0\]\.versions\[1\]\.tls\.cert: .* holds no PEM certificate/],
      ['garbage key', { cert: pki.client.certPath, key: garbage }, /^routes\[0\]\.versions\[1\]\.tls\.key: .*garbage\.pem is not an unencrypted PEM private key/],
      ['key not matching cert', { cert: pki.client.certPath, key: pki.other.keyPath }, /^routes\[0\]\.versions\[1\]\.tls\.key: .*other-key\.pem does not match the certificate in .*client\.pem/],
      ['key and cert swapped', { cert: pki.client.keyPath, key: pki.client.certPath }, /^routes\[0\]\.versions\[1\]\.tls\.cert: .* holds no PEM certificate/],
      ['empty path', { ca: '' }, /^routes\[0\]\.versions\[1\]\.tls\.ca: must be the path of a PEM file/],
      ['IP servername', { servername: '127.0.0.1' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: "127\.0\.0\.1" is not a DNS name/],
      ['IPv6 servername', { servername: '::1' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['short IPv4 servername', { servername: '127.1' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['empty servername', { servername: '' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['servername with a port', { servername: 'api.internal:443' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['servername with an empty label', { servername: 'api..internal' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['servername with a trailing dot', { servername: 'api.internal.' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['servername with a wildcard', { servername: '*.internal' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['servername label over 63', { servername: `${'a'.repeat(64)}.internal` }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /],
      ['servername label starting with -', { servername: '-api.internal' }, /^routes\[0\]\.versions\[1\]\.tls\.servername: /]
    ]
    for (const [name, tls, want] of cases) t.throws(() => loadTls(tls, r), { message: want }, name)

    const ok = loadTls({ ca: bundle, servername: 'api-1.internal', cert: pki.client.certPath, key: pki.client.keyPath }, r)
    t.same(ok, { ca: Buffer.concat([pki.ca.cert, pki.clientCa.cert]), servername: 'api-1.internal', cert: pki.client.cert, key: pki.client.key, rejectUnauthorized: true }, 'a CA bundle, a DNS name, a matching pair: loaded')
    t.ok(Object.isFrozen(ok), 'the material is frozen')
    t.same(loadTls({}, r), { rejectUnauthorized: true }, 'no settings: verify with the public roots')
    t.same(loadTls({ servername: 'localhost' }, r), { servername: 'localhost', rejectUnauthorized: true }, 'a single-label name is a DNS name')
  })
})

/**
 * An undici Pool whose connector ignores the per-request servername undici
 * derives from each request's Host header, so `co` alone decides the SNI
 * (and '' really means none): what src/upstream/pools.ts would need.
 */
function pinnedPool (origin: string, co: TlsConnectOptions, connections: number | null = null): Pool {
  const base = buildConnector({ ...co })
  // '' or undefined: undici then falls back to the origin's host, and for an IP none
  const servername = co.servername === '' ? undefined : co.servername
  return new Pool(origin, {
    connections,
    connect: (opts, cb) => { base({ ...opts, servername }, cb) }
  })
}
