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
import { ACTIVE_STATES, type RolloutEvent, type RolloutPlan, type RolloutStateName, type WebhookSpec } from '../config/plan.js'
import { SampleWindow } from './window.js'

/** How many recent checks and history entries a record keeps (the state file stays small). */
export const RECORD_LIMITS = Object.freeze({ checks: 20, history: 100 })

/** A check as recorded: when, at which step, and the judge's result. */
export interface CheckRecord extends CheckResult {
  at: string
  /** 1-based step number. */
  step: number
  weight: number
  /** Failed checks so far in this rollout, this one included. */
  failedChecks: number
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
}

/** What the controller needs of the control plane. */
export interface RolloutHost {
  /**
   * Sets the route's weights (all versions, summing to 100) through the one
   * validated, persisted swap, saving `record` in the same atomic write: a
   * step and its progress (or a rollback and its reason) are never saved apart.
   */
  applyWeights (route: string, weights: Record<string, number>, reason: string, record: RolloutRecord): Promise<void> | void
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
}

/** Subscribes a listener to finished requests of (route, version); returns the unsubscribe function. */
export type SubscribeFinish = (route: string, version: string, listener: (status: number, seconds: number, upstreamFailed: boolean) => void) => () => void

/** Subscribes a listener to outlier-detection ejections of (route, version); returns the unsubscribe function. */
export type SubscribeEjection = (route: string, version: string, listener: () => void) => () => void

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

/**
 * One route's rollout. All operations (the timer's check and the admin's
 * pause/resume/promote/abort) run one at a time through a promise chain, so
 * a pause arriving while a check awaits the gate webhook applies after it,
 * never in the middle.
 *
 * Transitions:
 * - progressing: every interval one check. pass → next step (or, after the
 *   last step, promotion: `auto` → 100 % and `promoted`; `manual` →
 *   `awaiting-promotion`); fail → failedChecks + 1, at maxFailedChecks →
 *   canary 0 % and `rolled-back`; inconclusive → keep accumulating. A
 *   canary ejected by outlier detection fails the check (see judge.ts).
 * - awaiting-promotion: checks go on (a regression found while waiting still
 *   rolls back); `promote` finishes.
 * - paused: no checks, weight held; `resume` returns to the previous state
 *   with fresh windows.
 * - abort (from any active state): canary 0 %, `aborted`.
 * - promoted, rolled-back, aborted are final.
 */
export class RolloutController {
  readonly route: string
  readonly windows: { canary: SampleWindow; stable: SampleWindow }
  #record: RolloutRecord
  /** The last saved record: what readers see, so nobody observes a transition before it is persisted and applied. */
  #committed: RolloutRecord
  readonly #deps: ControllerDeps
  readonly #notifier: RolloutNotifier
  #timer: unknown
  #chain: Promise<unknown> = Promise.resolve()
  #pending: Array<{ event: RolloutEvent; message: string }> = []
  #unsubscribe: Array<() => void> = []
  #stopped = false

  private constructor (record: RolloutRecord, deps: ControllerDeps) {
    this.route = record.route
    this.#record = record
    this.#committed = structuredClone(record)
    this.#deps = deps
    this.#notifier = deps.notifier ?? NOOP_NOTIFIER
    this.windows = { canary: new SampleWindow(deps.reservoir, 0x2545f491), stable: new SampleWindow(deps.reservoir, 0x9e3779b9) }
  }

  /**
   * Starts a new rollout: sets the first step's weight, persists the record,
   * notifies `started` and arms the timer. `versions` are the route's
   * versions, `stable` the resolved stable version.
   */
  static async start (route: string, plan: RolloutPlan, stable: string, versions: readonly string[], deps: ControllerDeps): Promise<RolloutController> {
    const now = new Date(deps.clock.now()).toISOString()
    const weight = plan.steps[0]!
    const record: RolloutRecord = { v: 1, route, plan, stable, versions: [...versions], state: 'progressing', stepIndex: 0, weight, failedChecks: 0, startedAt: now, updatedAt: now, checks: [], history: [] }
    const c = new RolloutController(record, deps)
    c.#event('started', `rollout of ${plan.canary} on ${route} started at ${weight}%`)
    await c.#save(`rollout started: step 1/${plan.steps.length + 1}, ${plan.canary} at ${weight}%`)
    c.#arm()
    return c
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
    const run = this.#chain.then(fn, fn)
    this.#chain = run.catch(() => {})
    return await run
  }

