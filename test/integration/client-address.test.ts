/**
 * Issue 14 "edge listener", the client address end to end: trustedProxies
 * (X-Forwarded-* replaced from an untrusted peer, kept from a trusted one,
 * the client the first untrusted hop from the right) and the PROXY protocol
 * (v1 and v2, garbage, timeouts, under TLS and HTTP/2), each seen where it
 * matters: the headers the upstream receives, the `ip` sticky key (checked
 * against the pure pick), the access log's `client` field and
 * canaryd_connection_errors_total on the admin /metrics.
 *
 * Everything on 127.0.0.1, port 0; certificates made by the openssl binary at
 * test time (the TLS part skips, visibly, without it).
 */
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { connect as http2Connect } from 'node:http2'
import { connect as netConnect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Duplex } from 'node:stream'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { App } from '../../src/app.js'
import { parseProxyHeader } from '../../src/listener/proxy-protocol.js'
import { hashKey } from '../../src/routing/hash.js'
import { pickVersion } from '../../src/routing/pick.js'
import { countWire, rawRequest, waitFor, type RawReply } from '../hardening/raw.js'
import { makeCa, makeLeaf, opensslSkip } from '../helpers/certs.js'
import { send } from '../helpers/http.js'
import { captureLog, type LogLine } from '../helpers/log.js'
import { proxyV1, proxyV1Unknown, proxyV2 } from '../helpers/proxy-protocol.js'
import { testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstreams, type TestUpstream } from '../helpers/upstream.js'
import { mulberry32 } from '../../src/rollout/loadtest.js'

if (opensslSkip !== false) t.comment(`PROXY protocol + TLS tests skipped: ${opensslSkip}`)

/** A running canaryd, its log captured. */
interface Proxy {
  app: App
  port: number
  url: string
  adminUrl: string
  lines: LogLine[]
}

/** What the echo upstream answers: its name and the request it saw. */
interface Echo {
  version: string
  url: string
  headers: IncomingHttpHeaders
}

/** Two versions at 50/50, sticky by the client address only. */
function ipRoute (ups: Record<string, TestUpstream>): Record<string, unknown> {
  return twoVersionRoute(ups.stable!.origin, ups.canary!.origin, [50, 50], {
    sticky: { keys: ['ip'], cookie: { name: 'canaryd_id', maxAge: 86400 } }
  })
}

/** canaryd with the access log on, over stable/canary echo upstreams; `extra` static keys. */
async function startApp (t: Test, ups: Record<string, TestUpstream>, extra: Record<string, unknown> = {}): Promise<Proxy> {
  const { logger, lines } = captureLog('info')
  const app = new App(testConfig([ipRoute(ups)], { log: { access: true }, ...extra }), { logger })
  await app.start()
  t.teardown(async () => { await app.close(500) })
  const port = app.proxyAddress!.port
  return { app, port, url: `http://127.0.0.1:${port}`, adminUrl: `http://127.0.0.1:${app.adminAddress!.port}`, lines }
}

function accessLines (p: Proxy): LogLine[] {
  return p.lines.filter((l) => l.msg === 'access')
}

/** Runs `fn` (one request) and returns the access line it wrote. */
/** One HTTP/1.1 GET over an already connected (TLS) socket, `Connection: close`; the status and body. */
async function getOver (socket: Duplex, path: string): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ createConnection: () => socket, path, headers: { host: 'localhost', connection: 'close' } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

async function accessOf<T> (p: Proxy, fn: () => Promise<T>): Promise<{ result: T, line: LogLine }> {
  const before = accessLines(p).length
  const result = await fn()
  await waitFor(() => accessLines(p).length > before, { timeoutMs: 3000 })
  const lines = accessLines(p)
  return { result, line: lines[lines.length - 1]! }
}

/** The version the pure pick gives `key` on the proxy's (only) route. */
function expectedVersion (p: Proxy, key: string): string {
  const route = p.app.holder.current.routes[0]!
  return pickVersion(route, hashKey(route.salt, key))!.name
}

