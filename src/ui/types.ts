/**
 * The shapes of the admin API's answers and of the feed's events, as the
 * page reads them (docs/admin-api.md). Fields the page does not show are
 * left out; optional ones are those the server omits in some cases.
 */

/** A rollout's summary, in a route view and in each sample. */
export interface RolloutSummary {
  state: string
  canary: string
  step: number
  steps: number
  weight: number
  failedChecks: number
  phase: string
}

/** A version in the route view. */
export interface VersionView {
  name: string
  upstream: string | string[]
  weight: number
  runtimeUpstream?: boolean
  balance?: string
  discovery?: string
}

/** A route in `GET /api/v1/routes`. */
export interface RouteView {
  name: string
  versions: VersionView[]
  segments: Array<Record<string, unknown>>
  mirror: Record<string, unknown> | null
  rollout: RolloutSummary | null
}

/** One side's figures in a check. */
export interface CheckFigures {
  requests: number
  failures: number
  successRate: number | null
  p50Ms: number | null
  p99Ms: number | null
  ejections?: number
  stillEjected?: boolean
}

/** A provider metric's result in a check. */
export interface MetricResult {
  name: string
  verdict: string
  canary?: number | null
  baseline?: number | null
  ratio?: number | null
  reason?: string | null
}

/** One check of a rollout. */
export interface Check {
  at: string
  step: number
  weight: number
  failedChecks: number
  verdict: string
  reasons: string[]
  phase?: string
  instances?: number
  canary?: CheckFigures
  stable?: CheckFigures
  errorTest?: { p: number | null, ratio: number | null }
  latencyTest?: { p: number | null, p99Ratio: number | null }
  metrics?: MetricResult[]
  guidance?: { note?: string, moreRequests?: number, expectedMs?: number }
  sequential?: { decided?: string }
  shadow?: { pairs: number, mismatches: number, mismatchRate: number | null, latencyRatio: number | null }
}

/** A transition in a rollout's history. */
export interface HistoryEntry {
  at: string
  event: string
  state: string
  step: number
  weight: number
  reason?: string
}

/** The parts of a normalised plan the page shows (the rest is shown as JSON). */
export interface PlanView {
  canary?: string
  steps?: Array<number | { segment: string, weight: number }>
  intervalMs?: number
  strategy?: string
  analysis?: { maxFailedChecks?: number }
}

/** `GET …/rollout`. */
export interface RolloutView {
  route: string
  state: string
  strategy?: string
  phase: string
  canary: string
  stable: string
  step: number
  steps: Array<number | { segment: string, weight: number }>
  weight: number
  segmentWeights?: Record<string, number>
  failedChecks: number
  reason: string | null
  startedAt: string
  updatedAt: string
  checks: Check[]
  history: HistoryEntry[]
  plan?: PlanView
  held?: boolean
  warnings?: string[]
}

/** One entry of `GET /api/v1/audit`. */
export interface AuditEntry {
  id: number
  time: string
  route: string
  previous: Record<string, number> | null
  weights: Record<string, number>
  reason: string | null
  source: string
  address: string | null
  generation?: number
  version?: string
  upstreams?: Record<string, { previous: unknown, next: unknown }>
  upstream?: { previous: unknown, next: unknown }
  segments?: unknown
  mirror?: unknown
}

/** One instance in `GET /api/v1/fleet`. */
export interface Instance {
  id: string
  hostname: string
  pid: number
  startedAt?: string
  lastHeartbeat: string
  admin: string
  proxy: string
  generation: number
  leader: string[]
  configMismatch: boolean
  self: boolean
}

/** `GET /api/v1/fleet`. */
export interface FleetView {
  store: string
  self: string
  storeUp: boolean
  generation: number
  configMismatch: boolean
  instances: Instance[]
}

/** One version's second in a feed sample. */
export interface VersionSample {
  weight: number
  rps: number
  errorPct: number | null
  p50Ms: number | null
  p99Ms: number | null
  inFlight?: number
  /** null when unknown (metrics off) */
  endpoints?: { healthy: number, ejected: number } | null
}

/** One second of every route, from the feed. */
export interface Sample {
  t: number
  seconds: number
  routes: Record<string, { versions: Record<string, VersionSample>, rollout: RolloutSummary | null } | undefined>
}

/** Something that happened on a route, from the feed: drawn on the charts, and a cue to re-read the route. */
export interface Mark {
  t: number
  route: string
  kind: 'weights' | 'check' | 'rollout' | string
  weights?: Record<string, number>
  source?: string | null
  reason?: string | null
  verdict?: string
  step?: number
  weight?: number
  reasons?: string[]
  state?: string
  event?: string
  phase?: string
}
