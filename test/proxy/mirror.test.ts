/**
 * White-box: the mirror sender on its own (no proxy): results, the in-flight
 * cap, the timeout, body copies taken without reading the user's request
 * stream, shadow pairs, and close() abandoning copies.
 */
import { createHash } from 'node:crypto'
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http'
import { performance } from 'node:perf_hooks'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import type { MirrorResult } from '../../src/metrics/kinds.js'
import type { ShadowPair } from '../../src/metrics/observer.js'
import { PrometheusMetrics } from '../../src/metrics/prometheus.js'
import { MirrorSender, type MirrorCopy, type MirrorRuntime } from '../../src/proxy/mirror.js'
import type { RouteSpec } from '../../src/routing/spec.js'
import { buildRoutingTable } from '../../src/routing/table.js'
import { Upstreams } from '../../src/upstream/pools.js'
import { refusedOrigin, startUpstream } from '../helpers/upstream.js'

/** Headers as buildUpstreamHeaders leaves them: x-canaryd-version last. */
const HEADERS = ['host', 'shop.example.com', 'x-user-id', 'u1', 'x-forwarded-for', '127.0.0.1', 'x-real-ip', '127.0.0.1', 'x-canaryd-version', 'stable']
const NO_BODY = { contentLength: undefined, chunked: false }
const GET = { method: 'GET' } as unknown as IncomingMessage

interface Rig {
  sender: MirrorSender
  mr: MirrorRuntime
  metrics: PrometheusMetrics
  totals: () => Record<MirrorResult, number>
}

/** A route `web` (stable 100, canary 0) whose mirror copies everything to canary at `origin`. */
async function rig (t: Test, origin: string, mirror: Partial<NonNullable<RouteSpec['mirror']>> = {}): Promise<Rig> {
  const spec: RouteSpec = {
    name: 'web',
    match: { pathPrefix: '/' },
    sticky: { keys: ['header:x-user-id'], cookie: { name: 'cid', maxAge: 60 } },
    override: {},
    versions: [{ name: 'stable', upstream: ['http://127.0.0.1:1'], weight: 100 }, { name: 'canary', upstream: [origin], weight: 0 }],
    mirror: { version: 'canary', percent: 100, methods: ['GET', 'HEAD', 'POST'], maxBodyBytes: 1024, maxInFlight: 64, timeoutMs: 5000, ...mirror }
  }
  const table = buildRoutingTable([spec])
  const upstreams = new Upstreams({ connectTimeoutMs: 1000, responseTimeoutMs: 10_000, bodyTimeoutMs: 10_000, connections: 16, keepAliveMs: 1000 })
  const route = table.routes[0]!
  const groups = route.versions.map((v) => upstreams.group(route.name, v.name, v.spec, v.endpointsKey))
  upstreams.commit()
  const metrics = new PrometheusMetrics({ defaultMetrics: false })
  const observers = metrics.bindMirrors([{ route: 'web', version: 'canary' }])
  const sender = new MirrorSender()
  const mr = sender.bind(table.routes, (_r, vi) => groups[vi]!, observers)[0]!
  t.teardown(async () => { sender.close(); await upstreams.close() })
  return { sender, mr, metrics, totals: () => metrics.mirrorTotals('web', 'canary')! }
}

