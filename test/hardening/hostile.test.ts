/**
 * Hostile input: each case is written byte for byte on a raw socket. For every
 * refused case the test asserts the status line, that the connection is closed,
 * that not one byte reached either upstream, and that a normal request still
 * succeeds afterwards. Cases are drawn from the request-smuggling literature
 * (PortSwigger's CL.TE / TE.CL / TE.TE classes, HAProxy's http-messaging
 * reg-tests, llhttp's corpus, HTTP Garden findings) and written from scratch.
 */
import { connect } from 'node:net'
import t from 'tap'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'
import { countWire, rawRequest, sleep, waitFor } from './raw.js'

const H = 'Host: app.test\r\n'
const get = (extra: string, target = '/'): string => `GET ${target} HTTP/1.1\r\n${H}${extra}\r\n`
const post = (extra: string, body: string): string => `POST / HTTP/1.1\r\n${H}${extra}\r\n${body}`

/** [class, name, raw request, expected status]. */
const REFUSED: Array<[string, string, string | Buffer, number]> = [
  // framing: Content-Length and Transfer-Encoding (CL.TE, TE.CL, TE.TE)
  ['framing', 'CL then TE: chunked (CL.TE)', post('Content-Length: 6\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\nG'), 400],
  ['framing', 'TE: chunked then CL (TE.CL)', post('Transfer-Encoding: chunked\r\nContent-Length: 3\r\n', '8\r\nSMUGGLED\r\n0\r\n\r\n'), 400],
  ['framing', 'TE: chunked, chunked', post('Transfer-Encoding: chunked, chunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'two Transfer-Encoding fields', post('Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'TE: gzip (not chunked): a coding the proxy does not implement', post('Transfer-Encoding: gzip\r\n', 'abc'), 501],
  ['framing', 'TE: gzip, chunked', post('Transfer-Encoding: gzip, chunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'TE: ,chunked', post('Transfer-Encoding: ,chunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'TE: identity (obsolete coding)', post('Transfer-Encoding: identity\r\n', ''), 501],
  ['framing', 'TE: xchunked', post('Transfer-Encoding: xchunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'TE: chunked with a vertical tab', post('Transfer-Encoding: \x0bchunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'space before the colon (Transfer-Encoding : chunked)', post('Transfer-Encoding : chunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'obs-fold TE line ( Transfer-Encoding: chunked)', post('X-A: b\r\n Transfer-Encoding: chunked\r\n', '0\r\n\r\n'), 400],
  ['framing', 'TE: chunked in HTTP/1.0', `POST / HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 400],
  ['framing', 'duplicate Content-Length, same value', post('Content-Length: 3\r\nContent-Length: 3\r\n', 'abc'), 400],
  ['framing', 'conflicting Content-Length values', post('Content-Length: 3\r\nContent-Length: 4\r\n', 'abcd'), 400],
  ['framing', 'Content-Length list "3, 3"', post('Content-Length: 3, 3\r\n', 'abc'), 400],
  ['framing', 'Content-Length: -1', post('Content-Length: -1\r\n', 'abc'), 400],
  ['framing', 'Content-Length: +3', post('Content-Length: +3\r\n', 'abc'), 400],
  ['framing', 'Content-Length: 0x03', post('Content-Length: 0x03\r\n', 'abc'), 400],
  ['framing', 'Content-Length: "1 2"', post('Content-Length: 1 2\r\n', 'abc'), 400],
  ['framing', 'Content-Length overflowing 64 bits', post('Content-Length: 99999999999999999999999\r\n', 'abc'), 400],
  // chunked bodies
  ['chunks', 'chunk size not hex', post('Transfer-Encoding: chunked\r\n', 'zz\r\nabc\r\n0\r\n\r\n'), 400],
  ['chunks', 'negative chunk size', post('Transfer-Encoding: chunked\r\n', '-1\r\nabc\r\n0\r\n\r\n'), 400],
  ['chunks', 'chunk size overflowing 64 bits', post('Transfer-Encoding: chunked\r\n', 'fffffffffffffffffff\r\nabc\r\n0\r\n\r\n'), 400],
  ['chunks', 'chunk data longer than its size', post('Transfer-Encoding: chunked\r\n', '3\r\nabcdef\r\n0\r\n\r\n'), 400],
  ['chunks', 'chunk size with a space before it', post('Transfer-Encoding: chunked\r\n', ' 3\r\nabc\r\n0\r\n\r\n'), 400],
  ['chunks', 'chunk size line ended by bare LF', post('Transfer-Encoding: chunked\r\n', '3\nabc\r\n0\r\n\r\n'), 400],
  // header syntax
  ['headers', 'bare CR inside a header value', get('X-A: b\rc\r\n'), 400],
  ['headers', 'NUL inside a header value', get('X-A: b\x00c\r\n'), 400],
  ['headers', 'bare LF ending a header line', get('X-A: b\nX-B: c\r\n'), 400],
  ['headers', 'space before the colon (Host : …)', 'GET / HTTP/1.1\r\nHost : app.test\r\n\r\n', 400],
  ['headers', 'invalid character in a header name', get('X(A): b\r\n'), 400],
  ['headers', 'empty header name', get(': b\r\n'), 400],
  ['headers', 'non-ASCII header name', Buffer.from(get('X-\u00e9: b\r\n'), 'latin1'), 400],
  ['headers', 'obs-fold continuation line', get('X-A: b\r\n  c\r\n'), 400],
  ['headers', 'control character \\x01 in a value', get('X-A: b\x01c\r\n'), 400],
  ['headers', 'two Host fields', `GET / HTTP/1.1\r\n${H}Host: other.test\r\n\r\n`, 400],
  ['headers', 'no Host in HTTP/1.1', 'GET / HTTP/1.1\r\nX-A: b\r\n\r\n', 400],
  ['headers', 'a Trailer request field', post('Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n', '3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n'), 400],
  ['headers', 'Expect other than 100-continue', post('Content-Length: 3\r\nExpect: 200-ok\r\n', 'abc'), 417],
  ['headers', 'Expect: 100-continue-x (Node alone would take it as 100-continue)', post('Content-Length: 3\r\nExpect: 100-continue-x\r\n', 'abc'), 417],
  ['headers', 'Expect: foo, 100-continue (an expectation besides 100-continue)', post('Content-Length: 3\r\nExpect: foo, 100-continue\r\n', 'abc'), 417],
  // request line
  ['request line', 'invalid method token G@T', 'G@T / HTTP/1.1\r\nHost: app.test\r\n\r\n', 400],
  ['request line', 'lower-case method', 'get / HTTP/1.1\r\nHost: app.test\r\n\r\n', 400],
  ['request line', 'unknown HTTP version HTTP/2.0', 'GET / HTTP/2.0\r\nHost: app.test\r\n\r\n', 400],
  ['request line', 'garbage after the version', 'GET / HTTP/1.1x\r\nHost: app.test\r\n\r\n', 400],
  ['request line', 'HTTP/0.9 request', 'GET /\r\n\r\n', 400],
  ['request line', 'space inside the target', 'GET /a b HTTP/1.1\r\nHost: app.test\r\n\r\n', 400],
  ['request line', 'NUL inside the target', 'GET /a\x00b HTTP/1.1\r\nHost: app.test\r\n\r\n', 400],
  ['request line', 'relative target ../x', get('', '../x'), 400],
  ['request line', 'asterisk-form OPTIONS *', `OPTIONS * HTTP/1.1\r\n${H}\r\n`, 400],
  ['request line', 'CONNECT tunnel', 'CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n', 501],
  // protocol switches
  ['upgrade', 'Upgrade: h2c with Connection: Upgrade', get('Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n'), 400],
  ['upgrade', 'Upgrade: websocket on a POST', post('Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n', ''), 400],
  ['upgrade', 'Upgrade: unknown protocol', get('Connection: Upgrade\r\nUpgrade: smtp/1.0\r\n'), 400],
  // sizes
  ['limits', 'request target of 20 KB (over maxHeaderBytes)', get('', `/${'a'.repeat(20_000)}`), 431],
  ['limits', 'request target of 10 KB (over maxUrlBytes)', get('', `/${'a'.repeat(10_000)}`), 414],
  ['limits', 'one 20 KB header', get(`X-Big: ${'b'.repeat(20_000)}\r\n`), 431],
  ['limits', '101 header fields (over maxHeaderCount)', get(Array.from({ length: 100 }, (_, i) => `X-H${i}: v\r\n`).join('')), 431],
  ['limits', 'many small headers over 16 KB in total', get(Array.from({ length: 90 }, (_, i) => `X-H${i}: ${'v'.repeat(200)}\r\n`).join('')), 431]
]

t.test('hostile requests are refused and nothing reaches an upstream', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const wire = [countWire(stable.server), countWire(canary.server)]
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50])], {
    timeouts: { clientHeadersMs: 1000, upstreamResponseMs: 300 }
  }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const port = proxy.app.proxyAddress!.port
  const bytes = (): number => wire[0]!.bytes + wire[1]!.bytes
  t.ok(REFUSED.length >= 40, `${REFUSED.length} refused cases`)

  for (const [cls, name, payload, status] of REFUSED) {
    await t.test(`${cls}: ${name} → ${status}`, async (t) => {
      const before = bytes()
      const r = await rawRequest(port, [payload])
      t.equal(r.status, status, `status line (got ${JSON.stringify(r.text.slice(0, 60))})`)
      t.ok(r.closed, 'connection closed after the refusal')
      await sleep(20)
      t.equal(bytes() - before, 0, 'zero bytes reached an upstream')
      const ok = await send(`${proxy.url}/after`, { headers: { host: 'app.test', 'x-user-id': 'u-after' } })
      t.equal(ok.status, 200, 'a normal request still succeeds')
    })
  }
})

t.test('sanitised, not refused: forwarded with the dangerous part removed', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])], { timeouts: { upstreamResponseMs: 300 } }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const port = proxy.app.proxyAddress!.port
  const last = (): (typeof stable.seen)[number] => stable.seen[stable.seen.length - 1]!

  await t.test('Connection: close, X-Secret → X-Secret not forwarded', async (t) => {
    const r = await rawRequest(port, [get('Connection: close, X-Secret\r\nX-Secret: hunter2\r\n')])
    t.equal(r.status, 200)
    t.equal(last().headers['x-secret'], undefined)
    t.notOk(r.text.includes('hunter2'))
  })
  await t.test('underscore header dropped by default (as Envoy)', async (t) => {
    const r = await rawRequest(port, [get('Connection: close\r\nX_User_Id: admin\r\nX-User-Id: u1\r\n')])
    t.equal(r.status, 200)
    t.equal(last().rawHeaders.filter((h) => h.includes('_')).length, 0)
    t.equal(last().headers['x-user-id'], 'u1')
  })
  await t.test('Expect: 100-continue: 100 from the proxy, body forwarded, Expect not', async (t) => {
    const r = await rawRequest(port, [post('Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n', ''), 'hello'], { gapMs: 100 })
    t.match(r.text, /^HTTP\/1\.1 100 Continue\r\n/)
    t.equal(r.status, 200)
    t.equal(last().bodyBytes, 5)
    t.equal(last().headers.expect, undefined)
  })
  await t.test('Expect: 100-continue on a request that is refused: no 100, only the refusal', async (t) => {
    for (const [head, status] of [[`TRACE / HTTP/1.1\r\n${H}Content-Length: 5\r\nExpect: 100-continue\r\n\r\n`, 405], ['POST / HTTP/1.1\r\nHost: evil@app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n', 400]] as const) {
      const r = await rawRequest(port, [head])
      t.equal(r.status, status, `${head.split(' ')[0]}: ${status}`)
      t.notMatch(r.text, /100 Continue/, 'the client was never told to send its body')
    }
  })
  await t.test('absolute-form target never picks the upstream from the URL', async (t) => {
    const before = stable.seen.length
    const r = await rawRequest(port, [`GET http://127.0.0.1:1/x?y=1 HTTP/1.1\r\n${H}Connection: close\r\n\r\n`])
    t.equal(r.status, 200)
    t.equal(stable.seen.length, before + 1, 'the configured upstream got it')
    t.equal(last().url, '/x?y=1', 'origin-form path, authority dropped')
    t.equal(last().headers.host, 'app.test')
  })
  await t.test('Upgrade: h2c without Connection: Upgrade is a plain request; Upgrade not forwarded', async (t) => {
    const r = await rawRequest(port, [get('Upgrade: h2c\r\nConnection: close\r\n')])
    t.equal(r.status, 200)
    t.notMatch(r.text, /101/)
    t.equal(last().headers.upgrade, undefined)
  })
  await t.test('TE: trailers, Keep-Alive, Proxy-Connection not forwarded', async (t) => {
    const r = await rawRequest(port, [get('TE: trailers\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nConnection: close\r\n')])
    t.equal(r.status, 200)
    t.equal(last().headers.te, undefined)
    t.equal(last().headers['keep-alive'], undefined)
    t.equal(last().headers['proxy-connection'], undefined)
  })
  await t.test('Transfer-Encoding: chunked body arrives whole, re-framed by the proxy', async (t) => {
    const r = await rawRequest(port, [post('Transfer-Encoding: chunked\r\nConnection: close\r\n', '3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n')])
    t.equal(r.status, 200)
    t.equal(last().bodyBytes, 5)
  })
})

t.test('underscoreHeaders: reject → 400 and nothing forwarded', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const wire = countWire(stable.server)
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])], { limits: { underscoreHeaders: 'reject' } }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const r = await rawRequest(proxy.app.proxyAddress!.port, [get('X_Forwarded_For: 1.2.3.4\r\n')])
  t.equal(r.status, 400)
  t.equal(wire.bytes, 0)
  const trailer = await rawRequest(proxy.app.proxyAddress!.port, [get('Trailer: X-Sig\r\n')])
  t.equal(trailer.status, 400)
  const ok = await send(`${proxy.url}/`, { headers: { host: 'app.test' } })
  t.equal(ok.status, 200)
  // refused after routing: charged to the version the request was routed to
  t.match(await proxy.app.metrics!.registry.metrics(), /canaryd_requests_total\{route="web",version="stable",code="400",source="user"\} 2\b/, 'both 400s counted on stable')
})

