/**
 * Issue 17, low-traffic canaries end to end: the built-in load generator
 * (analysis.loadTest) sends synthetic requests through the proxy's own
 * listener to each version, marked `x-canaryd-synthetic: 1` and counted
 * under source="synthetic"; the judge counts them only with
 * includeInAnalysis. And the guidance an inconclusive check carries.
 *
 * - A route with no user traffic is decided on synthetic traffic within
 *   its plan's time ((steps + 1) · intervalMs plus slack).
 * - Without includeInAnalysis the same rollout stays inconclusive, its
 *   checks saying how many more requests a decision needs.
 * - The generator stops within one second of pause and of abort (counted
 *   at the upstreams), and starts again on resume.
 * - A trickle of users: guidance with the canary's rate and the expected
 *   time, and `canaryd rollout status` prints its "decision:" line.
 */
import t, { type Test } from 'tap'
import { startBusinessUpstream, userTraffic, type BusinessUpstream } from '../helpers/business.js'
import { ensureBuilt, runCli } from '../helpers/cli.js'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { metricSamples } from '../helpers/reload.js'
import { sleep, until } from '../helpers/until.js'

interface Guidance { neededRequests: number; moreRequests: number; canaryRps: number | null; expectedMs: number | null; note?: string }
interface Side { requests: number; successRate: number }
interface Check { at: string; verdict: string; reasons: string[]; canary: Side; stable: Side; guidance?: Guidance }
interface Rollout { state: string; weight: number; reason: string | null; checks: Check[]; history: Array<{ event: string; at: string }> }

async function rollout (p: TestProxy): Promise<Rollout> {
  return (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json as unknown as Rollout
}

/** Two upstreams that record every request, a route over them (canary 0 %, override header x-canary), closed in teardown. */
async function setup (t: Test): Promise<{ p: TestProxy; stable: BusinessUpstream; canary: BusinessUpstream }> {
  const stable = await startBusinessUpstream('stable')
  const canary = await startBusinessUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  return { p, stable, canary }
}

const INTERVAL_MS = 400
const STEPS = [50]

/** A plan decided on synthetic traffic: 40 rps over both versions (20 each), 8 canary requests a check against minRequests 5. */
function plan (loadTest: Record<string, unknown>, analysis: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    canary: 'canary',
    steps: STEPS,
    intervalMs: INTERVAL_MS,
    analysis: { minRequests: 5, maxFailedChecks: 2, successRate: { min: 95 }, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 20 }, loadTest: { rps: 40, paths: ['/order', '/order/items'], ...loadTest }, ...analysis }
  }
}

/** canaryd_requests_total of route web by version and source. */
async function requestCounts (p: TestProxy): Promise<Record<string, number>> {
  const text = await (await fetch(`${p.adminUrl}/metrics`)).text()
  const out: Record<string, number> = {}
  for (const s of metricSamples(text, 'canaryd_requests_total')) {
    if (s.labels.route !== 'web') continue
    const k = `${s.labels.version}/${s.labels.source}`
    out[k] = (out[k] ?? 0) + s.value
  }
  return out
}

ensureBuilt()

