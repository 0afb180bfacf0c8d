/**
 * The rollouts of one process: at most one controller per route, wired to
 * the control plane's store (weights + persisted record in one atomic write),
 * the per-version finish and ejection listeners of the metrics, the webhooks and the
 * rollout metrics. The admin endpoints and the CLI go through here.
 */
import { CanarydError, createError } from '../errors.js'
import type { Logger } from '../logger.js'
import { systemClock, type Clock } from './clock.js'
import { RolloutController, type ControllerDeps, type RolloutNotifier, type RolloutObserver, type RolloutRecord, type RouteExtras, type RouteNow, type SubscribeEjection, type SubscribeFinish } from './controller.js'
import { ACTIVE_STATES, PlanError, validatePlan } from '../config/plan.js'
import { checkUpstreams } from '../config/routes.js'
import type { SubscribeShadow } from '../metrics/observer.js'
import type { MirrorSpec, RouteSpec, SegmentSpec } from '../routing/spec.js'

/** What the manager needs of the runtime store (src/state/store.ts RuntimeStore fits). */
export interface RolloutStore {
  setWeights (route: string, weights: unknown, opts: { reason?: string | null; source: string; rollout?: unknown }): Promise<unknown>
  /** One atomic change of weights and, optionally, segments, mirror and version upstreams (RuntimeStore.update). */
  update? (route: string, patch: { weights?: unknown; segments?: SegmentSpec[]; expectSegments?: SegmentSpec[]; mirror?: MirrorSpec | null; upstreams?: Record<string, string[]> }, opts: { reason?: string | null; source: string; rollout?: unknown }): Promise<unknown>
  /** The routes in force (segments, mirror, upstreams: read by plans that move segments, shadow or finalize). */
  readonly specs?: readonly RouteSpec[]
  setRolloutState (route: string, data: unknown): Promise<void>
  getRolloutState (route: string): unknown
  weights (route: string): Record<string, number> | undefined
  readonly routeNames: string[]
  setRolloutSummary (fn: (route: string) => unknown): void
  onChange (listener: (entry: { route: string; source: string; version?: string }) => void): void
}

/** The `source` of weight changes made by rollouts, in the audit. */
export const ROLLOUT_SOURCE = 'rollout'

/** Dependencies of the manager. */
export interface RolloutManagerOptions {
  store: RolloutStore
  logger: Logger
  subscribe?: SubscribeFinish
  /** Outlier-detection ejections per (route, version): a canary ejection fails the check. */
  subscribeEjection?: SubscribeEjection
  notifier?: RolloutNotifier
  observer?: RolloutObserver
  clock?: Clock
  /** Mirrored-copy pairs per route, for shadow phases. */
  subscribeShadow?: SubscribeShadow
}

/** Options of a start beyond the plan (query parameters of POST …/rollout, CLI flags). */
export interface StartRequest {
  /** Start at step 1 even if the canary already has weight (moves users back to stable; warned). */
  fromStart?: boolean
  /** Point the canary at these origins in the same change as the first step (refused unless its weight is 0). */
  canaryUpstream?: unknown
}

/** The compact form shown on the route objects of GET /api/v1/routes. */
export interface RolloutSummary {
  state: RolloutRecord['state']
  canary: string
  step: number
  steps: number
  weight: number
  failedChecks: number
  /** shadow, preview, steps, rollback-window, or done once final. */
  phase: string
}

/** Body of GET /api/v1/routes/{route}/rollout. */
export function rolloutView (r: RolloutRecord): Record<string, unknown> {
  return {
    route: r.route,
    state: r.state,
    strategy: r.plan.strategy ?? 'canary',
    phase: phaseOf(r),
    canary: r.plan.canary,
    stable: r.stable,
    step: r.stepIndex + 1,
    steps: r.plan.steps,
    weight: r.weight,
    segmentWeights: r.segmentWeights ?? {},
    startedFrom: r.startedFrom ?? null,
    finalized: r.finalized === true,
    failedChecks: r.failedChecks,
    reason: r.reason ?? null,
    startedAt: r.startedAt,
    updatedAt: r.updatedAt,
    plan: r.plan,
    checks: r.checks,
    history: r.history
  }
}

/** The phase a view shows: the record's while active (a record older than phases is in steps), `done` once final. */
function phaseOf (r: RolloutRecord): string {
  return ACTIVE_STATES.has(r.state) ? r.phase ?? 'steps' : 'done'
}

/** The route in force as the controller reads it. */
function routeNow (spec: RouteSpec): RouteNow {
  return {
    segments: structuredClone(spec.segments ?? []),
    mirror: spec.mirror === undefined ? null : structuredClone(spec.mirror),
    upstreams: Object.fromEntries(spec.versions.map((v) => [v.name, [...v.upstream]])),
    settings: Object.fromEntries(spec.versions.map((v) => [v.name, endpointSettings(v)]))
  }
}

