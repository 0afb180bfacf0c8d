/**
 * The controller's side of analysis beyond its own windows: provider
 * metrics folded into checks (with an injected runner: the providers
 * themselves are tested against a real Prometheus in providers.test.ts and
 * test/integration/analysis-*.test.ts), the sequential judge's looks, the
 * guidance of an inconclusive check, synthetic requests kept out of the
 * windows, and the load test started and stopped with the rollout.
 */
import t from 'tap'
import { ManualClock } from '../../src/rollout/clock.js'
import { lookEveryMs, RolloutController, type ControllerDeps, type LoadHandle, type MetricRunner, type RolloutRecord, type SubscribeFinish } from '../../src/rollout/controller.js'
import { validatePlan, type LoadTestSpec } from '../../src/config/plan.js'
import type { MetricResult } from '../../src/rollout/analysis.js'
import { feed, memoryHost, memoryNotifier, rng, type VersionModel } from './sim.js'

const GOOD: VersionModel = { errorRate: 0.002, medianMs: 50, sigma: 0.3 }
const BAD: VersionModel = { errorRate: 0.08, medianMs: 50, sigma: 0.3 }

const BASE = { canary: 'canary', steps: [10, 50], intervalMs: 1000, analysis: { minRequests: 100, maxFailedChecks: 2 } }

interface H {
  clock: ManualClock
  c: RolloutController
  metricCalls: Array<{ step: number; weight: number }>
  observed: Array<[string, string, number | null]>
  loads: Array<{ versions: readonly string[]; stopped: boolean }>
}

async function start (raw: unknown, opts: { results?: (n: number) => MetricResult[]; subscribe?: SubscribeFinish; slowMetrics?: boolean; gate?: () => boolean; loadFails?: boolean } = {}): Promise<H> {
  const clock = new ManualClock()
  const metricCalls: H['metricCalls'] = []
  const observed: H['observed'] = []
  const loads: H['loads'] = []
  const runMetrics: MetricRunner = async (_m, ctx, { signal }) => {
    metricCalls.push({ step: ctx.step, weight: ctx.weight })
    if (opts.slowMetrics === true) await new Promise((resolve) => { signal.addEventListener('abort', resolve, { once: true }) })
    return opts.results?.(metricCalls.length) ?? []
  }
  const deps: ControllerDeps = {
    host: memoryHost([], [] as RolloutRecord[]),
    clock,
    notifier: memoryNotifier([], opts.gate),
    reservoir: 512,
    runMetrics,
    observer: { update () {}, check () {}, metric (_r, m, v, value) { observed.push([m, v, value]) } },
    loadTest: (_route, _spec: LoadTestSpec, versions, failed) => {
      const l = { versions, stopped: false }
      loads.push(l)
      const handle: LoadHandle = { stop: async () => { l.stopped = true } }
      // a start that fails after the handle was returned (a secret file missing for a moment)
      if (opts.loadFails === true) setImmediate(failed)
      return handle
    }
  }
  if (opts.subscribe !== undefined) deps.subscribe = opts.subscribe
  const plan = validatePlan(raw, ['stable', 'canary'], { override: true })
  const c = await RolloutController.start('web', plan, 'stable', ['stable', 'canary'], deps)
  return { clock, c, metricCalls, observed, loads }
}

function metric (name: string, verdict: MetricResult['verdict'], canary: number | null, extra: Partial<MetricResult> = {}): MetricResult {
  return { name, verdict, canary, queries: { canary: 'q{version="canary"}' }, durationMs: 1, ...extra }
}

/** `n` looks of one second each, the windows fed `canary` requests drawn from `model` and `stable` good ones before each. */
async function looks (h: H, n: number, canary: number, model: VersionModel, stable: number, random: () => number): Promise<void> {
  for (let i = 0; i < n; i++) {
    feed(h.c.windows.canary, canary, model, random)
    feed(h.c.windows.stable, stable, GOOD, random)
    await h.clock.advance(1000)
  }
}

