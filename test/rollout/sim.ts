/**
 * Synthetic traffic for controller tests and the false-rollback simulation:
 * seeded, pure, no sockets and no sleeping. Each interval feeds the
 * controller's two windows with requests drawn from per-version models, the
 * canary's share following the weight the controller has set.
 */
import { ManualClock } from '../../src/rollout/clock.js'
import { mulberry32 } from '../../src/rollout/loadtest.js'
import { RolloutController, type ControllerDeps, type RolloutHost, type RolloutNotifier, type RolloutRecord } from '../../src/rollout/controller.js'
import { validatePlan, type RolloutEvent, type RolloutPlan } from '../../src/config/plan.js'
import type { SampleWindow } from '../../src/rollout/window.js'

/** mulberry32 (the load generator's): a tiny seeded PRNG, so every simulated rollout is reproducible. */
export const rng = mulberry32

/** Standard normal draw (Box-Muller). */
export function gaussian (random: () => number): number {
  let u = random()
  while (u === 0) u = random()
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random())
}

/** A version's behaviour: failure probability and log-normal latency. */
export interface VersionModel {
  errorRate: number
  /** Median latency, ms. */
  medianMs: number
  /** Log-space standard deviation (0.6 ≈ p99 four times the median: noisy). */
  sigma: number
}

/** Feeds `n` requests drawn from `m` into `w`; `drift` multiplies latency (shared load). */
export function feed (w: SampleWindow, n: number, m: VersionModel, random: () => number, drift = 1): void {
  for (let i = 0; i < n; i++) {
    if (random() < m.errorRate) w.record(500, 0.001, false)
    else w.record(200, (m.medianMs * drift * Math.exp(m.sigma * gaussian(random))) / 1000, false)
  }
}

/** The plan of the issue's example (webhooks left out). */
export const ISSUE_PLAN = {
  canary: 'canary',
  steps: [1, 5, 10, 25, 50, 100],
  intervalMs: 60000,
  analysis: {
    minRequests: 200,
    maxFailedChecks: 3,
    successRate: { min: 99 },
    latencyP99Ms: { max: 500 },
    baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 1.5, judge: 'mann-whitney' }
  },
  promotion: 'auto'
}

/** A controller with in-memory host and notifier, on a manual clock. */
export interface Harness {
  clock: ManualClock
  controller: RolloutController
  applied: Array<{ weights: Record<string, number>; reason: string }>
  persisted: RolloutRecord[]
  events: RolloutEvent[]
  plan: RolloutPlan
}

/** In-memory host: records weights and persisted records. */
export function memoryHost (applied: Harness['applied'], persisted: RolloutRecord[]): RolloutHost {
  return {
    applyWeights (_route, weights, reason, record) {
      applied.push({ weights, reason })
      persisted.push(record)
    },
    persist (_route, record) { persisted.push(record) }
  }
}

/** Notifier that records events; `gate` answers the confirm-promotion gate. */
export function memoryNotifier (events: RolloutEvent[], gate: () => boolean = () => true): RolloutNotifier {
  return {
    notify (_hooks, event) { events.push(event) },
    confirm: async () => gate() ? { ok: true, detail: '200' } : { ok: false, detail: 'HTTP 403' }
  }
}

/** Starts a rollout of `canary` over `stable` on route `web` with an in-memory host (`deps` adds e.g. listener subscriptions). */
export async function startHarness (rawPlan: unknown, opts: { gate?: () => boolean; reservoir?: number; deps?: Pick<ControllerDeps, 'subscribe' | 'subscribeEjection'> } = {}): Promise<Harness> {
  const clock = new ManualClock()
  const applied: Harness['applied'] = []
  const persisted: RolloutRecord[] = []
  const events: RolloutEvent[] = []
  const plan = validatePlan(rawPlan, ['stable', 'canary'])
  const deps: ControllerDeps = { host: memoryHost(applied, persisted), clock, notifier: memoryNotifier(events, opts.gate), reservoir: opts.reservoir ?? 1024, ...opts.deps }
  const controller = await RolloutController.start('web', plan, 'stable', ['stable', 'canary'], deps)
  return { clock, controller, applied, persisted, events, plan }
}

