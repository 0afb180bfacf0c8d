/**
 * Rollout plans: what a progressive delivery does (the steps, how often it
 * judges, what counts as worse, who to tell) and their validation. Pure data
 * and pure functions; the same validator serves the admin API (400 with every
 * problem listed), the `rollout` block of a route in config and the state
 * file on restart.
 */
import { CanarydError } from '../errors.js'
import type { RouteSpec } from '../routing/spec.js'
import { checkWeight } from '../routing/weights.js'
import { isObj, MIRROR_DEFAULTS, type Obj } from './segments.js'
import { checkLoadTest, checkMetrics, checkVariables, type LoadTestSpec, type MetricSpec } from './analysis.js'

export type { AuthSpec, HttpProviderSpec, LoadTestSpec, MetricCompare, MetricSpec, PrometheusProviderSpec, ProviderSpec, ThresholdRange } from './analysis.js'

/** The states of a rollout. The last four are terminal except `paused` and `awaiting-promotion`. */
export const ROLLOUT_STATES = ['progressing', 'paused', 'awaiting-promotion', 'promoted', 'rolled-back', 'aborted'] as const

/** One state of a rollout. */
export type RolloutStateName = typeof ROLLOUT_STATES[number]

/** States in which a rollout still owns the route's weights (a second start gets 409). */
export const ACTIVE_STATES: ReadonlySet<RolloutStateName> = new Set(['progressing', 'paused', 'awaiting-promotion'])

/** Events a webhook can subscribe to. */
const ROLLOUT_EVENTS = ['started', 'step', 'check-failed', 'paused', 'resumed', 'awaiting-promotion', 'promoted', 'rolled-back', 'aborted'] as const

/** One event a webhook can subscribe to. */
export type RolloutEvent = typeof ROLLOUT_EVENTS[number]

/**
 * Baseline judges: `mann-whitney` (statistical, default), `ratio` (plain
 * ratios, Flagger-like), `none` (thresholds only), `sequential` (always-valid
 * tests over the accumulated windows, looked at several times per interval:
 * decides as soon as the evidence is enough, without the false rollbacks
 * repeated fixed-sample tests would cause).
 */
const JUDGES = ['mann-whitney', 'ratio', 'none', 'sequential'] as const

/** A baseline judge. */
export type Judge = typeof JUDGES[number]

/** Canary-versus-stable comparison settings. */
export interface BaselineSpec {
  /** Allowed effect size for errors: the canary fails only if its error rate is above ratio × stable's (and significantly so). */
  maxErrorRateRatio: number
  /** Allowed effect size for latency: canary p99 above ratio × stable p99 (and a significant Mann-Whitney shift). */
  maxLatencyP99Ratio: number
  judge: Judge
  /** Confidence level of the one-sided tests, e.g. 0.99: a test fails only when p < 1 − confidence. */
  confidence: number
}

/** How each check is judged. */
export interface AnalysisSpec {
  /** Fewer canary requests than this in a window → inconclusive (wait, not failed). */
  minRequests: number
  /** This many failed checks (not necessarily consecutive) → rollback. */
  maxFailedChecks: number
  /** Absolute floor of the canary's success rate, percent. */
  successRate?: { min: number }
  /** Absolute ceiling of the canary's p99 latency, milliseconds. */
  latencyP99Ms?: { max: number }
  baseline: BaselineSpec
  /** Metrics from providers (Prometheus, HTTP), judged beside the built-in figures. */
  metrics?: MetricSpec[]
  /** User template variables of the metrics' queries and URLs. */
  variables?: Record<string, string>
  /** Synthetic traffic while the rollout analyses (low-traffic routes). */
  loadTest?: LoadTestSpec
}

/** A webhook: `event` ones are told about transitions; the `confirm-promotion` one is a gate asked before promotion. */
export interface WebhookSpec {
  type: 'event' | 'confirm-promotion'
  url: string
  /** Events sent (event webhooks only); all when absent in the input. */
  events: RolloutEvent[]
  /** Per attempt. */
  timeoutMs: number
  /** Extra attempts after a failure (event webhooks; the gate is asked again next interval instead). */
  retries: number
}

/** A step that moves only one segment's users: the segment's canary weight becomes `weight`. */
export interface SegmentStep {
  segment: string
  weight: number
}

