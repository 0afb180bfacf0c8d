/**
 * Issue 11, black box: pipelining and refusals. Every case writes exact bytes
 * on a raw client socket to a real canaryd whose upstreams are wire upstreams
 * (every byte they receive is kept), so "nothing reached the upstream" is
 * checked on the wire, not inferred. After each case a normal request on a
 * fresh connection must succeed for every version and the in-flight count
 * must be back to 0, both on /metrics and in the proxy itself.
 */
import { performance } from 'node:perf_hooks'
import t, { type Test } from 'tap'
import { send } from '../helpers/http.js'
import type { WireOptions, WireRequest } from '../helpers/wire.js'
import { scrape, sum } from '../metrics/scrape.js'
import { assertSettled, freshRequests, markWires, RawClient, startWireEnv, wiresSince, type RawResponse, type WireEnv } from './pipeline-lib.js'
import { sleep, waitFor } from './raw.js'

const H = 'Host: app.test\r\n'
const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\n${H}${extra}\r\n`
const postLength = (path: string, body: string, extra = ''): string =>
  `POST ${path} HTTP/1.1\r\n${H}${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
const postChunked = (path: string, chunks: string[], extra = ''): string =>
  `POST ${path} HTTP/1.1\r\n${H}${extra}Transfer-Encoding: chunked\r\n\r\n${chunks.map((c) => `${Buffer.byteLength(c).toString(16)}\r\n${c}\r\n`).join('')}0\r\n\r\n`
const wsUpgrade = (path: string): string =>
  `GET ${path} HTTP/1.1\r\n${H}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
/** Over upstream.largeBodyBytes (65536 by default): such a body goes upstream through node:http, not undici. */
const LARGE = 'x'.repeat(70_000)

type Env = WireEnv

async function setup (t: Test, extra: Record<string, unknown> = {}, weights: [number, number] = [50, 50], wire: WireOptions = {}): Promise<Env> {
  return await startWireEnv(t, { extra, weights, wire })
}

/** The header `name` (case-insensitive) of a request the upstream received: every value. */
function headerValues (r: WireRequest | undefined, name: string): string[] {
  const out: string[] = []
  const raw = r?.rawHeaders ?? []
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!)
  return out
}

function json (r: RawResponse | undefined): Record<string, unknown> {
  try {
    return JSON.parse(r?.body.toString() ?? '') as Record<string, unknown>
  } catch {
    return {}
  }
}

// ---------------------------------------------------------------------------
// 1. Every refusal type, followed by complete pipelined requests

/** A request canaryd refuses after parsing it; its path (when it has one) starts with /refused. */
interface Refusal {
  name: string
  bytes: string
  status: number
  code: string
}

const REFUSALS: Refusal[] = [
  { name: 'two Host fields', bytes: `GET /refused HTTP/1.1\r\n${H}Host: other.test\r\n\r\n`, status: 400, code: 'CANARYD_ERR_INVALID_HOST' },
  { name: 'no Host on HTTP/1.1', bytes: 'GET /refused HTTP/1.1\r\nX-A: b\r\n\r\n', status: 400, code: 'CANARYD_ERR_INVALID_HOST' },
  { name: 'URL over limits.maxUrlBytes (64)', bytes: get(`/refused-${'a'.repeat(100)}`), status: 414, code: 'CANARYD_ERR_URI_TOO_LONG' },
  { name: 'more header fields than limits.maxHeaderCount (20)', bytes: get('/refused', Array.from({ length: 25 }, (_, i) => `X-H${i}: v\r\n`).join('')), status: 431, code: 'CANARYD_ERR_HEADERS_TOO_LARGE' },
  { name: 'Expect other than 100-continue', bytes: postLength('/refused', 'abc', 'Expect: 200-ok\r\n'), status: 417, code: 'CANARYD_ERR_EXPECTATION_FAILED' },
  { name: 'a Trailer header', bytes: `POST /refused HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n`, status: 400, code: 'CANARYD_ERR_BAD_REQUEST' },
  { name: 'TE: gzip + TE: chunked as two fields', bytes: `POST /refused HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`, status: 400, code: 'CANARYD_ERR_BAD_REQUEST' },
  { name: 'HTTP/1.0 with Transfer-Encoding', bytes: `POST /refused HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`, status: 400, code: 'CANARYD_ERR_BAD_REQUEST' },
  { name: 'OPTIONS *', bytes: `OPTIONS * HTTP/1.1\r\n${H}\r\n`, status: 400, code: 'CANARYD_ERR_BAD_REQUEST' },
  { name: 'TRACE', bytes: `TRACE /refused HTTP/1.1\r\n${H}\r\n`, status: 405, code: 'CANARYD_ERR_METHOD_NOT_ALLOWED' },
  { name: 'an invalid Host (userinfo: evil@127.0.0.1)', bytes: 'GET /refused HTTP/1.1\r\nHost: evil@127.0.0.1\r\n\r\n', status: 400, code: 'CANARYD_ERR_INVALID_HOST' },
  { name: 'an invalid Host (path: 127.0.0.1/../admin?x)', bytes: 'GET /refused HTTP/1.1\r\nHost: 127.0.0.1/../admin?x\r\n\r\n', status: 400, code: 'CANARYD_ERR_INVALID_HOST' },
  { name: 'an empty Host', bytes: 'GET /refused HTTP/1.1\r\nHost: \r\n\r\n', status: 400, code: 'CANARYD_ERR_INVALID_HOST' }
]

/** What follows the refused request: in the same write (`same`) and in a later write (`later`); `prefix` goes before it. */
interface Follow {
  name: string
  prefix: string
  same: string
  later: string
}

const FOLLOWS: Follow[] = [
  { name: 'GETs', prefix: '', same: get('/after-same-1') + get('/after-same-2') + get('/after-same-3'), later: get('/after-later-1') + get('/after-later-2') + get('/after-later-3') },
  {
    name: 'large POSTs (node:http client) and a chunked POST',
    prefix: '',
    same: postLength('/after-same-large', LARGE) + postChunked('/after-same-chunked', ['hello', 'world']),
    later: postLength('/after-later-large', LARGE) + postChunked('/after-later-chunked', ['hello', 'world'])
  },
  { name: 'a WebSocket upgrade', prefix: '', same: wsUpgrade('/after-same-ws'), later: wsUpgrade('/after-later-ws') },
  { name: 'GETs, the refused request behind a complete GET', prefix: get('/first'), same: get('/after-same-1') + get('/after-same-2'), later: get('/after-later-1') }
]

t.test('a refused request ends its connection: nothing after it reaches an upstream', async (t) => {
  const env = await setup(t, { limits: { maxUrlBytes: 64, maxHeaderCount: 20 } })
  let laterWrites = 0
  let runs = 0

  for (const c of REFUSALS) {
    for (const f of FOLLOWS) {
      await t.test(`${c.name} → ${c.status}, followed by ${f.name}`, async (t) => {
        runs++
        const mark = markWires(env.wires)
        const expected = f.prefix === '' ? [c.status] : [200, c.status]
        let laterTried = false
        const writeLater = (cl: RawClient): void => {
          if (laterTried) return
          laterTried = true
          if (cl.write(f.later)) laterWrites++
        }
        // the later write goes out the instant the refusal arrives (before canaryd's FIN is read)
        const client = await RawClient.open(env.port, { onResponse: (_r, cl) => { if (cl.responses.length === expected.length) writeLater(cl) } })
        client.write(f.prefix + c.bytes + f.same)
        // no refusal within 50 ms: write anyway if the socket is still open (the test then fails on the status)
        const fallback = setTimeout(() => { writeLater(client) }, 50)
        const closed = await client.waitClosed(1500)
        clearTimeout(fallback)
        client.destroy()

        t.ok(closed, 'canaryd closed the connection')
        t.equal(client.parseError, '', 'every response is complete and well framed')
        t.same(client.responses.map((r) => r.status), expected, 'exactly these responses, in order')
        const refusal = client.responses[expected.length - 1]
        t.equal(refusal?.code, c.code, 'JSON error body with the code')
        t.match(refusal?.headers['content-type'] ?? '', /application\/json/)
        t.match(refusal?.headers.connection ?? '', /close/i, 'Connection: close')
        if (f.prefix === '') t.equal(wiresSince(env.wires, mark).bytes, 0, 'zero bytes upstream')
        else t.equal(json(client.responses[0]).url, '/first', 'the GET before it was answered')

        // fresh requests are a barrier: anything forwarded from the refused connection arrived before them
        await freshRequests(t, env)
        const seen = wiresSince(env.wires, mark)
        const lines = [...(f.prefix === '' ? [] : ['GET /first']), 'GET /fresh-canary', 'GET /fresh-stable']
        t.same(seen.requestLines.sort(), lines.sort(), 'the upstreams received only these requests')
        t.notMatch(seen.text, /\/refused|\/after-|Upgrade: websocket/i, 'no byte of the refused or following requests upstream')
        await assertSettled(t, env)
      })
    }
  }
  t.comment(`${laterWrites} of ${runs} later writes went out before canaryd's close was seen`)
})

