import type { Exposition } from './exposition.js'
import { DEFAULT_METRICS_PREFIX, METRIC_NAMES } from './names.js'

/** One (route, version) between two scrapes: what `canaryd top` shows. */
export interface VersionRow {
  readonly route: string
  readonly version: string
  /** Current weight in percent; undefined when the gauge is absent. */
  readonly weight: number | undefined
  /** Responses per second between the two scrapes. */
  readonly rps: number
  /** Share of those responses with a 5xx status, percent; undefined when there were none. */
  readonly errorPct: number | undefined
  /** Latency quantiles, seconds, from the histogram's bucket deltas; undefined without requests. */
  readonly p50: number | undefined
  readonly p99: number | undefined
  /** In-flight requests at the second scrape. */
  readonly inFlight: number
  /** Upstream errors between the two scrapes (all kinds). */
  readonly upstreamErrors: number
}

/** Process-wide saturation at the second scrape (prom-client default metrics). */
export interface ProcessStats {
  readonly eventLoopLagP99: number | undefined
  readonly heapUsedBytes: number | undefined
  readonly residentBytes: number | undefined
}

/** One frame of `canaryd top`. */
export interface Frame {
  readonly seconds: number
  readonly rows: readonly VersionRow[]
  readonly process: ProcessStats
}

/** One histogram bucket: upper bound and cumulative count (as exposed). */
export interface Bucket {
  readonly le: number
  readonly count: number
}

/**
 * The q-quantile of a cumulative histogram, the way Prometheus'
 * `histogram_quantile` computes it: find the bucket holding rank q·total and
 * interpolate linearly inside it (lower bound 0 for the first bucket); a rank
 * in the +Inf bucket yields the highest finite bound. Undefined when empty.
 */
export function histogramQuantile (q: number, buckets: readonly Bucket[]): number | undefined {
  const sorted = [...buckets].sort((a, b) => a.le - b.le)
  const last = sorted[sorted.length - 1]
  if (last === undefined || last.count <= 0) return undefined
  const rank = q * last.count
  let prevLe = 0
  let prevCount = 0
  for (const b of sorted) {
    if (b.count >= rank && b.count > prevCount) {
      if (b.le === Infinity) return prevLe
      return prevLe + (b.le - prevLe) * (rank - prevCount) / (b.count - prevCount)
    }
    if (b.le !== Infinity) prevLe = b.le
    prevCount = b.count
  }
  return prevLe
}

/** Counter increase between two scrapes; a drop means the process restarted, so the new value is the increase. */
function increase (prev: number | undefined, cur: number): number {
  if (prev === undefined) return cur
  return cur >= prev ? cur - prev : cur
}

interface Acc {
  route: string
  version: string
  weight: number | undefined
  inFlight: number
  total: Map<string, number>
  errors5xx: Map<string, number>
  upstreamErrors: Map<string, number>
  buckets: Map<string, Bucket>
}

function index (e: Exposition): Map<string, Acc> {
  const out = new Map<string, Acc>()
  const acc = (route: string | undefined, version: string | undefined): Acc | undefined => {
    if (route === undefined || version === undefined) return undefined
    const key = `${route}\u0000${version}`
    let a = out.get(key)
    if (a === undefined) {
      a = { route, version, weight: undefined, inFlight: 0, total: new Map(), errors5xx: new Map(), upstreamErrors: new Map(), buckets: new Map() }
      out.set(key, a)
    }
    return a
  }
  for (const s of e.samples) {
    const l = s.labels
    switch (s.name) {
      case METRIC_NAMES.requests: {
        const a = acc(l.route, l.version)
        const code = l.code ?? ''
        // one series per (code, source): keyed by both, so user and synthetic add up instead of replacing each other
        const key = `${code}\u0000${l.source ?? ''}`
        a?.total.set(key, s.value)
        if (code.startsWith('5')) a?.errors5xx.set(key, s.value)
        break
      }
      case `${METRIC_NAMES.duration}_bucket`: {
        const le = l.le
        if (le !== undefined) acc(l.route, l.version)?.buckets.set(le, { le: le === '+Inf' ? Infinity : Number(le), count: s.value })
        break
      }
      case METRIC_NAMES.upstreamErrors:
        acc(l.route, l.version)?.upstreamErrors.set(l.kind ?? '', s.value)
        break
      case METRIC_NAMES.inFlight: {
        const a = acc(l.route, l.version)
        if (a !== undefined) a.inFlight = s.value
        break
      }
      case METRIC_NAMES.weight: {
        const a = acc(l.route, l.version)
        if (a !== undefined) a.weight = s.value
        break
      }
    }
  }
  return out
}

function sumIncrease (prev: Map<string, number> | undefined, cur: Map<string, number>): number {
  let n = 0
  for (const [k, v] of cur) n += increase(prev?.get(k), v)
  return n
}

function sampleValue (e: Exposition, name: string): number | undefined {
  let v: number | undefined
  for (const s of e.samples) if (s.name === name) v = (v ?? 0) + s.value
  return v
}

/**
 * Computes a frame from two scrapes `seconds` apart: per (route, version)
 * the request rate, 5xx share, p50/p99 from the bucket increases (the
 * latency of this interval, not since start-up), in-flight and weight.
 * Rows keep the exposition's order (config order of routes and versions).
 */
export function summarize (prev: Exposition, cur: Exposition, seconds: number): Frame {
  const before = index(prev)
  const rows: VersionRow[] = []
  for (const [key, a] of index(cur)) {
    const p = before.get(key)
    const total = sumIncrease(p?.total, a.total)
    const errors = sumIncrease(p?.errors5xx, a.errors5xx)
    const deltas: Bucket[] = []
    for (const [le, b] of a.buckets) deltas.push({ le: b.le, count: increase(p?.buckets.get(le)?.count, b.count) })
    rows.push({
      route: a.route,
      version: a.version,
      weight: a.weight,
      rps: seconds > 0 ? total / seconds : 0,
      errorPct: total > 0 ? errors / total * 100 : undefined,
      p50: histogramQuantile(0.5, deltas),
      p99: histogramQuantile(0.99, deltas),
      inFlight: a.inFlight,
      upstreamErrors: sumIncrease(p?.upstreamErrors, a.upstreamErrors)
    })
  }
  return {
    seconds,
    rows,
    process: {
      eventLoopLagP99: sampleValue(cur, `${DEFAULT_METRICS_PREFIX}nodejs_eventloop_lag_p99_seconds`),
      heapUsedBytes: sampleValue(cur, `${DEFAULT_METRICS_PREFIX}nodejs_heap_size_used_bytes`),
      residentBytes: sampleValue(cur, `${DEFAULT_METRICS_PREFIX}process_resident_memory_bytes`)
    }
  }
}