/** One step: a number is the canary weight for everyone (outside targeted segments already above it). */
export type Step = number | SegmentStep

/** The shadow phase: the canary judged on mirrored copies of stable's requests, at 0 % user exposure. */
export interface ShadowSpec {
  /** Share of stable's matching requests copied to the canary, percent. */
  percent: number
  /** How long the phase lasts at least (it ends at the first passing check after this). */
  durationMs: number
  /** Methods copied (default GET, HEAD: copies of writes would write twice). */
  methods: string[]
  /** Largest request body copied. */
  maxBodyBytes: number
  /** Most copies whose status class differs from stable's answer, percent, before the check fails. */
  maxMismatchRate: number
}

/** A validated, normalised plan. Validating a normalised plan returns an equal plan (idempotent). */
export interface RolloutPlan {
  /** Version that receives the steps' weights. */
  canary: string
  /** Version that receives the rest; default: the other version with the highest weight at start. */
  stable?: string
  /** `blue-green`: one switch 0 → 100 after an optional preview, then a rollback window. Absent: canary. */
  strategy?: 'blue-green'
  /**
   * Analysed steps (canary strategy): numbers strictly increasing in (0, 100),
   * segment steps strictly increasing per segment in (0, 100]; promotion to
   * 100 follows the last one. Empty for blue-green.
   */
  steps: Step[]
  /** Blue/green: a phase at 0 % (canary reachable by override or segment) analysed for at least this long before the switch. */
  preview?: { durationMs: number }
  /** Blue/green: after the switch, how long analysis goes on; a failed check switches back at once. */
  rollbackWindowMs?: number
  /** The shadow phase that runs before any user reaches the canary. */
  shadow?: ShadowSpec
  intervalMs: number
  analysis: AnalysisSpec
  promotion: 'auto' | 'manual'
  /**
   * After promotion, stable takes the canary's upstream and returns to 100 %,
   * canary to 0 %, in one change (Flagger's "primary gets the new image"),
   * ready for the next release with the same names. Absent: false.
   */
  finalize?: true
  webhooks: WebhookSpec[]
}

/** Defaults written down in one place (and in docs/rollouts.md, "The plan"). */
const PLAN_DEFAULTS = Object.freeze({
  intervalMs: 60_000,
  minRequests: 100,
  maxFailedChecks: 3,
  maxErrorRateRatio: 2,
  maxLatencyP99Ratio: 1.5,
  judge: 'mann-whitney' as Judge,
  confidence: 0.99,
  promotion: 'auto' as const,
  webhookTimeoutMs: 5000,
  webhookRetries: 2
})

/** Limits that keep a plan sane (and a typo from meaning "every millisecond"). */
const PLAN_LIMITS = Object.freeze({ minIntervalMs: 100, maxIntervalMs: 86_400_000, maxSteps: 100, maxWebhooks: 10, maxPhaseMs: 7 * 86_400_000 })

/** Shadow-phase defaults (docs/release.md). */
export const SHADOW_DEFAULTS = Object.freeze({ methods: MIRROR_DEFAULTS.methods, maxBodyBytes: MIRROR_DEFAULTS.maxBodyBytes, maxMismatchRate: 5 })

/** Blue/green: the rollback window is this many intervals unless given. */
const ROLLBACK_WINDOW_INTERVALS = 3

/** The version a plan may omit `canary` for: a route of exactly two versions, one of them named so. */
export const STABLE_NAME = 'stable'

/** The canary weight of a numeric step, or undefined for a segment step. */
export function stepWeight (s: Step): number | undefined {
  return typeof s === 'number' ? s : undefined
}

/** Collects problems instead of stopping at the first: a 400 should say everything that is wrong at once. */
class Problems {
  readonly list: string[] = []
  add (at: string, what: string): void {
    this.list.push(`${at}: ${what}`)
  }

  keys (o: Obj, allowed: readonly string[], at: string): void {
    for (const k of Object.keys(o)) if (!allowed.includes(k)) this.add(`${at}${k}`, `unknown key (allowed: ${allowed.join(', ')})`)
  }