// ---------------------------------------------------------------------------
// 2. Every request before a malformed one gets its complete response first

const JUNK: Array<[string, string]> = [
  ['an invalid method', 'GARBAGE\r\n\r\n'],
  ['an invalid request line', 'GET /x HTTP/1.1 extra\r\nHost: app.test\r\n\r\n'],
  ['binary bytes', '\x00\x01\x02\x03\r\n\r\n']
]

t.test('pipeline order: requests before a malformed one are answered first (200, 200, 400)', async (t) => {
  const env = await setup(t, {}, [100, 0])
  const cases: Array<{ name: string, bytes: (junk: string) => string, urls: string[], bodies: number[] }> = [
    { name: 'GET /a + GET /b', bytes: (j) => get('/a') + get('/b') + j, urls: ['/a', '/b'], bodies: [0, 0] },
    { name: 'POST /a with a body', bytes: (j) => postLength('/a', 'hello world') + j, urls: ['/a'], bodies: [11] },
    { name: 'chunked POST /a + GET /b', bytes: (j) => postChunked('/a', ['hello', ' world']) + get('/b') + j, urls: ['/a', '/b'], bodies: [11, 0] },
    { name: 'large POST /a (node:http client) + GET /b', bytes: (j) => postLength('/a', LARGE) + get('/b') + j, urls: ['/a', '/b'], bodies: [LARGE.length, 0] }
  ]
  for (const c of cases) {
    for (const [junkName, junk] of JUNK) {
      await t.test(`${c.name} + ${junkName}, one write`, async (t) => {
        const before = env.stable.requests.length
        const client = await RawClient.open(env.port)
        client.write(c.bytes(junk))
        const closed = await client.waitClosed(1500)
        client.destroy()
        t.ok(closed, 'canaryd closed the connection after the 400')
        t.equal(client.parseError, '', 'every response is complete and well framed')
        t.same(client.responses.map((r) => r.status), [...c.urls.map(() => 200), 400], 'responses in order, the 400 last')
        const seqs = client.responses.slice(0, -1).map((r) => Number(r.headers['x-seq']))
        t.same(client.responses.slice(0, -1).map((r) => json(r).url), c.urls, 'each response is its request\'s')
        t.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!), `x-seq increasing (${seqs.join(', ')})`)
        const last = client.responses[client.responses.length - 1]
        t.equal(last?.code, 'CANARYD_ERR_BAD_REQUEST')
        t.match(last?.headers.connection ?? '', /close/i)
        const got = env.stable.requests.slice(before)
        t.same(got.map((r) => r.url), c.urls, 'the upstream got the good requests, in order, and nothing else')
        t.same(got.map((r) => r.body.length), c.bodies, 'bodies received in full')
        await assertSettled(t, env)
      })
    }
  }
})

