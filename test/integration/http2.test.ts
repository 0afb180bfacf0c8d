/**
 * HTTP/2 at the edge (issue 14): h2c (prior knowledge) and TLS (ALPN h2)
 * clients through canaryd to HTTP/1.1 upstreams. Everything HTTP/1.1 does
 * (routing, sticky keys, override, anonymous cookie, metrics, streaming,
 * timeouts, limits, refusals) must hold over HTTP/2 too, plus the HTTP/2
 * limits (concurrent streams, header list size) and a bounded rapid reset.
 *
 * Most cases use node:http2; a few speak raw frames (a client that ignores
 * SETTINGS, a rapid-reset flood whose HEADERS are sure to be on the wire).
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders, type IncomingHttpStatusHeader, type OutgoingHttpHeaders } from 'node:http2'
import { connect as netConnect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { hashKey } from '../../src/routing/hash.js'
import { pickVersion } from '../../src/routing/pick.js'
import { makeCa, makeLeaf, opensslSkip } from '../helpers/certs.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { richResponse, startUpstream, type TestUpstream } from '../helpers/upstream.js'
import { h2Frame } from '../helpers/wire.js'
import { scrape, sum } from '../metrics/scrape.js'

const H2C = { host: '127.0.0.1', port: 0, h2c: true }

type Tap = Test

/** One finished HTTP/2 exchange, or the stream reset / session error that ended it. */
interface H2Reply {
  status: number
  headers: IncomingHttpHeaders & IncomingHttpStatusHeader
  body: Buffer
  sha256: string
  json: () => Record<string, unknown>
  /** Set when the stream ended in an error instead of a response: the RST_STREAM code (or -1) and the error code. */
  reset?: { rstCode: number, code: string }
  ms: number
}