async function until (what: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!what()) {
    if (Date.now() > end) throw new Error('timed out waiting')
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** An upstream that never answers (its sockets are destroyed at close). */
async function hangingUpstream (t: Test): Promise<{ origin: string, got: () => number }> {
  let got = 0
  const server = createServer(() => { got++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got: () => got }
}

t.test('a bodyless copy goes at once with the primary\'s headers, x-canaryd-mirror and the mirror version; ok counted', async (t) => {
  const up = await startUpstream('canary')
  t.teardown(up.close)
  const r = await rig(t, up.origin)
  t.same(r.totals(), { ok: 0, '5xx': 0, error: 0, timeout: 0, dropped: 0, too_large: 0 }, 'every result exists at 0')
  const copy = r.sender.begin(r.mr, GET, 'stable', '/a?b=1', HEADERS, NO_BODY, 7)
  t.ok(copy)
  t.equal(copy!.wantsPrimary, false, 'nobody listens for pairs and there is no body: the user\'s side is not needed')
  copy!.arm()
  await until(() => r.totals().ok === 1)
  t.equal(up.seen.length, 1)
  const s = up.seen[0]!
  t.equal(s.url, '/a?b=1')
  t.equal(s.method, 'GET')
  t.equal(s.headers.host, 'shop.example.com', 'Host kept')
  t.equal(s.headers['x-user-id'], 'u1')
  t.equal(s.headers['x-canaryd-mirror'], '1')
  t.equal(s.headers['x-canaryd-version'], 'canary', 'x-canaryd-version names the version the copy went to')
  t.equal(HEADERS[HEADERS.length - 1], 'stable', 'the primary\'s header array is untouched')
  t.equal(r.sender.inFlight, 0)
})

t.test('results: 5xx, error (refused, no endpoint), too_large (sized over the limit, chunked)', async (t) => {
  const five = await startUpstream('canary', (_req, res) => { res.writeHead(503); res.end('no') })
  t.teardown(five.close)
  const a = await rig(t, five.origin)
  a.sender.begin(a.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!.arm()
  await until(() => a.totals()['5xx'] === 1)
  t.equal(a.totals().ok, 0)

  const b = await rig(t, await refusedOrigin())
  b.sender.begin(b.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!.arm()
  await until(() => b.totals().error === 1)

  t.equal(a.sender.begin(a.mr, GET, 'stable', '/', HEADERS, { contentLength: '1025', chunked: false }, 0), undefined, 'over maxBodyBytes: no copy')
  t.equal(a.sender.begin(a.mr, GET, 'stable', '/', HEADERS, { contentLength: undefined, chunked: true }, 0), undefined, 'chunked: no copy')
  t.equal(a.totals().too_large, 2)
  t.equal(a.sender.inFlight, 0, 'too_large copies never take a place')
})

t.test('the mirror version without endpoints: error, and a pair that says the mirror failed', async (t) => {
  const up = await startUpstream('canary')
  t.teardown(up.close)
  const r = await rig(t, up.origin)
  r.mr.group.setEndpoints([])
  const pairs: ShadowPair[] = []
  r.metrics.subscribeShadow('web', (p) => { pairs.push(p) })
  const copy = r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!
  t.equal(copy.wantsPrimary, true, 'a listener wants the pair')
  copy.arm()
  t.equal(r.totals().error, 1)
  copy.primaryDone(200, 0.01, false)
  t.equal(pairs.length, 1)
  t.same({ ...pairs[0]!, mirrorSeconds: 0 }, { route: 'web', primary: 'stable', mirror: 'canary', primaryStatus: 200, primarySeconds: 0.01, primaryFailed: false, mirrorStatus: 0, mirrorSeconds: 0, mirrorFailed: true })
  t.ok(pairs[0]!.mirrorSeconds < 0.01, 'failed at once')
})

t.test('in-flight cap: past maxInFlight copies are dropped; the timeout frees the places', async (t) => {
  const hang = await hangingUpstream(t)
  const r = await rig(t, hang.origin, { maxInFlight: 2, timeoutMs: 150 })
  const t0 = Date.now()
  r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!.arm()
  r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!.arm()
  t.equal(r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0), undefined, 'the third is over the cap')
  t.equal(r.totals().dropped, 1)
  t.equal(r.mr.gate.inFlight, 2)
  await until(() => r.totals().timeout === 2)
  t.ok(Date.now() - t0 >= 140, `timed out after timeoutMs (${Date.now() - t0} ms)`)
  t.equal(r.mr.gate.inFlight, 0, 'places given back')
  t.equal(r.sender.inFlight, 0)
  t.equal(hang.got(), 2, 'the two copies reached the target')
  const again = r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)
  t.ok(again, 'room again after the timeouts')
})

t.test('a copy that outlives the user pairs when it ends; one that ends first pairs when the user does', async (t) => {
  let answer: (() => void) | undefined
  const slow = await startUpstream('canary', (_req, res) => { answer = () => { res.writeHead(200); res.end('late') } })
  t.teardown(slow.close)
  const r = await rig(t, slow.origin)
  const pairs: ShadowPair[] = []
  const off = r.metrics.subscribeShadow('web', (p) => { pairs.push(p) })
  const copy = r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!
  copy.arm()
  copy.primaryDone(502, 0.2, true)
  await until(() => answer !== undefined)
  t.equal(pairs.length, 0, 'no pair while the copy is out')
  answer!()
  await until(() => pairs.length === 1)
  t.match(pairs[0], { route: 'web', primary: 'stable', mirror: 'canary', primaryStatus: 502, primarySeconds: 0.2, primaryFailed: true, mirrorStatus: 200, mirrorFailed: false })
  t.ok(pairs[0]!.mirrorSeconds > 0 && pairs[0]!.mirrorSeconds < 5)

  answer = undefined
  const second = r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!
  second.arm()
  await until(() => answer !== undefined)
  answer!()
  await until(() => r.totals().ok === 2)
  t.equal(pairs.length, 1, 'the copy ended first: its pair waits for the user')
  second.primaryDone(200, 0.01, false)
  t.equal(pairs.length, 2)
  t.match(pairs[1], { primaryStatus: 200, mirrorStatus: 200 })
  off()
  t.equal(r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!.wantsPrimary, false, 'unsubscribed: no pair wanted')
})

/**
 * A server standing in for the proxy: each request is copied through the
 * rig (begin before anything reads the body, as the proxy does), then read
 * by `consume` as the primary would, then answered.
 */
async function primaryServer (t: Test, r: Rig, opts: { delayMs?: number } = {}): Promise<{ url: string, copies: Array<MirrorCopy | undefined>, didRead: boolean[] }> {
  const copies: Array<MirrorCopy | undefined> = []
  const didRead: boolean[] = []
  const server: Server = createServer((req, res) => {
    const go = (): void => {
      const copy = r.sender.begin(r.mr, req, 'stable', req.url ?? '/', HEADERS, { contentLength: req.headers['content-length'], chunked: req.headers['transfer-encoding'] !== undefined }, 0)
      copies.push(copy)
      didRead.push(req.readableDidRead)
      copy?.arm()
      const started = performance.now()
      res.on('close', () => { copy?.primaryDone(res.statusCode, (performance.now() - started) / 1000, false) })
      req.on('data', () => {})
      req.on('end', () => { res.end('primary') })
    }
    if (opts.delayMs === undefined) go()
    else setTimeout(go, opts.delayMs)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, copies, didRead }
}

async function post (url: string, body: Buffer, chunks = 1, gapMs = 0): Promise<number> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', headers: { 'content-length': String(body.length) }, agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    const size = Math.ceil(body.length / chunks)
    let i = 0
    const next = (): void => {
      if (i >= body.length) {
        req.end()
        return
      }
      req.write(body.subarray(i, i + size))
      i += size
      setTimeout(next, gapMs)
    }
    next()
  })
}

