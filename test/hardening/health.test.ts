/**
 * Outlier detection state (pure, with a fake clock) and the active health
 * check against real upstreams.
 */
import t from 'tap'
import { EndpointGroup } from '../../src/upstream/group.js'
import { RouteHealth } from '../../src/upstream/health.js'
import { Upstreams } from '../../src/upstream/pools.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'
import { waitFor } from './raw.js'

/** Route healths over real endpoint groups (pools never dialled): `n` versions of `per` endpoints each, on a fake clock. */
function route (n: number, now: { t: number }, failures = 3, per = 1): { h: RouteHealth, groups: EndpointGroup[], close: () => Promise<void> } {
  const ups = new Upstreams({ connectTimeoutMs: 100, responseTimeoutMs: 100, bodyTimeoutMs: 100, connections: 1, keepAliveMs: 100, now: () => now.t })
  const groups = Array.from({ length: n }, (_, i) => ups.group('r', `v${i}`, { upstream: Array.from({ length: per }, (_, j) => `http://127.0.0.1:${1000 + i * 10 + j}`) }, 'k'))
  ups.commit()
  return { h: new RouteHealth(groups, groups.map((_, i) => i), { consecutiveFailures: failures, ejectionMs: 30_000 }, () => now.t), groups, close: async () => { await ups.close() } }
}

t.test('consecutive failures eject an endpoint for ejectionMs, then it comes back', async (t) => {
  const clock = { t: 1000 }
  const { h, groups, close } = route(2, clock)
  t.teardown(close)
  const e = groups[0]!.all[0]!
  t.equal(h.failure(0, e, true), 'none')
  t.equal(h.failure(0, e, false), 'none')
  h.success(0, e)
  t.equal(h.failure(0, e, true), 'none', 'a success resets the streak')
  t.equal(h.failure(0, e, true), 'none')
  t.equal(h.failure(0, e, true), 'version', 'third consecutive failure ejects the only endpoint: the version is out')
  t.equal(h.excluded(), 0b01)
  clock.t += 29_999
  t.equal(h.excluded(), 0b01, 'still ejected just before the period ends')
  clock.t += 1
  t.equal(h.excluded(), 0, 'back after ejectionMs')
  t.equal(e.failures, 0, 'streak reset on return')
})

t.test('the last version standing is never ejected', async (t) => {
  const clock = { t: 0 }
  const { h, groups, close } = route(3, clock, 1)
  t.teardown(close)
  t.equal(h.failure(0, groups[0]!.all[0]!, true), 'version')
  t.equal(h.failure(1, groups[1]!.all[0]!, true), 'version')
  t.equal(h.failure(2, groups[2]!.all[0]!, true), 'none', 'v2 is the last: kept')
  t.equal(h.excluded(), 0b011)
  t.equal(h.othersUnreachable(2), true, 'every other version is ejected: the route is unreachable')
})

t.test('endpoints: one ejected endpoint leaves the version in; all of them take it out', async (t) => {
  const clock = { t: 0 }
  const { h, groups, close } = route(2, clock, 1, 3)
  t.teardown(close)
  const [a, b, c] = groups[0]!.all
  t.equal(h.failure(0, a!, true), 'endpoint')
  t.equal(h.excluded(), 0, 'two endpoints left: the version stays')
  t.equal(groups[0]!.healthy.length, 2)
  for (let i = 0; i < 50; i++) t.not(groups[0]!.pick(i * 7919), a, 'the ejected endpoint is never picked')
  t.equal(h.failure(0, b!, true), 'endpoint')
  t.equal(h.failure(0, c!, true), 'version', 'the last endpoint: the version is out')
  t.equal(h.excluded(), 0b01)
  t.equal(groups[0]!.pickAny(1) !== undefined, true, 'pickAny still offers one (last-standing fallback)')
  clock.t += 30_000
  t.equal(h.excluded(), 0, 'ejections end lazily')
  t.equal(groups[0]!.healthy.length, 3)
})

t.test('threshold 0 turns passive ejection off', async (t) => {
  const { h, groups, close } = route(2, { t: 0 }, 0)
  t.teardown(close)
  for (let i = 0; i < 100; i++) t.equal(h.failure(0, groups[0]!.all[0]!, true), 'none')
  t.equal(h.excluded(), 0)
})

t.test('active health check: a failing check ejects, a passing one brings the version back', async (t) => {
  let canaryHealthy = false
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary', (req, res) => {
    if (req.url === '/health' && !canaryHealthy) res.writeHead(500).end('sick')
    else res.end(JSON.stringify({ version: 'canary' }))
  })
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50])], {
    health: { checkPath: '/health', checkIntervalMs: 100, consecutiveFailures: 5, ejectionMs: 60_000 }
  }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const versionsFor = async (): Promise<Set<string>> => {
    const seen = new Set<string>()
    for (let i = 0; i < 30; i++) seen.add(String((await send(`${proxy.url}/`, { headers: { 'x-user-id': `user-${i}` } })).headers['x-canaryd-version']))
    return seen
  }
  const only = async (want: string[]): Promise<boolean> => [...await versionsFor()].sort().join() === want.join()
  await waitFor(async () => await only(['stable']), { intervalMs: 50 })
  t.pass('canary ejected by the check')
  t.ok(canary.seen.some((s) => s.url === '/health'), 'the check really ran GET /health')
  canaryHealthy = true
  await waitFor(async () => await only(['canary', 'stable']), { intervalMs: 50 })
  t.pass('canary back in rotation')
})

t.test('active health check: only 2xx/3xx is healthy; a 404 on the check path ejects', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary', (req, res) => {
    if (req.url === '/health') res.writeHead(404).end('no such path')
    else res.end(JSON.stringify({ version: 'canary' }))
  })
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50])], {
    health: { checkPath: '/health', checkIntervalMs: 50, consecutiveFailures: 5, ejectionMs: 60_000 }
  }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  await waitFor(() => canary.seen.filter((s) => s.url === '/health').length >= 2)
  const seen = new Set<string>()
  for (let i = 0; i < 30; i++) seen.add(String((await send(`${proxy.url}/`, { headers: { 'x-user-id': `user-${i}` } })).headers['x-canaryd-version']))
  t.same([...seen], ['stable'], 'canary answered 404 on its health path: ejected')
})