/** An h2 session to `url`, destroyed in t's teardown; resolves once the server's SETTINGS arrived. */
async function h2session (t: Tap, url: string, opts: http2.SecureClientSessionOptions = {}): Promise<ClientHttp2Session> {
  const s = http2.connect(url, opts)
  s.on('error', () => {})
  t.teardown(() => { s.destroy() })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no SETTINGS from ${url} in 5 s`)), 5000)
    s.once('remoteSettings', () => { clearTimeout(timer); resolve() })
    s.once('error', (err) => { clearTimeout(timer); reject(err) })
  })
  return s
}

/**
 * Sends one request on `session` and reads all of it; a reset stream resolves
 * with `reset` set, and so does one still unanswered after `timeoutMs`
 * (`reset.code` 'timeout': a hang fails the test instead of stalling the file).
 */
async function h2req (session: ClientHttp2Session, headers: OutgoingHttpHeaders, body?: Buffer | string | Readable, onStream?: (s: ClientHttp2Stream) => void, timeoutMs = 5000): Promise<H2Reply> {
  const t0 = performance.now()
  return await new Promise((resolve) => {
    // CONNECT has no :path (node:http2 refuses one)
    const defaults: OutgoingHttpHeaders = headers[':method'] === 'CONNECT' ? {} : { ':method': body === undefined ? 'GET' : 'POST', ':path': '/' }
    const s = session.request({ ...defaults, ...headers }, { endStream: body === undefined })
    const timer = setTimeout(() => {
      finish({ rstCode: -1, code: 'timeout' })
      s.close(http2.constants.NGHTTP2_CANCEL)
    }, timeoutMs)
    const chunks: Buffer[] = []
    const hash = createHash('sha256')
    let head: IncomingHttpHeaders & IncomingHttpStatusHeader = {}
    let done = false
    const finish = (reset?: H2Reply['reset']): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      const b = Buffer.concat(chunks)
      resolve({ status: Number(head[':status'] ?? 0), headers: head, body: b, sha256: hash.digest('hex'), json: () => JSON.parse(b.toString()) as Record<string, unknown>, reset, ms: performance.now() - t0 })
    }
    s.on('response', (h) => { head = h })
    s.on('data', (c: Buffer) => { chunks.push(c); hash.update(c) })
    s.on('end', () => { finish() })
    s.on('error', (err: NodeJS.ErrnoException) => { finish({ rstCode: s.rstCode ?? -1, code: err.code ?? err.message }) })
    s.on('close', () => { if (!done) finish({ rstCode: s.rstCode ?? -1, code: 'closed' }) })
    onStream?.(s)
    if (typeof body === 'string' || Buffer.isBuffer(body)) s.end(body)
    else if (body !== undefined) body.pipe(s)
  })
}

/** Upstream that records the HTTP version of each request besides what startUpstream records, and echoes as startUpstream does. */
async function echoUpstream (t: Tap, name: string): Promise<TestUpstream & { versions: string[] }> {
  const versions: string[] = []
  const up = await startUpstream(name, (req, res) => {
    versions.push(req.httpVersion)
    const s = up.seen[up.seen.length - 1]!
    const body = JSON.stringify({ version: name, ...s })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-upstream': name })
    res.end(body)
  })
  t.teardown(up.close)
  return Object.assign(up, { versions })
}

/**
 * An h2c proxy closed in teardown. The close is bounded: upstream requests
 * stuck in a pool (see the cancel test) would make the drain and pool.close
 * wait forever, so after 1.5 s the pools of the routes' origins are destroyed.
 */
async function proxyOf (t: Tap, routes: unknown[], extra: Record<string, unknown> = {}): Promise<TestProxy> {
  const p = await startProxy(testConfig(routes, { listen: H2C, ...extra }))
  t.teardown(async () => {
    const closing = p.close()
    if (await Promise.race([closing.then(() => true), sleep(1500).then(() => false)])) return
    const origins = new Set((routes as Array<{ versions: Array<{ upstream: string }> }>).flatMap((r) => r.versions.map((v) => v.upstream)))
    for (const o of origins) await p.app.upstreams.slot(o).pool.destroy().catch(() => {})
    // pool.close() of a destroyed pool rejects, so App.close never reaches its admin server: close what it holds
    await Promise.race([closing.catch(() => {}), sleep(1000)])
    p.app.rollouts.close()
    await p.app.admin.close().catch(() => {})
  })
  return p
}

async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

const pseudo = (h: Record<string, unknown>): string[] => Object.keys(h).filter((k) => k.startsWith(':'))

/** `send` (HTTP/1.1) bounded in time: status 0 when no answer came within `ms`. */
async function sendWithin (url: string, ms: number, opts: Parameters<typeof send>[1] = {}): Promise<{ status: number }> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<{ status: number }>((resolve) => { timer = setTimeout(() => resolve({ status: 0 }), ms) })
  try {
    return await Promise.race([send(url, opts), late])
  } finally {
    clearTimeout(timer)
  }
}

// ---------------------------------------------------------------- 1
t.test('h2c: the request reaches the upstream over HTTP/1.1, the response comes back whole', async (t) => {
  const versions: string[] = []
  const up = await startUpstream('stable', (req, res) => {
    versions.push(req.httpVersion)
    richResponse(req, res)
  })
  t.teardown(up.close)
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])])
  const s = await h2session(t, proxy.url)
  const r = await h2req(s, { ':method': 'PATCH', ':path': '/a/b%20c?x=1&y=two', ':authority': 'shop.example.com', 'x-user-id': 'u1', 'x-multi': ['one', 'two'], 'content-type': 'text/plain' }, 'the request body')
  t.equal(r.reset, undefined, 'no stream error')
  t.equal(r.status, 201, 'status passes')
  t.equal(r.body.toString(), 'hello world', 'body passes')
  t.equal(r.headers['x-custom'], 'resp-value', 'response header passes')
  t.same(r.headers['set-cookie'], ['a=1; Path=/', 'b=2; Path=/'], 'repeated Set-Cookie kept apart')
  t.equal(r.headers['x-canaryd-version'], 'stable', 'x-canaryd-version on the h2 response')
  t.equal(r.headers.connection, undefined, 'no Connection header in the h2 response')
  t.equal(r.headers['keep-alive'], undefined, 'no Keep-Alive header in the h2 response')
  t.equal(r.headers['x-up-secret'], undefined, 'header named in the upstream Connection removed')

  t.same(versions, ['1.1'], 'the upstream saw one HTTP/1.1 request')
  const seen = up.seen[0]!
  t.equal(seen.method, 'PATCH')
  t.equal(seen.url, '/a/b%20c?x=1&y=two', 'path and query byte for byte')
  t.equal(seen.headers.host, 'shop.example.com', 'Host = the client\'s :authority')
  t.same(seen.rawHeaders.filter((_, i) => i % 2 === 0).filter((n) => n.toLowerCase() === 'host'), ['host'], 'exactly one Host field')
  t.same(seen.rawHeaders.filter((_, i) => i % 2 === 0 && seen.rawHeaders[i]!.startsWith(':')), [], 'no pseudo-header reaches the upstream')
  t.same(seen.rawHeaders.filter((_, i, a) => i % 2 === 1 && a[i - 1] === 'x-multi'), ['one', 'two'], 'repeated fields kept in order')
  t.equal(seen.headers['x-forwarded-proto'], 'http')
  t.equal(seen.headers['x-forwarded-host'], 'shop.example.com')
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(seen.headers['x-canaryd-version'], 'stable')
  t.equal(seen.bodySha256, createHash('sha256').update('the request body').digest('hex'), 'request body passes')

  // the same listener still speaks HTTP/1.1 beside h2c
  const h1 = await send(`${proxy.url}/h1`)
  t.equal(h1.status, 201, 'HTTP/1.1 on the h2c listener still served')
})

t.test('TLS with ALPN h2: same pass-through, https facts on the upstream request', { skip: opensslSkip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-h2-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const ca = makeCa(dir, 'ca')
  const leaf = makeLeaf(dir, 'leaf', ca, { cn: 'localhost', dns: ['localhost', 'shop.example.com'], ip: ['127.0.0.1'] })
  const up = await echoUpstream(t, 'stable')
  const canary = await echoUpstream(t, 'canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(up.origin, canary.origin, [50, 50])], { listen: { host: '127.0.0.1', port: 0, tls: { certFile: leaf.certPath, keyFile: leaf.keyPath } } }))
  t.teardown(proxy.close)
  const port = proxy.app.proxyAddress!.port
  const s = await h2session(t, `https://localhost:${port}`, { ca: ca.cert })
  const socket = s.socket as import('node:tls').TLSSocket
  t.equal(socket.alpnProtocol, 'h2', 'ALPN chose h2')
  const r = await h2req(s, { ':path': '/tls?q=1', 'x-canary': 'stable' })
  t.equal(r.status, 200)
  t.equal(r.headers['x-canaryd-version'], 'stable')
  t.equal(r.headers.connection, undefined)
  t.equal(r.headers['keep-alive'], undefined)
  t.same(up.versions, ['1.1'], 'upstream over HTTP/1.1')
  const seen = up.seen[0]!
  t.equal(seen.headers.host, `localhost:${port}`, 'Host = :authority')
  t.same(pseudo(seen.headers), [], 'no pseudo-header upstream')
  t.equal(seen.headers['x-forwarded-proto'], 'https', 'X-Forwarded-Proto https over TLS')
  const anon = await h2req(s, { ':path': '/anon' })
  t.match(String(anon.headers['set-cookie']), /^canaryd_id=[0-9a-f-]{36}; .*; Secure$/, 'anonymous h2-over-TLS client gets a Secure sticky cookie')
})

