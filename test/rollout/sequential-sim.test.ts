import t from 'tap'
import { ISSUE_PLAN, feed, rng, simulateRollout, type SimOutcome, type VersionModel } from './sim.js'
import { judgeCheck } from '../../src/rollout/judge.js'
import { judgeSequential } from '../../src/rollout/sequential.js'
import { SampleWindow } from '../../src/rollout/window.js'
import { validatePlan } from '../../src/config/plan.js'
import { lookEveryMs } from '../../src/rollout/controller.js'

// The simulation of simulation.test.ts (stable: 0.5 % errors, log-normal
// latency, median 80 ms, σ 0.6, shared load drift; 10 000 requests an
// interval of 60 s) run through the real controller, each interval fed in 12
// slices of 5 s: the sequential judge's look period for a 60 s interval
// (lookEveryMs). Both judges get the same seeds and the same traffic model.
const BASE: VersionModel = { errorRate: 0.005, medianMs: 80, sigma: 0.6 }
const EQUAL = 500
const REGRESSED = 100

/** The issue's plan (thresholds and baseline) with `judge`; `thresholds: false` leaves successRate and latencyP99Ms out. */
function plan (judge: string, thresholds = true): unknown {
  const { successRate: _s, latencyP99Ms: _l, ...rest } = ISSUE_PLAN.analysis
  const analysis = thresholds ? ISSUE_PLAN.analysis : rest
  return { ...ISSUE_PLAN, analysis: { ...analysis, baseline: { ...analysis.baseline, judge } } }
}

/** Slices an interval is fed in: one per look of the sequential judge (12 for a 60 s interval). */
const LOOKS = Math.round(ISSUE_PLAN.intervalMs / lookEveryMs(validatePlan(plan('sequential'), ['stable', 'canary'])))

async function run (rawPlan: unknown, canary: VersionModel, n: number, seed0: number): Promise<SimOutcome[]> {
  const out: SimOutcome[] = []
  for (let i = 0; i < n; i++) out.push(await simulateRollout(rawPlan, BASE, canary, seed0 + i, { looks: LOOKS }))
  return out
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`

function ended (o: SimOutcome[], state: string): number[] {
  return o.filter((x) => x.state === state).map((x) => x.endedMs!)
}

t.test(`equal but noisy canaries: false rollback rate over ${EQUAL} rollouts, sequential and mann-whitney`, async (t) => {
  const started = performance.now()
  const seq = await run(plan('sequential'), BASE, EQUAL, 20_000)
  const mw = await run(plan('mann-whitney'), BASE, EQUAL, 20_000)
  const rows: Array<[string, SimOutcome[]]> = [['sequential', seq], ['mann-whitney', mw]]
  for (const [name, o] of rows) {
    const back = o.filter((x) => x.state === 'rolled-back')
    const kinds = back.flatMap((x) => x.reasons).reduce<Record<string, number>>((m, k) => ({ ...m, [k]: (m[k] ?? 0) + 1 }), {})
    t.comment(`${name}: ${back.length}/${EQUAL} rolled back (${(100 * back.length / EQUAL).toFixed(1)} %), failed-check reasons of those ${JSON.stringify(kinds)}; median time to promotion ${seconds(median(ended(o, 'promoted')))}`)
  }
  t.comment(`(${EQUAL} + ${EQUAL} rollouts in ${seconds(performance.now() - started)} of wall time)`)
  const rate = seq.filter((x) => x.state === 'rolled-back').length / EQUAL
  t.ok(rate <= 0.02, `sequential false rollback rate ${(100 * rate).toFixed(1)} % <= 2 %`)
  t.equal(seq.filter((x) => x.state === 'promoted' || x.state === 'rolled-back').length, EQUAL, 'every sequential rollout ended')
  t.ok(median(ended(seq, 'promoted')) <= median(ended(mw, 'promoted')), 'a healthy canary is promoted no later than with the fixed judge')
})

t.test('time to detect a regression (simulated ms from start to rolled-back), same seeds and traffic', async (t) => {
  // [label, canary, requests an interval, rollouts, thresholds]: the issue's two regressions on the simulation's route
  // (1 % of 10 000 requests a minute: 100 canary requests, half of minRequests), the same on a busier route (50 000), and a
  // marginal regression (3× the error rate, +1 pp) judged by the baseline comparison alone, where the always-valid width costs most
  const rows: Array<[string, VersionModel, number, number, boolean]> = [
    ['+5 pp errors', { ...BASE, errorRate: BASE.errorRate + 0.05 }, 10_000, REGRESSED, true],
    ['2× latency', { ...BASE, medianMs: 2 * BASE.medianMs }, 10_000, REGRESSED, true],
    ['+5 pp errors, 50 000 requests an interval', { ...BASE, errorRate: BASE.errorRate + 0.05 }, 50_000, 30, true],
    ['2× latency, 50 000 requests an interval', { ...BASE, medianMs: 2 * BASE.medianMs }, 50_000, 30, true],
    ['+1 pp errors (3×), baseline comparison only', { ...BASE, errorRate: BASE.errorRate + 0.01 }, 10_000, REGRESSED, false]
  ]
  for (const [label, canary, total, n, thresholds] of rows) {
    const go = async (judge: string): Promise<SimOutcome[]> => {
      const out: SimOutcome[] = []
      for (let i = 0; i < n; i++) out.push(await simulateRollout(plan(judge, thresholds), BASE, canary, 30_000 + i, { looks: LOOKS, total }))
      return out
    }
    const s = ended(await go('sequential'), 'rolled-back')
    const m = ended(await go('mann-whitney'), 'rolled-back')
    t.comment(`${label}: sequential ${s.length}/${n} rolled back, median ${seconds(median(s))}; mann-whitney ${m.length}/${n}, median ${seconds(median(m))}`)
    if (thresholds) {
      t.equal(s.length, n, `${label}: the sequential judge rolls back every regressed canary`)
      t.ok(median(s) <= median(m), `${label}: sequential median ${seconds(median(s))} is not worse than mann-whitney's ${seconds(median(m))}`)
    } else {
      t.ok(s.length >= 0.9 * n, `${label}: the sequential judge still rolls back at least 90 %`)
    }
  }
})

