import t from 'tap'
import { ISSUE_PLAN, simulateRollout, type VersionModel } from './sim.js'

// Stable and an equal canary: 0.5 % errors, log-normal latency with median
// 80 ms and sigma 0.6 (p99 ≈ 4× median), shared load drift between intervals.
const BASE: VersionModel = { errorRate: 0.005, medianMs: 80, sigma: 0.6 }
const ROLLOUTS = 200

function noThresholds (judge: string): unknown {
  const { successRate: _s, latencyP99Ms: _l, ...analysis } = ISSUE_PLAN.analysis
  return { ...ISSUE_PLAN, analysis: { ...analysis, baseline: { ...analysis.baseline, judge } } }
}

async function run (plan: unknown, canary: VersionModel, n: number, seed0: number): Promise<{ rolledBack: number; promoted: number; meanConclusive: number }> {
  let rolledBack = 0
  let promoted = 0
  let conclusive = 0
  for (let i = 0; i < n; i++) {
    const o = await simulateRollout(plan, BASE, canary, seed0 + i)
    if (o.state === 'rolled-back') {
      rolledBack++
      conclusive += o.conclusive
    }
    if (o.state === 'promoted') promoted++
  }
  return { rolledBack, promoted, meanConclusive: rolledBack === 0 ? 0 : conclusive / rolledBack }
}

t.test(`equal but noisy canary: false rollback rate over ${ROLLOUTS} rollouts is below 2 %`, async (t) => {
  const r = await run(ISSUE_PLAN, BASE, ROLLOUTS, 1000)
  const rate = r.rolledBack / ROLLOUTS
  t.comment(`issue plan (thresholds + mann-whitney): ${r.rolledBack}/${ROLLOUTS} rolled back = ${(100 * rate).toFixed(1)} %`)
  t.ok(rate < 0.02, `false rollback rate ${(100 * rate).toFixed(1)} % < 2 %`)
  t.equal(r.promoted + r.rolledBack, ROLLOUTS, 'every rollout ended (promoted or rolled back)')
})

t.test('the statistical judge alone almost never rolls back an equal canary', async (t) => {
  const r = await run(noThresholds('mann-whitney'), BASE, ROLLOUTS, 5000)
  t.comment(`mann-whitney judge, no absolute thresholds: ${r.rolledBack}/${ROLLOUTS} rolled back`)
  t.ok(r.rolledBack / ROLLOUTS < 0.02)
})

t.test('a real regression is caught every time, in maxFailedChecks conclusive checks', async (t) => {
  const n = 50
  const errors = await run(noThresholds('mann-whitney'), { ...BASE, errorRate: BASE.errorRate + 0.05 }, n, 9000)
  t.comment(`+5 points of 5xx: ${errors.rolledBack}/${n} rolled back, mean ${errors.meanConclusive.toFixed(2)} conclusive checks`)
  t.equal(errors.rolledBack, n)
  t.equal(errors.meanConclusive, 3, 'every conclusive check failed: rollback at the 3rd')
  const slow = await run(noThresholds('mann-whitney'), { ...BASE, medianMs: BASE.medianMs * 3 }, n, 9500)
  t.comment(`3× slower: ${slow.rolledBack}/${n} rolled back, mean ${slow.meanConclusive.toFixed(2)} conclusive checks`)
  t.equal(slow.rolledBack, n)
  t.equal(slow.meanConclusive, 3)
})
