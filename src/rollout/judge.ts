/**
 * The judge of one check: canary and stable windows in, a verdict and its
 * figures out. Pure: the controller records the result and acts on it.
 */
import type { AnalysisSpec } from '../config/plan.js'
import { mannWhitneyTest, quantileSorted, twoProportionTest } from './stats.js'
import type { WindowSnapshot } from './window.js'
import type { MetricResult } from './analysis.js'

/** The verdict of one check. */
export type Verdict = 'pass' | 'fail' | 'inconclusive'

/** Golden signals of one side of a check. */
export interface SideFigures {
  requests: number
  failures: number
  /** Non-5xx share, percent (100 when there were no requests). */
  successRate: number
  /** From the latency sample; null when there was no successful request. */
  p50Ms: number | null
  p99Ms: number | null
  /** Size of the latency sample the percentiles and the rank test used. */
  sampled: number
  /** Times outlier detection ejected this version during the check's window. */
  ejections: number
  /** Ejected (in this window or before) and no successful answer since, at the check. */
  stillEjected: boolean
}

/** A finished check: figures, the tests' outputs and why it failed. */
export interface CheckResult {
  verdict: Verdict
  /** Human-readable reasons of a fail or an inconclusive check; empty on pass. */
  reasons: string[]
  canary: SideFigures
  stable: SideFigures
  /** Baseline comparison figures; absent when the judge is `none` or the stable side had too few requests. */
  errorTest?: { p: number; z: number; ratio: number | null }
  latencyTest?: { p: number; z: number; superiority: number; p99Ratio: number | null }
  /** The plan's provider metrics at this check (analysis.metrics). */
  metrics?: MetricResult[]
  /** An inconclusive check: how many more canary requests a decision needs at the current rates, and when to expect it. */
  guidance?: DecisionGuidance
  /** The sequential judge's confidence bounds (canary minus stable) and what they decided. */
  sequential?: SequentialFigures
}

/** How far a check is from a decision (a power calculation at the observed rates). */
export interface DecisionGuidance {
  /** Canary requests that detect an error rate maxErrorRateRatio × stable's with 80 % power at the plan's confidence (at least minRequests). */
  neededRequests: number
  /** neededRequests minus the canary requests in the window (0 when reached). */
  moreRequests: number
  /** The canary's request rate in the window, per second (null when no time has passed). */
  canaryRps: number | null
  /** moreRequests at canaryRps, milliseconds (null when the canary gets no traffic). */
  expectedMs: number | null
  /** Said when minRequests is below what the power calculation asks. */
  note?: string
  /**
   * When minRequests is below neededRequests: the requests (and time) until
   * the window holds minRequests, where a fixed judge decides, with less
   * power than neededRequests would give.
   */
  minRequests?: { more: number; expectedMs: number | null }
}

/**
 * One always-valid confidence interval of canary minus stable, and the
 * margin an early pass needs the upper bound below. For errors the two
 * bounds use different variances on purpose: `lower` (the fail side) the
 * pooled one with Yates' correction, as the fixed test does, so a real
 * regression is caught as early; `upper` (the early-pass side) the unpooled
 * one, so a pass is never easier than the evidence allows.
 */
export interface SequentialBounds {
  lower: number
  upper: number
  margin: number
}

/** The sequential judge's figures of one look. */
export interface SequentialFigures {
  /** Error rate difference (fraction). */
  errors?: SequentialBounds
  /** Mean log-latency difference (ln of the geometric-mean ratio). */
  latency?: SequentialBounds
  /** What decided: the bounds (fail, pass), the interval's end (final), or nothing yet. */
  decided: 'fail' | 'pass' | 'final' | 'undecided'
}

/** The golden-signal figures of one window (both judges report these). */
export function figures (w: WindowSnapshot): SideFigures {
  const sorted = Float64Array.from(w.latenciesMs).sort()
  return {
    requests: w.requests,
    failures: w.failures,
    successRate: w.requests === 0 ? 100 : round(100 * (w.requests - w.failures) / w.requests, 4),
    p50Ms: sorted.length === 0 ? null : round(quantileSorted(sorted, 0.5), 3),
    p99Ms: sorted.length === 0 ? null : round(quantileSorted(sorted, 0.99), 3),
    sampled: sorted.length,
    ejections: w.ejections,
    stillEjected: w.stillEjected
  }
}

/**
 * Why a canary's ejection fails the check, or undefined when it was not
 * ejected. Wording shared by the check reasons, the webhooks and the README.
 */
export function ejectionReason (canary: Pick<SideFigures, 'ejections' | 'stillEjected'>): string | undefined {
  if (canary.ejections > 0) return `canary was ejected ${canary.ejections} time${canary.ejections === 1 ? '' : 's'} by outlier detection (consecutive failures or a failed health check)`
  if (canary.stillEjected) return 'canary is still ejected by outlier detection (no successful canary request since its last ejection)'
  return undefined
}

/** The plan's absolute thresholds the canary breaks (successRate.min, latencyP99Ms.max): every judge applies them alike. */
export function thresholdFailures (canary: SideFigures, analysis: AnalysisSpec): string[] {
  const out: string[] = []
  if (analysis.successRate !== undefined && canary.successRate < analysis.successRate.min) {
    out.push(`canary success rate ${canary.successRate}% is below ${analysis.successRate.min}%`)
  }
  if (analysis.latencyP99Ms !== undefined && canary.p99Ms !== null && canary.p99Ms > analysis.latencyP99Ms.max) {
    out.push(`canary p99 ${canary.p99Ms} ms is above ${analysis.latencyP99Ms.max} ms`)
  }
  return out
}

