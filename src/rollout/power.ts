/**
 * Decision guidance for a check that could not decide: how many canary
 * requests the error-rate comparison needs to see a regression of the
 * plan's tolerated size, and when, at the canary's current request rate,
 * the window will hold them. A power calculation, pure.
 */
import type { AnalysisSpec } from '../config/plan.js'
import { round, type DecisionGuidance } from './judge.js'
import { ERROR_FLOOR } from './sequential.js'
import { requiredSampleSize } from './stats.js'
import type { WindowSnapshot } from './window.js'

/** The power the guidance sizes for (the usual 80 %). */
export const GUIDANCE_POWER = 0.8

/**
 * Floor of the stable error rate the guidance sizes for (0.1 %), and of the
 * regression it sizes (0.1 percentage point). A stable window with no error
 * says its rate is small, not zero; sized at zero, "maxErrorRateRatio ×
 * stable" is zero too and no sample size exists. 0.1 % is the error budget
 * of a 99.9 % objective, the tightest plans commonly state: the sequential
 * judge's absolute early-pass margin, the same number by definition.
 */
export const GUIDANCE_RATE_FLOOR = ERROR_FLOOR

/** Milliseconds until `more` requests arrive at `perSecond` (0 when none are missing, null when nothing arrives). */
function eta (more: number, perSecond: number | null): number | null {
  if (more === 0) return 0
  return perSecond === null || perSecond === 0 ? null : Math.ceil(1000 * more / perSecond)
}

/**
 * Guidance for an inconclusive check: the canary requests a one-sided
 * two-proportion test at the plan's confidence needs to detect, with 80 %
 * power, a canary error rate of maxErrorRateRatio × stable's observed rate
 * (stable's rate floored at 0.1 %, the regression at 0.1 point), with
 * stable's and canary's request counts in their observed proportion; never
 * fewer than minRequests. `elapsedMs`: since the window started (the
 * canary's request rate). `note` says when minRequests alone would stop
 * short of that power.
 */
export function decisionGuidance (canary: WindowSnapshot, stable: WindowSnapshot, analysis: AnalysisSpec, elapsedMs: number): DecisionGuidance {
  const b = analysis.baseline
  const stableRate = stable.requests > 0 ? stable.failures / stable.requests : 0
  const p2 = Math.min(0.99, Math.max(stableRate, GUIDANCE_RATE_FLOOR))
  // never at or past 100 %: halfway from the baseline to 1 at most
  const p1 = Math.min(p2 + Math.max((b.maxErrorRateRatio - 1) * p2, GUIDANCE_RATE_FLOOR), (1 + p2) / 2)
  const k = canary.requests > 0 && stable.requests > 0 ? stable.requests / canary.requests : 1
  const sized = requiredSampleSize(p1, p2, 1 - b.confidence, GUIDANCE_POWER, k)
  const neededRequests = Math.max(analysis.minRequests, sized)
  const moreRequests = Math.max(0, neededRequests - canary.requests)
  const perSecond = elapsedMs > 0 ? canary.requests / (elapsedMs / 1000) : null
  const g: DecisionGuidance = {
    neededRequests,
    moreRequests,
    canaryRps: perSecond === null ? null : round(perSecond, 3),
    expectedMs: eta(moreRequests, perSecond)
  }
  // the fixed judges stop being inconclusive at minRequests: when that comes before the
  // sized count (neededRequests is the larger of the two), say when and with what power
  const toMin = Math.max(0, analysis.minRequests - canary.requests)
  if (analysis.minRequests < sized) {
    g.minRequests = { more: toMin, expectedMs: eta(toMin, perSecond) }
    g.note = `minRequests ${analysis.minRequests} is below the ${sized} requests that detect a ${round(p1 / p2, 2)}× error rate at ${round(100 * GUIDANCE_POWER, 0)} % power`
  }
  return g
}