/** Traffic of one simulated interval: `total` requests split by the canary's current weight. */
export function feedInterval (h: Harness, total: number, stable: VersionModel, canary: VersionModel, random: () => number, drift = 1): void {
  // the weights last applied: the record getter clones the whole record, too slow to call per slice
  const last = h.applied[h.applied.length - 1]
  const w = (last?.weights[h.plan.canary] ?? h.controller.record.weight) / 100
  // binomial split approximated by its normal: the canary share varies like real traffic does
  const mean = total * w
  const nCanary = Math.max(0, Math.round(mean + Math.sqrt(mean * (1 - w)) * gaussian(random)))
  feed(h.controller.windows.canary, nCanary, canary, random, drift)
  feed(h.controller.windows.stable, total - nCanary, stable, random, drift)
}

/** Outcome of one simulated rollout. */
export interface SimOutcome {
  state: string
  intervals: number
  checks: number
  failedChecks: number
  /** Checks that were not inconclusive (among the last 20 recorded). */
  conclusive: number
  /** Kinds of failed-check reasons: 'successRate', 'latencyP99Ms', 'errorRate vs stable', 'latency vs stable'. */
  reasons: string[]
  /** Simulated milliseconds from the start to the end (promoted or rolled back); null when it had not ended. */
  endedMs: number | null
}

/** Options of a simulated rollout. */
export interface SimOptions {
  /** Requests per interval, all versions (default 10 000). */
  total?: number
  /** Intervals before giving up (default 60). */
  maxIntervals?: number
  /**
   * Feeds each interval in this many equal slices, advancing the clock one
   * slice at a time (default 1: the whole interval, then one advance). A
   * judge that looks within the interval (sequential) then sees the traffic
   * arrive as it would; match it to the controller's look period
   * (intervalMs / looks = lookEveryMs) so every look sees a fresh slice.
   */
  looks?: number
}

function reasonKind (reason: string): string {
  if (reason.startsWith('canary success rate')) return 'successRate.min'
  if (reason.includes('ms is above')) return 'latencyP99Ms.max'
  if (reason.startsWith('canary error rate')) return 'error rate vs stable'
  if (reason.includes('vs stable')) return 'latency vs stable'
  return 'other'
}

/**
 * Runs one rollout to its end (or `maxIntervals`): each interval, traffic is
 * fed, then the clock advances one interval so the controller's own timer
 * runs the check (with `looks`, slice by slice). A shared log-normal "load
 * drift" moves both versions' latency together, as real load does; it is
 * drawn once per interval, so slicing an interval changes nothing else.
 */
export async function simulateRollout (rawPlan: unknown, stable: VersionModel, canary: VersionModel, seed: number, totalOrOptions: number | SimOptions = 10_000, maxIntervalsArg = 60): Promise<SimOutcome> {
  const opts: SimOptions = typeof totalOrOptions === 'number' ? { total: totalOrOptions, maxIntervals: maxIntervalsArg } : totalOrOptions
  const total = opts.total ?? 10_000
  const maxIntervals = opts.maxIntervals ?? 60
  const looks = opts.looks ?? 1
  const random = rng(seed)
  const h = await startHarness(rawPlan, { reservoir: 512 })
  const slice = h.plan.intervalMs / looks
  let intervals = 0
  let checks = 0
  while (h.controller.active && intervals < maxIntervals) {
    const drift = Math.exp(0.2 * gaussian(random))
    for (let i = 0; i < looks && h.controller.active; i++) {
      // integer slices that add up to `total` exactly
      feedInterval(h, Math.floor((i + 1) * total / looks) - Math.floor(i * total / looks), stable, canary, random, drift)
      await h.clock.advance(slice)
    }
    intervals++
    checks = h.controller.record.checks.length
  }
  const r = h.controller.record
  h.controller.close()
  const reasons = r.checks.filter((c) => c.verdict === 'fail').flatMap((c) => c.reasons.map(reasonKind))
  const end = r.history.findLast((e) => e.event === 'promoted' || e.event === 'rolled-back')
  const endedMs = end === undefined ? null : Date.parse(end.at) - Date.parse(r.startedAt)
  return { state: r.state, intervals, checks, failedChecks: r.failedChecks, conclusive: r.checks.filter((c) => c.verdict !== 'inconclusive').length, reasons, endedMs }
}
