import { spawn } from 'node:child_process'
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { X509Certificate } from 'node:crypto'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import { connect as h2connect } from 'node:http2'
import { connect as netConnect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { App } from '../../src/app.js'
import { configFromObject } from '../../src/config/load.js'
import { lazyPki, opensslSkip, type CertPair } from '../helpers/certs.js'
import { ensureBuilt, runCli } from '../helpers/cli.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, testLogger, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { configDir, fileProxy, metricSamples, postReload, rawConfig, serve, sleep, until, writeConfig } from '../helpers/reload.js'
import { freePort, startUpstreams, type TestUpstream } from '../helpers/upstream.js'

// Issue 14, black-box: TLS termination on the proxy listener (SNI, minimum
// version, resumption, ALPN), certificates reloaded without a restart (admin
// call, SIGHUP, under load), the plain-HTTP redirect port, and the config
// errors of listen.tls. Certificates are made with openssl at test time.

/** The test PKI: one CA and the leaves every test below uses, made once. */
const pki = lazyPki('canaryd-tls', {
  main: { cn: 'default.test', dns: ['default.test', 'localhost'], ip: ['127.0.0.1'] },
  a: { cn: 'a.test', dns: ['a.test'] },
  b: { cn: 'b.test', dns: ['*.b.test'] },
  ra: { cn: 'reload-a.test', dns: ['reload-a.test', 'localhost'], ip: ['127.0.0.1'] },
  rb: { cn: 'reload-b.test', dns: ['reload-b.test', 'localhost'], ip: ['127.0.0.1'] }
}, (fn) => { t.teardown(fn) })

/** listen with TLS on one certificate (and `more` listen keys). */
function tlsListen (c: CertPair, more: Record<string, unknown> = {}): Record<string, unknown> {
  return { host: '127.0.0.1', port: 0, tls: { certFile: c.certPath, keyFile: c.keyPath }, ...more }
}

/** A proxy (closed in teardown) in front of upstreams stable and canary (all traffic on stable). */
async function tlsProxy (t: Test, listen: Record<string, unknown>): Promise<{ p: TestProxy, port: number, u: Record<string, TestUpstream> }> {
  const u = await startUpstreams(t, ['stable', 'canary'])
  const p = await startProxy(testConfig([twoVersionRoute(u.stable!.origin, u.canary!.origin, [100, 0])], { listen }))
  t.teardown(p.close)
  return { p, port: p.app.proxyAddress!.port, u }
}

/** What one TLS handshake gave, or its error. */
interface Handshake {
  san: string
  alpn: string | false | null
  version: string | null
  reused: boolean
  /** The first session (ticket) the server sent, when asked to wait for it. */
  session: Buffer | undefined
}

/**
 * One TLS handshake to 127.0.0.1:`port` (CA trusted, `opts` over it). With
 * `waitSession` it waits (at most 2 s) for the server's session ticket (TLS
 * 1.3 sends it after the handshake). Bounded at 5 s in all.
 */
async function handshake (port: number, opts: ConnectionOptions = {}, waitSession = false): Promise<Handshake> {
  return await new Promise<Handshake>((resolve, reject) => {
    const s: TLSSocket = tlsConnect({ host: '127.0.0.1', port, ca: pki().ca.cert, servername: 'localhost', ...opts })
    let session: Buffer | undefined
    const timer = setTimeout(() => { s.destroy(); reject(new Error('handshake timed out')) }, 5000)
    const finish = (): void => {
      clearTimeout(timer)
      const h: Handshake = { san: s.getPeerCertificate().subjectaltname ?? '', alpn: s.alpnProtocol, version: s.getProtocol(), reused: s.isSessionReused(), session }
      s.destroy()
      resolve(h)
    }
    s.on('error', (err) => { clearTimeout(timer); reject(err) })
    s.once('session', (sess: Buffer) => { session = sess; if (waitSession) finish() })
    s.once('secureConnect', () => {
      if (!waitSession) finish()
      else setTimeout(() => { if (session === undefined) finish() }, 2000)
    })
  })
}

/** A finished https answer and the socket that carried it. */
interface HttpsReply {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
  socket: TLSSocket
  reusedSocket: boolean
}

/** One GET over https to 127.0.0.1:`port` (CA trusted), on `agent` or a new connection; bounded at 5 s. */
async function httpsGet (port: number, path = '/', o: { agent?: HttpsAgent, headers?: Record<string, string>, servername?: string } = {}): Promise<HttpsReply> {
  return await new Promise<HttpsReply>((resolve, reject) => {
    const req = httpsRequest({
      host: '127.0.0.1',
      port,
      path,
      servername: o.servername ?? 'localhost',
      headers: o.headers ?? {},
      ...(o.agent === undefined ? { agent: false as const, ca: pki().ca.cert } : { agent: o.agent }),
      timeout: 5000
    }, (res) => {
      // a kept-alive socket leaves the response when it goes back to the agent's pool
      const socket = res.socket as TLSSocket
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('error', reject)
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, body, socket, reusedSocket: req.reusedSocket }) })
    })
    req.on('timeout', () => { req.destroy(new Error('request timed out')) })
    req.on('error', reject)
    req.end()
  })
}

