import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { UPSTREAM_ERROR_KINDS, type UpstreamErrorKind } from '../upstream/classify.js'
import type { ObserverFactory, VersionObserver } from './observer.js'

/** Histogram buckets, seconds: 1 ms to 30 s. */
export const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

/** Status codes whose series exist from start-up, so a 0 % canary shows at zero. */
export const PRECREATED_CODES = [200, 404, 499, 502, 503, 504]

type CounterChild = ReturnType<Counter<string>['labels']>
type GaugeChild = ReturnType<Gauge<string>['labels']>
type HistogramChild = ReturnType<Histogram<string>['labels']>

/** Per (route, version) listener for finished requests, e.g. the rollout controller's windows. */
export type FinishListener = (status: number, seconds: number, upstreamError: boolean) => void

/**
 * canaryd's Prometheus metrics (prom-client): the four golden signals per
 * route and version. Labels are bounded — route and version from config,
 * status code, error kind — and children are bound once per (route, version)
 * by `bind`, so the hot path never looks a label set up.
 */
export class PrometheusMetrics implements ObserverFactory {
  readonly registry: Registry
  readonly requests: Counter<'route' | 'version' | 'code'>
  readonly duration: Histogram<'route' | 'version'>
  readonly upstreamErrors: Counter<'route' | 'version' | 'kind'>
  readonly inFlight: Gauge<'route' | 'version'>
  readonly weight: Gauge<'route' | 'version'>
  readonly #known = new Set<string>()
  readonly #listeners = new Map<string, FinishListener[]>()

  constructor (opts: { defaultMetrics?: boolean; registry?: Registry } = {}) {
    const registers = [this.registry = opts.registry ?? new Registry()]
    this.requests = new Counter({ name: 'canaryd_requests_total', help: 'Responses sent to clients, by route, version and HTTP status (proxy-made 502/503/504 included; 499 = client left first).', labelNames: ['route', 'version', 'code'], registers })
    this.duration = new Histogram({ name: 'canaryd_request_duration_seconds', help: 'Time from request received to response finished, by route and version.', labelNames: ['route', 'version'], buckets: DURATION_BUCKETS, registers })
    this.upstreamErrors = new Counter({ name: 'canaryd_upstream_errors_total', help: 'Upstream failures by route, version and kind (connect, timeout, reset, protocol, other).', labelNames: ['route', 'version', 'kind'], registers })
    this.inFlight = new Gauge({ name: 'canaryd_requests_in_flight', help: 'Requests being proxied now, by route and version (saturation).', labelNames: ['route', 'version'], registers })
    this.weight = new Gauge({ name: 'canaryd_route_weight', help: 'Current routing weight of each version, in percent.', labelNames: ['route', 'version'], registers })
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'canaryd_' })
  }

  /** Adds a listener called for every finished request of (route, version). */
  onFinish (route: string, version: string, listener: FinishListener): void {
    const key = `${route}\u0000${version}`
    const l = this.#listeners.get(key)
    if (l === undefined) this.#listeners.set(key, [listener])
    else l.push(listener)
  }

  bind (route: string, version: string): VersionObserver {
    const labels = { route, version }
    this.#known.add(`${route}\u0000${version}`)
    const codes = new Map<number, CounterChild>()
    const childFor = (status: number): CounterChild => {
      let c = codes.get(status)
      if (c === undefined) {
        c = this.requests.labels(route, version, String(status))
        codes.set(status, c)
      }
      return c
    }
    for (const code of PRECREATED_CODES) childFor(code).inc(0)
    const errors = new Map<UpstreamErrorKind, CounterChild>()
    for (const kind of UPSTREAM_ERROR_KINDS) {
      const c = this.upstreamErrors.labels(route, version, kind)
      c.inc(0)
      errors.set(kind, c)
    }
    const inFlight: GaugeChild = this.inFlight.labels(labels)
    inFlight.set(0)
    const duration: HistogramChild = this.duration.labels(labels)
    // listeners array shared by reference: added later (rollouts) still seen
    let listeners = this.#listeners.get(`${route}\u0000${version}`)
    if (listeners === undefined) {
      listeners = []
      this.#listeners.set(`${route}\u0000${version}`, listeners)
    }
    const ls = listeners
    return {
      start () {
        inFlight.inc()
      },
      finish (status: number, seconds: number, upstreamFailed: boolean) {
        inFlight.dec()
        childFor(status).inc()
        duration.observe(seconds)
        if (ls.length !== 0) {
          for (let i = 0; i < ls.length; i++) ls[i]!(status, seconds, upstreamFailed)
        }
      },
      upstreamError (kind: UpstreamErrorKind) {
        errors.get(kind)!.inc()
      }
    }
  }

  setWeights (weights: ReadonlyArray<{ route: string; version: string; weight: number }>): void {
    for (const w of weights) this.weight.labels(w.route, w.version).set(w.weight)
  }

  /** The exposition text for GET /metrics. */
  async expose (): Promise<string> {
    return await this.registry.metrics()
  }
}
