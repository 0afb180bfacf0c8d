import t from 'tap'
import { mannWhitneyTest, normalUpperTail, quantile, twoProportionTest } from '../../src/rollout/stats.js'
import { judgeCheck } from '../../src/rollout/judge.js'
import { validatePlan } from '../../src/config/plan.js'

// reference values computed with scipy 1.17 (norm.sf, mannwhitneyu asymptotic + continuity)
t.test('normal upper tail matches scipy norm.sf', async (t) => {
  for (const [z, p] of [[1.6448536, 0.05], [2.3263479, 0.01], [-1, 0.8413447460685429], [0, 0.5]] as const) {
    t.ok(Math.abs(normalUpperTail(z) - p) < 1e-6, `sf(${z}) ≈ ${p}`)
  }
})

t.test('Mann-Whitney U with ties matches scipy (alternative=greater)', async (t) => {
  const r = mannWhitneyTest([19, 22, 16, 29, 24, 24, 30], [20, 11, 17, 12, 24, 16])
  t.equal(r.u, 34.5)
  t.ok(Math.abs(r.p - 0.030739764386779955) < 1e-5, `p=${r.p}`)
  t.equal(mannWhitneyTest([1, 2, 3], [4, 5, 6]).u, 0, 'canary entirely faster: U = 0')
  t.ok(mannWhitneyTest([1, 2, 3], [4, 5, 6]).p > 0.9)
  t.equal(mannWhitneyTest([5, 5, 5], [5, 5, 5]).p, 1, 'all tied: no evidence')
})

t.test('two-proportion test (Yates) matches the formula computed with scipy', async (t) => {
  const r = twoProportionTest(9, 500, 50, 5000)
  t.ok(Math.abs(r.z - 1.428022568343681) < 1e-9)
  t.ok(Math.abs(r.p - 0.0766426813836234) < 1e-6)
  t.equal(twoProportionTest(0, 500, 0, 5000).p, 1, 'no failures anywhere')
  t.ok(twoProportionTest(1, 200, 0, 2000).p > 0.01, 'one stray error is not significant')
  t.ok(twoProportionTest(30, 500, 50, 5000).p < 1e-10)
})

t.test('quantile is type 7 (numpy default)', async (t) => {
  t.ok(Math.abs(quantile([1, 2, 3, 4, 10], 0.99) - 9.76) < 1e-9)
  t.equal(quantile([5, 1, 3], 0.5), 3)
  t.ok(Number.isNaN(quantile([], 0.5)))
})

t.test('judge: absolute thresholds and inconclusive', async (t) => {
  const a = validatePlan({ canary: 'c', steps: [10], analysis: { minRequests: 10, successRate: { min: 99 }, latencyP99Ms: { max: 100 } } }).analysis
  const lat = Array.from({ length: 50 }, (_, i) => 10 + i)
  t.equal(judgeCheck({ requests: 5, failures: 5, ejections: 0, stillEjected: false, latenciesMs: [] }, { requests: 100, failures: 0, ejections: 0, stillEjected: false, latenciesMs: lat }, a).verdict, 'inconclusive')
  const slow = judgeCheck({ requests: 50, failures: 0, ejections: 0, stillEjected: false, latenciesMs: lat.map((x) => x + 100) }, { requests: 50, failures: 0, ejections: 0, stillEjected: false, latenciesMs: lat }, a)
  t.equal(slow.verdict, 'fail')
  t.match(slow.reasons.join(), /above 100 ms/)
  const same = judgeCheck({ requests: 50, failures: 0, ejections: 0, stillEjected: false, latenciesMs: lat }, { requests: 50, failures: 0, ejections: 0, stillEjected: false, latenciesMs: lat }, a)
  t.equal(same.verdict, 'pass')
})