  num (v: unknown, at: string, opts: { min?: number; max?: number; int?: boolean; gt?: number; lt?: number }): number | undefined {
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      this.add(at, `must be a number, got ${JSON.stringify(v) ?? String(v)}`)
      return undefined
    }
    if (opts.int === true && !Number.isInteger(v)) this.add(at, `must be a whole number, got ${v}`)
    else if (opts.min !== undefined && v < opts.min) this.add(at, `must be >= ${opts.min}, got ${v}`)
    else if (opts.max !== undefined && v > opts.max) this.add(at, `must be <= ${opts.max}, got ${v}`)
    else if (opts.gt !== undefined && v <= opts.gt) this.add(at, `must be > ${opts.gt}, got ${v}`)
    else if (opts.lt !== undefined && v >= opts.lt) this.add(at, `must be < ${opts.lt}, got ${v}`)
    else return v
    return undefined
  }
}

/** A plan that failed validation: 400 `CANARYD_ERR_INVALID_PLAN`, `problems` lists each one. */
export class PlanError extends CanarydError {
  readonly problems: string[]
  constructor (problems: string[]) {
    super('CANARYD_ERR_INVALID_PLAN', `invalid rollout plan: ${problems.join('; ')}`)
    this.name = 'PlanError'
    this.problems = problems
  }
}

/**
 * Expands Flagger's `stepWeight` + `maxWeight` into explicit steps:
 * stepWeight, 2·stepWeight, … up to maxWeight (maxWeight itself always
 * included as the last step). Exported for the docs' examples and tests.
 */
export function expandStepWeight (stepWeight: number, maxWeight: number): number[] {
  const steps: number[] = []
  // integer ppm arithmetic: 4-decimal weights never accumulate float error
  const step = Math.round(stepWeight * 10_000)
  const max = Math.round(maxWeight * 10_000)
  for (let w = step; w < max; w += step) steps.push(w / 10_000)
  steps.push(max / 10_000)
  return steps
}

/** Top-level keys of a plan. */
const PLAN_KEYS: readonly string[] = ['canary', 'stable', 'strategy', 'steps', 'stepWeight', 'maxWeight', 'intervalMs', 'analysis', 'shadow', 'preview', 'rollbackWindowMs', 'promotion', 'finalize', 'webhooks']

/** What validatePlan knows of the route, when it knows it. */
export interface PlanContext {
  /** The route's segment names (segment steps must name one). */
  segments?: readonly string[]
  /** Whether the route has an override header or cookie (analysis.loadTest needs one). */
  override?: boolean
}

/** What a plan needs to know of the route it runs on (config validation and a start check the same). */
export function planContext (spec: Pick<RouteSpec, 'segments' | 'override'>): PlanContext {
  return { segments: (spec.segments ?? []).map((s) => s.name), override: spec.override.header !== undefined || spec.override.cookie !== undefined }
}

/**
 * Validates a raw plan (admin body, config block or persisted record) and
 * returns it normalised with defaults, or throws PlanError listing every
 * problem. When `versions` (the route's version names) is given, `canary` and
 * `stable` must name versions of the route and differ. Each section has its
 * own validator below; all of them add to one problem list, in key order.
 */
export function validatePlan (raw: unknown, versions?: readonly string[], ctx: PlanContext = {}): RolloutPlan {
  if (!isObj(raw)) throw new PlanError(['plan: must be an object (a JSON object or a YAML mapping)'])
  const p = new Problems()
  p.keys(raw, PLAN_KEYS, '')
  const { canary, stable } = checkVersions(raw, versions, p)
  let blueGreen = false
  if (raw.strategy !== undefined && raw.strategy !== 'canary') {
    if (raw.strategy === 'blue-green') blueGreen = true
    else p.add('strategy', `must be "canary" or "blue-green", got ${JSON.stringify(raw.strategy)}`)
  }
  let steps: Step[] = []
  if (!blueGreen) steps = checkSteps(raw, ctx, p)
  // `steps: []` is what normalising writes for a blue-green plan: it validates again unchanged
  else if ((raw.steps !== undefined && !(Array.isArray(raw.steps) && raw.steps.length === 0)) || raw.stepWeight !== undefined || raw.maxWeight !== undefined) p.add('steps', 'a blue-green plan has no steps: it switches 0 → 100 once (use preview and rollbackWindowMs)')
  const intervalMs = raw.intervalMs === undefined ? PLAN_DEFAULTS.intervalMs : p.num(raw.intervalMs, 'intervalMs', { int: true, min: PLAN_LIMITS.minIntervalMs, max: PLAN_LIMITS.maxIntervalMs }) ?? 0
  const analysis = checkAnalysis(raw.analysis, versions, ctx, canary, p)
  const shadow = raw.shadow === undefined ? undefined : checkShadow(raw.shadow, p)
  if (blueGreen && shadow !== undefined) p.add('shadow', 'is for canary plans; a blue-green plan analyses its preview instead')
  const bg = checkBlueGreen(raw, blueGreen, intervalMs, p)
  const { promotion, finalize } = checkPromotion(raw.promotion, raw.finalize, p)
  const webhooks = checkWebhooks(raw.webhooks, p)
  if (p.list.length > 0) throw new PlanError(p.list)
  const plan: RolloutPlan = { canary, steps, intervalMs, analysis, promotion, webhooks }
  if (stable !== undefined) plan.stable = stable
  if (blueGreen) {
    plan.strategy = 'blue-green'
    if (bg.preview !== undefined) plan.preview = bg.preview
    plan.rollbackWindowMs = bg.rollbackWindowMs
  }
  if (shadow !== undefined) plan.shadow = shadow
  if (finalize) plan.finalize = true
  return plan
}

