/**
 * Parity of the two upstream request paths. Requests whose body is large
 * (Content-Length at least `upstream.largeBodyBytes`, or chunked) go upstream
 * over node:http, every other one over undici; clients and upstreams must not
 * be able to tell the two apart except by speed. Every check therefore runs
 * twice against real servers on 127.0.0.1: with largeBodyBytes 0 (everything
 * over undici, the reference) and 1 (every request with a body over node:http).
 */
import { createHash, randomBytes } from 'node:crypto'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { createServer, type ClientRequest } from 'node:http'
import { connect, createServer as createNetServer, type Socket } from 'node:net'
import { once } from 'node:events'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { rawRequest, waitFor } from '../hardening/raw.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { refusedOrigin, startUpstream, type SeenRequest } from '../helpers/upstream.js'
import { scrape, sum } from '../metrics/scrape.js'

const KiB = 1024
const MiB = 1024 * KiB

function sha256 (b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

/**
 * A proxy over one route (stable at 100 %, canary at 0 % but reachable with
 * `x-canary: canary`) with the given largeBodyBytes; closed at teardown.
 */
async function proxyFor (t: Test, largeBodyBytes: number | undefined, stable: string, canary: string, extra: Record<string, unknown> = {}): Promise<TestProxy> {
  // the other upstream keys are left to their defaults (convict fills them)
  const upstream = largeBodyBytes === undefined ? {} : { upstream: { ...(extra.upstream as object | undefined), largeBodyBytes } }
  const proxy = await startProxy(testConfig([twoVersionRoute(stable, canary, [100, 0])], { ...extra, ...upstream }))
  t.teardown(async () => { await proxy.close() })
  return proxy
}

/** One counter of the proxy's /metrics for the route `web` (0 when absent). */
async function metric (proxy: TestProxy, name: string, labels: Record<string, string>): Promise<number> {
  return sum(await scrape(proxy), name, { route: 'web', ...labels })
}

/** The error code of a proxy-made JSON error. */
function errorCode (r: { json: <T>() => T }): string {
  return r.json<{ error: { code: string } }>().error.code
}

/**
 * Which client library carried each request to `origin`, by path, seen on the
 * diagnostics channels both libraries publish to (observation only: nothing is
 * replaced). The test's own clients must be fetch (undici) aimed at the proxy,
 * so every node:http request seen is the proxy's.
 */
function watchClients (t: Test, origin: string): { undici: string[]; nodeHttp: string[] } {
  const seen = { undici: [] as string[], nodeHttp: [] as string[] }
  const onUndici = (m: unknown): void => {
    const r = (m as { request: { origin: string | URL; path: string } }).request
    if (String(r.origin).replace(/\/$/, '') === origin) seen.undici.push(r.path)
  }
  const onHttp = (m: unknown): void => { seen.nodeHttp.push((m as { request: ClientRequest }).request.path) }
  subscribe('undici:request:create', onUndici)
  subscribe('http.client.request.start', onHttp)
  t.teardown(() => {
    unsubscribe('undici:request:create', onUndici)
    unsubscribe('http.client.request.start', onHttp)
  })
  return seen
}

/** POSTs `body` to the proxy with fetch (Content-Length when a Buffer, chunked when a stream). */
async function fetchPost (url: string, body: Buffer | ReadableStream<Uint8Array>): Promise<number> {
  const res = await fetch(url, { method: 'POST', body, duplex: 'half' } as RequestInit)
  await res.arrayBuffer()
  return res.status
}

/** The parity checks, against one path. */
async function parity (t: Test, largeBodyBytes: number, path: 'undici' | 'node:http'): Promise<void> {
  await t.test('0. the request goes the expected way (else the run below proves nothing)', async (t) => {
    const up = await startUpstream('stable')
    t.teardown(up.close)
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin)
    const clients = watchClients(t, up.origin)
    t.equal(await fetchPost(`${proxy.url}/big`, randomBytes(256 * KiB)), 200)
    t.equal((await fetch(`${proxy.url}/get`)).status, 200)
    if (path === 'undici') {
      t.same(clients.nodeHttp, [], 'nothing over node:http at largeBodyBytes 0')
      t.same(clients.undici, ['/big', '/get'], 'both over undici')
    } else {
      t.same(clients.nodeHttp, ['/big'], 'the POST over node:http')
      t.same(clients.undici, ['/get'], 'the body-less GET over undici')
    }
  })

  await t.test('1. a 3 MiB POST: exact bytes up; status, body, headers down; hop-by-hop dropped both ways', async (t) => {
    const body = randomBytes(3 * MiB)
    const stable = await startUpstream('stable', (_req, res) => {
      res.writeHead(201, [
        'X-Up', '1',
        'Connection', 'X-Up-Secret',
        'X-Up-Secret', 'hide me',
        'Keep-Alive', 'timeout=5',
        'Content-Type', 'text/plain',
        'Content-Length', '7'
      ])
      res.end('created')
    })
    t.teardown(stable.close)
    const proxy = await proxyFor(t, largeBodyBytes, stable.origin, stable.origin)
    const r = await send(`${proxy.url}/upload?x=1`, {
      method: 'POST',
      headers: [
        'Host', 'shop.example.com',
        'X-User-Id', 'u1',
        'Connection', 'keep-alive, x-drop-me',
        'X-Drop-Me', '1',
        'Keep-Alive', 'timeout=5',
        'TE', 'trailers',
        'Proxy-Connection', 'x',
        'Content-Type', 'application/octet-stream',
        'Content-Length', String(body.length)
      ],
      body
    })
    t.equal(r.status, 201, 'the upstream\'s status')
    t.equal(r.body.toString(), 'created', 'the upstream\'s body')
    t.equal(r.headers['x-up'], '1', 'the upstream\'s header')
    t.equal(r.headers['content-type'], 'text/plain')
    t.equal(r.headers['x-canaryd-version'], 'stable', 'x-canaryd-version names the version')
    t.equal(r.headers['x-up-secret'], undefined, 'a header the upstream named in Connection does not reach the client')
    // Node adds its own Keep-Alive for the client connection (timeout=60): only the upstream's must not pass
    t.not(r.headers['keep-alive'], 'timeout=5', 'the upstream\'s Keep-Alive does not reach the client')

    t.equal(stable.seen.length, 1)
    const seen = stable.seen[0] as SeenRequest
    t.equal(seen.method, 'POST')
    t.equal(seen.url, '/upload?x=1')
    t.equal(seen.bodyBytes, body.length, 'every byte arrived')
    t.equal(seen.bodySha256, sha256(body), 'the exact bytes arrived')
    t.equal(seen.headers['content-length'], String(body.length), 'sent with its Content-Length')
    t.equal(seen.headers['transfer-encoding'], undefined, 'not re-framed as chunked')
    t.equal(seen.headers.host, 'shop.example.com', 'the client\'s Host')
    t.equal(seen.headers['x-user-id'], 'u1', 'an end-to-end request header passes')
    t.equal(seen.headers['content-type'], 'application/octet-stream')
    t.equal(seen.headers['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For')
    t.equal(seen.headers['x-forwarded-proto'], 'http', 'X-Forwarded-Proto')
    t.equal(seen.headers['x-forwarded-host'], 'shop.example.com', 'X-Forwarded-Host')
    t.equal(seen.headers['x-canaryd-version'], 'stable', 'x-canaryd-version')
    t.equal(seen.headers['x-drop-me'], undefined, 'a header the client named in Connection is not forwarded')
    t.equal(seen.headers['keep-alive'], undefined, 'the client\'s Keep-Alive is not forwarded')
    t.equal(seen.headers.te, undefined, 'TE is not forwarded')
    t.equal(seen.headers['proxy-connection'], undefined, 'Proxy-Connection is not forwarded')
    t.notMatch(String(seen.headers.connection ?? ''), /x-drop-me/i, 'the client\'s Connection list is not forwarded')
  })

  await t.test('2. a chunked POST of 16 chunks (1 MiB): the exact bytes, still chunked', async (t) => {
    const up = await startUpstream('stable')
    t.teardown(up.close)
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin)
    const parts = Array.from({ length: 16 }, () => randomBytes(64 * KiB))
    const r = await send(`${proxy.url}/chunked`, { method: 'POST', body: Readable.from(parts) })
    t.equal(r.status, 200)
    const seen = up.seen[0] as SeenRequest
    t.equal(seen.headers['transfer-encoding'], 'chunked', 'a chunked upload stays chunked')
    t.equal(seen.headers['content-length'], undefined)
    t.equal(seen.bodyBytes, MiB, 'every byte arrived')
    t.equal(seen.bodySha256, sha256(Buffer.concat(parts)), 'the exact bytes arrived')
  })

  await t.test('3. a 10-byte PUT and a GET still work', async (t) => {
    const up = await startUpstream('stable')
    t.teardown(up.close)
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin)
    const put = await send(`${proxy.url}/small`, { method: 'PUT', headers: { 'content-length': '10' }, body: '0123456789' })
    t.equal(put.status, 200)
    t.equal(put.json<{ version: string }>().version, 'stable')
    const get = await send(`${proxy.url}/get?q=1`)
    t.equal(get.status, 200)
    t.equal(get.json<{ version: string }>().version, 'stable')
    t.same(up.seen.map((s) => [s.method, s.url, s.bodyBytes]), [['PUT', '/small', 10], ['GET', '/get?q=1', 0]])
    t.equal(up.seen[0]!.bodySha256, sha256(Buffer.from('0123456789')))
    t.equal(up.seen[0]!.headers['content-length'], '10')
    t.equal(up.seen[1]!.headers['content-length'], undefined, 'the GET has no body framing')
    t.equal(up.seen[1]!.headers['transfer-encoding'], undefined, 'the GET has no body framing')
  })

  await t.test('4. upstream refuses connections → 502 CANARYD_ERR_UPSTREAM_CONNECT, counted as kind="connect"', async (t) => {
    const canary = await startUpstream('canary')
    t.teardown(canary.close)
    // only the pinned version is down, so this is 502, not the all-down 503
    const proxy = await proxyFor(t, largeBodyBytes, await refusedOrigin(), canary.origin)
    const body = randomBytes(4 * KiB)
    const t0 = Date.now()
    const r = await send(`${proxy.url}/`, { method: 'POST', headers: { 'x-canary': 'stable', 'content-length': String(body.length) }, body })
    t.equal(r.status, 502)
    t.equal(errorCode(r), 'CANARYD_ERR_UPSTREAM_CONNECT')
    t.equal(r.headers['x-canaryd-version'], 'stable')
    t.ok(Date.now() - t0 < 2000, 'fast, not a timeout')
    t.equal(await metric(proxy, METRIC_NAMES.upstreamErrors, { version: 'stable', kind: 'connect' }), 1, 'one connect error (the retry is not a second one)')
    t.equal(await metric(proxy, METRIC_NAMES.requests, { version: 'stable', code: '502' }), 1)
    const ok = await send(`${proxy.url}/`, { method: 'POST', headers: { 'x-canary': 'canary', 'content-length': String(body.length) }, body })
    t.equal(ok.status, 200, 'the other version serves')
    t.equal(canary.seen[0]!.bodySha256, sha256(body))
  })

  await t.test('5. upstream reads the body and never answers → 504 CANARYD_ERR_UPSTREAM_TIMEOUT at upstreamResponseMs, kind="timeout"', async (t) => {
    // startUpstream calls the handler once the whole body is in: this one never answers
    const silent = await startUpstream('stable', () => {})
    t.teardown(silent.close)
    const proxy = await proxyFor(t, largeBodyBytes, silent.origin, silent.origin, { timeouts: { upstreamResponseMs: 300 } })
    const body = randomBytes(MiB)
    const t0 = Date.now()
    const r = await send(`${proxy.url}/`, { method: 'POST', headers: { 'content-length': String(body.length) }, body })
    const ms = Date.now() - t0
    t.equal(r.status, 504)
    t.equal(errorCode(r), 'CANARYD_ERR_UPSTREAM_TIMEOUT')
    t.ok(ms >= 250 && ms < 3000, `answered at the timeout (${ms} ms)`)
    t.equal(silent.seen.length, 1, 'a timeout is not retried')
    t.equal(silent.seen[0]!.bodySha256, sha256(body), 'the upstream had the whole body')
    t.equal(await metric(proxy, METRIC_NAMES.upstreamErrors, { version: 'stable', kind: 'timeout' }), 1)
    t.equal(await metric(proxy, METRIC_NAMES.requests, { version: 'stable', code: '504' }), 1)
  })

  await t.test('6. upstream drops the connection mid-upload → 502 CANARYD_ERR_UPSTREAM_RESET, kind="reset"; the proxy serves on', async (t) => {
    const sockets = new Set<Socket>()
    let received = 0
    // reads ~100 KiB of the request, then closes the socket without a response
    const cutter = createNetServer((sock) => {
      sockets.add(sock)
      sock.on('error', () => {})
      sock.on('data', (d: Buffer) => {
        received += d.length
        if (received >= 100 * KiB) sock.destroy()
      })
    })
    await new Promise<void>((resolve) => cutter.listen(0, '127.0.0.1', resolve))
    t.teardown(async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => cutter.close(() => resolve()))
    })
    const canary = await startUpstream('canary')
    t.teardown(canary.close)
    const proxy = await proxyFor(t, largeBodyBytes, `http://127.0.0.1:${(cutter.address() as { port: number }).port}`, canary.origin)
    const r = await rawRequest(proxy.app.proxyAddress!.port, [
      `POST /cut HTTP/1.1\r\nHost: a\r\nx-canary: stable\r\nContent-Length: ${2 * MiB}\r\n\r\n`,
      randomBytes(2 * MiB)
    ], { waitMs: 5000 })
    t.equal(r.status, 502, 'a 502 reached the client')
    t.match(r.text, /"code":"CANARYD_ERR_UPSTREAM_RESET"/)
    t.equal(sockets.size, 1, 'the POST was not replayed on a new connection')
    await waitFor(() => proxy.app.proxy.inFlight === 0)
    t.equal(await metric(proxy, METRIC_NAMES.upstreamErrors, { version: 'stable', kind: 'reset' }), 1)
    t.equal(await metric(proxy, METRIC_NAMES.requests, { version: 'stable', code: '502' }), 1)
    const body = randomBytes(256 * KiB)
    const next = await send(`${proxy.url}/next`, { method: 'POST', headers: { 'x-canary': 'canary', 'content-length': String(body.length) }, body })
    t.equal(next.status, 200, 'the proxy serves the next request')
    t.equal(canary.seen[0]!.bodySha256, sha256(body))
  })

  await t.test('7. the client aborts mid-upload: the upstream request is aborted, counted as 499', async (t) => {
    const events: string[] = []
    let arrived = false
    const up = await startUpstream('stable')
    t.teardown(up.close)
    up.server.prependListener('request', (req) => {
      arrived = true
      req.on('aborted', () => events.push('aborted'))
      req.on('close', () => events.push('close'))
      req.on('end', () => events.push('end'))
    })
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin)
    const client = connect(proxy.app.proxyAddress!.port, '127.0.0.1')
    client.on('error', () => {})
    t.teardown(() => { client.destroy() })
    await once(client, 'connect')
    client.write(`POST /abort HTTP/1.1\r\nHost: a\r\nContent-Length: ${2 * MiB}\r\n\r\n`)
    client.write(randomBytes(200 * KiB))
    await waitFor(() => arrived, { timeoutMs: 2000 })
    client.destroy()
    await waitFor(() => events.includes('aborted') || events.includes('close'), { timeoutMs: 2000 })
    t.notOk(events.includes('end'), `the upstream saw no end of body (${events.join(', ')})`)
    await waitFor(() => proxy.app.proxy.inFlight === 0)
    t.equal(await metric(proxy, METRIC_NAMES.requests, { version: 'stable', code: '499' }), 1, 'counted as 499')
    const e = await scrape(proxy)
    t.equal(sum(e, METRIC_NAMES.requests, { route: 'web', version: 'stable' }), 1, 'and nothing else')
    t.equal(sum(e, METRIC_NAMES.upstreamErrors, { route: 'web', version: 'stable' }), 0, 'not the upstream\'s fault')
    t.equal(up.seen.length, 0, 'no request completed at the upstream')
  })

  await t.test('8. keep-alive: 10 sequential 200 KiB POSTs use at most 2 upstream connections', async (t) => {
    const ports = new Set<number>()
    const up = await startUpstream('stable')
    t.teardown(up.close)
    up.server.prependListener('request', (req) => { ports.add(req.socket.remotePort!) })
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin)
    for (let i = 0; i < 10; i++) {
      const body = randomBytes(200 * KiB)
      const r = await send(`${proxy.url}/ka/${i}`, { method: 'POST', headers: { 'content-length': String(body.length) }, body })
      t.equal(r.status, 200)
      t.equal(up.seen[i]!.bodySha256, sha256(body))
    }
    t.equal(up.seen.length, 10)
    t.ok(ports.size >= 1 && ports.size <= 2, `connections reused (${ports.size} distinct upstream sockets for 10 requests)`)
  })

  await t.test('9. a 2 MiB POST echoed back: the client receives identical bytes', async (t) => {
    // buffers the whole request, then answers it with a Content-Length (not a full-duplex echo)
    const echo = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const b = Buffer.concat(chunks)
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': b.length })
        res.end(b)
      })
    })
    await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve))
    t.teardown(async () => {
      echo.closeAllConnections()
      await new Promise<void>((resolve) => echo.close(() => resolve()))
    })
    const origin = `http://127.0.0.1:${(echo.address() as { port: number }).port}`
    const proxy = await proxyFor(t, largeBodyBytes, origin, origin)
    const body = randomBytes(2 * MiB)
    const r = await send(`${proxy.url}/echo`, { method: 'POST', headers: { 'content-length': String(body.length) }, body })
    t.equal(r.status, 200)
    t.equal(r.headers['content-length'], String(body.length))
    t.equal(r.body.length, body.length, 'every byte came back')
    t.equal(r.sha256, sha256(body), 'the same bytes came back')
  })

  await t.test('10. accounting: N large POSTs raise requests_total{code="200"} and the histogram count by exactly N', async (t) => {
    const up = await startUpstream('stable')
    t.teardown(up.close)
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin)
    const n = 7
    const before = await scrape(proxy)
    for (let i = 0; i < n; i++) {
      const body = randomBytes(300 * KiB)
      t.equal((await send(`${proxy.url}/count`, { method: 'POST', headers: { 'content-length': String(body.length) }, body })).status, 200)
    }
    const after = await scrape(proxy)
    const delta = (name: string, labels: Record<string, string>): number => sum(after, name, { route: 'web', ...labels }) - sum(before, name, { route: 'web', ...labels })
    t.equal(delta(METRIC_NAMES.requests, { version: 'stable', code: '200' }), n, 'requests_total{code="200"} += N')
    t.equal(delta(METRIC_NAMES.requests, { version: 'stable' }), n, 'no other code counted')
    t.equal(delta(`${METRIC_NAMES.duration}_count`, { version: 'stable' }), n, 'duration histogram _count += N')
    t.equal(delta(METRIC_NAMES.upstreamErrors, { version: 'stable' }), 0, 'no upstream error counted')
    t.equal(sum(after, METRIC_NAMES.inFlight, { route: 'web', version: 'stable' }), 0, 'nothing left in flight')
  })

  await t.test('11. a slow client upload (gaps longer than upstreamResponseMs) is not an upstream timeout', async (t) => {
    // upstreamResponseMs is the upstream's time to answer: undici does not run it out
    // while it is still waiting on the client for body bytes (clientBodyMs guards those)
    const up = await startUpstream('stable')
    t.teardown(up.close)
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin, { timeouts: { upstreamResponseMs: 300 } })
    const parts = Array.from({ length: 5 }, () => randomBytes(10 * KiB))
    const r = await rawRequest(proxy.app.proxyAddress!.port, [
      `POST /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: ${5 * 10 * KiB}\r\n\r\n`,
      ...parts
    ], { gapMs: 450, waitMs: 5000 })
    t.equal(r.status, 200, `the upload completes (${/"code":"(\w+)"/.exec(r.text)?.[1] ?? 'no error code'})`)
    t.equal(up.seen.length, 1)
    t.equal(up.seen[0]?.bodySha256, sha256(Buffer.concat(parts)), 'the exact bytes arrived')
    t.equal(await metric(proxy, METRIC_NAMES.upstreamErrors, { version: 'stable', kind: 'timeout' }), 0, 'no upstream timeout counted')
  })

  await t.test('12. the upstream answers before the upload ends (413 from the headers): the answer goes through, the socket is not left pinned', async (t) => {
    // one upstream connection per client: a socket left assigned to a finished
    // exchange would make every later request to the origin wait forever
    let early = 0
    const server = createServer((req, res) => {
      if (req.url === '/early') {
        early++
        res.writeHead(413, { 'content-type': 'text/plain', 'content-length': '2' })
        res.end('no')
        return
      }
      req.resume()
      req.on('end', () => { res.writeHead(200, { 'content-length': '2' }); res.end('ok') })
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.teardown(() => { server.closeAllConnections(); server.close() })
    const origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`
    const proxy = await proxyFor(t, largeBodyBytes, origin, origin, { upstream: { connections: 1 } })
    const big = randomBytes(MiB)
    const t0 = Date.now()
    for (let i = 0; i < 3; i++) {
      const r = await send(`${proxy.url}/early`, { method: 'POST', headers: { 'content-length': String(big.length) }, body: big })
      t.equal(r.status, 413, `early answer ${i + 1} (Content-Length body)`)
      t.equal(r.body.toString(), 'no')
      const c = await send(`${proxy.url}/early`, { method: 'POST', body: Readable.from([big.subarray(0, 300 * KiB), big.subarray(300 * KiB)]) })
      t.equal(c.status, 413, `early answer ${i + 1} (chunked body)`)
    }
    t.equal(early, 6, 'every early answer came from the upstream')
    const after = await send(`${proxy.url}/after`, { method: 'POST', headers: { 'content-length': String(big.length) }, body: big })
    t.equal(after.status, 200, 'a later upload to the same origin is served (no pinned socket)')
    // a pinned socket is freed only when the upstream drops it (Node: 5 s keep-alive
    // timeout), so each of the 6 early answers would stall the next request by seconds
    t.ok(Date.now() - t0 < 4000, `no request waited for a pinned socket (${Date.now() - t0} ms in all)`)
  })

  await t.test('13. an HTTP/1.0 request without Host and with a large body: the upstream gets the origin as Host', async (t) => {
    const up = await startUpstream('stable')
    t.teardown(up.close)
    const proxy = await proxyFor(t, largeBodyBytes, up.origin, up.origin)
    const body = randomBytes(100 * KiB)
    const r = await rawRequest(proxy.app.proxyAddress!.port, [`POST /h10 HTTP/1.0\r\nContent-Length: ${body.length}\r\n\r\n`, body], { waitMs: 5000 })
    t.equal(r.status, 200)
    t.equal(up.seen.length, 1)
    t.equal(up.seen[0]?.headers.host, new URL(up.origin).host, 'Host set to the origin, as undici sets it')
    t.equal(up.seen[0]?.bodySha256, sha256(body))
  })
}

for (const [label, largeBodyBytes] of [['undici', 0], ['node:http', 1]] as const) {
  t.test(`${label} path (upstream.largeBodyBytes ${largeBodyBytes})`, async (t) => {
    await parity(t, largeBodyBytes, label)
  })
}

t.test('the default threshold: 64 KiB and chunked bodies over node:http, smaller bodies and GETs over undici', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  const proxy = await proxyFor(t, undefined, up.origin, up.origin)
  const clients = watchClients(t, up.origin)
  t.equal(await fetchPost(`${proxy.url}/below`, randomBytes(64 * KiB - 1)), 200)
  t.equal(await fetchPost(`${proxy.url}/at`, randomBytes(64 * KiB)), 200)
  const chunks = [randomBytes(1000), randomBytes(1000)]
  t.equal(await fetchPost(`${proxy.url}/chunked`, Readable.toWeb(Readable.from(chunks)) as ReadableStream<Uint8Array>), 200)
  t.equal((await fetch(`${proxy.url}/get`)).status, 200)
  t.equal(up.seen[2]!.headers['transfer-encoding'], 'chunked', 'the stream was sent chunked')
  t.same(clients.nodeHttp, ['/at', '/chunked'], 'Content-Length ≥ 65536 and chunked: node:http')
  t.same(clients.undici, ['/below', '/get'], 'below the threshold and no body: undici')
})