const ORDERS = { name: 'orders', provider: { type: 'prometheus', address: 'http://127.0.0.1:9' }, query: 'x{version="{{version}}"}', compare: { maxRatio: 1.05 } }

t.test('a failing provider metric fails checks the built-in figures pass, and rolls back', async (t) => {
  const h = await start({ ...BASE, analysis: { ...BASE.analysis, metrics: [ORDERS] } }, {
    results: () => [metric('orders', 'fail', 0.88, { baseline: 0.98, ratio: 1.1136, reason: 'canary 0.88 vs stable 0.98 (ratio 1.1136 > 1.05, lower is worse)' })]
  })
  const random = rng(7)
  await looks(h, 2, 300, GOOD, 3000, random)
  const r = h.c.record
  t.equal(r.state, 'rolled-back')
  t.equal(r.checks.length, 2)
  t.ok(r.checks.every((c) => c.canary.successRate > 98 && c.verdict === 'fail'), 'the HTTP figures were fine; the metric failed the checks')
  t.match(r.checks[0]!.reasons[0], /^metric orders: canary 0\.88 vs stable 0\.98/)
  t.same(r.checks[0]!.metrics?.map((m) => m.name), ['orders'])
  t.match(r.reason, /metric orders/)
  t.same(h.metricCalls[0], { step: 1, weight: 10 }, 'the template context has the step and weight')
  t.same(h.observed.slice(0, 2), [['orders', 'canary', 0.88], ['orders', 'stable', 0.98]], 'canaryd_rollout_metric_value gets both versions')
})

t.test('an inconclusive provider metric holds the step (no rollback, no advance); guidance says what is missing', async (t) => {
  const h = await start({ ...BASE, analysis: { ...BASE.analysis, metrics: [ORDERS] } }, {
    results: () => [metric('orders', 'inconclusive', null, { reason: 'Prometheus at http://127.0.0.1:9 could not be reached' })]
  })
  const random = rng(8)
  await looks(h, 4, 300, GOOD, 3000, random)
  const r = h.c.record
  t.equal(r.state, 'progressing')
  t.equal(r.weight, 10, 'still at the first step')
  t.equal(r.failedChecks, 0)
  t.ok(r.checks.every((c) => c.verdict === 'inconclusive'))
  t.match(r.checks.at(-1)!.reasons.join(' '), /metric orders: Prometheus at http:\/\/127\.0\.0\.1:9 could not be reached/)
  const g = r.checks.at(-1)!.guidance
  t.ok(g !== undefined, 'an inconclusive check carries guidance')
  t.ok(g!.neededRequests >= 100)
  t.equal(g!.canaryRps !== null && g!.canaryRps > 0, true, 'the canary rate is measured over the accumulating window')
})

t.test('few requests: guidance counts what is missing and when to expect it', async (t) => {
  const h = await start(BASE)
  const random = rng(9)
  feed(h.c.windows.canary, 40, GOOD, random)
  feed(h.c.windows.stable, 400, GOOD, random)
  await h.clock.advance(1000)
  const c = h.c.record.checks[0]!
  t.equal(c.verdict, 'inconclusive')
  t.ok(c.guidance !== undefined)
  t.ok(c.guidance!.moreRequests >= 60, `at least minRequests - 40 more (${c.guidance!.moreRequests})`)
  t.equal(c.guidance!.canaryRps, 40, '40 canary requests in one second')
  t.ok(c.guidance!.expectedMs !== null && Math.abs(c.guidance!.expectedMs - 1000 * c.guidance!.moreRequests / 40) < 2)
})