// ---------------------------------------------------------------- 2
t.test('cookies split over several fields are joined into one; a sticky cookie in the second field still pins', async (t) => {
  const stable = await echoUpstream(t, 'stable')
  const canary = await echoUpstream(t, 'canary')
  const proxy = await proxyOf(t, [twoVersionRoute(stable.origin, canary.origin, [50, 50])])
  const route = proxy.app.holder.current.routes[0]!
  const s = await h2session(t, proxy.url)
  let mismatch = 0
  let joinedWrong = 0
  const got = new Set<string>()
  for (let i = 0; i < 30; i++) {
    const id = randomUUID()
    const r = await h2req(s, { ':path': `/c2/${i}`, cookie: ['a=1', `canaryd_id=${id}`] })
    const h1 = await send(`${proxy.url}/c1/${i}`, { headers: { cookie: `a=1; canaryd_id=${id}` } })
    const expected = pickVersion(route, hashKey(route.salt, id))!.name
    if (r.headers['x-canaryd-version'] !== expected || h1.headers['x-canaryd-version'] !== expected) mismatch++
    if (r.headers['set-cookie'] !== undefined) t.fail('no new sticky cookie when the second cookie field carries one')
    got.add(String(r.headers['x-canaryd-version']))
    const h2seen = [...stable.seen, ...canary.seen].find((x) => x.url === `/c2/${i}`)
    const fields = (h2seen?.rawHeaders ?? []).filter((_, j, a) => j % 2 === 0 && a[j]!.toLowerCase() === 'cookie')
    if (h2seen?.headers.cookie !== `a=1; canaryd_id=${id}` || fields.length !== 1) joinedWrong++
  }
  t.equal(joinedWrong, 0, 'upstream saw ONE cookie field "a=1; canaryd_id=…" for each h2 request')
  t.equal(mismatch, 0, 'h2 (cookie in 2nd field), h1 and the routing core agree on the version for every id')
  t.same([...got].sort(), ['canary', 'stable'], '30 ids at 50/50 reach both versions (the check can fail)')
})

// ---------------------------------------------------------------- 3
t.test('routing by :authority and path, override, anonymous cookie, header sticky key', async (t) => {
  const shop = await echoUpstream(t, 'shop')
  const api = await echoUpstream(t, 'api')
  const stable = await echoUpstream(t, 'stable')
  const canary = await echoUpstream(t, 'canary')
  const proxy = await proxyOf(t, [
    twoVersionRoute(shop.origin, shop.origin, [100, 0], { name: 'shop', match: { host: 'shop.example.com', pathPrefix: '/shop' } }),
    twoVersionRoute(api.origin, api.origin, [100, 0], { name: 'api', match: { pathPrefix: '/api' } }),
    twoVersionRoute(stable.origin, canary.origin, [100, 0], { name: 'web', match: { pathPrefix: '/' } })
  ])
  const s = await h2session(t, proxy.url)
  const v = async (h: OutgoingHttpHeaders): Promise<string> => String((await h2req(s, h)).headers['x-upstream'])
  t.equal(await v({ ':path': '/shop/cart', ':authority': 'shop.example.com' }), 'shop', ':authority + prefix pick the host route')
  t.equal(await v({ ':path': '/shop/cart', ':authority': 'SHOP.example.com:443' }), 'shop', ':authority is normalised like Host (case, port)')
  t.equal(await v({ ':path': '/shop/cart', ':authority': 'other.example.com' }), 'stable', 'another :authority does not match the host route')
  t.equal(await v({ ':path': '/api/v1', ':authority': 'shop.example.com' }), 'api', 'path prefix route')
  t.equal(await v({ ':path': '/', 'x-user-id': 'u1' }), 'stable', 'canary at 0%')
  t.equal(await v({ ':path': '/', 'x-user-id': 'u1', 'x-canary': 'canary' }), 'canary', 'override header forces the 0% canary')
  t.equal(await v({ ':path': '/', 'x-user-id': 'u1', cookie: ['x=1', 'canary=canary'] }), 'canary', 'override cookie, in a second cookie field')
  t.equal(await v({ ':path': '/', 'x-canary': 'stable', cookie: 'canary=canary' }), 'stable', 'header beats cookie')

  const anon = await h2req(s, { ':path': '/' })
  const setCookie = String(anon.headers['set-cookie'] ?? '')
  t.match(setCookie, /^canaryd_id=[0-9a-f-]{36}; Max-Age=86400; Path=\/; HttpOnly; SameSite=Lax$/, 'anonymous h2 client gets the sticky cookie (no Secure over h2c)')
  const again = await h2req(s, { ':path': '/', cookie: setCookie.split(';')[0]! })
  t.equal(again.headers['set-cookie'], undefined, 'no new cookie once it has one')
  const keyed = await h2req(s, { ':path': '/', 'x-user-id': 'someone' })
  t.equal(keyed.headers['set-cookie'], undefined, 'a header sticky key: no cookie minted')
})

