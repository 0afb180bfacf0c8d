import t from 'tap'
import { ManualClock } from '../../src/rollout/clock.js'
import { RolloutController, weightsFor, type SubscribeEjection, type SubscribeFinish } from '../../src/rollout/controller.js'
import { ISSUE_PLAN, feed, memoryHost, memoryNotifier, rng, startHarness, type Harness, type VersionModel } from './sim.js'

const GOOD: VersionModel = { errorRate: 0.002, medianMs: 50, sigma: 0.3 }
const PLAN = { ...ISSUE_PLAN, intervalMs: 1000 }

/** One interval: fixed synthetic samples for both sides, then the controller's own timer fires. */
async function interval (h: Harness, canary: VersionModel, random: () => number, n = { canary: 400, stable: 4000 }): Promise<void> {
  feed(h.controller.windows.canary, n.canary, canary, random)
  feed(h.controller.windows.stable, n.stable, GOOD, random)
  await h.clock.advance(PLAN.intervalMs)
}

t.test('healthy canary is promoted through every step', async (t) => {
  const h = await startHarness(PLAN)
  const random = rng(1)
  t.same(h.applied[0]!.weights, { stable: 99, canary: 1 })
  for (let i = 0; i < 5; i++) await interval(h, GOOD, random)
  t.equal(h.controller.state, 'promoted')
  t.same(h.applied.map((a) => a.weights.canary), [1, 5, 10, 25, 50, 100], 'every step, then 100')
  t.same(h.applied.at(-1)!.weights, { stable: 0, canary: 100 })
  t.same(h.events, ['started', 'step', 'step', 'step', 'step', 'promoted'])
  t.equal(h.persisted.at(-1)!.state, 'promoted', 'final state persisted')
  t.equal(h.clock.pending, 0, 'no timer left after promotion')
  t.ok(h.controller.record.checks.every((c) => c.verdict === 'pass'))
})

t.test('manual promotion holds at the last step, then promote finishes', async (t) => {
  const h = await startHarness({ ...PLAN, promotion: 'manual' })
  const random = rng(2)
  for (let i = 0; i < 8; i++) await interval(h, GOOD, random)
  t.equal(h.controller.state, 'awaiting-promotion')
  t.equal(h.controller.record.weight, 50, 'held at the last step below 100')
  t.equal(h.applied.at(-1)!.weights.canary, 50)
  const { held, record } = await h.controller.promote()
  t.equal(held, false)
  t.equal(record.state, 'promoted')
  t.same(h.applied.at(-1)!.weights, { stable: 0, canary: 100 })
  await t.rejects(h.controller.pause(), { code: 'CANARYD_ERR_ROLLOUT_CONFLICT' }, 'a promoted rollout cannot be paused')
})

t.test('confirm-promotion gate: a non-2xx answer holds the rollout until it says yes', async (t) => {
  let allow = false
  const h = await startHarness({ ...PLAN, webhooks: [{ type: 'confirm-promotion', url: 'http://127.0.0.1:9/gate' }] }, { gate: () => allow })
  const random = rng(3)
  for (let i = 0; i < 7; i++) await interval(h, GOOD, random)
  t.equal(h.controller.state, 'progressing', 'held by the gate')
  t.equal(h.controller.record.weight, 50)
  t.match(h.controller.record.reason, /held by confirm-promotion gate/)
  allow = true
  await interval(h, GOOD, random)
  t.equal(h.controller.state, 'promoted')
})

t.test('canary with 5 % more 5xx is rolled back within maxFailedChecks intervals', async (t) => {
  const h = await startHarness(PLAN)
  const random = rng(4)
  const bad = { ...GOOD, errorRate: GOOD.errorRate + 0.05 }
  await interval(h, bad, random)
  await interval(h, bad, random)
  t.equal(h.controller.state, 'progressing', 'two failed checks: not yet')
  t.equal(h.controller.record.failedChecks, 2)
  await interval(h, bad, random)
  t.equal(h.controller.state, 'rolled-back', 'third failed check: rolled back')
  t.same(h.applied.at(-1)!.weights, { stable: 100, canary: 0 })
  t.match(h.controller.record.reason, /3 failed checks.*error rate/)
  t.equal(h.controller.record.checks.length, 3)
  t.ok(h.controller.record.checks.every((c) => c.verdict === 'fail' && c.errorTest !== undefined && c.errorTest.p < 0.01))
  t.same(h.events, ['started', 'check-failed', 'check-failed', 'rolled-back'])
  t.equal(h.persisted.at(-1)!.state, 'rolled-back')
})

t.test('canary three times slower is rolled back by latency', async (t) => {
  const h = await startHarness({ ...PLAN, analysis: { ...PLAN.analysis, latencyP99Ms: undefined, successRate: undefined } })
  const random = rng(5)
  for (let i = 0; i < 3; i++) await interval(h, { ...GOOD, medianMs: GOOD.medianMs * 3 }, random)
  t.equal(h.controller.state, 'rolled-back')
  const c = h.controller.record.checks[0]!
  t.ok(c.latencyTest !== undefined && c.latencyTest.p < 0.01, 'Mann-Whitney significant')
  t.ok(c.latencyTest!.p99Ratio! > 1.5, 'p99 ratio above the allowed effect')
  t.match(c.reasons.join(), /Mann-Whitney/)
})

