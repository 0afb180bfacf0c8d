/**
 * The rollouts of one process: at most one controller per route, wired to
 * the control plane's store (weights + persisted record in one atomic write),
 * the per-version finish and ejection listeners of the metrics, the webhooks and the
 * rollout metrics. The admin endpoints and the CLI go through here.
 */
import { CanarydError, createError, routeNotFound } from '../errors.js'
import { LeaseLostError, StaleRolloutError, type Fence } from '../store/store.js'
import type { Logger } from '../logger.js'
import { systemClock, type Clock } from './clock.js'
import { RolloutController, type ControllerDeps, type RolloutNotifier, type RolloutObserver, type RolloutRecord, type RouteExtras, type RouteNow, type SubscribeEjection, type SubscribeFinish } from './controller.js'
import { FleetStats, type StatsTransport } from './fleet.js'
import { LoadGenerator, type LoadTarget } from './loadtest.js'
import { authorization } from './provider-http.js'
import type { AuthSpec, RolloutPlan } from '../config/plan.js'
import { ACTIVE_STATES, PlanError, planContext, validatePlan } from '../config/plan.js'
import { checkUpstreams } from '../config/routes.js'
import type { SubscribeShadow } from '../metrics/observer.js'
import type { MirrorSpec, RouteSpec, SegmentSpec } from '../routing/spec.js'

/** Who made a change, and (fleet mode) the rollout leader's fencing token. */
interface WriteOptions {
  reason?: string | null
  source: string
  rollout?: unknown
  fence?: Fence
  expectRevision?: number
}

/** What the manager needs of the runtime store (src/store/store.ts RuntimeStore fits). */
export interface RolloutStore {
  setWeights (route: string, weights: unknown, opts: WriteOptions): Promise<unknown>
  /** One atomic change of weights and, optionally, segments, mirror and version upstreams (RuntimeStore.update). */
  update? (route: string, patch: { weights?: unknown; segments?: SegmentSpec[]; expectSegments?: SegmentSpec[]; mirror?: MirrorSpec | null; upstreams?: Record<string, string[]> }, opts: WriteOptions): Promise<unknown>
  /** The routes in force (segments, mirror, upstreams: read by plans that move segments, shadow or finalize). */
  readonly specs?: readonly RouteSpec[]
  setRolloutState (route: string, data: unknown, fence?: Fence, expectRevision?: number): Promise<void>
  getRolloutState (route: string): unknown
  weights (route: string): Record<string, number> | undefined
  readonly routeNames: string[]
  setRolloutSummary (fn: (route: string) => unknown): void
  onChange (listener: (entry: { route: string; source: string; version?: string }) => void): void
  /** Fleet mode: applies the fleet's latest state now. */
  sync? (): Promise<void>
  /** Fleet mode: called after the fleet's state is applied, with the routes whose rollout record changed. */
  onSync? (listener: (routes: string[]) => void): void
}

/**
 * The fleet, as rollouts use it (store/fleet.ts FleetLink fits): one
 * instance leads each rollout under a lease whose fencing token every
 * write carries; actions reach the leader wherever they are sent.
 */
export interface RolloutFleet {
  readonly self: string
  readonly leaseTtlMs: number
  /** False while the store cannot be reached. */
  readonly up: boolean
  onUp (fn: (up: boolean) => void): void
  /** The fencing token of a lease just taken, or 0 when another instance holds it. */
  acquire (route: string): Promise<number>
  renew (route: string, token: number): Promise<boolean>
  release (route: string, token: number): Promise<void>
  holder (route: string): Promise<{ token: number; instance: string } | undefined>
  /** Runs an action on another instance; its result, or its error re-raised. */
  call (instance: string, c: { op: string; route: string }): Promise<unknown>
  /** `fn` resolves undefined for an action this instance does not answer (it does not lead that rollout). */
  serve (fn: (c: { op: string; route: string }) => Promise<{ result: unknown } | undefined>): void
  /** Refreshes this instance's heartbeat now (after a lease changed hands). */
  beat (): void
  readonly stats: StatsTransport
}

/** Why a load test cannot start before the proxy listens (a restart): not warned, `listening()` starts it. */
export const NOT_LISTENING = 'the proxy is not listening yet'

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
  /** Fleet mode: leases, forwarded actions and fleet-wide windows (the store must then be the fleet's). */
  fleet?: RolloutFleet
  /**
   * Where a load test of `route` sends its requests (this process's own
   * proxy listener), or why it cannot (a string, refused at start with 400).
   * Absent: plans with analysis.loadTest are refused.
   */
  loadTarget?: (route: string) => LoadTarget | string
}

