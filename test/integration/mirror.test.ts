/**
 * Request mirroring through the whole proxy (issue 15): copies reach the
 * mirror version with their body and `x-canaryd-mirror`, the percent and
 * the methods are honoured, large and unsized bodies are not copied, and a
 * mirror target that hangs or answers 500 changes nothing for users
 * (measured: the user p99 with and without the bad mirror, and every user
 * answer a 200). Copies are counted only in canaryd_mirror_requests_total.
 */
import { createHash, randomBytes } from 'node:crypto'
import http2 from 'node:http2'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import type { ShadowPair } from '../../src/metrics/observer.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream, type TestUpstream } from '../helpers/upstream.js'
import { scrape, sum } from '../metrics/scrape.js'

const MIRROR = METRIC_NAMES.mirrorRequests

/** Polls until `what` holds (copies finish after the user's answer), failing after `ms`. */
async function until (what: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!(await what())) {
    if (Date.now() > end) throw new Error('timed out waiting')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

async function mirrorCounts (proxy: TestProxy, version = 'canary'): Promise<Record<string, number>> {
  const e = await scrape(proxy)
  const out: Record<string, number> = {}
  for (const r of ['ok', '5xx', 'error', 'timeout', 'dropped', 'too_large']) out[r] = sum(e, MIRROR, { route: 'web', version, result: r })
  return out
}

/** Two upstreams and a proxy whose route `web` sends every user to stable and mirrors to canary. */
async function setup (t: Test, mirror: Record<string, unknown>, canary?: TestUpstream, extra: Record<string, unknown> = {}): Promise<{ proxy: TestProxy, stable: TestUpstream, canary: TestUpstream }> {
  const stable = await startUpstream('stable')
  const c = canary ?? await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, c.origin, [100, 0], { mirror: { version: 'canary', ...mirror } })], extra))
  t.teardown(async () => { await proxy.close(); await stable.close(); await c.close() })
  return { proxy, stable, canary: c }
}

t.test('copies carry the body and x-canaryd-mirror; methods filtered; large and chunked bodies are too_large', async (t) => {
  const { proxy, stable, canary } = await setup(t, { percent: 100, methods: ['GET', 'POST', 'PUT'], maxBodyBytes: 4096 })
  const pairs: ShadowPair[] = []
  proxy.app.metrics!.subscribeShadow('web', (p) => { pairs.push(p) })
  const before = await mirrorCounts(proxy)
  t.same(before, { ok: 0, '5xx': 0, error: 0, timeout: 0, dropped: 0, too_large: 0 }, 'every result at 0 from start-up')

  const body = randomBytes(3000)
  const sha = createHash('sha256').update(body).digest('hex')
  const r = await send(`${proxy.url}/orders?id=7`, { method: 'POST', headers: { 'x-user-id': 'u1', 'content-type': 'application/octet-stream', 'content-length': String(body.length) }, body })
  t.equal(r.status, 200)
  t.equal(r.headers['x-canaryd-version'], 'stable', 'the user is served by stable')
  await until(() => canary.seen.length === 1)
  const copy = canary.seen[0]!
  t.equal(copy.method, 'POST')
  t.equal(copy.url, '/orders?id=7')
  t.equal(copy.bodySha256, sha, 'the copy has the same body')
  t.equal(copy.headers['x-canaryd-mirror'], '1')
  t.equal(copy.headers['x-user-id'], 'u1')
  t.equal(copy.headers['content-type'], 'application/octet-stream')
  t.equal(copy.headers['x-canaryd-version'], 'canary')
  t.equal(stable.seen[0]!.headers['x-canaryd-mirror'], undefined, 'the user\'s request carries no mirror mark')
  // a client cannot make a real request look like a copy
  await send(`${proxy.url}/forged`, { method: 'DELETE', headers: { 'x-canaryd-mirror': '1' } })
  t.equal(stable.seen[1]!.headers['x-canaryd-mirror'], undefined, 'a client\'s x-canaryd-mirror is dropped')
  t.equal(stable.seen[0]!.bodySha256, sha)

  // methods: DELETE (above and here) is not in the list
  await send(`${proxy.url}/orders/7`, { method: 'DELETE', headers: { 'x-user-id': 'u1' } })
  const get = await send(`${proxy.url}/orders`, { headers: { 'x-user-id': 'u1' } })
  t.equal(get.status, 200)
  await until(() => canary.seen.length === 2)
  t.equal(canary.seen[1]!.method, 'GET', 'GET copied, DELETE not')

  // over maxBodyBytes, and chunked: not copied, counted
  const big = randomBytes(5000)
  t.equal((await send(`${proxy.url}/up`, { method: 'PUT', headers: { 'content-length': String(big.length) }, body: big })).status, 200)
  const chunked = await send(`${proxy.url}/up`, { method: 'POST', body: Readable.from([Buffer.from('a'), Buffer.from('b')]) })
  t.equal(chunked.status, 200)
  t.equal(stable.seen.length, 6, 'stable served all six users')
  await until(async () => (await mirrorCounts(proxy)).ok === 2)
  const counts = await mirrorCounts(proxy)
  t.same(counts, { ok: 2, '5xx': 0, error: 0, timeout: 0, dropped: 0, too_large: 2 })
  t.equal(canary.seen.length, 2, 'nothing else reached the mirror')

  const e = await scrape(proxy)
  t.equal(sum(e, METRIC_NAMES.requests, { route: 'web', version: 'canary' }), 0, 'copies are not in canaryd_requests_total')
  t.equal(sum(e, METRIC_NAMES.requests, { route: 'web', version: 'stable' }), 6)
  t.equal(pairs.length, 2, 'one shadow pair per answered copy')
  t.match(pairs[0], { route: 'web', primary: 'stable', mirror: 'canary', primaryStatus: 200, primaryFailed: false, mirrorStatus: 200, mirrorFailed: false })
})