t.test('fewer than minRequests canary requests: inconclusive, never failed', async (t) => {
  const h = await startHarness(PLAN)
  const random = rng(6)
  const bad = { ...GOOD, errorRate: 0.5 }
  for (let i = 0; i < 5; i++) await interval(h, bad, random, { canary: 30, stable: 3000 })
  t.equal(h.controller.state, 'progressing')
  t.equal(h.controller.record.failedChecks, 0)
  t.same(h.controller.record.checks.map((c) => c.verdict), ['inconclusive', 'inconclusive', 'inconclusive', 'inconclusive', 'inconclusive'])
  // windows accumulate across inconclusive checks: 7 × 30 = 210 ≥ 200 → judged
  await interval(h, bad, random, { canary: 30, stable: 3000 })
  await interval(h, bad, random, { canary: 30, stable: 3000 })
  t.equal(h.controller.record.checks.at(-1)!.verdict, 'fail')
  t.equal(h.controller.record.checks.at(-1)!.canary.requests, 210)
})

t.test('pause, resume, abort', async (t) => {
  const h = await startHarness(PLAN)
  const random = rng(17)
  await interval(h, GOOD, random)
  t.equal(h.controller.record.weight, 5)
  await h.controller.pause()
  t.equal(h.controller.state, 'paused')
  t.equal(h.clock.pending, 0, 'no check while paused')
  await interval(h, GOOD, random)
  await interval(h, GOOD, random)
  t.equal(h.controller.record.weight, 5, 'weight held while paused')
  await t.rejects(h.controller.resume().then(async () => await h.controller.resume()), { code: 'CANARYD_ERR_ROLLOUT_CONFLICT' }, 'resume twice: 409')
  t.equal(h.controller.state, 'progressing')
  t.equal(h.controller.windows.canary.requests, 0, 'traffic seen while paused is not judged')
  await interval(h, GOOD, random)
  t.equal(h.controller.record.weight, 10, 'progress continues after resume')
  const rec = await h.controller.abort()
  t.equal(rec.state, 'aborted')
  t.same(h.applied.at(-1)!.weights, { stable: 100, canary: 0 })
  t.equal(h.clock.pending, 0)
  await t.rejects(h.controller.abort(), { code: 'CANARYD_ERR_ROLLOUT_CONFLICT' })
  t.same(h.events, ['started', 'step', 'paused', 'resumed', 'step', 'aborted'])
})

t.test('restart in the middle of a rollout resumes at the same step; a rollback is never forgotten', async (t) => {
  const h = await startHarness(PLAN)
  const random = rng(8)
  await interval(h, GOOD, random)
  await interval(h, GOOD, random)
  await interval(h, { ...GOOD, errorRate: 0.2 }, random)
  h.controller.close() // the process stops
  const saved = h.persisted.at(-1)!
  t.equal(saved.weight, 10)
  t.equal(saved.failedChecks, 1)
  const clock = new ManualClock()
  const applied: Harness['applied'] = []
  const persisted: typeof h.persisted = []
  const c = RolloutController.restore(saved, { host: memoryHost(applied, persisted), clock, notifier: memoryNotifier([]) })
  t.equal(c.state, 'progressing')
  t.equal(c.record.stepIndex, 2, 'same step (3/5), not step 1')
  t.equal(c.record.failedChecks, 1, 'failed checks remembered')
  feed(c.windows.canary, 400, GOOD, random)
  feed(c.windows.stable, 4000, GOOD, random)
  await clock.advance(PLAN.intervalMs)
  t.same(applied.map((a) => a.weights.canary), [25], 'next step after the restart is 25')
  await c.abort()
  // a final record restored stays final: no timer, no weight change
  const again = RolloutController.restore(persisted.at(-1)!, { host: memoryHost(applied, persisted), clock, notifier: memoryNotifier([]) })
  t.equal(again.state, 'aborted')
  t.equal(clock.pending, 0)
  t.equal(again.active, false)
})

t.test('a failed save changes nothing', async (t) => {
  const h = await startHarness(PLAN)
  const c = h.controller
  const random = rng(9)
  const failing = RolloutController.restore(c.record, {
    host: { applyWeights () { throw new Error('disk full') }, persist () { throw new Error('disk full') } },
    clock: new ManualClock()
  })
  c.close()
  feed(failing.windows.canary, 400, GOOD, random)
  feed(failing.windows.stable, 4000, GOOD, random)
  await t.rejects(failing.tick(), /disk full/)
  t.equal(failing.record.stepIndex, 0)
  t.equal(failing.record.checks.length, 0)
  await t.rejects(failing.pause(), /disk full/)
  t.equal(failing.state, 'progressing')
  failing.close()
})

