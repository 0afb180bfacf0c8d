/**
 * Regression tests for what the second reading of the edge listener found
 * (each was reproduced against the build before its fix): HTTP/2 body
 * stalls hidden by other traffic on the session, upstream headers HTTP/2
 * refuses, cookie crumbs counted as fields, Expect answered before routing,
 * a reset during the PROXY header counted as a timeout, and a reload to an
 * expired certificate.
 */
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { connect as h2connect, type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2'
import { connect as netConnect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as tlsConnect } from 'node:tls'
import t from 'tap'
import { makeCa, makeDated, makeLeaf, opensslSkip } from '../helpers/certs.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { fileProxy, postReload, sleep, until } from '../helpers/reload.js'
import { startUpstream } from '../helpers/upstream.js'

const H2C = { host: '127.0.0.1', port: 0, h2c: true }

interface H2Reply { status: number, headers: IncomingHttpHeaders, body: string, continued: boolean }

/** One h2 request; `body` written after 'continue' when the request expects it, else at once. Bounded by 5 s. */
async function h2 (s: ClientHttp2Session, headers: OutgoingHttpHeaders, body?: string): Promise<H2Reply> {
  return await new Promise<H2Reply>((resolve, reject) => {
    const expect = headers.expect === '100-continue'
    const r = s.request(headers, { endStream: body === undefined })
    const out: H2Reply = { status: 0, headers: {}, body: '', continued: false }
    const timer = setTimeout(() => { r.close(); reject(new Error('h2 request timed out')) }, 5000)
    r.on('continue', () => { out.continued = true; r.end(body) })
    if (body !== undefined && !expect) r.end(body)
    r.on('response', (h) => { out.status = Number(h[':status']); out.headers = h })
    r.setEncoding('utf8')
    r.on('data', (d: string) => { out.body += d })
    r.on('end', () => { clearTimeout(timer); resolve(out) })
    r.on('error', (err) => { clearTimeout(timer); reject(err) })
  })
}

t.test('h2: a stalled request body is answered 408 even while the session stays busy (PINGs), and released', async (t) => {
  const up = await startUpstream('stable')
  const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: H2C, timeouts: { clientBodyMs: 500, upstreamResponseMs: 10_000, upstreamBodyMs: 10_000 } }))
  t.teardown(async () => { await p.close(); await up.close() })
  const s = h2connect(`http://127.0.0.1:${p.app.proxyAddress!.port}`)
  s.on('error', () => {})
  t.teardown(() => { s.destroy() })
  const r = s.request({ ':method': 'POST', ':path': '/stall', 'content-length': '100' }, { endStream: false })
  r.on('error', () => {})
  r.write('x')
  let status = 0
  r.on('response', (h) => { status = Number(h[':status']) })
  r.resume()
  // the session's socket keeps moving: a stall measured on it would never be seen
  const pings = setInterval(() => { if (!s.destroyed) s.ping(() => {}) }, 150)
  t.teardown(() => { clearInterval(pings) })
  const start = Date.now()
  t.ok(await until(() => status !== 0, 3000), 'answered while PINGs flow')
  t.equal(status, 408, '408: the stream\'s own body stalled')
  t.ok(Date.now() - start < 2500, `within 2 × clientBodyMs and slack (${Date.now() - start} ms)`)
  t.ok(await until(() => p.app.proxy.inFlight === 0, 2000), 'the request is released')
})

t.test('h2: upstream response headers HTTP/2 refuses never leave the request hanging', async (t) => {
  const up = await startUpstream('stable', (req, res) => {
    if (req.url === '/settings') res.writeHead(200, { 'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA', 'content-type': 'text/plain' })
    else res.writeHead(200, ['content-type', 'text/plain', 'content-type', 'text/html'])
    res.end('body')
  })
  const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: H2C }))
  t.teardown(async () => { await p.close(); await up.close() })
  const s = h2connect(`http://127.0.0.1:${p.app.proxyAddress!.port}`)
  s.on('error', () => {})
  t.teardown(() => { s.destroy() })
  const a = await h2(s, { ':path': '/settings' })
  t.equal(a.status, 200, 'HTTP2-Settings (hop-by-hop) is dropped: 200')
  t.equal(a.headers['http2-settings'], undefined)
  t.equal(a.body, 'body')
  const b = await h2(s, { ':path': '/dup' })
  t.equal(b.status, 502, 'a repeated single-value header HTTP/2 refuses: a clean 502')
  t.match(b.body, /CANARYD_ERR_UPSTREAM_PROTOCOL/)
  t.notOk(b.headers['content-type'] === 'text/html', 'none of the refused headers leak into the 502')
  t.ok(await until(() => p.app.proxy.inFlight === 0, 2000), 'nothing left in flight')
})