// ---------------------------------------------------------------------------
// 3. One request at a time per client connection

t.test('a pipeline is processed serially: request N+1 goes upstream only after response N', async (t) => {
  const env = await setup(t, {}, [100, 0], { hold: () => true })
  const n = 5
  const client = await RawClient.open(env.port)
  t.teardown(() => { client.destroy() })
  client.write(Array.from({ length: n }, (_, i) => get(`/s${i}`)).join(''))
  for (let i = 0; i < n; i++) {
    await waitFor(() => env.stable.requests.length === i + 1)
    // a short settle: a proxy that fans the pipeline out would have sent the rest by now
    await sleep(30)
    t.equal(env.stable.requests.length, i + 1, `only ${i + 1} request(s) upstream while /s${i} is held`)
    t.equal(env.stable.pending, 1, 'one held at a time')
    t.equal(client.responses.length, i, `${i} response(s) so far`)
    env.stable.release()
    await client.waitResponses(i + 1)
  }
  t.same(client.responses.map((r) => r.status), Array(n).fill(200))
  t.same(client.responses.map((r) => json(r).url), Array.from({ length: n }, (_, i) => `/s${i}`), 'responses in request order')
  t.same(client.responses.map((r) => Number(r.headers['x-seq'])), Array.from({ length: n }, (_, i) => i), 'x-seq increasing')
  t.same(env.stable.requests.map((r) => r.url), Array.from({ length: n }, (_, i) => `/s${i}`), 'arrived upstream in order')
  t.notOk(client.peerClosed, 'keep-alive: the connection stays open')
})