/** `x` rounded to `digits` decimals (the figures' precision). */
export function round (x: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

/** a / b to 4 decimals; null when b is 0 and a is not ("infinitely worse"), 1 when both are 0. */
export function ratio (a: number, b: number): number | null {
  if (b > 0) return round(a / b, 4)
  return a > 0 ? null : 1 // null: "infinitely worse" (JSON has no Infinity)
}

/**
 * Judges one window pair.
 *
 * - The canary was ejected by outlier detection during the window (or is
 *   still out from an earlier ejection: no good answer since) → `fail`, whatever
 *   the request count. An ejection is already the proxy's verdict of several
 *   failures in a row, and it starves the window: an ejected canary gets no
 *   new users, so waiting for `minRequests` would wait a whole ejection per
 *   few requests. Ejections of the stable version are in its figures but
 *   are not held against the canary.
 * - Fewer than `minRequests` canary requests → `inconclusive` (the caller
 *   keeps accumulating; an inconclusive check never counts as failed).
 * - Absolute thresholds (canary success rate below `successRate.min`, canary
 *   p99 above `latencyP99Ms.max`) → `fail`.
 * - Baseline, `mann-whitney` judge (Kayenta-style: a significance test plus an
 *   allowed effect size, both must say "worse"): the error rate fails when the
 *   one-sided two-proportion test gives p < 1 − confidence AND the canary's
 *   rate is above `maxErrorRateRatio` × stable's; latency fails when the
 *   one-sided Mann-Whitney test gives p < 1 − confidence AND canary p99 is
 *   above `maxLatencyP99Ratio` × stable p99. Significance alone would roll back
 *   a 2 % slowdown on a busy route; effect size alone rolls back noise.
 * - `ratio` judge: only the effect sizes (what Flagger-style thresholds do);
 *   `none`: no baseline comparison.
 * - The baseline comparison is skipped (noted in reasons) when stable has
 *   fewer than `minRequests` requests: the thresholds still judge.
 */
export function judgeCheck (canaryWindow: WindowSnapshot, stableWindow: WindowSnapshot, analysis: AnalysisSpec): CheckResult {
  const canary = figures(canaryWindow)
  const stable = figures(stableWindow)
  const result: CheckResult = { verdict: 'pass', reasons: [], canary, stable }
  const fails: string[] = []
  const ejected = ejectionReason(canary)
  if (ejected !== undefined) fails.push(ejected)
  if (canary.requests < analysis.minRequests) {
    result.verdict = fails.length > 0 ? 'fail' : 'inconclusive'
    result.reasons = [...fails, `canary had ${canary.requests} requests, fewer than minRequests ${analysis.minRequests}`]
    return result
  }
  fails.push(...thresholdFailures(canary, analysis))
  const b = analysis.baseline
  if (b.judge !== 'none') {
    if (stable.requests < analysis.minRequests) {
      result.reasons.push(`baseline comparison skipped: stable had ${stable.requests} requests, fewer than minRequests ${analysis.minRequests}`)
    } else {
      const alpha = 1 - b.confidence
      const canaryRate = canary.failures / canary.requests
      const stableRate = stable.failures / stable.requests
      const errRatio = ratio(canaryRate, stableRate)
      const errTest = twoProportionTest(canary.failures, canary.requests, stable.failures, stable.requests)
      result.errorTest = { p: round(errTest.p, 6), z: round(errTest.z, 4), ratio: errRatio }
      const errEffect = canaryRate > b.maxErrorRateRatio * stableRate
      if (errEffect && (b.judge === 'ratio' || errTest.p < alpha)) {
        fails.push(`canary error rate ${round(100 * canaryRate, 3)}% vs stable ${round(100 * stableRate, 3)}% (ratio ${errRatio ?? 'inf'} > ${b.maxErrorRateRatio}${b.judge === 'ratio' ? '' : `, p=${result.errorTest.p} < ${round(alpha, 6)}`})`)
      }
      if (canary.p99Ms !== null && stable.p99Ms !== null) {
        const mw = mannWhitneyTest(canaryWindow.latenciesMs, stableWindow.latenciesMs)
        const p99Ratio = ratio(canary.p99Ms, stable.p99Ms)
        result.latencyTest = { p: round(mw.p, 6), z: round(mw.z, 4), superiority: round(mw.superiority, 4), p99Ratio }
        const latEffect = canary.p99Ms > b.maxLatencyP99Ratio * stable.p99Ms
        if (latEffect && (b.judge === 'ratio' || mw.p < alpha)) {
          fails.push(`canary p99 ${canary.p99Ms} ms vs stable ${stable.p99Ms} ms (ratio ${p99Ratio ?? 'inf'} > ${b.maxLatencyP99Ratio}${b.judge === 'ratio' ? '' : `, Mann-Whitney p=${result.latencyTest.p} < ${round(alpha, 6)}`})`)
        }
      }
    }
  }
  if (fails.length > 0) {
    result.verdict = 'fail'
    result.reasons = [...fails, ...result.reasons]
  }
  return result
}
