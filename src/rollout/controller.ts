/**
 * The rollout controller of one route: a state machine driven by an interval
 * timer (from an injected Clock) that judges canary against stable from the
 * in-process windows and moves the canary's weight. It never touches a
 * socket or the routing table itself: weights go through the host's
 * `applyWeights` (the control plane's one entry point, the same as the admin
 * API's) and its record through `persist` (the state file).
 */
import { CanarydError } from '../errors.js'
import type { Clock } from './clock.js'
import { judgeCheck, type CheckResult, type Verdict } from './judge.js'
import { baselineVersion, combineMetrics, runMetrics as defaultRunMetrics, type MetricContext, type MetricResult } from './analysis.js'
import { decisionGuidance } from './power.js'
import { judgeSequential } from './sequential.js'
import type { LoadTestSpec, MetricSpec } from '../config/plan.js'
import { ACTIVE_STATES, stepWeight, type RolloutEvent, type RolloutPlan, type RolloutStateName, type Step, type WebhookSpec } from '../config/plan.js'
import { MIRROR_DEFAULTS } from '../config/segments.js'
import type { ShadowPair, SubscribeShadow } from '../metrics/observer.js'
import { jsonEqual, type MirrorSpec, type SegmentSpec } from '../routing/spec.js'
import { SampleWindow, type WindowSnapshot } from './window.js'

/** How many recent checks and history entries a record keeps (the state file stays small). */
export const RECORD_LIMITS = Object.freeze({ checks: 20, history: 100 })

/**
 * The phases of a rollout. Canary: `shadow` (optional, 0 % users, judged on
 * mirrored copies) then `steps`. Blue/green: `preview` (optional, 0 %,
 * reachable by override or segment) then the switch to 100 % and
 * `rollback-window`. A record without a phase (written before phases
 * existed) is in `steps`.
 */
export type Phase = 'shadow' | 'preview' | 'steps' | 'rollback-window'

/** The shadow judge's own figures of a check: copies paired with stable's answers to the same requests. */
export interface ShadowFigures {
  /** Copies whose canary outcome and stable answer were both known. */
  pairs: number
  /** Pairs whose status class (2xx, 3xx, 4xx, 5xx; no answer counts as its own class) differed. */
  mismatches: number
  /** mismatches / pairs, percent. */
  mismatchRate: number
  /** Geometric mean of canary latency / stable latency over the pairs (null when none). */
  latencyRatio: number | null
}

/** A check as recorded: when, at which step, and the judge's result. */
export interface CheckRecord extends CheckResult {
  at: string
  /** 1-based step number. */
  step: number
  weight: number
  /** Failed checks so far in this rollout, this one included. */
  failedChecks: number
  /** The phase the check judged (absent: steps). */
  phase?: Phase
  /** Shadow phase: the paired figures (the canary/stable sides above are the copies and stable's answers to them). */
  shadow?: ShadowFigures
  /** Fleet mode: how many instances' traffic the check counted (every instance publishes its windows; the leader merges them). */
  instances?: number
}

/** One transition or notable event. */
export interface HistoryEntry {
  at: string
  event: RolloutEvent | 'promotion-held' | 'restored'
  state: RolloutStateName
  step: number
  weight: number
  reason?: string
}

/** The persisted state of a rollout: JSON, versioned, enough to resume after a restart. */
export interface RolloutRecord {
  v: 1
  route: string
  /** Raised by every save (absent in records written before it): a fleet's leader never writes over a record it has not seen. */
  revision?: number
  plan: RolloutPlan
  /** Resolved stable version (the plan's, or chosen at start). */
  stable: string
  /** All versions of the route at start; versions other than canary and stable stay at 0. */
  versions: string[]
  state: RolloutStateName
  /** 0-based index into plan.steps. */
  stepIndex: number
  /** Canary weight in force. */
  weight: number
  failedChecks: number
  startedAt: string
  updatedAt: string
  /** The state `resume` goes back to. */
  pausedFrom?: 'progressing' | 'awaiting-promotion'
  /** Why the rollout ended or is held (rollback reason, abort, gate answer). */
  reason?: string
  checks: CheckRecord[]
  history: HistoryEntry[]
  /** The phase (absent in records written before phases: steps). */
  phase?: Phase
  /** When the phase began (shadow, preview and rollback-window last at least their duration from here). */
  phaseStartedAt?: string
  /** Canary weight per segment the plan's steps target, once a step moved it. */
  segmentWeights?: Record<string, number>
  /** The targeted segments as they were at start: restored on rollback or abort (and after a finalized promotion). */
  segmentsBefore?: SegmentSpec[]
  /** Shadow phase: the route's own mirror before the phase replaced it (restored when it ends), null for none. */
  mirrorBefore?: MirrorSpec | null
  /** Blue/green: the weights before the switch; a failure in the rollback window puts exactly these back. */
  switchedFrom?: Record<string, number>
  /** The canary weight the rollout found at start, and whether --from-start overrode it. */
  startedFrom?: { weight: number; fromStart: boolean }
  /** The promotion was finalized: stable took the canary's upstream and returned to 100 %. */
  finalized?: boolean
  /** When the rollout was paused (a phase's minimum duration does not count paused time). */
  pausedAt?: string
  /** The canary's origins before `canaryUpstream` replaced them: put back on rollback or abort. */
  canaryUpstreamBefore?: string[]
}

/** What a rollout change sets besides the weights, in the same atomic write. */
export interface RouteExtras {
  segments?: SegmentSpec[]
  /**
   * The route's segments `segments` was computed from: the store refuses the
   * change (409) when they changed meanwhile (an operator's PUT queued
   * before this step), so a rollout step never overwrites it.
   */
  expectSegments?: SegmentSpec[]
  mirror?: MirrorSpec | null
  upstreams?: Record<string, string[]>
}

/** What the controller reads of the route in force (segments to move, mirror to restore, upstreams to finalize). */
export interface RouteNow {
  segments: SegmentSpec[]
  mirror: MirrorSpec | null
  /** Origins by version name. */
  upstreams: Record<string, string[]>
  /** Per version, a key of its other endpoint settings (balance, discovery, TLS): finalize hands over origins only, so only between equal keys. */
  settings?: Record<string, string>
}

/** What the controller needs of the control plane. */
export interface RolloutHost {
  /**
   * Sets the route's weights (all versions, summing to 100) through the one
   * validated, persisted swap, saving `record` in the same atomic write: a
   * step and its progress (or a rollback and its reason) are never saved apart.
   */
  applyWeights (route: string, weights: Record<string, number>, reason: string, record: RolloutRecord, extras?: RouteExtras): Promise<void> | void
  /** The route in force; needed by plans with segment steps, a shadow phase or finalize. */
  view? (route: string): RouteNow | undefined
  /**
   * A change of segments, mirror or upstreams without weights, with the
   * record in the same write (a rollout a reload ended puts back what it
   * changed; the reload already set the weights).
   */
  applyExtras? (route: string, extras: RouteExtras, reason: string, record: RolloutRecord): Promise<void> | void
  /** Persists the record (the state file): called after every transition and check. */
  persist (route: string, record: RolloutRecord): Promise<void> | void
}

/** Outbound notifications; the controller never awaits `notify`. */
export interface RolloutNotifier {
  /** Fire and forget: sent to each webhook subscribed to `event`. */
  notify (hooks: readonly WebhookSpec[], event: RolloutEvent, record: RolloutRecord, message: string): void
  /** Asks the confirm-promotion gate; resolves (never rejects) with ok=false on non-2xx, timeout or error. */
  confirm (gate: WebhookSpec, record: RolloutRecord): Promise<{ ok: boolean; detail: string }>
}