  #arm (): void {
    if (this.#timer !== undefined) this.#deps.clock.clearTimeout(this.#timer)
    this.#timer = undefined
    if (!ACTIVE_STATES.has(this.#record.state) || this.#record.state === 'paused') return
    if (this.#unsubscribe.length === 0) {
      const { canary, stable } = this.windows
      const { subscribe, subscribeEjection } = this.#deps
      if (subscribe !== undefined) {
        this.#unsubscribe.push(
          subscribe(this.route, this.#record.plan.canary, (s, sec, f) => canary.record(s, sec, f)),
          subscribe(this.route, this.#record.stable, (s, sec, f) => stable.record(s, sec, f))
        )
      }
      if (subscribeEjection !== undefined) {
        this.#unsubscribe.push(
          subscribeEjection(this.route, this.#record.plan.canary, () => canary.recordEjection()),
          subscribeEjection(this.route, this.#record.stable, () => stable.recordEjection())
        )
      }
    }
    this.#timer = this.#deps.clock.setTimeout(async () => {
      this.#timer = undefined
      try {
        await this.tick()
      } catch (err) {
        this.#deps.onError?.(err, 'rollout check')
      }
      if (!this.#stopped) this.#arm()
    }, this.#record.plan.intervalMs)
  }

  #disarm (): void {
    if (this.#timer !== undefined) this.#deps.clock.clearTimeout(this.#timer)
    this.#timer = undefined
  }

  #finish (): void {
    this.#stopped = true
    this.#disarm()
    for (const u of this.#unsubscribe) u()
    this.#unsubscribe = []
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

  /**
   * Saves the record: with `weightReason`, together with the weights of
   * `record.weight` (one atomic write); else the record alone. Webhooks and
   * metrics hear of a transition only once it is saved.
   */
  async #save (weightReason?: string): Promise<void> {
    const copy = structuredClone(this.#record)
    if (weightReason === undefined) await this.#deps.host.persist(this.route, copy)
    else await this.#deps.host.applyWeights(this.route, weightsFor(copy, copy.weight), weightReason, copy)
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
  async #transact<T> (fn: (r: RolloutRecord) => { weightReason?: string; result: T } | Promise<{ weightReason?: string; result: T }>): Promise<T> {
    const before = structuredClone(this.#record)
    try {
      const { weightReason, result } = await fn(this.#record)
      await this.#save(weightReason)
      return result
    } catch (err) {
      this.#record = before
      this.#pending = []
      throw err
    }
  }

  /**
   * One check (the timer calls this every intervalMs; tests may call it
   * directly). Returns the recorded check, or undefined when the rollout is
   * not in a checking state.
   */
  async tick (): Promise<CheckRecord | undefined> {
    return await this.#serial(async () => {
      if (this.#record.state !== 'progressing' && this.#record.state !== 'awaiting-promotion') return undefined
      const result = judgeCheck(this.windows.canary.peek(), this.windows.stable.peek(), this.#record.plan.analysis)
      // inconclusive: keep accumulating so a quiet route eventually reaches minRequests
      if (result.verdict !== 'inconclusive') {
        this.windows.canary.reset()
        this.windows.stable.reset()
      }
      this.#deps.observer?.check(this.route, result.verdict)
      // the gate is asked before the transaction: a slow gate must not hold a half-made change
      const r0 = this.#record
      const wouldPromote = result.verdict === 'pass' && r0.state === 'progressing' && r0.stepIndex >= r0.plan.steps.length - 1 && r0.plan.promotion === 'auto'
      const gate = wouldPromote ? await this.#askGate() : { ok: true, detail: '' }
      return await this.#transact((r) => {
        if (result.verdict === 'fail') r.failedChecks++
        const check: CheckRecord = { at: new Date(this.#deps.clock.now()).toISOString(), step: this.#step(), weight: r.weight, failedChecks: r.failedChecks, ...result }
        r.checks.push(check)
        if (r.checks.length > RECORD_LIMITS.checks) r.checks.splice(0, r.checks.length - RECORD_LIMITS.checks)
        let weightReason: string | undefined
        if (result.verdict === 'fail') {
          if (r.failedChecks >= r.plan.analysis.maxFailedChecks) {
            weightReason = this.#end(r, 'rolled-back', 0, `${r.failedChecks} failed checks (maxFailedChecks ${r.plan.analysis.maxFailedChecks}); last: ${result.reasons.join('; ')}`)
          } else {
            this.#event('check-failed', `rollout of ${r.plan.canary} on ${this.route}: check failed (${r.failedChecks}/${r.plan.analysis.maxFailedChecks}): ${result.reasons.join('; ')}`, result.reasons.join('; '))
          }
        } else if (result.verdict === 'pass' && r.state === 'progressing') {
          if (r.stepIndex < r.plan.steps.length - 1) {
            r.stepIndex++
            r.weight = r.plan.steps[r.stepIndex]!
            weightReason = `rollout step ${this.#step()}/${r.plan.steps.length + 1}: ${r.plan.canary} at ${r.weight}%`
            this.#event('step', `rollout of ${r.plan.canary} on ${this.route}: step ${this.#step()}/${r.plan.steps.length + 1}, ${r.weight}%`)
          } else if (r.plan.promotion === 'auto') {
            if (gate.ok) weightReason = this.#end(r, 'promoted', 100, 'all steps passed')
            else this.#held(r, gate.detail)
          } else {
            r.state = 'awaiting-promotion'
            this.#event('awaiting-promotion', `rollout of ${r.plan.canary} on ${this.route}: all steps passed at ${r.weight}%, awaiting promotion`)
          }
        }
        return weightReason === undefined ? { result: check } : { weightReason, result: check }
      }).finally(() => { if (!ACTIVE_STATES.has(this.#record.state)) this.#finish() })
    })
  }

  /** Moves the record to a final state at `weight` and returns the weight change's reason. */
  #end (r: RolloutRecord, state: 'promoted' | 'rolled-back' | 'aborted', weight: number, reason: string): string {
    r.state = state
    r.weight = weight
    r.reason = reason
    delete r.pausedFrom
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

  /** Holds the weight and stops checking. 409 unless progressing or awaiting promotion. */
  async pause (): Promise<RolloutRecord> {
    return await this.#serial(async () => {
      const from = this.#record.state
      if (from !== 'progressing' && from !== 'awaiting-promotion') throw this.#conflict('pause')
      const out = await this.#transact((r) => {
        r.pausedFrom = from
        r.state = 'paused'
        this.#event('paused', `rollout of ${r.plan.canary} on ${this.route} paused at ${r.weight}%`)
        return { result: structuredClone(r) }
      })
      this.#disarm()
      return out
    })
  }

  /** Resumes a paused rollout with fresh windows (traffic seen while paused is not judged). 409 unless paused. */
  async resume (): Promise<RolloutRecord> {
    return await this.#serial(async () => {
      if (this.#record.state !== 'paused') throw this.#conflict('resume')
      const out = await this.#transact((r) => {
        r.state = r.pausedFrom ?? 'progressing'
        delete r.pausedFrom
        this.#event('resumed', `rollout of ${r.plan.canary} on ${this.route} resumed at ${r.weight}%`)
        return { result: structuredClone(r) }
      })
      this.windows.canary.reset()
      this.windows.stable.reset()
      this.#arm()
      return out
    })
  }

  /**
   * Promotes now (an operator's decision: from awaiting-promotion, or skipping
   * the remaining steps from progressing or paused). The confirm-promotion
   * gate is still asked; when it holds, the state is unchanged and `held` is true.
   */
  async promote (): Promise<{ record: RolloutRecord; held: boolean }> {
    return await this.#serial(async () => {
      if (!this.active) throw this.#conflict('promote')
      const gate = await this.#askGate()
      const out = await this.#transact((r) => {
        if (!gate.ok) {
          this.#held(r, gate.detail)
          return { result: { record: structuredClone(r), held: true } }
        }
        const weightReason = this.#end(r, 'promoted', 100, 'promoted by operator')
        return { weightReason, result: { record: structuredClone(r), held: false } }
      })
      if (!this.active) this.#finish()
      return out
    })
  }

  /** Canary to 0 % and `aborted`. 409 when the rollout already ended. */
  async abort (reason: string = 'aborted by operator'): Promise<RolloutRecord> {
    return await this.#serial(async () => {
      if (!this.active) throw this.#conflict('abort')
      const out = await this.#transact((r) => ({ weightReason: this.#end(r, 'aborted', 0, reason), result: structuredClone(r) }))
      this.#finish()
      return out
    })
  }

  /**
   * Ends the rollout as `aborted` with `reason` without setting weights: a
   * reload removed a version it needs, and the reload already set the
   * route's weights. No-op when the rollout already ended.
   */
  async abandon (reason: string): Promise<void> {
    await this.#serial(async () => {
      if (!this.active) return
      await this.#transact((r) => {
        this.#end(r, 'aborted', 0, reason)
        return { result: undefined }
      })
      this.#finish()
    })
  }

  /** Stops the timer and listeners without changing the record (process shutdown). */
  close (): void {
    this.#finish()
  }
}
