/**
 * Issue 17, Prometheus metrics in a rollout's analysis, end to end: a real
 * Prometheus (Debian `prometheus`) scrapes business upstreams that count
 * orders per version; canaryd queries it at every check.
 *
 * - A canary whose order success is 10 % worse than stable's is rolled back
 *   although every one of its HTTP answers was a 200: the metric alone
 *   decides, and says so in the reason, on /metrics and in `rollout status`.
 * - A Prometheus with nothing listening, one that stops mid-rollout, and a
 *   query with an empty result make checks inconclusive, never a rollback
 *   (maxFailedChecks 1: a single failed check would have rolled back);
 *   with failOnNoData the empty result fails the checks and rolls back.
 */
import t, { type Test } from 'tap'
import { startBusinessUpstream, userTraffic, type BusinessUpstream } from '../helpers/business.js'
import { ensureBuilt, runCli } from '../helpers/cli.js'
import { prometheusMissing, startPrometheus, type TestPrometheus } from '../helpers/prometheus.js'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { metricSamples } from '../helpers/reload.js'
import { refusedOrigin } from '../helpers/upstream.js'
import { until } from '../helpers/until.js'

const missing = prometheusMissing()
if (missing !== undefined) t.comment(`SKIP the tests with a real Prometheus: ${missing}`)
const skip = missing ?? false

/** The business metric: the cumulative share of ok orders of {{version}}. */
const ORDER_SUCCESS = 'sum(orders_ok_total{version="{{version}}"}) / sum(orders_total{version="{{version}}"})'

/** A metric no target exposes: its sum is an empty vector. */
const NO_SUCH = 'sum(canaryd_test_no_such_metric_total{version="{{version}}"})'

/** Built-in analysis every test shares: the HTTP figures of these upstreams always pass it. */
const HTTP_ANALYSIS = { minRequests: 10, successRate: { min: 95 }, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 20 } }

interface Metric { name: string; verdict: string; canary: number | null; baseline?: number | null; ratio?: number | null; reason?: string; queries: { canary: string; baseline?: string } }
interface Side { requests: number; failures: number; successRate: number }
interface Check { verdict: string; reasons: string[]; canary: Side; stable: Side; weight: number; metrics?: Metric[] }
interface Rollout { state: string; weight: number; failedChecks: number; reason: string | null; checks: Check[] }

async function rollout (p: TestProxy): Promise<Rollout> {
  return (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json as unknown as Rollout
}

/**
 * One Prometheus for the file, scraping two business upstreams (stable:
 * every order ok; canary: 9 in 10) every 250 ms. Started at once: it takes
 * about 5 s to discover its targets (its scrape manager's reload throttle),
 * which the test that needs no Prometheus overlaps. The last test stops it.
 */
interface Shared { prom: TestPrometheus; stable: BusinessUpstream; canary: BusinessUpstream }

async function startShared (): Promise<Shared> {
  const stable = await startBusinessUpstream('stable', { okRatio: 1 })
  const canary = await startBusinessUpstream('canary', { okRatio: 0.9 })
  const prom = await startPrometheus({ targets: [stable.target, canary.target], scrapeIntervalMs: 250 })
  t.teardown(async () => { await prom.stop(); await stable.close(); await canary.close() })
  return { prom, stable, canary }
}

const shared = missing === undefined ? startShared() : undefined
// a failed start fails the tests that use it, not the file's load
shared?.catch(() => {})

/** The shared Prometheus and upstreams, once Prometheus scrapes both. */
async function env (): Promise<Shared> {
  const s = await shared!
  await s.prom.waitForTargets()
  return s
}

/** A proxy over `stable` and `canary` (canary at 0 %), closed in teardown. */
async function proxy (t: Test, stable: { origin: string }, canary: { origin: string }): Promise<TestProxy> {
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close() })
  return p
}

/** `n` orders on each version through the proxy, pinned by the override header (the canary is at 0 % before the rollout). */
async function warm (p: TestProxy, n: number): Promise<void> {
  for (const version of ['stable', 'canary']) {
    for (let i = 0; i < n; i++) {
      const res = await fetch(`${p.url}/order`, { headers: { 'x-canary': version, 'x-user-id': `warm-${i}` } })
      await res.arrayBuffer()
      if (res.status !== 200) throw new Error(`warm-up request to ${version}: ${res.status}`)
    }
  }
}

