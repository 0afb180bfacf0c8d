import type { IncomingMessage, ServerResponse } from 'node:http'
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { startDnsServer } from '../helpers/dns.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, type TestProxy } from '../helpers/proxy.js'
import { adminCall, endpointGauge, metricSamples, routeFile, sleep, until, type VersionFile } from '../helpers/reload.js'
import { startUpstream, startUpstreams } from '../helpers/upstream.js'

// Issue 13 A and B, black-box: a version is a group of endpoints with a
// balancer; endpoints are ejected one by one; the version pick never changes.

interface Hit { status: number; version: string; upstream: string }

/** Upstreams named after their endpoint (`x-upstream` of every answer), closed at teardown. */
async function proxy (t: Test, versions: VersionFile[], extra: Record<string, unknown> = {}): Promise<{ p: TestProxy; pool: Pool }> {
  const p = await startProxy(testConfig([routeFile('web', versions)], extra))
  const pool = new Pool(p.url, { connections: 16 })
  t.teardown(async () => { await pool.close(); await p.close() })
  return { p, pool }
}

/** One GET through the proxy: status, `x-canaryd-version`, and the endpoint that answered (`x-upstream`). */
async function hit (pool: Pool, headers: Record<string, string> = {}): Promise<Hit> {
  const r = await pool.request({ path: '/', method: 'GET', headers, headersTimeout: 10_000, bodyTimeout: 10_000 })
  await r.body.dump()
  return { status: r.statusCode, version: String(r.headers['x-canaryd-version']), upstream: String(r.headers['x-upstream']) }
}

/** One request per user (`x-user-id: <prefix><i>`), 20 at a time; a connection error counts as status -1. */
async function users (pool: Pool, n: number, prefix = 'user-'): Promise<Hit[]> {
  const out: Hit[] = []
  for (let i = 0; i < n; i += 20) {
    out.push(...await Promise.all(Array.from({ length: Math.min(20, n - i) }, async (_, j) =>
      await hit(pool, { 'x-user-id': `${prefix}${i + j}` }).catch(() => ({ status: -1, version: '', upstream: '' })))))
  }
  return out
}

function tally (values: string[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const v of values) out[v] = (out[v] ?? 0) + 1
  return out
}

t.test('round-robin spreads 300 requests over 3 endpoints within ±10% of equal', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd'])
  const { pool } = await proxy(t, [
    { name: 'stable', upstream: [u.a!.origin, u.b!.origin, u.c!.origin], weight: 100, balance: 'round-robin' },
    { name: 'canary', upstream: u.d!.origin, weight: 0 }
  ])
  const hits: Hit[] = []
  // a handful of users, each many times: round-robin balances requests, not users
  for (let i = 0; i < 300; i++) hits.push(await hit(pool, { 'x-user-id': `u${i % 7}` }))
  t.same(tally(hits.map((h) => String(h.status))), { 200: 300 }, 'every request answered 200')
  t.same(tally(hits.map((h) => h.version)), { stable: 300 }, 'x-canaryd-version is the version, whatever the endpoint')
  const by = tally(hits.map((h) => h.upstream))
  for (const e of ['a', 'b', 'c']) t.ok((by[e] ?? 0) >= 90 && (by[e] ?? 0) <= 110, `endpoint ${e} got ${by[e] ?? 0} of 300 (want 100 ± 10)`)
  t.equal(by.d ?? 0, 0, 'the 0% version got nothing')
})

for (const balance of [undefined, 'least-request'] as const) {
  t.test(`${balance ?? 'default balancing (least-request)'}: a slow endpoint gets far fewer requests than the idle ones`, async (t) => {
    const slow = await startUpstream('slow', (_req: IncomingMessage, res: ServerResponse) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-upstream': 'slow' })
        res.end('slow')
      }, 300)
    })
    t.teardown(async () => { await slow.close() })
    const u = await startUpstreams(t, ['fast1', 'fast2', 'canary'])
    const stable: VersionFile = { name: 'stable', upstream: [u.fast1!.origin, slow.origin, u.fast2!.origin], weight: 100 }
    if (balance !== undefined) stable.balance = balance
    const { pool } = await proxy(t, [stable, { name: 'canary', upstream: u.canary!.origin, weight: 0 }])
    const TOTAL = 150
    const deadline = Date.now() + 20_000
    let sent = 0
    const hits: Hit[] = []
    const client = async (): Promise<void> => {
      while (sent < TOTAL && Date.now() < deadline) {
        sent++
        hits.push(await hit(pool, { 'x-user-id': `lr-${sent}` }).catch(() => ({ status: -1, version: '', upstream: '' })))
      }
    }
    await Promise.all(Array.from({ length: 10 }, client))
    t.equal(hits.length, TOTAL, 'all requests done within 20 s')
    t.same(tally(hits.map((h) => String(h.status))), { 200: TOTAL }, 'every request answered 200')
    const by = tally(hits.map((h) => h.upstream))
    const share = (by.slow ?? 0) / hits.length
    // random or round-robin picks would give the slow endpoint a third; P2C leaves it about a ninth at most
    t.ok(share < 0.2, `the slow endpoint got ${by.slow ?? 0} of ${hits.length} (${(share * 100).toFixed(1)}%), fewer than 20%`)
    t.ok((by.fast1 ?? 0) > 0 && (by.fast2 ?? 0) > 0, `both idle endpoints served (${JSON.stringify(by)})`)
  })
}

