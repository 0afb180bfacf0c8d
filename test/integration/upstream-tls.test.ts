/**
 * Issue 13 "Upstream TLS", black-box through the proxy: https upstreams are
 * verified by default (502 CANARYD_ERR_UPSTREAM_TLS and one warn line per
 * origin per minute when they fail), a private CA (per version or static
 * `upstream.tls`), a fixed servername whatever the client's Host, mTLS,
 * insecureSkipVerify (warned at start), the same settings for large request
 * bodies (Node's http client) and for WebSocket upgrades, and TLS files
 * checked at start (`canaryd validate` / `serve`) and on reload.
 *
 * Real https servers on 127.0.0.1 port 0; certificates made by the openssl
 * binary at test time (skipped, visibly, without it).
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer as createHttpServer, type IncomingMessage } from 'node:http'
import { createServer as createHttpsServer, type ServerOptions } from 'node:https'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { App } from '../../src/app.js'
import { makeLeaf, makeTestPki, opensslSkip, type CertPair, type TestPki } from '../helpers/certs.js'
import { ensureBuilt, runCli } from '../helpers/cli.js'
import { send, type Reply } from '../helpers/http.js'
import { testConfig } from '../helpers/proxy.js'
import { adminCall, configDir, postReload, rawConfig, startFileProxy, until, writeConfig } from '../helpers/reload.js'
import { captureLog, type LogLine } from '../helpers/log.js'

if (opensslSkip !== false) t.comment(`upstream TLS integration tests skipped: ${opensslSkip}`)

/** What the https test upstream saw of one request. */
interface Seen {
  /** The SNI the proxy sent (false: none). */
  sni: string | false
  /** The client certificate verified against the server's client CA (mTLS). */
  authorized: boolean
  clientCn: string | null
  host: string | null
  method: string
  url: string
  bodyBytes: number
}

interface ErrorBody { error: { code: string, message: string } }

/** An https upstream on 127.0.0.1 that answers every request with what it saw, and accepts WebSocket upgrades. */
interface TlsUpstream {
  port: number
  /** `https://HOST:PORT` (default host 127.0.0.1). */
  origin: (host?: string) => string
  seen: Seen[]
  /** What each upgrade request came with. */
  upgrades: Array<{ sni: string | false, host: string | null }>
  /** TLS handshakes completed. */
  handshakes: () => number
}

// ---- WebSocket: the `ws` package when node_modules has it (a dependency of tap's reporter), else a raw handshake

interface WsSocket {
  on: (event: string, fn: (...args: unknown[]) => void) => void
  send: (data: string) => void
  close: () => void
  terminate: () => void
}
interface WsModule {
  WebSocket: new (url: string, opts: Record<string, unknown>) => WsSocket
  WebSocketServer: new (opts: Record<string, unknown>) => {
    handleUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer, cb: (ws: WsSocket) => void) => void
    clients: Set<WsSocket>
    close: () => void
  }
}

async function loadWs (): Promise<WsModule | undefined> {
  if (process.env.CANARYD_TEST_NO_WS === '1') return undefined
  try {
    // a variable specifier: `ws` has no type declarations here, and may be absent
    const name = 'ws'
    const mod = await import(name) as Partial<WsModule> & { default?: Partial<WsModule> }
    const WebSocket = mod.WebSocket ?? mod.default?.WebSocket
    const WebSocketServer = mod.WebSocketServer ?? mod.default?.WebSocketServer
    return WebSocket !== undefined && WebSocketServer !== undefined ? { WebSocket, WebSocketServer } : undefined
  } catch {
    return undefined
  }
}

const wsMod = await loadWs()
t.comment(`WebSocket tests use ${wsMod === undefined ? 'a raw upgrade handshake (no ws package)' : 'the ws package'}`)

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

/** A server-side raw accept: 101, then echo `echo:<text>` for small masked text frames. */
function rawAccept (req: IncomingMessage, socket: Duplex): void {
  const accept = createHash('sha1').update(`${String(req.headers['sec-websocket-key'])}${WS_GUID}`).digest('base64')
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
  socket.on('data', (d: Buffer) => {
    if (d.length < 6) return
    const op = d[0]! & 0x0f
    const len = d[1]! & 0x7f
    const mask = d.subarray(2, 6)
    const payload = Buffer.from(d.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]!))
    if (op === 8) { socket.end(Buffer.from([0x88, 0])); return }
    const text = `echo:${payload.toString()}`
    socket.write(Buffer.concat([Buffer.from([0x81, Buffer.byteLength(text)]), Buffer.from(text)]))
  })
}

/** What a WebSocket attempt through the proxy came to. */
interface WsOutcome {
  /** 101, or the status of the refusal (-1: the connection failed without a response, -2: timed out). */
  status: number
  /** The echo of the text frame sent after the 101. */
  echo?: string
  /** The refusal's body (a JSON error from the proxy). */
  body?: string
}