// ---------------------------------------------------------------------------
// 4. One connection cannot take the whole in-flight budget

t.test('fan-out: a 1,000-request pipeline does not starve other clients', async (t) => {
  const env = await setup(t, { upstream: { maxInFlight: 20 } }, [100, 0], { delayMs: 2 })
  const n = 1000
  const pipe = await RawClient.open(env.port)
  t.teardown(() => { pipe.destroy() })
  pipe.write(Array.from({ length: n }, (_, i) => get(`/f${i}`)).join(''))
  await waitFor(() => env.stable.requests.length >= 5)
  const others = await Promise.all(Array.from({ length: 10 }, async (_, i) =>
    await send(`${env.proxy.url}/other-${i}`, { headers: { host: 'app.test' } })))
  t.same(others.map((r) => r.status), Array(10).fill(200), 'all 10 other clients get 200 (no 503)')
  t.ok(pipe.responses.length < n, `served while the pipeline was still running (${pipe.responses.length} of ${n} answered)`)
  await pipe.waitResponses(n, 12_000)
  t.equal(pipe.parseError, '')
  t.equal(pipe.responses.length, n, `${n} responses`)
  const bad = pipe.responses.findIndex((r, i) => r.status !== 200 || json(r).url !== `/f${i}`)
  t.equal(bad, -1, `every response is 200 and in order${bad === -1 ? '' : ` (first wrong: #${bad} ${pipe.responses[bad]?.status} ${String(json(pipe.responses[bad]).url)})`}`)
  const upstreamOrder = env.stable.requests.filter((r) => r.url.startsWith('/f')).map((r) => r.url)
  t.same(upstreamOrder, Array.from({ length: n }, (_, i) => `/f${i}`), 'the upstream got the pipeline in order')
  await assertSettled(t, env)
})

// ---------------------------------------------------------------------------
// 5. In-flight accounting when the client leaves early

t.test('client abort behind a slow request: in-flight back to 0, nothing else upstream, drain clean', async (t) => {
  // RST and FIN are both the client leaving: as nginx and Envoy do, canaryd
  // takes a FIN as an abort (the request in flight is cut, 499), so either
  // way nothing queued behind the request in flight is sent.
  const endings = [
    { name: 'reset (RST)', end: (c: RawClient) => { c.reset() } },
    { name: 'close (FIN)', end: (c: RawClient) => { c.destroy() } }
  ]
  for (const ending of endings) {
    for (const when of ['after the upstream answered', 'while the upstream still holds /slow']) {
      await t.test(`client ${ending.name} 50 ms in, app.close() ${when}`, async (t) => {
        const env = await setup(t, {}, [100, 0], { delayMs: (r) => r.url === '/slow' ? 500 : 0 })
        const mark = markWires(env.wires)
        const client = await RawClient.open(env.port)
        const t0 = Date.now()
        client.write(get('/slow') + get('/next-1') + get('/next-2'))
        await waitFor(() => env.stable.requests.length === 1)
        await sleep(Math.max(0, 50 - (Date.now() - t0)))
        ending.end(client)
        // the client is gone: its request stops counting now (the upstream call is aborted), not when the upstream answers
        const left = await waitFor(() => env.proxy.app.proxy.inFlight === 0, { timeoutMs: 300 }).then(() => true, () => false)
        t.ok(left, `in-flight released when the client left by ${ending.name} (app.proxy.inFlight ${env.proxy.app.proxy.inFlight}, upstream still holding: ${env.stable.pending})`)
        if (when === 'after the upstream answered') {
          await waitFor(() => env.stable.pending === 0, { timeoutMs: 3000 })
          await assertSettled(t, env)
          await freshRequests(t, env)
          await assertSettled(t, env)
        } else {
          t.equal(env.stable.pending, 1, 'the upstream still holds /slow')
        }
        const start = performance.now()
        const clean = await Promise.race([env.proxy.app.close(), sleep(5000).then(() => 'timed out')])
        const ms = performance.now() - start
        t.equal(clean, true, 'app.close() (drain, default timeout) resolves true')
        t.ok(ms < 2000, `drain took ${Math.round(ms)} ms (< 2000)`)
        t.equal(env.proxy.app.proxy.inFlight, 0, 'app.proxy.inFlight is 0 after the drain')
        const pipeline = wiresSince(env.wires, mark).requestLines.filter((l) => !l.startsWith('GET /fresh-'))
        t.same(pipeline, ['GET /slow'], 'only /slow reached the upstream: nothing queued behind it is sent for a client that left')
      })
    }
  }
})

// ---------------------------------------------------------------------------
// 6. Host must be a valid authority

const VALID_HOSTS = ['app.test', 'app.test:8080', '127.0.0.1', '127.0.0.1:80', '[::1]', '[::1]:8080', 'xn--bcher-kva.example', 'a-b.c_d~e', '%41pp.test']
const INVALID_HOSTS = ['127.0.0.1/../admin?x', '', 'evil@127.0.0.1', 'a b', '[::1', '::1', 'host:port', 'host:99999999', 'a\\b', 'host#frag', 'host?q']

t.test('Host validation', async (t) => {
  const env = await setup(t, {}, [100, 0])
  for (const host of VALID_HOSTS) {
    await t.test(`valid: ${JSON.stringify(host)} → 200`, async (t) => {
      const before = env.stable.requests.length
      const client = await RawClient.open(env.port)
      client.write(`GET /host-ok HTTP/1.1\r\nHost: ${host}\r\n\r\n`)
      await client.waitResponses(1).catch(() => {})
      client.destroy()
      t.equal(client.responses[0]?.status, 200, `status (${client.responses[0]?.code ?? 'no response'})`)
      const got = env.stable.requests[before]
      t.same(headerValues(got, 'host'), [host], 'the upstream got the client\'s Host')
      t.same(headerValues(got, 'x-forwarded-host'), [host], 'X-Forwarded-Host is the Host')
    })
  }
  for (const host of INVALID_HOSTS) {
    await t.test(`invalid: ${JSON.stringify(host)} → 400 CANARYD_ERR_INVALID_HOST`, async (t) => {
      const mark = markWires(env.wires)
      const client = await RawClient.open(env.port)
      client.write(`GET /host-bad HTTP/1.1\r\nHost: ${host}\r\n\r\n${get('/after-host')}`)
      const closed = await client.waitClosed(1500)
      client.destroy()
      t.same(client.responses.map((r) => r.status), [400], 'one response: 400')
      t.equal(client.responses[0]?.code, 'CANARYD_ERR_INVALID_HOST')
      t.ok(closed, 'connection closed')
      t.equal(wiresSince(env.wires, mark).bytes, 0, 'nothing upstream')
    })
  }
  await freshRequests(t, env)
  await assertSettled(t, env)
})

// ---------------------------------------------------------------------------
// 7. Connection cannot strip Host or the framing headers

t.test('Connection listing Host or a framing header removes nothing the upstream needs', async (t) => {
  const env = await setup(t, {}, [100, 0])
  const cases: Array<{ name: string, bytes: string, url: string, body: string, header: [string, string] }> = [
    { name: 'Connection: keep-alive, Host', bytes: get('/c-host', 'Connection: keep-alive, Host\r\n'), url: '/c-host', body: '', header: ['host', 'app.test'] },
    { name: 'Connection: Content-Length on a POST', bytes: postLength('/c-cl', 'hello world', 'Connection: Content-Length\r\n'), url: '/c-cl', body: 'hello world', header: ['content-length', '11'] },
    { name: 'Connection: Content-Length on a large POST (node:http client)', bytes: postLength('/c-cl-large', LARGE, 'Connection: keep-alive, Content-Length\r\n'), url: '/c-cl-large', body: LARGE, header: ['content-length', String(LARGE.length)] },
    { name: 'Connection: Transfer-Encoding on a chunked POST', bytes: postChunked('/c-te', ['hello', ' world'], 'Connection: Transfer-Encoding\r\n'), url: '/c-te', body: 'hello world', header: ['host', 'app.test'] }
  ]
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const before = env.stable.requests.length
      const client = await RawClient.open(env.port)
      // a GET pipelined behind it proves the body was framed right on both sides
      client.write(c.bytes + get('/c-next'))
      await client.waitResponses(2).catch(() => {})
      client.destroy()
      t.same(client.responses.map((r) => r.status), [200, 200])
      const got = env.stable.requests.slice(before)
      t.same(got.map((r) => r.url), [c.url, '/c-next'], 'both requests upstream, in order')
      t.same(headerValues(got[0], 'host'), ['app.test'], 'the client\'s Host, not the origin\'s')
      t.same(headerValues(got[0], c.header[0]), [c.header[1]], `${c.header[0]} kept`)
      t.equal(got[0]?.body.toString('latin1'), c.body, 'body received in full')
    })
  }
  await assertSettled(t, env)
})