/** `shadow`: percent and durationMs required; methods, maxBodyBytes, maxMismatchRate defaulted. */
function checkShadow (raw: unknown, p: Problems): ShadowSpec | undefined {
  if (!isObj(raw)) {
    p.add('shadow', 'must be an object like {"percent": 20, "durationMs": 600000}')
    return undefined
  }
  p.keys(raw, ['percent', 'durationMs', 'methods', 'maxBodyBytes', 'maxMismatchRate'], 'shadow.')
  const percent = p.num(raw.percent, 'shadow.percent', { gt: 0, max: 100 })
  if (percent !== undefined && checkWeight(percent) !== undefined) p.add('shadow.percent', checkWeight(percent)!)
  const durationMs = p.num(raw.durationMs, 'shadow.durationMs', { int: true, min: PLAN_LIMITS.minIntervalMs, max: PLAN_LIMITS.maxPhaseMs })
  let methods = [...SHADOW_DEFAULTS.methods]
  if (raw.methods !== undefined) {
    if (!Array.isArray(raw.methods) || raw.methods.length === 0 || !raw.methods.every((m) => typeof m === 'string' && /^[A-Za-z]{1,20}$/.test(m))) p.add('shadow.methods', 'must be a non-empty array of method names, e.g. ["GET","HEAD"]')
    else methods = [...new Set((raw.methods as string[]).map((m) => m.toUpperCase()))]
  }
  const maxBodyBytes = raw.maxBodyBytes === undefined ? SHADOW_DEFAULTS.maxBodyBytes : p.num(raw.maxBodyBytes, 'shadow.maxBodyBytes', { int: true, min: 0, max: 16_777_216 })
  const maxMismatchRate = raw.maxMismatchRate === undefined ? SHADOW_DEFAULTS.maxMismatchRate : p.num(raw.maxMismatchRate, 'shadow.maxMismatchRate', { min: 0, max: 100 })
  if (percent === undefined || durationMs === undefined || maxBodyBytes === undefined || maxMismatchRate === undefined) return undefined
  return { percent, durationMs, methods, maxBodyBytes, maxMismatchRate }
}

/** `preview` and `rollbackWindowMs`: blue-green plans only. */
function checkBlueGreen (raw: Obj, blueGreen: boolean, intervalMs: number, p: Problems): { preview?: { durationMs: number }; rollbackWindowMs: number } {
  const out: { preview?: { durationMs: number }; rollbackWindowMs: number } = { rollbackWindowMs: ROLLBACK_WINDOW_INTERVALS * intervalMs }
  if (!blueGreen) {
    for (const k of ['preview', 'rollbackWindowMs']) if (raw[k] !== undefined) p.add(k, 'is for blue-green plans ("strategy": "blue-green")')
    return out
  }
  if (raw.preview !== undefined) {
    if (!isObj(raw.preview)) p.add('preview', 'must be an object like {"durationMs": 300000}')
    else {
      p.keys(raw.preview, ['durationMs'], 'preview.')
      const d = p.num(raw.preview.durationMs, 'preview.durationMs', { int: true, min: 0, max: PLAN_LIMITS.maxPhaseMs })
      if (d !== undefined) out.preview = { durationMs: d }
    }
  }
  if (raw.rollbackWindowMs !== undefined) out.rollbackWindowMs = p.num(raw.rollbackWindowMs, 'rollbackWindowMs', { int: true, min: 0, max: PLAN_LIMITS.maxPhaseMs }) ?? 0
  return out
}

