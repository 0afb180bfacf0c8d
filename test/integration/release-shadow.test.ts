/**
 * Issue 15, the shadow judge under real traffic: a plan that begins with a
 * shadow phase judges the canary on mirrored copies of the requests stable
 * served, at 0 % user exposure. A canary that answers 500 to a fifth of its
 * requests is rolled back before any user reached it (every request it saw
 * was a copy, none counted as a user request, users only got stable's 200s)
 * and the route's mirror is put back; a healthy one passes the phase and
 * goes on to the steps and promotion.
 */
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream, type TestUpstream } from '../helpers/upstream.js'
import { scrape, sum } from '../metrics/scrape.js'

const ANALYSIS = { minRequests: 20, maxFailedChecks: 2, successRate: { min: 95 }, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 20 } }

interface View { state: string; phase: string; weight: number; mirror: unknown; mirror5xx: number; mirrorOk: number }

/**
 * Real traffic: 8 keep-alive clients, a new user each request, until the
 * rollout is final or 20 s pass; meanwhile the route with its rollout
 * summary is polled every 50 ms (what the API said at each point).
 */
async function drive (t: Test, p: TestProxy): Promise<{ statuses: Map<string, number>; versions: Map<string, number>; views: View[]; final: string }> {
  const pool = new Pool(p.url, { connections: 8 })
  t.teardown(async () => { await pool.close() })
  const statuses = new Map<string, number>()
  const versions = new Map<string, number>()
  const views: View[] = []
  const deadline = Date.now() + 20_000
  let final = ''
  let user = 0
  const client = async (): Promise<void> => {
    while (final === '' && Date.now() < deadline) {
      const res = await pool.request({ path: `/item/${user % 50}`, method: 'GET', headers: { 'x-user-id': `u${user++}` }, headersTimeout: 10_000 }).catch((err: Error) => err)
      const key = res instanceof Error ? `error ${res.message}` : String(res.statusCode)
      statuses.set(key, (statuses.get(key) ?? 0) + 1)
      if (res instanceof Error) continue
      await res.body.dump()
      const v = String(res.headers['x-canaryd-version'])
      versions.set(v, (versions.get(v) ?? 0) + 1)
    }
  }
  const watcher = async (): Promise<void> => {
    while (Date.now() < deadline) {
      // one read: the route (its mirror) and its rollout summary as of the same change
      const route = (await admin(p, 'GET', '/api/v1/routes/web')).json
      const r = route.rollout as Record<string, unknown>
      // the mirror's series exist while a mirror does (bound with the table): read them during the phase
      const e = await scrape(p)
      const m = (result: string): number => sum(e, METRIC_NAMES.mirrorRequests, { route: 'web', version: 'canary', result })
      views.push({ state: String(r.state), phase: String(r.phase), weight: Number(r.weight), mirror: route.mirror, mirror5xx: m('5xx'), mirrorOk: m('ok') })
      if (r.state !== 'progressing') { final = String(r.state); return }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    final = 'timeout'
  }
  await Promise.all([watcher(), ...Array.from({ length: 8 }, client)])
  return { statuses, versions, views, final }
}

async function setup (t: Test, canary: TestUpstream): Promise<{ p: TestProxy; stable: TestUpstream }> {
  const stable = await startUpstream('stable')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  return { p, stable }
}

t.test('a canary answering 500 to 20 % of mirrored copies is rolled back in the shadow phase, no user on it', async (t) => {
  let n = 0
  const canary = await startUpstream('canary', (_req, res) => {
    res.writeHead(n++ % 5 === 0 ? 500 : 200, { 'content-type': 'text/plain' })
    res.end('canary')
  })
  const { p, stable } = await setup(t, canary)
  t.equal((await admin(p, 'GET', '/api/v1/routes/web')).json.mirror, null, 'the route has no mirror of its own')

  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', { shadow: { percent: 50, durationMs: 2000 }, steps: [10, 50], intervalMs: 300, analysis: ANALYSIS })
  t.equal(started.status, 201, 'a plan with a shadow phase (canary left out: stable/canary route) starts')
  t.equal(started.json.canary, 'canary')
  t.equal(started.json.phase, 'shadow')
  t.equal(started.json.weight, 0, 'the shadow phase gives the canary no user')
  const { statuses, versions, views, final } = await drive(t, p)

  t.equal(final, 'rolled-back', 'the shadow judge rolls the canary back')
  t.ok(views.some((v) => v.state === 'progressing' && v.phase === 'shadow' && (v.mirror as { version?: string } | null)?.version === 'canary'),
    'during the phase the route mirrors to the canary')
  t.ok(views.filter((v) => v.state === 'progressing').every((v) => v.phase === 'shadow' && v.weight === 0), 'it never left the shadow phase, never above 0 %')
  const r = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json
  t.equal(r.state, 'rolled-back')
  t.equal(r.weight, 0)
  t.match(r.reason, /shadow phase \(no user reached the canary\)/, 'the reason says it ended in the shadow phase')
  t.match(r.reason, /mirrored copies got a different status class|error rate|success rate/, `the reason names the mismatch or the errors: ${String(r.reason)}`)
  const checks = r.checks as Array<{ phase?: string; verdict: string; shadow?: { pairs: number; mismatches: number; mismatchRate: number } }>
  t.ok(checks.length >= 2 && checks.every((c) => c.phase === 'shadow'), 'every check judged the shadow phase')
  const failed = checks.filter((c) => c.verdict === 'fail')
  t.equal(failed.length, 2, 'rolled back at maxFailedChecks (2)')
  for (const c of failed) t.ok(c.shadow !== undefined && c.shadow.pairs >= 20 && c.shadow.mismatchRate > 5 && c.shadow.mismatchRate < 50, `a failed check's paired figures: ${JSON.stringify(c.shadow)}`)

  // nobody was served by the canary: it saw copies only, users saw stable's 200s only
  t.same([...statuses.keys()], ['200'], `users got only 200s (${JSON.stringify([...statuses])})`)
  t.same([...versions.keys()], ['stable'], 'every user answer came from stable')
  t.ok(canary.seen.length >= 40, `the canary received copies (${canary.seen.length})`)
  t.equal(canary.seen.filter((s) => s.headers['x-canaryd-mirror'] !== '1').length, 0, 'every request the canary saw carried x-canaryd-mirror: 1')
  t.ok(canary.seen.length < stable.seen.length, `about half of stable's requests copied (${canary.seen.length} of ${stable.seen.length})`)
  const e = await scrape(p)
  t.equal(sum(e, METRIC_NAMES.requests, { route: 'web', version: 'canary' }), 0, 'canaryd_requests_total for the canary is 0')
  t.ok(sum(e, METRIC_NAMES.requests, { route: 'web', version: 'stable' }) > 0)
  const most5xx = Math.max(...views.map((v) => v.mirror5xx))
  t.ok(most5xx > 0, `canaryd_mirror_requests_total{result="5xx"} > 0 during the phase (${most5xx})`)
  t.ok(Math.max(...views.map((v) => v.mirrorOk)) > most5xx, 'most copies were answered below 500')

  // the mirror is what it was; nothing is copied any more
  const route = ((await admin(p, 'GET', '/api/v1/routes')).json.routes as Array<{ name: string; mirror: unknown }>).find((x) => x.name === 'web')!
  t.equal(route.mirror, null, 'GET /api/v1/routes shows mirror null again')
  await new Promise((resolve) => setTimeout(resolve, 200))
  const copies = canary.seen.length
  for (let i = 0; i < 30; i++) await (await fetch(`${p.url}/after`, { headers: { 'x-user-id': `a${i}` } })).arrayBuffer()
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(canary.seen.length, copies, 'no copies after the rollback')
  const audit = (await admin(p, 'GET', '/api/v1/audit?route=web&limit=20')).json.entries as Array<{ source: string; mirror?: { previous: unknown; next: unknown } }>
  const mirrors = audit.filter((a) => a.mirror !== undefined)
  t.ok(mirrors.some((a) => a.mirror!.previous === null && (a.mirror!.next as { version?: string } | null)?.version === 'canary'), 'audit: the shadow mirror set')
  t.ok(mirrors.some((a) => a.mirror!.next === null && a.source === 'rollout'), 'audit: the mirror removed by the rollback')
})

t.test('a healthy canary passes the shadow phase, goes on to the steps and is promoted', async (t) => {
  const canary = await startUpstream('canary')
  const { p } = await setup(t, canary)
  const t0 = Date.now()
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', shadow: { percent: 100, durationMs: 2000 }, steps: [10, 50], intervalMs: 300, analysis: ANALYSIS })
  t.equal(started.status, 201)
  t.equal(started.json.phase, 'shadow')
  const { statuses, versions, views, final } = await drive(t, p)
  t.equal(final, 'promoted', 'the healthy canary is promoted')
  t.same([...statuses.keys()], ['200'], 'users got only 200s')
  t.ok((versions.get('canary') ?? 0) > 0, 'after the shadow phase users reached the canary')

  const shadowViews = views.filter((v) => v.state === 'progressing' && v.phase === 'shadow')
  t.ok(shadowViews.length > 0 && shadowViews.every((v) => v.weight === 0 && (v.mirror as { version?: string } | null)?.version === 'canary'), 'shadow phase: 0 % and the mirror on')
  const firstStep = views.findIndex((v) => v.state === 'progressing' && v.phase === 'steps')
  t.ok(firstStep > 0, 'then phase "steps"')
  t.equal(views[firstStep]?.weight, 10, 'at the first step, 10 %')
  t.equal(views[firstStep]?.mirror, null, 'and the shadow mirror is gone with the phase')
  t.ok(views.slice(firstStep).every((v) => v.phase !== 'shadow'), 'never back in the shadow phase')

  const r = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json
  const checks = r.checks as Array<{ phase?: string; verdict: string; at: string }>
  const passedShadow = checks.filter((c) => c.phase === 'shadow' && c.verdict === 'pass')
  t.ok(passedShadow.length > 0, 'a passing shadow check')
  const history = r.history as Array<{ event: string; weight: number; at: string }>
  const step10 = history.find((h) => h.event === 'step' && h.weight === 10)
  t.ok(step10 !== undefined && Date.parse(step10.at) - t0 >= 2000 - 50, 'the first step only after the phase\'s 2000 ms')
  t.ok(history.some((h) => h.event === 'step' && h.weight === 50), 'then 50 %')
  t.same(p.app.state.weights('web'), { stable: 0, canary: 100 })
  t.equal(((await admin(p, 'GET', '/api/v1/routes/web')).json.mirror), null)
  const mirrored = canary.seen.filter((s) => s.headers['x-canaryd-mirror'] === '1').length
  t.ok(mirrored >= 20, `the canary was judged on copies first (${mirrored})`)
  t.ok(canary.seen.length > mirrored, 'then served users')
})