t.test('underscoreHeaders: allow → forwarded as is', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])], { limits: { underscoreHeaders: 'allow' } }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const r = await rawRequest(proxy.app.proxyAddress!.port, [get('X_Tenant: a\r\nConnection: close\r\n')])
  t.equal(r.status, 200)
  t.equal(stable.seen[0]?.headers.x_tenant, 'a')
})

t.test('slowloris: headers not done in clientHeadersMs → 408, while other clients are served', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const wire = countWire(stable.server)
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])], { timeouts: { clientHeadersMs: 500 } }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const port = proxy.app.proxyAddress!.port
  const drip = Array.from({ length: 30 }, (_, i) => i === 0 ? `GET / HTTP/1.1\r\n${H}` : `X-Drip-${i}: ${i}\r\n`)
  const slow = rawRequest(port, drip, { gapMs: 100, waitMs: 5000 })
  await sleep(150)
  // served while the slow client is still dripping
  for (let i = 0; i < 3; i++) {
    const r = await send(`${proxy.url}/`, { headers: { host: 'app.test' } })
    t.equal(r.status, 200, `normal request ${i} served meanwhile`)
  }
  const bytesBefore = wire.bytes
  const r = await slow
  t.equal(r.status, 408)
  t.ok(r.closed)
  t.equal(wire.bytes, bytesBefore, 'nothing of the slow request reached the upstream')
})