/** `canary` (required) and `stable` (optional): version names, different, of the route when `versions` is given. */
function checkVersions (raw: Obj, versions: readonly string[] | undefined, p: Problems): { canary: string; stable: string | undefined } {
  let canary = ''
  if (raw.canary === undefined && versions !== undefined && versions.length === 2 && versions.includes(STABLE_NAME) && (raw.stable === undefined || raw.stable === STABLE_NAME)) {
    // the next release on a stable/canary pair: the version to roll out is the one that is not `stable`
    canary = versions.find((v) => v !== STABLE_NAME)!
  } else if (raw.canary === undefined && versions !== undefined) {
    p.add('canary', `is required: route has ${versions.join(', ')}; name the version to roll out (it may be left out only when a route has exactly two versions and one is named "${STABLE_NAME}")`)
  } else if (typeof raw.canary !== 'string' || raw.canary === '') p.add('canary', 'is required: the name of the version to roll out')
  else canary = raw.canary
  let stable: string | undefined
  if (raw.stable !== undefined) {
    if (typeof raw.stable !== 'string' || raw.stable === '') p.add('stable', 'must be a version name')
    else stable = raw.stable
  }
  if (versions !== undefined) {
    if (canary !== '' && !versions.includes(canary)) p.add('canary', `${JSON.stringify(canary)} is not a version of the route (${versions.join(', ')})`)
    if (stable !== undefined && !versions.includes(stable)) p.add('stable', `${JSON.stringify(stable)} is not a version of the route (${versions.join(', ')})`)
  }
  if (stable !== undefined && stable === canary) p.add('stable', 'must differ from canary')
  return { canary, stable }
}

/**
 * The analysed steps, from `steps` or from `stepWeight` + `maxWeight`; a
 * last step of 100 is dropped (it is the promotion). "No step below 100" is
 * reported only when nothing else is wrong, so it never hides the real cause.
 */
function checkSteps (raw: Obj, ctx: PlanContext, p: Problems): Step[] {
  let steps: Step[] = []
  if (raw.steps !== undefined && (raw.stepWeight !== undefined || raw.maxWeight !== undefined)) {
    p.add('steps', 'give either steps or stepWeight + maxWeight, not both')
  } else if (raw.steps !== undefined) {
    steps = checkStepList(raw.steps, ctx, p)
  } else if (raw.stepWeight !== undefined || raw.maxWeight !== undefined) {
    steps = checkStepWeight(raw.stepWeight, raw.maxWeight ?? 100, p)
  } else {
    p.add('steps', 'is required (or stepWeight + maxWeight)')
  }
  // 100 is promotion, not a step to analyse: with no stable traffic there is no baseline
  if (steps.length > 0 && steps[steps.length - 1] === 100) steps.pop()
  const numbers = steps.filter((s) => typeof s === 'number')
  if (numbers.includes(100)) p.add('steps', 'only the last step may be 100 (the promotion)')
  if (steps.length === 0 && p.list.length === 0) p.add('steps', 'need at least one step below 100 to analyse')
  return steps
}

/**
 * An explicit `steps` list: numbers (valid weights above 0, strictly
 * increasing) and segment steps (a segment of the route, a weight above 0
 * and up to 100, strictly increasing per segment: a step never moves a
 * user back to stable); [] when anything is wrong.
 */