/** `canaryd_connection_errors_total{reason}` from the admin /metrics. */
async function connectionErrors (adminUrl: string, reason: string): Promise<number> {
  const text = (await send(`${adminUrl}/metrics`)).body.toString()
  return metricSamples(text, 'canaryd_connection_errors_total').find((s) => s.labels.reason === reason)?.value ?? 0
}

/** Copies `c` over the live cert/key files (in place, as a renewal job writing files does). */
function install (c: CertPair, live: { cert: string, key: string }): void {
  copyFileSync(c.certPath, live.cert)
  copyFileSync(c.keyPath, live.key)
}

/** Runs a command asynchronously (the proxy under test is in this process), killed after 10 s. */
async function run (cmd: string, args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => { child.kill('SIGKILL') }, 10_000)
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

const hasCurl = await run('curl', ['--version']).then((r) => r.code === 0, () => false)

t.test('https through canaryd: 200 from the upstream, X-Forwarded-Proto https, XFF the client, Secure sticky cookie', { skip: opensslSkip }, async (t) => {
  const { port, u } = await tlsProxy(t, tlsListen(pki().main))
  const r = await httpsGet(port, '/hello?x=1')
  t.equal(r.status, 200)
  t.equal((JSON.parse(r.body) as { version: string }).version, 'stable', 'the body is the upstream\'s')
  t.equal(r.socket.getProtocol(), 'TLSv1.3', 'TLS 1.3 negotiated by default')
  const seen = u.stable!.seen.at(-1)
  t.equal(seen?.url, '/hello?x=1')
  t.equal(seen?.headers['x-forwarded-proto'], 'https', 'the upstream is told the client used https')
  t.equal(seen?.headers['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For is the client address')
  const cookies = ([] as string[]).concat(r.headers['set-cookie'] ?? [])
  const sticky = cookies.find((c) => c.startsWith('canaryd_id='))
  t.ok(sticky, `the anonymous client gets the sticky cookie (${cookies.join(' | ')})`)
  t.match(sticky ?? '', /; Secure(;|$)/, 'over TLS the sticky cookie is Secure')

  // and over HTTP/2 (ALPN h2, node:http2): same upstream, same forwarded proto
  // connected to 127.0.0.1 whatever `localhost` resolves to (the proxy listens on IPv4 only)
  const session = h2connect(`https://localhost:${port}`, {
    createConnection: () => tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ca: pki().ca.cert, ALPNProtocols: ['h2'] })
  })
  t.teardown(() => { session.destroy() })
  const h2 = await new Promise<{ status: number, body: string }>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error('h2 request timed out')) }, 5000)
    session.on('error', reject)
    const req = session.request({ ':path': '/over-h2', 'x-user-id': 'h2user' })
    let status = 0
    let body = ''
    req.on('response', (h) => { status = Number(h[':status']) })
    req.setEncoding('utf8')
    req.on('data', (c: string) => { body += c })
    req.on('end', () => { clearTimeout(timer); resolve({ status, body }) })
    req.on('error', reject)
    req.end()
  })
  t.equal(h2.status, 200, 'h2 request answered')
  t.equal((JSON.parse(h2.body) as { url: string }).url, '/over-h2')
  t.equal(u.stable!.seen.at(-1)?.headers['x-forwarded-proto'], 'https', 'h2: X-Forwarded-Proto https')
  session.close()
})