t.test('a route without user traffic is decided on synthetic traffic within its plan\'s time', async (t) => {
  const { p, stable, canary } = await setup(t)
  // almost no user traffic: three requests before the rollout, all on stable
  for (let i = 0; i < 3; i++) await (await fetch(`${p.url}/order`, { headers: { 'x-user-id': `lonely-${i}` } })).arrayBuffer()
  const t0 = performance.now()
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', plan({ includeInAnalysis: true }))
  t.equal(started.status, 201, JSON.stringify(started.json))
  const budget = (STEPS.length + 1) * INTERVAL_MS + 1500
  await until('the rollout ends', async () => (await rollout(p)).state !== 'progressing', budget + 3000, 25)
  const ms = performance.now() - t0
  const endedAt = performance.now()

  const r = await rollout(p)
  t.equal(r.state, 'promoted', `promoted on synthetic traffic (${String(r.reason)}; ${r.checks.map((c) => c.verdict).join(', ')})`)
  t.ok(ms <= budget, `within (steps + 1) · intervalMs + 1.5 s: ${Math.round(ms)} ms <= ${budget} ms`)
  const pass = r.checks.filter((c) => c.verdict === 'pass')
  t.ok(pass.length >= 1, 'a passing check')
  for (const c of pass) t.ok(c.canary.requests >= 5 && c.stable.requests >= 5, `judged on the synthetic requests (canary ${c.canary.requests}, stable ${c.stable.requests})`)

  const counts = await requestCounts(p)
  t.ok((counts['canary/synthetic'] ?? 0) > 0, `canaryd_requests_total{version="canary",source="synthetic"} = ${counts['canary/synthetic']}`)
  t.ok((counts['stable/synthetic'] ?? 0) > 0, `canaryd_requests_total{version="stable",source="synthetic"} = ${counts['stable/synthetic']}`)
  t.equal(counts['canary/user'] ?? 0, 0, 'no user request reached the canary')
  t.equal(counts['stable/user'], 3, 'the three user requests, counted as user')
  const sources = new Set(Object.keys(counts).map((k) => k.split('/')[1]))
  t.same([...sources].sort(), ['synthetic', 'user'], 'source is user or synthetic, nothing else')

  t.ok(canary.synthetic() > 0 && stable.synthetic() > 0, `both upstreams saw x-canaryd-synthetic: 1 (canary ${canary.synthetic()}, stable ${stable.synthetic()})`)
  t.equal(canary.synthetic(), canary.seen.length, 'every request the canary saw was synthetic')
  t.equal(stable.seen.length - stable.synthetic(), 3, 'stable saw the three users besides')
  t.ok(canary.seen.every((s) => s.url === '/order' || s.url === '/order/items'), 'synthetic requests go to the plan\'s paths')
  t.ok(canary.seen.some((s) => s.url === '/order') && canary.seen.some((s) => s.url === '/order/items'), 'both paths used')
  t.ok(canary.seen.every((s) => s.method === 'GET'), 'method GET by default')
  const users = new Set(stable.seen.filter((s) => s.headers['x-canaryd-synthetic'] === '1').map((s) => /canaryd_id=([^;]+)/.exec(String(s.headers.cookie))?.[1]))
  t.ok(users.size > 1 && [...users].every((u) => u !== undefined && /^synthetic-\d+$/.test(u)), `sticky cookies name synthetic users (${[...users].slice(0, 3).join(', ')}…)`)

  // the rollout is over: the generator stops with it
  await sleep(Math.max(0, endedAt + 1000 - performance.now()))
  const n = stable.seen.length + canary.seen.length
  await sleep(700)
  t.equal(stable.seen.length + canary.seen.length, n, 'no synthetic request more than 1 s after the promotion')
})

t.test('without includeInAnalysis the synthetic traffic is not judged: inconclusive, with guidance', async (t) => {
  const { p, stable, canary } = await setup(t)
  const t0 = performance.now()
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan({}))).status, 201)
  await until('four checks', async () => (await rollout(p)).checks.length >= 4, 10_000, 50)
  const rps = (canary.synthetic() + stable.synthetic()) / ((performance.now() - t0) / 1000)
  const r = await rollout(p)
  t.equal(r.state, 'progressing', 'not promoted: the synthetic requests do not count')
  t.ok(r.checks.every((c) => c.verdict === 'inconclusive'), `every check inconclusive (${r.checks.map((c) => c.verdict).join(', ')})`)
  t.ok(r.checks.every((c) => c.canary.requests === 0 && c.stable.requests === 0), 'the judged windows hold no request')
  t.ok(canary.synthetic() >= 20 && stable.synthetic() >= 20, `yet the generator ran (canary ${canary.synthetic()}, stable ${stable.synthetic()})`)
  t.ok(rps > 20 && rps < 60, `at about the plan's 40 rps (${rps.toFixed(1)})`)
  t.ok(Math.abs(canary.synthetic() - stable.synthetic()) <= 2, 'spread evenly over the two versions')
  const counts = await requestCounts(p)
  t.ok((counts['canary/synthetic'] ?? 0) >= 20, 'and was counted as synthetic')
  const last = r.checks[r.checks.length - 1]!
  t.ok(last.guidance !== undefined, `the check carries guidance: ${JSON.stringify(last.guidance)}`)
  t.ok(last.guidance!.moreRequests > 0, 'moreRequests > 0')
  t.ok(last.guidance!.neededRequests >= 5, 'neededRequests >= minRequests')
  t.equal(last.guidance!.moreRequests, last.guidance!.neededRequests - last.canary.requests, 'moreRequests = neededRequests − the canary requests judged')
  t.ok(last.guidance!.canaryRps === null || last.guidance!.canaryRps === 0, `no judged canary rate (${String(last.guidance!.canaryRps)})`)
  t.equal(last.guidance!.expectedMs, null, 'so no expected time')

  const status = await runCli(['rollout', 'status', 'web', '--admin', p.adminUrl])
  t.equal(status.code, 0, status.stderr)
  t.match(status.stdout, /\ndecision: needs \d[\d,]* more canary requests \(of \d[\d,]*\); the canary gets no traffic now/, `status prints the decision line:\n${status.stdout}`)
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')).status, 200)
})