function checkStepList (raw: unknown, ctx: PlanContext, p: Problems): Step[] {
  if (!Array.isArray(raw) || raw.length === 0) {
    p.add('steps', 'must be a non-empty array of canary weights (percent)')
    return []
  }
  if (raw.length > PLAN_LIMITS.maxSteps) {
    p.add('steps', `at most ${PLAN_LIMITS.maxSteps} steps`)
    return []
  }
  let ok = true
  const out: Step[] = []
  let lastNumber: number | undefined
  const lastBySegment = new Map<string, number>()
  raw.forEach((s, i) => {
    if (isObj(s)) {
      const at = `steps[${i}]`
      p.keys(s, ['segment', 'weight'], `${at}.`)
      if (typeof s.segment !== 'string' || s.segment === '') { p.add(`${at}.segment`, 'must be the name of a segment of the route'); ok = false; return }
      if (ctx.segments !== undefined && !ctx.segments.includes(s.segment)) {
        p.add(`${at}.segment`, `${JSON.stringify(s.segment)} is not a segment of the route (${ctx.segments.length === 0 ? 'it has none' : ctx.segments.join(', ')})`)
        ok = false
        return
      }
      const bad = checkWeight(s.weight)
      if (bad !== undefined) { p.add(`${at}.weight`, bad); ok = false; return }
      const w = s.weight as number
      if (w === 0) { p.add(`${at}.weight`, 'must be > 0'); ok = false; return }
      const before = lastBySegment.get(s.segment)
      if (before !== undefined && w <= before) { p.add(`${at}.weight`, `must be greater than segment ${s.segment}'s step before (${before}), got ${w}`); ok = false; return }
      lastBySegment.set(s.segment, w)
      out.push({ segment: s.segment, weight: w })
      return
    }
    const bad = checkWeight(s)
    if (bad !== undefined) { p.add(`steps[${i}]`, `${bad}`); ok = false; return }
    if (s === 0) { p.add(`steps[${i}]`, 'must be > 0'); ok = false; return }
    const w = s as number
    if (lastNumber !== undefined && w <= lastNumber) { p.add(`steps[${i}]`, `must be greater than the step before (${lastNumber}), got ${w}`); ok = false; return }
    lastNumber = w
    out.push(w)
  })
  return ok ? out : []
}

/** Flagger's `stepWeight` + `maxWeight` (default 100), expanded; [] when anything is wrong. */
function checkStepWeight (rawStep: unknown, rawMax: unknown, p: Problems): number[] {
  const sw = p.num(rawStep, 'stepWeight', { gt: 0, max: 100 })
  const mw = p.num(rawMax, 'maxWeight', { gt: 0, max: 100 })
  if (sw !== undefined && checkWeight(sw) !== undefined) p.add('stepWeight', checkWeight(sw)!)
  else if (mw !== undefined && checkWeight(mw) !== undefined) p.add('maxWeight', checkWeight(mw)!)
  else if (sw !== undefined && mw !== undefined) {
    if (sw > mw) p.add('stepWeight', `must be <= maxWeight (${mw}), got ${sw}`)
    else if (Math.ceil(mw / sw) > PLAN_LIMITS.maxSteps) p.add('stepWeight', `gives more than ${PLAN_LIMITS.maxSteps} steps up to ${mw}`)
    else return expandStepWeight(sw, mw)
  }
  return []
}

/** The `analysis` block, every key defaulted. */
function checkAnalysis (raw: unknown, versions: readonly string[] | undefined, ctx: PlanContext, canary: string, p: Problems): AnalysisSpec {
  const analysis: AnalysisSpec = {
    minRequests: PLAN_DEFAULTS.minRequests,
    maxFailedChecks: PLAN_DEFAULTS.maxFailedChecks,
    baseline: { maxErrorRateRatio: PLAN_DEFAULTS.maxErrorRateRatio, maxLatencyP99Ratio: PLAN_DEFAULTS.maxLatencyP99Ratio, judge: PLAN_DEFAULTS.judge, confidence: PLAN_DEFAULTS.confidence }
  }
  const a = raw === undefined ? {} : raw
  if (!isObj(a)) {
    p.add('analysis', 'must be an object')
    return analysis
  }
  p.keys(a, ['minRequests', 'maxFailedChecks', 'successRate', 'latencyP99Ms', 'baseline', 'metrics', 'variables', 'loadTest'], 'analysis.')
  if (a.minRequests !== undefined) analysis.minRequests = p.num(a.minRequests, 'analysis.minRequests', { int: true, min: 1 }) ?? 1
  if (a.maxFailedChecks !== undefined) analysis.maxFailedChecks = p.num(a.maxFailedChecks, 'analysis.maxFailedChecks', { int: true, min: 1, max: 1000 }) ?? 1
  if (a.successRate !== undefined) {
    const min = checkBound(a.successRate, 'analysis.successRate', 'min', '{"min": 99}', { min: 0, max: 100 }, p)
    if (min !== undefined) analysis.successRate = { min }
  }
  if (a.latencyP99Ms !== undefined) {
    const max = checkBound(a.latencyP99Ms, 'analysis.latencyP99Ms', 'max', '{"max": 500}', { gt: 0 }, p)
    if (max !== undefined) analysis.latencyP99Ms = { max }
  }
  if (a.baseline !== undefined) checkBaseline(a.baseline, analysis.baseline, p)
  const variables = checkVariables(a.variables, p)
  if (variables !== undefined && Object.keys(variables).length !== 0) analysis.variables = variables
  const metrics = checkMetrics(a.metrics, variables, versions, canary, p)
  if (metrics !== undefined && metrics.length !== 0) analysis.metrics = metrics
  const loadTest = checkLoadTest(a.loadTest, versions, ctx.override, p)
  if (loadTest !== undefined) analysis.loadTest = loadTest
  return analysis
}