t.test('the sequential judge looks every tenth of an interval and rolls a clear regression back before one interval has passed', async (t) => {
  const plan = { ...BASE, intervalMs: 10_000, analysis: { ...BASE.analysis, maxFailedChecks: 1, baseline: { judge: 'sequential' } } }
  t.equal(lookEveryMs(validatePlan(plan)), 1000)
  t.equal(lookEveryMs(validatePlan({ ...plan, intervalMs: 500 })), 100, 'never below 100 ms')
  t.equal(lookEveryMs(validatePlan({ ...plan, intervalMs: 600_000 })), 5000, 'never above 5 s')
  t.equal(lookEveryMs(validatePlan(BASE)), 1000, 'the fixed judge looks once per interval')
  const h = await start(plan)
  const random = rng(10)
  let looks = 0
  while (h.c.active && looks < 10) {
    feed(h.c.windows.canary, 400, BAD, random)
    feed(h.c.windows.stable, 4000, GOOD, random)
    await h.clock.advance(1000)
    looks++
  }
  t.equal(h.c.state, 'rolled-back')
  t.ok(looks < 10, `rolled back after ${looks} looks (< one 10 s interval)`)
  t.equal(h.c.record.checks.length, 1, 'looks that decided nothing recorded nothing')
  t.equal(h.c.record.checks[0]!.sequential?.decided, 'fail')
})

t.test('the sequential judge records an undecided interval as inconclusive once per interval, not per look', async (t) => {
  const plan = { ...BASE, intervalMs: 10_000, analysis: { ...BASE.analysis, minRequests: 1_000_000, baseline: { judge: 'sequential' } } }
  const h = await start(plan)
  const random = rng(11)
  await looks(h, 25, 10, GOOD, 100, random)
  t.equal(h.c.record.checks.length, 2, 'two intervals, two records')
  t.ok(h.c.record.checks.every((c) => c.verdict === 'inconclusive' && c.guidance !== undefined))
})

t.test('synthetic requests stay out of the windows unless the plan includes them', async (t) => {
  for (const includeInAnalysis of [false, true]) {
    const listeners = new Map<string, (s: number, sec: number, f: boolean, syn: boolean) => void>()
    const subscribe: SubscribeFinish = (_route, version, l) => { listeners.set(version, l); return () => { listeners.delete(version) } }
    const h = await start({ ...BASE, analysis: { ...BASE.analysis, loadTest: { rps: 10, includeInAnalysis } } }, { subscribe })
    for (let i = 0; i < 10; i++) listeners.get('canary')!(200, 0.01, false, true)
    for (let i = 0; i < 3; i++) listeners.get('canary')!(200, 0.01, false, false)
    t.equal(h.c.windows.canary.peek().requests, includeInAnalysis ? 13 : 3, `includeInAnalysis ${includeInAnalysis}`)
    await h.c.abort()
  }
})

t.test('the load test runs while the rollout analyses: stopped at once by pause (even during a slow check), restarted by resume, stopped at the end', async (t) => {
  const h = await start({ ...BASE, analysis: { ...BASE.analysis, metrics: [ORDERS], loadTest: { rps: 10, versions: ['canary', 'stable'] } } }, { slowMetrics: true })
  t.equal(h.loads.length, 1)
  t.same(h.loads[0]!.versions, ['canary', 'stable'], 'roles resolved to version names')
  t.equal(h.loads[0]!.stopped, false)
  const random = rng(12)
  feed(h.c.windows.canary, 300, GOOD, random)
  feed(h.c.windows.stable, 3000, GOOD, random)
  // the check now waits on a provider that never answers: a pause must not wait for it
  const advancing = h.clock.advance(1000)
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(h.metricCalls.length, 1, 'the check is querying')
  const paused = h.c.pause()
  t.equal(h.loads[0]!.stopped, true, 'the load test stopped before the pause was even saved')
  await paused
  await advancing
  t.equal(h.c.state, 'paused')
  t.equal(h.c.record.checks.length, 0, 'the cancelled check recorded nothing')
  await h.c.resume()
  t.equal(h.loads.length, 2, 'resume starts a new load test')
  t.equal(h.loads[1]!.stopped, false)
  await h.c.abort()
  t.equal(h.loads[1]!.stopped, true, 'abort stops it')
  t.equal(h.loads.length, 2, 'and nothing restarts it')
})