t.test('SNI: the certificate naming the server name is served; wildcard for one label; no match or no SNI → the first', { skip: opensslSkip }, async (t) => {
  const { main, a, b } = pki()
  const { port } = await tlsProxy(t, {
    host: '127.0.0.1',
    port: 0,
    tls: { certificates: [main, a, b].map((c) => ({ certFile: c.certPath, keyFile: c.keyPath })) }
  })
  // checkServerIdentity off where the name is not on the served certificate: the point is which one is served
  const pick = async (servername: string): Promise<string> => (await handshake(port, { servername, checkServerIdentity: () => undefined })).san
  t.equal(await pick('a.test'), 'DNS:a.test', 'a.test → its own certificate')
  t.equal(await pick('A.TEST'), 'DNS:a.test', 'case-insensitive')
  t.equal(await pick('x.b.test'), 'DNS:*.b.test', 'x.b.test → the wildcard *.b.test')
  const fallback = 'DNS:default.test, DNS:localhost, IP Address:127.0.0.1'
  t.equal(await pick('unknown.test'), fallback, 'no match → the first certificate')
  t.equal(await pick('y.x.b.test'), fallback, 'a wildcard covers one label only: y.x.b.test → the first')
  t.equal(await pick('b.test'), fallback, '*.b.test does not cover b.test itself')
  t.equal(await pick(''), fallback, 'no SNI (servername "") → the first')
  t.equal((await handshake(port, { servername: undefined, checkServerIdentity: () => undefined })).san, fallback, 'an IP host (no SNI sent) → the first')
  // the certificate picked verifies against the name (the default checkServerIdentity)
  await t.resolves(handshake(port, { servername: 'x.b.test' }), 'the wildcard certificate verifies for x.b.test')
})

