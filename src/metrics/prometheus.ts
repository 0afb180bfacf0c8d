import { collectDefaultMetrics, Registry } from 'prom-client'
import type { FamilyJson } from './exposition.js'
import { MIRROR_RESULTS, UPSTREAM_ERROR_KINDS, type MirrorResult, type UpstreamErrorKind } from './kinds.js'
import { DEFAULT_METRICS_PREFIX, METRIC_NAMES, REQUEST_SOURCES, SYNTHETIC_HEADER } from './names.js'
import type { CounterChild, MirrorObserver, ObserverFactory, SegmentLabels, ShadowListener, ShadowPair, VersionObserver } from './observer.js'

export { DEFAULT_METRICS_PREFIX, METRIC_NAMES, REQUEST_SOURCES, SYNTHETIC_HEADER }

/** Histogram buckets, seconds: 1 ms to 30 s (upper bounds, `le`; +Inf is added). */
export const DURATION_BUCKETS: readonly number[] = Object.freeze([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])

/**
 * Status codes whose series exist from start-up (for both sources), so a
 * 0 % canary shows at zero and `rate(...{code=~"5.."}[5m])` is 0, not "no
 * data", before the first error. Other codes appear (for the source that
 * sent them) when first sent and never disappear.
 */
export const PRECREATED_CODES: readonly number[] = Object.freeze([200, 404, 499, 500, 502, 503, 504])

/** prom-client default metrics removed from the exposition (see the constructor). */
export const DROPPED_DEFAULT_METRICS: readonly string[] = Object.freeze(['active_handles_total', 'active_requests_total', 'active_resources_total'].map((n) => `${DEFAULT_METRICS_PREFIX}nodejs_${n}`))

/**
 * Per (route, version) listener for finished requests, e.g. the rollout
 * controller's windows; `synthetic` marks the load generator's requests
 * (a listener that judges user traffic skips them).
 */
export type FinishListener = (status: number, seconds: number, upstreamError: boolean, synthetic: boolean) => void

/** Per (route, version) listener for outlier-detection ejections, e.g. the rollout controller's judge. */
export type EjectionListener = () => void

/** Totals of one (route, version) since start-up, for the control plane and tests. */
export interface VersionTotals {
  readonly route: string
  readonly version: string
  /** Responses by status code, every source (only codes sent at least once, plus the pre-created ones). */
  readonly codes: ReadonlyMap<number, number>
  /** The synthetic part of `codes` (source="synthetic"), same keys; the user part is the difference. */
  readonly syntheticCodes: ReadonlyMap<number, number>
  /** All responses (the histogram's `_count`). */
  readonly count: number
  /** Sum of durations, seconds (the histogram's `_sum`). */
  readonly sum: number
  readonly inFlight: number
  readonly upstreamErrors: Readonly<Record<UpstreamErrorKind, number>>
  readonly ejections: number
}

const PRECREATED: ReadonlySet<number> = new Set(PRECREATED_CODES)
// Status codes are 100–999 in node:http; one slot per code makes the count a plain index.
const CODE_SLOTS = 1000
const BOUNDS = Float64Array.from(DURATION_BUCKETS)
const NB = BOUNDS.length
const LE = DURATION_BUCKETS.map((b) => String(b))

/**
 * The accumulators of one (route, version). Plain numbers in typed arrays:
 * the hot path increments fields of an object it already holds, with no label
 * hashing or validation (prom-client's `labels(...)` children re-hash their
 * label set on every call), and the exposition reads them at scrape time.
 */
class VersionSeries {
  readonly route: string
  readonly version: string
  readonly key: string
  /** Responses by status code, source="user". */
  readonly codes = new Float64Array(CODE_SLOTS)
  /** Responses by status code, source="synthetic" (x-canaryd-synthetic: 1). */
  readonly syntheticCodes = new Float64Array(CODE_SLOTS)
  /** Non-cumulative: buckets[i] counts observations in (BOUNDS[i-1], BOUNDS[i]]; the last slot is +Inf. */
  readonly buckets = new Float64Array(NB + 1)
  readonly errors = new Float64Array(UPSTREAM_ERROR_KINDS.length)
  ejections = 0
  websockets = 0
  websocketsOpen = 0
  sum = 0
  count = 0
  inFlight = 0
  readonly listeners: FinishListener[] = []
  readonly ejectionListeners: EjectionListener[] = []

