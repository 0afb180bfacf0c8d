/**
 * The sequential judge (`"judge": "sequential"`): always-valid inference
 * over the evidence accumulated since the last recorded check, so the
 * controller may look as often as it likes (every few seconds) and decide as
 * soon as the evidence is enough — a clearly bad canary fails at once, a
 * clearly healthy one passes before its interval is out — without the
 * false-rollback inflation that peeking at a fixed-sample test causes.
 * Pure: windows in, a verdict and its figures out.
 */
import type { AnalysisSpec } from '../config/plan.js'
import { ejectionReason, figures, ratio, round, thresholdFailures, type CheckResult, type SequentialBounds, type SequentialFigures, type SideFigures } from './judge.js'
import { confidenceSequence, sequentialRadius } from './stats.js'
import type { WindowSnapshot } from './window.js'

/**
 * Mixing scale τ of the error-rate difference: 2 percentage points. The
 * boundary is within 10 % of its narrowest for τ²/V between about 3 and 100
 * (see sequentialRadius); with τ = 2 pp that covers the variance of an
 * error-rate difference from ~200 to ~20 000 canary requests at error
 * rates of 0.5 %, and regressions of a few points at a few hundred
 * requests: the sizes and effects a canary window meets. The smallest
 * regression of interest (maxErrorRateRatio × a stable rate of a fraction of
 * a percent) is below it; a smaller τ would pay more (width grows fast
 * below τ²/V ≈ 3) than it saves.
 */
export const ERROR_TAU = 0.02

/**
 * Absolute part of the early-pass margin of the error-rate difference (0.1
 * percentage point). The relative part, (maxErrorRateRatio − 1) × stable's
 * rate, vanishes when stable had no error in the window, and no finite
 * sample could then show the canary within it; 0.1 pp is the resolution of
 * a 99.9 % success-rate objective, the tightest one plans commonly state.
 */
export const ERROR_FLOOR = 0.001

/** Smallest latency mixing scale (ln 1.05): a maxLatencyP99Ratio of 1 would otherwise give τ = 0. */
const MIN_LATENCY_TAU = Math.log(1.05)

/** Floor of a side's log-latency variance (1 % spread): constant latencies (tests, a cache) must not give a zero-width interval. */
const LOG_VARIANCE_FLOOR = 1e-4

/** Mean and variance of ln(latency in ms) of one side, and how many requests they cover. */
interface LogMoments { n: number; mean: number; variance: number }

/**
 * The window's exact log sums when it has them; else an estimate from its
 * latency sample (a uniform sample of the same successes; fleet windows
 * merged from instances that do not send the sums). Undefined below 2.
 */
function logMoments (w: WindowSnapshot): LogMoments | undefined {
  let n: number
  let sum: number
  let sumSq: number
  if (w.logCount !== undefined && w.logSum !== undefined && w.logSumSq !== undefined) {
    n = w.logCount
    sum = w.logSum
    sumSq = w.logSumSq
  } else {
    n = w.latenciesMs.length
    sum = sumSq = 0
    for (const ms of w.latenciesMs) {
      const l = Math.log(Math.max(ms, 0.001))
      sum += l
      sumSq += l * l
    }
  }
  if (n < 2) return undefined
  const mean = sum / n
  return { n, mean, variance: Math.max(LOG_VARIANCE_FLOOR, (sumSq - sum * mean) / (n - 1)) }
}

/**
 * The always-valid bounds of the canary's error rate minus stable's.
 *
 * - Lower bound (it decides a fail: "the canary is worse"): the estimate
 *   minus the mixture boundary at the variance the difference has when both
 *   rates are equal — the pooled rate, as the fixed judge's two-proportion
 *   test uses — minus Yates' continuity correction. That is the hypothesis
 *   it rejects, so it is the right variance there; the canary's own
 *   variance would ask several times more requests of a canary whose rate
 *   went from 0.5 % to 5 %, for no gain in validity.
 * - Upper bound (it decides an early pass: "worse by less than the
 *   margin"): the estimate plus the boundary at the unpooled variance (the
 *   rates then differ), plus the continuity correction.
 *
 * Half a pseudo-failure and a pseudo-request on each rate keep a window
 * with no failure from a zero variance (and so a zero-width interval).
 */