t.test('TLS 1.2 minimum (a TLS 1.1 client fails, counted in canaryd_connection_errors_total); session resumption', { skip: opensslSkip }, async (t) => {
  const { p, port } = await tlsProxy(t, tlsListen(pki().main))
  const before = await connectionErrors(p.adminUrl, 'tls_handshake')
  // a client that can only speak TLS 1.0/1.1 (SECLEVEL=0, else OpenSSL 3 will not even send its ClientHello)
  const old = handshake(port, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' })
  await t.rejects(old, { code: /ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION|ECONNRESET/ }, 'the TLS 1.1 handshake fails')
  t.ok(await until(async () => await connectionErrors(p.adminUrl, 'tls_handshake') > before, 3000), 'canaryd_connection_errors_total{reason="tls_handshake"} increased')
  t.equal(p.app.data.listener?.errors.tls_handshake, before + 1, 'exactly one handshake error counted')
  // a load balancer's TCP health check (connect, then close without a ClientHello) is not a handshake error
  for (let i = 0; i < 5; i++) {
    await new Promise<void>((resolve) => { const c = netConnect(port, '127.0.0.1', () => { c.destroy(); resolve() }); c.on('error', () => resolve()) })
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(p.app.data.listener?.errors.tls_handshake, before + 1, 'TCP connect-and-close probes are not counted as handshake errors')

  const tls12 = await handshake(port, { maxVersion: 'TLSv1.2' })
  t.equal(tls12.version, 'TLSv1.2', 'TLS 1.2 accepted')

  // resumption: TLS 1.3 ticket, then TLS 1.2 ticket
  for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
    const first = await handshake(port, { maxVersion: v }, true)
    t.equal(first.version, v)
    t.ok(first.session, `${v}: the server sent a session ticket`)
    t.equal(first.reused, false, `${v}: the first handshake is a full one`)
    const second = await handshake(port, { maxVersion: v, session: first.session }, false)
    t.equal(second.reused, true, `${v}: a second connection with the session resumes it`)
  }

  // resumption also when the certificate came from SNI (the SNI callback switches contexts)
  const { a } = pki()
  const sni = await tlsProxy(t, { host: '127.0.0.1', port: 0, tls: { certificates: [pki().main, a].map((c) => ({ certFile: c.certPath, keyFile: c.keyPath })) } })
  const s1 = await handshake(sni.port, { servername: 'a.test' }, true)
  t.equal(s1.san, 'DNS:a.test')
  const s2 = await handshake(sni.port, { servername: 'a.test', session: s1.session })
  t.equal(s2.reused, true, 'an SNI-picked certificate\'s session resumes too')
})

t.test('ALPN: h2 offered by default, http/1.1 only with listen.http2 false', { skip: opensslSkip }, async (t) => {
  const on = await tlsProxy(t, tlsListen(pki().main))
  t.equal((await handshake(on.port, { ALPNProtocols: ['h2', 'http/1.1'] })).alpn, 'h2', 'default: h2 negotiated')
  t.equal((await handshake(on.port, { ALPNProtocols: ['http/1.1'] })).alpn, 'http/1.1', 'a client offering only http/1.1 gets it')
  const off = await tlsProxy(t, tlsListen(pki().main, { http2: false }))
  t.equal((await handshake(off.port, { ALPNProtocols: ['h2', 'http/1.1'] })).alpn, 'http/1.1', 'listen.http2 false: http/1.1')
  // and a request on it works over HTTP/1.1
  t.equal((await httpsGet(off.port)).status, 200)
})

t.test('curl --cacert: https 200, --http2 negotiates HTTP/2', { skip: opensslSkip === false ? (hasCurl ? false : 'curl not installed') : opensslSkip }, async (t) => {
  const { port } = await tlsProxy(t, tlsListen(pki().main))
  const url = `https://localhost:${port}/`
  const base = ['-sS', '--max-time', '5', '--cacert', pki().ca.certPath, '--resolve', `localhost:${port}:127.0.0.1`, '-o', '/dev/null', '-w', '%{http_code} %{http_version}']
  const h1 = await run('curl', [...base, '--http1.1', url])
  t.equal(h1.code, 0, h1.stderr)
  t.equal(h1.stdout, '200 1.1', 'curl over HTTP/1.1: 200')
  const h2 = await run('curl', [...base, '--http2', url])
  t.equal(h2.code, 0, h2.stderr)
  t.equal(h2.stdout, '200 2', 'curl --http2: 200 over HTTP/2')
  // and curl refuses without the CA: the chain is the test CA's, not a public one
  const untrusted = await run('curl', ['-sS', '--max-time', '5', '--resolve', `localhost:${port}:127.0.0.1`, '-o', '/dev/null', url])
  t.not(untrusted.code, 0, 'without --cacert curl does not trust it')
})

/**
 * A proxy started from a config file whose listener certificate lives in
 * files the test rewrites (`live`), serving certificate A of the test PKI.
 */
async function liveCertProxy (t: Test, tag: string): Promise<{ ra: CertPair, rb: CertPair, live: { cert: string, key: string }, p: Awaited<ReturnType<typeof fileProxy>>, port: number }> {
  const { ra, rb } = pki()
  const u = await startUpstreams(t, ['stable', 'canary'])
  const d = mkdtempSync(join(tmpdir(), `canaryd-tls-${tag}-`))
  t.teardown(() => { rmSync(d, { recursive: true, force: true }) })
  const live = { cert: join(d, 'live.pem'), key: join(d, 'live-key.pem') }
  install(ra, live)
  const p = await fileProxy(t, [twoVersionRoute(u.stable!.origin, u.canary!.origin, [100, 0])],
    { listen: { host: '127.0.0.1', port: 0, tls: { certFile: live.cert, keyFile: live.key } } })
  return { ra, rb, live, p, port: p.app.proxyAddress!.port }
}

t.test('certificates reload without a restart: new handshakes get the new one, established connections stay; a bad file keeps it', { skip: opensslSkip }, async (t) => {
  const { ra, rb, live, p, port } = await liveCertProxy(t, 'live')
  const A = /reload-a\.test/
  const B = /reload-b\.test/
  t.match((await handshake(port)).san, A, 'starts with certificate A')

  // a reload with the same certificate files (a routes-only change) should not end TLS sessions
  const ticket = await handshake(port, {}, true)
  t.equal((await postReload(p.adminUrl)).status, 200)
  t.equal((await handshake(port, { session: ticket.session })).reused, true, 'a session from before a routes-only reload resumes after it (the ticket keys survive a reload)')

  const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1, ca: pki().ca.cert })
  t.teardown(() => { agent.destroy() })
  const first = await httpsGet(port, '/one', { agent })
  t.equal(first.status, 200)
  t.match(first.socket.getPeerCertificate().subjectaltname, A)

  install(rb, live)
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 200, `reload answered 200: ${r.body.toString()}`)
  t.same(r.json<{ restartRequired: string[] }>().restartRequired, [], 'the certificate files are not a restart-required change')
  t.match((await handshake(port)).san, B, 'a new handshake gets certificate B')
  t.ok(p.logs().some((l) => l.includes('listener certificates loaded')), 'the reload logs the certificates it loaded')
  // the expiry gauge follows the reload: B's notAfter, read from the file itself
  const expiry = metricSamples((await send(`${p.adminUrl}/metrics`)).body.toString(), 'canaryd_tls_certificate_expiry_timestamp_seconds')
  t.equal(expiry.length, 1, 'one expiry series: the one certificate served')
  t.equal(expiry[0]?.value, Math.floor(new Date(new X509Certificate(readFileSync(live.cert)).validTo).getTime() / 1000), 'canaryd_tls_certificate_expiry_timestamp_seconds is the served certificate\'s notAfter')
  t.match(expiry[0]?.labels.names ?? '', /reload-b\.test/, 'labelled with certificate B\'s names')

  const second = await httpsGet(port, '/two', { agent })
  t.equal(second.status, 200, 'the established connection still serves')
  t.equal(second.reusedSocket, true, 'on the same (kept-alive) connection')
  t.equal(second.socket, first.socket, 'the same socket object')
  t.match(second.socket.getPeerCertificate().subjectaltname, A, 'that connection still has certificate A')

  // a garbage certificate: refused, 400 naming the key, B kept
  writeFileSync(live.cert, 'not a certificate\n')
  const bad = await postReload(p.adminUrl)
  t.equal(bad.status, 400, bad.body.toString())
  const err = bad.json<{ error: { code: string, message: string } }>().error
  t.equal(err.code, 'CANARYD_ERR_CONFIG_RELOAD')
  t.match(err.message, /^listen\.tls\.certFile: /, 'the message starts with the key of the bad file')
  t.match(err.message, live.cert, 'and names the file')
  t.match((await handshake(port)).san, B, 'new handshakes still get B')
  t.ok(p.logs().some((l) => l.includes('reload refused') && l.includes('listen.tls.certFile')), 'the refusal is logged naming the key')

  // a key that does not belong to the certificate: names keyFile, B kept
  copyFileSync(rb.certPath, live.cert)
  copyFileSync(ra.keyPath, live.key)
  const mismatch = await postReload(p.adminUrl)
  t.equal(mismatch.status, 400)
  t.match(mismatch.json<{ error: { message: string } }>().error.message, /^listen\.tls\.keyFile: the key does not match/)
  t.match((await handshake(port)).san, B, 'still B')
  const third = await httpsGet(port, '/three', { agent })
  t.equal(third.status, 200, 'the old connection still serves after refused reloads')
  t.equal(third.socket, first.socket)
})