  constructor (route: string, version: string, key: string) {
    this.route = route
    this.version = version
    this.key = key
  }
}

/** One canaryd_segment_requests_total child: a plain number the hot path increments. */
class SegmentSeries implements CounterChild {
  readonly route: string
  readonly segment: string
  readonly version: string
  value = 0

  constructor (l: SegmentLabels) {
    this.route = l.route
    this.segment = l.segment
    this.version = l.version
  }

  inc (): void {
    this.value++
  }
}

const RESULT_INDEX: Readonly<Record<MirrorResult, number>> = Object.freeze(
  Object.fromEntries(MIRROR_RESULTS.map((k, i) => [k, i])) as Record<MirrorResult, number>
)

/**
 * The canaryd_mirror_requests_total series of one (route, mirror version),
 * and the route's shadow-pair listeners (the list is the route's, shared by
 * reference, so a subscription made before the mirror is bound is seen).
 */
class MirrorSeries implements MirrorObserver {
  readonly route: string
  readonly version: string
  readonly counts = new Float64Array(MIRROR_RESULTS.length)
  readonly #listeners: ShadowListener[]

  constructor (route: string, version: string, listeners: ShadowListener[]) {
    this.route = route
    this.version = version
    this.#listeners = listeners
  }

  result (result: MirrorResult): void {
    this.counts[RESULT_INDEX[result]]!++
  }

  get pairing (): boolean {
    return this.#listeners.length !== 0
  }

  pair (pair: ShadowPair): void {
    const l = this.#listeners
    for (let i = 0; i < l.length; i++) l[i]!(pair)
  }
}

const KIND_INDEX: Readonly<Record<UpstreamErrorKind, number>> = Object.freeze(
  Object.fromEntries(UPSTREAM_ERROR_KINDS.map((k, i) => [k, i])) as Record<UpstreamErrorKind, number>
)

/** One exposed sample in prom-client's collector format. */
export interface Sample {
  labels: Record<string, string>
  value: number
  metricName?: string
}

/**
 * A metric family read from the accumulators at scrape time. It has the shape
 * prom-client's Registry renders (name, help, type, get()), so the default
 * metrics and ours share one registry, one exposition and one content type.
 */
/** Adds `listener` to `list` (shared by reference with the bound observer); returns its remover. */
function addListener<T> (list: T[], listener: T): () => void {
  list.push(listener)
  return () => {
    const i = list.indexOf(listener)
    if (i !== -1) list.splice(i, 1)
  }
}

class Family {
  readonly name: string
  readonly help: string
  readonly type: 'counter' | 'gauge' | 'histogram'
  /**
   * How prom-client's AggregatorRegistry merges this family across cluster
   * workers: counts add up ('sum'); a weight is the same in every worker and
   * must not be multiplied by their number ('max').
   */
  readonly aggregator: 'sum' | 'max'
  readonly #read: () => Sample[]
  readonly #reset: () => void

  constructor (name: string, help: string, type: 'counter' | 'gauge' | 'histogram', read: () => Sample[], reset: () => void, aggregator: 'sum' | 'max' = 'sum') {
    this.name = name
    this.help = help
    this.type = type
    this.#read = read
    this.#reset = reset
    this.aggregator = aggregator
  }