/** Counters and gauges the controller reports to (canaryd_rollout_*). */
export interface RolloutObserver {
  /** The record changed (state, step). */
  update (record: RolloutRecord): void
  /** A check finished with this verdict. */
  check (route: string, verdict: Verdict): void
  /** A provider metric's value for `version` at a check (null: no data). */
  metric? (route: string, metric: string, version: string, value: number | null): void
  /** Drops the route's provider metric values (fleet mode: another instance leads its rollout now). */
  forgetMetrics? (route: string): void
}

/** A running load test: stopped when the rollout pauses, ends or changes hands. */
export interface LoadHandle {
  /** Stops sending and aborts what is in flight; resolves within a second. */
  stop (): Promise<void>
}

/** Runs a plan's provider metrics; never rejects (a failing provider is an inconclusive result). */
export type MetricRunner = (metrics: readonly MetricSpec[], ctx: MetricContext, opts: { signal: AbortSignal }) => Promise<MetricResult[]>

/** Subscribes a listener to finished requests of (route, version) (`synthetic`: sent by a load test); returns the unsubscribe function. */
export type SubscribeFinish = (route: string, version: string, listener: (status: number, seconds: number, upstreamFailed: boolean, synthetic: boolean) => void) => () => void

/** Subscribes a listener to outlier-detection ejections of (route, version); returns the unsubscribe function. */
export type SubscribeEjection = (route: string, version: string, listener: () => void) => () => void

/** Subscribes a listener to every instance's window snapshots of (route, version) (fleet mode); returns the unsubscribe function. */
export type SubscribeSnapshots = (route: string, version: string, listener: (snapshot: WindowSnapshot, instance: string) => void) => () => void

/** Dependencies of a controller. */
export interface ControllerDeps {
  host: RolloutHost
  clock: Clock
  notifier?: RolloutNotifier
  observer?: RolloutObserver
  subscribe?: SubscribeFinish
  /** Ejections of canary and stable, subscribed and unsubscribed with `subscribe` (a canary ejection fails the check). */
  subscribeEjection?: SubscribeEjection
  /** Called with errors of the background loop (persist or apply failures); the loop continues. */
  onError?: (err: unknown, what: string) => void
  /** Latency reservoir size per version (default: window.ts). */
  reservoir?: number
  /** Mirrored-copy pairs of a route (the shadow phase's evidence). */
  subscribeShadow?: SubscribeShadow
  /**
   * Fleet mode: every instance's windows, merged here, instead of this
   * process's finished requests and ejections (`subscribe` and
   * `subscribeEjection` are then not used).
   */
  subscribeSnapshots?: SubscribeSnapshots
  /** Fleet mode: false while the store cannot be reached; a check then decides nothing (the windows keep filling). */
  canDecide?: () => boolean
  /** Runs the plan's provider metrics (default: rollout/analysis.ts, which queries the providers). */
  runMetrics?: MetricRunner
  /**
   * Starts the plan's synthetic traffic to `versions` of `route` (the
   * manager knows where the proxy listens); undefined when it cannot run
   * here. `failed`: the handle's start failed later (a secret file missing
   * for a moment): the controller tries again an interval later.
   */
  loadTest?: (route: string, spec: LoadTestSpec, versions: readonly string[], failed: () => void) => LoadHandle | undefined
}

/**
 * How often the sequential judge looks at the evidence: a tenth of the
 * interval, between 100 ms and 5 s. Its boundary holds whatever the number
 * of looks, so looking often only makes decisions earlier.
 */
export function lookEveryMs (plan: Pick<RolloutPlan, 'intervalMs' | 'analysis'>): number {
  if (plan.analysis.baseline.judge !== 'sequential') return plan.intervalMs
  return Math.max(100, Math.min(5000, Math.round(plan.intervalMs / 10)))
}

/** How a rollout starts (the next-release rules). */
export interface StartOptions {
  /** The canary's weight when the rollout starts; the first step is then the first one >= it (users never move back). */
  currentWeight?: number
  /** Start at step 1 whatever the canary's weight (moves users back to stable). */
  fromStart?: boolean
  /** New origins for the canary, set in the same change as the first step. */
  canaryUpstream?: string[]
}

/**
 * A status class for the shadow comparison: 2 for 2xx, …; 0 for no answer.
 * 304 counts as 2xx: a copy of a conditional GET answered 304 by stable and
 * 200 by a build with new ETags agrees (both served the resource).
 */
function statusClass (status: number): number {
  if (status === 304) return 2
  return status === 0 ? 0 : Math.floor(status / 100)
}

/**
 * Where a rollout starts when the canary already has `weight` (the next
 * release after a paused or earlier rollout): the first numeric step >= it,
 * so nobody moves back to stable; past the last step, the last step at the
 * current weight (its pass promotes). Segment steps before it are skipped:
 * everyone already has at least their share.
 */
export function startStep (steps: readonly Step[], weight: number): { index: number; weight: number } {
  if (weight <= 0) return { index: 0, weight: steps[0] === undefined ? 0 : stepWeight(steps[0]) ?? 0 }
  for (let i = 0; i < steps.length; i++) {
    const w = stepWeight(steps[i]!)
    if (w !== undefined && w >= weight) return { index: i, weight: w }
  }
  return { index: steps.length - 1, weight }
}

/**
 * Blue/green: whether the preview phase may switch: a preview needs a pass
 * after its duration; without one (a baseline interval) only no failure.
 */
function readyToSwitch (plan: RolloutPlan, verdict: Verdict, done: boolean): boolean {
  return plan.preview === undefined ? verdict !== 'fail' : verdict === 'pass' && done
}

/** A segment's share for the canary as it stands in `s` (pinned canary 100, pinned other 0, else its weight). */
function segmentShare (s: SegmentSpec, canary: string): number {
  if (s.version !== undefined) return s.version === canary ? 100 : 0
  return s.weights?.[canary] ?? 0
}

const NOOP_NOTIFIER: RolloutNotifier = {
  notify () {},
  confirm: async () => ({ ok: true, detail: 'no gate' })
}

/** Converts a canary weight to the full weight map; integer ppm keeps 100 − w exact. */
export function weightsFor (record: Pick<RolloutRecord, 'plan' | 'stable' | 'versions'>, canaryWeight: number): Record<string, number> {
  const out: Record<string, number> = {}
  for (const v of record.versions) out[v] = 0
  const ppm = Math.round(canaryWeight * 10_000)
  out[record.plan.canary] = ppm / 10_000
  out[record.stable] = (1_000_000 - ppm) / 10_000
  return out
}

/** A targeted segment at canary weight `w` (every other version of the route at 0). */
function segmentAt (record: Pick<RolloutRecord, 'plan' | 'stable' | 'versions'>, s: SegmentSpec, w: number): SegmentSpec {
  return { name: s.name, match: s.match, weights: weightsFor(record, w) }
}

/**
 * One route's rollout. All operations (the timer's check and the admin's
 * pause/resume/promote/abort) run one at a time through a promise chain, so
 * a pause arriving while a check awaits the gate webhook applies after it,
 * never in the middle.
 *
 * Transitions (state × phase):
 * - progressing/shadow: every interval one check on the mirrored copies
 *   (shadow judge). pass after shadow.durationMs → the first step; fail →
 *   failedChecks + 1, at maxFailedChecks → `rolled-back` with no user ever
 *   on the canary. The route's own mirror is put back when the phase ends.
 * - progressing/steps: pass → next step (a number moves everyone, a segment
 *   step only that segment; or, after the last step, promotion: `auto` →
 *   100 % and `promoted`; `manual` → `awaiting-promotion`); fail →
 *   failedChecks + 1, at maxFailedChecks → canary 0 % and `rolled-back`;
 *   inconclusive → keep accumulating. A canary ejected by outlier detection
 *   fails the check (see judge.ts).
 * - progressing/preview (blue/green): canary at 0 %, reached by override or
 *   segment; pass after preview.durationMs → the switch to 100 % (`manual`:
 *   awaiting-promotion first), into the rollback window. Without a preview
 *   the phase lasts one interval, with no verdict needed: it takes stable's
 *   baseline, which the rollback window compares the canary with (stable
 *   serves nobody after the switch).
 * - progressing/rollback-window (blue/green): checks go on; one failed
 *   check switches back at once to the weights before the switch
 *   (`rolled-back`); rollbackWindowMs without a failure → `promoted`.
 * - awaiting-promotion: checks go on (a regression found while waiting still
 *   rolls back); `promote` finishes (blue/green: switches).
 * - paused: no checks, weight held; `resume` returns to the previous state
 *   with fresh windows.
 * - abort (from any active state): canary 0 % (blue/green after the
 *   switch: the weights before it), `aborted`.
 * - promoted, rolled-back, aborted are final. Segments the steps moved go
 *   back to their definitions at start on rollback and abort, and after a
 *   finalized promotion; an unfinalized promotion leaves them at 100 %.
 */