t.test('canaryd serve: SIGHUP reloads the certificate files; a bad one keeps the old and logs the key', { skip: opensslSkip }, async (t) => {
  ensureBuilt()
  const { ra, rb } = pki()
  const u = await startUpstreams(t, ['stable', 'canary'])
  const d = configDir()
  t.teardown(() => { rmSync(d.dir, { recursive: true, force: true }) })
  const live = { cert: join(d.dir, 'live.pem'), key: join(d.dir, 'live-key.pem') }
  install(ra, live)
  writeConfig(d.file, rawConfig(d.stateFile, [twoVersionRoute(u.stable!.origin, u.canary!.origin, [100, 0])],
    { listen: { host: '127.0.0.1', port: 0, tls: { certFile: live.cert, keyFile: live.key } } }))
  const s = await serve(d.file)
  t.teardown(() => { s.kill() })
  const port = Number(/:(\d+)$/.exec(s.proxy)?.[1])
  t.match((await handshake(port)).san, /reload-a\.test/, 'serves A')
  t.equal((await httpsGet(port)).status, 200)

  install(rb, live)
  s.child.kill('SIGHUP')
  t.ok(await until(async () => /reload-b\.test/.test((await handshake(port).catch(() => ({ san: '' }))).san), 5000, 100), 'after SIGHUP new handshakes get B')

  writeFileSync(live.key, 'garbage')
  const logged = s.log().length
  s.child.kill('SIGHUP')
  t.ok(await until(() => s.log().slice(logged).includes('reload refused'), 5000), 'the refused reload is logged')
  t.match(s.log().slice(logged), /listen\.tls\.keyFile/, 'naming listen.tls.keyFile')
  t.match((await handshake(port)).san, /reload-b\.test/, 'B kept')
  t.equal((await httpsGet(port)).status, 200, 'still serving')
})