  get (): { name: string; help: string; type: string; values: Sample[]; aggregator: string } {
    return { name: this.name, help: this.help, type: this.type, values: this.#read(), aggregator: this.aggregator }
  }

  reset (): void {
    this.#reset()
  }
}

/**
 * canaryd's Prometheus metrics: the four golden signals per route and
 * version. Labels are bounded — route and version from config, status code,
 * error kind — and each (route, version) gets its accumulators once, in
 * `bind` (called by the proxy when a routing table is bound), so a request
 * does a few array increments and never looks a label set up. prom-client
 * provides the registry, the text rendering and the Node default metrics
 * (prefix `canaryd_`).
 */
export class PrometheusMetrics implements ObserverFactory {
  readonly registry: Registry
  readonly #series = new Map<string, VersionSeries>()
  /** route\0version → current weight; versions gone from the table drop to 0 (they get no traffic). */
  readonly #weights = new Map<string, { route: string; version: string; weight: number }>()
  /** route\0segment\0version → child; exactly the table in force's (see bindSegments). */
  #segments = new Map<string, SegmentSeries>()
  /** route\0version → the mirror series of the table in force (see bindMirrors). */
  #mirrors = new Map<string, MirrorSeries>()
  /** route → its shadow-pair listeners; kept while subscribed or mirrored. */
  readonly #shadow = new Map<string, ShadowListener[]>()