export class RolloutController {
  readonly route: string
  readonly windows: { canary: SampleWindow; stable: SampleWindow }
  /** Shadow phase: the copies' outcomes (canary) and stable's answers to the same requests. */
  readonly shadow: { canary: SampleWindow; stable: SampleWindow; pairs: number; mismatches: number; logRatio: number; timed: number }
  #record: RolloutRecord
  /** The last saved record: what readers see, so nobody observes a transition before it is persisted and applied. */
  #committed: RolloutRecord
  readonly #deps: ControllerDeps
  readonly #notifier: RolloutNotifier
  #timer: unknown
  #chain: Promise<unknown> = Promise.resolve()
  #pending: Array<{ event: RolloutEvent; message: string }> = []
  #unsubscribe: Array<() => void> = []
  #unsubscribeShadow: (() => void) | undefined
  /**
   * Blue/green: every stable request since the preview began (never reset
   * by a check), frozen at the switch as the rollback window's baseline:
   * after the switch stable serves nobody, so the canary is compared with
   * what stable did just before. In memory only: after a restart in the
   * window, the absolute thresholds (successRate, latencyP99Ms) judge alone.
   */
  readonly #preSwitch: SampleWindow
  #baseline: WindowSnapshot | undefined
  #stopped = false
  #busy = 0
  /** When the windows last started afresh (the guidance's request rate). */
  #windowStart: number
  /** When the last check was recorded: the sequential judge's looks record one only when deciding, or once an interval has passed. */
  #checkStart: number
  #load: LoadHandle | undefined
  /** When the load test last could not start (it is tried again an interval later, or when the proxy starts listening). */
  #loadRefusedAt = -Infinity
  /** A sequential early pass waited on the providers this interval (see tick). */
  #earlyPassHeld = false
  /** Pauses and aborts waiting for the check in progress: the load test stays stopped meanwhile. */
  #halting = 0
  /** The provider queries of the check in progress: a pause or an abort cancels them. */
  #metricsAbort: AbortController | undefined

  private constructor (record: RolloutRecord, deps: ControllerDeps) {
    this.route = record.route
    this.#record = record
    this.#committed = structuredClone(record)
    this.#deps = deps
    this.#notifier = deps.notifier ?? NOOP_NOTIFIER
    this.windows = { canary: new SampleWindow(deps.reservoir, 0x2545f491), stable: new SampleWindow(deps.reservoir, 0x9e3779b9) }
    this.shadow = { canary: new SampleWindow(deps.reservoir, 0x6a09e667), stable: new SampleWindow(deps.reservoir, 0xbb67ae85), pairs: 0, mismatches: 0, logRatio: 0, timed: 0 }
    this.#preSwitch = new SampleWindow(deps.reservoir, 0x3c6ef372)
    this.#windowStart = this.#checkStart = deps.clock.now()
  }

  /**
   * Starts a new rollout: sets the first phase's weights (and, with
   * `canaryUpstream`, the canary's new origins) in one change, persists the
   * record, notifies `started` and arms the timer. `versions` are the
   * route's versions, `stable` the resolved stable version.
   */
  static async start (route: string, plan: RolloutPlan, stable: string, versions: readonly string[], deps: ControllerDeps, opts: StartOptions = {}): Promise<RolloutController> {
    const now = new Date(deps.clock.now()).toISOString()
    const current = opts.currentWeight ?? 0
    const from = opts.fromStart === true ? 0 : current
    const record: RolloutRecord = { v: 1, route, plan, stable, versions: [...versions], state: 'progressing', stepIndex: 0, weight: 0, failedChecks: 0, startedAt: now, updatedAt: now, checks: [], history: [], phase: 'steps', phaseStartedAt: now }
    if (current > 0) record.startedFrom = { weight: current, fromStart: opts.fromStart === true }
    const view = deps.host.view?.(route)
    const targeted = [...new Set(plan.steps.flatMap((s) => typeof s === 'number' ? [] : [s.segment]))]
    if (targeted.length !== 0) {
      record.segmentsBefore = structuredClone((view?.segments ?? []).filter((s) => targeted.includes(s.name)))
      record.segmentWeights = {}
    }
    const extras: RouteExtras = {}
    if (opts.canaryUpstream !== undefined) {
      extras.upstreams = { [plan.canary]: [...opts.canaryUpstream] }
      const before = view?.upstreams[plan.canary]
      if (before !== undefined) record.canaryUpstreamBefore = [...before]
    }
    let message: string
    if (plan.strategy === 'blue-green') {
      // without a preview, one interval still comes before the switch: stable's baseline for the rollback window
      record.phase = 'preview'
      record.weight = from
      message = plan.preview !== undefined
        ? `blue/green rollout of ${plan.canary} on ${route} started: preview at ${from}% (override or segment only)`
        : `blue/green rollout of ${plan.canary} on ${route} started: one interval of ${stable}'s baseline, then the switch`
      // manual: the operator's promote is the switch
      if (plan.preview === undefined && plan.promotion === 'manual') {
        record.state = 'awaiting-promotion'
        message = `blue/green rollout of ${plan.canary} on ${route} started at ${from}%, awaiting the switch`
      }
    } else if (plan.shadow !== undefined && from === 0) {
      record.phase = 'shadow'
      record.mirrorBefore = view?.mirror ?? null
      extras.mirror = shadowMirror(record)
      message = `rollout of ${plan.canary} on ${route} started: shadow phase, ${plan.shadow.percent}% of ${stable}'s requests copied to ${plan.canary}, no user on it`
    } else {
      const first = startStep(plan.steps, from)
      RolloutController.#applyStep(record, view, first.index, first.weight)
      const skipped = plan.shadow !== undefined ? ' (shadow phase skipped: the canary already serves users)' : ''
      message = `rollout of ${plan.canary} on ${route} started at step ${first.index + 1}/${plan.steps.length + 1}, ${describeStep(record, first.index)}${skipped}`
    }
    const c = new RolloutController(record, deps)
    c.#event('started', message)
    await c.#save(message, extras)
    c.#arm()
    return c
  }

