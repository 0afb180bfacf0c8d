/**
 * Upstream faults, each against a real fault server written with node:net:
 * refused, silent, reset before and after headers, stale keep-alive, bad
 * framing, retries, outlier ejection, the concurrency cap, client aborts and
 * backpressure.
 */
import { connect, createServer as createNetServer, type Server, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { refusedOrigin, startUpstream } from '../helpers/upstream.js'
import { rawRequest, sleep, waitFor } from './raw.js'

/** A net server whose `onRequest` sees each request's head (and the socket); counts requests by method, and idle closes. */
async function faultServer (onRequest: (sock: Socket, head: string, n: number) => void, opts: { idleMs?: number; waitBody?: boolean } = {}): Promise<{ server: Server; origin: string; requests: string[]; idleClosed: () => number; close: () => Promise<void> }> {
  const requests: string[] = []
  const sockets = new Set<Socket>()
  let idleClosed = 0
  const server = createNetServer((sock) => {
    sockets.add(sock)
    sock.on('close', () => sockets.delete(sock))
    sock.on('error', () => {})
    if (opts.idleMs !== undefined) sock.setTimeout(opts.idleMs, () => { idleClosed++; sock.destroy() })
    let buf = ''
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1')
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end === -1) return
        const head = buf.slice(0, end)
        const m = /content-length: *(\d+)/i.exec(head)
        const len = m === null ? 0 : Number(m[1])
        if (opts.waitBody === true && buf.length < end + 4 + len) return
        buf = buf.slice(end + 4 + Math.min(len, buf.length - end - 4))
        requests.push(head.split(' ')[0]!)
        onRequest(sock, head, requests.length)
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  return {
    server,
    origin: `http://127.0.0.1:${port}`,
    requests,
    idleClosed: () => idleClosed,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

const OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
const FAST = { timeouts: { upstreamResponseMs: 300, upstreamConnectMs: 300 } }

async function proxyFor (t: Test, stable: string, canary: string, extra: Record<string, unknown> = {}, weights: [number, number] = [100, 0]): Promise<TestProxy> {
  const proxy = await startProxy(testConfig([twoVersionRoute(stable, canary, weights)], { ...FAST, ...extra }))
  t.teardown(async () => { await proxy.close() })
  return proxy
}

t.test('connection refused → 502 fast, for the pinned version only', async (t) => {
  const canary = await startUpstream('canary')
  t.teardown(canary.close)
  const proxy = await proxyFor(t, await refusedOrigin(), canary.origin, {}, [50, 50])
  const t0 = Date.now()
  const r = await send(`${proxy.url}/`, { headers: { 'x-canary': 'stable' } })
  t.equal(r.status, 502)
  t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_CONNECT')
  t.ok(Date.now() - t0 < 2000, 'fast, not a timeout')
  t.equal((await send(`${proxy.url}/`, { headers: { 'x-canary': 'canary' } })).status, 200, 'the other version serves')
})

t.test('every version unreachable → 503', async (t) => {
  const proxy = await proxyFor(t, await refusedOrigin(), await refusedOrigin(), {}, [50, 50])
  const first = await send(`${proxy.url}/`, { headers: { 'x-canary': 'stable' } })
  t.equal(first.status, 502, 'one version down, the other not known down yet: 502')
  const second = await send(`${proxy.url}/`, { headers: { 'x-canary': 'canary' } })
  t.equal(second.status, 503, 'both failed to connect: 503')
  t.equal(second.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_UNAVAILABLE')
  const any = await send(`${proxy.url}/`, { headers: { 'x-user-id': 'anyone' } })
  t.equal(any.status, 503)
})

t.test('accepts but never answers → 504 at upstreamResponseMs', async (t) => {
  const silent = await faultServer(() => {})
  t.teardown(silent.close)
  const proxy = await proxyFor(t, silent.origin, silent.origin)
  const t0 = Date.now()
  const r = await send(`${proxy.url}/`)
  const ms = Date.now() - t0
  t.equal(r.status, 504)
  t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_TIMEOUT')
  t.ok(ms >= 250, `waited for the timeout (${ms} ms)`)
  t.equal(silent.requests.length, 1, 'a timeout is not retried')
})

t.test('reset before response headers → 502; GET retried once, POST never replayed', async (t) => {
  const reset = await faultServer((sock) => { sock.resetAndDestroy() }, { waitBody: true })
  t.teardown(reset.close)
  const proxy = await proxyFor(t, reset.origin, reset.origin)
  const g = await send(`${proxy.url}/`)
  t.equal(g.status, 502)
  t.equal(g.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_RESET')
  t.same(reset.requests, ['GET', 'GET'], 'idempotent GET: one retry')
  reset.requests.length = 0
  const p = await send(`${proxy.url}/`, { method: 'POST', body: 'x'.repeat(1000), headers: { 'content-type': 'text/plain' } })
  t.equal(p.status, 502)
  t.same(reset.requests, ['POST'], 'the upstream saw exactly one POST')
})

t.test('a GET reset before any response byte is retried on a new connection', async (t) => {
  const flaky = await faultServer((sock, _head, n) => {
    if (n === 1) sock.resetAndDestroy()
    else sock.write(OK)
  })
  t.teardown(flaky.close)
  const proxy = await proxyFor(t, flaky.origin, flaky.origin)
  const r = await send(`${proxy.url}/`)
  t.equal(r.status, 200)
  t.equal(flaky.requests.length, 2)
})

t.test('reset after headers → client connection closed, no final chunk', async (t) => {
  const half = await faultServer((sock, head) => {
    if (head.includes('/cl')) sock.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello')
    else sock.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n')
    setTimeout(() => sock.resetAndDestroy(), 50)
  })
  t.teardown(half.close)
  const proxy = await proxyFor(t, half.origin, half.origin)
  const port = proxy.app.proxyAddress!.port
  const chunked = await rawRequest(port, ['GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n'])
  t.equal(chunked.status, 200)
  t.match(chunked.text, /hello/)
  t.ok(chunked.closed, 'connection closed')
  t.notMatch(chunked.text, /\r\n0\r\n\r\n/, 'no terminating chunk: the body is not passed off as complete')
  const sized = await rawRequest(port, ['GET /cl HTTP/1.1\r\nHost: a\r\n\r\n'])
  t.equal(sized.status, 200)
  t.ok(sized.closed, 'connection closed')
  const body = sized.text.slice(sized.text.indexOf('\r\n\r\n') + 4)
  t.ok(body.length < 100, `short body (${body.length} of 100 bytes) then close`)
})

t.test('stale keep-alive: upstream closes idle connections after 1 s; requests at ~1 s idle never 502', async (t) => {
  const up = await faultServer((sock) => { sock.write(OK) }, { idleMs: 1000 })
  t.teardown(up.close)
  const proxy = await proxyFor(t, up.origin, up.origin)
  t.equal((await send(`${proxy.url}/`)).status, 200, 'warm-up opens a keep-alive connection')
  for (const idle of [985, 995, 1000, 1005, 1015]) {
    await sleep(idle)
    const r = await send(`${proxy.url}/`)
    t.equal(r.status, 200, `after ${idle} ms idle`)
  }
  // the race really happened: the upstream closed idle connections the proxy had pooled
  t.ok(up.idleClosed() >= 1, `the upstream closed ${up.idleClosed()} idle connection(s) around the requests`)
})

t.test('stale keep-alive, forced: the pooled connection is closed under the request → retried, not 502', async (t) => {
  // the upstream answers once per connection and closes it silently right after the
  // next request arrives (no response byte): exactly a keep-alive close racing a write
  const up = await faultServer((sock, _head, n) => {
    if (n % 2 === 1) sock.write(OK)
    else sock.destroy()
  })
  t.teardown(up.close)
  const proxy = await proxyFor(t, up.origin, up.origin)
  t.equal((await send(`${proxy.url}/`)).status, 200, 'warm-up: the connection is pooled')
  const r = await send(`${proxy.url}/`)
  t.equal(r.status, 200, 'no 502')
  t.same(up.requests, ['GET', 'GET', 'GET'], 'the second request was sent, lost with its connection, and retried')
})

t.test('invalid upstream responses → 502', async (t) => {
  const cases: Array<[string, string]> = [
    ['both Transfer-Encoding and Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'],
    ['status line with letters', 'HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n'],
    ['four-digit status', 'HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n'],
    ['not HTTP at all', 'SSH-2.0-OpenSSH_9.6\r\n\r\n'],
    ['two different Content-Length values', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok']
  ]
  for (const [name, reply] of cases) {
    await t.test(name, async (t) => {
      const bad = await faultServer((sock) => { sock.end(reply) })
      t.teardown(bad.close)
      const proxy = await proxyFor(t, bad.origin, bad.origin)
      const r = await send(`${proxy.url}/`)
      t.equal(r.status, 502)
      t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_PROTOCOL')
    })
  }
})

t.test('a reason phrase Node refuses to send (undici accepts it): one protocol failure, a clean 502', async (t) => {
  const bad = await faultServer((sock) => { sock.write('HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok') })
  t.teardown(bad.close)
  const canary = await startUpstream('canary')
  t.teardown(canary.close)
  // two failures would eject: a double count would show as an ejection
  const proxy = await proxyFor(t, bad.origin, canary.origin, { health: { consecutiveFailures: 2, ejectionMs: 60_000 } }, [50, 50])
  const r = await rawRequest(proxy.app.proxyAddress!.port, ['GET / HTTP/1.1\r\nHost: a\r\nx-canary: stable\r\nConnection: close\r\n\r\n'])
  t.equal(r.status, 502)
  t.match(r.text, /"code":"CANARYD_ERR_UPSTREAM_PROTOCOL"/)
  t.equal((r.text.match(/HTTP\/1\.1 /g) ?? []).length, 1, 'one response')
  t.match(r.text, /\r\n\r\n\{.*\}$/s, 'a complete JSON body, not a cut connection')
  const m = await proxy.app.metrics!.registry.metrics()
  t.match(m, /canaryd_upstream_errors_total\{route="web",version="stable",kind="protocol"\} 1\b/)
  t.match(m, /canaryd_upstream_errors_total\{route="web",version="stable",kind="other"\} 0\b/)
  t.match(m, /canaryd_outlier_ejections_total\{route="web",version="stable"\} 0\b/, 'recorded as one failure, not two')
})

t.test('an ejection recorded through the old table survives a swap (request spanning a weight change)', async (t) => {
  let release: (() => void) | undefined
  const stable = await startUpstream('stable', (req, res) => {
    if (req.url === '/hold') release = () => { res.writeHead(500).end('boom') }
    else res.writeHead(500).end('boom')
  })
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const proxy = await proxyFor(t, stable.origin, canary.origin, { health: { consecutiveFailures: 2, ejectionMs: 60_000 } }, [50, 50])
  t.equal((await send(`${proxy.url}/`, { headers: { 'x-canary': 'stable' } })).status, 500, 'failure 1')
  const held = send(`${proxy.url}/hold`, { headers: { 'x-canary': 'stable' } })
  await waitFor(() => release !== undefined)
  await proxy.app.state.setWeights('web', { stable: 60, canary: 40 }, { source: 'test' })
  release!()
  t.equal((await held).status, 500, 'failure 2, recorded by a request bound to the old table: ejects')
  const versions = new Set<string>()
  for (let i = 0; i < 30; i++) versions.add(String((await send(`${proxy.url}/`, { headers: { 'x-user-id': `user-${i}` } })).headers['x-canaryd-version']))
  t.same([...versions], ['canary'], 'the new table sees the ejection: stable gets no users')
  t.match(await proxy.app.metrics!.registry.metrics(), /canaryd_outlier_ejections_total\{route="web",version="stable"\} 1\b/)
})

t.test('an ejection before a swap stays in force after it', async (t) => {
  const stable = await startUpstream('stable', (_req, res) => { res.writeHead(500).end('boom') })
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const proxy = await proxyFor(t, stable.origin, canary.origin, { health: { consecutiveFailures: 2, ejectionMs: 60_000 } }, [50, 50])
  for (let i = 0; i < 2; i++) await send(`${proxy.url}/`, { headers: { 'x-canary': 'stable' } })
  await proxy.app.state.setWeights('web', { stable: 70, canary: 30 }, { source: 'test' })
  const versions = new Set<string>()
  for (let i = 0; i < 30; i++) versions.add(String((await send(`${proxy.url}/`, { headers: { 'x-user-id': `user-${i}` } })).headers['x-canaryd-version']))
  t.same([...versions], ['canary'], 'still ejected after the weight change')
})

t.test('outlier detection: N consecutive failures eject a version; its users go to the rest; never the last', async (t) => {
  const canary = await startUpstream('canary')
  t.teardown(canary.close)
  const proxy = await proxyFor(t, await refusedOrigin(), canary.origin, { health: { consecutiveFailures: 3, ejectionMs: 60_000 } }, [50, 50])
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) statuses.push((await send(`${proxy.url}/`, { headers: { 'x-canary': 'stable' } })).status)
  t.same(statuses, [502, 502, 502], 'pinned requests fail until the threshold')
  // every sticky user now lands on canary, whatever its hash
  const versions = new Set<string>()
  for (let i = 0; i < 40; i++) {
    const r = await send(`${proxy.url}/`, { headers: { 'x-user-id': `user-${i}` } })
    t.equal(r.status, 200)
    versions.add(String(r.headers['x-canaryd-version']))
  }
  t.same([...versions], ['canary'], 'ejected version gets no users')
  t.match(await proxy.app.metrics!.registry.metrics(), /canaryd_outlier_ejections_total\{route="web",version="stable"\} 1\b/, 'the ejection is counted')
})

t.test('outlier detection: 5xx responses count; the last version is never ejected', async (t) => {
  const failing = await startUpstream('stable', (_req, res) => { res.writeHead(500).end('boom') })
  const alsoFailing = await startUpstream('canary', (_req, res) => { res.writeHead(503).end('down') })
  t.teardown(async () => { await failing.close(); await alsoFailing.close() })
  const proxy = await proxyFor(t, failing.origin, alsoFailing.origin, { health: { consecutiveFailures: 2, ejectionMs: 60_000 } }, [50, 50])
  for (let i = 0; i < 2; i++) await send(`${proxy.url}/`, { headers: { 'x-canary': 'stable' } })
  for (let i = 0; i < 4; i++) await send(`${proxy.url}/`, { headers: { 'x-canary': 'canary' } })
  const seen = new Set<string>()
  for (let i = 0; i < 30; i++) {
    const r = await send(`${proxy.url}/`, { headers: { 'x-user-id': `u${i}` } })
    seen.add(String(r.headers['x-canaryd-version']))
  }
  t.same([...seen], ['canary'], 'stable ejected; canary, the last one, still takes traffic despite its failures')
})

t.test('concurrency cap per upstream: past it, 503 at once', async (t) => {
  const slow = await startUpstream('stable', (_req, res) => { setTimeout(() => res.end('late'), 600) })
  t.teardown(slow.close)
  const proxy = await proxyFor(t, slow.origin, slow.origin, { upstream: { maxInFlight: 2 }, timeouts: { upstreamResponseMs: 5000 } })
  const held = [send(`${proxy.url}/`), send(`${proxy.url}/`)]
  await waitFor(() => proxy.app.proxy.inFlight === 2)
  const over = await send(`${proxy.url}/`)
  t.equal(over.status, 503)
  t.equal(over.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_OVERLOADED')
  // answered at once, not queued: the held requests (600 ms upstream) are still in flight
  t.equal(proxy.app.proxy.inFlight, 2, 'answered while both held requests were still in flight')
  t.same((await Promise.all(held)).map((r) => r.status), [200, 200])
  t.equal((await send(`${proxy.url}/`)).status, 200, 'capacity is back')
  t.match(await proxy.app.metrics!.registry.metrics(), /canaryd_requests_total\{route="web",version="stable",code="503",source="user"\} 1\b/, 'the overload 503 is counted on its version')
})

t.test('a chunked request whose body never comes holds no concurrency slot and gets 408 at clientBodyMs', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  const proxy = await proxyFor(t, up.origin, up.origin, { upstream: { maxInFlight: 1 }, timeouts: { clientBodyMs: 300 } })
  const port = proxy.app.proxyAddress!.port
  const idle = rawRequest(port, ['POST /idle HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n'], { waitMs: 5000 })
  await waitFor(() => proxy.app.proxy.inFlight === 1)
  t.equal((await send(`${proxy.url}/`)).status, 200, 'the only slot is free for a real request')
  const r = await idle
  t.equal(r.status, 408)
  t.match(r.text, /CANARYD_ERR_REQUEST_TIMEOUT/)
  t.ok(r.closed, 'connection closed')
  t.same(up.seen.map((s) => s.url), ['/'], 'nothing of the idle request reached the upstream')
  t.equal(proxy.app.proxy.inFlight, 0)
})

t.test('a Content-Length upload that stalls mid-body is cut at clientBodyMs and frees its slot', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  const proxy = await proxyFor(t, up.origin, up.origin, { upstream: { maxInFlight: 1 }, timeouts: { clientBodyMs: 300 } })
  const stalled = rawRequest(proxy.app.proxyAddress!.port, ['POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789'], { waitMs: 5000 })
  await waitFor(() => proxy.app.proxy.inFlight === 1)
  t.equal((await send(`${proxy.url}/`)).status, 503, 'the stalled upload holds the only slot meanwhile')
  const r = await stalled
  t.ok(r.closed, 'the stalled client was cut')
  t.ok(r.status === 408 || r.status === 0, `408 or a closed connection (${r.status})`)
  await waitFor(() => proxy.app.proxy.inFlight === 0)
  t.equal((await send(`${proxy.url}/`)).status, 200, 'the slot is free again')
})

t.test('20 aborted 10 MB uploads and aborted downloads leave the proxy healthy', async (t) => {
  let aborted = 0
  const up = await startUpstream('stable')
  up.server.prependListener('request', (req) => { req.on('aborted', () => { aborted++ }) })
  t.teardown(up.close)
  const proxy = await proxyFor(t, up.origin, up.origin)
  const port = proxy.app.proxyAddress!.port
  const mb = Buffer.alloc(1024 * 1024, 97)
  for (let i = 0; i < 20; i++) {
    await rawRequest(port, [`POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: ${10 * 1024 * 1024}\r\n\r\n`, mb, mb], { waitMs: 60 })
  }
  for (let i = 0; i < 50 && (proxy.app.proxy.inFlight !== 0 || aborted < 20); i++) await sleep(50)
  t.equal(proxy.app.proxy.inFlight, 0, 'no request left in flight')
  t.equal(aborted, 20, 'every upstream request was aborted')
  await waitFor(() => proxy.app.data.listener!.connections === 0, { timeoutMs: 2000 }).catch(() => {})
  t.equal(proxy.app.data.listener!.connections, 0, 'no client socket left open')
  t.equal((await send(`${proxy.url}/`)).status, 200)
})

t.test('client aborting mid-download aborts the upstream response', async (t) => {
  let closedEarly = false
  const up = await startUpstream('stable', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    const chunk = Buffer.alloc(64 * 1024)
    const timer = setInterval(() => res.write(chunk), 5)
    res.on('close', () => { clearInterval(timer); closedEarly = !res.writableFinished })
  })
  t.teardown(up.close)
  const proxy = await proxyFor(t, up.origin, up.origin)
  const r = await rawRequest(proxy.app.proxyAddress!.port, ['GET / HTTP/1.1\r\nHost: a\r\n\r\n'], { waitMs: 200 })
  t.equal(r.status, 200)
  for (let i = 0; i < 40 && !closedEarly; i++) await sleep(50)
  t.ok(closedEarly, 'the upstream response was cut when the client left')
  t.equal(proxy.app.proxy.inFlight, 0)
})

t.test('a slow reader of a large response: backpressure bounds what the proxy pulls', async (t) => {
  let written = 0
  const total = 256 * 1024 * 1024
  const up = await startUpstream('stable', (_req, res) => {
    res.writeHead(200, { 'content-length': String(total) })
    const chunk = Buffer.alloc(256 * 1024)
    const pump = (): void => {
      while (written < total) {
        written += chunk.length
        if (!res.write(chunk)) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  })
  t.teardown(up.close)
  const proxy = await proxyFor(t, up.origin, up.origin)
  // a client that sends the request and never reads (paused, no data listener)
  const client = connect(proxy.app.proxyAddress!.port, '127.0.0.1')
  client.pause()
  client.write('GET /big HTTP/1.1\r\nHost: a\r\n\r\n')
  t.teardown(() => { client.destroy() })
  // wait until the upstream has stopped writing (no progress across 200 ms), then check it stays stopped
  let last = -1
  await waitFor(() => {
    const stalled = written > 0 && written === last
    last = written
    return stalled
  }, { intervalMs: 200, timeoutMs: 10_000 })
  const first = written
  await sleep(300)
  t.equal(written, first, 'the upstream is paused, not streaming on')
  // what the upstream could write is what the proxy pulled plus socket buffers: bounded, not 256 MB
  t.ok(written < 64 * 1024 * 1024, `upstream stalled after ${(written / 1048576).toFixed(1)} MB of 256 MB`)
})