  constructor (opts: { defaultMetrics?: boolean; registry?: Registry } = {}) {
    this.registry = opts.registry ?? new Registry()
    const all = (): VersionSeries[] => [...this.#series.values()]
    const resetAll = (): void => {
      for (const s of this.#series.values()) {
        s.codes.fill(0); s.syntheticCodes.fill(0); s.buckets.fill(0); s.errors.fill(0); s.sum = 0; s.count = 0; s.ejections = 0; s.websockets = 0
      }
      for (const s of this.#segments.values()) s.value = 0
      for (const m of this.#mirrors.values()) m.counts.fill(0)
    }
    const families = [
      new Family(METRIC_NAMES.requests, `Responses sent to clients, by route, version, HTTP status code (proxy-made 502/503/504 included; 499 = the client left before a status was sent) and source (synthetic: the request carried ${SYNTHETIC_HEADER}: 1, the rollout load generator's mark; user: every other).`, 'counter', () => {
        const out: Sample[] = []
        for (const s of all()) {
          for (let code = 0; code < CODE_SLOTS; code++) {
            const u = s.codes[code]!
            const y = s.syntheticCodes[code]!
            const pre = PRECREATED.has(code)
            if (u !== 0 || pre) out.push({ labels: { route: s.route, version: s.version, code: String(code), source: REQUEST_SOURCES[0] }, value: u })
            if (y !== 0 || pre) out.push({ labels: { route: s.route, version: s.version, code: String(code), source: REQUEST_SOURCES[1] }, value: y })
          }
        }
        return out
      }, resetAll),
      new Family(METRIC_NAMES.duration, 'Time from request received to response finished (or client gone), seconds, by route and version.', 'histogram', () => {
        const out: Sample[] = []
        for (const s of all()) {
          let cum = 0
          for (let i = 0; i <= NB; i++) {
            cum += s.buckets[i]!
            out.push({ metricName: `${METRIC_NAMES.duration}_bucket`, labels: { route: s.route, version: s.version, le: i < NB ? LE[i]! : '+Inf' }, value: cum })
          }
          out.push({ metricName: `${METRIC_NAMES.duration}_sum`, labels: { route: s.route, version: s.version }, value: s.sum })
          out.push({ metricName: `${METRIC_NAMES.duration}_count`, labels: { route: s.route, version: s.version }, value: s.count })
        }
        return out
      }, resetAll),
      new Family(METRIC_NAMES.upstreamErrors, 'Upstream failures by route, version and kind (connect, timeout, reset, protocol, other).', 'counter', () => {
        const out: Sample[] = []
        for (const s of all()) {
          for (let i = 0; i < UPSTREAM_ERROR_KINDS.length; i++) out.push({ labels: { route: s.route, version: s.version, kind: UPSTREAM_ERROR_KINDS[i]! }, value: s.errors[i]! })
        }
        return out
      }, resetAll),
      new Family(METRIC_NAMES.ejections, 'Times an endpoint of a version was ejected (outlier detection: consecutive gateway failures, or the active health check), by route and version.', 'counter',
        () => all().map((s) => ({ labels: { route: s.route, version: s.version }, value: s.ejections })),
        resetAll),
      new Family(METRIC_NAMES.websockets, 'WebSocket connections proxied, by route and version (counted when the upstream answered 101).', 'counter',
        () => all().map((s) => ({ labels: { route: s.route, version: s.version }, value: s.websockets })),
        resetAll),
      new Family(METRIC_NAMES.websocketsOpen, 'WebSocket connections open now, by route and version.', 'gauge',
        () => all().map((s) => ({ labels: { route: s.route, version: s.version }, value: s.websocketsOpen })),
        () => {}),
      new Family(METRIC_NAMES.inFlight, 'Requests being proxied now, by route and version (saturation).', 'gauge',
        () => all().map((s) => ({ labels: { route: s.route, version: s.version }, value: s.inFlight })),
        () => {}),
      new Family(METRIC_NAMES.weight, 'Current routing weight of each version, percent of the route\'s new sticky keys (0–100); updated on every routing-table change.', 'gauge',
        () => [...this.#weights.values()].map((w) => ({ labels: { route: w.route, version: w.version }, value: w.weight })),
        () => {}, 'max'),
      new Family(METRIC_NAMES.segmentRequests, 'Requests routed by a segment (the first segment of the route whose match held), by route, segment and the version picked; segment names are those of the route (config or admin API, at most 32 per route), never a request value.', 'counter',
        () => [...this.#segments.values()].map((s) => ({ labels: { route: s.route, segment: s.segment, version: s.version }, value: s.value })),
        resetAll),
      new Family(METRIC_NAMES.mirrorRequests, 'Mirrored copies of requests by route, mirror version and result: ok (answer < 500), 5xx, error (connect, reset, protocol, no endpoint, the user\'s body failed), timeout, dropped (over maxInFlight), too_large (body over maxBodyBytes or chunked: not copied).', 'counter',
        () => {
          const out: Sample[] = []
          for (const m of this.#mirrors.values()) {
            for (let i = 0; i < MIRROR_RESULTS.length; i++) out.push({ labels: { route: m.route, version: m.version, result: MIRROR_RESULTS[i]! }, value: m.counts[i]! })
          }
          return out
        },
        resetAll)
    ]
    // prom-client's Registry accepts any object of this shape; its typings only name its own classes
    for (const f of families) this.registry.registerMetric(f as unknown as Parameters<Registry['registerMetric']>[0])
    if (opts.defaultMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry, prefix: DEFAULT_METRICS_PREFIX })
      // prom-client's `*_total` gauges break the naming rule promtool lints (only counters end
      // in _total) and equal sum() of their per-type siblings, which stay.
      for (const name of DROPPED_DEFAULT_METRICS) this.registry.removeSingleMetric(name)
    }
  }

  #seriesFor (route: string, version: string): VersionSeries {
    const key = `${route}\u0000${version}`
    let s = this.#series.get(key)
    if (s === undefined) {
      s = new VersionSeries(route, version, key)
      this.#series.set(key, s)
    }
    return s
  }

  /**
   * Adds a listener called for every finished request of (route, version),
   * also for versions not bound yet. Returns a function that removes it.
   */
  onFinish (route: string, version: string, listener: FinishListener): () => void {
    return addListener(this.#seriesFor(route, version).listeners, listener)
  }

  /**
   * Adds a listener called every time outlier detection ejects (route,
   * version), also for versions not bound yet. Returns a function that removes it.
   */
  onEjected (route: string, version: string, listener: EjectionListener): () => void {
    return addListener(this.#seriesFor(route, version).ejectionListeners, listener)
  }

  /**
   * The segment counter children of the table being bound (called by the
   * proxy on every bind, in the order given): afterwards exactly these
   * exist, so segments a change removed leave the exposition, as versions
   * a reload removed do. Kept children keep their counts.
   */
  bindSegments (children: readonly SegmentLabels[]): CounterChild[] {
    const next = new Map<string, SegmentSeries>()
    const out = children.map((l) => {
      const key = `${l.route}\u0000${l.segment}\u0000${l.version}`
      let s = next.get(key) ?? this.#segments.get(key)
      if (s === undefined) s = new SegmentSeries(l)
      next.set(key, s)
      return s
    })
    this.#segments = next
    return out
  }

  /**
   * The mirror observers of the table being bound, one per (route, mirror
   * version), all six results at 0 when new. A rollout's shadow mirror
   * appears with the table that has it; its series stay after the mirror is
   * gone (until the route or version is: `unbind`), so a shadow phase
   * shorter than a scrape interval still leaves its counts in Prometheus.
   */
  bindMirrors (mirrors: ReadonlyArray<{ route: string; version: string }>): MirrorObserver[] {
    const next = new Map<string, MirrorSeries>(this.#mirrors)
    const out = mirrors.map((m) => {
      const key = `${m.route}\u0000${m.version}`
      let s = next.get(key)
      if (s === undefined) s = new MirrorSeries(m.route, m.version, this.#shadowList(m.route))
      next.set(key, s)
      return s
    })
    this.#mirrors = next
    for (const [route, list] of this.#shadow) if (list.length === 0 && !this.#mirrored(route)) this.#shadow.delete(route)
    return out
  }

  /**
   * Adds a listener for the shadow pairs of `route` (mirrored requests whose
   * user answer and copy answer are both known), also before the route has a
   * mirror. Returns a function that removes it.
   */
  subscribeShadow (route: string, listener: ShadowListener): () => void {
    const list = this.#shadowList(route)
    const remove = addListener(list, listener)
    return () => {
      remove()
      if (list.length === 0 && !this.#mirrored(route) && this.#shadow.get(route) === list) this.#shadow.delete(route)
    }
  }

  /** The listener list of `route`, shared by reference with its mirror series. */
  #shadowList (route: string): ShadowListener[] {
    let list = this.#shadow.get(route)
    if (list === undefined) {
      list = []
      this.#shadow.set(route, list)
    }
    return list
  }

  #mirrored (route: string): boolean {
    for (const m of this.#mirrors.values()) if (m.route === route) return true
    return false
  }

  /** Mirror counts of (route, mirror version) by result, or undefined when it has no series (tests, the control plane). */
  mirrorTotals (route: string, version: string): Readonly<Record<MirrorResult, number>> | undefined {
    const m = this.#mirrors.get(`${route}\u0000${version}`)
    if (m === undefined) return undefined
    return Object.fromEntries(MIRROR_RESULTS.map((r, i) => [r, m.counts[i]!])) as Record<MirrorResult, number>
  }

  /**
   * Returns the observer of (route, version), creating its series at zero:
   * every pre-created code, every error kind, the histogram and in-flight
   * exist from here on. Binding the same pair again keeps its counts.
   */
  bind (route: string, version: string): VersionObserver {
    const s = this.#seriesFor(route, version)
    const { codes, syntheticCodes, buckets, errors, listeners } = s
    return {
      start () {
        s.inFlight++
      },
      finish (status: number, seconds: number, upstreamFailed: boolean, synthetic: boolean) {
        s.inFlight--
        // the source picks one of two pre-made arrays: no label, no string, no branch beyond this one
        ;(synthetic ? syntheticCodes : codes)[status >= 0 && status < CODE_SLOTS ? status : 0]!++
        // linear scan: 14 bounds, and most requests stop in the first few
        let i = 0
        while (i < NB && seconds > BOUNDS[i]!) i++
        buckets[i]!++
        s.sum += seconds
        s.count++
        if (listeners.length !== 0) {
          for (let j = 0; j < listeners.length; j++) listeners[j]!(status, seconds, upstreamFailed, synthetic)
        }
      },
      upstreamError (kind: UpstreamErrorKind) {
        errors[KIND_INDEX[kind]]!++
      },
      ejected () {
        s.ejections++
        // cold path (once per ejection): a copy, so a listener may unsubscribe while called
        for (const l of s.ejectionListeners.slice()) l()
      },
      websocket (delta: 1 | -1) {
        if (delta === 1) s.websockets++
        s.websocketsOpen += delta
      }
    }
  }

  /**
   * Forgets (route, version): a reload removed it, so its series leave the
   * exposition (bounded cardinality across reloads; Prometheus sees the
   * series end, as for a restarted target). A series something still
   * listens to (a rollout's window) is kept until it stops listening.
   */
  unbind (route: string, version: string): void {
    const key = `${route}\u0000${version}`
    this.#weights.delete(key)
    const s = this.#series.get(key)
    if (s !== undefined && s.listeners.length === 0 && s.ejectionListeners.length === 0) this.#series.delete(key)
    this.#mirrors.delete(key)
  }

  /**
   * Publishes the weights of the table now in force (called by the proxy on
   * every table bind). A version that was published before but is missing
   * from `weights` is set to 0: it receives no new traffic.
   */
  setWeights (weights: ReadonlyArray<{ route: string; version: string; weight: number }>): void {
    for (const w of this.#weights.values()) w.weight = 0
    for (const w of weights) {
      const key = `${w.route}\u0000${w.version}`
      const cur = this.#weights.get(key)
      if (cur === undefined) this.#weights.set(key, { route: w.route, version: w.version, weight: w.weight })
      else cur.weight = w.weight
    }
  }

  /** Totals of one (route, version), or undefined when it was never bound or observed. */
  totals (route: string, version: string): VersionTotals | undefined {
    const s = this.#series.get(`${route}\u0000${version}`)
    if (s === undefined) return undefined
    const codes = new Map<number, number>()
    const syntheticCodes = new Map<number, number>()
    for (let c = 0; c < CODE_SLOTS; c++) {
      const y = s.syntheticCodes[c]!
      const n = s.codes[c]! + y
      if (n !== 0 || PRECREATED.has(c)) {
        codes.set(c, n)
        syntheticCodes.set(c, y)
      }
    }
    const upstreamErrors = Object.fromEntries(UPSTREAM_ERROR_KINDS.map((k, i) => [k, s.errors[i]!])) as Record<UpstreamErrorKind, number>
    return { route, version, codes, syntheticCodes, count: s.count, sum: s.sum, inFlight: s.inFlight, upstreamErrors, ejections: s.ejections }
  }

  /**
   * Registers a process-level family with one unlabelled sample read from
   * `read` at scrape time (open connections, dropped log lines): the owner
   * keeps a plain counter, the exposition reads it, nothing is done per event.
   */
  addReadout (name: string, help: string, type: 'counter' | 'gauge', read: () => number): void {
    const f = new Family(name, help, type, () => [{ labels: {}, value: read() }], () => {})
    this.registry.registerMetric(f as unknown as Parameters<Registry['registerMetric']>[0])
  }

  /**
   * Registers a family of labelled samples read from `read` at scrape time
   * (endpoint counts per version): the owner keeps its own state, the
   * exposition reads it. `aggregator` says how cluster workers' samples merge.
   */
  addLabelledReadout (name: string, help: string, type: 'counter' | 'gauge', read: () => Sample[], aggregator: 'sum' | 'max' = 'sum'): void {
    const f = new Family(name, help, type, read, () => {}, aggregator)
    this.registry.registerMetric(f as unknown as Parameters<Registry['registerMetric']>[0])
  }

  /** Content-Type of `expose()`'s text (Prometheus text format 0.0.4). */
  get contentType (): string {
    return this.registry.contentType
  }

  /** The exposition text for GET /metrics. */
  async expose (): Promise<string> {
    return await this.registry.metrics()
  }

  /**
   * These families (the ones registered) as prom-client's JSON: what a cluster
   * worker sends the primary, and what the dashboard's feed reads once a
   * second — without the process metrics (which read /proc) and without
   * writing every family as text to parse it back.
   */
  async families (names: readonly string[]): Promise<FamilyJson[]> {
    const out: FamilyJson[] = []
    for (const n of names) {
      const m = this.registry.getSingleMetric(n)
      if (m !== undefined) out.push(await m.get() as unknown as FamilyJson)
    }
    return out
  }
}