/** The value of an instant query that returns one sample (NaN when it returns none). */
async function promValue (prom: TestPrometheus, q: string): Promise<number> {
  const data = await prom.query(q) as { result: Array<{ value: [number, string] }> }
  return data.result.length === 1 ? Number(data.result[0]!.value[1]) : Number.NaN
}

/** A plan at one step of 50 %, 300 ms checks, the HTTP analysis plus `metrics`. */
function plan (metrics: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { canary: 'canary', steps: [50], intervalMs: 300, analysis: { ...HTTP_ANALYSIS, maxFailedChecks: 2, metrics, ...extra } }
}

ensureBuilt()

t.test('a Prometheus with nothing listening: inconclusive checks naming it, no rollback', async (t) => {
  const stable = await startBusinessUpstream('stable')
  const canary = await startBusinessUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const p = await proxy(t, stable, canary)
  const address = await refusedOrigin()
  // one failed check would roll back: the outage must not count as one
  const body = plan([{ name: 'order-success', provider: { type: 'prometheus', address, timeoutMs: 1000 }, query: ORDER_SUCCESS, thresholdRange: { min: 0.98 } }], { maxFailedChecks: 1 })
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', body)).status, 201)
  const traffic = userTraffic(p.url, { clients: 4 })
  t.teardown(traffic.stop)
  await until('five checks', async () => (await rollout(p)).checks.length >= 5, 10_000, 50)
  await traffic.stop()

  const r = await rollout(p)
  t.equal(r.state, 'progressing', 'no rollback (and no promotion) after five intervals')
  t.equal(r.weight, 50)
  t.equal(r.failedChecks, 0)
  t.ok(r.checks.every((c) => c.verdict === 'inconclusive'), `every check is inconclusive: ${r.checks.map((c) => c.verdict).join(', ')}`)
  for (const c of r.checks) {
    const m = c.metrics?.find((x) => x.name === 'order-success')
    t.equal(m?.verdict, 'inconclusive')
    t.equal(m?.canary, null, 'no value')
    t.ok(m?.reason?.includes(`Prometheus at ${address}`) === true && /unreachable|ECONNREFUSED|refused/i.test(m.reason), `the reason names the address and the problem: ${String(m?.reason)}`)
    t.ok(c.reasons.some((x) => x.startsWith('metric order-success: Prometheus at ')), 'and the check\'s reasons carry it')
  }
  // the built-in figures alone would have passed (and promoted): the metric is what holds the rollout
  const last = r.checks[r.checks.length - 1]!
  t.ok(last.canary.requests >= 10 && last.canary.successRate === 100, `the HTTP figures pass (${JSON.stringify(last.canary)})`)
  t.equal(last.reasons.length, 1, `only the metric's reason: ${JSON.stringify(last.reasons)}`)
})