t.test('h2: cookie crumbs count as one field (as over HTTP/1.1), so a browser\'s many cookies pass', async (t) => {
  const up = await startUpstream('stable')
  const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: H2C }))
  t.teardown(async () => { await p.close(); await up.close() })
  const s = h2connect(`http://127.0.0.1:${p.app.proxyAddress!.port}`)
  s.on('error', () => {})
  t.teardown(() => { s.destroy() })
  const headers: OutgoingHttpHeaders = { ':path': '/many', cookie: Array.from({ length: 60 }, (_, i) => `c${i}=v${i}`) }
  for (let i = 0; i < 45; i++) headers[`x-h${i}`] = String(i)
  const r = await h2(s, headers)
  t.equal(r.status, 200, '60 cookie crumbs + 45 fields (limit 100) → 200')
  const seen = up.seen.at(-1)!
  t.equal(seen.rawHeaders.filter((_, i) => i % 2 === 0 && seen.rawHeaders[i]!.toLowerCase() === 'cookie').length, 1, 'one Cookie upstream')
  t.equal(String(seen.headers.cookie).split('; ').length, 60, 'with all 60 crumbs')
  const over: OutgoingHttpHeaders = { ':path': '/over' }
  for (let i = 0; i < 110; i++) over[`x-h${i}`] = String(i)
  t.equal((await h2(s, over)).status, 431, '110 plain fields: still 431')
})

t.test('h2: Expect 100-continue only for a request canaryd accepts; another expectation is 417 JSON', async (t) => {
  const up = await startUpstream('stable')
  const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0], { match: { pathPrefix: '/app' } })], { listen: H2C }))
  t.teardown(async () => { await p.close(); await up.close() })
  const s = h2connect(`http://127.0.0.1:${p.app.proxyAddress!.port}`)
  s.on('error', () => {})
  t.teardown(() => { s.destroy() })
  const refused = await h2(s, { ':method': 'POST', ':path': '/elsewhere', expect: '100-continue', 'content-length': '2' }, 'hi').catch(() => undefined)
  t.equal(refused?.continued, false, 'no 100 Continue for a request with no route')
  t.equal(refused?.status, 404)
  const ok = await h2(s, { ':method': 'POST', ':path': '/app/x', expect: '100-continue', 'content-length': '2' }, 'hi')
  t.equal(ok.continued, true, '100 Continue for an accepted request')
  t.equal(ok.status, 200)
  t.equal(up.seen.at(-1)?.bodyBytes, 2, 'its body reached the upstream')
  const odd = await h2(s, { ':path': '/app/y', expect: 'something-else' })
  t.equal(odd.status, 417)
  t.match(odd.body, /CANARYD_ERR_EXPECTATION_FAILED/)
})

t.test('PROXY header: a client that resets mid-header is gone at once, not a prelude timeout', async (t) => {
  const up = await startUpstream('stable')
  const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, proxyProtocol: true }, timeouts: { clientHeadersMs: 5000 } }))
  t.teardown(async () => { await p.close(); await up.close() })
  for (let i = 0; i < 5; i++) {
    const c = netConnect(p.app.proxyAddress!.port, '127.0.0.1')
    c.on('error', () => {})
    await new Promise<void>((resolve) => c.once('connect', () => resolve()))
    c.write('PROXY TCP4 ')
    await sleep(30)
    c.resetAndDestroy()
  }
  t.ok(await until(() => p.app.data.listener!.connections === 0, 2000), 'every connection released well before clientHeadersMs (5 s)')
  t.equal(p.app.data.listener!.errors.prelude_timeout, 0, 'none counted as a prelude timeout')
})

t.test('a reload to an expired certificate is refused; the one in service stays', { skip: opensslSkip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-expired-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const ca = makeCa(dir, 'ca')
  const good = makeLeaf(dir, 'good', ca, { cn: 'good.test' })
  const old = makeDated(dir, 'old.test', '20200101000000Z', '20200102000000Z')
  const live = { cert: join(dir, 'live.pem'), key: join(dir, 'live-key.pem') }
  copyFileSync(good.certPath, live.cert)
  copyFileSync(good.keyPath, live.key)
  const up = await startUpstream('stable')
  t.teardown(async () => { await up.close() })
  const p = await fileProxy(t, [twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, tls: { certFile: live.cert, keyFile: live.key } } })
  const san = async (): Promise<string> => await new Promise<string>((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port: p.app.proxyAddress!.port, servername: 'good.test', rejectUnauthorized: false })
    s.on('secureConnect', () => { resolve(s.getPeerCertificate().subjectaltname ?? ''); s.destroy() })
    s.on('error', reject)
  })
  t.match(await san(), /good\.test/)
  copyFileSync(old.certPath, live.cert)
  copyFileSync(old.keyPath, live.key)
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 400, 'the reload is refused')
  t.match(r.body.toString(), /listen\.tls\.certFile: .*expired/, 'naming the key and saying it expired')
  t.match(await san(), /good\.test/, 'new handshakes still get the certificate in service')
})