/** canaryd_connection_errors_total{reason} on the admin /metrics. */
async function connErrors (p: Proxy, reason: 'proxy_protocol' | 'prelude_timeout' | 'tls_handshake'): Promise<number> {
  const r = await send(`${p.adminUrl}/metrics`)
  const m = new RegExp(`^canaryd_connection_errors_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(r.body.toString())
  if (m === null) throw new Error(`canaryd_connection_errors_total{reason="${reason}"} not on /metrics`)
  return Number(m[1])
}

/** One HTTP/1.1 response read off a raw socket. */
interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
}

/** Splits what a raw client read into its responses (Content-Length or chunked bodies). */
function parseResponses (text: string): RawResponse[] {
  const out: RawResponse[] = []
  let at = 0
  while (at < text.length) {
    const end = text.indexOf('\r\n\r\n', at)
    if (end < 0) break
    const lines = text.slice(at, end).split('\r\n')
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0)
    const headers: Record<string, string> = {}
    for (const l of lines.slice(1)) {
      const c = l.indexOf(':')
      if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim()
    }
    let pos = end + 4
    let body = ''
    if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length'])
      body = text.slice(pos, pos + n)
      pos += n
    } else if (headers['transfer-encoding'] === 'chunked') {
      for (;;) {
        const eol = text.indexOf('\r\n', pos)
        if (eol < 0) { pos = text.length; break }
        const n = parseInt(text.slice(pos, eol), 16)
        pos = eol + 2
        if (!(n > 0)) { pos += 2; break }
        body += text.slice(pos, pos + n)
        pos += n + 2
      }
    } else {
      body = text.slice(pos)
      pos = text.length
    }
    out.push({ status, headers, body })
    at = pos
  }
  return out
}

function echoOf (r: RawResponse | undefined): Echo {
  if (r === undefined) throw new Error('no response')
  return JSON.parse(r.body) as Echo
}

function getRequest (path: string, close = true, extra = ''): string {
  return `GET ${path} HTTP/1.1\r\nHost: app.test\r\n${extra}${close ? 'Connection: close\r\n' : ''}\r\n`
}

/** A deterministic PRNG: a failing fuzz case is reproducible from its seed. */
const prng = mulberry32

// ---------------------------------------------------------------------------

t.test('untrusted peer: X-Forwarded-For/-Proto/-Host are replaced, not appended to', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups)
  const { result: r, line } = await accessOf(p, async () => await send(`${p.url}/u`, {
    headers: { host: 'shop.test', 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.test', 'x-real-ip': '6.6.6.6' }
  }))
  t.equal(r.status, 200)
  const seen = r.json<Echo>().headers
  t.equal(seen['x-forwarded-for'], '127.0.0.1', 'XFF is the TCP peer only: the client\'s 1.2.3.4 is dropped')
  t.equal(seen['x-forwarded-proto'], 'http', 'X-Forwarded-Proto is our scheme, not the client\'s https')
  t.equal(seen['x-forwarded-host'], 'shop.test', 'X-Forwarded-Host is the Host, not the client\'s evil.test')
  t.equal(seen['x-real-ip'], '127.0.0.1', 'X-Real-IP is the client address canaryd decided, not the client\'s 6.6.6.6')
  t.equal(line.client, '127.0.0.1', 'access log: client is the peer')
  t.equal(r.json<Echo>().version, expectedVersion(p, '127.0.0.1'), 'the ip sticky key is the peer, not the forged XFF')

  // repeated fields (which Node would join) are all replaced too
  const raw = await rawRequest(p.port, [
    'GET /rep HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8, 9.9.9.9\r\n' +
    'X-Forwarded-Proto: https\r\nX-Forwarded-Proto: wss\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Host: evil2.test\r\nConnection: close\r\n\r\n'
  ])
  t.equal(raw.status, 200)
  const rep = echoOf(parseResponses(raw.text)[0])
  t.equal(rep.headers['x-forwarded-for'], '127.0.0.1', 'repeated XFF fields replaced by the peer')
  t.equal(rep.headers['x-forwarded-proto'], 'http', 'repeated X-Forwarded-Proto replaced')
  t.equal(rep.headers['x-forwarded-host'], 'shop.test', 'repeated X-Forwarded-Host replaced')
  const rawSeen = [...ups.stable!.seen, ...ups.canary!.seen].find((s) => s.url === '/rep')!
  t.equal(rawSeen.rawHeaders.filter((h) => /^x-forwarded-(for|proto|host)$/i.test(h)).length, 3, 'exactly one field of each reached the upstream')
})

t.test('trusted peer (127.0.0.1/32): X-Forwarded-* kept, the peer appended; the client is the first untrusted hop', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, { trustedProxies: ['127.0.0.1/32'] })
  const { result: r, line } = await accessOf(p, async () => await send(`${p.url}/t`, {
    headers: { host: 'inner.test', 'x-forwarded-for': '203.0.113.9, 10.0.0.2', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'front.test' }
  }))
  t.equal(r.status, 200)
  const seen = r.json<Echo>().headers
  t.equal(seen['x-forwarded-for'], '203.0.113.9, 10.0.0.2, 127.0.0.1', 'XFF kept, the trusted peer appended')
  t.equal(seen['x-forwarded-proto'], 'https', 'X-Forwarded-Proto kept')
  t.equal(seen['x-forwarded-host'], 'front.test', 'X-Forwarded-Host kept')
  // only 127.0.0.1 trusted: 10.0.0.2 is the first untrusted hop from the right
  t.equal(line.client, '10.0.0.2', 'access log: client is 10.0.0.2 (10/8 not trusted)')
  t.equal(r.json<Echo>().version, expectedVersion(p, '10.0.0.2'), 'the ip sticky key is 10.0.0.2')

  // repeated XFF fields from a trusted peer are one list (RFC 9110 §5.3), in order
  const repeated = await rawRequest(p.port, ['GET /rep HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.2\r\nConnection: close\r\n\r\n'])
  t.equal(echoOf(parseResponses(repeated.text)[0]).headers['x-forwarded-for'], '203.0.113.9, 10.0.0.2, 127.0.0.1', 'repeated XFF fields kept as one list, the peer appended')
  await waitFor(() => accessLines(p).length >= 2)
  t.equal(accessLines(p)[1]!.client, '10.0.0.2', 'repeated XFF fields: the walk runs over both (client 10.0.0.2)')

  // the "loopback" keyword trusts the same peer
  const q = await startApp(t, ups, { trustedProxies: ['loopback'] })
  const { result: r2, line: l2 } = await accessOf(q, async () => await send(`${q.url}/t2`, { headers: { 'x-forwarded-for': '198.51.100.1' } }))
  t.equal(r2.json<Echo>().headers['x-forwarded-for'], '198.51.100.1, 127.0.0.1', 'loopback keyword: XFF kept and appended')
  t.equal(l2.client, '198.51.100.1', 'loopback keyword: client from XFF')

  // without XFF from a trusted peer the client is the peer itself, and -Proto/-Host are set
  const { result: r3, line: l3 } = await accessOf(p, async () => await send(`${p.url}/t3`, { headers: { host: 'plain.test' } }))
  const s3 = r3.json<Echo>().headers
  t.equal(s3['x-forwarded-for'], '127.0.0.1')
  t.equal(s3['x-forwarded-proto'], 'http')
  t.equal(s3['x-forwarded-host'], 'plain.test')
  t.equal(l3.client, '127.0.0.1')
})

t.test('trusted 127.0.0.1/32 and 10.0.0.0/8: the real client keys stickiness and the access log', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, { trustedProxies: ['127.0.0.1/32', '10.0.0.0/8'] })
  let bad = 0
  const get = async (xff: string): Promise<{ version: string, client: unknown, xff: unknown }> => {
    const { result, line } = await accessOf(p, async () => await send(`${p.url}/s`, { headers: { 'x-forwarded-for': xff } }))
    const e = result.json<Echo>()
    // the echo is the version that served it, and the client was told the same
    if (result.status !== 200 || result.headers['x-canaryd-version'] !== e.version) bad++
    t.equal(e.headers['x-real-ip'], line.client, 'X-Real-IP is the client the access log names')
    return { version: e.version, client: line.client, xff: e.headers['x-forwarded-for'] }
  }

  const a = await get('203.0.113.9, 10.0.0.2')
  const b = await get('203.0.113.9, 10.9.9.9')
  t.equal(a.client, '203.0.113.9', 'access log: client is 203.0.113.9 behind 10.0.0.2')
  t.equal(b.client, '203.0.113.9', 'access log: client is 203.0.113.9 behind 10.9.9.9')
  t.equal(a.xff, '203.0.113.9, 10.0.0.2, 127.0.0.1')
  t.equal(a.version, b.version, 'both chains end in the same client: same version')
  t.equal(a.version, expectedVersion(p, '203.0.113.9'), 'and it is the pure pick for 203.0.113.9')

  // ~40 real clients, each behind two different internal hops: each lands on the
  // pick of its own address, never of a hop; the spread covers both versions
  const versions = new Map<string, number>()
  let mismatches = 0
  let distinguishing = 0
  for (let i = 0; i < 40; i++) {
    const client = `198.51.100.${i + 10}`
    const hopA = `10.${i}.0.1`
    const hopB = `10.${i}.7.${i + 3}`
    const want = expectedVersion(p, client)
    // cases where a wrong key (a hop) would give another version make this able to fail
    if (expectedVersion(p, hopA) !== want || expectedVersion(p, hopB) !== want) distinguishing++
    const x = await get(`${client}, ${hopA}`)
    const y = await get(`${client}, ${hopB}`)
    if (x.version !== want || y.version !== want || x.client !== client || y.client !== client) mismatches++
    versions.set(x.version, (versions.get(x.version) ?? 0) + 1)
  }
  t.equal(mismatches, 0, 'every request landed on its real client\'s pick, the access log naming that client')
  t.ok(distinguishing >= 10, `the check discriminates: ${distinguishing}/40 clients would move if a hop were the key`)
  t.same([...versions.keys()].sort(), ['canary', 'stable'], `40 clients at 50/50 reach both versions (${JSON.stringify([...versions])})`)
  t.ok((versions.get('canary') ?? 0) >= 8 && (versions.get('stable') ?? 0) >= 8, 'neither version is starved')
  t.equal(bad, 0, 'every request: 200 from the version named in x-canaryd-version')
})

t.test('the walk: all hops trusted gives the leftmost; garbage stops it at the hop to its right', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, { trustedProxies: ['127.0.0.1/32', '10.0.0.0/8'] })
  const client = async (xff: string): Promise<{ client: unknown, version: string, xff: unknown }> => {
    const { result, line } = await accessOf(p, async () => await send(`${p.url}/w`, { headers: { 'x-forwarded-for': xff } }))
    const e = result.json<Echo>()
    return { client: line.client, version: e.version, xff: e.headers['x-forwarded-for'] }
  }
  const all = await client('10.0.0.1, 10.0.0.2')
  t.equal(all.client, '10.0.0.1', 'every hop trusted: the leftmost is the client (nginx)')
  t.equal(all.version, expectedVersion(p, '10.0.0.1'))

  const garbage = await client('203.0.113.9, garbage, 10.0.0.2')
  t.equal(garbage.client, '10.0.0.2', 'garbage stops the walk: the trusted hop to its right is the client, never garbage or what is left of it')
  t.equal(garbage.version, expectedVersion(p, '10.0.0.2'))
  t.equal(garbage.xff, '203.0.113.9, garbage, 10.0.0.2, 127.0.0.1', 'the header itself is passed on whole from a trusted peer')

  const empty = await client('203.0.113.9, , 10.0.0.2')
  t.equal(empty.client, '10.0.0.2', 'an empty entry counts as garbage')
  const ported = await client('203.0.113.7:5555, 10.0.0.2')
  t.equal(ported.client, '203.0.113.7', 'a port on a hop is dropped')
  const mapped = await client('::ffff:203.0.113.8, 10.0.0.2')
  t.equal(mapped.client, '203.0.113.8', 'an IPv4-mapped hop becomes plain IPv4')
  const legacy = await client('203.0.113.9, 10.1')
  t.equal(legacy.client, '127.0.0.1', 'a legacy spelling (10.1) is garbage: the walk stops at the peer')
})

// ---------------------------------------------------------------------------
// PROXY protocol

t.test('PROXY v1/v2 headers name the client, in one write or split', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, { listen: { host: '127.0.0.1', port: 0, proxyProtocol: true }, timeouts: { clientHeadersMs: 300 } })
  const dst = { address: '127.0.0.1', port: p.port }
  const src = { address: '198.51.100.7', port: 5555 }

  const check = async (name: string, parts: Array<string | Buffer>, want: string, opts: { gapMs?: number } = {}): Promise<void> => {
    const { result, line } = await accessOf(p, async () => await rawRequest(p.port, parts, opts))
    t.equal(result.status, 200, `${name}: 200`)
    const echo = echoOf(parseResponses(result.text)[0])
    t.equal(echo.headers['x-forwarded-for'], want, `${name}: upstream XFF is ${want}`)
    t.equal(echo.headers['x-real-ip'], want, `${name}: upstream X-Real-IP is ${want}`)
    t.equal(echo.headers['x-forwarded-proto'], 'http', `${name}: proto http`)
    t.equal(line.client, want, `${name}: access log client ${want}`)
    t.equal(echo.version, expectedVersion(p, want), `${name}: ip sticky key is ${want}`)
  }

  const v1 = proxyV1(src, dst)
  await check('v1, same write', [Buffer.concat([v1, Buffer.from(getRequest('/v1'))])], '198.51.100.7')
  await check('v1, header split over two writes 50 ms apart', [v1.subarray(0, 11), Buffer.concat([v1.subarray(11), Buffer.from(getRequest('/v1s'))])], '198.51.100.7', { gapMs: 50 })
  await check('v1, header then the request in separate writes', [v1, getRequest('/v1r')], '198.51.100.7', { gapMs: 50 })
  await check('v1 TCP6', [Buffer.concat([proxyV1({ address: '2001:db8::7', port: 1 }, { address: '::1', port: p.port }), Buffer.from(getRequest('/v1-6'))])], '2001:db8::7')

  const v2 = proxyV2({ src, dst })
  await check('v2 INET, same write', [Buffer.concat([v2, Buffer.from(getRequest('/v2'))])], '198.51.100.7')
  await check('v2 INET, split inside the signature', [v2.subarray(0, 5), v2.subarray(5, 20), Buffer.concat([v2.subarray(20), Buffer.from(getRequest('/v2s'))])], '198.51.100.7', { gapMs: 50 })
  const v2tlv = proxyV2({ src, dst, tlvs: Buffer.from([0x04, 0x00, 0x03, 0x61, 0x62, 0x63]) })
  await check('v2 INET with a TLV', [Buffer.concat([v2tlv, Buffer.from(getRequest('/v2t'))])], '198.51.100.7')
  const v6 = proxyV2({ src: { address: '2001:db8::7', port: 5555 }, dst: { address: '::1', port: p.port } })
  await check('v2 INET6', [Buffer.concat([v6, Buffer.from(getRequest('/v6'))])], '2001:db8::7')
  await check('v2 LOCAL (addresses ignored)', [Buffer.concat([proxyV2({ command: 'local', src, dst }), Buffer.from(getRequest('/local'))])], '127.0.0.1')
  await check('v2 LOCAL without addresses', [Buffer.concat([proxyV2({ command: 'local' }), Buffer.from(getRequest('/local0'))])], '127.0.0.1')
  await check('v1 UNKNOWN', [Buffer.concat([proxyV1Unknown(), Buffer.from(getRequest('/unknown'))])], '127.0.0.1')

  // pipelined requests after the header, in the same write: both answered, in order
  const piped = await rawRequest(p.port, [Buffer.concat([v2, Buffer.from(getRequest('/p1', false) + getRequest('/p2'))])])
  const responses = parseResponses(piped.text)
  t.same(responses.map((r) => r.status), [200, 200], 'two pipelined requests after the header: two 200s')
  t.same(responses.map((r) => echoOf(r).url), ['/p1', '/p2'], 'in order')
  t.same(responses.map((r) => echoOf(r).headers['x-forwarded-for']), ['198.51.100.7', '198.51.100.7'], 'both carry the PROXY source')

  // the PROXY source is the client: an XFF the client adds is replaced (nobody trusted)
  const forged = await rawRequest(p.port, [Buffer.concat([v1, Buffer.from(getRequest('/forged', true, 'X-Forwarded-For: 1.2.3.4\r\n'))])])
  t.equal(echoOf(parseResponses(forged.text)[0]).headers['x-forwarded-for'], '198.51.100.7', 'a client\'s XFF behind an untrusted PROXY source is replaced')
})

t.test('PROXY: a connection without a valid header is closed with no response; silence times out', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, { listen: { host: '127.0.0.1', port: 0, proxyProtocol: true }, timeouts: { clientHeadersMs: 300 } })
  const wires = [countWire(ups.stable!.server), countWire(ups.canary!.server)]
  const upstreamBytes = (): number => wires.reduce((n, w) => n + w.bytes, 0)
  const seenBefore = ups.stable!.seen.length + ups.canary!.seen.length

  const badV2 = proxyV2({ src: { address: '198.51.100.7', port: 1 }, dst: { address: '127.0.0.1', port: p.port } })
  badV2[12] = 0x11 // version 1 in the v2 version/command byte
  const random = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 97 + 13) & 0xff))
  random[0] = 0xa5
  const garbage: Array<[string, Buffer]> = [
    ['plain HTTP without a header', Buffer.from(getRequest('/plain'))],
    ['PROXY TCP4 bad', Buffer.from('PROXY TCP4 bad\r\n' + getRequest('/bad'))],
    ['random bytes', random],
    ['v2 with version 1', Buffer.concat([badV2, Buffer.from(getRequest('/badv2'))])],
    ['TLS ClientHello-like bytes', Buffer.from([0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00, 0x00, 0x0c])],
    ['v1 with lower-case proxy', Buffer.from('proxy TCP4 1.2.3.4 127.0.0.1 1 2\r\n' + getRequest('/lc'))],
    ['v2 announcing 64 KiB', (() => { const b = Buffer.from(badV2); b[12] = 0x21; b.writeUInt16BE(0xffff, 14); return b })()],
    ['v1 line of 200 bytes', Buffer.from(`PROXY TCP4 ${'1'.repeat(200)}`)]
  ]
  const before = await connErrors(p, 'proxy_protocol')
  const timeoutsBefore = await connErrors(p, 'prelude_timeout')
  for (const [name, bytes] of garbage) {
    t.equal(parseProxyHeader(bytes).state, 'invalid', `${name}: the parser says invalid (fixture check)`)
    const start = Date.now()
    const r = await rawRequest(p.port, [bytes], { waitMs: 3000 })
    t.ok(r.closed, `${name}: connection closed`)
    t.equal(r.text.length, 0, `${name}: not one response byte`)
    t.ok(Date.now() - start < 250, `${name}: closed at once, not after the timeout (${Date.now() - start} ms)`)
  }
  t.equal(await connErrors(p, 'proxy_protocol') - before, garbage.length, `proxy_protocol errors grew by ${garbage.length}`)

  // nothing sent; a truncated v1 or v2 header, then silence: closed after clientHeadersMs (300 ms)
  const v1 = proxyV1({ address: '198.51.100.7', port: 1 }, { address: '127.0.0.1', port: p.port })
  const v2 = proxyV2({ src: { address: '198.51.100.7', port: 1 }, dst: { address: '127.0.0.1', port: p.port } })
  const silent: Array<[string, Array<string | Buffer>]> = [
    ['nothing sent', []],
    ['truncated v1 header', [v1.subarray(0, 20)]],
    ['v1 header without its LF', [v1.subarray(0, v1.length - 1)]],
    ['truncated v2 header', [v2.subarray(0, 20)]],
    ['v2 signature only', [v2.subarray(0, 12)]],
    // one byte every 100 ms: activity does not extend the deadline (slowloris)
    ['v1 header dribbled a byte per 100 ms', [...v1].map((b) => Buffer.from([b]))]
  ]
  for (const [name, parts] of silent) {
    const start = Date.now()
    const r = await rawRequest(p.port, parts, { waitMs: 3000, gapMs: 100 })
    const ms = Date.now() - start
    t.ok(r.closed, `${name}: closed by the proxy`)
    t.equal(r.text.length, 0, `${name}: not one response byte`)
    t.ok(ms >= 250 && ms < 1500, `${name}: closed after ~300 ms (${ms} ms)`)
  }
  t.equal(await connErrors(p, 'prelude_timeout') - timeoutsBefore, silent.length, `prelude_timeout errors grew by ${silent.length}`)
  t.equal(await connErrors(p, 'proxy_protocol') - before, garbage.length, 'timeouts are not counted as invalid headers')

  t.equal(ups.stable!.seen.length + ups.canary!.seen.length, seenBefore, 'the upstreams saw no request')
  t.equal(upstreamBytes(), 0, 'not one byte reached an upstream')

  // the listener is fine afterwards
  const ok = await rawRequest(p.port, [Buffer.concat([v1, Buffer.from(getRequest('/after'))])])
  t.equal(ok.status, 200, 'a valid connection after the garbage: 200')
})

t.test('PROXY + trustedProxies: the PROXY source is the peer whose XFF is believed', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, { listen: { host: '127.0.0.1', port: 0, proxyProtocol: true }, trustedProxies: ['10.0.0.0/8'] })
  const hdr = proxyV1({ address: '10.1.1.1', port: 4000 }, { address: '127.0.0.1', port: p.port })
  const { result, line } = await accessOf(p, async () => await rawRequest(p.port, [Buffer.concat([hdr, Buffer.from(getRequest('/pt', true, 'X-Forwarded-For: 203.0.113.50\r\nX-Forwarded-Proto: https\r\n'))])]))
  t.equal(result.status, 200)
  const echo = echoOf(parseResponses(result.text)[0])
  t.equal(echo.headers['x-forwarded-for'], '203.0.113.50, 10.1.1.1', 'XFF kept, the PROXY source appended')
  t.equal(echo.headers['x-forwarded-proto'], 'https', 'the trusted hop\'s X-Forwarded-Proto kept')
  t.equal(line.client, '203.0.113.50', 'access log: client from XFF behind the trusted PROXY source')
  t.equal(echo.version, expectedVersion(p, '203.0.113.50'), 'ip sticky key 203.0.113.50')

  // the TCP peer (127.0.0.1) is not what is trusted: an untrusted PROXY source gets its XFF replaced
  const outside = proxyV1({ address: '198.51.100.9', port: 4000 }, { address: '127.0.0.1', port: p.port })
  const { result: r2, line: l2 } = await accessOf(p, async () => await rawRequest(p.port, [Buffer.concat([outside, Buffer.from(getRequest('/pu', true, 'X-Forwarded-For: 203.0.113.50\r\n'))])]))
  t.equal(echoOf(parseResponses(r2.text)[0]).headers['x-forwarded-for'], '198.51.100.9', 'untrusted PROXY source: XFF replaced by it')
  t.equal(l2.client, '198.51.100.9')
})

t.test('PROXY + TLS: the v2 header, then TLS on the same socket (HTTP/1.1 and h2)', { skip: opensslSkip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-client-address-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const ca = makeCa(dir, 'ca')
  const leaf = makeLeaf(dir, 'leaf', ca, { cn: 'localhost', dns: ['localhost'], ip: ['127.0.0.1'] })
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, {
    listen: { host: '127.0.0.1', port: 0, proxyProtocol: true, tls: { certFile: leaf.certPath, keyFile: leaf.keyPath } },
    timeouts: { clientHeadersMs: 2000 }
  })
  const sockets: TLSSocket[] = []
  t.teardown(() => { for (const s of sockets) s.destroy() })

  /** A TCP connection that sends `header`, then a TLS handshake over it. */
  const proxiedTls = async (header: Buffer, alpn: string[]): Promise<TLSSocket> => {
    const raw = netConnect(p.port, '127.0.0.1')
    await once(raw, 'connect')
    raw.write(header)
    const tls = tlsConnect({ socket: raw, servername: 'localhost', ca: ca.cert, ALPNProtocols: alpn })
    sockets.push(tls)
    await once(tls, 'secureConnect')
    return tls
  }
  const src = { address: '198.51.100.77', port: 6000 }
  const header = proxyV2({ src, dst: { address: '127.0.0.1', port: p.port } })

  // HTTP/1.1 over the TLS socket
  const tls1 = await proxiedTls(header, ['http/1.1'])
  t.equal(tls1.alpnProtocol, 'http/1.1')
  const { result: r1, line: l1 } = await accessOf(p, async () => await getOver(tls1, '/tls1'))
  t.equal(r1.status, 200, 'https GET through PROXY v2 + TLS: 200')
  const e1 = JSON.parse(r1.body) as Echo
  t.equal(e1.headers['x-forwarded-for'], '198.51.100.77', 'upstream XFF is the PROXY source')
  t.equal(e1.headers['x-forwarded-proto'], 'https', 'proto https')
  t.equal(l1.client, '198.51.100.77', 'access log client is the PROXY source')

  // h2 over the TLS socket
  const tls2 = await proxiedTls(proxyV2({ src: { address: '2001:db8::77', port: 6001 }, dst: { address: '::1', port: p.port } }), ['h2'])
  t.equal(tls2.alpnProtocol, 'h2', 'ALPN h2')
  const session = http2Connect(`https://localhost:${p.port}`, { createConnection: () => tls2 })
  t.teardown(() => { session.destroy() })
  const { result: r2, line: l2 } = await accessOf(p, async () => await new Promise<{ status: number, body: string }>((resolve, reject) => {
    const stream = session.request({ ':method': 'GET', ':path': '/h2' })
    let status = 0
    let body = ''
    stream.setEncoding('utf8')
    stream.on('response', (h) => { status = Number(h[':status']) })
    stream.on('data', (c: string) => { body += c })
    stream.on('end', () => { resolve({ status, body }) })
    stream.on('error', reject)
    stream.end()
  }))
  session.close()
  t.equal(r2.status, 200, 'h2 GET through PROXY v2 + TLS: 200')
  const e2 = JSON.parse(r2.body) as Echo
  t.equal(e2.headers['x-forwarded-for'], '2001:db8::77', 'h2: upstream XFF is the PROXY source (INET6)')
  t.equal(e2.headers['x-forwarded-proto'], 'https', 'h2: proto https')
  t.equal(l2.client, '2001:db8::77', 'h2: access log client is the PROXY source')

  // the header and the ClientHello in one segment: the TLS server gets the bytes read past the header
  const raw = netConnect(p.port, '127.0.0.1')
  await once(raw, 'connect')
  let first = true
  const glued = new Duplex({
    write (chunk: Buffer, _enc, cb) {
      raw.write(first ? Buffer.concat([header, chunk]) : chunk, cb)
      first = false
    },
    read () { raw.resume() },
    final (cb) { raw.end(cb) }
  })
  raw.on('data', (d: Buffer) => { if (!glued.push(d)) raw.pause() })
  raw.on('end', () => { glued.push(null) })
  raw.on('close', () => { glued.destroy() })
  const tls3 = tlsConnect({ socket: glued, servername: 'localhost', ca: ca.cert, ALPNProtocols: ['http/1.1'] })
  sockets.push(tls3)
  t.teardown(() => { raw.destroy() })
  await once(tls3, 'secureConnect')
  t.equal(first, false, 'the header went out glued to the ClientHello')
  const { result: r3, line: l3 } = await accessOf(p, async () => await getOver(tls3, '/tls3'))
  t.equal(r3.status, 200, 'header + ClientHello in one write: 200')
  t.equal((JSON.parse(r3.body) as Echo).headers['x-forwarded-for'], '198.51.100.77', 'and the PROXY source is the client')
  t.equal(l3.client, '198.51.100.77')

  // a TLS ClientHello without the PROXY header first is refused as an invalid header, not a TLS error
  const before = await connErrors(p, 'proxy_protocol')
  const tlsBefore = await connErrors(p, 'tls_handshake')
  const bare = tlsConnect({ host: '127.0.0.1', port: p.port, servername: 'localhost', ca: ca.cert })
  sockets.push(bare)
  const outcome = await new Promise<string>((resolve) => {
    bare.once('secureConnect', () => { resolve('handshake') })
    bare.once('error', () => { resolve('error') })
    bare.once('close', () => { resolve('closed') })
  })
  t.not(outcome, 'handshake', 'TLS without a PROXY header never completes')
  await waitFor(async () => await connErrors(p, 'proxy_protocol') === before + 1, { timeoutMs: 3000 })
  t.equal(await connErrors(p, 'tls_handshake'), tlsBefore, 'not counted as a TLS failure')
})

