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

  constructor (registry: Registry, routes: readonly string[]) {
    const registers = [registry]
    this.state = new Gauge({ name: 'canaryd_rollout_state', help: 'Rollout state per route: 1 for the current state, 0 for the others (all 0: no rollout).', labelNames: ['route', 'state'], registers })
    this.step = new Gauge({ name: 'canaryd_rollout_step', help: 'Current rollout step per route, 1-based (0: no rollout).', labelNames: ['route'], registers })
    this.checks = new Counter({ name: 'canaryd_rollout_checks_total', help: 'Rollout checks per route by result (pass, fail, inconclusive).', labelNames: ['route', 'result'], registers })
    for (const r of routes) {
      for (const s of ROLLOUT_STATES) this.state.labels(r, s).set(0)
      this.step.labels(r).set(0)
      for (const v of VERDICTS) this.checks.labels(r, v).inc(0)
    }
  }

  update (record: RolloutRecord): void {
    for (const s of ROLLOUT_STATES) this.state.labels(record.route, s).set(s === record.state ? 1 : 0)
    this.step.labels(record.route).set(record.stepIndex + 1)
  }

  check (route: string, verdict: Verdict): void {
    this.checks.labels(route, verdict).inc()
  }
}
