/**
 * canaryd_rollout_* metrics (prom-client, on the app's registry). Every series
 * exists from start-up at zero for every route, so "no rollout" shows as
 * zeros rather than as missing data.
 */
import { Counter, Gauge, type Registry } from 'prom-client'
import type { RolloutObserver, RolloutRecord } from './controller.js'
import type { Verdict } from './judge.js'
import { ROLLOUT_STATES } from '../config/plan.js'

const VERDICTS: readonly Verdict[] = ['pass', 'fail', 'inconclusive']

/** The rollout metrics of one process. */
export class RolloutMetrics implements RolloutObserver {
  readonly state: Gauge<'route' | 'state'>
  readonly step: Gauge<'route'>
  readonly checks: Counter<'route' | 'result'>
  readonly metricValue: Gauge<'route' | 'metric' | 'version'>
  /** Per route, the canaryd_rollout_metric_value series set so far (cleared when the next rollout starts). */
  readonly #metricSeries = new Map<string, Map<string, { metric: string; version: string }>>()
  /** Per route, the start of the rollout last seen. */
  readonly #started = new Map<string, string>()

  constructor (registry: Registry, routes: readonly string[]) {
    const registers = [registry]
    this.state = new Gauge({ name: 'canaryd_rollout_state', help: 'Rollout state per route: 1 for the current state, 0 for the others (all 0: no rollout).', labelNames: ['route', 'state'], registers })
    this.step = new Gauge({ name: 'canaryd_rollout_step', help: 'Current rollout step per route, 1-based (0: no rollout).', labelNames: ['route'], registers })
    this.checks = new Counter({ name: 'canaryd_rollout_checks_total', help: 'Rollout checks per route by result (pass, fail, inconclusive).', labelNames: ['route', 'result'], registers })
    this.metricValue = new Gauge({ name: 'canaryd_rollout_metric_value', help: 'The last value of each provider metric of a rollout\'s analysis (analysis.metrics) per route, metric name and version (the canary and, for compare, the baseline); NaN when the provider had no data. Series appear with a rollout\'s first check and are cleared when the next rollout of the route starts.', labelNames: ['route', 'metric', 'version'], registers })
    for (const r of routes) {
      for (const s of ROLLOUT_STATES) this.state.labels(r, s).set(0)
      this.step.labels(r).set(0)
      for (const v of VERDICTS) this.checks.labels(r, v).inc(0)
    }
  }

  update (record: RolloutRecord): void {
    // a new rollout starts with no provider figures: the last one's would read as this one's
    if (record.checks.length === 0 && record.startedAt !== this.#started.get(record.route)) this.forgetMetrics(record.route)
    this.#started.set(record.route, record.startedAt)
    for (const s of ROLLOUT_STATES) this.state.labels(record.route, s).set(s === record.state ? 1 : 0)
    this.step.labels(record.route).set(record.stepIndex + 1)
  }

  check (route: string, verdict: Verdict): void {
    this.checks.labels(route, verdict).inc()
  }

  metric (route: string, metric: string, version: string, value: number | null): void {
    this.metricValue.labels(route, metric, version).set(value ?? Number.NaN)
    let set = this.#metricSeries.get(route)
    if (set === undefined) this.#metricSeries.set(route, set = new Map())
    set.set(`${metric}\0${version}`, { metric, version })
  }

  forgetMetrics (route: string): void {
    for (const l of this.#metricSeries.get(route)?.values() ?? []) this.metricValue.remove({ route, metric: l.metric, version: l.version })
    this.#metricSeries.delete(route)
  }
}