// ---------------------------------------------------------------------------
// 8. TRACE

t.test('TRACE: 405 by default, forwarded with limits.allowTrace', async (t) => {
  await t.test('default', async (t) => {
    const env = await setup(t)
    const client = await RawClient.open(env.port)
    client.write(`TRACE /trace HTTP/1.1\r\n${H}\r\n`)
    const closed = await client.waitClosed(1500)
    client.destroy()
    t.same(client.responses.map((r) => r.status), [405])
    t.equal(client.responses[0]?.code, 'CANARYD_ERR_METHOD_NOT_ALLOWED')
    t.ok(closed, 'connection closed')
    t.equal(env.stable.bytes() + env.canary.bytes(), 0, 'nothing upstream')
    await freshRequests(t, env)
    await assertSettled(t, env)
  })
  await t.test('limits.allowTrace: true', async (t) => {
    const env = await setup(t, { limits: { allowTrace: true } }, [100, 0])
    const client = await RawClient.open(env.port)
    client.write(`TRACE /trace HTTP/1.1\r\n${H}\r\n`)
    await client.waitResponses(1).catch(() => {})
    client.destroy()
    t.equal(client.responses[0]?.status, 200)
    t.same(env.stable.requests.map((r) => `${r.method} ${r.url}`), ['TRACE /trace'], 'forwarded')
    await assertSettled(t, env)
  })
})