t.test('hash: a sticky key always hits the same endpoint; removing one of 3 endpoints moves only its keys, never a user\'s version', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd'])
  const { p, pool } = await proxy(t, [
    { name: 'stable', upstream: [u.a!.origin, u.b!.origin, u.c!.origin], weight: 50, balance: 'hash' },
    { name: 'canary', upstream: u.d!.origin, weight: 50 }
  ])
  const USERS = 300
  const first = await users(pool, USERS)
  const again = await users(pool, USERS)
  t.equal(first.filter((h) => h.status !== 200).length + again.filter((h) => h.status !== 200).length, 0, 'every request answered 200')
  t.equal(first.filter((h, i) => h.upstream !== again[i]!.upstream || h.version !== again[i]!.version).length, 0, 'every user hit the same endpoint twice')
  const onStable = first.filter((h) => h.version === 'stable')
  const spread = tally(onStable.map((h) => h.upstream))
  t.ok(['a', 'b', 'c'].every((e) => (spread[e] ?? 0) >= onStable.length / 10), `stable users spread over the 3 endpoints (${JSON.stringify(spread)})`)

  // remove the middle endpoint: a hash of the list position would move users of c too
  const put = await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: [u.a!.origin, u.c!.origin], reason: 'drain b' })
  t.equal(put.status, 200, put.body.toString())
  const without = await users(pool, USERS)
  t.equal(without.filter((h) => h.status !== 200).length, 0, 'every request answered 200 after the removal')
  t.equal(without.filter((h, i) => h.version !== first[i]!.version).length, 0, 'no user changed version')
  t.equal(without.filter((h) => h.upstream === 'b').length, 0, 'nobody reaches the removed endpoint')
  const moved = without.filter((h, i) => h.upstream !== first[i]!.upstream)
  const movedOffB = first.filter((h, i) => h.upstream === 'b' && without[i]!.upstream !== 'b').length
  t.equal(moved.length, movedOffB, `only the keys that were on b moved (${moved.length} moved, ${spread.b ?? 0} were on b)`)
  t.ok(movedOffB > 0, 'b had keys to move')

  // put it back: keys only move onto b, and the same endpoint set gives the same mapping
  const back = await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: [u.a!.origin, u.b!.origin, u.c!.origin] })
  t.equal(back.status, 200, back.body.toString())
  const restored = await users(pool, USERS)
  t.equal(restored.filter((h, i) => h.upstream !== without[i]!.upstream && h.upstream !== 'b').length, 0, 'a joining endpoint only takes keys, nobody moves between a and c')
  t.equal(restored.filter((h, i) => h.upstream !== first[i]!.upstream || h.version !== first[i]!.version).length, 0, 'every user is back on the endpoint it started on')
})

t.test('passive outlier detection ejects a dead endpoint; its version keeps serving from the others', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd'])
  const { p, pool } = await proxy(t, [
    { name: 'stable', upstream: [u.a!.origin, u.b!.origin, u.c!.origin], weight: 50 },
    { name: 'canary', upstream: u.d!.origin, weight: 50 }
  ], { health: { consecutiveFailures: 3, ejectionMs: 60_000 } })
  const USERS = 80
  const before = await users(pool, USERS)
  t.equal(before.filter((h) => h.status !== 200).length, 0)
  t.ok(before.filter((h) => h.version === 'stable').length >= 15, 'enough users on stable to exercise the endpoints')
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 3, ejected: 0 }, 'gauge: 3 healthy stable endpoints')

  await u.b!.close() // b dies: connections refused from now on
  const round1 = await users(pool, USERS)
  const round2 = await users(pool, USERS)
  const failed = [...round1, ...round2].filter((h) => h.status !== 200).length
  t.ok(failed <= 3, `at most consecutiveFailures (3) requests failed while b was being detected (${failed})`)
  t.equal(round2.filter((h) => h.status !== 200).length, 0, 'once b is ejected, every request answers 200')
  const ok = [...round1, ...round2].map((h, i) => ({ h, want: before[i % USERS]!.version })).filter((x) => x.h.status === 200)
  t.equal(ok.filter((x) => x.h.version !== x.want).length, 0, 'x-canaryd-version unchanged for every user: losing an endpoint never moves a user to another version')
  t.ok(ok.filter((x) => x.want === 'stable').every((x) => x.h.upstream === 'a' || x.h.upstream === 'c'), 'stable is served by the live endpoints')
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 2, ejected: 1 }, 'gauge: one stable endpoint ejected')
  t.same(await endpointGauge(p.adminUrl, 'web', 'canary'), { healthy: 1, ejected: 0 }, 'the other version is untouched')
})

