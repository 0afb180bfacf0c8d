import t from 'tap'
import { confidenceSequence, normalQuantile, requiredSampleSize, sequentialRadius, twoProportionTest } from '../../src/rollout/stats.js'
import { judgeSequential } from '../../src/rollout/sequential.js'
import { SampleWindow, type WindowSnapshot } from '../../src/rollout/window.js'
import { validatePlan, type AnalysisSpec } from '../../src/config/plan.js'
import { gaussian, rng } from './sim.js'

// reference values: scipy 1.17 norm.ppf
t.test('normalQuantile matches scipy norm.ppf (AS 241)', async (t) => {
  const cases: Array<[number, number]> = [
    [0.5, 0],
    [0.8, 0.8416212335729143],
    [0.975, 1.959963984540054],
    [0.99, 2.3263478740408408],
    [0.999, 3.090232306167813],
    [0.02, -2.053748910631823],
    [1e-10, -6.361340902404056],
    [1 - 1e-12, 7.0344869100478356]
  ]
  for (const [p, z] of cases) t.ok(Math.abs(normalQuantile(p) - z) < 1e-12 * Math.max(1, Math.abs(z)), `Φ⁻¹(${p}) = ${normalQuantile(p)} ≈ ${z}`)
  t.equal(normalQuantile(0), -Infinity)
  t.equal(normalQuantile(1), Infinity)
  t.ok(Number.isNaN(normalQuantile(1.5)))
  t.ok(Number.isNaN(normalQuantile(Number.NaN)))
})

t.test('the mixture boundary: the formula, shrinking with n, zero at zero variance', async (t) => {
  // by hand: V = 2.5e-5, τ = 0.02, α = 0.01
  const v = 2.5e-5
  const expected = Math.sqrt(2 * v * (v + 4e-4) / 4e-4 * (Math.log(100) + 0.5 * Math.log((v + 4e-4) / v)))
  t.ok(Math.abs(sequentialRadius(v, 0.02, 0.01) - expected) < 1e-15)
  t.ok(Math.abs(expected - 0.017885941) < 1e-8)
  let last = Infinity
  for (const n of [10, 100, 1000, 10_000, 100_000]) {
    const r = sequentialRadius(1 / n, 0.5, 0.01)
    t.ok(r < last, `n=${n}: radius ${r.toFixed(5)} shrinks`)
    last = r
  }
  // always-valid costs width: wider than the fixed-sample one-sided bound at the same n, by a factor that grows only like √ln n
  const fixed = normalQuantile(0.99) * Math.sqrt(1 / 1000)
  t.ok(sequentialRadius(1 / 1000, 0.5, 0.01) > fixed)
  t.ok(sequentialRadius(1 / 1000, 0.5, 0.01) < 2 * fixed)
  t.equal(sequentialRadius(0, 0.1, 0.01), 0)
  t.same(confidenceSequence(1, 0, 0.1, 0.01), { lower: 1, upper: 1, radius: 0 })
})

t.test('the confidence sequence covers the true difference at every look, with probability at least 1 − α', async (t) => {
  // 400 sequences of 200 looks each of a N(θ, 1) mean: the interval must never miss θ in at least 1 − α of them
  const random = rng(7)
  const theta = 0.3
  const alpha = 0.05
  let missed = 0
  let fixedMissed = 0
  for (let s = 0; s < 400; s++) {
    let sum = 0
    let miss = false
    let fixedMiss = false
    for (let n = 1; n <= 200; n++) {
      sum += theta + gaussian(random)
      const cs = confidenceSequence(sum / n, 1 / n, 0.5, alpha)
      if (cs.lower > theta || cs.upper < theta) miss = true
      // a fixed-sample 95 % interval, peeked at after every observation
      if (Math.abs(sum / n - theta) > 1.959963984540054 / Math.sqrt(n)) fixedMiss = true
    }
    if (miss) missed++
    if (fixedMiss) fixedMissed++
  }
  t.comment(`missed θ at some look: always-valid ${missed}/400, fixed-sample 95 % interval peeked 200 times ${fixedMissed}/400`)
  t.ok(missed / 400 <= alpha, `always-valid miss rate ${missed / 400} <= ${alpha}`)
  t.ok(fixedMissed / 400 > 0.2, 'peeking at a fixed-sample interval misses far more often than its 5 %')
})