t.test('header sticky key over h2 lands where HTTP/1.1 and the routing core say', async (t) => {
  const stable = await echoUpstream(t, 'stable')
  const canary = await echoUpstream(t, 'canary')
  const proxy = await proxyOf(t, [twoVersionRoute(stable.origin, canary.origin, [50, 50])])
  const route = proxy.app.holder.current.routes[0]!
  const s = await h2session(t, proxy.url)
  let mismatch = 0
  const seen = new Set<string>()
  await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const id = `user-${i}`
    const expected = pickVersion(route, hashKey(route.salt, id))!.name
    const [a, b] = await Promise.all([h2req(s, { ':path': '/k', 'x-user-id': id }), send(`${proxy.url}/k`, { headers: { 'x-user-id': id } })])
    if (a.headers['x-canaryd-version'] !== expected || b.headers['x-canaryd-version'] !== expected) mismatch++
    seen.add(String(a.headers['x-canaryd-version']))
  }))
  t.equal(mismatch, 0, 'every x-user-id: h2 = h1 = pickVersion')
  t.same([...seen].sort(), ['canary', 'stable'], 'both versions reached')
})

// ---------------------------------------------------------------- 4
t.test('metrics: N h2 requests grow canaryd_requests_total by N, per version', async (t) => {
  const stable = await echoUpstream(t, 'stable')
  const canary = await echoUpstream(t, 'canary')
  const proxy = await proxyOf(t, [twoVersionRoute(stable.origin, canary.origin, [50, 50])])
  const s = await h2session(t, proxy.url)
  const before = await scrape(proxy)
  const N = 60
  const replies = await Promise.all(Array.from({ length: N }, async (_, i) => await h2req(s, { ':path': `/m/${i}`, 'x-user-id': `m${i}` })))
  const after = await scrape(proxy)
  const served = { stable: 0, canary: 0 }
  for (const r of replies) if (r.status === 200) served[r.headers['x-canaryd-version'] as 'stable' | 'canary']++
  t.equal(served.stable + served.canary, N, 'all 200 with a version')
  const d = (labels: Record<string, string>): number => sum(after, METRIC_NAMES.requests, labels) - sum(before, METRIC_NAMES.requests, labels)
  t.equal(d({ route: 'web' }), N, `requests_total{route="web"} grew by ${N}`)
  for (const version of ['stable', 'canary'] as const) {
    t.equal(d({ route: 'web', version, code: '200' }), served[version], `requests_total{version="${version}",code="200"} = ${served[version]}`)
    t.equal(sum(after, `${METRIC_NAMES.duration}_count`, { route: 'web', version }) - sum(before, `${METRIC_NAMES.duration}_count`, { route: 'web', version }), served[version], `${version}: duration _count`)
    t.equal(sum(after, METRIC_NAMES.inFlight, { route: 'web', version }), 0, `${version}: nothing in flight`)
  }
})

// ---------------------------------------------------------------- 5
t.test('streaming with backpressure: 5 MiB DATA upload, 10 MiB slow download, a Content-Length body', async (t) => {
  const big = randomBytes(10 * 1024 * 1024)
  const bigSha = createHash('sha256').update(big).digest('hex')
  const up5 = big.subarray(0, 5 * 1024 * 1024)
  const up5Sha = createHash('sha256').update(up5).digest('hex')
  let downloadFinished = false
  let written = 0
  const up = await startUpstream('stable', (req, res) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-length': big.length, 'content-type': 'application/octet-stream' })
      Readable.from((function * () { for (let i = 0; i < big.length; i += 65536) { written = i; yield big.subarray(i, i + 65536) } })()).pipe(res)
      res.on('finish', () => { downloadFinished = true })
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{}')
  })
  t.teardown(up.close)
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])])
  const s = await h2session(t, proxy.url)

  const upload = await h2req(s, { ':method': 'POST', ':path': '/upload' }, Readable.from((function * () { for (let i = 0; i < up5.length; i += 100_000) yield up5.subarray(i, i + 100_000) })()))
  t.equal(upload.status, 200, 'upload answered 200')
  t.equal(up.seen[0]!.bodyBytes, up5.length, 'upload without length: every byte arrived')
  t.equal(up.seen[0]!.bodySha256, up5Sha, 'upload without length: same sha256')
  t.equal(up.seen[0]!.headers['transfer-encoding'], 'chunked', 'a body of unknown length goes upstream chunked')

  const withLength = big.subarray(0, 1024 * 1024 + 7)
  const cl = await h2req(s, { ':method': 'PUT', ':path': '/cl', 'content-length': String(withLength.length) }, withLength)
  t.equal(cl.status, 200)
  t.equal(up.seen[1]!.headers['content-length'], String(withLength.length), 'Content-Length forwarded')
  t.equal(up.seen[1]!.bodySha256, createHash('sha256').update(withLength).digest('hex'), 'Content-Length body: same sha256')

  const small = await h2req(s, { ':method': 'POST', ':path': '/small', 'content-length': '5' }, 'hello')
  t.equal(small.status, 200)
  t.equal(up.seen[2]!.bodyBytes, 5, 'small Content-Length body (undici path) arrives')

  let writtenAtPause = -1
  let finishedDuringPause = true
  const down = await h2req(s, { ':path': '/download' }, undefined, (stream) => {
    stream.once('data', () => {
      stream.pause()
      setTimeout(() => {
        writtenAtPause = written
        finishedDuringPause = downloadFinished
        stream.resume()
      }, 1000)
    })
  })
  t.equal(down.status, 200)
  t.equal(down.body.length, big.length, 'download: every byte')
  t.equal(down.sha256, bigSha, 'download: same sha256')
  t.equal(finishedDuringPause, false, `a paused h2 client holds the upstream back: the upstream had written ${(writtenAtPause / 1048576).toFixed(1)} of 10 MiB after 1 s of pause`)
})

