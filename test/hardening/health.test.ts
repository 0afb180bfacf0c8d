/**
 * Outlier detection state (pure, with a fake clock) and the active health
 * check against real upstreams.
 */
import t from 'tap'
import { RouteHealth, VersionHealth } from '../../src/upstream/health.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'
import { waitFor } from './raw.js'

function route (n: number, now: { t: number }, failures = 3): RouteHealth {
  const vs = Array.from({ length: n }, (_, i) => new VersionHealth('r', `v${i}`))
  return new RouteHealth(vs, vs.map((_, i) => i), { consecutiveFailures: failures, ejectionMs: 30_000 }, () => now.t)
}

t.test('consecutive failures eject for ejectionMs, then the version comes back', async (t) => {
  const clock = { t: 1000 }
  const h = route(2, clock)
  t.equal(h.failure(0, true), false)
  t.equal(h.failure(0, false), false)
  h.versions[0]!.success()
  t.equal(h.failure(0, true), false, 'a success resets the streak')
  t.equal(h.failure(0, true), false)
  t.equal(h.failure(0, true), true, 'third consecutive failure ejects')
  t.equal(h.excluded(), 0b01)
  clock.t += 29_999
  t.equal(h.excluded(), 0b01, 'still ejected just before the period ends')
  clock.t += 1
  const ended: string[] = []
  t.equal(h.excluded((v) => ended.push(v.version)), 0, 'back after ejectionMs')
  t.same(ended, ['v0'])
  t.equal(h.versions[0]!.failures, 0, 'streak reset on return')
})

t.test('the last version standing is never ejected', async (t) => {
  const clock = { t: 0 }
  const h = route(3, clock, 1)
  t.equal(h.failure(0, true), true)
  t.equal(h.failure(1, true), true)
  t.equal(h.failure(2, true), false, 'v2 is the last: kept')
  t.equal(h.excluded(), 0b011)
  t.equal(h.othersUnreachable(2), true, 'every other version is ejected: the route is unreachable')
})

t.test('threshold 0 turns passive ejection off', async (t) => {
  const h = route(2, { t: 0 }, 0)
  for (let i = 0; i < 100; i++) t.equal(h.failure(0, true), false)
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