t.test('requiredSampleSize: Fleiss-Tytun-Ury with continuity correction', async (t) => {
  // p1 = 2 %, p2 = 1 %, one-sided α = 0.01, power 0.8, equal groups: 2964.31 uncorrected, 3161.15 corrected (computed with scipy)
  t.equal(requiredSampleSize(0.02, 0.01, 0.01, 0.8), 3162)
  t.equal(requiredSampleSize(0.01, 0.02, 0.01, 0.8), Infinity, 'no regression to detect')
  t.ok(requiredSampleSize(0.02, 0.01, 0.01, 0.8, Infinity) < requiredSampleSize(0.02, 0.01, 0.01, 0.8, 4), 'a bigger baseline needs fewer canary requests')
  t.ok(requiredSampleSize(0.02, 0.01, 0.01, 0.8, 4) < 3162)
  t.ok(requiredSampleSize(0.02, 0.01, 0.05, 0.8) < 3162, 'a looser level needs fewer')
  // the judge's own test at that size has the promised power (Monte Carlo, 1500 pairs of binomial windows)
  const random = rng(11)
  const n = 3162
  let detected = 0
  for (let i = 0; i < 1500; i++) {
    let a = 0
    let b = 0
    for (let j = 0; j < n; j++) {
      if (random() < 0.02) a++
      if (random() < 0.01) b++
    }
    if (twoProportionTest(a, n, b, n).p < 0.01) detected++
  }
  t.comment(`power of twoProportionTest at n=${n}: ${(detected / 1500).toFixed(3)}`)
  t.ok(Math.abs(detected / 1500 - 0.8) < 0.04, `power ${detected / 1500} ≈ 0.8`)
})

t.test('window: exact log sums kept by record, merge and reset', async (t) => {
  const w = new SampleWindow(4)
  for (const ms of [10, 20, 40, 80, 160, 320]) w.record(200, ms / 1000, false)
  w.record(500, 0.001, false) // failures are not timed
  w.record(200, 0, false) // a 0-ms answer counts at 1 µs, not −Infinity
  const s = w.peek()
  const logs = [10, 20, 40, 80, 160, 320, 0.001].map(Math.log)
  t.equal(s.logCount, 7)
  t.ok(Math.abs(s.logSum! - logs.reduce((a, b) => a + b)) < 1e-12)
  t.ok(Math.abs(s.logSumSq! - logs.reduce((a, b) => a + b * b, 0)) < 1e-12)
  t.equal(s.latenciesMs.length, 4, 'the reservoir is bounded; the sums are not a sample')
  const m = new SampleWindow(4)
  m.merge(s, 'a')
  m.merge(s, 'b')
  t.equal(m.peek().logCount, 14, 'merge adds the sums')
  t.ok(Math.abs(m.peek().logSum! - 2 * s.logSum!) < 1e-12)
  m.merge({ requests: 3, failures: 0, ejections: 0, stillEjected: false, latenciesMs: [5, 6, 7] }, 'old')
  t.equal(m.peek().logCount, undefined, 'a snapshot without sums leaves the merged window without them (they would be partial)')
  m.merge({ requests: 2, failures: 2, ejections: 0, stillEjected: false, latenciesMs: [] }, 'failures-only')
  m.reset()
  t.same([m.peek().logCount, m.peek().logSum, m.peek().logSumSq], [0, 0, 0], 'reset: sums start again, complete')
  m.merge({ requests: 2, failures: 2, ejections: 0, stillEjected: false, latenciesMs: [] }, 'old-failures-only')
  t.equal(m.peek().logCount, 0, 'an old snapshot with no success has nothing to sum: the sums stay complete')
  const taken = w.take()
  t.equal(taken.logCount, 7)
  t.equal(w.peek().logCount, 0)
})

const ANALYSIS: AnalysisSpec = validatePlan({
  canary: 'c',
  steps: [10],
  analysis: { minRequests: 200, successRate: { min: 99 }, latencyP99Ms: { max: 500 }, baseline: { judge: 'sequential', maxErrorRateRatio: 2, maxLatencyP99Ratio: 1.5 } }
}).analysis

/** A window of `n` requests: `failures` of them 5xx, the rest log-normal around `medianMs` (σ 0.5), seeded. */
function windowOf (n: number, failures: number, medianMs: number, seed: number): WindowSnapshot {
  const random = rng(seed)
  const w = new SampleWindow(1024, seed)
  for (let i = 0; i < n; i++) {
    if (i < failures) w.record(502, 0.001, false)
    else w.record(200, medianMs * Math.exp(0.5 * gaussian(random)) / 1000, false)
  }
  return w.peek()
}