function errorBounds (c: SideFigures, s: SideFigures, ratioAllowed: number, alpha: number): SequentialBounds & { canaryRate: number; stableRate: number } {
  const canaryRate = c.failures / c.requests
  const stableRate = s.failures / s.requests
  const diff = canaryRate - stableRate
  const inv = 1 / c.requests + 1 / s.requests
  const cc = 0.5 * inv
  const pooled = (c.failures + s.failures + 0.5) / (c.requests + s.requests + 1)
  const pc = (c.failures + 0.5) / (c.requests + 1)
  const ps = (s.failures + 0.5) / (s.requests + 1)
  return {
    lower: diff - cc - sequentialRadius(pooled * (1 - pooled) * inv, ERROR_TAU, alpha),
    upper: diff + cc + sequentialRadius(pc * (1 - pc) / c.requests + ps * (1 - ps) / s.requests, ERROR_TAU, alpha),
    margin: (ratioAllowed - 1) * stableRate + ERROR_FLOOR,
    canaryRate,
    stableRate
  }
}

/**
 * The always-valid bounds of the mean ln(latency) of the canary minus
 * stable's (exp of it: the geometric-mean latency ratio), over successful
 * requests, with the Welch (unpooled) plug-in variance; the early-pass
 * margin is ln(maxLatencyP99Ratio), also the mixing scale: a shift of the
 * whole distribution by the allowed ratio moves its p99 by as much.
 */
function latencyBounds (canary: WindowSnapshot, stable: WindowSnapshot, ratioAllowed: number, alpha: number): SequentialBounds | undefined {
  const c = logMoments(canary)
  const s = logMoments(stable)
  if (c === undefined || s === undefined) return undefined
  const margin = Math.log(ratioAllowed)
  const cs = confidenceSequence(c.mean - s.mean, c.variance / c.n + s.variance / s.n, Math.max(margin, MIN_LATENCY_TAU), alpha)
  return { lower: cs.lower, upper: cs.upper, margin }
}

/**
 * Judges one look of the sequential judge (`final`: the interval since the
 * last recorded check has passed).
 *
 * - Canary ejected by outlier detection in this window → `fail` at any look
 *   (judge.ts's rule). Still ejected from an earlier window with no new
 *   ejection → `fail` only at the final look: one ejection is one piece of
 *   evidence, not one per look.
 * - Fewer than `minRequests` canary requests → `inconclusive`.
 * - Stable below `minRequests`: the baseline comparison is skipped (as in
 *   judge.ts); only the final look decides, by the absolute thresholds.
 * - `fail` as soon as an always-valid (1 − α) bound says the canary is worse
 *   AND the effect is above the allowed size (the fixed judge's rule with an
 *   always-valid test in place of a fixed-sample one): error-rate lower
 *   bound > 0 and canary rate > maxErrorRateRatio × stable's; or
 *   log-latency lower bound > 0 and canary p99 > maxLatencyP99Ratio ×
 *   stable p99 (reservoir p99s, as judge.ts).
 * - Early `pass` when both upper bounds are below their margins
 *   ((maxErrorRateRatio − 1) × stable's rate + 0.1 pp; ln(maxLatencyP99Ratio))
 *   and the absolute thresholds (successRate.min, latencyP99Ms.max) hold.
 * - Final look, nothing decided: the absolute thresholds judge, else `pass`
 *   (the fixed judge would pass a canary its test cannot call worse).
 * - Otherwise `inconclusive` with `sequential.decided` = 'undecided': the
 *   controller records nothing and keeps accumulating.
 *
 * The absolute thresholds never fail a non-final look: checked at every
 * look, a threshold would be peeked at like a fixed test.
 */