/** Requests the upstreams saw so far, and the arrival time of the last. */
function arrivals (ups: BusinessUpstream[]): { n: number; last: number } {
  let last = 0
  for (const u of ups) for (const s of u.seen) last = Math.max(last, s.at)
  return { n: ups.reduce((a, u) => a + u.seen.length, 0), last }
}

t.test('the generator stops within one second of pause and of abort, and resume restarts it', async (t) => {
  const { p, stable, canary } = await setup(t)
  const ups = [stable, canary]
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan({}))).status, 201)
  await until('synthetic requests arrive', () => arrivals(ups).n >= 20, 5000, 10)

  const stopsWithin = async (what: string, action: string, state: string): Promise<void> => {
    const before = arrivals(ups).n
    await sleep(300)
    t.ok(arrivals(ups).n > before, `${what}: the generator was running (${arrivals(ups).n - before} requests in 300 ms)`)
    const res = await admin(p, 'POST', `/api/v1/routes/web/rollout/${action}`)
    const answered = performance.now()
    t.equal(res.status, 200, `${action} answered`)
    t.equal(res.json.state, state)
    const atAnswer = arrivals(ups).n
    await sleep(1000)
    const atOne = arrivals(ups)
    await sleep(700)
    t.equal(arrivals(ups).n, atOne.n, `${what}: no request arrives later than 1 s after the answer`)
    t.ok(atOne.last <= answered + 1000, `${what}: the last arrival was ${Math.round(atOne.last - answered)} ms after the answer`)
    t.ok(atOne.n - atAnswer < 40, `${what}: at most what was in flight arrived after the answer (${atOne.n - atAnswer})`)
  }

  await stopsWithin('pause', 'pause', 'paused')
  const resumed = await admin(p, 'POST', '/api/v1/routes/web/rollout/resume')
  t.equal(resumed.status, 200)
  const atResume = arrivals(ups).n
  const ms = await until('the generator runs again', () => arrivals(ups).n >= atResume + 10, 3000, 10)
  t.ok(ms < 1500, `resume restarts it (10 requests in ${Math.round(ms)} ms)`)
  await stopsWithin('abort', 'abort', 'aborted')
})

t.test('a trickle of users: guidance with the canary\'s rate and the expected time', async (t) => {
  const { p } = await setup(t)
  // no load test; minRequests far above what a few requests a second bring in the test's time
  const body = { canary: 'canary', steps: [50], intervalMs: INTERVAL_MS, analysis: { minRequests: 2000, successRate: { min: 95 } } }
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', body)).status, 201)
  const traffic = userTraffic(p.url, { clients: 1, pauseMs: 25 })
  t.teardown(traffic.stop)
  await until('four checks', async () => (await rollout(p)).checks.length >= 4, 10_000, 50)
  const r = await rollout(p)
  const status = await runCli(['rollout', 'status', 'web', '--admin', p.adminUrl])
  await traffic.stop()

  t.equal(r.state, 'progressing')
  const last = r.checks[r.checks.length - 1]!
  t.equal(last.verdict, 'inconclusive')
  const g = last.guidance
  t.ok(g !== undefined, `guidance: ${JSON.stringify(g)}`)
  t.ok(last.canary.requests > 0 && last.canary.requests < 2000, `the canary had some requests (${last.canary.requests})`)
  t.ok(g!.neededRequests >= 2000, 'neededRequests >= minRequests')
  t.equal(g!.moreRequests, g!.neededRequests - last.canary.requests, 'moreRequests = neededRequests − the canary requests judged')
  // the window accumulates across inconclusive checks, from the rollout's start
  const elapsedS = (Date.parse(last.at) - Date.parse(r.history[0]!.at)) / 1000
  const rate = last.canary.requests / elapsedS
  t.ok(typeof g!.canaryRps === 'number' && g!.canaryRps > rate / 2 && g!.canaryRps < rate * 2, `canaryRps ${String(g!.canaryRps)} ≈ ${rate.toFixed(1)} req/s observed`)
  t.ok(typeof g!.expectedMs === 'number', 'an expected time')
  const expected = g!.moreRequests / g!.canaryRps! * 1000
  t.ok(Math.abs(g!.expectedMs! - expected) <= expected * 0.05 + 1000, `expectedMs ${String(g!.expectedMs)} ≈ moreRequests / canaryRps (${Math.round(expected)})`)

  t.equal(status.code, 0, status.stderr)
  const line = status.stdout.split('\n').find((l) => l.startsWith('decision:'))
  t.ok(line !== undefined, `status prints a line starting "decision:":\n${status.stdout}`)
  t.match(line, /^decision: needs \d[\d,]* more canary requests \(of \d[\d,]*\); at \d+(\.\d+)? req\/s expected in \S/, 'with the rate and the expected time')
})