/** A version's endpoint settings other than its origins (what finalize cannot hand over). */
function endpointSettings (v: RouteSpec['versions'][number]): string {
  return JSON.stringify([v.balance ?? 'least-request', v.discovery ?? '', v.tls ?? null])
}

/**
 * Problems of a plan that only the route in force can show: a segment step
 * on a segment that sends users to a third version (its step would move
 * them to stable), a finalize between versions whose endpoint settings
 * differ (stable would take only the canary's origins).
 */
function routeProblems (spec: RouteSpec, plan: { canary: string; finalize?: true; steps: ReadonlyArray<number | { segment: string }> }, stable: string): string[] {
  const problems: string[] = []
  const targeted = new Set(plan.steps.flatMap((s) => typeof s === 'number' ? [] : [s.segment]))
  for (const s of spec.segments ?? []) {
    if (!targeted.has(s.name)) continue
    const others = s.version !== undefined ? [s.version] : Object.entries(s.weights ?? {}).filter(([, w]) => w > 0).map(([n]) => n)
    const third = others.filter((n) => n !== plan.canary && n !== stable)
    if (third.length !== 0) problems.push(`steps: segment ${s.name} sends users to ${third.join(', ')}; a segment step moves its users between ${plan.canary} and ${stable} only (set the segment to those first)`)
  }
  if (plan.finalize === true) {
    const c = spec.versions.find((v) => v.name === plan.canary)
    const st = spec.versions.find((v) => v.name === stable)
    if (c !== undefined && st !== undefined && endpointSettings(c) !== endpointSettings(st)) {
      problems.push(`finalize: ${plan.canary} and ${stable} differ in balance, discovery or tls settings; finalize hands ${stable} the canary's origins only (make the settings equal, or drop finalize)`)
    }
  }
  return problems
}

function isRecord (v: unknown): v is RolloutRecord {
  return typeof v === 'object' && v !== null && (v as { v?: unknown }).v === 1 && typeof (v as { route?: unknown }).route === 'string'
}

/** One controller per route, at most; see the module comment. */
export class RolloutManager {
  readonly #opts: RolloutManagerOptions
  readonly #controllers = new Map<string, RolloutController>()
  /**
   * Routes whose `start` is between its 409 check and the new controller
   * entering `#controllers` (it awaits the first weight write in between):
   * reserved before the first await so a concurrent start gets 409 instead of
   * a second controller, released when the start settles.
   */
  readonly #starting = new Set<string>()
  readonly #clock: Clock

  constructor (opts: RolloutManagerOptions) {
    this.#opts = opts
    this.#clock = opts.clock ?? systemClock
    opts.store.setRolloutSummary((route) => this.summary(route))
    // someone else set the weights of a route under rollout: hold, let a human decide (resume or abort)
    opts.store.onChange((e) => {
      const c = this.#controllers.get(e.route)
      if (e.source === ROLLOUT_SOURCE || c === undefined || (c.state !== 'progressing' && c.state !== 'awaiting-promotion')) return
      // a reload that removed the canary or stable ends the rollout instead (see reloaded)
      if (this.#missing(e.route, c).length !== 0) return
      const what = e.version === undefined ? 'weights changed' : `version ${e.version} was pointed at new endpoints`
      opts.logger.warn({ route: e.route, source: e.source }, `${what} outside the rollout: pausing it`)
      c.pause().catch((err: unknown) => opts.logger.error({ err, route: e.route }, 'cannot pause rollout'))
    })
  }

  /** The versions a rollout needs (canary, stable) that its route no longer has. */
  #missing (route: string, c: RolloutController): string[] {
    const weights = this.#opts.store.weights(route) ?? {}
    const plan = c.record.plan
    return [plan.canary, plan.stable ?? ''].filter((v) => v !== '' && weights[v] === undefined)
  }