t.test('judgeSequential: the plan knows the judge', async (t) => {
  t.equal(ANALYSIS.baseline.judge, 'sequential')
})

t.test('judgeSequential: too few canary requests, ejections', async (t) => {
  const stable = windowOf(5000, 25, 80, 1)
  const few = judgeSequential(windowOf(150, 0, 80, 2), stable, ANALYSIS, false)
  t.equal(few.verdict, 'inconclusive')
  t.same(few.reasons, ['canary had 150 requests, fewer than minRequests 200'])
  t.equal(few.sequential?.decided, 'undecided')
  t.equal(judgeSequential(windowOf(150, 0, 80, 2), stable, ANALYSIS, true).sequential?.decided, 'final')
  const ejected = { ...windowOf(50, 5, 80, 3), ejections: 1, stillEjected: true }
  const r = judgeSequential(ejected, stable, ANALYSIS, false)
  t.equal(r.verdict, 'fail', 'an ejection in the window fails at any look, whatever the count')
  t.match(r.reasons[0], /^canary was ejected 1 time by outlier detection/)
  t.equal(r.sequential?.decided, 'fail')
  const stillOut = { ...windowOf(300, 0, 80, 4), stillEjected: true }
  t.not(judgeSequential(stillOut, stable, ANALYSIS, false).verdict, 'fail', 'still out from an earlier window: not one more failure per look')
  t.equal(judgeSequential(stillOut, stable, ANALYSIS, true).verdict, 'fail', '... but the final look fails it, as the fixed judge does')
})

t.test('judgeSequential: a clear error regression fails at the first look with enough requests', async (t) => {
  // 0.5 % → 6 %: 12 failures in 200 canary requests vs 25 in 5000
  const r = judgeSequential(windowOf(200, 12, 80, 5), windowOf(5000, 25, 80, 6), ANALYSIS, false)
  t.equal(r.verdict, 'fail')
  t.equal(r.sequential?.decided, 'fail')
  t.match(r.reasons[0], /^canary error rate 6% vs stable 0\.5% \(ratio 12 > 2, always-valid 99% lower bound of the difference [\d.]+ pp > 0\)$/)
  t.ok(r.sequential!.errors!.lower > 0)
  t.notOk(r.reasons.some((x) => x.startsWith('canary success rate')), 'the absolute threshold is not judged at a look that is not final')
  const atFinal = judgeSequential(windowOf(200, 12, 80, 5), windowOf(5000, 25, 80, 6), ANALYSIS, true)
  t.ok(atFinal.reasons.some((x) => x.startsWith('canary success rate 94% is below 99%')), 'at the final look it is')
})

t.test('judgeSequential: a clear latency regression fails', async (t) => {
  const r = judgeSequential(windowOf(300, 0, 200, 7), windowOf(5000, 0, 80, 8), ANALYSIS, false)
  t.equal(r.verdict, 'fail')
  t.match(r.reasons[0], /^canary p99 [\d.]+ ms vs stable [\d.]+ ms \(ratio [\d.]+ > 1\.5, always-valid 99% lower bound of the geometric-mean latency ratio [\d.]+ > 1\)$/)
  t.ok(Math.exp(r.sequential!.latency!.lower) > 2, 'ratio 2.5 in truth: the bound is well above 2')
  t.ok(Math.exp(r.sequential!.latency!.upper) < 3.2)
})

t.test('judgeSequential: significant but within the allowed effect does not fail', async (t) => {
  // 20 % slower everywhere with plenty of data: significant, but under maxLatencyP99Ratio 1.5
  const r = judgeSequential(windowOf(20_000, 0, 96, 9), windowOf(20_000, 0, 80, 10), ANALYSIS, false)
  t.ok(r.sequential!.latency!.lower > 0, 'the bound sees the shift')
  t.not(r.verdict, 'fail')
  t.equal(r.verdict, 'pass', 'and the upper bound is under ln 1.5: an early pass')
  t.equal(r.sequential?.decided, 'pass')
})

