/**
 * The rollout's load generator against real servers on 127.0.0.1: through a
 * real canaryd proxy (the override pins each version, the proxy counts the
 * requests under source="synthetic"), straight to a refused origin (errors
 * rate-limited, never thrown) and to a TLS listener (not verified, SNI from
 * the route's host). Timings are bounded: a run lasts at most 1.5 s.
 */
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { LoadTestSpec } from '../../src/config/plan.js'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { LoadGenerator, STOP_MS, TICK_MS } from '../../src/rollout/loadtest.js'
import { makeSelfSigned, opensslSkip } from '../helpers/certs.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { refusedOrigin, startUpstream, type SeenRequest } from '../helpers/upstream.js'
import { sleep, until } from '../helpers/until.js'
import { scrape, sum } from '../metrics/scrape.js'

function spec (o: Partial<LoadTestSpec> = {}): LoadTestSpec {
  return { rps: 40, paths: ['/'], method: 'GET', headers: {}, users: 100, versions: ['canary', 'stable'], includeInAnalysis: false, timeoutMs: 5000, ...o }
}

const COOKIE = /^canaryd_id=synthetic-(\d+)$/

t.test('through a real proxy: both versions get half the rps, pinned by the override header, marked synthetic, counted under source="synthetic"', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  // canary at 0 %: only the override can bring it a request
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(p.close)
  const gen = new LoadGenerator(spec({ rps: 40, paths: ['/a', '/b'], users: 5, headers: { 'X-Extra': 'yes' } }),
    { origin: p.url, overrideHeader: 'x-canary', overrideCookie: 'canary', stickyCookie: 'canaryd_id' }, ['canary', 'stable'], { seed: 7 })
  t.equal(gen.running, false)
  const t0 = performance.now()
  gen.start()
  t.equal(gen.running, true)
  await sleep(1500)
  await gen.stop()
  const ran = (performance.now() - t0) / 1000
  t.equal(gen.running, false)
  t.equal(gen.inFlight, 0, 'nothing in flight after stop')
  const s = gen.stats
  t.comment(`ran ${ran.toFixed(2)} s: ${JSON.stringify(s)}; stable saw ${stable.seen.length}, canary ${canary.seen.length}`)
  // 40 rps × 1.5 s = 60; a generous band for a loaded test machine
  t.ok(s.sent >= 40 && s.sent <= 40 * ran + 2, `sent ${s.sent} ≈ 60`)
  t.equal(s.failed, 0)
  t.equal(s.dropped, 0)
  t.ok(s.ok >= s.sent - 4, `ok ${s.ok} (only the last few may be cut by stop)`)
  t.ok(Math.abs(canary.seen.length - stable.seen.length) <= 3, 'versions alternate: an even split')
  for (const [u, seen] of [[stable, stable.seen], [canary, canary.seen]] as const) {
    t.ok(seen.length >= 15, `${u.name} saw ${seen.length} requests`)
    t.ok(seen.every((r) => r.headers['x-canaryd-synthetic'] === '1'), `${u.name}: every request carries x-canaryd-synthetic: 1`)
    t.ok(seen.every((r) => r.headers['x-canary'] === u.name), `${u.name}: every request names it in the override header`)
    t.ok(seen.every((r) => r.headers['x-extra'] === 'yes'), `${u.name}: the spec's headers are sent`)
    t.same(new Set(seen.map((r) => r.url)), new Set(['/a', '/b']), `${u.name}: both paths`)
    const users = usersOf(seen)
    t.ok(users.every((i) => i >= 0 && i < 5), `${u.name}: users within 0..4`)
    t.ok(new Set(users).size >= 3, `${u.name}: the sticky cookie varies over the users (${[...new Set(users)].sort().join(',')})`)
  }

  // the proxy finishes its accounting when each response closes: wait for the last
  await until('synthetic 200s counted', async () => sum(await scrape(p), METRIC_NAMES.requests, { source: 'synthetic', code: '200' }) === s.ok, 2000)
  let e = await scrape(p)
  t.equal(sum(e, METRIC_NAMES.requests, { source: 'user' }), 0, 'no user request yet')
  t.equal(sum(e, METRIC_NAMES.requests, { version: 'canary', source: 'synthetic', code: '200' }), p.app.metrics!.totals('web', 'canary')!.syntheticCodes.get(200), 'totals() agrees with the exposition')
  t.ok(sum(e, METRIC_NAMES.requests, { version: 'canary', source: 'synthetic' }) >= canary.seen.length - 0, 'every canary request the upstream saw is synthetic')

  for (let i = 0; i < 5; i++) {
    const r = await fetch(`${p.url}/u`, { headers: { 'x-user-id': `real-${i}` } })
    t.equal(r.status, 200)
    await r.arrayBuffer()
  }
  const synthetic = sum(e, METRIC_NAMES.requests, { source: 'synthetic' })
  await until('user requests counted', async () => sum(await scrape(p), METRIC_NAMES.requests, { source: 'user', code: '200' }) === 5, 2000)
  e = await scrape(p)
  t.equal(sum(e, METRIC_NAMES.requests, { version: 'stable', source: 'user', code: '200' }), 5, 'user requests count under source="user"')
  t.equal(sum(e, METRIC_NAMES.requests, { source: 'synthetic' }), synthetic, 'the synthetic counts did not move')
  t.equal(stable.seen.filter((r) => r.url === '/u').every((r) => r.headers['x-canaryd-synthetic'] === undefined), true)
})