t.test('certificate reloads under https load: 0 failed requests', { skip: opensslSkip }, async (t) => {
  const { ra, rb, live, p, port } = await liveCertProxy(t, 'load')
  const agent = new HttpsAgent({ keepAlive: true, maxSockets: 2, ca: pki().ca.cert })
  t.teardown(() => { agent.destroy() })

  let done = false
  let requests = 0
  const failures: string[] = []
  const sansOnNew = new Set<string>()
  const deadline = Date.now() + 8000
  const client = async (keepAlive: boolean): Promise<void> => {
    // bounded in count and time even if stop is never reached
    for (let i = 0; i < 20_000 && !done && Date.now() < deadline; i++) {
      try {
        const r = await httpsGet(port, `/load/${i}`, { ...(keepAlive ? { agent } : {}), headers: { 'x-user-id': `u${i}` } })
        if (r.status !== 200) failures.push(`status ${r.status}`)
        if (!keepAlive) sansOnNew.add(r.socket.getPeerCertificate().subjectaltname ?? '')
      } catch (err) {
        failures.push((err as Error).message)
      }
      requests++
    }
  }
  const clients = [client(true), client(true), client(false), client(false)]
  const reloads: number[] = []
  for (const c of [rb, ra, rb]) {
    await sleep(700)
    install(c, live)
    reloads.push((await postReload(p.adminUrl)).status)
  }
  await sleep(700)
  done = true
  await Promise.all(clients)
  t.same(reloads, [200, 200, 200], 'three reloads answered 200')
  t.same(failures.slice(0, 5), [], `no request failed (${failures.length} failures of ${requests})`)
  t.equal(failures.length, 0)
  t.ok(requests > 100, `more than 100 requests (${requests}, ${sansOnNew.size} certificates seen on new connections)`)
  t.ok([...sansOnNew].some((s) => s.includes('reload-a.test')) && [...sansOnNew].some((s) => s.includes('reload-b.test')), 'new connections saw both certificates')
  t.match((await handshake(port)).san, /reload-b\.test/, 'B is served at the end')
})