t.test('weightsFor keeps other versions at 0 and 100 − w exact', async (t) => {
  const rec = { plan: { canary: 'b' } as never, stable: 'a', versions: ['a', 'b', 'c'] }
  t.same(weightsFor(rec, 0.1), { a: 99.9, b: 0.1, c: 0 })
  t.same(weightsFor(rec, 33.3333), { a: 66.6667, b: 33.3333, c: 0 })
})

/** Stands in for the metrics' per-version listeners (onFinish / onEjected): who listens, and a way to fire them. */
function listenerBus (): { deps: { subscribe: SubscribeFinish; subscribeEjection: SubscribeEjection }; finish: (version: string, status: number, n: number) => void; eject: (version: string) => void; listening: () => number } {
  const finish = new Map<string, Set<(s: number, sec: number, f: boolean) => void>>()
  const eject = new Map<string, Set<() => void>>()
  function add<L> (m: Map<string, Set<L>>, key: string, l: L): () => void {
    const set = m.get(key) ?? new Set<L>()
    m.set(key, set)
    set.add(l)
    return () => { set.delete(l) }
  }
  return {
    deps: {
      subscribe: (route, version, l) => add(finish, `${route}/${version}`, l),
      subscribeEjection: (route, version, l) => add(eject, `${route}/${version}`, l)
    },
    finish (version, status, n) { for (let i = 0; i < n; i++) for (const l of finish.get(`web/${version}`) ?? []) l(status, 0.02, false) },
    eject (version) { for (const l of eject.get(`web/${version}`) ?? []) l() },
    listening: () => [...finish.values(), ...eject.values()].reduce((n, s) => n + s.size, 0)
  }
}

t.test('an ejected canary fails its checks below minRequests and is rolled back within maxFailedChecks intervals', async (t) => {
  const bus = listenerBus()
  const h = await startHarness(PLAN, { deps: bus.deps })
  t.equal(bus.listening(), 4, 'finish and ejection listeners of canary and stable')
  // interval 1: the canary fails 5 requests in a row, outlier detection ejects it; stable serves everyone
  bus.finish('canary', 500, 5)
  bus.eject('canary')
  bus.finish('stable', 200, 4000)
  await h.clock.advance(PLAN.intervalMs)
  const first = h.controller.record.checks.at(-1)!
  t.equal(first.verdict, 'fail', '5 canary requests (< minRequests 200) but ejected: failed, not inconclusive')
  t.equal(first.reasons[0], 'canary was ejected 1 time by outlier detection (consecutive failures or a failed health check)')
  t.match(first.canary, { requests: 5, failures: 5, ejections: 1, stillEjected: true })
  // intervals 2 and 3: still ejected, no canary traffic at all
  bus.finish('stable', 200, 4000)
  await h.clock.advance(PLAN.intervalMs)
  t.equal(h.controller.record.checks.at(-1)!.verdict, 'fail')
  t.match(h.controller.record.checks.at(-1)!.reasons[0], /canary is still ejected/)
  t.equal(h.controller.state, 'progressing', 'two failed checks: not yet')
  bus.finish('stable', 200, 4000)
  await h.clock.advance(PLAN.intervalMs)
  t.equal(h.controller.state, 'rolled-back', `rolled back after ${PLAN.analysis.maxFailedChecks} intervals`)
  t.same(h.applied.at(-1)!.weights, { stable: 100, canary: 0 })
  t.match(h.controller.record.reason, /^3 failed checks \(maxFailedChecks 3\); last: canary is still ejected/)
  t.same(h.controller.record.checks.map((c) => c.verdict), ['fail', 'fail', 'fail'])
  t.same(h.events, ['started', 'check-failed', 'check-failed', 'rolled-back'])
  t.equal(bus.listening(), 0, 'every listener removed when the rollout ends')
})

t.test('a canary back from its ejection is judged by statistics again; stable ejections never fail it', async (t) => {
  const bus = listenerBus()
  const h = await startHarness(PLAN, { deps: bus.deps })
  bus.finish('canary', 500, 5)
  bus.eject('canary')
  bus.finish('stable', 200, 4000)
  await h.clock.advance(PLAN.intervalMs)
  t.equal(h.controller.record.failedChecks, 1)
  // the ejection ended and the canary answers well again: the first good answer clears it
  bus.finish('canary', 200, 400)
  bus.finish('stable', 200, 4000)
  await h.clock.advance(PLAN.intervalMs)
  t.equal(h.controller.record.checks.at(-1)!.verdict, 'pass')
  t.equal(h.controller.record.weight, 5, 'next step')
  // the stable version is ejected: recorded in the figures, not the canary's fault
  bus.eject('stable')
  bus.finish('canary', 200, 400)
  bus.finish('stable', 200, 4000)
  await h.clock.advance(PLAN.intervalMs)
  const c = h.controller.record.checks.at(-1)!
  t.equal(c.verdict, 'pass')
  t.equal(c.stable.ejections, 1)
  t.equal(c.canary.ejections, 0)
  t.equal(h.controller.record.failedChecks, 1)
  t.equal(h.controller.record.weight, 10)
  await h.controller.abort()
  t.equal(bus.listening(), 0)
})