/** Opens ws://127.0.0.1:PORT/chat with `headers` (Host among them), sends `hi`, waits for the echo; bounded by 5 s. */
async function wsThrough (port: number, headers: Record<string, string>): Promise<WsOutcome> {
  return wsMod === undefined ? await rawWs(port, headers) : await libWs(wsMod, port, headers)
}

async function libWs (mod: WsModule, port: number, headers: Record<string, string>): Promise<WsOutcome> {
  return await new Promise((resolve) => {
    const ws = new mod.WebSocket(`ws://127.0.0.1:${port}/chat`, { headers, handshakeTimeout: 5000 })
    let done = false
    const finish = (o: WsOutcome): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      ws.terminate()
      resolve(o)
    }
    const timer = setTimeout(() => finish({ status: -2 }), 5000)
    ws.on('unexpected-response', (...a: unknown[]) => {
      const res = a[1] as IncomingMessage
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => finish({ status: res.statusCode ?? 0, body }))
      res.on('error', () => finish({ status: res.statusCode ?? 0, body }))
    })
    ws.on('open', () => { ws.send('hi') })
    ws.on('message', (d: unknown) => finish({ status: 101, echo: String(d) }))
    ws.on('error', () => finish({ status: -1 }))
  })
}

async function rawWs (port: number, headers: Record<string, string>): Promise<WsOutcome> {
  return await new Promise((resolve) => {
    const key = randomBytes(16).toString('base64')
    const lines = ['GET /chat HTTP/1.1', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)]
    if (headers.host === undefined) lines.push(`Host: 127.0.0.1:${port}`)
    lines.push('Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13', '', '')
    const s: Socket = connect(port, '127.0.0.1', () => { s.write(lines.join('\r\n')) })
    let buf = Buffer.alloc(0)
    let status: number | undefined
    let done = false
    const finish = (o: WsOutcome): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      s.destroy()
      resolve(o)
    }
    const timer = setTimeout(() => finish({ status: status ?? -2 }), 5000)
    s.on('error', () => finish({ status: status ?? -1 }))
    s.on('end', () => {
      const text = buf.toString('latin1')
      finish({ status: status ?? -1, body: text.slice(text.indexOf('\r\n\r\n') + 4) })
    })
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      if (status === 101) {
        // after the head: one small unmasked text frame from the server
        const len = buf.length >= 2 ? buf[1]! & 0x7f : Infinity
        if (buf.length >= 2 + len) finish({ status: 101, echo: buf.subarray(2, 2 + len).toString() })
        return
      }
      const text = buf.toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      if (end === -1) return
      if (status !== undefined) return // a refusal: read to its end
      status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)
      if (status !== 101) return
      const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64')
      if (!text.slice(0, end).toLowerCase().includes(`sec-websocket-accept: ${accept.toLowerCase()}`)) { finish({ status: 0 }); return }
      buf = buf.subarray(end + 4)
      const mask = randomBytes(4)
      const payload = Buffer.from('hi')
      s.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!))]))
    })
  })
}

// ---- upstreams, proxies, logs