t.test('redirect port: 308 to https, ACME challenges routed, no Host → 400', { skip: opensslSkip }, async (t) => {
  const rp = await freePort()
  const { p, port, u } = await tlsProxy(t, tlsListen(pki().main, { redirectPort: rp }))
  const redirectPort = p.app.redirectAddress?.port
  t.equal(redirectPort, rp, 'the redirect listener is on listen.redirectPort')
  const plain = `http://127.0.0.1:${rp}`

  const get = await send(`${plain}/a/b?c=1`, { headers: { host: `shop.test:${rp}` } })
  t.equal(get.status, 308)
  t.equal(get.headers.location, `https://shop.test:${port}/a/b?c=1`, 'Location: the same host and target on the https port')
  const post = await send(`${plain}/a/b?c=1`, { method: 'POST', headers: { host: `shop.test:${rp}`, 'content-type': 'text/plain' }, body: 'hello' })
  t.equal(post.status, 308, 'POST is 308 too (method and body kept by the client)')
  t.equal(post.headers.location, `https://shop.test:${port}/a/b?c=1`)
  const n = u.stable!.seen.length
  t.equal(n, 0, 'nothing redirected reached an upstream')

  const acme = await send(`${plain}/.well-known/acme-challenge/tok`, { headers: { host: 'shop.test' } })
  t.equal(acme.status, 200, 'the ACME challenge is routed')
  const seen = u.stable!.seen.at(-1)
  t.equal(seen?.url, '/.well-known/acme-challenge/tok', 'the upstream saw the challenge')
  t.equal(seen?.headers['x-forwarded-proto'], 'http', 'over plain HTTP: X-Forwarded-Proto http')

  // HTTP/1.0 without Host: no URL to redirect to
  const raw = await new Promise<string>((resolve, reject) => {
    const s = netConnect(rp, '127.0.0.1')
    let out = ''
    const timer = setTimeout(() => { s.destroy(); reject(new Error('no answer in 5 s')) }, 5000)
    s.on('connect', () => { s.write('GET /x HTTP/1.0\r\n\r\n') })
    s.on('data', (c: Buffer) => { out += c.toString() })
    s.on('error', reject)
    s.on('close', () => { clearTimeout(timer); resolve(out) })
  })
  t.match(raw, /^HTTP\/1\.[01] 400 /, 'no Host → 400')
  const body = raw.slice(raw.indexOf('\r\n\r\n') + 4)
  t.match(JSON.parse(body), { error: { code: 'CANARYD_ERR_INVALID_HOST', message: String } }, `a JSON error body (${body})`)

  // public https port 443: no port in the URL; acmePassthrough off: challenges redirected too
  const rp2 = await freePort()
  const other = await tlsProxy(t, tlsListen(pki().main, { redirectPort: rp2, redirectHttpsPort: 443, acmePassthrough: false }))
  const r443 = await send(`http://127.0.0.1:${rp2}/a/b?c=1`, { headers: { host: `shop.test:${rp2}` } })
  t.equal(r443.status, 308)
  t.equal(r443.headers.location, 'https://shop.test/a/b?c=1', 'redirectHttpsPort 443: no port in Location')
  const acmeOff = await send(`http://127.0.0.1:${rp2}/.well-known/acme-challenge/tok`, { headers: { host: 'shop.test' } })
  t.equal(acmeOff.status, 308, 'acmePassthrough false: the challenge is redirected')
  t.equal(acmeOff.headers.location, 'https://shop.test/.well-known/acme-challenge/tok')
  t.equal(other.u.stable!.seen.length, 0, 'nothing reached that upstream')
})