t.test('HTTP/2 clients: the body copy works from a stream too', async (t) => {
  const { proxy, canary } = await setup(t, { percent: 100, methods: ['POST'] }, undefined, { listen: { host: '127.0.0.1', port: 0, h2c: true } })
  const session = http2.connect(proxy.url)
  session.on('error', () => {})
  t.teardown(() => { session.destroy() })
  const body = randomBytes(2000)
  const status = await new Promise<number>((resolve, reject) => {
    const s = session.request({ ':method': 'POST', ':path': '/h2', 'content-length': String(body.length), 'x-user-id': 'u2' })
    let st = 0
    s.on('response', (h) => { st = Number(h[':status']) })
    s.on('error', reject)
    s.resume()
    s.on('end', () => resolve(st))
    s.end(body)
  })
  t.equal(status, 200)
  await until(() => canary.seen.length === 1)
  t.equal(canary.seen[0]!.bodySha256, createHash('sha256').update(body).digest('hex'))
  t.equal(canary.seen[0]!.headers['x-canaryd-mirror'], '1')
})

t.test('percent is honoured over 2,000 requests, and the version that already served a user is not copied to', async (t) => {
  const { proxy, stable, canary } = await setup(t, { percent: 25 })
  const pool = new Pool(proxy.url, { connections: 8 })
  t.teardown(async () => { await pool.close() })
  const N = 2000
  let served = 0
  for (let i = 0; i < N; i += 8) {
    await Promise.all(Array.from({ length: 8 }, async (_, j) => {
      const res = await pool.request({ path: '/p', method: 'GET', headers: { 'x-user-id': `u${i + j}` } })
      await res.body.dump()
      if (res.statusCode === 200) served++
    }))
  }
  t.equal(served, N)
  await until(async () => (await mirrorCounts(proxy)).ok === canary.seen.length)
  const copies = canary.seen.length
  // binomial(2000, 0.25): mean 500, sd ≈ 19.4; ±5 sd
  t.ok(copies > 400 && copies < 600, `about 25% copied (${copies} of ${N})`)
  t.equal(stable.seen.length, N)

  // a user the mirror version serves itself is never copied to it
  const forced = await send(`${proxy.url}/p`, { headers: { 'x-canary': 'canary' } })
  t.equal(forced.headers['x-canaryd-version'], 'canary')
  const before = canary.seen.length
  for (let i = 0; i < 40; i++) await send(`${proxy.url}/p`, { headers: { 'x-canary': 'canary' } })
  t.equal(canary.seen.filter((s) => s.headers['x-canaryd-mirror'] === '1').length, copies, 'no copies of requests canary served')
  t.equal(canary.seen.length, before + 40)
})

