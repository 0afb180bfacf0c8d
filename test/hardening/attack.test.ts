/**
 * Issue 11, second reader: attacks on the per-connection pipeline queue
 * (src/proxy/server.ts, Connection / #enqueue / #next / #run / #clientError /
 * #upgrade) against a real canaryd on 127.0.0.1, written byte for byte on raw
 * sockets, with wire upstreams that keep every byte they receive.
 *
 * The first half are regression tests for what holds (splits at byte
 * boundaries, garbage while queued or active, bodies breaking mid-forward,
 * timeouts, HTTP/1.0, Connection: close, 100-continue, drains, upstream
 * faults, more than 32 queued, slow readers, random aborts, Host edge cases).
 * The tests whose name starts with "fixed:" failed against the first version
 * of the queue: each states what must hold and what was seen then.
 */
import { createHash } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import t, { type Test } from 'tap'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { refusedOrigin } from '../helpers/upstream.js'
import { startWireUpstream, type WireRequest, type WireUpstream } from '../helpers/wire.js'
import { scrape, sum } from '../metrics/scrape.js'
import { assertSettled, freshRequests as freshRequestsOn, markWires, RawClient, settleInFlight, startWireEnv, wiresSince, type RawResponse, type WireEnv, type WireEnvOptions } from './pipeline-lib.js'
import { sleep, waitFor } from './raw.js'