t.test('a canary whose order success is 10 % worse is rolled back while its HTTP figures are perfect', { skip }, async (t) => {
  const { prom, stable, canary } = await env()
  const p = await proxy(t, stable, canary)
  await warm(p, 40)
  // the first check must find both versions in Prometheus: wait for the scrape of the warm-up orders
  await until('Prometheus has scraped the warm-up orders', async () =>
    await promValue(prom, 'sum(orders_total{version="canary"})') >= 40 && await promValue(prom, 'sum(orders_total{version="stable"})') >= 40, 10_000, 100)
  t.equal(await promValue(prom, ORDER_SUCCESS.replaceAll('{{version}}', 'canary')), 0.9, 'Prometheus sees the canary at 90 % ok orders')
  t.equal(await promValue(prom, ORDER_SUCCESS.replaceAll('{{version}}', 'stable')), 1, 'and stable at 100 %')

  const metric = {
    name: 'order-success',
    provider: { type: 'prometheus', address: prom.url, timeoutMs: 2000 },
    query: ORDER_SUCCESS,
    compare: { baseline: 'stable', maxRatio: 1.05, direction: 'lower-is-worse' }
  }
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', plan([metric]))
  t.equal(started.status, 201, JSON.stringify(started.json))
  const t0 = Date.now()
  const traffic = userTraffic(p.url, { clients: 4 })
  await until('the rollout ends', async () => (await rollout(p)).state !== 'progressing', 15_000, 50)
  const ms = Date.now() - t0
  await traffic.stop()

  const r = await rollout(p)
  t.equal(r.state, 'rolled-back', 'the canary is rolled back')
  t.ok(ms < 5000, `within a few checks (${ms} ms)`)
  t.equal(r.weight, 0)
  t.same(p.app.state.weights('web'), { stable: 100, canary: 0 })
  t.match(r.reason, /metric order-success: canary 0\.(8[7-9]|9)\d* vs stable 1 \(ratio 1\.1[1-4]\d* > 1\.05, lower is worse\)/, `the reason names the metric and the ratio: ${String(r.reason)}`)
  t.same([...traffic.statuses.keys()], ['200'], `every user request was answered 200 (${JSON.stringify([...traffic.statuses])})`)

  const failed = r.checks.filter((c) => c.verdict === 'fail')
  t.equal(failed.length, 2, 'rolled back at maxFailedChecks (2)')
  t.equal(r.failedChecks, 2)
  for (const c of failed) {
    // the built-in figures: no failure on either side; nothing but the metric blamed (a check of a loaded
    // machine may have seen fewer than minRequests: that note is the only other reason allowed)
    t.ok(c.canary.requests > 0, `the canary served users (${c.canary.requests})`)
    t.equal(c.canary.successRate, 100, 'canary success rate 100 %')
    t.equal(c.canary.failures, 0)
    t.equal(c.stable.successRate, 100, 'stable success rate 100 %')
    t.ok(c.reasons[0]?.startsWith('metric order-success: '), `the metric is blamed first: ${JSON.stringify(c.reasons)}`)
    t.same(c.reasons.slice(1).filter((x) => !/fewer than minRequests/.test(x)), [], 'nothing else is blamed')
    const m = c.metrics?.find((x) => x.name === 'order-success')
    t.ok(m !== undefined, 'the check record carries the metric')
    t.equal(m?.verdict, 'fail')
    t.ok(typeof m?.canary === 'number' && m.canary >= 0.87 && m.canary <= 0.9, `canary value ≈ 0.9 (${String(m?.canary)})`)
    t.equal(m?.baseline, 1, 'baseline (stable) value 1')
    t.ok(typeof m?.ratio === 'number' && m.ratio >= 1.111 && m.ratio < 1.15, `ratio ≈ 1.11 (${String(m?.ratio)})`)
    t.equal(m?.queries.canary, ORDER_SUCCESS.replaceAll('{{version}}', 'canary'), 'the rendered canary query')
    t.equal(m?.queries.baseline, ORDER_SUCCESS.replaceAll('{{version}}', 'stable'), 'the rendered baseline query')
  }

  t.ok(failed.some((c) => c.canary.requests >= 10 && c.reasons.length === 1), 'at least one failed check had enough requests: its built-in figures passed, the metric alone failed it')

  const text = await (await fetch(`${p.adminUrl}/metrics`)).text()
  const values = metricSamples(text, 'canaryd_rollout_metric_value').filter((s) => s.labels.route === 'web' && s.labels.metric === 'order-success')
  const byVersion = Object.fromEntries(values.map((s) => [s.labels.version, s.value]))
  t.same(Object.keys(byVersion).sort(), ['canary', 'stable'], 'canaryd_rollout_metric_value has both versions')
  t.ok(byVersion.canary! >= 0.87 && byVersion.canary! <= 0.9, `canary ${byVersion.canary}`)
  t.equal(byVersion.stable, 1)

  const status = await runCli(['rollout', 'status', 'web', '--admin', p.adminUrl])
  t.equal(status.code, 0, status.stderr)
  t.match(status.stdout, /^route web: rolled-back/)
  t.match(status.stdout, /\n {6}metric order-success: fail {2}canary 0\.(8[7-9]|9)\d* \| baseline 1 \(ratio 1\.1[1-4]\d*\) {2}\(canary 0\.\d+ vs stable 1/, `status prints the metric line:\n${status.stdout}`)
})

t.test('an empty result is inconclusive; with failOnNoData it fails the checks and rolls back', { skip }, async (t) => {
  const { prom, stable, canary } = await env()
  const p = await proxy(t, stable, canary)
  t.same((await prom.query(NO_SUCH.replaceAll('{{version}}', 'canary')) as { result: unknown[] }).result, [], 'the query gives an empty vector')
  const metric = { name: 'no-such', provider: { type: 'prometheus', address: prom.url, timeoutMs: 1000 }, query: NO_SUCH, thresholdRange: { max: 1 } }

  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan([metric], { maxFailedChecks: 1 }))).status, 201)
  const traffic = userTraffic(p.url, { clients: 4 })
  t.teardown(traffic.stop)
  await until('four checks', async () => (await rollout(p)).checks.length >= 4, 10_000, 50)
  let r = await rollout(p)
  t.equal(r.state, 'progressing', 'no rollback on an empty result')
  t.equal(r.failedChecks, 0)
  for (const c of r.checks) {
    t.equal(c.verdict, 'inconclusive')
    t.equal(c.metrics?.[0]?.verdict, 'inconclusive')
    t.match(c.metrics?.[0]?.reason, /empty result/, 'the reason says the result was empty')
    t.equal(c.metrics?.[0]?.queries.canary, NO_SUCH.replaceAll('{{version}}', 'canary'))
  }
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')).status, 200)

  const t0 = Date.now()
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan([{ ...metric, failOnNoData: true }], { maxFailedChecks: 2 }))).status, 201, 'a second rollout with failOnNoData')
  await until('the rollout ends', async () => (await rollout(p)).state !== 'progressing', 10_000, 50)
  await traffic.stop()
  r = await rollout(p)
  t.equal(r.state, 'rolled-back', 'failOnNoData: the empty result rolls back')
  t.ok(Date.now() - t0 < 5000, 'after two checks')
  t.match(r.reason, /metric no-such: empty result/)
  const failed = r.checks.filter((c) => c.verdict === 'fail')
  t.equal(failed.length, 2)
  for (const c of failed) {
    t.equal(c.metrics?.[0]?.verdict, 'fail')
    t.equal(c.metrics?.[0]?.canary, null)
    t.equal(c.canary.successRate, 100, 'the HTTP figures were fine')
  }
})