  /** Sets a targeted segment's canary weight to `w`, never below what the segment gave the canary already (monotone). */
  static #moveSegment (r: RolloutRecord, view: RouteNow | undefined, segment: string, w: number): void {
    const before = r.segmentsBefore?.find((s) => s.name === segment) ?? view?.segments.find((s) => s.name === segment)
    const now = r.segmentWeights?.[segment] ?? (before === undefined ? 0 : segmentShare(before, r.plan.canary))
    r.segmentWeights = { ...r.segmentWeights, [segment]: Math.max(now, w) }
  }

  /**
   * Puts the record at step `index`: a number is everyone's canary weight
   * (`weight`: the step's, or the higher weight a next release found), and
   * no targeted segment stays below it; a segment step moves that segment
   * only, never below everyone's weight. Nobody ever moves back to stable.
   */
  static #applyStep (r: RolloutRecord, view: RouteNow | undefined, index: number, weight: number): void {
    r.stepIndex = index
    const s = r.plan.steps[index]
    if (s === undefined || typeof s === 'number') {
      r.weight = weight
      for (const b of r.segmentsBefore ?? []) RolloutController.#moveSegment(r, view, b.name, weight)
      return
    }
    // a next release found past its numeric steps holds everyone at the weight it found
    r.weight = Math.max(r.weight, weight)
    RolloutController.#moveSegment(r, view, s.segment, Math.max(s.weight, r.weight))
  }

  /**
   * Rebuilds a controller from a persisted record after a restart: same step,
   * same failed checks, same state. A final record stays final (a rollback is
   * never forgotten); an active one re-arms its timer with fresh windows.
   */
  static restore (record: RolloutRecord, deps: ControllerDeps): RolloutController {
    const c = new RolloutController(structuredClone(record), deps)
    c.#deps.observer?.update(c.#record)
    if (ACTIVE_STATES.has(record.state)) c.#arm()
    else c.#stopped = true
    return c
  }

  /** A copy of the last saved record (the GET …/rollout body is built from it). */
  get record (): RolloutRecord {
    return structuredClone(this.#committed)
  }

  /** The last saved state. */
  get state (): RolloutStateName {
    return this.#committed.state
  }

  /** True while the rollout owns the route's weights. */
  get active (): boolean {
    return ACTIVE_STATES.has(this.#committed.state)
  }

  /** Runs `fn` after every queued operation: one operation at a time. */
  async #serial<T> (fn: () => Promise<T>): Promise<T> {
    this.#busy++
    const run = this.#chain.then(fn, fn)
    this.#chain = run.catch(() => {})
    try {
      return await run
    } finally {
      this.#busy--
    }
  }

  /** True while an operation (a check, an action, a put-back) is queued or running: its writes are not all made yet. */
  get busy (): boolean {
    return this.#busy !== 0
  }

  #arm (): void {
    if (this.#timer !== undefined) this.#deps.clock.clearTimeout(this.#timer)
    this.#timer = undefined
    this.#syncLoad()
    if (!ACTIVE_STATES.has(this.#record.state) || this.#record.state === 'paused') return
    if (this.#unsubscribe.length === 0) {
      const { canary, stable } = this.windows
      // synthetic requests (this plan's load test's) are judged only when the plan says so; a plan
      // without a load test judges every request (nobody else's mark takes requests out of its view)
      const lt = this.#record.plan.analysis.loadTest
      const all = lt === undefined || lt.includeInAnalysis
      const { subscribe, subscribeEjection, subscribeSnapshots } = this.#deps
      if (subscribeSnapshots !== undefined) {
        const preSwitch = this.#preSwitch
        const watchPreSwitch = this.#record.plan.strategy === 'blue-green'
        this.#unsubscribe.push(
          subscribeSnapshots(this.route, this.#record.plan.canary, (s, i) => canary.merge(s, i)),
          subscribeSnapshots(this.route, this.#record.stable, watchPreSwitch
            ? (s, i) => { stable.merge(s, i); preSwitch.merge(s, i) }
            : (s, i) => stable.merge(s, i))
        )
      } else if (subscribe !== undefined) {
        const preSwitch = this.#preSwitch
        const watchPreSwitch = this.#record.plan.strategy === 'blue-green'
        this.#unsubscribe.push(
          subscribe(this.route, this.#record.plan.canary, (s, sec, f, syn) => { if (all || !syn) canary.record(s, sec, f) }),
          subscribe(this.route, this.#record.stable, watchPreSwitch
            ? (s, sec, f, syn) => { if (all || !syn) { stable.record(s, sec, f); preSwitch.record(s, sec, f) } }
            : (s, sec, f, syn) => { if (all || !syn) stable.record(s, sec, f) })
        )
      }
      if (subscribeEjection !== undefined && subscribeSnapshots === undefined) {
        this.#unsubscribe.push(
          subscribeEjection(this.route, this.#record.plan.canary, () => canary.recordEjection()),
          subscribeEjection(this.route, this.#record.stable, () => stable.recordEjection())
        )
      }
    }
    if (this.#record.phase === 'shadow' && this.#unsubscribeShadow === undefined && this.#deps.subscribeShadow !== undefined) {
      this.#unsubscribeShadow = this.#deps.subscribeShadow(this.route, (p) => { this.#pair(p) })
    }
    this.#timer = this.#deps.clock.setTimeout(async () => {
      this.#timer = undefined
      try {
        await this.tick()
      } catch (err) {
        this.#deps.onError?.(err, 'rollout check')
      }
      if (!this.#stopped) this.#arm()
    }, lookEveryMs(this.#record.plan))
  }

  /** Starts the plan's load test while the rollout analyses, stops it otherwise (also called once the proxy listens, after a restart). */
  syncLoad (): void {
    this.#loadRefusedAt = -Infinity
    this.#syncLoad()
  }

  #syncLoad (): void {
    const r = this.#record
    const spec = r.plan.analysis.loadTest
    const want = spec !== undefined && !this.#stopped && this.#halting === 0 && (r.state === 'progressing' || r.state === 'awaiting-promotion')
    if (!want) {
      this.#stopLoad()
      return
    }
    if (this.#load !== undefined || this.#deps.loadTest === undefined) return
    // a load test that could not start is tried again once per interval, not at every look
    const now = this.#deps.clock.now()
    if (now - this.#loadRefusedAt < r.plan.intervalMs) return
    const names = spec.versions.map((v) => v === 'canary' ? r.plan.canary : v === 'stable' ? r.stable : v).filter((v) => r.versions.includes(v))
    const load = this.#deps.loadTest(this.route, spec, [...new Set(names)], () => {
      if (this.#load !== load) return
      this.#load = undefined
      this.#loadRefusedAt = this.#deps.clock.now()
    })
    this.#load = load
    if (load === undefined) this.#loadRefusedAt = now
  }

  #stopLoad (): void {
    const load = this.#load
    if (load === undefined) return
    this.#load = undefined
    load.stop().catch((err: unknown) => { this.#deps.onError?.(err, 'stopping the load test') })
  }

  /** One mirrored copy and stable's answer to the same request (shadow phase only). */
  #pair (p: ShadowPair): void {
    const r = this.#record
    // 499: the user left before stable answered; there is nothing to compare the copy with
    if (r.phase !== 'shadow' || p.primary !== r.stable || p.mirror !== r.plan.canary || p.primaryStatus === 499) return
    const sh = this.shadow
    // a copy that got no answer (error, timeout) is a failed canary request, as a 502/504 would be for a user
    sh.canary.record(p.mirrorStatus === 0 ? 502 : p.mirrorStatus, p.mirrorSeconds, p.mirrorFailed || p.mirrorStatus === 0)
    sh.stable.record(p.primaryStatus, p.primarySeconds, p.primaryFailed)
    sh.pairs++
    if (statusClass(p.mirrorStatus) !== statusClass(p.primaryStatus)) sh.mismatches++
    if (p.mirrorStatus !== 0 && p.mirrorSeconds > 0 && p.primarySeconds > 0) {
      sh.logRatio += Math.log(p.mirrorSeconds / p.primarySeconds)
      sh.timed++
    }
  }

  #resetShadow (): void {
    const sh = this.shadow
    sh.canary.reset()
    sh.stable.reset()
    sh.pairs = sh.mismatches = sh.logRatio = sh.timed = 0
  }

  #stopShadow (): void {
    this.#unsubscribeShadow?.()
    this.#unsubscribeShadow = undefined
    this.#resetShadow()
  }

  #disarm (): void {
    if (this.#timer !== undefined) this.#deps.clock.clearTimeout(this.#timer)
    this.#timer = undefined
    this.#stopLoad()
  }

  #finish (): void {
    this.#stopped = true
    this.#metricsAbort?.abort()
    this.#disarm()
    for (const u of this.#unsubscribe) u()
    this.#unsubscribe = []
    this.#stopShadow()
  }

  #step (): number {
    return this.#record.stepIndex + 1
  }

  #event (event: HistoryEntry['event'], message: string, reason?: string): void {
    const r = this.#record
    const e: HistoryEntry = { at: new Date(this.#deps.clock.now()).toISOString(), event, state: r.state, step: this.#step(), weight: r.weight }
    if (reason !== undefined) e.reason = reason
    r.history.push(e)
    if (r.history.length > RECORD_LIMITS.history) r.history.splice(0, r.history.length - RECORD_LIMITS.history)
    r.updatedAt = e.at
    if (event !== 'promotion-held' && event !== 'restored') this.#pending.push({ event, message })
  }

  /** The route weights the record stands for: the canary weight, or after a blue/green switch-back the weights before it. */
  #weightsOf (r: RolloutRecord): Record<string, number> {
    if ((r.state === 'rolled-back' || r.state === 'aborted') && r.switchedFrom !== undefined && r.phase === 'rollback-window') return { ...r.switchedFrom }
    return weightsFor(r, r.weight)
  }

  /**
   * The route's segments the record stands for, or undefined when the plan
   * targets none: targeted segments at their canary weight while active;
   * at 100 % after an unfinalized promotion; back to their definitions at
   * start after a rollback, an abort or a finalized promotion (the route is
   * then as it was, ready for the next release). Other segments are the
   * operator's and are never touched.
   */
  #segmentsOf (r: RolloutRecord, current: SegmentSpec[] | undefined): SegmentSpec[] | undefined {
    if (r.segmentsBefore === undefined || r.segmentWeights === undefined) return undefined
    if (current === undefined) return undefined
    const before = new Map(r.segmentsBefore.map((s) => [s.name, s]))
    const restore = r.state === 'rolled-back' || r.state === 'aborted' || (r.state === 'promoted' && r.finalized === true)
    return current.map((s) => {
      const b = before.get(s.name)
      if (b === undefined) return s
      if (restore) {
        const out: SegmentSpec = { name: s.name, match: s.match }
        if (b.version !== undefined) out.version = b.version
        if (b.weights !== undefined) out.weights = { ...b.weights }
        return out
      }
      if (r.state === 'promoted') return segmentAt(r, s, 100)
      const w = r.segmentWeights![s.name]
      return w === undefined ? s : segmentAt(r, s, w)
    })
  }

  /**
   * Saves the record: with `weightReason`, together with the route change
   * the record stands for (weights, targeted segments, and `extras`) in one
   * atomic write; else the record alone. Webhooks and metrics hear of a
   * transition only once it is saved.
   */
  async #save (weightReason?: string, extras: RouteExtras = {}): Promise<void> {
    this.#record.revision = (this.#committed.revision ?? 0) + 1
    const copy = structuredClone(this.#record)
    if (weightReason === undefined) {
      await this.#deps.host.persist(this.route, copy)
    } else {
      const all: RouteExtras = { ...extras }
      const current = this.#deps.host.view?.(this.route)?.segments
      const segments = this.#segmentsOf(copy, current)
      if (segments !== undefined) {
        all.segments = segments
        all.expectSegments = current
      }
      // a rollback or abort also takes the new build off the canary (segments pinned to it return to the old one)
      if ((copy.state === 'rolled-back' || copy.state === 'aborted') && copy.canaryUpstreamBefore !== undefined && all.upstreams === undefined) {
        all.upstreams = { [copy.plan.canary]: [...copy.canaryUpstreamBefore] }
      }
      const hasExtras = all.segments !== undefined || all.mirror !== undefined || all.upstreams !== undefined
      if (hasExtras) await this.#deps.host.applyWeights(this.route, this.#weightsOf(copy), weightReason, copy, all)
      else await this.#deps.host.applyWeights(this.route, this.#weightsOf(copy), weightReason, copy)
    }
    this.#committed = copy
    this.#deps.observer?.update(this.#record)
    const pending = this.#pending
    this.#pending = []
    for (const p of pending) this.#notifier.notify(this.#record.plan.webhooks, p.event, structuredClone(this.#record), p.message)
  }

  /**
   * Runs one mutation of the record and saves it; if saving fails the record
   * is put back as it was (the store changed nothing either) and the error goes to the caller.
   */
  async #transact<T> (fn: (r: RolloutRecord) => { weightReason?: string; extras?: RouteExtras; result: T } | Promise<{ weightReason?: string; extras?: RouteExtras; result: T }>): Promise<T> {
    const before = structuredClone(this.#record)
    try {
      const { weightReason, extras, result } = await fn(this.#record)
      await this.#save(weightReason, extras)
      return result
    } catch (err) {
      this.#record = before
      this.#pending = []
      throw err
    }
  }

  /** The shadow judge: the copies against stable's answers to the same requests, plus the status-class agreement rule. */
  #judgeShadow (): { result: CheckResult; figures: ShadowFigures } {
    const sh = this.shadow
    const plan = this.#record.plan
    const result = judgeCheck(sh.canary.peek(), sh.stable.peek(), plan.analysis)
    const mismatchRate = sh.pairs === 0 ? 0 : Math.round(1e6 * sh.mismatches / sh.pairs) / 1e4
    const figures: ShadowFigures = { pairs: sh.pairs, mismatches: sh.mismatches, mismatchRate, latencyRatio: sh.timed === 0 ? null : Math.round(1e4 * Math.exp(sh.logRatio / sh.timed)) / 1e4 }
    const max = plan.shadow?.maxMismatchRate ?? 100
    if (result.verdict !== 'inconclusive' && mismatchRate > max) {
      result.verdict = 'fail'
      result.reasons = [`${mismatchRate}% of mirrored copies got a different status class than ${this.#record.stable}'s answer (${sh.mismatches}/${sh.pairs}; maxMismatchRate ${max}%)`, ...result.reasons]
    }
    return { result, figures }
  }

  /** Has the current phase lasted its minimum duration? */
  #phaseDone (r: RolloutRecord): boolean {
    const since = Date.parse(r.phaseStartedAt ?? r.startedAt)
    const min = r.phase === 'shadow' ? r.plan.shadow?.durationMs ?? 0 : r.phase === 'preview' ? r.plan.preview?.durationMs ?? 0 : r.phase === 'rollback-window' ? r.plan.rollbackWindowMs ?? 0 : 0
    return this.#deps.clock.now() - since >= min
  }

  #enterPhase (r: RolloutRecord, phase: Phase): void {
    r.phase = phase
    r.phaseStartedAt = new Date(this.#deps.clock.now()).toISOString()
  }

  /**
   * Starts the windows afresh (fleet mode, when the store comes back: what
   * arrived while it was away is part of the traffic only). Queued after a
   * check in progress.
   */
  async refresh (): Promise<void> {
    await this.#serial(async () => {
      this.#freshWindows()
      this.#resetShadow()
    })
  }

  /**
   * Whether a passing sequential look now would move the rollout (a step, a
   * switch, the end of a phase) without asking the confirm-promotion gate:
   * a pass the gate may hold waits for the interval's end (asked once per
   * interval, not at every look), and a blue/green plan without a preview
   * keeps its one interval of stable's baseline before the switch.
   */
  #passActs (phase: Phase): boolean {
    const r = this.#record
    if (r.state !== 'progressing') return false
    const gated = r.plan.promotion === 'auto' && r.plan.webhooks.some((w) => w.type === 'confirm-promotion')
    if (phase === 'steps') return !(gated && r.stepIndex >= r.plan.steps.length - 1)
    if (phase === 'preview') return r.plan.preview !== undefined && !gated && this.#phaseDone(r)
    return this.#phaseDone(r)
  }

  /** Canary and stable windows start afresh (and with them the sequential judge's evidence). */
  #freshWindows (): void {
    this.windows.canary.reset()
    this.windows.stable.reset()
    this.#windowStart = this.#checkStart = this.#deps.clock.now()
    this.#earlyPassHeld = false
  }

  /**
   * The built-in judge of one look: the fixed judge (mann-whitney, ratio,
   * none) at every interval, or the sequential judge at every look, `final`
   * once an interval has passed since the last recorded check.
   */
  #judgeWindows (canary: WindowSnapshot, stable: WindowSnapshot, final: boolean): CheckResult {
    const analysis = this.#record.plan.analysis
    return analysis.baseline.judge === 'sequential' ? judgeSequential(canary, stable, analysis, final) : judgeCheck(canary, stable, analysis)
  }

  /**
   * The plan's provider metrics for this check, folded into `result`;
   * false when a pause, an abort or a shutdown cancelled them (nothing is
   * then recorded: the check is not the operator's to see half-made).
   */
  async #withMetrics (result: CheckResult): Promise<boolean> {
    const r = this.#record
    const metrics = r.plan.analysis.metrics
    if (metrics === undefined || metrics.length === 0) return true
    const ac = new AbortController()
    this.#metricsAbort = ac
    const ctx: MetricContext = { route: this.route, canary: r.plan.canary, stable: r.stable, intervalMs: r.plan.intervalMs, step: this.#step(), weight: r.weight, variables: r.plan.analysis.variables ?? {} }
    let results: MetricResult[]
    try {
      results = await (this.#deps.runMetrics ?? defaultRunMetrics)(metrics, ctx, { signal: ac.signal })
    } finally {
      if (this.#metricsAbort === ac) this.#metricsAbort = undefined
    }
    if (ac.signal.aborted) return false
    combineMetrics(result, results)
    const observer = this.#deps.observer
    const report = observer?.metric?.bind(observer)
    if (report !== undefined) {
      for (const m of results) {
        report(this.route, m.name, r.plan.canary, m.canary)
        const spec = metrics.find((x) => x.name === m.name)
        if (spec?.compare !== undefined && m.baseline !== undefined) report(this.route, m.name, baselineVersion(spec.compare, r.stable), m.baseline)
      }
    }
    return true
  }

  /**
   * One check (the timer calls this every intervalMs — the sequential judge
   * every look; tests may call it directly). Returns the recorded check, or
   * undefined when the rollout is not in a checking state or a look decided
   * nothing.
   */
  async tick (): Promise<CheckRecord | undefined> {
    return await this.#serial(async () => {
      if (this.#record.state !== 'progressing' && this.#record.state !== 'awaiting-promotion') return undefined
      // the fleet store is away: other instances' windows cannot arrive, so nothing is decided on part of the traffic
      if (this.#deps.canDecide?.() === false) return undefined
      const phase = this.#record.phase ?? 'steps'
      const plan = this.#record.plan
      const now = this.#deps.clock.now()
      // the fixed judges look once per interval: every look is final. The sequential judge's
      // is once an interval has passed since the last recorded check (half a look of slack:
      // timers fire late, never early, and a manual clock lands exactly on the interval)
      const final = plan.analysis.baseline.judge !== 'sequential' || now - this.#checkStart >= plan.intervalMs - lookEveryMs(plan) / 2
      let result: CheckResult | undefined
      let shadow: ShadowFigures | undefined
      let canaryWindow: WindowSnapshot | undefined
      let stableWindow: WindowSnapshot | undefined
      if (phase === 'shadow') {
        // the copies are judged once per interval by the fixed rules: the mismatch rate has no sequential form here
        if (!final) return undefined
        const judged = this.#judgeShadow()
        result = judged.result
        shadow = judged.figures
      } else {
        canaryWindow = this.windows.canary.peek()
        const stableNow = this.windows.stable.peek()
        stableWindow = phase === 'rollback-window' && this.#baseline !== undefined && stableNow.requests < plan.analysis.minRequests
          // stable serves nobody after the switch: the canary is compared with stable just before it
          ? this.#baseline
          : stableNow
        result = this.#judgeWindows(canaryWindow, stableWindow, final)
        // a sequential look records only what acts: a fail, or a pass that moves the rollout on
        // (a pass while awaiting promotion, or before a phase's minimum duration, changes
        // nothing and waits for the interval's end); the evidence keeps accumulating meanwhile
        if (!final && result.verdict !== 'fail' && !(result.verdict === 'pass' && this.#passActs(phase))) return undefined
        // the providers had no number for an early pass this interval: they are asked again at its end, not at every look
        if (!final && result.verdict === 'pass' && this.#earlyPassHeld) return undefined
      }
      if (!await this.#withMetrics(result)) return undefined
      // a provider with no number makes an early pass inconclusive: wait for the interval's end, not the next look
      if (!final && result.verdict === 'inconclusive') {
        this.#earlyPassHeld = true
        return undefined
      }
      this.#earlyPassHeld = false
      if (phase === 'shadow' && result.verdict !== 'inconclusive') this.#resetShadow()
      if (result.verdict === 'inconclusive' && canaryWindow !== undefined && stableWindow !== undefined) {
        result.guidance = decisionGuidance(canaryWindow, stableWindow, plan.analysis, now - this.#windowStart)
      }
      const instances = this.#deps.subscribeSnapshots === undefined ? undefined : new Set([...this.windows.canary.sources, ...this.windows.stable.sources]).size
      // inconclusive: keep accumulating so a quiet route eventually reaches minRequests
      if (result.verdict !== 'inconclusive') this.#freshWindows()
      else this.#checkStart = now
      this.#deps.observer?.check(this.route, result.verdict)
      // the gate is asked before the transaction: a slow gate must not hold a half-made change
      const r0 = this.#record
      const done = this.#phaseDone(r0)
      const switching = phase === 'preview' && readyToSwitch(r0.plan, result.verdict, done)
      const wouldPromote = r0.state === 'progressing' && r0.plan.promotion === 'auto' &&
        ((result.verdict === 'pass' && phase === 'steps' && r0.stepIndex >= r0.plan.steps.length - 1) || switching)
      const gate = wouldPromote ? await this.#askGate() : { ok: true, detail: '' }
      return await this.#transact((r) => {
        if (result.verdict === 'fail') r.failedChecks++
        const check: CheckRecord = { at: new Date(this.#deps.clock.now()).toISOString(), step: this.#step(), weight: r.weight, failedChecks: r.failedChecks, ...result }
        if (phase !== 'steps') check.phase = phase
        if (shadow !== undefined) check.shadow = shadow
        if (instances !== undefined) check.instances = instances
        r.checks.push(check)
        if (r.checks.length > RECORD_LIMITS.checks) r.checks.splice(0, r.checks.length - RECORD_LIMITS.checks)
        const out = this.#decide(r, phase, result, done, gate)
        return { ...out, result: check }
      }).finally(() => {
        if (!ACTIVE_STATES.has(this.#record.state)) this.#finish()
        else if (this.#record.phase !== 'shadow') this.#stopShadow()
      })
    })
  }

  /** What one check's verdict does to the record, by phase; returns the weight change's reason (and extras) when the route changes. */
  #decide (r: RolloutRecord, phase: Phase, result: CheckResult, done: boolean, gate: { ok: boolean; detail: string }): { weightReason?: string; extras?: RouteExtras } {
    const why = result.reasons.join('; ')
    if (result.verdict === 'fail') {
      if (phase === 'rollback-window') {
        // blue/green after the switch: one failed check switches back at once
        return { weightReason: this.#end(r, 'rolled-back', 0, `check failed in the rollback window: ${why}`) }
      }
      if (r.failedChecks >= r.plan.analysis.maxFailedChecks) {
        const where = phase === 'shadow' ? ' in the shadow phase (no user reached the canary)' : ''
        return this.#leaving(r, phase, this.#end(r, 'rolled-back', 0, `${r.failedChecks} failed checks${where} (maxFailedChecks ${r.plan.analysis.maxFailedChecks}); last: ${why}`))
      }
      this.#event('check-failed', `rollout of ${r.plan.canary} on ${this.route}: check failed (${r.failedChecks}/${r.plan.analysis.maxFailedChecks}): ${why}`, why)
      return {}
    }
    if (phase === 'rollback-window') {
      if (!done) return {}
      return this.#promotion(r, `no failed check in the ${r.plan.rollbackWindowMs ?? 0} ms rollback window`)
    }
    if (phase === 'preview' && r.state === 'progressing') {
      if (!readyToSwitch(r.plan, result.verdict, done)) return {}
      if (r.plan.promotion === 'manual') {
        r.state = 'awaiting-promotion'
        this.#event('awaiting-promotion', `blue/green rollout of ${r.plan.canary} on ${this.route}: preview passed, awaiting the switch`)
        return {}
      }
      if (!gate.ok) {
        this.#held(r, gate.detail)
        return {}
      }
      return { weightReason: this.#switch(r, r.plan.preview === undefined ? `${r.stable}'s baseline taken` : 'preview passed') }
    }
    if (result.verdict !== 'pass' || r.state !== 'progressing') return {}
    if (phase === 'shadow') {
      if (!done) return {}
      const first = startStep(r.plan.steps, 0)
      this.#enterPhase(r, 'steps')
      RolloutController.#applyStep(r, this.#deps.host.view?.(this.route), first.index, first.weight)
      const msg = `rollout of ${r.plan.canary} on ${this.route}: shadow phase passed; step ${this.#step()}/${r.plan.steps.length + 1}, ${describeStep(r, r.stepIndex)}`
      this.#event('step', msg)
      return this.#leaving(r, 'shadow', `rollout step ${this.#step()}/${r.plan.steps.length + 1} after the shadow phase: ${describeStep(r, r.stepIndex)}`)
    }
    if (r.stepIndex < r.plan.steps.length - 1) {
      const next = r.stepIndex + 1
      const s = r.plan.steps[next]!
      RolloutController.#applyStep(r, this.#deps.host.view?.(this.route), next, typeof s === 'number' ? s : r.weight)
      this.#event('step', `rollout of ${r.plan.canary} on ${this.route}: step ${this.#step()}/${r.plan.steps.length + 1}, ${describeStep(r, r.stepIndex)}`)
      return { weightReason: `rollout step ${this.#step()}/${r.plan.steps.length + 1}: ${describeStep(r, r.stepIndex)}` }
    }
    if (r.plan.promotion === 'auto') {
      if (gate.ok) return this.#promotion(r, 'all steps passed')
      this.#held(r, gate.detail)
      return {}
    }
    r.state = 'awaiting-promotion'
    this.#event('awaiting-promotion', `rollout of ${r.plan.canary} on ${this.route}: all steps passed at ${r.weight}%, awaiting promotion`)
    return {}
  }

  /** Blue/green: the one switch to 100 %, remembering the weights it replaced. */
  #switch (r: RolloutRecord, why: string): string {
    // every stable request since the start; without finish listeners (an embedded controller fed by hand), the stable window as it stands
    const before = this.#preSwitch.peek()
    const window = this.windows.stable.peek()
    this.#baseline = before.requests !== 0 ? before : window.requests !== 0 ? window : undefined
    // judged from the switch on: nothing the canary saw at 0 % (or while paused) counts in the window
    this.#freshWindows()
    delete r.pausedAt
    r.switchedFrom = weightsFor(r, r.weight)
    r.state = 'progressing'
    r.weight = 100
    this.#enterPhase(r, 'rollback-window')
    this.#event('step', `blue/green rollout of ${r.plan.canary} on ${this.route}: switched to 100% (${why}); rollback window ${r.plan.rollbackWindowMs ?? 0} ms`)
    return `blue/green switch: ${r.plan.canary} at 100% (${why})`
  }

  /** The change that ends a shadow phase also puts the route's own mirror back. */
  #leaving (r: RolloutRecord, phase: Phase, weightReason: string): { weightReason: string; extras?: RouteExtras } {
    // the listener is dropped once the change is saved (tick's finally): a failed save keeps the phase, and its pairs
    if (phase !== 'shadow') return { weightReason }
    // a reload that brought the file's own mirror meanwhile replaced the phase's: the file's stays
    const now = this.#deps.host.view?.(this.route)
    if (now !== undefined && !jsonEqual(now.mirror, shadowMirror(r))) return { weightReason }
    return { weightReason, extras: { mirror: r.mirrorBefore ?? null } }
  }

  /**
   * Promotion: canary 100 %, or with `finalize` stable takes the canary's
   * upstream and returns to 100 % with canary at 0 % in the same change
   * (both serve the same build at that moment, so nobody sees a change).
   */
  #promotion (r: RolloutRecord, why: string): { weightReason: string; extras?: RouteExtras } {
    const phase = r.phase ?? 'steps'
    if (r.plan.finalize === true) {
      const view = this.#deps.host.view?.(this.route)
      const origins = view?.upstreams[r.plan.canary]
      if (view?.settings !== undefined && view.settings[r.plan.canary] !== view.settings[r.stable]) {
        // stable would take the canary's origins with its own TLS name, CA or discovery: every user at risk at once
        return this.#leaving(r, phase, this.#end(r, 'promoted', 100, `${why}; not finalized: ${r.plan.canary} and ${r.stable} now differ in balance, discovery or TLS settings, so ${r.plan.canary} stays at 100%`))
      }
      if (origins !== undefined) {
        r.finalized = true
        const reason = this.#end(r, 'promoted', 100, `${why}; finalized: ${r.stable} now serves ${r.plan.canary}'s upstream at 100%, ${r.plan.canary} at 0%`)
        const out = this.#leaving(r, phase, reason)
        return { weightReason: out.weightReason, extras: { ...out.extras, upstreams: { [r.stable]: origins } } }
      }
    }
    return this.#leaving(r, phase, this.#end(r, 'promoted', 100, why))
  }

  /** Moves the record to a final state at `weight` and returns the weight change's reason. */
  #end (r: RolloutRecord, state: 'promoted' | 'rolled-back' | 'aborted', weight: number, reason: string): string {
    r.state = state
    r.weight = weight
    r.reason = reason
    delete r.pausedFrom
    delete r.pausedAt
    if (r.finalized === true) r.weight = 0 // the route is back at stable 100 %, canary 0 %: the record says so
    if (r.segmentWeights !== undefined) {
      // what the targeted segments end at: 100 % after an unfinalized promotion; else their definitions at start
      r.segmentWeights = state === 'promoted' && r.finalized !== true ? Object.fromEntries((r.segmentsBefore ?? []).map((s) => [s.name, 100])) : {}
    }
    const what = state === 'promoted' ? 'promoted to 100%' : state
    this.#event(state, `rollout of ${r.plan.canary} on ${this.route} ${what}: ${reason}`, reason)
    return `rollout ${state}: ${reason}`
  }

  #held (r: RolloutRecord, detail: string): void {
    r.reason = `promotion held by confirm-promotion gate: ${detail}`
    this.#event('promotion-held', r.reason, r.reason)
  }

  async #askGate (): Promise<{ ok: boolean; detail: string }> {
    const gate = this.#record.plan.webhooks.find((w) => w.type === 'confirm-promotion')
    if (gate === undefined) return { ok: true, detail: 'no gate' }
    return await this.#notifier.confirm(gate, structuredClone(this.#record))
  }

  #conflict (action: string): CanarydError {
    return new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `cannot ${action} the rollout of route ${this.route}: it is ${this.#record.state}`)
  }

  /**
   * Before a pause or an abort waits for the check in progress: the load
   * test stops now (not after a slow provider or gate answered) and the
   * check's provider queries are cancelled (that check records nothing).
   * `#syncLoad` afterwards restarts the load test if the action was refused.
   */
  #halt (): void {
    this.#halting++
    this.#stopLoad()
    this.#metricsAbort?.abort()
  }

  /** The action `#halt` announced is done (or refused): the load test runs again if the rollout still analyses. */
  #unhalt (): void {
    this.#halting--
    this.#syncLoad()
  }

  /** Holds the weight and stops checking. 409 unless progressing or awaiting promotion. */
  async pause (): Promise<RolloutRecord> {
    this.#halt()
    return await this.#serial(async () => {
      const from = this.#record.state
      if (from !== 'progressing' && from !== 'awaiting-promotion') throw this.#conflict('pause')
      const out = await this.#transact((r) => {
        r.pausedFrom = from
        r.pausedAt = new Date(this.#deps.clock.now()).toISOString()
        r.state = 'paused'
        this.#event('paused', `rollout of ${r.plan.canary} on ${this.route} paused at ${r.weight}%`)
        return { result: structuredClone(r) }
      })
      this.#disarm()
      return out
    }).finally(() => { this.#unhalt() })
  }

  /** Resumes a paused rollout with fresh windows (traffic seen while paused is not judged). 409 unless paused. */
  async resume (): Promise<RolloutRecord> {
    return await this.#serial(async () => {
      if (this.#record.state !== 'paused') throw this.#conflict('resume')
      const out = await this.#transact((r) => {
        r.state = r.pausedFrom ?? 'progressing'
        delete r.pausedFrom
        // a phase's minimum duration is of judged time: the pause does not count towards it
        if (r.pausedAt !== undefined && r.phaseStartedAt !== undefined) {
          const paused = Math.max(0, this.#deps.clock.now() - Date.parse(r.pausedAt))
          r.phaseStartedAt = new Date(Date.parse(r.phaseStartedAt) + paused).toISOString()
        }
        delete r.pausedAt
        this.#event('resumed', `rollout of ${r.plan.canary} on ${this.route} resumed at ${r.weight}%`)
        return { result: structuredClone(r) }
      })
      this.#freshWindows()
      this.#resetShadow()
      this.#arm()
      return out
    })
  }

  /**
   * Promotes now (an operator's decision: from awaiting-promotion, or skipping
   * the remaining steps or the shadow phase). Blue/green before its switch:
   * the switch (the rollback window then runs); after it: the end of the
   * window. The confirm-promotion gate is still asked (not at the end of a
   * blue/green window: the switch asked it); when it holds, the state is
   * unchanged and `held` is true.
   */
  async promote (): Promise<{ record: RolloutRecord; held: boolean }> {
    // an operator's promotion does not wait for a slow provider
    this.#metricsAbort?.abort()
    return await this.#serial(async () => {
      if (!this.active) throw this.#conflict('promote')
      const phase = this.#record.phase ?? 'steps'
      const gate = phase === 'rollback-window' ? { ok: true, detail: '' } : await this.#askGate()
      const out = await this.#transact((r) => {
        if (!gate.ok) {
          this.#held(r, gate.detail)
          return { result: { record: structuredClone(r), held: true } }
        }
        if (phase === 'preview') {
          delete r.pausedFrom
          const weightReason = this.#switch(r, 'switched by operator')
          return { weightReason, result: { record: structuredClone(r), held: false } }
        }
        const { weightReason, extras } = this.#promotion(r, 'promoted by operator')
        return { weightReason, extras, result: { record: structuredClone(r), held: false } }
      })
      if (!this.active) this.#finish()
      else this.#arm()
      return out
    })
  }

  /** Canary to 0 % (blue/green after the switch: the weights before it) and `aborted`. 409 when the rollout already ended. */
  async abort (reason: string = 'aborted by operator'): Promise<RolloutRecord> {
    this.#halt()
    return await this.#serial(async () => {
      if (!this.active) throw this.#conflict('abort')
      const phase = this.#record.phase ?? 'steps'
      const out = await this.#transact((r) => ({ ...this.#leaving(r, phase, this.#end(r, 'aborted', 0, reason)), result: structuredClone(r) }))
      this.#finish()
      return out
    }).finally(() => { this.#unhalt() })
  }

  /**
   * Ends the rollout as `aborted` with `reason` without setting weights: a
   * reload removed a version it needs, and the reload already set the
   * route's weights. No-op when the rollout already ended.
   */
  async abandon (reason: string): Promise<void> {
    await this.#serial(async () => {
      if (!this.active) return
      const phase = this.#record.phase ?? 'steps'
      await this.#transact((r) => {
        this.#end(r, 'aborted', 0, reason)
        return { result: undefined }
      })
      this.#finish()
      try {
        await this.#putBack(phase, reason)
      } catch (err) {
        this.#deps.onError?.(err, 'putting back what the rollout changed')
      }
    })
  }

  /**
   * After a reload ended the rollout: puts back what it changed beyond the
   * weights, as far as the reloaded route still allows (a version the
   * reload removed cannot be pointed at): the route's own mirror (if the
   * phase's is still the one in force), the canary's previous origins, the
   * targeted segments' definitions.
   */
  async #putBack (phase: Phase, reason: string): Promise<void> {
    const host = this.#deps.host
    const view = host.view?.(this.route)
    if (view === undefined || host.applyExtras === undefined) return
    const r = this.#record
    const has = (v: string): boolean => view.upstreams[v] !== undefined
    const extras: RouteExtras = {}
    if (phase === 'shadow' && jsonEqual(view.mirror, shadowMirror(r))) {
      const before = r.mirrorBefore ?? null
      extras.mirror = before !== null && has(before.version) ? before : null
    }
    if (r.canaryUpstreamBefore !== undefined && has(r.plan.canary)) extras.upstreams = { [r.plan.canary]: [...r.canaryUpstreamBefore] }
    const restored = this.#segmentsOf(r, view.segments)
    if (restored !== undefined) {
      // a definition naming a version the reload removed cannot come back: that segment stays as it is
      const fits = (s: SegmentSpec): boolean => (s.version === undefined || has(s.version)) && Object.entries(s.weights ?? {}).every(([v, w]) => w === 0 || has(v))
      const segments = restored.map((s, i) => fits(s) ? s : view.segments[i]!)
        .map((s) => s.weights === undefined ? s : { ...s, weights: Object.fromEntries(Object.entries(s.weights).filter(([v]) => has(v))) })
      if (!jsonEqual(segments, view.segments)) {
        extras.segments = segments
        extras.expectSegments = view.segments
      }
    }
    if (Object.keys(extras).length === 0) return
    await host.applyExtras(this.route, extras, `rollout aborted (${reason}): its segments, mirror and canary upstream put back`, structuredClone(r))
  }

  /** Stops the timer and listeners without changing the record (process shutdown). */
  close (): void {
    this.#finish()
  }
}

/** The mirror a shadow phase puts on the route: the plan's share and methods, to the canary. */
function shadowMirror (r: RolloutRecord): MirrorSpec {
  const sh = r.plan.shadow!
  return { version: r.plan.canary, percent: sh.percent, methods: [...sh.methods], maxBodyBytes: sh.maxBodyBytes, maxInFlight: MIRROR_DEFAULTS.maxInFlight, timeoutMs: MIRROR_DEFAULTS.timeoutMs }
}

/** "canary at 10%" or "segment staff: canary at 100%" for messages. */
function describeStep (r: RolloutRecord, index: number): string {
  const s = r.plan.steps[index]
  if (s === undefined || typeof s === 'number') return `${r.plan.canary} at ${r.weight}%`
  return `segment ${s.segment}: ${r.plan.canary} at ${r.segmentWeights?.[s.segment] ?? s.weight}% (everyone else at ${r.weight}%)`
}