t.test('a pipelined request behind a refused one is never processed', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const wire = countWire(stable.server)
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const r = await rawRequest(proxy.app.proxyAddress!.port, [post('Content-Length: 4\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\n') + get('', '/smuggled')])
  t.equal(r.status, 400)
  t.equal((r.text.match(/HTTP\/1\.1/g) ?? []).length, 1, 'one response only')
  t.equal(wire.bytes, 0)
})

t.test('CONNECT then a TCP reset never crashes the process; the proxy keeps serving', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const wire = countWire(stable.server)
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const port = proxy.app.proxyAddress!.port
  // reset at once (while the 501 is being written) and after the 501 arrived (the half-closed socket reads the RST)
  for (const when of ['at once', 'after the reply', 'at once', 'after the reply']) {
    await new Promise<void>((resolve) => {
      const s = connect(port, '127.0.0.1')
      s.on('error', () => {})
      s.on('close', () => resolve())
      s.on('connect', () => {
        s.write('CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n')
        if (when === 'at once') s.resetAndDestroy()
        else s.once('data', () => { s.resetAndDestroy() })
      })
    })
  }
  // give the proxy's event loop a chance to see the resets before asserting it survived
  await waitFor(() => proxy.app.data.listener!.connections === 0)
  t.equal(wire.bytes, 0, 'no CONNECT reached the upstream')
  const r = await send(`${proxy.url}/`, { headers: { host: 'app.test' } })
  t.equal(r.status, 200, 'still serving')
})