/** A one-key threshold object such as `{"min": 99}`: the number, or undefined when invalid. */
function checkBound (raw: unknown, at: string, key: string, example: string, range: { min?: number; max?: number; gt?: number }, p: Problems): number | undefined {
  if (!isObj(raw)) {
    p.add(at, `must be an object like ${example}`)
    return undefined
  }
  p.keys(raw, [key], `${at}.`)
  return p.num(raw[key], `${at}.${key}`, range)
}

/** `analysis.baseline`: writes the given keys over the defaults in `baseline`. */
function checkBaseline (raw: unknown, baseline: BaselineSpec, p: Problems): void {
  if (!isObj(raw)) {
    p.add('analysis.baseline', 'must be an object')
    return
  }
  p.keys(raw, ['maxErrorRateRatio', 'maxLatencyP99Ratio', 'judge', 'confidence'], 'analysis.baseline.')
  if (raw.maxErrorRateRatio !== undefined) baseline.maxErrorRateRatio = p.num(raw.maxErrorRateRatio, 'analysis.baseline.maxErrorRateRatio', { min: 1 }) ?? 1
  if (raw.maxLatencyP99Ratio !== undefined) baseline.maxLatencyP99Ratio = p.num(raw.maxLatencyP99Ratio, 'analysis.baseline.maxLatencyP99Ratio', { min: 1 }) ?? 1
  if (raw.confidence !== undefined) baseline.confidence = p.num(raw.confidence, 'analysis.baseline.confidence', { gt: 0.5, lt: 1 }) ?? 0.99
  if (raw.judge !== undefined) {
    if (typeof raw.judge !== 'string' || !(JUDGES as readonly string[]).includes(raw.judge)) p.add('analysis.baseline.judge', `must be one of ${JUDGES.join(', ')}, got ${JSON.stringify(raw.judge)}`)
    else baseline.judge = raw.judge as Judge
  }
}

/**
 * `promotion`: "auto" (default), "manual", or {"mode": …, "finalize": bool};
 * a top-level `finalize` is what normalising writes (so a normalised plan
 * validates again unchanged).
 */
function checkPromotion (raw: unknown, rawFinalize: unknown, p: Problems): { promotion: 'auto' | 'manual'; finalize: boolean } {
  let finalize = false
  if (rawFinalize !== undefined) {
    if (typeof rawFinalize !== 'boolean') p.add('finalize', `must be true or false, got ${JSON.stringify(rawFinalize)}`)
    else finalize = rawFinalize
  }
  if (raw === undefined) return { promotion: PLAN_DEFAULTS.promotion, finalize }
  if (raw === 'auto' || raw === 'manual') return { promotion: raw, finalize }
  if (isObj(raw)) {
    p.keys(raw, ['mode', 'finalize'], 'promotion.')
    let mode: 'auto' | 'manual' = PLAN_DEFAULTS.promotion
    if (raw.mode === 'auto' || raw.mode === 'manual') mode = raw.mode
    else if (raw.mode !== undefined) p.add('promotion.mode', `must be "auto" or "manual", got ${JSON.stringify(raw.mode)}`)
    if (raw.finalize !== undefined) {
      if (typeof raw.finalize !== 'boolean') p.add('promotion.finalize', `must be true or false, got ${JSON.stringify(raw.finalize)}`)
      else finalize = raw.finalize
    }
    return { promotion: mode, finalize }
  }
  p.add('promotion', `must be "auto", "manual" or {"mode": "auto", "finalize": true}, got ${JSON.stringify(raw)}`)
  return { promotion: PLAN_DEFAULTS.promotion, finalize }
}