const H = 'Host: app.test\r\n'
const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\n${H}${extra}\r\n`
const postLength = (path: string, body: string, extra = ''): string =>
  `POST ${path} HTTP/1.1\r\n${H}${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
const postChunked = (path: string, chunks: string[]): string =>
  `POST ${path} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n${chunks.map((c) => `${Buffer.byteLength(c).toString(16)}\r\n${c}\r\n`).join('')}0\r\n\r\n`
const wsUpgrade = (path: string, host = 'app.test'): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
const CONNECT = 'CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n'
const H2C = `GET /h2c HTTP/1.1\r\n${H}Upgrade: h2c\r\nConnection: Upgrade\r\n\r\n`
const TWO_HOSTS = (path: string): string => `GET ${path} HTTP/1.1\r\n${H}Host: other.test\r\n\r\n`
/** Over upstream.largeBodyBytes (65536 by default): goes upstream through node:http, not undici. */
const LARGE = 'L'.repeat(70_000)

/** A running canaryd over two wire upstreams, and the proxy-side sockets it accepted. */
interface Env extends WireEnv {
  /** Every client socket the proxy accepted (server side), to look at bytesRead and to clean up. */
  sockets: Socket[]
  /** Upstream sockets switched to WebSocket (node:http stops tracking them: closed by the teardown). */
  upgraded: Set<Socket>
}

async function setup (t: Test, o: Omit<WireEnvOptions, 'beforeClose'> = {}): Promise<Env> {
  const sockets: Socket[] = []
  const upgraded = new Set<Socket>()
  const env = await startWireEnv(t, {
    weights: [100, 0],
    ...o,
    // a socket the proxy never closes (one of the bugs below) would keep
    // app.close() waiting forever: cut them first, the test has its verdict
    beforeClose: () => {
      for (const s of sockets) s.destroy()
      for (const s of upgraded) s.destroy()
    }
  })
  env.proxy.app.proxy.server.on('connection', (s: Socket) => { sockets.push(s) })
  return { ...env, sockets, upgraded }
}

/**
 * Makes a wire upstream accept WebSocket upgrades: 101, then every byte
 * echoed back; it closes when its client does (as a WebSocket server would).
 */
function acceptUpgrades (env: Env, w: WireUpstream): string[] {
  const seen: string[] = []
  w.server.on('upgrade', (req, socket: Socket) => {
    seen.push(req.url ?? '')
    env.upgraded.add(socket)
    socket.on('close', () => env.upgraded.delete(socket))
    socket.on('error', () => {})
    socket.on('end', () => { socket.end() })
    const accept = createHash('sha1').update(`${String(req.headers['sec-websocket-key'])}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
    socket.on('data', (d: Buffer) => socket.write(d))
  })
  return seen
}

/** A normal request on a fresh connection to each version succeeds. */
async function freshRequests (t: Test, env: Env): Promise<void> {
  await freshRequestsOn(t, env, false)
}

const statuses = (c: RawClient): number[] => c.responses.map((r) => r.status)
const urls = (rs: WireRequest[]): string[] => rs.map((r) => r.url)

function json (r: RawResponse | undefined): Record<string, unknown> {
  try {
    return JSON.parse(r?.body.toString() ?? '') as Record<string, unknown>
  } catch {
    return {}
  }
}

/** Deterministic PRNG (an LCG): the random-abort test replays the same cases every run. */
function seeded (seed: number): () => number {
  let s = seed
  return () => {
    s = (Math.imul(s, 1103515245) + 12345) & 0x7fffffff
    return s / 0x7fffffff
  }
}

// ===========================================================================
// Regression tests: what holds
// ===========================================================================

t.test('a pipeline split at byte boundaries: answers in order, nothing behind the refusal upstream', async (t) => {
  const env = await setup(t)
  const pipeline = get('/a') + postLength('/b', 'hello') + postChunked('/c', ['abc']) + TWO_HOSTS('/refused') + get('/after') + postLength('/after-post', 'xyz')
  const bad: string[] = []
  // every third boundary keeps this under a second (a step of 1 takes ~2.5 s and found nothing more)
  for (let k = 1; k < pipeline.length; k += 3) {
    const mark = markWires(env.wires)
    const c = await RawClient.open(env.port)
    c.write(pipeline.slice(0, k))
    await new Promise((resolve) => setImmediate(resolve))
    c.write(pipeline.slice(k))
    const closed = await c.waitClosed(1000)
    c.destroy()
    const w = wiresSince(env.wires, mark)
    const got = `${statuses(c).join(',')} closed=${String(closed)} upstream=${w.requestLines.join(',')}`
    if (got !== '200,200,200,400 closed=true upstream=GET /a,POST /b,POST /c' || /after|refused/.test(w.text)) bad.push(`split at ${k}: ${got}`)
  }
  t.same(bad, [], 'every split point: 200, 200, 200, 400, closed; the upstream got /a, /b, /c only')

  const mark = markWires(env.wires)
  const c = await RawClient.open(env.port)
  for (let i = 0; i < pipeline.length && !c.peerClosed; i++) {
    c.write(pipeline[i]!)
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.ok(await c.waitClosed(1000), 'one byte per write: closed after the refusal')
  c.destroy()
  t.same(statuses(c), [200, 200, 200, 400], 'one byte per write: same answers')
  t.same(wiresSince(env.wires, mark).requestLines, ['GET /a', 'POST /b', 'POST /c'], 'one byte per write: same upstream requests')
  await assertSettled(t, env)
})

t.test('a refusal followed by a pipeline trickled in many small writes', async (t) => {
  const env = await setup(t)
  const bytes = get('/first') + TWO_HOSTS('/refused') + get('/after-1') + postLength('/after-2', LARGE) + wsUpgrade('/after-ws')
  const mark = markWires(env.wires)
  const c = await RawClient.open(env.port)
  // 40-byte writes, 3 ms apart: the refusal is answered and the connection closing while the rest still arrives
  for (let i = 0; i < bytes.length && !c.peerClosed && i < 4000; i += 40) {
    c.write(bytes.slice(i, i + 40))
    await sleep(3)
  }
  t.ok(await c.waitClosed(1500), 'closed after the refusal')
  c.destroy()
  t.same(statuses(c), [200, 400])
  t.same(wiresSince(env.wires, mark).requestLines, ['GET /first'], 'only the request before the refusal reached an upstream')
  t.notMatch(wiresSince(env.wires, mark).text, /after|refused/)
  await assertSettled(t, env)
})

t.test('garbage while a request is active or queued: every earlier request answered, then 400', async (t) => {
  const env = await setup(t, { wire: { delayMs: (r) => r.url === '/slow' ? 200 : 0 } })
  for (const variant of ['active', 'queued'] as const) {
    await t.test(variant, async (t) => {
      const mark = markWires(env.wires)
      const c = await RawClient.open(env.port)
      c.write(get('/slow') + (variant === 'queued' ? get('/q') : ''))
      await sleep(50)
      // the garbage arrives in a later write, while /slow is still upstream
      c.write('GARBAGE\r\n\r\n' + get('/after'))
      t.ok(await c.waitClosed(2000), 'closed after the 400')
      c.destroy()
      t.equal(c.parseError, '')
      t.same(statuses(c), variant === 'queued' ? [200, 200, 400] : [200, 400])
      t.equal(c.responses.at(-1)?.code, 'CANARYD_ERR_BAD_REQUEST')
      t.same(wiresSince(env.wires, mark).requestLines, variant === 'queued' ? ['GET /slow', 'GET /q'] : ['GET /slow'])
    })
  }
  await assertSettled(t, env)
})

t.test('a chunked body that breaks after it was forwarded never looks complete upstream', async (t) => {
  // both upstream clients: node:http (largeBodyBytes default) and undici (0)
  for (const largeBodyBytes of [65536, 0]) {
    for (const queued of [false, true]) {
      await t.test(`largeBodyBytes ${largeBodyBytes}, ${queued ? 'behind a slow GET' : 'first on its connection'}`, async (t) => {
        const env = await setup(t, { extra: { upstream: { largeBodyBytes } }, wire: { delayMs: (r) => r.url === '/slow' ? 150 : 0 } })
        const c = await RawClient.open(env.port)
        c.write((queued ? get('/slow') : '') + `POST /chunked HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`)
        await sleep(queued ? 250 : 80)
        c.write('6\r\n world\r\n')
        await sleep(30)
        c.write('zz\r\nbad\r\n' + get('/after'))
        t.ok(await c.waitClosed(1500), 'closed')
        c.destroy()
        t.same(statuses(c), queued ? [200, 400] : [400])
        await sleep(50)
        const w = wiresSince(env.wires, [[0], [0]])
        t.same(urls(env.stable.requests), queued ? ['/slow'] : [], 'the upstream never parsed a complete /chunked request')
        t.notMatch(w.text, /\r\n0\r\n\r\n/, 'no last-chunk was sent upstream for the broken body')
        t.notMatch(w.text, /after/)
        await assertSettled(t, env)
      })
    }
  }
})

t.test('clientHeadersMs while a request is active: the slow one is answered, the late head gets 408', async (t) => {
  const env = await setup(t, { extra: { timeouts: { clientHeadersMs: 200 } }, wire: { delayMs: (r) => r.url.startsWith('/slow') ? 500 : 0 } })
  const mark = markWires(env.wires)
  const c = await RawClient.open(env.port)
  c.write(get('/slow') + 'GET /partial HTTP/1.1\r\nHost: app')
  t.ok(await c.waitClosed(3000), 'closed after the 408')
  c.destroy()
  t.same(statuses(c), [200, 408])
  t.equal(c.responses[1]?.code, 'CANARYD_ERR_REQUEST_TIMEOUT')
  t.same(wiresSince(env.wires, mark).requestLines, ['GET /slow'])
  // a slow request alone is not a slow client: no 408
  const c2 = await RawClient.open(env.port)
  c2.write(get('/slow-alone'))
  await c2.waitResponses(1, 3000).catch(() => {})
  await sleep(300)
  t.same(statuses(c2), [200], 'a request whose upstream is slower than clientHeadersMs is answered')
  t.notOk(c2.peerClosed, 'and its connection stays open')
  c2.destroy()
  await assertSettled(t, env)
})

t.test('HTTP/1.0 pipelines and Connection: close in the middle: nothing after the last answer is forwarded', async (t) => {
  const env = await setup(t, { wire: { delayMs: (r) => r.url === '/slow' ? 150 : 0 } })
  const g10 = (p: string, keepAlive: boolean): string => `GET ${p} HTTP/1.0\r\n${H}${keepAlive ? 'Connection: keep-alive\r\n' : ''}\r\n`
  const cases = [
    { name: 'HTTP/1.0 keep-alive, keep-alive, close, keep-alive', bytes: g10('/k1', true) + g10('/k2', true) + g10('/k3', false) + g10('/k4', true), later: '', want: ['/k1', '/k2', '/k3'] },
    { name: 'GET, GET with Connection: close, GET, POST (one write)', bytes: get('/a') + get('/b', 'Connection: close\r\n') + get('/c') + postLength('/d', 'xx'), later: '', want: ['/a', '/b'] },
    { name: 'slow GET, Connection: close queued, GET queued, GET in a later write', bytes: get('/slow') + get('/b', 'Connection: close\r\n') + get('/c'), later: get('/d'), want: ['/slow', '/b'] }
  ]
  for (const k of cases) {
    await t.test(k.name, async (t) => {
      const before = env.stable.requests.length
      const c = await RawClient.open(env.port)
      c.write(k.bytes)
      if (k.later !== '') {
        await sleep(50)
        c.write(k.later)
      }
      t.ok(await c.waitClosed(2000), 'closed after the last answer')
      c.destroy()
      t.same(statuses(c), k.want.map(() => 200))
      t.same(c.responses.map((r) => json(r).url), k.want, 'each answer is its request\'s, in order')
      t.match(c.responses.at(-1)?.headers.connection ?? '', /close/i)
      await sleep(30)
      t.same(urls(env.stable.requests.slice(before)), k.want, 'the upstream got exactly these, in order')
    })
  }
  await assertSettled(t, env)
})

t.test('Expect: 100-continue pipelined behind a slow GET: the 100 comes in its turn, the body after it', async (t) => {
  const env = await setup(t, { wire: { delayMs: (r) => r.url === '/slow' ? 200 : 0 } })
  let sentBodyAfter = -1
  const c = await RawClient.open(env.port, {
    onResponse: (r, cl) => {
      if (r.status === 100) {
        sentBodyAfter = cl.responses.length - 1
        cl.write('hello')
      }
    }
  })
  c.write(get('/slow') + `POST /cont HTTP/1.1\r\n${H}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n`)
  await c.waitResponses(3, 3000).catch(() => {})
  c.write(get('/after'))
  await c.waitResponses(4, 2000).catch(() => {})
  c.destroy()
  t.same(statuses(c), [200, 100, 200, 200], '200 (slow), 100, 200 (cont), 200 (after)')
  t.equal(sentBodyAfter, 1, 'the 100 came after the first request\'s answer')
  t.same(env.stable.requests.map((r) => `${r.url}:${r.body.length}`), ['/slow:0', '/cont:5', '/after:0'])
  await assertSettled(t, env)
})

t.test('drain while a pipeline is queued: the active request finishes with Connection: close, nothing queued is forwarded', async (t) => {
  const env = await setup(t, { wire: { delayMs: (r) => r.url === '/slow' ? 200 : 0 } })
  const mark = markWires(env.wires)
  const c = await RawClient.open(env.port)
  c.write(get('/slow') + get('/q1') + postLength('/q2', 'abc') + postChunked('/q3', ['x']))
  await waitFor(() => env.stable.requests.length === 1 || env.stable.pending === 1)
  const start = performance.now()
  const clean = await Promise.race([env.proxy.app.close(), sleep(3000).then(() => 'hung')])
  const ms = performance.now() - start
  t.equal(clean, true, 'app.close() resolves true')
  t.ok(ms < 1000, `drain took ${Math.round(ms)} ms`)
  t.ok(await c.waitClosed(1000), 'the client connection is closed')
  c.destroy()
  t.same(statuses(c), [200])
  t.match(c.responses[0]?.headers.connection ?? '', /close/i, 'the answer that finished the drain says Connection: close')
  t.same(wiresSince(env.wires, mark).requestLines, ['GET /slow'])
  t.equal(env.proxy.app.proxy.inFlight, 0)
})

t.test('upstream failures in the middle of a pipeline', async (t) => {
  const dead = await refusedOrigin()
  const stable = await startWireUpstream({
    handler: (r, req, res) => {
      if (r.url === '/reset-before') {
        req.socket.destroy()
        return
      }
      if (r.url === '/reset-after') {
        res.writeHead(200, { 'content-length': 100 })
        res.write('partial')
        setTimeout(() => req.socket.destroy(), 20)
        return
      }
      res.writeHead(200, { 'content-length': 2 })
      res.end('ok')
    }
  })
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, dead, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await stable.close() })
  const port = proxy.app.proxyAddress!.port

  await t.test('refused origin and a reset before the response: 502 each, the pipeline goes on', async (t) => {
    const before = stable.requests.length
    const c = await RawClient.open(port)
    c.write(get('/a') + get('/to-canary', 'x-canary: canary\r\n') + get('/b') + get('/reset-before') + get('/c'))
    await c.waitResponses(5, 3000).catch(() => {})
    c.destroy()
    t.same(statuses(c), [200, 502, 200, 502, 200])
    t.same(c.responses.map((r) => r.code), ['', 'CANARYD_ERR_UPSTREAM_CONNECT', '', 'CANARYD_ERR_UPSTREAM_RESET', ''])
    // /reset-before twice: the one retry of an idempotent request reset before any response byte
    t.same(urls(stable.requests.slice(before)), ['/a', '/b', '/reset-before', '/reset-before', '/c'], 'in order, nothing run concurrently')
  })
  await t.test('a reset after the response headers: the connection is cut, nothing queued behind it runs', async (t) => {
    const before = stable.requests.length
    const c = await RawClient.open(port)
    c.write(get('/a') + get('/reset-after') + get('/b'))
    t.ok(await c.waitClosed(2000), 'closed')
    c.destroy()
    t.same(statuses(c), [200], 'the truncated answer is not counted as complete')
    t.match(c.parseError, /cut short/, 'the client sees the body cut short')
    await sleep(50)
    t.same(urls(stable.requests.slice(before)), ['/a', '/reset-after'])
  })
  const f = await settleInFlight(proxy)
  t.same(f.gauge, { stable: 0, canary: 0 })
  t.equal(f.proxy, 0)
})

t.test('more than 32 queued requests with bodies, the 33rd cut mid-body: all answered, in order, twice', async (t) => {
  const env = await setup(t, { wire: { hold: (r) => r.url === '/hold' } })
  const reqs = [get('/hold')]
  for (let i = 0; i < 40; i++) {
    if (i % 10 === 7) reqs.push(postChunked(`/p${i}`, ['abcd']))
    else reqs.push(postLength(`/p${i}`, i % 10 === 3 ? LARGE : 'x'.repeat(100 + i)))
  }
  const all = reqs.join('')
  const cut = all.indexOf('/p32 ') + 100
  const c = await RawClient.open(env.port)
  t.teardown(() => { c.destroy() })
  c.write(all.slice(0, cut))
  await sleep(100)
  c.write(all.slice(cut))
  await sleep(100)
  env.stable.release()
  await c.waitResponses(41, 8000).catch(() => {})
  t.equal(c.responses.length, 41, '41 answers')
  t.ok(c.responses.every((r) => r.status === 200), 'all 200')
  t.same(urls(env.stable.requests), ['/hold', ...Array.from({ length: 40 }, (_, i) => `/p${i}`)], 'upstream order')
  t.same(env.stable.requests.slice(1).map((r) => r.body.length), Array.from({ length: 40 }, (_, i) => i % 10 === 7 ? 4 : i % 10 === 3 ? LARGE.length : 100 + i), 'every body whole')

  // 60 more in separate writes while one is held: the proxy pauses at 32 and must resume
  c.write(get('/hold'))
  await waitFor(() => env.stable.pending === 1)
  for (let i = 0; i < 60; i++) {
    c.write(get(`/g${i}`))
    await sleep(1)
  }
  await sleep(50)
  env.stable.release()
  await c.waitResponses(102, 5000).catch(() => {})
  t.equal(c.responses.length, 102, 'the second round is answered in full (no stall after the pause)')
  t.notOk(c.peerClosed, 'keep-alive')
  await assertSettled(t, env)
})

t.test('a slow-reading client with a 4 MB answer and 50 requests behind it: no deadlock', async (t) => {
  const big = Buffer.alloc(4_000_000, 'z')
  const env = await setup(t, {
    wire: {
      handler: (r, _req, res) => {
        const body = r.url === '/big' ? big : Buffer.from('ok')
        res.writeHead(200, { 'content-length': body.length })
        res.end(body)
      }
    }
  })
  const s = connect(env.port, '127.0.0.1')
  t.teardown(() => { s.destroy() })
  await new Promise((resolve) => s.once('connect', resolve))
  s.pause()
  s.write(get('/big') + Array.from({ length: 50 }, (_, i) => get(`/n${i}`)).join(''))
  let got = 0
  const start = Date.now()
  // read 32 KB every 4 ms (about 8 MB/s) until every answer is in
  while (Date.now() - start < 8000 && !(env.stable.requests.length === 51 && got >= big.length + 50 * 150)) {
    await sleep(4)
    let n = 0
    let chunk: Buffer | null
    while (n < 32_768 && (chunk = s.read() as Buffer | null) !== null) n += chunk.length
    got += n
  }
  t.equal(env.stable.requests.length, 51, 'every request reached the upstream, one after the other')
  t.ok(got >= big.length + 50 * 150, `the client read everything (${got} bytes)`)
  s.destroy()
  await assertSettled(t, env)
})

t.test('upgrades and CONNECT pipelined behind a slow GET wait their turn', async (t) => {
  const env = await setup(t, { wire: { delayMs: (r) => r.url === '/slow' ? 150 : 0 } })
  const seen = acceptUpgrades(env, env.stable)
  await t.test('WebSocket: 200, then 101, and the bytes sent right after the upgrade request are relayed', async (t) => {
    const c = await RawClient.open(env.port)
    let raw = ''
    c.socket.on('data', (d: Buffer) => { raw += d.toString('latin1') })
    c.write(get('/slow') + wsUpgrade('/ws') + 'EARLY-BYTES')
    await waitFor(() => raw.includes('EARLY-BYTES'), { timeoutMs: 2000 }).catch(() => {})
    c.destroy()
    t.same(statuses(c), [200, 101])
    t.ok(raw.includes('EARLY-BYTES'), 'the early bytes were echoed by the upstream')
    t.same(seen, ['/ws'])
  })
  await t.test('CONNECT: 200, then 501, closed, nothing upstream', async (t) => {
    const mark = markWires(env.wires)
    const c = await RawClient.open(env.port)
    c.write(get('/slow') + CONNECT + get('/after'))
    t.ok(await c.waitClosed(2000), 'closed')
    c.destroy()
    t.same(statuses(c), [200, 501])
    t.same(wiresSince(env.wires, mark).requestLines, ['GET /slow'])
  })
  await waitFor(() => env.upgraded.size === 0, { timeoutMs: 1000 }).catch(() => {})
  await assertSettled(t, env)
})

t.test('random client aborts (seeded): in-flight back to 0, every connection closed, drain clean', async (t) => {
  const rnd = seeded(20261130)
  const env = await setup(t, { extra: { timeouts: { clientBodyMs: 500 } }, weights: [50, 50], wire: { delayMs: () => Math.floor(rnd() * 40) } })
  acceptUpgrades(env, env.stable)
  acceptUpgrades(env, env.canary)
  const pieces = [
    () => get('/g'), () => postLength('/p', 'x'.repeat(Math.floor(rnd() * 3000))), () => postLength('/L', LARGE),
    () => postChunked('/c', ['hello', 'world']), () => TWO_HOSTS('/r'), () => 'JUNK\r\n\r\n', () => wsUpgrade('/ws'),
    () => `POST /e HTTP/1.1\r\n${H}Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc`, () => get('/x', 'x-canary: canary\r\n'),
    () => `TRACE /t HTTP/1.1\r\n${H}\r\n`, () => CONNECT, () => H2C
  ]
  const runOne = async (): Promise<void> => {
    let bytes = ''
    const n = 1 + Math.floor(rnd() * 6)
    for (let i = 0; i < n; i++) bytes += pieces[Math.floor(rnd() * pieces.length)]!()
    const c = await RawClient.open(env.port)
    const abortAfter = Math.floor(rnd() * 80)
    const size = Math.ceil(bytes.length / (1 + Math.floor(rnd() * 4)))
    const start = Date.now()
    for (let i = 0; i < bytes.length && Date.now() - start < abortAfter; i += size) {
      // sometimes a write stops short: a request cut at a random byte
      const end = rnd() < 0.3 ? i + Math.floor(rnd() * size) : i + size
      c.write(bytes.slice(i, end))
      await sleep(Math.floor(rnd() * 15))
    }
    await sleep(Math.max(0, abortAfter - (Date.now() - start)))
    if (rnd() < 0.5) c.reset()
    else c.destroy()
  }
  for (let batch = 0; batch < 12; batch++) await Promise.all(Array.from({ length: 10 }, runOne))
  await assertSettled(t, env)
  await waitFor(() => env.proxy.app.data.listener!.connections === 0, { timeoutMs: 2000 }).catch(() => {})
  t.equal(env.proxy.app.data.listener!.connections, 0, 'every client connection closed once its client left')
  await freshRequests(t, env)
  const start = performance.now()
  const clean = await Promise.race([env.proxy.app.close(), sleep(3000).then(() => 'hung')])
  t.equal(clean, true, `app.close() resolves true (${Math.round(performance.now() - start)} ms)`)
})

t.test('Host edge cases', async (t) => {
  const env = await setup(t)
  const valid = ['[fe80::1%25eth0]', '[::ffff:1.2.3.4]', '[::]', 'app.test.', 'APP.TEST', 'a:0', 'a'.repeat(8000), '%41pp.test']
  const invalid = ['[v1.fe80::a]', '[]', '[::1]x', '[::1]:80:80', ':80', '1.2.3.4:', 'a:65536', 'a:+80', 'a%zz', 'a%4', 'a\tb']
  for (const host of valid) {
    const c = await RawClient.open(env.port)
    c.write(`GET /h HTTP/1.1\r\nHost: ${host}\r\n\r\n`)
    await c.waitResponses(1, 1000).catch(() => {})
    c.destroy()
    t.equal(c.responses[0]?.status, 200, `valid: ${JSON.stringify(host.slice(0, 20))}${host.length > 20 ? `… (${host.length})` : ''}`)
  }
  for (const host of invalid) {
    const mark = markWires(env.wires)
    const c = await RawClient.open(env.port)
    c.write(`GET /h HTTP/1.1\r\nHost: ${host}\r\n\r\n${get('/after')}`)
    const closed = await c.waitClosed(1000)
    c.destroy()
    t.same(c.responses.map((r) => `${r.status} ${r.code}`), ['400 CANARYD_ERR_INVALID_HOST'], `invalid: ${JSON.stringify(host)}`)
    t.ok(closed && wiresSince(env.wires, mark).bytes === 0, 'closed, nothing upstream')
  }
  for (const [name, bytes] of [
    ['Host and HOST', `GET /d HTTP/1.1\r\n${H}HOST: app.test\r\n\r\n`],
    ['Host then host, different values', `GET /d HTTP/1.1\r\n${H}host: other.test\r\n\r\n`]
  ] as const) {
    const mark = markWires(env.wires)
    const c = await RawClient.open(env.port)
    c.write(bytes + get('/after'))
    await c.waitClosed(1000)
    c.destroy()
    t.same(c.responses.map((r) => `${r.status} ${r.code}`), ['400 CANARYD_ERR_INVALID_HOST'], `two Host fields (${name}) are refused whatever their case`)
    t.equal(wiresSince(env.wires, mark).bytes, 0)
  }
  await assertSettled(t, env)
})

t.test('Connection naming Host and framing headers in combinations removes none of them', async (t) => {
  const env = await setup(t)
  const cases = [
    { name: 'Connection: Host, Content-Length', bytes: postLength('/c1', 'abc', 'Connection: Host, Content-Length\r\n'), body: 3 },
    { name: 'two Connection fields (host; content-length, x-forwarded-for)', bytes: postLength('/c2', 'abc', 'Connection: host\r\nConnection: content-length, x-forwarded-for\r\nX-Forwarded-For: 9.9.9.9\r\n'), body: 3 },
    { name: 'Connection: close, host', bytes: get('/c3', 'Connection: close, host\r\n'), body: 0 },
    { name: 'Connection: transfer-encoding, host (chunked)', bytes: `POST /c4 HTTP/1.1\r\n${H}Connection: transfer-encoding, host\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`, body: 3 }
  ]
  for (const k of cases) {
    const before = env.stable.requests.length
    const c = await RawClient.open(env.port)
    c.write(k.bytes)
    await c.waitResponses(1, 1000).catch(() => {})
    c.destroy()
    const r = env.stable.requests[before]
    const raw = r?.rawHeaders ?? []
    const host = raw.filter((_, i) => i % 2 === 0 && raw[i]!.toLowerCase() === 'host').length
    t.equal(c.responses[0]?.status, 200, k.name)
    t.equal(host, 1, `${k.name}: Host kept`)
    t.equal(r?.body.length, k.body, `${k.name}: body framed and whole`)
  }
  const xff = env.stable.requests[1]?.rawHeaders
  // the peer is not a trusted proxy: its X-Forwarded-For is replaced by canaryd's, whatever Connection names
  t.ok(xff?.includes('127.0.0.1') === true && !xff.includes('9.9.9.9'), 'X-Forwarded-For is set by canaryd even when Connection names it')
  await assertSettled(t, env)
})

/**
 * Sends `bytes` on a socket that allows half-open; once canaryd's answer and
 * FIN are in, writes one more byte and closes. Resolves with the status.
 */
async function answerThenByteThenClose (port: number, bytes: string): Promise<number> {
  return await new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    let got = ''
    const timer = setTimeout(() => { s.destroy(); resolve(0) }, 2000)
    s.on('data', (d: Buffer) => { got += d.toString('latin1') })
    s.on('end', () => {
      clearTimeout(timer)
      s.write('Y')
      s.end()
      resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? 0))
    })
    s.on('error', () => { clearTimeout(timer); resolve(0) })
    s.write(bytes)
  })
}

t.test('a refused CONNECT or upgrade closes its socket even when the client sends one more byte', async (t) => {
  // Node has detached these sockets from its parser and no longer reads
  // them: answered with socket.end() (before 98c2c74), a byte the client
  // sent after the request stayed unread, its FIN never surfaced as 'end',
  // and the socket was never destroyed: it kept a limits.maxConnections slot
  // and kept server.close() (app.close(), SIGTERM) waiting forever.
  const env = await setup(t, { extra: { limits: { maxConnections: 3 } } })
  const got: number[] = []
  for (const bytes of [CONNECT, H2C, wsUpgrade('/ws', 'evil@app.test')]) got.push(await answerThenByteThenClose(env.port, bytes))
  t.same(got, [501, 400, 400], 'CONNECT → 501, h2c → 400, WebSocket with an invalid Host → 400')
  await waitFor(() => env.proxy.app.data.listener!.connections === 0, { timeoutMs: 500 }).catch(() => {})
  t.equal(env.proxy.app.data.listener!.connections, 0, 'their sockets are closed once the clients left')
  t.equal(sum(await scrape(env.proxy), 'canaryd_connections_open'), 0, 'canaryd_connections_open is 0')
  const probe = await RawClient.open(env.port)
  probe.write(get('/probe'))
  await probe.waitResponses(1, 500).catch(() => {})
  probe.destroy()
  t.equal(probe.responses[0]?.status, 200, `a new client is served (maxConnections 3 not used up by gone clients; peer closed at once: ${String(probe.peerClosed)})`)
  const clean = await Promise.race([env.proxy.app.close(), sleep(1000).then(() => 'still waiting after 1 s')])
  t.equal(clean, true, 'app.close() resolves')
})

// ===========================================================================
// BUG: tests that fail against the code they were written for
// ===========================================================================

t.test('fixed: a head that timed out (408 owed) while a request was active is still forwarded when it completes', async (t) => {
  // #clientError answers ERR_HTTP_REQUEST_TIMEOUT later (conn.owed) when a
  // request is active; unlike an llhttp error, this timeout leaves Node's
  // parser running, and #onRequest checks conn.closed but not conn.failed:
  // the late head and everything pipelined after it are queued, forwarded
  // and answered 200 before the 408 that refused them.
  const env = await setup(t, { extra: { timeouts: { clientHeadersMs: 200 } }, wire: { delayMs: (r) => r.url === '/slow' ? 700 : 0 } })
  const mark = markWires(env.wires)
  const c = await RawClient.open(env.port)
  c.write(get('/slow') + 'GET /late HTTP/1.1\r\nHost: app')
  await sleep(450)
  c.write('.test\r\n\r\n' + get('/after'))
  await c.waitClosed(2000)
  c.destroy()
  t.same(statuses(c), [200, 408], '200 for /slow, then the 408, then the connection closes')
  t.same(wiresSince(env.wires, mark).requestLines, ['GET /slow'], 'neither the timed-out request nor the one after it reached the upstream')
})

t.test('fixed: the 32-request pause is undone by the next response: the queue grows without bound', async (t) => {
  // #enqueue pauses the socket at 32 queued requests the way Node does
  // (socket._paused), but every response written on the socket (a Buffer
  // body, or a drain) goes through Node's updateOutgoingData/socketOnDrain
  // (_http_server.js), which resumes any socket whose _paused is set; and
  // #enqueue never pauses again while conn.paused is still true. So one
  // connection queues requests without limit behind any upstream that
  // answers (measured: 100,000 queued, +151 MB of heap from 2.7 MB sent).
  const env = await setup(t, { wire: { delayMs: 20 } })
  const c = await RawClient.open(env.port)
  t.teardown(() => { c.destroy() })
  const batch = Array.from({ length: 30 }, (_, i) => get(`/q${i}`)).join('')
  let sent = 0
  for (let i = 0; i < 100; i++) {
    c.write(batch)
    sent += batch.length
    await sleep(4)
  }
  await sleep(100)
  const read = env.sockets[0]?.bytesRead ?? 0
  t.ok(read < sent / 4, `the proxy stopped reading the pipeline: it read ${read} of the ${sent} bytes (3,000 requests; ${c.responses.length} answered so far, so about ${Math.round(read / (batch.length / 30)) - c.responses.length} were queued)`)
})

t.test('a client that leaves while reading is paused (32+ queued) is noticed at the next write, bounded', async (t) => {
  // Pausing at 32 stops reading the socket (readStop), so the client's FIN
  // or RST is not read while the first request waits on its upstream: the
  // request keeps its slot until the upstream answers (bounded by
  // upstreamResponseMs), and the write of that answer is what shows the
  // client gone. After a FIN at most the next queued request can still go
  // out before the RST to that write comes back; never more. (With 2 queued,
  // pipeline.test.ts, both endings are seen at once.) Documented in
  // docs/hardening.md.
  for (const ending of ['FIN', 'RST'] as const) {
    await t.test(ending, async (t) => {
      const env = await setup(t, { wire: { hold: (r) => r.url === '/hold' } })
      const c = await RawClient.open(env.port)
      c.write(get('/hold') + Array.from({ length: 40 }, (_, i) => get(`/g${i}`)).join(''))
      await waitFor(() => env.stable.pending === 1)
      await sleep(30)
      if (ending === 'FIN') c.destroy()
      else c.reset()
      await sleep(100)
      env.stable.release()
      const left = await waitFor(() => env.proxy.app.proxy.inFlight === 0 && env.stable.pending === 0, { timeoutMs: 2000 }).then(() => true, () => false)
      t.ok(left, `in-flight released once the upstream answered (app.proxy.inFlight ${env.proxy.app.proxy.inFlight})`)
      await sleep(200)
      env.stable.release()
      const got = urls(env.stable.requests)
      t.ok(got.length <= 2, `at most one queued request followed /hold (${got.join(', ')})`)
      t.same(got, ['/hold', '/g0'].slice(0, got.length), 'in order')
      await assertSettled(t, env)
    })
  }
})

t.test('fixed: a WebSocket upgrade queued behind a slow GET is still sent upstream after the client sent FIN', async (t) => {
  // Node's upgrade path (_http_server.js onParserExecuteCommon) removes its
  // 'end'/'close' listeners and stops consuming the socket when it emits
  // 'upgrade'; canaryd queues the upgrade and adds only an 'error' listener,
  // so a FIN is never read: the GET keeps its slot until its upstream
  // answers, then #next runs the upgrade for a client that left.
  const env = await setup(t, { wire: { delayMs: (r) => r.url === '/slow' ? 400 : 0 } })
  const seen = acceptUpgrades(env, env.stable)
  const c = await RawClient.open(env.port)
  c.write(get('/slow') + wsUpgrade('/ws'))
  await waitFor(() => env.stable.pending === 1)
  c.destroy()
  const left = await waitFor(() => env.proxy.app.proxy.inFlight === 0, { timeoutMs: 200 }).then(() => true, () => false)
  t.ok(left, `in-flight released when the client left (app.proxy.inFlight ${env.proxy.app.proxy.inFlight})`)
  await sleep(500)
  t.same(seen, [], 'the upgrade never reached the upstream')
  t.same(urls(env.stable.requests), ['/slow'])
})

t.test('fixed: with 32+ requests queued before a WebSocket upgrade, the bytes sent right after it are lost', async (t) => {
  // #enqueue set socket._paused at 32 queued, and it stays set on the socket
  // Node then hands over for the upgrade (no parser, no 'data' listener): the
  // next response written on the connection (updateOutgoingData →
  // socketOnDrain in _http_server.js) and #next's resume both call
  // socket.resume() on it, so the client's first WebSocket bytes, which
  // http-proxy unshifts back, are emitted to nobody before it pipes the
  // socket. With 3 queued (no pause) they arrive.
  for (const n of [3, 40]) {
    await t.test(`${n} requests queued before the upgrade`, async (t) => {
      const env = await setup(t, { wire: { hold: (r) => r.url === '/hold' } })
      acceptUpgrades(env, env.stable)
      const c = await RawClient.open(env.port)
      let raw = ''
      c.socket.on('data', (d: Buffer) => { raw += d.toString('latin1') })
      c.write(get('/hold') + Array.from({ length: n }, (_, i) => get(`/g${i}`)).join('') + wsUpgrade('/ws') + 'EARLY-BYTES')
      await waitFor(() => env.stable.pending === 1)
      env.stable.release()
      await waitFor(() => raw.includes('EARLY-BYTES'), { timeoutMs: 1000 }).catch(() => {})
      c.destroy()
      t.equal(c.responses.at(-1)?.status, 101, 'the upgrade was answered 101')
      t.ok(raw.includes('EARLY-BYTES'), 'the bytes sent right after the upgrade request came back through the tunnel')
    })
  }
})

t.test('fixed: refusals checked while copying headers become a keep-alive 404 when no route matches', async (t) => {
  // buildUpstreamHeaders (headers.ts) is where two Host fields, Trailer,
  // two Transfer-Encoding fields and HTTP/1.0 + Transfer-Encoding are refused,
  // but #handle calls it only after #select: with no route the answer is the
  // 404 (not a refusal), the connection stays open when the request was
  // queued, and the requests behind it are forwarded.
  const env = await setup(t, { route: { match: { pathPrefix: '/api' } }, wire: { delayMs: (r) => r.url === '/api/slow' ? 100 : 0 } })
  const cases = [
    ['two Host fields', TWO_HOSTS('/nope')],
    ['a Trailer header', `POST /nope HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n`],
    ['TE: gzip + TE: chunked', `POST /nope HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`]
  ] as const
  for (const [name, bytes] of cases) {
    await t.test(name, async (t) => {
      const before = env.stable.requests.length
      const c = await RawClient.open(env.port)
      c.write(get('/api/slow') + bytes + get('/api/after'))
      await c.waitClosed(400)
      c.destroy()
      t.same(c.responses.map((r) => r.status), [200, 400], 'the refusal status, as when a route matches')
      t.same(urls(env.stable.requests.slice(before)), ['/api/slow'], 'nothing after the refused request reached the upstream')
    })
  }
})

t.test('fixed: a proxy-made 404 closes the connection unless the request happened to be queued', async (t) => {
  // sendError (forward.ts) adds Connection: close when !req.complete, meant
  // for an unread body; but Node emits 'request' before llhttp completes even
  // a bodiless message, so every synchronous answer (404, 400s, the overload
  // 503) to a request that was not queued closes its connection, and the
  // same 404 dequeued later (complete by then) keeps it.
  const env = await setup(t, { route: { match: { pathPrefix: '/api' } }, wire: { delayMs: (r) => r.url === '/api/slow' ? 100 : 0 } })
  for (const queued of [true, false]) {
    await t.test(queued ? 'queued behind a slow GET' : 'first on its connection', async (t) => {
      const c = await RawClient.open(env.port)
      c.write((queued ? get('/api/slow') : '') + get('/nope') + get('/api/after'))
      await c.waitResponses(queued ? 3 : 2, 400).catch(() => {})
      c.destroy()
      const nope = c.responses[queued ? 1 : 0]
      t.equal(nope?.status, 404)
      t.notMatch(nope?.headers.connection ?? '', /close/i, 'a 404 to a complete GET keeps the connection (404 is not a refusal)')
      t.equal(c.responses.at(-1)?.status, 200, 'the GET behind it is answered')
    })
  }
})

t.test('fixed: upstream.largeBodyBytes 0: an early upstream answer to a large body stalls the connection', async (t) => {
  // With undici carrying the body (largeBodyBytes: 0), an upstream that
  // answers before reading a 3 MB body leaves the rest unread: undici stops
  // reading the request stream and Node does not dump it (req._consuming),
  // so the socket is never read again until clientIdleMs closes it; the
  // answer said keep-alive and the GET behind it is never answered.
  const env = await setup(t, { extra: { upstream: { largeBodyBytes: 0 } } })
  env.stable.server.removeAllListeners('request')
  env.stable.server.on('request', (req, res) => {
    if (req.url === '/early') {
      res.writeHead(200, { 'content-length': 5 })
      res.end('early')
      return
    }
    req.resume()
    req.on('end', () => {
      res.writeHead(200, { 'content-length': 2 })
      res.end('ok')
    })
  })
  const size = 3_000_000
  const c = await RawClient.open(env.port)
  c.write(`POST /early HTTP/1.1\r\n${H}Content-Length: ${size}\r\n\r\n`)
  c.write(Buffer.alloc(size, 'b'))
  c.write(get('/after'))
  await c.waitResponses(2, 1000).catch(() => {})
  c.destroy()
  t.equal(c.responses[0]?.status, 200)
  t.ok(c.responses.length === 2 || c.peerClosed, `the GET behind the body is answered, or the connection closed (${c.responses.length} answers, peer closed: ${String(c.peerClosed)})`)
})

t.test('fixed: app.close() leaves the upstream side of a proxied WebSocket open', async (t) => {
  // drain() destroys the client sockets of WebSockets; http-proxy only ends
  // the upstream socket on the client's 'end' or 'error', not on a plain
  // destroy(), so the upstream connection outlives the proxy.
  const env = await setup(t)
  acceptUpgrades(env, env.stable)
  const c = await RawClient.open(env.port)
  c.write(wsUpgrade('/ws'))
  await c.waitResponses(1)
  t.equal(c.responses[0]?.status, 101)
  t.equal(env.upgraded.size, 1, 'one upstream WebSocket')
  t.equal(await env.proxy.app.close(), true)
  await waitFor(() => env.upgraded.size === 0, { timeoutMs: 500 }).catch(() => {})
  c.destroy()
  t.equal(env.upgraded.size, 0, 'the upstream WebSocket is closed by the drain')
})