/** A lease taken for a rollout that finished meanwhile: given back, nobody to lead. */
class NothingToLead extends Error {}

/** The rollout actions an instance carries out for another (forwarded to the rollout's leader). */
const ACTIONS: Readonly<Record<string, (c: RolloutController) => Promise<unknown>>> = {
  pause: async (c) => await c.pause(),
  resume: async (c) => await c.resume(),
  promote: async (c) => await c.promote(),
  abort: async (c) => await c.abort()
}

/** A lease this instance holds: its fencing token and when it was last renewed. */
interface Held {
  token: number
  renewedAt: number
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
function routeProblems (spec: RouteSpec, plan: { canary: string; finalize?: true; steps: ReadonlyArray<number | { segment: string }>; analysis: { loadTest?: { paths: string[] } } }, stable: string, all: readonly RouteSpec[] = []): string[] {
  const problems: string[] = []
  const targeted = new Set(plan.steps.flatMap((s) => typeof s === 'number' ? [] : [s.segment]))
  for (const s of spec.segments ?? []) {
    if (!targeted.has(s.name)) continue
    const others = s.version !== undefined ? [s.version] : Object.entries(s.weights ?? {}).filter(([, w]) => w > 0).map(([n]) => n)
    const third = others.filter((n) => n !== plan.canary && n !== stable)
    if (third.length !== 0) problems.push(`steps: segment ${s.name} sends users to ${third.join(', ')}; a segment step moves its users between ${plan.canary} and ${stable} only (set the segment to those first)`)
  }
  for (const [i, path] of (plan.analysis.loadTest?.paths ?? []).entries()) {
    // a path outside the prefix would be routed elsewhere: the load test would measure another route
    if (!path.startsWith(spec.match.pathPrefix)) {
      problems.push(`analysis.loadTest.paths[${i}]: ${JSON.stringify(path)} is outside route ${spec.name}'s pathPrefix ${JSON.stringify(spec.match.pathPrefix)}`)
      continue
    }
    // so is one a longer prefix of the same host takes (routes match the longest prefix first)
    const taker = all.find((o) => o.name !== spec.name && o.match.host === spec.match.host && o.match.pathPrefix.length > spec.match.pathPrefix.length && path.startsWith(o.match.pathPrefix))
    if (taker !== undefined) problems.push(`analysis.loadTest.paths[${i}]: ${JSON.stringify(path)} is routed to route ${taker.name} (pathPrefix ${JSON.stringify(taker.match.pathPrefix)}), not ${spec.name}`)
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

/** Secrets named by environment variable that this process does not have: refused at start rather than inconclusive at every check. */
function unsetSecrets (analysis: { metrics?: ReadonlyArray<{ provider: { auth?: AuthSpec } }>; loadTest?: { auth?: AuthSpec } }): string[] {
  const out: string[] = []
  const check = (auth: AuthSpec | undefined, at: string): void => {
    if (auth === undefined) return
    const [key, name] = auth.type === 'bearer' ? ['tokenEnv', auth.tokenEnv] : auth.type === 'basic' ? ['passwordEnv', auth.passwordEnv] : ['valueEnv', auth.valueEnv]
    if (name !== undefined && (process.env[name] ?? '').trim() === '') out.push(`${at}.auth.${key}: environment variable ${name} is not set on this instance`)
  }
  analysis.metrics?.forEach((m, i) => { check(m.provider.auth, `analysis.metrics[${i}].provider`) })
  check(analysis.loadTest?.auth, 'analysis.loadTest')
  return out
}

function isRecord (v: unknown): v is RolloutRecord {
  return typeof v === 'object' && v !== null && (v as { v?: unknown }).v === 1 && typeof (v as { route?: unknown }).route === 'string'
}

/** One controller per route, at most; see the module comment. */
export class RolloutManager {
  readonly #opts: RolloutManagerOptions
  readonly #controllers = new Map<string, RolloutController>()
  /** Per route, why its load test could not start (warned once per reason). */
  readonly #loadRefused = new Map<string, string>()
  /**
   * Routes whose `start` is between its 409 check and the new controller
   * entering `#controllers` (it awaits the first weight write in between):
   * reserved before the first await so a concurrent start gets 409 instead of
   * a second controller, released when the start settles.
   */
  readonly #starting = new Set<string>()
  readonly #clock: Clock
  readonly #fleet: RolloutFleet | undefined
  readonly #stats: FleetStats | undefined
  /** Fleet mode: the rollout leases this instance holds, by route. */
  readonly #held = new Map<string, Held>()
  #leaseTimer: NodeJS.Timeout | undefined
  #renewing = false
  #takingOver = false

  constructor (opts: RolloutManagerOptions) {
    this.#opts = opts
    this.#clock = opts.clock ?? systemClock
    this.#fleet = opts.fleet
    opts.store.setRolloutSummary((route) => this.summary(route))
    if (opts.fleet !== undefined) {
      const fleet = opts.fleet
      this.#stats = new FleetStats({ transport: fleet.stats, subscribe: opts.subscribe, subscribeEjection: opts.subscribeEjection, subscribeShadow: opts.subscribeShadow })
      opts.store.onSync?.((routes) => { this.#synced(routes) })
      fleet.onUp((up) => { this.#storeUp(up) })
      fleet.serve(async (c) => await this.#serveCall(c))
    }
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
      this.#releaseLease(route)
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
      ending.push(c.abandon(reason).then(() => { this.#releaseLease(route) }, (err: unknown) => this.#opts.logger.error({ err, route }, 'cannot record the aborted rollout')))
    }
    await Promise.all(ending)
  }

  /** Fleet mode: the fence a led rollout's writes carry (token 0, refused, when the lease is not held). */
  #fence (route: string): Fence | undefined {
    if (this.#fleet === undefined) return undefined
    return { route, token: this.#held.get(route)?.token ?? 0, instance: this.#fleet.self }
  }

  /**
   * Runs a rollout's write; in fleet mode with its fence, then: a lost
   * lease stops the controller here (another instance runs the rollout),
   * a final record gives the lease up, and every instance's windows
   * follow the rollouts in force.
   */
  async #write (route: string, record: RolloutRecord, fn: (w: { fence?: Fence; expectRevision?: number }) => Promise<unknown>): Promise<void> {
    if (this.#fleet === undefined) {
      await fn({})
      return
    }
    // the record this one replaces: a write after one answered as failed but applied is refused (StaleRolloutError)
    const expectRevision = record.revision !== undefined && record.revision > 1 ? record.revision - 1 : undefined
    try {
      await fn({ fence: this.#fence(route), ...(expectRevision === undefined ? {} : { expectRevision }) })
    } catch (err) {
      if (err instanceof LeaseLostError) this.#lost(route, 'a write was refused: the lease is gone')
      if (err instanceof StaleRolloutError) this.#rebuild(route).catch(() => {})
      throw err
    }
    this.#follow()
    if (!ACTIVE_STATES.has(record.state)) this.#releaseWhenIdle(route)
  }

  /**
   * Fleet mode: gives the lease of a finished rollout up as soon as its
   * controller's operation (and any put-back after the final record) is
   * done; checked every 20 ms for at most a second, then the lease tick
   * does it.
   */
  #releaseWhenIdle (route: string, tries = 0): void {
    const c = this.#controllers.get(route)
    if (!this.#held.has(route)) return
    // the final record is the controller's once its save returns (it is still busy then): wait for both
    if (c === undefined || (!c.busy && !c.active)) {
      this.#releaseLease(route)
      return
    }
    if (c.busy && tries < 50) setTimeout(() => { this.#releaseWhenIdle(route, tries + 1) }, 20).unref()
  }

  #deps (): ControllerDeps {
    const store = this.#opts.store
    const log = this.#opts.logger
    const fleet = this.#fleet
    return {
      host: {
        applyWeights: async (route, weights, reason, record, extras?: RouteExtras) => {
          await this.#write(route, record, async (w) => {
            if (extras === undefined) await store.setWeights(route, weights, { reason, source: ROLLOUT_SOURCE, rollout: record, ...w })
            else if (store.update !== undefined) {
              await store.update(route, { weights, ...extras }, { reason, source: ROLLOUT_SOURCE, rollout: record, ...w })
            } else throw new TypeError('this store cannot change segments, mirror or upstreams')
          })
        },
        persist: async (route, record) => { await this.#write(route, record, async (w) => { await store.setRolloutState(route, record, w.fence, w.expectRevision) }) },
        applyExtras: async (route, extras, reason, record) => {
          if (store.update === undefined) return
          // the put-back after a rollback or abort writes the record already saved: no revision to check
          await this.#write(route, record, async (w) => { await store.update!(route, extras, { reason, source: ROLLOUT_SOURCE, rollout: record, ...(w.fence === undefined ? {} : { fence: w.fence }) }) })
        },
        view: (route) => {
          const spec = store.specs?.find((s) => s.name === route)
          return spec === undefined ? undefined : routeNow(spec)
        }
      },
      loadTest: (route, spec, versions, failed) => {
        const target = this.#opts.loadTarget?.(route)
        if (target === undefined || typeof target === 'string') {
          // retried once per interval: said once per reason. Not yet listening (a restart restores
          // rollouts first) is not worth a warning: listening() starts it
          const why = target ?? 'no proxy listener'
          if (this.#loadRefused.get(route) !== why && why !== NOT_LISTENING) log.warn({ route }, `analysis.loadTest not started: ${why}`)
          this.#loadRefused.set(route, why)
          return undefined
        }
        this.#loadRefused.delete(route)
        let gen: LoadGenerator | undefined
        const ac = new AbortController()
        const begin = async (): Promise<void> => {
          // the app's credentials are read now, from where the plan says (never from the plan)
          const auth = await authorization(spec.auth, process.env, ac.signal)
          if (ac.signal.aborted) return
          const headers = auth === undefined ? spec.headers : { ...spec.headers, [auth.name]: auth.header }
          gen = new LoadGenerator({ ...spec, headers }, target, versions, { onError: (err) => { log.warn({ route, err: (err as Error).message }, 'load test request failed') } })
          gen.start()
          log.info({ route, rps: spec.rps, versions }, 'load test started')
        }
        begin().catch((err: unknown) => {
          if (ac.signal.aborted) return
          log.warn({ route, err: (err as Error).message }, 'load test not started; tried again next interval')
          failed()
        })
        return {
          stop: async () => {
            ac.abort()
            if (gen === undefined) return
            await gen.stop()
            log.info({ route, ...gen.stats }, 'load test stopped')
          }
        }
      },
      // fleet mode: every instance's shadow pairs, not this one's share
      subscribeShadow: this.#stats?.subscribeShadow ?? this.#opts.subscribeShadow,
      clock: this.#clock,
      notifier: this.#opts.notifier,
      observer: this.#opts.observer,
      subscribe: this.#opts.subscribe,
      subscribeEjection: this.#opts.subscribeEjection,
      ...(fleet === undefined || this.#stats === undefined ? {} : { subscribeSnapshots: this.#stats.subscribeSnapshots, canDecide: () => fleet.up }),
      onError: (err, what) => {
        // a write the fence refused already stopped the controller (#lost): not an error of this instance
        if (err instanceof LeaseLostError) log.warn({ err: err.message }, `${what}: not applied`)
        else log.error({ err }, `${what} failed`)
      }
    }
  }

  /** Fleet mode: the versions of every active rollout in the fleet state are counted (and published) by this instance. */
  #follow (): void {
    if (this.#stats === undefined) return
    const pairs: Array<[string, string, boolean]> = []
    const shadows: string[] = []
    for (const route of this.#opts.store.routeNames) {
      const r = this.#opts.store.getRolloutState(route)
      if (!isRecord(r) || !ACTIVE_STATES.has(r.state)) continue
      const lt = r.plan.analysis.loadTest
      const syn = lt === undefined || lt.includeInAnalysis
      pairs.push([route, r.plan.canary, syn], [route, r.stable, syn])
      if (r.phase === 'shadow') shadows.push(route)
    }
    this.#stats.follow(pairs)
    this.#stats.followShadow(shadows)
  }

  /** Fleet mode: another instance's change was applied; followers' rollout metrics show the fleet's records. */
  #synced (routes: readonly string[]): void {
    for (const route of routes) {
      const r = this.#opts.store.getRolloutState(route)
      if (this.#held.has(route)) {
        // only this instance writes a record it leads: another revision means a write of its own landed unseen
        const c = this.#controllers.get(route)
        if (c !== undefined && !c.busy && isRecord(r) && r.revision !== c.record.revision) this.#rebuild(route).catch(() => {})
        continue
      }
      if (isRecord(r)) this.#opts.observer?.update(r)
    }
    this.#follow()
  }

  /** Fleet mode: the store came back: led rollouts start their windows afresh (what came in while it was away is partial), leases are checked at once. */
  #storeUp (up: boolean): void {
    if (!up) return
    for (const [route, c] of this.#controllers) {
      if (this.#held.has(route) && c.active) c.refresh().catch(() => {})
    }
    this.#leaseTick()
  }

  /**
   * Fleet mode, every third of the lease TTL: renews the leases held (one
   * not renewed for a whole TTL, e.g. while Redis was away, is given up:
   * another instance may hold it by now) and gives up those whose rollout
   * has finished (after its last write, put-backs included); then, in a
   * loop of its own so a slow takeover never delays a renewal, takes over
   * the active rollouts nobody leads (their leader died or left).
   */
  #leaseTick (): void {
    const fleet = this.#fleet
    if (fleet === undefined) return
    if (!this.#renewing) {
      this.#renewing = true
      this.#renew(fleet).catch(() => {}).finally(() => { this.#renewing = false })
    }
    if (!this.#takingOver && fleet.up) {
      this.#takingOver = true
      this.#takeOverAll().catch(() => {}).finally(() => { this.#takingOver = false })
    }
  }

  async #renew (fleet: RolloutFleet): Promise<void> {
    for (const [route, h] of [...this.#held]) {
      const c = this.#controllers.get(route)
      if (c !== undefined && !c.active && !c.busy) {
        this.#releaseLease(route)
        continue
      }
      if (!fleet.up) {
        if (Date.now() - h.renewedAt > fleet.leaseTtlMs) this.#lost(route, `not renewed for ${fleet.leaseTtlMs} ms (the store is unreachable)`)
        continue
      }
      try {
        if (await fleet.renew(route, h.token)) h.renewedAt = Date.now()
        else this.#lost(route, 'the lease expired or another instance took it')
      } catch {
        if (Date.now() - h.renewedAt > fleet.leaseTtlMs) this.#lost(route, `not renewed for ${fleet.leaseTtlMs} ms`)
      }
    }
  }

  async #takeOverAll (): Promise<void> {
    for (const route of this.#opts.store.routeNames) {
      if (this.#held.has(route) || this.#starting.has(route)) continue
      const r = this.#opts.store.getRolloutState(route)
      if (!isRecord(r) || !ACTIVE_STATES.has(r.state)) continue
      try {
        await this.#takeOver(route)
      } catch (err) {
        this.#opts.logger.debug({ err, route }, 'rollout takeover attempt failed')
      }
    }
  }

  /**
   * Fleet mode: the fleet's record of a rollout this instance leads is not
   * the one its controller last saved (a write answered as failed was
   * applied after all): the controller is rebuilt from the fleet's record,
   * so the rollout continues from what every instance sees.
   */
  async #rebuild (route: string): Promise<void> {
    if (!this.#held.has(route)) return
    await this.#opts.store.sync?.()
    const r = this.#opts.store.getRolloutState(route)
    const record = isRecord(r) && ACTIVE_STATES.has(r.state) ? this.#checked(route, r) : undefined
    this.#controllers.get(route)?.close()
    if (record === undefined) {
      this.#controllers.delete(route)
      this.#releaseLease(route)
      return
    }
    this.#controllers.set(route, RolloutController.restore(record, this.#deps()))
    this.#opts.logger.warn({ route, state: record.state, step: record.stepIndex + 1, revision: record.revision }, 'the fleet holds a newer record of the rollout this instance leads (a write answered as failed was applied): continuing from it')
  }

  /**
   * Takes the route's lease if nobody holds it and runs its active rollout
   * here, from the fleet's latest record: the same step, the same failed
   * checks, fresh windows. True when this instance leads it now.
   */
  async #takeOver (route: string): Promise<boolean> {
    const token = await this.#fleet!.acquire(route)
    if (token === 0) return false
    return await this.#lead(route, token, async () => {
      const r = this.#opts.store.getRolloutState(route)
      const record = isRecord(r) && ACTIVE_STATES.has(r.state) ? this.#checked(route, r) : undefined
      if (record === undefined) throw new NothingToLead()
      this.#controllers.get(route)?.close()
      this.#controllers.set(route, RolloutController.restore(record, this.#deps()))
      this.#opts.logger.info({ route, state: record.state, step: record.stepIndex + 1, weight: record.weight, token }, 'this instance leads the rollout now (took its lease over)')
      return true
    }).catch((err: unknown) => {
      if (err instanceof NothingToLead) return false
      throw err
    })
  }

  /**
   * Runs `fn` as the leader of the route's rollout with a lease just
   * taken: on the fleet's latest state; the heartbeat and the fleet's
   * windows then say so. A failure gives the lease up.
   */
  async #lead<T> (route: string, token: number, fn: () => Promise<T>): Promise<T> {
    // a finished controller of an earlier rollout must not pass for the one being taken up (actions, renewals look it up)
    const old = this.#controllers.get(route)
    if (old !== undefined && !old.active) {
      old.close()
      this.#controllers.delete(route)
    }
    this.#held.set(route, { token, renewedAt: Date.now() })
    try {
      await this.#opts.store.sync?.()
      const out = await fn()
      this.#fleet?.beat()
      this.#follow()
      return out
    } catch (err) {
      this.#releaseLease(route)
      throw err
    }
  }

  /** Fleet mode: this instance no longer leads the route's rollout; its controller stops (the record stays as saved). */
  #lost (route: string, why: string): void {
    const c = this.#controllers.get(route)
    // a controller without its lease stops even when the lease was already given up (it must never tick on)
    if (!this.#held.delete(route)) {
      if (c?.active === true) {
        c.close()
        this.#controllers.delete(route)
      }
      return
    }
    c?.close()
    this.#controllers.delete(route)
    // the new leader reports the provider metrics now: this instance's last values would read as current
    this.#opts.observer?.forgetMetrics?.(route)
    this.#opts.logger.warn({ route }, `this instance no longer leads the rollout: ${why}`)
    this.#fleet?.beat()
  }

  /** Fleet mode: gives a held lease up (a finished rollout; shutdown). */
  #releaseLease (route: string): void {
    const h = this.#held.get(route)
    if (h === undefined || this.#fleet === undefined) return
    this.#held.delete(route)
    this.#fleet.release(route, h.token).catch(() => {})
    this.#fleet.beat()
  }

  /** The routes whose rollout this instance leads (fleet mode; the heartbeat says them). */
  get leading (): string[] {
    return [...this.#held.keys()]
  }

  /** A saved record with its plan validated again, or undefined (logged) when it no longer is. */
  #checked (route: string, saved: RolloutRecord): RolloutRecord | undefined {
    try {
      saved.plan = validatePlan(saved.plan)
      return saved
    } catch (err) {
      this.#opts.logger.warn({ route, err: (err as Error).message }, 'saved rollout plan is no longer valid: ignored')
      return undefined
    }
  }

  /**
   * Rebuilds controllers from the records in the state file (call once at
   * start-up). Fleet mode: no controller is rebuilt here; active rollouts
   * are taken over by lease (at once when their leader is gone), and this
   * instance starts counting their versions for the fleet's windows.
   */
  restore (): void {
    if (this.#fleet !== undefined) {
      for (const route of this.#opts.store.routeNames) {
        const r = this.#opts.store.getRolloutState(route)
        if (isRecord(r)) this.#opts.observer?.update(r)
      }
      this.#follow()
      this.#leaseTimer = setInterval(() => { this.#leaseTick() }, Math.max(100, Math.floor(this.#fleet.leaseTtlMs / 3)))
      this.#leaseTimer.unref()
      this.#leaseTick()
      return
    }
    for (const route of this.#opts.store.routeNames) {
      const saved = this.#opts.store.getRolloutState(route)
      if (saved === null || saved === undefined) continue
      if (!isRecord(saved)) {
        this.#opts.logger.warn({ route }, 'unreadable rollout state in the state file: ignored')
        continue
      }
      if (this.#checked(route, saved) === undefined) continue
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
      // fleet: the route's record (any instance's) says it was started already
      if (this.#fleet !== undefined && this.#opts.store.getRolloutState(route) !== null) continue
      try {
        await this.start(route, plan)
      } catch (err) {
        if (this.#fleet !== undefined && err instanceof CanarydError && err.code === 'CANARYD_ERR_ROLLOUT_CONFLICT') continue
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
    return routeNotFound(route, this.#opts.store.routeNames)
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
    const fleet = this.#fleet
    if (fleet === undefined) return await this.#begin(route, rawPlan, req)
    // fleet: the instance that starts a rollout leads it; the lease makes sure only one does
    this.#fleetRefusals(route, fleet.up)
    this.#starting.add(route)
    let token: number
    try {
      token = await fleet.acquire(route)
    } finally {
      this.#starting.delete(route)
    }
    if (token === 0) {
      const h = await fleet.holder(route).catch(() => undefined)
      throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `instance ${h?.instance ?? '(another)'} leads a rollout of route ${route}; pause, promote or abort it first`)
    }
    return await this.#lead(route, token, async () => {
      this.#activeElsewhere(route)
      return await this.#begin(route, rawPlan, req)
    })
  }

  /** Fleet mode: why a start is refused before the lease is asked for (begin), or instead of asking (check). */
  #fleetRefusals (route: string, up: boolean): void {
    if (this.#opts.store.weights(route) === undefined) throw this.#noRoute(route)
    this.#activeElsewhere(route)
    if (this.#starting.has(route) || this.#held.has(route)) throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `route ${route} already has a rollout starting or running; pause, promote or abort it first`)
    if (!up) throw new CanarydError('CANARYD_ERR_STORE_UNAVAILABLE', 'the fleet store (Redis) cannot be reached: a rollout cannot start; nothing was changed')
  }

  /** Fleet mode: 409 when the fleet state holds an active rollout of the route. */
  #activeElsewhere (route: string): void {
    const r = this.#opts.store.getRolloutState(route)
    if (isRecord(r) && ACTIVE_STATES.has(r.state)) throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `route ${route} already has a rollout ${r.state}; pause, promote or abort it first`)
  }

  /**
   * What `begin` would answer now, without starting anything (the admin
   * API's `?dryRun=true`, the dashboard's Validate): the plan as it would
   * run (defaults filled in) and the warnings, or the same error a start
   * would throw — an invalid plan, a route that cannot take it, a rollout
   * already running.
   */
  check (route: string, rawPlan: unknown, req: StartRequest = {}): { plan: RolloutPlan; warnings: string[] } {
    if (this.#fleet !== undefined) this.#fleetRefusals(route, this.#fleet.up)
    const p = this.#prepare(route, rawPlan, req)
    return { plan: { ...p.plan, stable: p.stable }, warnings: p.warnings }
  }

  /** Everything `#begin` checks before it starts: the plan, the route, the request; throws what the API answers. */
  #prepare (route: string, rawPlan: unknown, req: StartRequest): { plan: RolloutPlan; stable: string; versions: string[]; canaryUpstream: string[] | undefined; currentWeight: number; warnings: string[]; existing: RolloutController | undefined } {
    const weights = this.#opts.store.weights(route)
    if (weights === undefined) throw this.#noRoute(route)
    const versions = Object.keys(weights)
    const spec = this.#opts.store.specs?.find((s) => s.name === route)
    const plan = validatePlan(rawPlan, versions, spec === undefined ? {} : planContext(spec))
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
      const problems = routeProblems(spec, plan, stable, this.#opts.store.specs ?? [])
      if (plan.analysis.loadTest !== undefined) {
        const target = this.#opts.loadTarget?.(route) ?? 'this process has no proxy listener to send it through'
        if (typeof target === 'string') problems.push(`analysis.loadTest: cannot run: ${target}`)
      }
      problems.push(...unsetSecrets(plan.analysis))
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
    return { plan, stable, versions, canaryUpstream, currentWeight, warnings, existing }
  }

  async #begin (route: string, rawPlan: unknown, req: StartRequest): Promise<{ record: RolloutRecord; warnings: string[] }> {
    const { plan, stable, versions, canaryUpstream, currentWeight, warnings, existing } = this.#prepare(route, rawPlan, req)
    for (const w of warnings) this.#opts.logger.warn({ route, canary: plan.canary }, w)
    this.#loadRefused.delete(route)
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

  /**
   * The proxy listens now: load tests of rollouts restored before it did
   * (a restart) start at once rather than at their first look.
   */
  listening (): void {
    for (const c of this.#controllers.values()) c.syncLoad()
  }

  #get (route: string): RolloutController {
    const c = this.#controllers.get(route)
    if (c === undefined) {
      if (this.#opts.store.weights(route) === undefined) throw this.#noRoute(route)
      throw createError('CANARYD_ERR_NO_ROLLOUT', { route })
    }
    return c
  }

  /** The rollout record of a route (404 when none); in fleet mode the fleet's, whichever instance leads it. */
  get (route: string): RolloutRecord {
    if (this.#fleet !== undefined) return this.#fleetRecord(route)
    return this.#get(route).record
  }

  #fleetRecord (route: string): RolloutRecord {
    const r = this.#opts.store.getRolloutState(route)
    if (isRecord(r)) return r
    if (this.#opts.store.weights(route) === undefined) throw this.#noRoute(route)
    throw createError('CANARYD_ERR_NO_ROLLOUT', { route })
  }

  /**
   * Fleet mode: carries an action out where the rollout runs. Here when
   * this instance leads it; at its leader (forwarded) when another does;
   * when nobody does (a finished rollout, or a leader gone), here after
   * taking the lease, so an operator never waits for the takeover timer.
   */
  async #act<T> (route: string, op: string, local: (c: RolloutController) => Promise<T>): Promise<T> {
    const fleet = this.#fleet
    const mine = this.#controllers.get(route)
    if (fleet === undefined) return await local(this.#get(route))
    if (mine !== undefined && this.#held.has(route)) return await this.#settled(route, mine, local)
    const finished = async (record: RolloutRecord): Promise<T> => {
      // a finished rollout: the controller says why the action does not apply (409), writing nothing
      const c = RolloutController.restore(record, this.#deps())
      try {
        return await local(c)
      } finally {
        c.close()
      }
    }
    const record = this.#fleetRecord(route)
    if (!ACTIVE_STATES.has(record.state)) return await finished(record)
    if (!fleet.up) throw new CanarydError('CANARYD_ERR_STORE_UNAVAILABLE', `the fleet store (Redis) cannot be reached: the rollout of route ${route} cannot be ${op}d now; nothing was changed`)
    for (let i = 0; i < 2; i++) {
      const h = await fleet.holder(route)
      if (h !== undefined && h.instance !== fleet.self) return await fleet.call(h.instance, { op, route }) as T
      if (h === undefined && await this.#takeOver(route)) return await this.#settled(route, this.#controllers.get(route)!, local)
    }
    // the rollout may have finished while its lead changed hands: then its own answer
    const now = this.#fleetRecord(route)
    if (!ACTIVE_STATES.has(now.state)) return await finished(now)
    throw new CanarydError('CANARYD_ERR_STORE_CONFLICT', `the lead of the rollout of route ${route} is changing hands; retry`)
  }

  /** Runs an action on the controller this instance leads; a rollout it finished gives its lease up (after every write of the action). */
  async #settled<T> (route: string, c: RolloutController, fn: (c: RolloutController) => Promise<T>): Promise<T> {
    try {
      return await fn(c)
    } finally {
      if (!c.active) this.#releaseLease(route)
    }
  }

  /**
   * An action another instance forwarded: carried out only while this
   * instance leads the rollout; otherwise not answered (the caller hears
   * the leader, or times out and retries), so a process that does not lead
   * can never answer for one that does.
   */
  async #serveCall (c: { op: string; route: string }): Promise<{ result: unknown } | undefined> {
    const ctl = this.#controllers.get(c.route)
    const op = Object.hasOwn(ACTIONS, c.op) ? ACTIONS[c.op] : undefined
    if (ctl === undefined || op === undefined) return undefined
    if (this.#held.has(c.route)) return { result: await this.#settled(c.route, ctl, op) }
    // the rollout this instance led has just finished (lease given up): the same record everywhere, so its answer (409, and why) is the fleet's
    const saved = this.#opts.store.getRolloutState(c.route)
    if (!ctl.active && isRecord(saved) && saved.revision === ctl.record.revision) return { result: await op(ctl) }
    return undefined
  }

  /** The controller of a route (tests feed its windows). */
  controller (route: string): RolloutController | undefined {
    return this.#controllers.get(route)
  }

  /** Pauses (409 unless progressing or awaiting promotion). */
  async pause (route: string): Promise<RolloutRecord> {
    return await this.#act(route, 'pause', ACTIONS.pause!) as RolloutRecord
  }

  /** Resumes (409 unless paused). */
  async resume (route: string): Promise<RolloutRecord> {
    return await this.#act(route, 'resume', ACTIONS.resume!) as RolloutRecord
  }

  /** Promotes now; `held` when the confirm-promotion gate said no. */
  async promote (route: string): Promise<{ record: RolloutRecord; held: boolean }> {
    return await this.#act(route, 'promote', ACTIONS.promote!) as { record: RolloutRecord; held: boolean }
  }

  /** Aborts: canary to 0, `aborted`. */
  async abort (route: string): Promise<RolloutRecord> {
    return await this.#act(route, 'abort', ACTIONS.abort!) as RolloutRecord
  }

  /** The summary for GET /api/v1/routes, or null. */
  summary (route: string): RolloutSummary | null {
    let r: RolloutRecord
    if (this.#fleet !== undefined) {
      const saved = this.#opts.store.getRolloutState(route)
      if (!isRecord(saved)) return null
      r = saved
    } else {
      const c = this.#controllers.get(route)
      if (c === undefined) return null
      r = c.record
    }
    return { state: r.state, canary: r.plan.canary, step: r.stepIndex + 1, steps: r.plan.steps.length, weight: r.weight, failedChecks: r.failedChecks, phase: phaseOf(r) }
  }

  /** Stops every timer (process shutdown); records stay as saved. */
  close (): void {
    if (this.#leaseTimer !== undefined) clearInterval(this.#leaseTimer)
    this.#leaseTimer = undefined
    for (const c of this.#controllers.values()) c.close()
    this.#stats?.close()
  }

  /** Fleet mode, on shutdown: gives up the leases held, so another instance takes the rollouts over at once (not after their TTL). */
  async leave (): Promise<void> {
    const fleet = this.#fleet
    if (fleet === undefined) return
    const held = [...this.#held]
    this.#held.clear()
    await Promise.all(held.map(async ([route, h]) => { await fleet.release(route, h.token).catch(() => {}) }))
  }
}