// ---------------------------------------------------------------------------
// 9. limits.maxConnections

t.test('limits.maxConnections: past it a new connection is closed at once; served ones are unaffected', async (t) => {
  const env = await setup(t, { limits: { maxConnections: 5 } }, [100, 0])
  const conns: RawClient[] = []
  t.teardown(() => { for (const c of conns) c.destroy() })
  for (let i = 0; i < 5; i++) {
    const c = await RawClient.open(env.port)
    conns.push(c)
    c.write(get(`/keep-${i}`))
    await c.waitResponses(1)
    t.equal(c.responses[0]?.status, 200, `keep-alive connection ${i} served`)
  }
  const sixth = await RawClient.open(env.port)
  conns.push(sixth)
  sixth.write(get('/sixth'))
  t.ok(await sixth.waitClosed(2000), 'the 6th connection is closed by canaryd')
  t.equal(sixth.received, 0, 'without a response')
  for (let i = 0; i < 5; i++) {
    conns[i]!.write(get(`/keep-${i}-again`))
    await conns[i]!.waitResponses(2)
    t.equal(conns[i]!.responses[1]?.status, 200, `connection ${i} still works`)
  }
  t.notOk(env.stable.requests.some((r) => r.url === '/sixth'), 'the 6th connection\'s request never went upstream')
  const e = await scrape(env.proxy)
  t.ok(sum(e, 'canaryd_connections_rejected_total') >= 1, `canaryd_connections_rejected_total >= 1 (${sum(e, 'canaryd_connections_rejected_total')})`)
  await waitFor(async () => sum(await scrape(env.proxy), 'canaryd_connections_open') === 5).catch(() => {})
  t.equal(sum(await scrape(env.proxy), 'canaryd_connections_open'), 5, 'canaryd_connections_open is 5')
  conns[0]!.destroy()
  await waitFor(async () => sum(await scrape(env.proxy), 'canaryd_connections_open') === 4).catch(() => {})
  t.equal(sum(await scrape(env.proxy), 'canaryd_connections_open'), 4, 'one closed: 4 open')
  const r = await send(`${env.proxy.url}/after-close`, { headers: { host: 'app.test' } })
  t.equal(r.status, 200, 'a new connection works again')
  await assertSettled(t, env)
})