t.test('a Prometheus that stops mid-rollout: checks turn inconclusive, the weight holds, no rollback', { skip }, async (t) => {
  const { prom, stable, canary } = await env()
  const p = await proxy(t, stable, canary)
  await warm(p, 20)
  await until('Prometheus has scraped the canary', async () => await promValue(prom, 'sum(orders_total{version="canary"})') >= 20, 10_000, 100)
  const steps = Array.from({ length: 19 }, (_, i) => (i + 1) * 5)
  const body = { ...plan([{ name: 'order-success', provider: { type: 'prometheus', address: prom.url, timeoutMs: 500 }, query: ORDER_SUCCESS, thresholdRange: { min: 0.5 } }], { maxFailedChecks: 1 }), steps }
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', body)).status, 201)
  const traffic = userTraffic(p.url, { clients: 4 })
  t.teardown(traffic.stop)
  await until('two passing checks', async () => (await rollout(p)).checks.filter((c) => c.verdict === 'pass').length >= 2, 10_000, 20)
  await prom.stop()
  const stoppedAt = (await rollout(p)).checks.length
  await until('four checks after the stop', async () => (await rollout(p)).checks.length >= stoppedAt + 4, 10_000, 50)
  const r = await rollout(p)
  await traffic.stop()

  const before = r.checks.slice(0, stoppedAt)
  const passed = before.filter((c) => c.verdict === 'pass')
  t.ok(passed.length >= 2, `checks passed while Prometheus ran (${passed.length})`)
  for (const c of passed) {
    const m = c.metrics?.[0]
    t.ok(m?.verdict === 'pass' && typeof m.canary === 'number' && m.canary >= 0.87 && m.canary <= 0.9, `the metric passed with the canary's value (${JSON.stringify(m)})`)
  }
  const after = r.checks.slice(stoppedAt + 1)
  t.ok(after.length >= 3, `checks after the stop (${after.length})`)
  for (const c of after) {
    t.equal(c.verdict, 'inconclusive', 'inconclusive after the stop')
    t.equal(c.metrics?.[0]?.verdict, 'inconclusive')
    t.match(c.metrics?.[0]?.reason, /Prometheus at http:\/\/127\.0\.0\.1:\d+ (is unreachable|timed out|answered 503)/, 'the reason says Prometheus is away')
  }
  t.equal(r.state, 'progressing', 'no rollback')
  t.equal(r.failedChecks, 0)
  const held = after[0]!.weight
  t.ok(after.every((c) => c.weight === held), `the weight holds at ${held} %`)
  t.equal(r.weight, held)
  t.ok(held > 5 && held < 100, 'it had advanced while Prometheus answered')
})