/** An upstream that takes requests and never answers; its sockets are destroyed at teardown. */
async function hangingServer (t: Test): Promise<{ server: Server, origin: string, got: () => number }> {
  let got = 0
  const server = createServer(() => { got++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got: () => got }
}

/**
 * `n` GETs through `pool`, 4 at a time, each timed from send to body end
 * (pushed onto `ms`). Returns how many were not a 200 from stable.
 */
async function measure (pool: Pool, n: number, ms: number[] = []): Promise<number> {
  let failures = 0
  for (let i = 0; i < n; i += 4) {
    await Promise.all(Array.from({ length: 4 }, async (_, j) => {
      const t0 = performance.now()
      try {
        const res = await pool.request({ path: '/m', method: 'GET', headers: { 'x-user-id': `u${i + j}` }, headersTimeout: 5000 })
        await res.body.dump()
        if (res.statusCode !== 200 || res.headers['x-canaryd-version'] !== 'stable') failures++
      } catch {
        failures++
      }
      ms.push(performance.now() - t0)
    }))
  }
  return failures
}

function p99 (ms: number[]): number {
  const sorted = [...ms].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length * 0.99)]!
}

interface Comparison {
  /** User p99 (ms) through the mirroring proxy and the plain one, per attempt. */
  attempts: Array<{ with: number, without: number }>
  /** The first attempt within the bound, or the last one. */
  within: boolean
  failures: number
  /** Mirrored GETs sent (warm-up included). */
  mirrored: number
  proxy: TestProxy
}

/**
 * User p99 through a proxy mirroring 100% of GETs to `bad` and through one
 * that does not mirror, over 2,000 requests each after a warm-up, in
 * alternating blocks of 100 (a slow moment of a shared machine then hits
 * both sides). Within noise: p99_with <= 3 × p99_without + 5 ms. The test
 * process runs the client, both proxies and the upstreams on one event
 * loop, so a burst from elsewhere can still land on one side: up to three
 * attempts, as a real delay caused by the mirror would show in all of them.
 */
async function compare (t: Test, bad: string, mirror: Record<string, unknown>): Promise<Comparison> {
  const stable = await startUpstream('stable')
  t.teardown(stable.close)
  const plain = await startProxy(testConfig([twoVersionRoute(stable.origin, bad, [100, 0])]))
  const mirrored = await startProxy(testConfig([twoVersionRoute(stable.origin, bad, [100, 0], { mirror: { version: 'canary', percent: 100, ...mirror } })]))
  t.teardown(async () => { await plain.close(); await mirrored.close() })
  const a = new Pool(plain.url, { connections: 4 })
  const b = new Pool(mirrored.url, { connections: 4 })
  t.teardown(async () => { await a.close(); await b.close() })
  let failures = await measure(a, 200) + await measure(b, 200)
  let sent = 200
  const attempts: Comparison['attempts'] = []
  for (let attempt = 0; attempt < 3; attempt++) {
    const w: number[] = []
    const o: number[] = []
    for (let block = 0; block < 20; block++) {
      failures += await measure(b, 100, w)
      failures += await measure(a, 100, o)
    }
    sent += 2000
    attempts.push({ with: p99(w), without: p99(o) })
    if (p99(w) <= 3 * p99(o) + 5) return { attempts, within: true, failures, mirrored: sent, proxy: mirrored }
  }
  return { attempts, within: false, failures, mirrored: sent, proxy: mirrored }
}

/** The attempts for a message: `with/without` ms. */
function describe (c: Comparison): string {
  return c.attempts.map((x) => `${x.with.toFixed(2)}/${x.without.toFixed(2)}`).join(', ')
}