// ---------------------------------------------------------------- 6
t.test('limits and malformed requests over h2', async (t) => {
  const up = await echoUpstream(t, 'stable')
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0], { match: { pathPrefix: '/in' } })], {
    limits: { maxHeaderCount: 20, http2MaxHeaderListBytes: 4096, underscoreHeaders: 'reject' }
  })
  const s = await h2session(t, proxy.url)
  const count0 = up.seen.length
  const many: Record<string, string> = {}
  for (let i = 0; i < 30; i++) many[`x-h${i}`] = 'v'
  const tooMany = await h2req(s, { ':path': '/in/many', ...many })
  if (tooMany.reset !== undefined) {
    t.pass(`30 header fields (limit 20): stream reset (rst code ${tooMany.reset.rstCode}, ${tooMany.reset.code})`)
  } else {
    t.equal(tooMany.status, 431, '30 header fields (limit 20): 431')
    t.equal((tooMany.json().error as { code: string }).code, 'CANARYD_ERR_HEADERS_TOO_LARGE', '431 JSON code')
  }
  // what HTTP/1.1 allows, HTTP/2 must too. node:http adds Connection: close, so
  // Host + Connection + 18 = 20 fields = maxHeaderCount over h1; over h2 :authority
  // stands for Host, so :authority + 19 fields is the same 20 (the other
  // pseudo-headers are the request line, which h1 does not count either)
  const eighteen: Record<string, string> = {}
  for (let i = 0; i < 18; i++) eighteen[`x-h${i}`] = 'v'
  const h1ok = await send(`${proxy.url}/in/h1-20`, { headers: eighteen })
  t.equal(h1ok.status, 200, 'HTTP/1.1: Host + Connection + 18 = 20 fields (= maxHeaderCount) accepted')
  const h1over = await send(`${proxy.url}/in/h1-21`, { headers: { ...eighteen, 'x-one-more': 'v' } })
  t.equal(h1over.status, 431, 'HTTP/1.1: 21 fields → 431')
  const h2ok = await h2req(s, { ':path': '/in/h2-20', ...eighteen, 'x-one-more': 'v' })
  t.equal(h2ok.status, 200, `HTTP/2: :authority + 19 fields (20, as over HTTP/1.1) accepted (got ${h2ok.status}${h2ok.reset ? ` reset ${h2ok.reset.code}` : ''}; pseudo-headers must not count towards maxHeaderCount)`)

  const huge = await h2req(s, { ':path': '/in/huge', 'x-big': 'x'.repeat(6000) })
  t.ok(huge.reset !== undefined, `a header list over http2MaxHeaderListBytes (4096) resets the stream (${huge.reset ? `rst code ${huge.reset.rstCode}` : `status ${huge.status}`})`)
  if (huge.reset !== undefined) t.equal(huge.reset.rstCode, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, 'RST_STREAM ENHANCE_YOUR_CALM')
  t.equal(s.destroyed || s.closed, false, 'the session survives the reset')
  const after = await h2req(s, { ':path': '/in/after' })
  t.equal(after.status, 200, 'the same session serves a new request afterwards')

  const mismatch = await h2req(s, { ':path': '/in/x', ':authority': 'a.example.com', host: 'b.example.com' })
  t.equal(mismatch.status, 400, ':authority ≠ Host → 400')
  t.equal((mismatch.json().error as { code: string }).code, 'CANARYD_ERR_INVALID_HOST')
  const badAuthority = await h2req(s, { ':path': '/in/x', ':authority': 'user@evil.example.com' })
  t.equal(badAuthority.status, 400, 'userinfo in :authority → 400')
  t.equal((badAuthority.json().error as { code?: string } | undefined)?.code, 'CANARYD_ERR_INVALID_HOST', 'invalid :authority code')

  const underscore = await h2req(s, { ':path': '/in/x', x_bad: '1' })
  t.equal(underscore.status, 400, 'underscore header with underscoreHeaders reject → 400')
  t.equal((underscore.json().error as { code: string }).code, 'CANARYD_ERR_BAD_REQUEST')

  const trace = await h2req(s, { ':method': 'TRACE', ':path': '/in/x' })
  t.equal(trace.status, 405, 'TRACE → 405')

  const connect = await h2req(s, { ':method': 'CONNECT', ':authority': 'x:1' })
  if (connect.reset !== undefined) t.pass(`CONNECT: stream error (${connect.reset.code}, rst ${connect.reset.rstCode})`)
  else t.equal(connect.status, 501, `CONNECT → 501 JSON as over HTTP/1.1 (got ${connect.status}, body ${JSON.stringify(connect.body.toString())})`)

  const noRoute = await h2req(s, { ':path': '/elsewhere' })
  t.equal(noRoute.status, 404, 'no route → 404')
  t.equal((noRoute.json().error as { code: string }).code, 'CANARYD_ERR_NO_ROUTE')
  t.equal(noRoute.headers['content-type'], 'application/json')

  const reached = up.seen.slice(count0).map((x) => x.url)
  t.same(reached, ['/in/h1-20', ...(h2ok.status === 200 ? ['/in/h2-20'] : []), '/in/after'], 'only the valid requests reached the upstream (no CONNECT, no refused one)')
  t.equal(proxy.app.proxy.inFlight, 0, 'nothing left in flight')
})

