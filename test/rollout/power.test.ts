import t from 'tap'
import { decisionGuidance } from '../../src/rollout/power.js'
import { requiredSampleSize } from '../../src/rollout/stats.js'
import { validatePlan, type AnalysisSpec } from '../../src/config/plan.js'
import type { WindowSnapshot } from '../../src/rollout/window.js'

function analysis (minRequests: number, baseline: Record<string, unknown> = {}): AnalysisSpec {
  return validatePlan({ canary: 'c', steps: [10], analysis: { minRequests, baseline } }).analysis
}

function w (requests: number, failures: number): WindowSnapshot {
  return { requests, failures, ejections: 0, stillEjected: false, latenciesMs: [] }
}

t.test('guidance: the requests that detect maxErrorRateRatio × stable at 80 % power, and when', async (t) => {
  // 1 % canary: 100 canary requests vs 9900 stable ones (0.5 % errors) in 60 s, confidence 0.99, ratio 2
  const g = decisionGuidance(w(100, 0), w(9900, 50), analysis(200), 60_000)!
  const sized = requiredSampleSize(2 * 50 / 9900, 50 / 9900, 0.01, 0.8, 99)
  t.ok(sized > 2000 && sized < 3000, `sized ${sized}`)
  t.equal(g.neededRequests, sized)
  t.equal(g.moreRequests, sized - 100)
  t.equal(g.canaryRps, 1.667)
  t.equal(g.expectedMs, Math.ceil(1000 * (sized - 100) / (100 / 60)))
  t.equal(g.note, `minRequests 200 is below the ${sized} requests that detect a 2× error rate at 80 % power`)
})

t.test('guidance: minRequests above the power calculation needs no note', async (t) => {
  // a 10 % stable error rate and ratio 2: a regression to 20 % shows in a few hundred requests
  const g = decisionGuidance(w(150, 10), w(10_000, 1000), analysis(2000), 30_000)!
  t.equal(g.neededRequests, 2000)
  t.equal(g.moreRequests, 1850)
  t.equal(g.note, undefined)
  t.equal(g.canaryRps, 5)
  t.equal(g.expectedMs, 370_000)
})

t.test('guidance: no stable error sizes for 0.1 % (a rate floor), and the plan confidence matters', async (t) => {
  const g = decisionGuidance(w(100, 0), w(9900, 0), analysis(200), 60_000)!
  t.equal(g.neededRequests, requiredSampleSize(0.002, 0.001, 0.01, 0.8, 99))
  t.match(g.note, /detect a 2× error rate at 80 % power$/)
  const loose = decisionGuidance(w(100, 0), w(9900, 0), analysis(200, { confidence: 0.9 }), 60_000)!
  t.ok(loose.neededRequests < g.neededRequests)
  // a ratio of 1 tolerates nothing: sized for a 0.1-point regression instead
  const strict = decisionGuidance(w(100, 0), w(9900, 50), analysis(200, { maxErrorRateRatio: 1 }), 60_000)!
  t.match(strict.note, /detect a 1\.2× error rate/)
})

t.test('guidance: edge cases of time and traffic', async (t) => {
  const none = decisionGuidance(w(0, 0), w(1000, 5), analysis(200), 60_000)!
  t.equal(none.canaryRps, 0)
  t.equal(none.expectedMs, null, 'no canary traffic: no expected time')
  const instant = decisionGuidance(w(10, 0), w(1000, 5), analysis(200), 0)!
  t.equal(instant.canaryRps, null)
  t.equal(instant.expectedMs, null)
  const reached = decisionGuidance(w(50_000, 10), w(50_000, 10), analysis(200), 60_000)!
  t.equal(reached.moreRequests, 0)
  t.equal(reached.expectedMs, 0)
  const worst = decisionGuidance(w(100, 90), w(100, 90), analysis(50, { maxErrorRateRatio: 5 }), 1000)!
  t.ok(Number.isFinite(worst.neededRequests), 'a stable error rate near 100 % still sizes (the canary rate is capped below 1)')
})