t.test('judgeSequential: a healthy canary passes early once the bounds fit the margins', async (t) => {
  const stable = windowOf(40_000, 200, 80, 11)
  const early = judgeSequential(windowOf(300, 1, 80, 12), stable, ANALYSIS, false)
  t.equal(early.verdict, 'inconclusive', '300 requests: the error bound is still wider than its margin')
  t.equal(early.sequential?.decided, 'undecided')
  t.match(early.reasons[0], /^no decision yet: always-valid 99% bounds of canary vs stable: errors -?[\d.]+…[\d.]+ pp \(pass below [\d.]+\), latency ×[\d.]+…×[\d.]+ \(pass below ×1\.5\)$/)
  const pass = judgeSequential(windowOf(20_000, 100, 80, 13), stable, ANALYSIS, false)
  t.equal(pass.verdict, 'pass')
  t.equal(pass.sequential?.decided, 'pass')
  t.same(pass.reasons, [])
  t.ok(pass.sequential!.errors!.upper < pass.sequential!.errors!.margin)
  t.ok(Math.abs(pass.sequential!.errors!.margin - 0.006) < 1e-9, 'margin: (2 − 1) × 0.5 % + 0.1 pp')
  t.equal(pass.sequential!.latency!.margin, Math.round(1e4 * Math.log(1.5)) / 1e4)
  t.equal(judgeSequential(windowOf(300, 1, 80, 12), stable, ANALYSIS, true).verdict, 'pass', 'final: nothing against it, pass as the fixed judge would')
  t.equal(judgeSequential(windowOf(300, 1, 80, 12), stable, ANALYSIS, true).sequential?.decided, 'final')
  // the absolute thresholds hold an early pass back, and judge at the final look
  const slowAbs = judgeSequential(windowOf(20_000, 100, 400, 14), windowOf(40_000, 200, 400, 15), ANALYSIS, false)
  t.equal(slowAbs.verdict, 'inconclusive', 'p99 ~1300 ms > latencyP99Ms.max 500: no early pass')
  const slowFinal = judgeSequential(windowOf(20_000, 100, 400, 14), windowOf(40_000, 200, 400, 15), ANALYSIS, true)
  t.equal(slowFinal.verdict, 'fail')
  t.equal(slowFinal.sequential?.decided, 'final')
  t.match(slowFinal.reasons[0], /^canary p99 [\d.]+ ms is above 500 ms$/)
})

t.test('judgeSequential: stable below minRequests skips the comparison; only the final look decides', async (t) => {
  const stable = windowOf(50, 0, 80, 16)
  const r = judgeSequential(windowOf(5000, 10, 80, 17), stable, ANALYSIS, false)
  t.equal(r.verdict, 'inconclusive')
  t.same(r.reasons, ['baseline comparison skipped: stable had 50 requests, fewer than minRequests 200'])
  t.equal(r.sequential?.errors, undefined)
  const f = judgeSequential(windowOf(5000, 10, 80, 17), stable, ANALYSIS, true)
  t.equal(f.verdict, 'pass')
  t.equal(f.sequential?.decided, 'final')
})

t.test('judgeSequential: without exact log sums, the latency sample stands in', async (t) => {
  const c = windowOf(2000, 0, 200, 18)
  const s = windowOf(5000, 0, 80, 19)
  const strip = (w: WindowSnapshot): WindowSnapshot => ({ requests: w.requests, failures: w.failures, ejections: w.ejections, stillEjected: w.stillEjected, latenciesMs: w.latenciesMs })
  const exact = judgeSequential(c, s, ANALYSIS, false)
  const sampled = judgeSequential(strip(c), strip(s), ANALYSIS, false)
  t.equal(sampled.verdict, 'fail')
  t.ok(Math.abs(exact.sequential!.latency!.lower - sampled.sequential!.latency!.lower) < 0.15, `exact ${exact.sequential!.latency!.lower} vs sampled ${sampled.sequential!.latency!.lower}`)
  t.ok(exact.sequential!.latency!.upper - exact.sequential!.latency!.lower < sampled.sequential!.latency!.upper - sampled.sequential!.latency!.lower, 'every request, not a sample of 1024: narrower')
})

t.test('judgeSequential: constant latencies and no failures give finite bounds', async (t) => {
  const flat = (n: number): WindowSnapshot => {
    const w = new SampleWindow(64)
    for (let i = 0; i < n; i++) w.record(200, 0.05, false)
    return w.peek()
  }
  const r = judgeSequential(flat(5000), flat(5000), ANALYSIS, false)
  t.ok(Number.isFinite(r.sequential!.errors!.upper))
  t.ok(Number.isFinite(r.sequential!.latency!.upper))
  // no error on either side: the margin is the 0.1 pp floor, which 5000 requests a side cannot yet show, 10 000 can
  t.equal(r.verdict, 'inconclusive')
  t.ok(r.sequential!.errors!.upper > 0.001 && r.sequential!.errors!.upper < 0.0012)
  t.equal(judgeSequential(flat(10_000), flat(10_000), ANALYSIS, false).verdict, 'pass')
})
