/**
 * Rollout plans: what a progressive delivery does (the steps, how often it
 * judges, what counts as worse, who to tell) and their validation. Pure data
 * and pure functions; the same validator serves the admin API (400 with every
 * problem listed), the `rollout` block of a route in config and the state
 * file on restart.
 */
import { CanarydError } from '../errors.js'
import { checkWeight } from '../routing/weights.js'

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

/** Baseline judges: `mann-whitney` (statistical, default), `ratio` (plain ratios, Flagger-like), `none` (thresholds only). */
const JUDGES = ['mann-whitney', 'ratio', 'none'] as const

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

/** A validated, normalised plan. Validating a normalised plan returns an equal plan (idempotent). */
export interface RolloutPlan {
  /** Version that receives the steps' weights. */
  canary: string
  /** Version that receives the rest; default: the other version with the highest weight at start. */
  stable?: string
  /** Analysed canary weights, strictly increasing, each in (0, 100); promotion to 100 follows the last one. */
  steps: number[]
  intervalMs: number
  analysis: AnalysisSpec
  promotion: 'auto' | 'manual'
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
const PLAN_LIMITS = Object.freeze({ minIntervalMs: 100, maxIntervalMs: 86_400_000, maxSteps: 100, maxWebhooks: 10 })

type Obj = Record<string, unknown>

function isObj (v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
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
const PLAN_KEYS: readonly string[] = ['canary', 'stable', 'steps', 'stepWeight', 'maxWeight', 'intervalMs', 'analysis', 'promotion', 'webhooks']

/**
 * Validates a raw plan (admin body, config block or persisted record) and
 * returns it normalised with defaults, or throws PlanError listing every
 * problem. When `versions` (the route's version names) is given, `canary` and
 * `stable` must name versions of the route and differ. Each section has its
 * own validator below; all of them add to one problem list, in key order.
 */
export function validatePlan (raw: unknown, versions?: readonly string[]): RolloutPlan {
  if (!isObj(raw)) throw new PlanError(['plan: must be a JSON object'])
  const p = new Problems()
  p.keys(raw, PLAN_KEYS, '')
  const { canary, stable } = checkVersions(raw, versions, p)
  const steps = checkSteps(raw, p)
  const intervalMs = raw.intervalMs === undefined ? PLAN_DEFAULTS.intervalMs : p.num(raw.intervalMs, 'intervalMs', { int: true, min: PLAN_LIMITS.minIntervalMs, max: PLAN_LIMITS.maxIntervalMs }) ?? 0
  const analysis = checkAnalysis(raw.analysis, p)
  const promotion = checkPromotion(raw.promotion, p)
  const webhooks = checkWebhooks(raw.webhooks, p)
  if (p.list.length > 0) throw new PlanError(p.list)
  const plan: RolloutPlan = { canary, steps, intervalMs, analysis, promotion, webhooks }
  if (stable !== undefined) plan.stable = stable
  return plan
}

/** `canary` (required) and `stable` (optional): version names, different, of the route when `versions` is given. */
function checkVersions (raw: Obj, versions: readonly string[] | undefined, p: Problems): { canary: string; stable: string | undefined } {
  let canary = ''
  if (typeof raw.canary !== 'string' || raw.canary === '') p.add('canary', 'is required: the name of the version to roll out')
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
function checkSteps (raw: Obj, p: Problems): number[] {
  let steps: number[] = []
  if (raw.steps !== undefined && (raw.stepWeight !== undefined || raw.maxWeight !== undefined)) {
    p.add('steps', 'give either steps or stepWeight + maxWeight, not both')
  } else if (raw.steps !== undefined) {
    steps = checkStepList(raw.steps, p)
  } else if (raw.stepWeight !== undefined || raw.maxWeight !== undefined) {
    steps = checkStepWeight(raw.stepWeight, raw.maxWeight ?? 100, p)
  } else {
    p.add('steps', 'is required (or stepWeight + maxWeight)')
  }
  // 100 is promotion, not a step to analyse: with no stable traffic there is no baseline
  if (steps.length > 0 && steps[steps.length - 1] === 100) steps.pop()
  if (steps.length === 0 && p.list.length === 0) p.add('steps', 'need at least one step below 100 to analyse')
  return steps
}

/** An explicit `steps` list: valid weights above 0, strictly increasing; [] when anything is wrong. */
function checkStepList (raw: unknown, p: Problems): number[] {
  if (!Array.isArray(raw) || raw.length === 0) {
    p.add('steps', 'must be a non-empty array of canary weights (percent)')
    return []
  }
  if (raw.length > PLAN_LIMITS.maxSteps) {
    p.add('steps', `at most ${PLAN_LIMITS.maxSteps} steps`)
    return []
  }
  let ok = true
  raw.forEach((s, i) => {
    const bad = checkWeight(s)
    if (bad !== undefined) { p.add(`steps[${i}]`, bad); ok = false } else if (s === 0) { p.add(`steps[${i}]`, 'must be > 0'); ok = false }
  })
  if (!ok) return []
  const ws = raw as number[]
  for (let i = 1; i < ws.length; i++) {
    if (ws[i]! <= ws[i - 1]!) { p.add(`steps[${i}]`, `must be greater than the step before (${ws[i - 1]}), got ${ws[i]}`); ok = false }
  }
  return ok ? ws.slice() : []
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
function checkAnalysis (raw: unknown, p: Problems): AnalysisSpec {
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
  p.keys(a, ['minRequests', 'maxFailedChecks', 'successRate', 'latencyP99Ms', 'baseline'], 'analysis.')
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

/** `promotion`: "auto" (default) or "manual". */
function checkPromotion (raw: unknown, p: Problems): 'auto' | 'manual' {
  if (raw === undefined) return PLAN_DEFAULTS.promotion
  if (raw === 'auto' || raw === 'manual') return raw
  p.add('promotion', `must be "auto" or "manual", got ${JSON.stringify(raw)}`)
  return PLAN_DEFAULTS.promotion
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