t.test('peeking: the fixed judge checked at every look inflates false failures; the sequential judge does not', async (t) => {
  // One window of an equal canary looked at 20 times as it fills (100 canary and 400 stable requests a look), no effect-size
  // allowance (ratios 1) and no thresholds, confidence 0.95: how often does some look fail it?
  const analysis = validatePlan({ canary: 'c', steps: [10], analysis: { minRequests: 100, baseline: { judge: 'sequential', confidence: 0.95, maxErrorRateRatio: 1, maxLatencyP99Ratio: 1 } } }).analysis
  const model: VersionModel = { errorRate: 0.05, medianMs: 80, sigma: 0.6 }
  const windows = 300
  let seqFailed = 0
  let fixedFailed = 0
  let fixedLastFailed = 0
  for (let i = 0; i < windows; i++) {
    const random = rng(40_000 + i)
    const c = new SampleWindow(512, 1 + i)
    const s = new SampleWindow(512, 7 + i)
    let seq = false
    let fixed = false
    for (let look = 1; look <= 20; look++) {
      feed(c, 100, model, random)
      feed(s, 400, model, random)
      const cw = c.peek()
      const sw = s.peek()
      if (judgeSequential(cw, sw, analysis, false).verdict === 'fail') seq = true
      const verdict = judgeCheck(cw, sw, { ...analysis, baseline: { ...analysis.baseline, judge: 'mann-whitney' } }).verdict
      if (verdict === 'fail') fixed = true
      if (look === 20 && verdict === 'fail') fixedLastFailed++
    }
    if (seq) seqFailed++
    if (fixed) fixedFailed++
  }
  t.comment(`equal canary, 20 looks a window, α = 0.05: sequential failed ${seqFailed}/${windows} windows; mann-whitney judge checked at every look ${fixedFailed}/${windows} (once, at the end: ${fixedLastFailed}/${windows})`)
  t.ok(seqFailed / windows <= 0.05, 'the sequential judge keeps its level however often it looks')
  t.ok(fixedFailed > 2 * seqFailed, 'the fixed judge, peeked at, does not')
})