t.test('a route with only an override cookie: the version goes in the cookie, after the spec\'s own cookie and before the sticky one', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0], { override: { cookie: 'canary' } })]))
  t.teardown(p.close)
  const gen = new LoadGenerator(spec({ rps: 40, users: 3, headers: { cookie: 'a=b' }, method: 'HEAD' }),
    { origin: p.url, overrideCookie: 'canary', stickyCookie: 'canaryd_id' }, ['canary', 'stable'], { seed: 1 })
  gen.start()
  await until('both versions reached', () => stable.seen.length >= 3 && canary.seen.length >= 3, 3000)
  await gen.stop()
  for (const u of [stable, canary]) {
    t.ok(u.seen.every((r) => r.method === 'HEAD'), `${u.name}: HEAD`)
    t.ok(u.seen.every((r) => /^a=b; canary=(\w+); canaryd_id=synthetic-[0-2]$/.test(r.headers.cookie ?? '') && r.headers.cookie!.includes(`canary=${u.name};`)), `${u.name}: ${u.seen[0]?.headers.cookie}`)
  }
})

t.test('stop() resolves within 1 s while every request hangs, aborts them all, and nothing is sent after', async (t) => {
  // an upstream that never answers: every request stays in flight until aborted
  const hang = await startUpstream('hang', () => {})
  const stable = await startUpstream('stable')
  t.teardown(async () => { await hang.close(); await stable.close() })
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, hang.origin, [100, 0])]))
  t.teardown(p.close)
  let errors = 0
  const gen = new LoadGenerator(spec({ rps: 200, versions: ['canary'] }), { origin: p.url, overrideHeader: 'x-canary', stickyCookie: 'canaryd_id' }, ['canary'], { maxInFlight: 8, onError: () => { errors++ } })
  gen.start()
  await until('8 in flight and more dropped', () => gen.inFlight === 8 && gen.stats.dropped > 0, 3000)
  await until('the upstream holds requests', () => hang.seen.length >= 1, 3000)
  const t0 = performance.now()
  await gen.stop()
  const took = performance.now() - t0
  t.ok(took < STOP_MS, `stop() took ${took.toFixed(0)} ms`)
  t.equal(gen.inFlight, 0, 'every hanging request aborted')
  t.equal(gen.running, false)
  const s = gen.stats
  t.equal(s.sent, 8, 'never more than maxInFlight sent while they hang')
  t.equal(s.ok + s.failed, 0, 'aborted requests are neither ok nor failed')
  t.equal(errors, 0, 'stop()\'s own aborts are not errors')
  await sleep(5 * TICK_MS)
  t.same(gen.stats, s, 'no request sent or dropped after stop')
  // requests sent before stop() may still reach it through the proxy; nothing else does
  const seen = hang.seen.length
  t.ok(seen <= s.sent, `the upstream got only requests sent before stop (${seen} of ${s.sent})`)
  // the proxy saw the client leave each one: 499, synthetic
  await until('499s counted', async () => sum(await scrape(p), METRIC_NAMES.requests, { version: 'canary', code: '499', source: 'synthetic' }) >= seen, 3000)
  t.equal(sum(await scrape(p), METRIC_NAMES.requests, { source: 'user' }), 0)
  // and it starts again
  gen.start()
  await until('sending again', () => gen.stats.sent > 8, 2000)
  await gen.stop()
  t.equal(gen.inFlight, 0)
})