t.test('when every endpoint of a version is out, its users fall back to the other version', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const { p, pool } = await proxy(t, [
    { name: 'stable', upstream: [u.a!.origin, u.b!.origin], weight: 50 },
    { name: 'canary', upstream: u.c!.origin, weight: 50 }
  ], { health: { consecutiveFailures: 2, ejectionMs: 60_000 } })
  const USERS = 60
  const before = await users(pool, USERS)
  t.ok(before.filter((h) => h.version === 'stable').length >= 10, 'users on stable')
  await u.a!.close()
  await u.b!.close()
  // detection: bounded rounds until both stable endpoints are out
  let gauge = await endpointGauge(p.adminUrl, 'web', 'stable')
  for (let i = 0; i < 5 && gauge.ejected !== 2; i++) {
    await users(pool, USERS)
    gauge = await endpointGauge(p.adminUrl, 'web', 'stable')
  }
  t.same(gauge, { healthy: 0, ejected: 2 }, 'gauge: both stable endpoints ejected')
  const after = await users(pool, USERS)
  t.same(tally(after.map((h) => String(h.status))), { 200: USERS }, 'every user is served')
  t.same(tally(after.map((h) => h.version)), { canary: USERS }, 'stable users fell back to canary, canary users stayed')
  t.same(tally(after.map((h) => h.upstream)), { c: USERS })
})

t.test('active health check ejects one endpoint and brings it back; the endpoints gauge follows; no endpoint label elsewhere', async (t) => {
  let bFails = false
  const b = await startUpstream('b', (req: IncomingMessage, res: ServerResponse) => {
    const status = req.url === '/health' && bFails ? 500 : 200
    res.writeHead(status, { 'content-type': 'text/plain', 'x-upstream': 'b' })
    res.end('b')
  })
  t.teardown(async () => { await b.close() })
  const u = await startUpstreams(t, ['a', 'c', 'd'])
  const { p, pool } = await proxy(t, [
    { name: 'stable', upstream: [u.a!.origin, b.origin, u.c!.origin], weight: 100, balance: 'round-robin' },
    { name: 'canary', upstream: u.d!.origin, weight: 0 }
  ], { health: { consecutiveFailures: 0, checkPath: '/health', checkIntervalMs: 100 } })

  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 3, ejected: 0 }, 'from start-up: 3 healthy, 0 ejected')
  t.same(await endpointGauge(p.adminUrl, 'web', 'canary'), { healthy: 1, ejected: 0 }, 'the 0% version has its series too')
  t.ok(await until(() => b.seen.some((s) => s.url === '/health'), 3000), 'every endpoint is checked, b included')

  bFails = true
  t.ok(await until(async () => (await endpointGauge(p.adminUrl, 'web', 'stable')).ejected === 1, 3000), 'b is ejected by the check')
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 2, ejected: 1 })
  const seenB = b.seen.filter((s) => s.url !== '/health').length
  const during: Hit[] = []
  for (let i = 0; i < 30; i++) during.push(await hit(pool, { 'x-user-id': `h${i}` }))
  t.same(tally(during.map((h) => `${h.status} ${h.version}`)), { '200 stable': 30 }, 'the version keeps serving')
  t.equal(b.seen.filter((s) => s.url !== '/health').length, seenB, 'the ejected endpoint gets no traffic')

  bFails = false
  t.ok(await until(async () => (await endpointGauge(p.adminUrl, 'web', 'stable')).healthy === 3, 3000), 'b is back after a passing check')
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 3, ejected: 0 })
  for (let i = 0; i < 30; i++) await hit(pool, { 'x-user-id': `h${i}` })
  t.ok(b.seen.filter((s) => s.url !== '/health').length > seenB, 'b serves again')

  const text = (await send(`${p.adminUrl}/metrics`)).body.toString()
  const requestLabels = new Set(metricSamples(text, 'canaryd_requests_total').flatMap((s) => Object.keys(s.labels)))
  t.same([...requestLabels].sort(), ['code', 'route', 'source', 'version'], 'per-version request metrics keep their labels (source: user or synthetic)')
  const endpointLabels = new Set(metricSamples(text, 'canaryd_upstream_endpoints').flatMap((s) => Object.keys(s.labels)))
  t.same([...endpointLabels].sort(), ['route', 'state', 'version'], 'the gauge has route, version, state and nothing else')
  const ports = [u.a!, b, u.c!, u.d!].map((x) => x.origin.replace('http://', ''))
  t.notOk(text.split('\n').some((l) => l.startsWith('canaryd_') && ports.some((o) => l.includes(o))), 'no metric carries an endpoint address')
})