t.test('listen.proxyProtocolTrustedIPs: a peer outside it is closed before a byte is read; a listed one is served', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(async () => { await up.close() })
  const open = async (senders: string[]): Promise<{ port: number, close: () => Promise<void>, errors: () => number }> => {
    const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, proxyProtocol: true, proxyProtocolTrustedIPs: senders } }))
    return { port: p.app.proxyAddress!.port, close: p.close, errors: () => p.app.data.listener!.errors.proxy_protocol }
  }
  const ask = async (port: number): Promise<string> => await new Promise<string>((resolve) => {
    const c = netConnect(port, '127.0.0.1', () => { c.write('PROXY TCP4 203.0.113.5 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n') })
    let got = ''
    c.on('data', (d: Buffer) => { got += d.toString('latin1') })
    c.on('close', () => { resolve(got) })
    c.on('error', () => {})
    setTimeout(() => { c.destroy() }, 3000).unref()
  })
  const denied = await open(['10.0.0.0/8'])
  t.teardown(denied.close)
  const before = up.seen.length
  t.equal(await ask(denied.port), '', 'from 127.0.0.1, not a listed sender: closed with no byte answered')
  t.equal(up.seen.length, before, 'nothing reached the upstream')
  t.equal(denied.errors(), 1, 'counted as a proxy_protocol connection error')
  const allowed = await open(['loopback'])
  t.teardown(allowed.close)
  const answer = await ask(allowed.port)
  t.match(answer, /^HTTP\/1\.1 200 /, 'a listed sender is served')
  t.equal(up.seen.at(-1)?.headers['x-forwarded-for'], '203.0.113.5', 'with the PROXY header\'s source as the client')
  t.throws(() => testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, proxyProtocol: true, proxyProtocolTrustedIPs: ['10.0.0.0/40'] } }), /listen\.proxyProtocolTrustedIPs\[0\]/, 'a bad entry names its index')
  t.throws(() => testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, proxyProtocolTrustedIPs: ['10.0.0.0/8'] } }), /needs listen\.proxyProtocol/, 'without proxyProtocol it is an error')
})

t.test('timeouts.clientSendMs: a client that stops reading its response is cut and the upstream request aborted (HTTP/1.1 and h2)', async (t) => {
  let cut = 0
  const chunk = Buffer.alloc(64 * 1024, 120)
  const up = await startUpstream('stable', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    // an endless download, written as fast as the proxy takes it
    const pump = (): void => { while (!res.destroyed && res.write(chunk)); }
    res.on('drain', pump)
    res.on('close', () => { if (!res.writableEnded) cut++ })
    pump()
  })
  const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: H2C, timeouts: { clientSendMs: 500 } }))
  t.teardown(async () => { await p.close(); await up.close() })
  const port = p.app.proxyAddress!.port

  // HTTP/1.1: the request is sent, then nothing is ever read
  const c = netConnect(port, '127.0.0.1', () => { c.write('GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n') })
  c.pause()
  c.on('error', () => {})
  t.teardown(() => { c.destroy() })
  t.ok(await until(() => cut === 1, 4000), 'the upstream response is aborted once the client read nothing for clientSendMs')
  // (a paused client socket cannot see the close: canaryd's side of it is what is asserted)
  t.ok(await until(() => p.app.data.listener!.connections === 0, 2000), 'and canaryd closed the client connection')

  // h2: a stream whose client never reads (its window fills)
  const s = h2connect(`http://127.0.0.1:${port}`)
  s.on('error', () => {})
  t.teardown(() => { s.destroy() })
  const r = s.request({ ':path': '/big2' })
  r.on('error', () => {})
  r.pause()
  let rst = -1
  r.on('close', () => { rst = r.rstCode ?? 0 })
  t.ok(await until(() => cut === 2, 4000), 'the h2 stream\'s upstream response is aborted once it read nothing for clientSendMs')
  r.resume()
  t.ok(await until(() => rst !== -1, 2000), 'the stream was reset by canaryd')
  t.not(rst, 0, `with an error code (${rst}), not a clean end`)
  t.ok(await until(() => p.app.proxy.inFlight === 0, 2000), 'nothing left in flight')
})