t.test('fuzz: mutated PROXY headers over the live listener answer only when the header parses', async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startApp(t, ups, { listen: { host: '127.0.0.1', port: 0, proxyProtocol: true }, timeouts: { clientHeadersMs: 300 } })
  const dst4 = { address: '127.0.0.1', port: p.port }
  const dst6 = { address: '::1', port: p.port }
  const seeds: Buffer[] = [
    proxyV1({ address: '198.51.100.7', port: 5555 }, dst4),
    proxyV1({ address: '2001:db8::7', port: 5555 }, dst6),
    proxyV1Unknown(),
    Buffer.from('PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n', 'latin1'),
    proxyV2({ src: { address: '198.51.100.7', port: 5555 }, dst: dst4 }),
    proxyV2({ src: { address: '2001:db8::7', port: 5555 }, dst: dst6 }),
    proxyV2({ command: 'local' }),
    proxyV2({ src: { address: '198.51.100.7', port: 5555 }, dst: dst4, tlvs: Buffer.from([0x01, 0x00, 0x02, 0x68, 0x32]) })
  ]
  const SPECIAL = [0x00, 0x0a, 0x0d, 0x20, 0x2e, 0x3a, 0x30, 0x39, 0x21, 0x11, 0x20, 0xff, 0x50]
  const seed = 0xc11e47
  const rnd = prng(seed)
  const pick = (n: number): number => Math.floor(rnd() * n)
  const mutate = (src: Buffer): Buffer => {
    let b = Buffer.from(src)
    const ops = 1 + pick(3)
    for (let k = 0; k < ops; k++) {
      const at = pick(b.length + 1)
      switch (pick(7)) {
        case 0: if (at < b.length) b[at] = b[at]! ^ (1 << pick(8)); break
        case 1: if (at < b.length) b[at] = pick(256); break
        case 2: if (at < b.length) b[at] = SPECIAL[pick(SPECIAL.length)]!; break
        case 3: b = Buffer.concat([b.subarray(0, at), Buffer.from([pick(2) === 0 ? pick(256) : SPECIAL[pick(SPECIAL.length)]!]), b.subarray(at)]); break
        case 4: b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + pick(3)))]); break
        case 5: b = b.subarray(0, at); break
        default: {
          // v2 length field, or a v1 digit: the parts framing depends on
          if (b.length > 15 && b[0] === 0x0d) b.writeUInt16BE(pick(2) === 0 ? pick(64) : pick(65536), 14)
          else if (at < b.length) b[at] = 0x30 + pick(10)
        }
      }
    }
    return b
  }

  const N = 300
  const CONCURRENCY = 40
  const cases = Array.from({ length: N }, (_, i) => {
    const head = i < seeds.length ? seeds[i]! : mutate(seeds[pick(seeds.length)]!)
    const bytes = Buffer.concat([head, Buffer.from(getRequest(`/f${i}`))])
    return { i, head, bytes, verdict: parseProxyHeader(bytes) }
  })
  const count = { done: 0, invalid: 0, more: 0 }
  for (const c of cases) count[c.verdict.state]++
  t.comment(`fuzz seed ${seed}: ${JSON.stringify(count)}`)
  t.ok(count.done >= 20 && count.invalid >= 50 && count.more >= 3, 'the mutations reach all three verdicts')

  const ppBefore = await connErrors(p, 'proxy_protocol')
  const toBefore = await connErrors(p, 'prelude_timeout')
  const start = Date.now()
  const replies: RawReply[] = new Array<RawReply>(N)
  let next = 0
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < N) {
      const c = cases[next++]!
      replies[c.i] = await rawRequest(p.port, [c.bytes], { waitMs: 2000 })
    }
  }))
  const ms = Date.now() - start
  t.ok(ms < 5000, `${N} connections in ${ms} ms`)

  const failures: string[] = []
  let exact200 = 0
  for (const c of cases) {
    const r = replies[c.i]!
    if (c.verdict.state !== 'done') {
      if (r.text.length !== 0 || !r.closed) failures.push(`#${c.i} ${c.verdict.state}: ${r.text.length} bytes back, closed=${r.closed}; header ${JSON.stringify(c.head.toString('latin1'))}`)
    } else if (c.verdict.length === c.head.length) {
      // the header parsed and ended exactly where the request starts: it must be served
      if (r.status !== 200) failures.push(`#${c.i} done at the request: status ${r.status}; header ${JSON.stringify(c.head.toString('latin1'))}`)
      else exact200++
    }
  }
  t.same(failures.slice(0, 10), [], `no response without a valid header; a valid header then a valid request is served (${failures.length} failures)`)
  t.ok(exact200 >= 10, `${exact200} valid headers served`)
  t.equal(await connErrors(p, 'proxy_protocol') - ppBefore, count.invalid, 'proxy_protocol errors grew by exactly the invalid verdicts')
  t.equal(await connErrors(p, 'prelude_timeout') - toBefore, count.more, 'prelude_timeout errors grew by exactly the incomplete headers')

  // still alive and serving
  const ok = await rawRequest(p.port, [Buffer.concat([seeds[0]!, Buffer.from(getRequest('/alive'))])])
  t.equal(ok.status, 200, 'a normal request after the fuzz: 200')
})