async function tlsUpstream (t: Test, pair: CertPair, extra: ServerOptions = {}): Promise<TlsUpstream> {
  const seen: Seen[] = []
  const upgrades: TlsUpstream['upgrades'] = []
  const sockets = new Set<Duplex>()
  let handshakes = 0
  const server = createHttpsServer({ key: pair.key, cert: pair.cert, ...extra }, (req, res) => {
    let bytes = 0
    req.on('data', (c: Buffer) => { bytes += c.length })
    req.on('end', () => {
      const s = req.socket as TLSSocket & { servername: string | false }
      const peer = s.getPeerCertificate()
      const entry: Seen = { sni: s.servername, authorized: s.authorized, clientCn: typeof peer?.subject?.CN === 'string' ? peer.subject.CN : null, host: req.headers.host ?? null, method: req.method ?? '', url: req.url ?? '', bodyBytes: bytes }
      seen.push(entry)
      const body = JSON.stringify(entry)
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
  })
  server.keepAliveTimeout = 10_000
  server.on('secureConnection', () => { handshakes++ })
  // refused handshakes (no client certificate, unknown CA on the proxy side) are expected here
  server.on('tlsClientError', () => {})
  const wss = wsMod === undefined ? undefined : new wsMod.WebSocketServer({ noServer: true })
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    upgrades.push({ sni: (req.socket as TLSSocket & { servername: string | false }).servername, host: req.headers.host ?? null })
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    if (wss === undefined) rawAccept(req, socket)
    else wss.handleUpgrade(req, socket, head, (ws) => { ws.on('message', (m: unknown) => { ws.send(`echo:${String(m)}`) }) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  t.teardown(async () => {
    if (wss !== undefined) { for (const c of wss.clients) c.terminate(); wss.close() }
    for (const s of sockets) s.destroy()
    server.closeAllConnections()
    // bounded: never wait on a socket this test did not see
    await Promise.race([new Promise<void>((resolve) => server.close(() => resolve())), new Promise((resolve) => setTimeout(resolve, 2000))])
  })
  return { port, origin: (host = '127.0.0.1') => `https://${host}:${port}`, seen, upgrades, handshakes: () => handshakes }
}

/** A version of the `web` route (`tls` only when given). */
function version (name: string, upstream: string, weight: number, tls?: Record<string, unknown>): Record<string, unknown> {
  return tls === undefined ? { name, upstream, weight } : { name, upstream, weight, tls }
}

/** Route `web`, every host, versions picked by `x-canary`. */
function route (...versions: Array<Record<string, unknown>>): Record<string, unknown> {
  return { name: 'web', sticky: { keys: ['header:x-user-id'] }, override: { header: 'x-canary' }, versions }
}

/** Static keys every proxy of this file gets: short upstream timeouts, no outlier ejection (failures are the point here). */
const STATIC = {
  health: { consecutiveFailures: 0 },
  timeouts: { upstreamConnectMs: 3000, upstreamResponseMs: 5000, upstreamBodyMs: 5000 }
}

interface Proxy { url: string, port: number, app: App, lines: LogLine[] }

/** An App from a config object (routes, then static keys over STATIC), its log captured. */
async function startApp (t: Test, routes: unknown[], extra: Record<string, unknown> = {}): Promise<Proxy> {
  const { logger, lines } = captureLog('info')
  const app = new App(testConfig(routes, { ...STATIC, ...extra }), { logger })
  await app.start()
  t.teardown(async () => { await app.close(500) })
  return { url: `http://127.0.0.1:${app.proxyAddress!.port}`, port: app.proxyAddress!.port, app, lines }
}

const BIG = 100_000 // over upstream.largeBodyBytes (65536 by default): Node's http client, not undici

/** GET / (undici's pool) or a large POST (Node's http client) through the proxy, to version `v`. */
async function call (p: Proxy, v: string, opts: { host?: string, big?: boolean } = {}): Promise<Reply> {
  const headers: Record<string, string> = { 'x-canary': v }
  if (opts.host !== undefined) headers.host = opts.host
  if (opts.big !== true) return await send(`${p.url}/`, { headers })
  return await send(`${p.url}/upload`, { method: 'POST', headers: { ...headers, 'content-type': 'application/octet-stream' }, body: Buffer.alloc(BIG, 7) })
}

const CLIENTS = [['undici (small GET)', false], ['http client (large POST)', true]] as const

function seenOf (r: Reply): Seen | undefined {
  return r.status === 200 ? r.json<Seen>() : undefined
}

function errorCode (r: Reply): string | undefined {
  try {
    return r.json<ErrorBody>().error.code
  } catch {
    return undefined
  }
}

/** A short description of a reply for assertion messages. */
function show (r: Reply): string {
  return `${r.status} ${r.body.toString().slice(0, 300)}`
}

/** The PKI of these tests: makeTestPki plus leaves for one name each. */
interface Pki extends TestPki {
  /** Signed by `ca` for DNS api.internal only (neither 127.0.0.1 nor localhost). */
  apiOnly: CertPair
  /** Signed by `ca` for DNS localhost only (not 127.0.0.1). */
  localhostOnly: CertPair
}

function makePki (t: Test): Pki {
  const pki = makeTestPki()
  t.teardown(pki.cleanup)
  return {
    ...pki,
    apiOnly: makeLeaf(pki.dir, 'api-only', pki.ca, { cn: 'api.internal' }),
    localhostOnly: makeLeaf(pki.dir, 'localhost-only', pki.ca, { cn: 'localhost' })
  }
}

t.test('upstream TLS through the proxy', { skip: opensslSkip }, async (t) => {
  const pki = makePki(t)

  t.test('default: an unknown CA is 502 CANARYD_ERR_UPSTREAM_TLS, one warn line per origin per minute', async (t) => {
    const up = await tlsUpstream(t, pki.server)
    const origin = up.origin('localhost')
    const p = await startApp(t, [route(version('stable', origin, 100), version('canary', origin, 0))])
    for (let i = 0; i < 4; i++) {
      for (const [client, big] of CLIENTS) {
        const r = await call(p, 'stable', { big })
        t.equal(r.status, 502, `${client} #${i}: 502 (${show(r)})`)
        t.equal(errorCode(r), 'CANARYD_ERR_UPSTREAM_TLS', `${client} #${i}: CANARYD_ERR_UPSTREAM_TLS`)
        t.equal(r.headers['x-canaryd-version'], 'stable', `${client} #${i}: names the version`)
      }
    }
    t.equal(up.seen.length, 0, 'no request reached the upstream')
    await until(() => p.lines.some((l) => l.origin === origin), 2000)
    const warns = p.lines.filter((l) => l.level === 40 && l.origin === origin)
    t.equal(warns.length, 1, `one warn line for ${origin} after 8 failures: ${JSON.stringify(warns)}`)
    const w = warns[0] ?? {}
    t.match(w, { route: 'web', version: 'stable', origin }, 'the warn names route, version and origin')
    t.match(String(w.msg), /TLS/, 'the message says TLS')
    t.match(String(w.cause), /unable to verify|certificate/i, `the cause is logged (${String(w.cause)})`)
    t.match(String(w.code), /^UNABLE_TO_VERIFY_LEAF_SIGNATURE$/, 'with its code')
    const anyLevel = p.lines.filter((l) => JSON.stringify(l).includes(origin) && (l.level as number) >= 40)
    t.equal(anyLevel.length, 1, 'no other warn or error line names the origin')
  })

  t.test('ca: per version, static upstream.tls.ca, and a version\'s own over a wrong static one', async (t) => {
    const a = await tlsUpstream(t, pki.server)
    const b = await tlsUpstream(t, pki.server)

    t.test('a version\'s tls.ca', async (t) => {
      const p = await startApp(t, [route(version('stable', a.origin('localhost'), 100), version('canary', b.origin('localhost'), 0, { ca: pki.ca.certPath }))])
      for (const [client, big] of CLIENTS) {
        const r = await call(p, 'canary', { big })
        t.equal(r.status, 200, `${client}: canary (own ca) 200 (${show(r)})`)
        t.match(seenOf(r), { sni: 'localhost', bodyBytes: big ? BIG : 0 }, `${client}: SNI localhost, whole body`)
        const s = await call(p, 'stable', { big })
        t.equal(errorCode(s), 'CANARYD_ERR_UPSTREAM_TLS', `${client}: stable (no ca) still verifies with the public roots: 502 TLS`)
      }
    })

    t.test('static upstream.tls.ca: every version without its own tls; http versions unaffected', async (t) => {
      const plainPort = await plainUpstream(t)
      const p = await startApp(t, [route(version('stable', a.origin('localhost'), 60), version('canary', b.origin(), 40), version('plain', `http://127.0.0.1:${plainPort}`, 0))], { upstream: { tls: { ca: pki.ca.certPath } } })
      for (const [client, big] of CLIENTS) {
        const s = await call(p, 'stable', { big })
        t.equal(s.status, 200, `${client}: stable (https://localhost) 200 with the static CA (${show(s)})`)
        t.match(seenOf(s), { sni: 'localhost' })
        const c = await call(p, 'canary', { big })
        t.equal(c.status, 200, `${client}: canary (https://127.0.0.1) 200 with the static CA (${show(c)})`)
        t.match(seenOf(c), { sni: false }, `${client}: an IP origin sends no SNI`)
        const h = await call(p, 'plain', { big })
        t.equal(h.status, 200, `${client}: an http:// version ignores upstream.tls (${show(h)})`)
      }
    })

    t.test('a version\'s own tls.ca overrides a wrong static one', async (t) => {
      // the static CA is real but signs no server certificate here
      const p = await startApp(t, [route(version('stable', a.origin('localhost'), 100), version('canary', b.origin('localhost'), 0, { ca: pki.ca.certPath }))], { upstream: { tls: { ca: pki.clientCa.certPath } } })
      for (const [client, big] of CLIENTS) {
        const c = await call(p, 'canary', { big })
        t.equal(c.status, 200, `${client}: canary's own ca wins (${show(c)})`)
        const s = await call(p, 'stable', { big })
        t.equal(s.status, 502, `${client}: stable has only the wrong static CA: 502`)
        t.equal(errorCode(s), 'CANARYD_ERR_UPSTREAM_TLS', `${client}: … CANARYD_ERR_UPSTREAM_TLS`)
      }
    })
  })

  t.test('servername: SNI and verified name, whatever the client\'s Host', async (t) => {
    // a certificate for api.internal only: 127.0.0.1 (the origin) or the client's Host would not verify
    const up = await tlsUpstream(t, pki.apiOnly)
    const p = await startApp(t, [route(version('stable', up.origin(), 100, { ca: pki.ca.certPath, servername: 'api.internal' }), version('canary', up.origin(), 0))])
    for (const [client, big] of CLIENTS) {
      for (const host of [undefined, 'other.example', 'api.internal', 'shop.example:8443']) {
        const r = await call(p, 'stable', { host, big })
        t.equal(r.status, 200, `${client}, Host ${host ?? '(the proxy\'s)'}: 200 (${show(r)})`)
        t.match(seenOf(r), { sni: 'api.internal', host: host ?? `127.0.0.1:${p.port}`, bodyBytes: big ? BIG : 0 }, `${client}, Host ${host ?? '(the proxy\'s)'}: SNI api.internal, the client's Host forwarded`)
      }
    }
    const canary = await call(p, 'canary', { host: 'api.internal' })
    t.equal(errorCode(canary), 'CANARYD_ERR_UPSTREAM_TLS', 'a version without servername (nor ca) on the same origin is not verified against the Host: 502 TLS')

    t.test('undici keeps one connection while the client\'s Host changes', async (t) => {
      const up2 = await tlsUpstream(t, pki.apiOnly)
      const p2 = await startApp(t, [route(version('stable', up2.origin(), 100, { ca: pki.ca.certPath, servername: 'api.internal' }), version('canary', up2.origin(), 0))])
      for (const host of ['a.example', 'b.example', 'a.example', 'b.example']) {
        const r = await call(p2, 'stable', { host })
        t.equal(r.status, 200, `Host ${host}: 200`)
      }
      t.equal(up2.handshakes(), 1, 'four sequential requests alternating two Hosts: one TLS connection')
    })
  })

  t.test('without servername: the TLS name is the origin\'s host, never the client\'s Host', async (t) => {
    // a certificate for localhost only (no 127.0.0.1, no shop.example)
    const named = await tlsUpstream(t, pki.localhostOnly)
    // a certificate with the IP SAN 127.0.0.1
    const byIp = await tlsUpstream(t, pki.server)
    const p = await startApp(t, [route(version('stable', named.origin('localhost'), 100), version('canary', byIp.origin(), 0))], { upstream: { tls: { ca: pki.ca.certPath } } })
    for (const [client, big] of CLIENTS) {
      for (const host of ['shop.example', 'localhost', undefined]) {
        const r = await call(p, 'stable', { host, big })
        t.equal(r.status, 200, `${client}: https://localhost, Host ${host ?? '(the proxy\'s)'}: 200 (${show(r)})`)
        t.match(seenOf(r), { sni: 'localhost' }, `${client}: https://localhost, Host ${host ?? '(the proxy\'s)'}: SNI localhost`)
        const ip = await call(p, 'canary', { host, big })
        t.equal(ip.status, 200, `${client}: https://127.0.0.1, Host ${host ?? '(the proxy\'s)'}: 200, verified against the IP (${show(ip)})`)
        t.match(seenOf(ip), { sni: false }, `${client}: https://127.0.0.1, Host ${host ?? '(the proxy\'s)'}: no SNI`)
      }
    }
  })

  t.test('mTLS: a client certificate for an upstream that requires one', async (t) => {
    const up = await tlsUpstream(t, pki.server, { requestCert: true, rejectUnauthorized: true, ca: pki.clientCa.cert })
    const p = await startApp(t, [route(
      version('stable', up.origin('localhost'), 100, { ca: pki.ca.certPath, cert: pki.client.certPath, key: pki.client.keyPath }),
      version('canary', up.origin('localhost'), 0, { ca: pki.ca.certPath })
    )])
    for (const [client, big] of CLIENTS) {
      const r = await call(p, 'stable', { big })
      t.equal(r.status, 200, `${client}: with cert and key, 200 (${show(r)})`)
      t.match(seenOf(r), { authorized: true, clientCn: 'canaryd', bodyBytes: big ? BIG : 0 }, `${client}: the upstream saw the client certificate CN=canaryd`)
    }
    const without = await call(p, 'canary')
    t.equal(without.status, 502, `without a client certificate: 502 (${show(without)})`)
    t.match(errorCode(without), /^CANARYD_ERR_UPSTREAM_(?:TLS|RESET)$/, `… a TLS failure or a reset (${String(errorCode(without))})`)
    t.notOk(up.seen.some((s) => s.clientCn === null), 'no request without a client certificate was served')

    t.test('static upstream.tls cert/key apply to every version', async (t) => {
      const p2 = await startApp(t, [route(version('stable', up.origin('localhost'), 100), version('canary', up.origin(), 0))],
        { upstream: { tls: { ca: pki.ca.certPath, cert: pki.client.certPath, key: pki.client.keyPath } } })
      for (const v of ['stable', 'canary']) {
        const r = await call(p2, v)
        t.equal(r.status, 200, `${v}: 200 (${show(r)})`)
        t.match(seenOf(r), { clientCn: 'canaryd' })
      }
    })
  })

  t.test('insecureSkipVerify: any certificate, warned at start', async (t) => {
    const self = await tlsUpstream(t, pki.selfSigned)
    const p = await startApp(t, [route(version('stable', self.origin(), 100), version('canary', self.origin('localhost'), 0, { insecureSkipVerify: true }))])
    const warns = p.lines.filter((l) => l.level === 40 && /insecureSkipVerify/.test(String(l.msg)))
    t.equal(warns.length, 1, `one warn at start: ${JSON.stringify(warns)}`)
    t.match(String(warns[0]?.where), /\bweb\b.*\bcanary\b/, `it names the route and the version (${String(warns[0]?.where)})`)
    for (const [client, big] of CLIENTS) {
      const r = await call(p, 'canary', { big, host: 'shop.example' })
      t.equal(r.status, 200, `${client}: a self-signed upstream with insecureSkipVerify: 200 (${show(r)})`)
      const s = await call(p, 'stable', { big })
      t.equal(errorCode(s), 'CANARYD_ERR_UPSTREAM_TLS', `${client}: the other version still verifies: 502 TLS`)
    }

    t.test('static upstream.tls.insecureSkipVerify: warned, naming upstream.tls', async (t) => {
      const p2 = await startApp(t, [route(version('stable', self.origin(), 100), version('canary', self.origin(), 0))], { upstream: { tls: { insecureSkipVerify: true } } })
      const w = p2.lines.filter((l) => l.level === 40 && /insecureSkipVerify/.test(String(l.msg)))
      t.equal(w.length, 1, `one warn: ${JSON.stringify(w)}`)
      t.match(String(w[0]?.where), /upstream\.tls/)
      t.equal((await call(p2, 'stable')).status, 200, 'self-signed accepted')
    })

    t.test('a version\'s insecureSkipVerify: false turns verification back on under a static true', async (t) => {
      const p3 = await startApp(t, [route(version('stable', self.origin(), 100), version('canary', self.origin(), 0, { insecureSkipVerify: false }))], { upstream: { tls: { insecureSkipVerify: true } } })
      t.equal((await call(p3, 'stable')).status, 200, 'stable (static insecureSkipVerify): self-signed accepted')
      for (const [client, big] of CLIENTS) {
        const r = await call(p3, 'canary', { big })
        t.equal(r.status, 502, `${client}: canary (own insecureSkipVerify: false) verifies: 502 (${show(r)})`)
        t.equal(errorCode(r), 'CANARYD_ERR_UPSTREAM_TLS', `${client}: … CANARYD_ERR_UPSTREAM_TLS`)
      }
    })
  })

  t.test('the active health check dials with the version\'s TLS settings', async (t) => {
    const api = await tlsUpstream(t, pki.apiOnly)
    const p = await startApp(t, [route(
      version('stable', api.origin(), 100, { ca: pki.ca.certPath, servername: 'api.internal' }),
      version('canary', api.origin(), 0)
    )], { health: { consecutiveFailures: 0, checkPath: '/healthz', checkIntervalMs: 100 } })
    const checked = await until(() => api.seen.filter((s) => s.url === '/healthz').length >= 3, 5000)
    t.ok(checked, 'the upstream got health checks')
    t.ok(api.seen.filter((s) => s.url === '/healthz').every((s) => s.sni === 'api.internal'), 'every check came with SNI api.internal')
    const states = p.app.proxy.endpointStates()
    t.match(states.find((e) => e.version === 'stable'), { healthy: 1, ejected: 0 }, 'stable (ca + servername) stays healthy')
    const ejected = await until(() => p.app.proxy.endpointStates().find((e) => e.version === 'canary')?.ejected === 1, 3000)
    t.ok(ejected, 'canary (no ca: its checks fail the TLS handshake) is ejected')
    t.equal((await call(p, 'stable', { host: 'other.example' })).status, 200, 'stable still serves')
  })

  t.test('WebSocket upgrade to a wss upstream follows the version\'s TLS settings', async (t) => {
    const named = await tlsUpstream(t, pki.localhostOnly)
    const api = await tlsUpstream(t, pki.apiOnly)
    const p = await startApp(t, [route(
      version('stable', named.origin('localhost'), 100, { ca: pki.ca.certPath }),
      version('canary', api.origin(), 0, { ca: pki.ca.certPath, servername: 'api.internal' }),
      version('noca', named.origin('localhost'), 0)
    )])

    const plain = await wsThrough(p.port, { 'x-canary': 'stable' })
    t.match(plain, { status: 101, echo: 'echo:hi' }, `tls.ca, https://localhost: 101 and frames both ways (${JSON.stringify(plain)})`)
    t.match(named.upgrades.at(-1), { sni: 'localhost' }, 'SNI localhost')

    const shop = await wsThrough(p.port, { 'x-canary': 'stable', host: 'shop.example' })
    t.match(shop, { status: 101, echo: 'echo:hi' }, `tls.ca, https://localhost, client Host shop.example: 101 (${JSON.stringify(shop)})`)
    if (shop.status === 101) t.match(named.upgrades.at(-1), { sni: 'localhost', host: 'shop.example' }, 'SNI localhost, Host forwarded')

    const sn = await wsThrough(p.port, { 'x-canary': 'canary', host: 'other.example' })
    t.match(sn, { status: 101, echo: 'echo:hi' }, `tls.servername api.internal on https://127.0.0.1, client Host other.example: 101 (${JSON.stringify(sn)})`)
    if (sn.status === 101) t.match(api.upgrades.at(-1), { sni: 'api.internal' }, 'SNI api.internal')

    const unknown = await wsThrough(p.port, { 'x-canary': 'noca' })
    t.equal(unknown.status, 502, `no ca: the upgrade is refused with 502 (${JSON.stringify(unknown)})`)
    t.match(unknown.body ?? '', /CANARYD_ERR_UPSTREAM_TLS/, 'a WebSocket TLS failure carries CANARYD_ERR_UPSTREAM_TLS, as a plain request\'s does')
    await until(() => p.lines.some((l) => l.level === 40 && l.origin === named.origin('localhost')), 1000)
    const warned = p.lines.filter((l) => l.level === 40 && l.origin === named.origin('localhost'))
    t.equal(warned.length, 1, `a WebSocket TLS failure is logged at warn, naming the origin and the cause: ${JSON.stringify(warned)}`)
    t.match(String(warned[0]?.cause), /certificate/i, 'with the cause')
  })
})

/** A plain http upstream answering 200 (for a version that static upstream.tls must not touch). */
async function plainUpstream (t: Test): Promise<number> {
  const s = createHttpServer((req, res) => { req.resume(); req.on('end', () => res.end('plain')) })
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { s.closeAllConnections(); s.close() })
  return (s.address() as AddressInfo).port
}

// ---- start-up and reload errors

/** A config file in a new temp dir (loopback, ports 0, its own state file). */
function configFile (routes: unknown[], extra: Record<string, unknown> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-tls-cli-'))
  const file = join(dir, 'config.json')
  writeFileSync(file, JSON.stringify(rawConfig(join(dir, 'state.json'), routes, extra)))
  return file
}

/** `canaryd ARGS`, killed after `ms` (a serve that starts when it should not does not hang the test). */
async function runBounded (args: string[], ms = 15_000): Promise<{ code: number | null, stdout: string, stderr: string, killed: boolean }> {
  return await runCli(args, {}, ms)
}

function stderrLines (s: string): string[] {
  return s.split('\n').filter((l) => l.trim() !== '')
}

t.test('start-up errors: canaryd validate / serve name the TLS key in one line', { skip: opensslSkip }, async (t) => {
  ensureBuilt()
  const pki = makePki(t)
  const missing = join(pki.dir, 'missing-ca.pem')
  const https = 'https://127.0.0.1:1'
  const two = (tls: Record<string, unknown>): unknown[] => [route(version('stable', https, 100), version('canary', https, 0, tls))]

  const cases: Array<[string, string, RegExp]> = [
    ['missing tls.ca file', configFile(two({ ca: missing })), /routes\[0\]\.versions\[1\]\.tls\.ca: cannot read .*missing-ca\.pem \(ENOENT\)/],
    ['tls.cert without key', configFile(two({ cert: pki.client.certPath })), /routes\[0\]\.versions\[1\]\.tls\.key\b/],
    ['tls.key not matching tls.cert', configFile(two({ cert: pki.client.certPath, key: pki.other.keyPath })), /routes\[0\]\.versions\[1\]\.tls\.key: .*does not match/],
    ['static upstream.tls.cert without key', configFile([route(version('stable', https, 100), version('canary', https, 0))], { upstream: { tls: { cert: pki.client.certPath } } }), /upstream\.tls\.key\b/],
    ['static upstream.tls.ca missing', configFile([route(version('stable', https, 100), version('canary', https, 0))], { upstream: { tls: { ca: missing } } }), /upstream\.tls\.ca: cannot read/]
  ]
  for (const [name, file, want] of cases) {
    const v = await runCli(['validate', '--config', file])
    t.equal(v.code, 1, `validate, ${name}: exit 1 (${v.stderr.trim()})`)
    const lines = stderrLines(v.stderr)
    t.equal(lines.length, 1, `validate, ${name}: one line`)
    t.match(lines[0] ?? '', want, `validate, ${name}: the line names the key`)
    t.match(lines[0] ?? '', /^canaryd: invalid config /, `validate, ${name}: serve's config-error format`)
    t.equal(v.stdout, '', `validate, ${name}: nothing on stdout`)
  }
  // serve makes the same check before opening any socket
  const s = await runBounded(['serve', '--config', cases[0]![1]])
  t.notOk(s.killed, 'serve did not start')
  t.equal(s.code, 1, 'serve with a missing tls.ca: exit 1')
  const serveLines = stderrLines(s.stderr)
  t.equal(serveLines.length, 1, `serve: one line (${s.stderr.trim()})`)
  t.match(serveLines[0] ?? '', /routes\[0\]\.versions\[1\]\.tls\.ca: cannot read/, 'serve: the line names the key')

  const good = configFile(two({ ca: pki.ca.certPath, servername: 'api.internal', cert: pki.client.certPath, key: pki.client.keyPath }))
  const ok = await runCli(['validate', '--config', good])
  t.equal(ok.code, 0, `validate accepts good TLS files (${ok.stderr.trim()})`)
})

t.test('reload with a bad TLS file: 400 CANARYD_ERR_CONFIG_RELOAD naming the key, nothing changed', { skip: opensslSkip }, async (t) => {
  const pki = makePki(t)
  const up = await tlsUpstream(t, pki.server)
  const d = configDir()
  const origin = up.origin('localhost')
  const routesWith = (tls: Record<string, unknown>): unknown[] => [route(version('stable', origin, 100, { ca: pki.ca.certPath }), version('canary', origin, 0, tls))]
  const raw = (tls: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> => rawConfig(d.stateFile, routesWith(tls), { ...STATIC, ...extra })
  const p = await startFileProxy(d.file, d.stateFile, raw({ ca: pki.ca.certPath }))
  t.teardown(async () => { await p.close() })
  const proxy: Proxy = { url: p.url, port: p.app.proxyAddress!.port, app: p.app, lines: [] }
  t.equal((await call(proxy, 'canary')).status, 200, 'canary verifies with its ca before any reload')
  const routesBefore = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes')).body.toString()

  const missing = join(pki.dir, 'missing.pem')
  const bad: Array<[string, Record<string, unknown>, RegExp]> = [
    ['a missing tls.ca file', { ca: missing }, /^routes\[0\]\.versions\[1\]\.tls\.ca: cannot read .*missing\.pem \(ENOENT\)/],
    ['tls.cert without tls.key', { ca: pki.ca.certPath, cert: pki.client.certPath }, /^routes\[0\]\.versions\[1\]\.tls\.key\b/],
    ['a tls.key that does not match', { ca: pki.ca.certPath, cert: pki.client.certPath, key: pki.other.keyPath }, /^routes\[0\]\.versions\[1\]\.tls\.key: .*does not match/],
    ['a tls.ca that is no certificate', { ca: pki.ca.keyPath }, /^routes\[0\]\.versions\[1\]\.tls\.ca: .*holds no PEM certificate/]
  ]
  for (const [name, tls, want] of bad) {
    const logsBefore = p.logs().length
    writeConfig(d.file, raw(tls))
    const r = await postReload(p.adminUrl)
    t.equal(r.status, 400, `${name}: 400 (${r.body.toString()})`)
    const err = r.json<ErrorBody>().error
    t.equal(err.code, 'CANARYD_ERR_CONFIG_RELOAD', `${name}: CANARYD_ERR_CONFIG_RELOAD`)
    t.match(err.message, want, `${name}: the message names the key`)
    const named = p.logs().slice(logsBefore).filter((l) => l.includes('routes[0].versions[1].tls'))
    t.equal(named.length, 1, `${name}: one log line names the key`)
    t.equal((await adminCall(p.adminUrl, 'GET', '/api/v1/routes')).body.toString(), routesBefore, `${name}: routes unchanged`)
    const c = await call(proxy, 'canary')
    t.equal(c.status, 200, `${name}: canary still served with the old TLS settings (${show(c)})`)
  }

  // a valid reload that changes a version's TLS settings takes effect: a CA that signs no server here
  writeConfig(d.file, raw({ ca: pki.clientCa.certPath }))
  const wrong = await postReload(p.adminUrl)
  t.equal(wrong.status, 200, `a valid TLS change reloads (${wrong.body.toString()})`)
  t.equal(errorCode(await call(proxy, 'canary')), 'CANARYD_ERR_UPSTREAM_TLS', 'the new (wrong) CA is in force: 502 TLS')
  t.equal((await call(proxy, 'stable')).status, 200, 'the unchanged version still serves')
  writeConfig(d.file, raw({ ca: pki.ca.certPath }))
  t.equal((await postReload(p.adminUrl)).status, 200)
  t.equal((await call(proxy, 'canary')).status, 200, 'and back: 200')

  // a certificate rotated in place (same path, new content, as cert-manager or a secret mount does), then a reload
  const rotating = join(pki.dir, 'rotating-ca.pem')
  writeFileSync(rotating, pki.clientCa.cert)
  writeConfig(d.file, raw({ ca: rotating }))
  t.equal((await postReload(p.adminUrl)).status, 200)
  t.equal(errorCode(await call(proxy, 'canary')), 'CANARYD_ERR_UPSTREAM_TLS', 'rotating-ca.pem holds the wrong CA: 502 TLS')
  writeFileSync(rotating, pki.ca.cert)
  const rotated = await postReload(p.adminUrl)
  t.equal(rotated.status, 200, `reload after the rotation (${rotated.body.toString()})`)
  const afterRotation = await call(proxy, 'canary')
  // known limit (docs/upstreams.md): pools are keyed by the files' paths, so new content at the same path needs a new path or a restart
  t.equal(afterRotation.status, 200, `the reload that validated the new file content also uses it: 200 (${show(afterRotation)})`, { todo: 'TLS files rotated in place are used after a restart (pools are keyed by path); see docs/upstreams.md' })
  writeConfig(d.file, raw({ ca: pki.ca.certPath }))
  t.equal((await postReload(p.adminUrl)).status, 200)

  // static upstream.tls is static: reported as needing a restart, not applied
  writeConfig(d.file, raw({ ca: pki.ca.certPath }, { upstream: { tls: { insecureSkipVerify: true } } }))
  const st = await postReload(p.adminUrl)
  t.equal(st.status, 200)
  t.same(st.json<{ restartRequired: string[] }>().restartRequired, ['upstream.tls.insecureSkipVerify'], 'a changed upstream.tls key needs a restart')
  t.equal((await call(proxy, 'stable')).status, 200, 'the running static TLS settings are kept')
})