/** `webhooks`: at most PLAN_LIMITS.maxWebhooks, at most one confirm-promotion gate. */
function checkWebhooks (raw: unknown, p: Problems): WebhookSpec[] {
  const webhooks: WebhookSpec[] = []
  if (raw === undefined) return webhooks
  if (!Array.isArray(raw)) p.add('webhooks', 'must be an array')
  else if (raw.length > PLAN_LIMITS.maxWebhooks) p.add('webhooks', `at most ${PLAN_LIMITS.maxWebhooks}`)
  else {
    let gates = 0
    raw.forEach((w, i) => {
      const hook = checkWebhook(w, `webhooks[${i}]`, p)
      if (hook === undefined) return
      if (hook.type === 'confirm-promotion' && ++gates > 1) p.add(`webhooks[${i}].type`, 'only one confirm-promotion gate per plan')
      webhooks.push(hook)
    })
  }
  return webhooks
}

/** One webhook; undefined when it is not an object or its type is unknown (nothing else can be judged). */
function checkWebhook (w: unknown, at: string, p: Problems): WebhookSpec | undefined {
  if (!isObj(w)) { p.add(at, 'must be an object with url'); return undefined }
  p.keys(w, ['type', 'url', 'events', 'timeoutMs', 'retries'], `${at}.`)
  const type = w.type === undefined ? 'event' : w.type
  if (type !== 'event' && type !== 'confirm-promotion') { p.add(`${at}.type`, `must be "event" or "confirm-promotion", got ${JSON.stringify(type)}`); return undefined }
  const url = checkWebhookUrl(w.url, `${at}.url`, p)
  const events = checkEvents(w.events, type, `${at}.events`, p)
  const timeoutMs = w.timeoutMs === undefined ? PLAN_DEFAULTS.webhookTimeoutMs : p.num(w.timeoutMs, `${at}.timeoutMs`, { int: true, min: 1, max: 60_000 }) ?? 1
  const retries = w.retries === undefined ? PLAN_DEFAULTS.webhookRetries : p.num(w.retries, `${at}.retries`, { int: true, min: 0, max: 5 }) ?? 0
  return { type, url, events, timeoutMs, retries }
}

/** An http:// or https:// URL, normalised; '' when invalid. */
function checkWebhookUrl (raw: unknown, at: string, p: Problems): string {
  try {
    const u = new URL(String(raw))
    if (typeof raw !== 'string' || (u.protocol !== 'http:' && u.protocol !== 'https:')) throw new TypeError('scheme')
    return u.href
  } catch {
    p.add(at, `must be an http:// or https:// URL, got ${JSON.stringify(raw) ?? String(raw)}`)
    return ''
  }
}

/**
 * The events an event webhook is sent (all when absent, duplicates dropped).
 * A confirm-promotion gate is sent none; it may say so with `[]`, which is
 * what normalising writes, so a normalised plan validates again unchanged.
 */
function checkEvents (raw: unknown, type: WebhookSpec['type'], at: string, p: Problems): RolloutEvent[] {
  if (type === 'confirm-promotion') {
    if (raw !== undefined && !(Array.isArray(raw) && raw.length === 0)) p.add(at, 'a confirm-promotion gate has no events')
    return []
  }
  if (raw === undefined) return [...ROLLOUT_EVENTS]
  if (!Array.isArray(raw) || raw.length === 0) {
    p.add(at, `must be a non-empty array of ${ROLLOUT_EVENTS.join(', ')}`)
    return [...ROLLOUT_EVENTS]
  }
  const events: RolloutEvent[] = []
  raw.forEach((e, j) => {
    if (typeof e !== 'string' || !(ROLLOUT_EVENTS as readonly string[]).includes(e)) p.add(`${at}[${j}]`, `unknown event ${JSON.stringify(e)} (known: ${ROLLOUT_EVENTS.join(', ')})`)
    else if (!events.includes(e as RolloutEvent)) events.push(e as RolloutEvent)
  })
  return events
}