t.test('a body is copied as the primary receives it: streamed in pieces, or already buffered', async (t) => {
  const up = await startUpstream('canary')
  t.teardown(up.close)
  const r = await rig(t, up.origin)
  const streamed = await primaryServer(t, r)
  const body = Buffer.from('x'.repeat(700) + 'the end')
  const sha = createHash('sha256').update(body).digest('hex')
  t.equal(await post(streamed.url, body, 5, 20), 200)
  await until(() => r.totals().ok === 1)
  t.equal(up.seen[0]!.bodyBytes, body.length)
  t.equal(up.seen[0]!.bodySha256, sha, 'same bytes, in order')
  t.equal(up.seen[0]!.headers['content-length'], String(body.length))
  t.same(streamed.didRead, [false], 'the tee did not read the request stream (the retry rule sees what it saw before)')

  const buffered = await primaryServer(t, r, { delayMs: 50 })
  t.equal(await post(buffered.url, body), 200)
  await until(() => r.totals().ok === 2)
  t.equal(up.seen[1]!.bodySha256, sha, 'a body that had all arrived before the copy began')
})

t.test('the user\'s body fails: no copy is sent, result error, no pair', async (t) => {
  const up = await startUpstream('canary')
  t.teardown(up.close)
  const r = await rig(t, up.origin)
  const pairs: ShadowPair[] = []
  r.metrics.subscribeShadow('web', (p) => { pairs.push(p) })
  const srv = await primaryServer(t, r)
  await new Promise<void>((resolve) => {
    const req = httpRequest(srv.url, { method: 'POST', headers: { 'content-length': '500' }, agent: false })
    req.on('error', () => resolve())
    req.write('only a little')
    setTimeout(() => { req.destroy(); resolve() }, 100)
  })
  await until(() => r.totals().error === 1)
  t.equal(up.seen.length, 0, 'nothing reached the mirror')
  t.equal(pairs.length, 0)
  t.equal(r.sender.inFlight, 0)
})

t.test('close() abandons copies in flight: not counted, no pair, no more copies', async (t) => {
  const hang = await hangingUpstream(t)
  const r = await rig(t, hang.origin)
  const pairs: ShadowPair[] = []
  r.metrics.subscribeShadow('web', (p) => { pairs.push(p) })
  const copy = r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!
  copy.arm()
  await until(() => hang.got() === 1)
  r.sender.close()
  copy.primaryDone(200, 0.01, false)
  t.equal(r.sender.inFlight, 0)
  t.equal(r.mr.gate.inFlight, 0)
  t.same(r.totals(), { ok: 0, '5xx': 0, error: 0, timeout: 0, dropped: 0, too_large: 0 })
  t.equal(pairs.length, 0)
  t.equal(r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0), undefined, 'closed: nothing new')
})

t.test('a swap keeps a route\'s gate: copies in flight still count against the cap', async (t) => {
  const hang = await hangingUpstream(t)
  const r = await rig(t, hang.origin, { maxInFlight: 1 })
  r.sender.begin(r.mr, GET, 'stable', '/', HEADERS, NO_BODY, 0)!.arm()
  const spec = buildRoutingTable([{
    name: 'web',
    match: { pathPrefix: '/' },
    sticky: { keys: [], cookie: { name: 'cid', maxAge: 60 } },
    override: {},
    versions: [{ name: 'stable', upstream: ['http://127.0.0.1:1'], weight: 90 }, { name: 'canary', upstream: [hang.origin], weight: 10 }],
    mirror: { version: 'canary', percent: 100, methods: ['GET'], maxBodyBytes: 0, maxInFlight: 1, timeoutMs: 5000 }
  }], 2)
  const [next] = r.sender.bind(spec.routes, () => r.mr.group, r.metrics.bindMirrors([{ route: 'web', version: 'canary' }]))
  t.equal(next!.gate, r.mr.gate, 'the same gate')
  t.equal(r.sender.begin(next!, GET, 'stable', '/', HEADERS, NO_BODY, 0), undefined, 'still at the cap after the swap')
  t.equal(r.totals().dropped, 1, 'the series kept its counts across the bind')
})