t.test('a refused pause leaves the load test running', async (t) => {
  const h = await start({ ...BASE, analysis: { ...BASE.analysis, loadTest: { rps: 10 } } })
  await h.c.pause()
  t.equal(h.loads[0]!.stopped, true)
  await t.rejects(h.c.pause(), { code: 'CANARYD_ERR_ROLLOUT_CONFLICT' })
  t.equal(h.loads.length, 1, 'a second pause (409) starts nothing')
  await h.c.resume()
  t.equal(h.loads.length, 2)
  await t.rejects(h.c.resume(), { code: 'CANARYD_ERR_ROLLOUT_CONFLICT' })
  t.equal(h.loads[1]!.stopped, false, 'a refused resume stops nothing')
  await h.c.abort()
})

t.test('a load test whose start failed later is tried again an interval later, not at every look', async (t) => {
  const h = await start({ ...BASE, intervalMs: 10_000, analysis: { ...BASE.analysis, baseline: { judge: 'sequential' }, loadTest: { rps: 10 } } }, { loadFails: true })
  t.equal(h.loads.length, 1)
  await new Promise((resolve) => setImmediate(resolve))
  for (let i = 0; i < 9; i++) await h.clock.advance(1000)
  t.equal(h.loads.length, 1, 'no retry within the interval (9 looks)')
  await h.clock.advance(1000)
  await h.clock.advance(1000)
  t.equal(h.loads.length, 2, 'tried again once the interval passed')
  await h.c.abort()
})

t.test('sequential judge with a confirm-promotion gate: the gate is asked once per interval, not at every look', async (t) => {
  let asked = 0
  const h = await start({ ...BASE, steps: [50], intervalMs: 10_000, analysis: { ...BASE.analysis, baseline: { judge: 'sequential' } }, webhooks: [{ type: 'confirm-promotion', url: 'http://127.0.0.1:9/gate' }] }, { gate: () => { asked++; return false } })
  const random = rng(21)
  await looks(h, 20, 3000, GOOD, 3000, random)
  t.ok(asked >= 1 && asked <= 2, `asked ${asked} times in two intervals`)
  t.ok(h.c.record.checks.length <= 3, `${h.c.record.checks.length} checks recorded`)
  t.equal(h.c.state, 'progressing', 'held by the gate')
  await h.c.abort()
})

t.test('sequential judge, blue/green without a preview: the switch waits for the interval of stable\'s baseline', async (t) => {
  const h = await start({ canary: 'canary', strategy: 'blue-green', intervalMs: 10_000, analysis: { minRequests: 100, baseline: { judge: 'sequential' } } })
  const random = rng(22)
  await looks(h, 9, 3000, GOOD, 3000, random)
  t.equal(h.c.record.weight, 0, 'no switch before the interval ends, however clear the evidence')
  feed(h.c.windows.stable, 3000, GOOD, random)
  await h.clock.advance(1000)
  t.equal(h.c.record.weight, 100, 'switched at the interval\'s end')
  await h.c.abort()
})

t.test('a pause keeps the load test stopped until it is saved, whatever look runs meanwhile', async (t) => {
  const h = await start({ ...BASE, steps: [50], analysis: { ...BASE.analysis, loadTest: { rps: 10 } }, webhooks: [{ type: 'confirm-promotion', url: 'http://127.0.0.1:9/gate' }] }, { gate: () => true })
  const random = rng(23)
  feed(h.c.windows.canary, 300, GOOD, random)
  feed(h.c.windows.stable, 3000, GOOD, random)
  const paused = h.c.pause()
  t.equal(h.loads[0]!.stopped, true, 'stopped at once')
  // the timer's look runs while the pause is queued: it must not restart the load test
  await h.clock.advance(1000)
  await paused
  t.equal(h.c.state, 'paused')
  t.equal(h.loads.length, 1, 'nothing restarted it while the pause was pending')
  await h.c.abort()
})