t.test('listen.tls config errors name their key', { skip: opensslSkip }, async (t) => {
  const { main } = pki()
  const route = twoVersionRoute('http://127.0.0.1:1', 'http://127.0.0.1:2', [100, 0])
  const fromObject = (listen: Record<string, unknown>): unknown => configFromObject({
    listen: { host: '127.0.0.1', port: 0, ...listen },
    admin: { host: '127.0.0.1', port: 0 },
    state: { file: join(tmpdir(), 'canaryd-tls-unused.json') },
    routes: [route]
  }, '(test)', {})
  t.throws(() => fromObject({ tls: { certFile: main.certPath } }), { key: 'listen.tls.keyFile', message: /^listen\.tls\.keyFile: / }, 'certFile without keyFile')
  t.throws(() => fromObject({ tls: { keyFile: main.keyPath } }), { key: 'listen.tls.certFile', message: /^listen\.tls\.certFile: / }, 'keyFile without certFile')
  t.throws(() => fromObject({ tls: { certFile: main.certPath, keyFile: main.keyPath, certificates: [{ certFile: main.certPath, keyFile: main.keyPath }] } }),
    { key: 'listen.tls.certificates', message: /^listen\.tls\.certificates: / }, 'both forms')
  t.throws(() => fromObject({ tls: { certificates: [{ certFile: main.certPath, keyFile: main.keyPath }, { certFile: main.certPath }] } }),
    { key: 'listen.tls.certificates[1].keyFile', message: /^listen\.tls\.certificates\[1\]\.keyFile: / }, 'certificates[1] without keyFile')
  t.throws(() => fromObject({ redirectPort: 8081 }), { key: 'listen.redirectPort', message: /^listen\.redirectPort: / }, 'redirectPort without TLS')
  t.throws(() => fromObject({ h2c: true, tls: { certFile: main.certPath, keyFile: main.keyPath } }), { key: 'listen.h2c', message: /^listen\.h2c: / }, 'h2c with TLS')
  t.ok(fromObject({ tls: { certFile: main.certPath, keyFile: main.keyPath }, redirectPort: 8081 }), 'a valid TLS config loads')

  // a file that does not exist: App start fails naming the key
  const missing = join(tmpdir(), 'canaryd-no-such-cert.pem')
  const cfg = testConfig([route], { listen: { host: '127.0.0.1', port: 0, tls: { certFile: missing, keyFile: main.keyPath } } })
  const app = new App(cfg, { logger: testLogger(), metrics: false })
  await t.rejects(app.start(), { message: /^listen\.tls\.certFile: cannot read .*canaryd-no-such-cert\.pem: ENOENT$/ }, 'App.start names listen.tls.certFile')
  await app.close(100).catch(() => {})

  ensureBuilt()
  const d = configDir()
  t.teardown(() => { rmSync(d.dir, { recursive: true, force: true }) })
  writeConfig(d.file, rawConfig(d.stateFile, [route], { listen: { host: '127.0.0.1', port: 0, tls: { certFile: missing, keyFile: main.keyPath } } }))
  const served = await runCli(['serve', '--config', d.file], {}, 10_000)
  t.equal(served.killed, false, 'serve did not keep running')
  t.equal(served.code, 1, 'serve exits 1')
  const lines = served.stderr.trim().split('\n')
  t.equal(lines.length, 1, `one line: ${served.stderr}`)
  t.match(lines[0], /^canaryd: (invalid config \S+: )?listen\.tls\.certFile: cannot read .*ENOENT$/, 'naming the key')

  const validated = await runCli(['validate', '--config', d.file], {}, 10_000)
  t.equal(validated.code, 1, `canaryd validate refuses a missing certificate file as serve does (stdout: ${validated.stdout.trim()})`)
  t.match(validated.stderr, /listen\.tls\.certFile/, 'naming listen.tls.certFile')
})