  /**
   * Called once a reload is applied (the app's reload does, before it
   * answers): a rollout whose route is gone is dropped (its
   * record went with the route); one whose canary or stable version is gone
   * is aborted with that reason (the reload already set the weights).
   */
  async reloaded (removed: readonly string[]): Promise<void> {
    const ending: Array<Promise<void>> = []
    for (const route of removed) {
      const c = this.#controllers.get(route)
      if (c === undefined) continue
      c.close()
      this.#controllers.delete(route)
      this.#opts.logger.warn({ route }, 'reload removed the route: its rollout ended')
    }
    for (const [route, c] of this.#controllers) {
      if (!c.active) continue
      const gone = this.#missing(route, c)
      if (gone.length === 0) continue
      const reason = `reload removed version ${gone.join(' and ')} from route ${route}`
      this.#opts.logger.warn({ route, versions: gone }, `rollout aborted: ${reason}`)
      ending.push(c.abandon(reason).catch((err: unknown) => this.#opts.logger.error({ err, route }, 'cannot record the aborted rollout')))
    }
    await Promise.all(ending)
  }

  #deps (): ControllerDeps {
    const store = this.#opts.store
    const log = this.#opts.logger
    return {
      host: {
        applyWeights: async (route, weights, reason, record, extras?: RouteExtras) => {
          if (extras === undefined) await store.setWeights(route, weights, { reason, source: ROLLOUT_SOURCE, rollout: record })
          else if (store.update !== undefined) {
            await store.update(route, { weights, ...extras }, { reason, source: ROLLOUT_SOURCE, rollout: record })
          } else throw new TypeError('this store cannot change segments, mirror or upstreams')
        },
        persist: async (route, record) => { await store.setRolloutState(route, record) },
        applyExtras: async (route, extras, reason, record) => {
          if (store.update === undefined) return
          await store.update(route, extras, { reason, source: ROLLOUT_SOURCE, rollout: record })
        },
        view: (route) => {
          const spec = store.specs?.find((s) => s.name === route)
          return spec === undefined ? undefined : routeNow(spec)
        }
      },
      subscribeShadow: this.#opts.subscribeShadow,
      clock: this.#clock,
      notifier: this.#opts.notifier,
      observer: this.#opts.observer,
      subscribe: this.#opts.subscribe,
      subscribeEjection: this.#opts.subscribeEjection,
      onError: (err, what) => log.error({ err }, `${what} failed`)
    }
  }

  /** Rebuilds controllers from the records in the state file (call once at start-up). */
  restore (): void {
    for (const route of this.#opts.store.routeNames) {
      const saved = this.#opts.store.getRolloutState(route)
      if (saved === null || saved === undefined) continue
      if (!isRecord(saved)) {
        this.#opts.logger.warn({ route }, 'unreadable rollout state in the state file: ignored')
        continue
      }
      try {
        saved.plan = validatePlan(saved.plan)
      } catch (err) {
        this.#opts.logger.warn({ route, err: (err as Error).message }, 'saved rollout plan is no longer valid: ignored')
        continue
      }
      const c = RolloutController.restore(saved, this.#deps())
      this.#controllers.set(route, c)
      this.#opts.logger.info({ route, state: saved.state, step: saved.stepIndex + 1, weight: saved.weight }, 'rollout restored')
    }
  }

  /**
   * Starts the `rollout` blocks of the config for routes that have no
   * rollout record yet. A route with a record (running or finished, e.g.
   * rolled back) is left alone: restarting never re-runs a finished rollout.
   */
  async startFromConfig (plans: ReadonlyArray<{ route: string; plan: unknown }>): Promise<void> {
    for (const { route, plan } of plans) {
      if (this.#controllers.has(route) || this.#starting.has(route)) continue
      try {
        await this.start(route, plan)
      } catch (err) {
        this.#opts.logger.error({ err, route }, 'cannot start the rollout of the config')
      }
    }
  }

  /**
   * Starts a rollout: 404 for an unknown route, 400 for an invalid plan,
   * 409 when one is already running (or being started) on the route.
   *
   * Everything up to the reservation is synchronous: the 409 check and the
   * reservation happen in one turn of the event loop, so of two concurrent
   * starts exactly one gets past them. The loser never builds a controller
   * (no orphan whose timer would keep moving the weights).
   */
  /** The 404 of a route the store does not hold (the same wording as the admin API's). */
  #noRoute (route: string): CanarydError {
    return createError('CANARYD_ERR_ROUTE_NOT_FOUND', { route: JSON.stringify(route), routes: this.#opts.store.routeNames.join(', ') })
  }

  async start (route: string, rawPlan: unknown, req: StartRequest = {}): Promise<RolloutRecord> {
    return (await this.begin(route, rawPlan, req)).record
  }

  /**
   * `start`, with the warnings an operator should read (the admin API
   * answers them beside the record; the CLI prints them): `fromStart`
   * moving users back to stable, a new canary build reaching users at once
   * through segments that pin or weight the canary.
   */
  async begin (route: string, rawPlan: unknown, req: StartRequest = {}): Promise<{ record: RolloutRecord; warnings: string[] }> {
    const weights = this.#opts.store.weights(route)
    if (weights === undefined) throw this.#noRoute(route)
    const versions = Object.keys(weights)
    const spec = this.#opts.store.specs?.find((s) => s.name === route)
    const plan = validatePlan(rawPlan, versions, spec === undefined ? {} : { segments: (spec.segments ?? []).map((s) => s.name) })
    let canaryUpstream: string[] | undefined
    if (req.canaryUpstream !== undefined) {
      try {
        canaryUpstream = checkUpstreams(req.canaryUpstream, 'canaryUpstream')
      } catch (err) {
        throw new CanarydError('CANARYD_ERR_INVALID_UPSTREAM', (err as Error).message, { cause: err })
      }
      if ((weights[plan.canary] ?? 0) !== 0) throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `canaryUpstream: ${plan.canary} serves ${weights[plan.canary]}% of route ${route}; a new build is pointed at only while its weight is 0 (abort or finish the release first)`)
    }
    if (this.#starting.has(route)) throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `route ${route} already has a rollout starting; pause, promote or abort it first`)
    const existing = this.#controllers.get(route)
    if (existing?.active === true) throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `route ${route} already has a rollout ${existing.state}; pause, promote or abort it first`)
    const stable = plan.stable ?? versions.filter((v) => v !== plan.canary).sort((a, b) => weights[b]! - weights[a]!)[0]!
    const others = versions.filter((v) => v !== plan.canary && v !== stable && weights[v]! > 0)
    if (others.length > 0) throw new PlanError([`stable: route ${route} has other versions with traffic (${others.join(', ')}); set them to 0 or name the stable version`])
    if (spec !== undefined) {
      const problems = routeProblems(spec, plan, stable)
      if (problems.length !== 0) throw new PlanError(problems)
    }
    const currentWeight = weights[plan.canary] ?? 0
    const warnings: string[] = []
    if (req.fromStart === true && currentWeight > 0) {
      warnings.push(`fromStart: ${plan.canary} had ${currentWeight}%; the rollout starts at step 1 and moves users back to ${stable}`)
    }
    if (canaryUpstream !== undefined) {
      const exposed = (spec?.segments ?? []).filter((s) => s.version === plan.canary || (s.weights?.[plan.canary] ?? 0) > 0).map((s) => s.name)
      if (exposed.length !== 0) warnings.push(`canaryUpstream: segment${exposed.length === 1 ? '' : 's'} ${exposed.join(', ')} send${exposed.length === 1 ? 's' : ''} users to ${plan.canary}: they get the new build now, before the first step`)
    }
    for (const w of warnings) this.#opts.logger.warn({ route, canary: plan.canary }, w)
    this.#starting.add(route)
    try {
      const opts = { currentWeight, fromStart: req.fromStart === true, ...(canaryUpstream === undefined ? {} : { canaryUpstream }) }
      const c = await RolloutController.start(route, { ...plan, stable }, stable, versions, this.#deps(), opts)
      // the previous (finished) controller is replaced only once the new one exists:
      // a failed start leaves the route's last rollout record readable
      existing?.close()
      this.#controllers.set(route, c)
      return { record: c.record, warnings }
    } finally {
      this.#starting.delete(route)
    }
  }

  #get (route: string): RolloutController {
    const c = this.#controllers.get(route)
    if (c === undefined) {
      if (this.#opts.store.weights(route) === undefined) throw this.#noRoute(route)
      throw createError('CANARYD_ERR_NO_ROLLOUT', { route })
    }
    return c
  }

  /** The rollout record of a route (404 when none). */
  get (route: string): RolloutRecord {
    return this.#get(route).record
  }

  /** The controller of a route (tests feed its windows). */
  controller (route: string): RolloutController | undefined {
    return this.#controllers.get(route)
  }

  /** Pauses (409 unless progressing or awaiting promotion). */
  async pause (route: string): Promise<RolloutRecord> {
    return await this.#get(route).pause()
  }

  /** Resumes (409 unless paused). */
  async resume (route: string): Promise<RolloutRecord> {
    return await this.#get(route).resume()
  }

  /** Promotes now; `held` when the confirm-promotion gate said no. */
  async promote (route: string): Promise<{ record: RolloutRecord; held: boolean }> {
    return await this.#get(route).promote()
  }

  /** Aborts: canary to 0, `aborted`. */
  async abort (route: string): Promise<RolloutRecord> {
    return await this.#get(route).abort()
  }

  /** The summary for GET /api/v1/routes, or null. */
  summary (route: string): RolloutSummary | null {
    const c = this.#controllers.get(route)
    if (c === undefined) return null
    const r = c.record
    return { state: r.state, canary: r.plan.canary, step: r.stepIndex + 1, steps: r.plan.steps.length, weight: r.weight, failedChecks: r.failedChecks, phase: phaseOf(r) }
  }

  /** Stops every timer (process shutdown); records stay as saved. */
  close (): void {
    for (const c of this.#controllers.values()) c.close()
  }
}