// ---------------------------------------------------------------- 7
/** A slow upstream that counts requests in flight (from arrival to the end of its answer). */
async function slowUpstream (t: Tap, ms: number): Promise<{ up: TestUpstream, stats: { now: number, max: number, total: number } }> {
  const stats = { now: 0, max: 0, total: 0 }
  const up = await startUpstream('slow', (_req: IncomingMessage, res: ServerResponse) => {
    stats.now++
    stats.total++
    stats.max = Math.max(stats.max, stats.now)
    setTimeout(() => {
      stats.now--
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' })
      res.end('ok')
    }, ms)
  })
  t.teardown(up.close)
  return { up, stats }
}

t.test('http2MaxConcurrentStreams: advertised, and at most that many requests in flight per session', async (t) => {
  const { up, stats } = await slowUpstream(t, 400)
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])], { limits: { http2MaxConcurrentStreams: 5 }, upstream: { maxInFlight: 0 } })
  const s = await h2session(t, proxy.url)
  t.equal(s.remoteSettings.maxConcurrentStreams, 5, 'SETTINGS_MAX_CONCURRENT_STREAMS = 5')
  const replies = await Promise.all(Array.from({ length: 10 }, async (_, i) => await h2req(s, { ':path': `/c${i}` })))
  t.same(replies.map((r) => r.status), Array(10).fill(200), 'a polite client: all 10 served (5 wait for a free stream)')
  t.ok(stats.max <= 5 && stats.max >= 2, `upstream saw at most 5 at once (max ${stats.max})`)

  // a client that ignores the setting (raw frames): 10 HEADERS at once
  stats.max = 0
  const total0 = stats.total
  const raw = await RawH2.open(proxy.app.proxyAddress!.port)
  t.teardown(() => { raw.socket.destroy() })
  for (let i = 0; i < 10; i++) raw.headers(1 + 2 * i, '/raw', true)
  await raw.flushWait()
  await raw.until(() => raw.responses + raw.resets.length >= 10 || raw.goaway !== undefined || raw.closed, 3000)
  await new Promise((resolve) => setTimeout(resolve, 600))
  t.ok(stats.max <= 5, `a client ignoring the limit: at most 5 at once upstream (max ${stats.max}, ${stats.total - total0} reached it; ${raw.responses} answered, resets ${JSON.stringify(raw.resetCodes())}, goaway ${raw.goaway ?? 'none'})`)
  t.ok(stats.total - total0 <= 5 || raw.responses <= 10, 'excess streams refused or queued, never over the limit')
  t.ok(raw.resets.length > 0 || raw.goaway !== undefined, 'the excess streams were refused (RST_STREAM) or the session was closed (GOAWAY)')
})

// ---------------------------------------------------------------- 8
/** A fresh h2 session and an HTTP/1.1 request are both served within 2 s; inFlight back to 0. */
async function stillServing (t: Tap, proxy: TestProxy, label: string): Promise<void> {
  const fresh = await h2session(t, proxy.url)
  const ok = await h2req(fresh, { ':path': '/after' }, undefined, undefined, 2000)
  t.equal(ok.status, 200, `${label}: a fresh h2 session gets 200 within 2 s (${ok.reset?.code ?? `${ok.status} in ${Math.round(ok.ms)} ms`})`)
  fresh.destroy()
  const h1 = await sendWithin(`${proxy.url}/after-h1`, 2000)
  t.equal(h1.status, 200, `${label}: an HTTP/1.1 request gets 200 within 2 s (${h1.status === 0 ? 'no answer' : h1.status})`)
  const deadline = performance.now() + 1000
  while (proxy.app.proxy.inFlight !== 0 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(proxy.app.proxy.inFlight, 0, `${label}: proxy inFlight back to 0`)
}

t.test('rapid reset (CVE-2023-44487) is bounded', async (t) => {
  const { up, stats } = await slowUpstream(t, 200)
  const rss0 = process.memoryUsage().rss

  // 1. node:http2 client: request then cancel at once, in a loop bounded in count and time
  const a = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])])
  const s = await h2session(t, a.url)
  let closedBy = ''
  s.on('goaway', (code: number) => { closedBy ||= `GOAWAY(${code})` })
  s.on('close', () => { closedBy ||= 'close' })
  s.on('error', (err: NodeJS.ErrnoException) => { closedBy ||= `error ${err.code ?? err.message}` })
  let opened = 0
  const tEnd = performance.now() + 3000
  while (opened < 20_000 && performance.now() < tEnd && !s.closed && !s.destroyed) {
    for (let i = 0; i < 200 && !s.closed && !s.destroyed; i++) {
      let st: ClientHttp2Stream
      try {
        st = s.request({ ':path': `/rr/${opened}` })
      } catch { closedBy ||= 'request threw'; break }
      st.on('error', () => {})
      st.close(http2.constants.NGHTTP2_CANCEL)
      opened++
    }
    await new Promise((resolve) => setImmediate(resolve))
  }
  await new Promise((resolve) => setTimeout(resolve, 300))
  const reachedA = stats.total
  t.comment(`node:http2 rapid reset: ${opened} streams opened and cancelled, ${reachedA} reached the upstream, session ended by: ${closedBy || 'nothing (still open)'}`)
  const processedA = sum(await scrape(a), METRIC_NAMES.requests, { route: 'web' })
  t.comment(`  of which the proxy routed ${processedA} (canaryd_requests_total)`)
  t.ok(closedBy !== '' || reachedA <= 200, `the attacking session was closed by the server (${closedBy || 'no'}) or the upstream count stayed bounded (${reachedA})`)
  // nghttp2 (Node ≥ 20.8.1) sends GOAWAY after a burst of ~1000 resets: what reaches the upstream is bounded by that, whatever the client sends
  t.ok(reachedA < opened && reachedA <= 1100, `upstream count bounded: ${reachedA} of ${opened} streams opened`)
  await stillServing(t, a, 'after the node:http2 flood')

  // 2. raw frames: HEADERS + RST_STREAM(CANCEL) pairs written straight to the socket (an attacker ignoring GOAWAY)
  const b = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])])
  const raw = await RawH2.open(b.app.proxyAddress!.port)
  t.teardown(() => { raw.socket.destroy() })
  const reached0 = stats.total
  let pairs = 0
  const rEnd = performance.now() + 3000
  let id = 1
  while (pairs < 20_000 && performance.now() < rEnd && !raw.closed) {
    for (let i = 0; i < 100; i++) {
      raw.headers(id, `/raw/${id}`, true)
      raw.rst(id, http2.constants.NGHTTP2_CANCEL)
      id += 2
      pairs++
    }
    await raw.flushWait()
  }
  await raw.until(() => raw.closed, 500)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const reachedB = stats.total - reached0
  const processedB = sum(await scrape(b), METRIC_NAMES.requests, { route: 'web' })
  t.comment(`raw rapid reset: ${pairs} HEADERS+RST pairs sent, the proxy routed ${processedB}, ${reachedB} reached the upstream, server GOAWAY: ${raw.goaway ?? 'none'}, TCP closed by the server: ${raw.closed}`)
  t.ok(raw.goaway !== undefined || raw.closed || reachedB <= 200, `attacking session closed by the server (GOAWAY ${raw.goaway ?? '-'}, closed ${raw.closed}) or upstream count bounded (${reachedB})`)
  t.ok(reachedB <= Math.max(200, pairs / 5), `upstream count far below the streams opened: ${reachedB} of ${pairs}`)
  raw.socket.destroy()
  await stillServing(t, b, 'after the raw flood')

  const grow = (process.memoryUsage().rss - rss0) / 1048576
  t.comment(`rss growth over both floods: ${grow.toFixed(1)} MB`)
  t.ok(grow < 200, `rss grew ${grow.toFixed(1)} MB (< 200)`)
})