t.test('a mirror target that never answers changes nothing for users; timeouts and drops are counted', async (t) => {
  const hang = await hangingServer(t)
  const r = await compare(t, hang.origin, { maxInFlight: 8, timeoutMs: 200 })
  t.equal(r.failures, 0, 'every user got stable\'s 200, with the hanging mirror and without')
  t.ok(r.within, `user p99 with the hanging mirror / without, ms: ${describe(r)}`)
  // the last copies time out after the users are done
  await until(async () => { const c = await mirrorCounts(r.proxy); return c.timeout! + c.dropped! === r.mirrored })
  const counts = await mirrorCounts(r.proxy)
  t.ok(counts.dropped! > 0, `over maxInFlight: dropped (${counts.dropped})`)
  t.ok(counts.timeout! > 0, `timed out (${counts.timeout})`)
  t.equal(counts.ok, 0)
  t.ok(hang.got() > 0 && hang.got() <= counts.timeout! + 8, `the target got the copies that were sent (${hang.got()})`)
  t.equal(counts['5xx']! + counts.error! + counts.too_large!, 0)
  // a drain does not wait for the copies still hanging
  const t0 = Date.now()
  t.equal(await r.proxy.app.close(5000), true, 'clean drain')
  t.ok(Date.now() - t0 < 1000, `closed without waiting for the mirror (${Date.now() - t0} ms)`)
})

t.test('a mirror target that answers 500 changes nothing for users and is not ejected', async (t) => {
  const five = await startUpstream('canary', (_req, res) => { res.writeHead(500, { 'content-length': '5' }); res.end('boom!') })
  t.teardown(five.close)
  const r = await compare(t, five.origin, { maxInFlight: 64, timeoutMs: 1000 })
  t.equal(r.failures, 0, 'every user got stable\'s 200, with the 500 mirror and without')
  t.ok(r.within, `user p99 with the 500 mirror / without, ms: ${describe(r)}`)
  await until(async () => { const c = await mirrorCounts(r.proxy); return c['5xx']! + c.dropped! === r.mirrored })
  const counts = await mirrorCounts(r.proxy)
  t.ok(counts['5xx']! > r.mirrored * 0.9, `5xx counted (${counts['5xx']}, dropped ${counts.dropped})`)
  const e = await scrape(r.proxy)
  t.equal(sum(e, METRIC_NAMES.ejections, { route: 'web', version: 'canary' }), 0, 'copies feed no outlier detection')
  t.equal(sum(e, METRIC_NAMES.upstreamErrors, { route: 'web', version: 'canary' }), 0)
  t.equal(sum(e, METRIC_NAMES.requests, { route: 'web', version: 'canary' }), 0)
  t.equal(sum(e, METRIC_NAMES.endpoints, { route: 'web', version: 'canary', state: 'ejected' }), 0)
})

t.test('copies use spare connections only: with the origin busy they are dropped, and timed-out copies hold their place until undici lets go', async (t) => {
  let conns = 0
  const hang = await hangingServer(t)
  hang.server.on('connection', () => { conns++ })
  const stable = await startUpstream('stable')
  t.teardown(stable.close)
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, hang.origin, [100, 0], { mirror: { version: 'canary', percent: 100, timeoutMs: 100, maxInFlight: 2 } })], {
    upstream: { connections: 1 }, timeouts: { upstreamResponseMs: 3000 }
  }))
  t.teardown(proxy.close)
  // one tester pinned to the canary holds its only connection for 3 s
  const pinned = send(`${proxy.url}/pinned`, { headers: { 'x-canary': 'canary' } })
  await until(() => hang.got() === 1)
  for (let i = 0; i < 30; i++) {
    const r = await send(`${proxy.url}/u${i}`, { headers: { 'x-user-id': `u${i}` } })
    t.equal(r.status, 200, `user ${i} served by stable at once`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  const c = await mirrorCounts(proxy)
  const n = (k: string): number => c[k] ?? 0
  t.equal(n('ok') + n('5xx') + n('error') + n('timeout') + n('dropped'), 30, 'every copy counted once')
  t.ok(n('dropped') >= 28, `copies dropped while the origin's only connection is busy (dropped ${n('dropped')}, timeout ${n('timeout')})`)
  await pinned
  t.ok(conns <= 3, `no connection churn at the mirror target (${conns} connections)`)
})