t.test('a refused origin: requests fail, onError is called at most once a second (a throwing one too), the timer never throws', async (t) => {
  const calls: unknown[] = []
  const gen = new LoadGenerator(spec({ rps: 100 }), { origin: await refusedOrigin(), overrideHeader: 'x-canary', stickyCookie: 'id' }, ['canary', 'stable'], {
    onError: (err) => { calls.push(err); throw new Error('a broken onError') }
  })
  gen.start()
  await sleep(1200)
  await gen.stop()
  const s = gen.stats
  t.comment(JSON.stringify(s))
  t.equal(s.ok, 0)
  t.ok(s.failed >= 50, `failed ${s.failed}`)
  t.ok(calls.length >= 1 && calls.length <= 2, `onError called ${calls.length} times in 1.2 s`)
  t.match(String((calls[0] as Error).message ?? calls[0]), /ECONNREFUSED|connect/i)
})

t.test('pacing: a stalled event loop is not caught up in a burst', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  const gen = new LoadGenerator(spec({ rps: 100, versions: ['stable'] }), { origin: up.origin, overrideHeader: 'x-canary', stickyCookie: 'id' }, ['stable'])
  gen.start()
  await sleep(300)
  const before = gen.stats.sent
  // 500 ms with no timer: 50 requests' worth of time
  const end = performance.now() + 500
  while (performance.now() < end) { /* stall */ }
  await sleep(TICK_MS / 2)
  const burst = gen.stats.sent - before
  await gen.stop()
  t.ok(burst <= Math.ceil(100 * 2 * TICK_MS / 1000) + 1, `${burst} sent on the tick after a 500 ms stall (at most two ticks' worth)`)
  t.ok(before >= 15 && before <= 35, `≈ 30 in the first 300 ms (${before})`)
})

t.test('a TLS origin: not verified (our own listener), the route\'s host is the server name and the Host', { skip: opensslSkip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-loadtest-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const cert = makeSelfSigned(dir, 'shop', { cn: 'shop.test' })
  const names: Array<string | false | null> = []
  const hosts: string[] = []
  const server = createHttpsServer({ cert: cert.cert, key: cert.key }, (req, res) => {
    names.push((req.socket as TLSSocket).servername)
    hosts.push(req.headers.host ?? '')
    res.end('ok')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  const port = (server.address() as AddressInfo).port
  const gen = new LoadGenerator(spec({ rps: 40 }), { origin: `https://127.0.0.1:${port}`, host: 'shop.test', overrideHeader: 'x-canary', stickyCookie: 'id', tls: true }, ['canary', 'stable'])
  gen.start()
  await until('answers', () => gen.stats.ok >= 4, 3000)
  await gen.stop()
  t.equal(gen.stats.failed, 0, 'a self-signed certificate is accepted')
  t.ok(names.every((n) => n === 'shop.test'), `SNI ${names[0]}`)
  t.ok(hosts.every((h) => h === 'shop.test'), `Host ${hosts[0]}`)
})

t.test('bad settings throw a TypeError at construction', async (t) => {
  const target = { origin: 'http://127.0.0.1:1', overrideHeader: 'x-canary', stickyCookie: 'id' }
  t.throws(() => new LoadGenerator(spec(), target, []), TypeError)
  t.throws(() => new LoadGenerator(spec({ rps: 0 }), target, ['canary']), TypeError)
  t.throws(() => new LoadGenerator(spec(), { origin: 'http://127.0.0.1:1', stickyCookie: 'id' }, ['canary']), /override/)
  t.throws(() => new LoadGenerator(spec(), { ...target, origin: 'ftp://x' }, ['canary']), TypeError)
  t.throws(() => new LoadGenerator(spec(), target, ['canary'], { maxInFlight: 0 }), TypeError)
  const gen = new LoadGenerator(spec(), target, ['canary'])
  await gen.stop()
  t.equal(gen.running, false, 'stop() before start() is fine')
})

function usersOf (seen: readonly SeenRequest[]): number[] {
  return seen.map((r) => {
    const m = COOKIE.exec(r.headers.cookie ?? '')
    return m === null ? -1 : Number(m[1])
  })
}