t.test('a client cancelling pending h2 requests does not use up the upstream pool', async (t) => {
  // the browser case behind the rapid-reset figures: a user leaves while the upstream
  // is still thinking. upstream.connections 2: two leaked connections would be all of them
  const { up, stats } = await slowUpstream(t, 300)
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])], { upstream: { connections: 2 } })
  const s = await h2session(t, proxy.url)
  for (let i = 0; i < 2; i++) {
    const st = s.request({ ':path': `/cancel/${i}` })
    st.on('error', () => {})
    const t0 = performance.now()
    while (stats.total <= i && performance.now() - t0 < 2000) await new Promise((resolve) => setTimeout(resolve, 10))
    st.close(http2.constants.NGHTTP2_CANCEL)
  }
  t.equal(stats.total, 2, 'both requests reached the upstream before being cancelled')
  await new Promise((resolve) => setTimeout(resolve, 500)) // the upstream has answered both by now
  t.equal(proxy.app.proxy.inFlight, 0, 'the proxy counts nothing in flight')
  const pool = proxy.app.upstreams.slot(up.origin).pool.stats
  t.equal(pool.running, 0, `no upstream connection still busy with a cancelled request (undici running ${pool.running}, connected ${pool.connected})`)
  const next = await h2req(s, { ':path': '/next' }, undefined, undefined, 2000)
  t.equal(next.status, 200, `the next h2 request is served (${next.reset?.code ?? next.status})`)
  const h1 = await sendWithin(`${proxy.url}/next-h1`, 2000)
  t.equal(h1.status, 200, 'and an HTTP/1.1 one')
})

// ---------------------------------------------------------------- 9
t.test('drain: an in-flight h2 request completes, the session gets GOAWAY', async (t) => {
  const { up, stats } = await slowUpstream(t, 700)
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])])
  const s = await h2session(t, proxy.url)
  let goaway = -1
  s.on('goaway', (code: number) => { goaway = code })
  const pending = h2req(s, { ':path': '/slow' })
  const t0 = performance.now()
  while (stats.total === 0 && performance.now() - t0 < 2000) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(stats.total, 1, 'the request reached the upstream before the drain')
  const closing = proxy.app.close(5000)
  const r = await pending
  t.equal(r.status, 200, 'the in-flight request completes with 200 during the drain')
  t.equal(r.body.toString(), 'ok')
  t.equal(await closing, true, 'drain reports clean')
  t.equal(goaway, http2.constants.NGHTTP2_NO_ERROR, 'the session got GOAWAY (NO_ERROR)')
})

// ---------------------------------------------------------------- 10
t.test('an upstream that never answers: 504 over h2 within upstreamResponseMs', async (t) => {
  const up = await startUpstream('silent', () => { /* never answers */ })
  t.teardown(up.close)
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])], { timeouts: { upstreamResponseMs: 500 } })
  const s = await h2session(t, proxy.url)
  const r = await h2req(s, { ':path': '/hang' })
  t.equal(r.status, 504, '504')
  t.equal((r.json().error as { code: string }).code, 'CANARYD_ERR_UPSTREAM_TIMEOUT')
  t.equal(r.headers['x-canaryd-version'], 'stable')
  // undici checks headersTimeout on a coarse (~0.5 s) timer, so 504 comes 0.5–1 s after
  // the request: the same over HTTP/1.1, which is what is compared
  const t0 = performance.now()
  const h1 = await sendWithin(`${proxy.url}/hang-h1`, 3000)
  const h1ms = performance.now() - t0
  t.equal(h1.status, 504, 'HTTP/1.1: 504 too')
  t.ok(r.ms >= 450 && r.ms < 1500, `h2 504 after ${Math.round(r.ms)} ms (upstreamResponseMs 500; HTTP/1.1 took ${Math.round(h1ms)} ms)`)
  t.ok(Math.abs(r.ms - h1ms) < 600, 'h2 and HTTP/1.1 time out alike')
})