export function judgeSequential (canaryWindow: WindowSnapshot, stableWindow: WindowSnapshot, analysis: AnalysisSpec, final: boolean): CheckResult {
  const canary = figures(canaryWindow)
  const stable = figures(stableWindow)
  const result: CheckResult = { verdict: 'pass', reasons: [], canary, stable }
  const seq: SequentialFigures = { decided: 'undecided' }
  const fails: string[] = []
  if (canary.ejections > 0 || (final && canary.stillEjected)) fails.push(ejectionReason(canary)!)
  if (canary.requests < analysis.minRequests) {
    seq.decided = fails.length > 0 ? 'fail' : final ? 'final' : 'undecided'
    result.sequential = seq
    result.verdict = fails.length > 0 ? 'fail' : 'inconclusive'
    result.reasons = [...fails, `canary had ${canary.requests} requests, fewer than minRequests ${analysis.minRequests}`]
    return result
  }
  const thresholds = thresholdFailures(canary, analysis)
  const b = analysis.baseline
  const alpha = 1 - b.confidence
  const level = `${round(100 * b.confidence, 4)}%`
  const notes: string[] = []
  let passed = false
  if (stable.requests < analysis.minRequests) {
    notes.push(`baseline comparison skipped: stable had ${stable.requests} requests, fewer than minRequests ${analysis.minRequests}`)
  } else {
    const err = errorBounds(canary, stable, b.maxErrorRateRatio, alpha)
    seq.errors = { lower: round(err.lower, 6), upper: round(err.upper, 6), margin: round(err.margin, 6) }
    if (err.lower > 0 && err.canaryRate > b.maxErrorRateRatio * err.stableRate) {
      fails.push(`canary error rate ${round(100 * err.canaryRate, 3)}% vs stable ${round(100 * err.stableRate, 3)}% (ratio ${ratio(err.canaryRate, err.stableRate) ?? 'inf'} > ${b.maxErrorRateRatio}, always-valid ${level} lower bound of the difference ${round(100 * err.lower, 3)} pp > 0)`)
    }
    const lat = latencyBounds(canaryWindow, stableWindow, b.maxLatencyP99Ratio, alpha)
    if (lat !== undefined) {
      seq.latency = { lower: round(lat.lower, 4), upper: round(lat.upper, 4), margin: round(lat.margin, 4) }
      if (lat.lower > 0 && canary.p99Ms !== null && stable.p99Ms !== null && canary.p99Ms > b.maxLatencyP99Ratio * stable.p99Ms) {
        fails.push(`canary p99 ${canary.p99Ms} ms vs stable ${stable.p99Ms} ms (ratio ${ratio(canary.p99Ms, stable.p99Ms) ?? 'inf'} > ${b.maxLatencyP99Ratio}, always-valid ${level} lower bound of the geometric-mean latency ratio ${round(Math.exp(lat.lower), 4)} > 1)`)
      }
    }
    passed = err.upper < err.margin && lat !== undefined && lat.upper < lat.margin && thresholds.length === 0
    if (fails.length === 0 && !passed && !final) {
      const errText = `errors ${round(100 * err.lower, 3)}…${round(100 * err.upper, 3)} pp (pass below ${round(100 * err.margin, 3)})`
      const latText = lat === undefined ? 'latency: too few timed requests' : `latency ×${round(Math.exp(lat.lower), 3)}…×${round(Math.exp(lat.upper), 3)} (pass below ×${b.maxLatencyP99Ratio})`
      notes.push(`no decision yet: always-valid ${level} bounds of canary vs stable: ${errText}, ${latText}`)
    }
  }
  if (fails.length > 0) {
    seq.decided = 'fail'
    result.verdict = 'fail'
    result.reasons = [...fails, ...(final ? thresholds : []), ...notes]
  } else if (passed) {
    seq.decided = 'pass'
    result.reasons = notes
  } else if (final) {
    seq.decided = 'final'
    result.verdict = thresholds.length > 0 ? 'fail' : 'pass'
    result.reasons = [...thresholds, ...notes]
  } else {
    result.verdict = 'inconclusive'
    result.reasons = notes
  }
  result.sequential = seq
  return result
}
