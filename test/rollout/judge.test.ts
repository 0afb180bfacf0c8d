import t from 'tap'
import { judgeCheck } from '../../src/rollout/judge.js'
import { validatePlan } from '../../src/config/plan.js'
import { SampleWindow, type WindowSnapshot } from '../../src/rollout/window.js'

const analysis = validatePlan({ canary: 'c', steps: [10], analysis: { minRequests: 50, successRate: { min: 99 } } }).analysis
const lat = Array.from({ length: 200 }, (_, i) => 10 + (i % 40))

function side (requests: number, failures: number, extra: Partial<WindowSnapshot> = {}): WindowSnapshot {
  return { requests, failures, ejections: 0, stillEjected: false, latenciesMs: lat.slice(0, requests - failures), ...extra }
}

t.test('a canary ejected during the window fails the check below minRequests', async (t) => {
  const without = judgeCheck(side(5, 5), side(200, 0), analysis)
  t.equal(without.verdict, 'inconclusive', 'five failures alone are too few to judge')
  const r = judgeCheck(side(5, 5, { ejections: 1, stillEjected: true }), side(200, 0), analysis)
  t.equal(r.verdict, 'fail')
  t.equal(r.reasons[0], 'canary was ejected 1 time by outlier detection (consecutive failures or a failed health check)')
  t.match(r.reasons[1], /canary had 5 requests, fewer than minRequests 50/, 'says the statistics were not judged')
  t.equal(r.canary.ejections, 1)
  t.equal(r.canary.stillEjected, true)
  t.match(judgeCheck(side(10, 10, { ejections: 2 }), side(200, 0), analysis).reasons[0], /ejected 2 times/)
})

t.test('a canary still out from an earlier ejection fails with no requests at all', async (t) => {
  const r = judgeCheck(side(0, 0, { stillEjected: true }), side(200, 0), analysis)
  t.equal(r.verdict, 'fail')
  t.match(r.reasons[0], /canary is still ejected by outlier detection/)
  t.equal(r.canary.ejections, 0)
})

t.test('with enough requests the ejection reason comes with the statistical ones', async (t) => {
  const r = judgeCheck(side(100, 100, { ejections: 1, stillEjected: true }), side(200, 0), analysis)
  t.equal(r.verdict, 'fail')
  t.match(r.reasons[0], /canary was ejected 1 time/)
  t.ok(r.reasons.some((x) => /success rate 0% is below 99%/.test(x)), 'absolute threshold still judged')
  t.ok(r.errorTest !== undefined, 'baseline comparison still computed')
})

t.test('ejections of the stable version are recorded but never fail the canary', async (t) => {
  const r = judgeCheck(side(100, 0), side(200, 0, { ejections: 3, stillEjected: true }), analysis)
  t.equal(r.verdict, 'pass')
  t.equal(r.stable.ejections, 3)
  t.equal(r.stable.stillEjected, true)
  t.equal(r.canary.ejections, 0)
  const few = judgeCheck(side(5, 0), side(200, 0, { ejections: 1 }), analysis)
  t.equal(few.verdict, 'inconclusive', 'a stable ejection does not make a thin canary window conclusive')
})

t.test('window: ejections are counted per window, the ejected state lasts until a good answer', async (t) => {
  const w = new SampleWindow(16)
  w.record(500, 0.001, false)
  w.recordEjection()
  t.match(w.peek(), { requests: 1, failures: 1, ejections: 1, stillEjected: true })
  w.record(502, 0.001, true) // in flight at the ejection: does not end it
  w.record(499, 0.5, false) // the client left: says nothing
  t.equal(w.peek().stillEjected, true)
  const taken = w.take()
  t.match(taken, { ejections: 1, stillEjected: true })
  t.match(w.peek(), { requests: 0, ejections: 0, stillEjected: true }, 'a new window starts with the version still out')
  w.record(200, 0.01, false)
  t.match(w.peek(), { requests: 1, ejections: 0, stillEjected: false }, 'a good answer means it is back')
})