t.test('DNS discovery: resolved through upstream.dnsServers, re-resolved every dnsRefreshMs; a failing resolver keeps the endpoints', async (t) => {
  const dns = await startDnsServer()
  t.teardown(async () => { await dns.close() })
  const u = await startUpstreams(t, ['a', 'c'])
  const port = new URL(u.a!.origin).port
  const NAME = 'svc.canaryd.test'
  dns.set(NAME, ['127.0.0.1'])
  const { p, pool } = await proxy(t, [
    { name: 'stable', upstream: `http://${NAME}:${port}`, discovery: 'dns', weight: 50 },
    { name: 'canary', upstream: u.c!.origin, weight: 50 }
  ], { upstream: { dnsServers: dns.server, dnsRefreshMs: 200 }, health: { consecutiveFailures: 0 } })
  const USERS = 60
  const before = await users(pool, USERS)
  t.same(tally(before.map((h) => String(h.status))), { 200: USERS }, 'every user served')
  const stableUsers = before.filter((h) => h.version === 'stable')
  t.ok(stableUsers.length >= 10, `users on stable (${stableUsers.length})`)
  t.ok(stableUsers.every((h) => h.upstream === 'a'), 'stable is served at the resolved address')
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 1, ejected: 0 }, 'one A record, one endpoint')
  t.ok(dns.queries(NAME) > 0, 'resolved through upstream.dnsServers')

  const q0 = dns.queries(NAME)
  await sleep(1200)
  t.ok(dns.queries(NAME) >= q0 + 3, `re-resolved about every 200 ms (${dns.queries(NAME) - q0} queries in 1.2 s)`)

  // beyond the letter of the contract, the usual rule (Envoy's strict DNS): a resolver failure is not "no endpoints"
  dns.fail(NAME, 'SERVFAIL')
  const q1 = dns.queries(NAME)
  t.ok(await until(() => dns.queries(NAME) >= q1 + 2, 3000), 'still asking while the resolver fails')
  const during = await users(pool, USERS)
  t.equal(during.filter((h, i) => h.status !== 200 || h.version !== before[i]!.version || h.upstream !== before[i]!.upstream).length, 0, 'SERVFAIL: every user stays on their version and endpoint')
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 1, ejected: 0 })
})

t.test('DNS discovery: a name without records leaves the version unavailable until its record appears at the next refresh', async (t) => {
  const dns = await startDnsServer()
  t.teardown(async () => { await dns.close() })
  const u = await startUpstreams(t, ['a', 'c'])
  const port = new URL(u.a!.origin).port
  const NAME = 'later.canaryd.test'
  dns.set(NAME, []) // NOERROR, no A/AAAA record yet
  const { p, pool } = await proxy(t, [
    { name: 'stable', upstream: `http://${NAME}:${port}`, discovery: 'dns', weight: 50 },
    { name: 'canary', upstream: u.c!.origin, weight: 50 }
  ], { upstream: { dnsServers: dns.server, dnsRefreshMs: 200 }, health: { consecutiveFailures: 0 } })
  const USERS = 60
  const without = await users(pool, USERS)
  t.same(tally(without.map((h) => `${h.status} ${h.version}`)), { '200 canary': USERS }, 'no endpoint: every user is served by the other version')
  t.equal((await endpointGauge(p.adminUrl, 'web', 'stable')).healthy ?? 0, 0, 'gauge: no healthy stable endpoint')

  dns.set(NAME, ['127.0.0.1'])
  t.ok(await until(async () => (await endpointGauge(p.adminUrl, 'web', 'stable')).healthy === 1, 3000), 'the record becomes an endpoint')
  const withRecord = await users(pool, USERS)
  t.same(tally(withRecord.map((h) => String(h.status))), { 200: USERS })
  const onStable = withRecord.filter((h) => h.version === 'stable')
  t.ok(onStable.length >= 10, `stable has its users again (${onStable.length})`)
  t.ok(onStable.every((h) => h.upstream === 'a'), 'served at the resolved address')
})