// ---------------------------------------------------------------- 11
t.test('WebSocket stays on HTTP/1.1: no extended CONNECT offered over h2', async (t) => {
  const up = await echoUpstream(t, 'stable')
  const proxy = await proxyOf(t, [twoVersionRoute(up.origin, up.origin, [100, 0])])
  const s = await h2session(t, proxy.url)
  t.notOk(s.remoteSettings.enableConnectProtocol, 'SETTINGS_ENABLE_CONNECT_PROTOCOL not set')
  const r = await h2req(s, { ':method': 'GET', ':path': '/ws', upgrade: 'websocket' }).catch((err: Error) => ({ status: 0, reset: { rstCode: -1, code: err.message } }) as unknown as H2Reply)
  t.not(r.status, 101, 'no 101 over h2')
  t.equal(up.seen.filter((x) => x.headers.upgrade !== undefined).length, 0, 'no Upgrade header reaches the upstream from an h2 client')
})

// ---------------------------------------------------------------- raw frames
/**
 * A minimal HTTP/2 client on a raw socket: HPACK literals only (no
 * Huffman, no dynamic table), SETTINGS acked, frames counted. Enough to
 * ignore the server's SETTINGS and to put HEADERS + RST_STREAM on the wire
 * exactly as an attacker would.
 */
class RawH2 {
  readonly socket: Socket
  responses = 0
  readonly resets: Array<{ id: number, code: number }> = []
  goaway: number | undefined
  closed = false
  #buf = Buffer.alloc(0)
  #out: Buffer[] = []

  private constructor (socket: Socket) {
    this.socket = socket
    socket.on('data', (c: Buffer) => { this.#read(c) })
    socket.on('close', () => { this.closed = true })
    socket.on('error', () => { this.closed = true })
  }

  static async open (port: number): Promise<RawH2> {
    const socket = netConnect(port, '127.0.0.1')
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
    const c = new RawH2(socket)
    socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), frame(4, 0, 0, Buffer.alloc(0))]))
    await c.until(() => c.#settingsSeen, 2000)
    return c
  }

  #settingsSeen = false

  #read (c: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, c])
    while (this.#buf.length >= 9) {
      const len = this.#buf.readUIntBE(0, 3)
      if (this.#buf.length < 9 + len) return
      const type = this.#buf[3]!
      const flags = this.#buf[4]!
      const id = this.#buf.readUInt32BE(5) & 0x7fffffff
      const payload = this.#buf.subarray(9, 9 + len)
      this.#buf = this.#buf.subarray(9 + len)
      if (type === 4 && (flags & 1) === 0) {
        this.#settingsSeen = true
        if (!this.socket.destroyed) this.socket.write(frame(4, 1, 0, Buffer.alloc(0)))
      } else if (type === 1) {
        this.responses++
      } else if (type === 3) {
        this.resets.push({ id, code: payload.readUInt32BE(0) })
      } else if (type === 7) {
        this.goaway = payload.readUInt32BE(4)
      } else if (type === 6 && (flags & 1) === 0 && !this.socket.destroyed) {
        this.socket.write(frame(6, 1, 0, payload))
      }
    }
  }

  resetCodes (): Record<number, number> {
    const out: Record<number, number> = {}
    for (const r of this.resets) out[r.code] = (out[r.code] ?? 0) + 1
    return out
  }

  /** Queues a HEADERS frame (GET `path`, END_HEADERS, END_STREAM when `end`). */
  headers (id: number, path: string, end: boolean): void {
    const block = Buffer.concat([
      Buffer.from([0x82, 0x86]), // :method GET, :scheme http (static table)
      literal(4, path), // :path
      literal(1, 'raw.test') // :authority
    ])
    this.#out.push(frame(1, 0x4 | (end ? 0x1 : 0), id, block))
  }

  rst (id: number, code: number): void {
    const p = Buffer.alloc(4)
    p.writeUInt32BE(code)
    this.#out.push(frame(3, 0, id, p))
  }

  /** Writes what is queued; resolves when the socket drained (or closed). */
  async flushWait (): Promise<void> {
    if (this.closed || this.socket.destroyed) { this.#out = []; return }
    const ok = this.socket.write(Buffer.concat(this.#out))
    this.#out = []
    if (ok) { await new Promise((resolve) => setImmediate(resolve)); return }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 500)
      const done = (): void => { clearTimeout(timer); resolve() }
      this.socket.once('drain', done)
      this.socket.once('close', done)
    })
  }

  async until (cond: () => boolean, ms: number): Promise<void> {
    const end = performance.now() + ms
    while (!cond() && performance.now() < end) await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

const frame = h2Frame

/** HPACK literal header field without indexing, indexed name (< 15), raw string value (< 127 bytes). */
function literal (nameIndex: number, value: string): Buffer {
  const v = Buffer.from(value, 'latin1')
  return Buffer.concat([Buffer.from([nameIndex, v.length]), v])
}
