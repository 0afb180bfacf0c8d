/**
 * The validated, plain-data description of routes that the routing table is
 * built from. It comes from the config file (startup) and is what the state
 * file and the admin API change (runtime weights).
 */

/** How a version spreads its requests over its endpoints (see upstream/balance/). */
export type Balance = 'least-request' | 'round-robin' | 'hash'

/**
 * Upstream TLS settings of a version: file paths and flags, plain data (the
 * state file and cluster IPC carry specs as JSON; the PEM bytes are read by
 * upstream/ when a pool is made).
 */
export interface TlsSpec {
  ca?: string
  servername?: string
  cert?: string
  key?: string
  insecureSkipVerify?: boolean
}

/** One version of a route. */
export interface VersionSpec {
  name: string
  /**
   * Origins of the version's endpoints, e.g. `["http://10.0.0.1:8080"]`
   * (the config's single string becomes a one-element array). With
   * `discovery: "dns"` each names a host whose A/AAAA records are the endpoints.
   */
  upstream: string[]
  /** Percent, 0–100 with at most 4 decimals; the versions of a route sum to 100. */
  weight: number
  /** Endpoint balancing; `least-request` when absent. */
  balance?: Balance
  /** `dns`: re-resolve the origins' host names (every A/AAAA record is an endpoint). */
  discovery?: 'dns'
  /** Upstream TLS for https origins (over `upstream.tls`, field by field). */
  tls?: TlsSpec
}

/**
 * How one request field is matched by a segment: a list of exact values
 * (any one holds; a single value in the config becomes a one-element list)
 * or an RE2 regular expression (linear time, no backtracking), searched
 * anywhere in the value unless anchored with ^ and $.
 */
export type ValueMatch = string[] | { regex: string }

/**
 * What a request must carry to belong to a segment; every key given must
 * hold. Absent header, cookie or query parameter never matches.
 */
export interface SegmentMatch {
  /** Lower-cased header name → value match (a repeated header is matched on its values joined with ", "). */
  header?: Record<string, ValueMatch>
  /** Cookie name → value match (the raw value, as the sticky cookie is read). */
  cookie?: Record<string, ValueMatch>
  /** Query parameter name → value match (percent-decoded). */
  query?: Record<string, ValueMatch>
  /** CIDRs (or single addresses) the client address must fall in (v4 and v6; IPv4-mapped v6 counts as v4). */
  ip?: string[]
}

/**
 * A segment of a route's users: who they are (`match`) and which version
 * they get, pinned (`version`) or by their own weights (sticky within the
 * segment, monotone as the route's weights are). Exactly one of `version`
 * and `weights` is set.
 */
export interface SegmentSpec {
  name: string
  match: SegmentMatch
  version?: string
  /** Version name → percent; versions not named are 0; sums to 100. */
  weights?: Record<string, number>
}

/**
 * Copies of a share of a route's requests sent to one version, the answers
 * discarded (Envoy's request_mirror_policies, nginx's mirror). The user's
 * request never waits for the copy.
 */
export interface MirrorSpec {
  version: string
  /** Share of matching requests copied, percent (0 < p <= 100, at most 4 decimals). */
  percent: number
  /** Upper-case methods whose requests are copied. */
  methods: string[]
  /** Largest request body copied; a larger (or unsized) body is not mirrored (counted as too_large). 0: bodyless requests only. */
  maxBodyBytes: number
  /** Copies in flight at most (per route and process); past it a copy is dropped (counted). */
  maxInFlight: number
  /** A copy not answered within this is abandoned (counted as timeout). */
  timeoutMs: number
}

/** One route. */
export interface RouteSpec {
  name: string
  match: { host?: string; pathPrefix: string }
  sticky: {
    keys: string[]
    /** Hash salt; the route name when absent. */
    salt?: string
    cookie: { name: string; maxAge: number; domain?: string }
  }
  override: { header?: string; cookie?: string }
  versions: VersionSpec[]
  /** Ordered segments: the first whose match holds decides the version (after the override). Absent: none. */
  segments?: SegmentSpec[]
  /** Request mirroring; absent: none. */
  mirror?: MirrorSpec
  /**
   * A rollout plan to start at start-up when the route has no rollout record
   * yet; validated by rollout/plan.ts and kept opaque here so routing/
   * imports nothing of rollout/.
   */
  rollout?: unknown
}

/**
 * The route with its versions' weights taken from `weights` (version name →
 * percent); a version `weights` does not name keeps its weight. Used wherever
 * runtime weights meet config specs: the state file, the admin API, cluster workers.
 */
export function withWeights (spec: RouteSpec, weights: Readonly<Record<string, number>>): RouteSpec {
  return { ...spec, versions: spec.versions.map((v) => ({ ...v, weight: weights[v.name] ?? v.weight })) }
}

/**
 * Identifies everything about a version's endpoints (origins, balancing,
 * discovery, TLS) but its weight: two specs with the same key can share one
 * endpoint group across a table swap (keeping its balancer position, DNS
 * watch and health).
 */
export function endpointsKey (v: VersionSpec): string {
  const t = v.tls
  const tls = t === undefined ? '' : [t.ca ?? '', t.servername ?? '', t.cert ?? '', t.key ?? '', t.insecureSkipVerify === undefined ? '' : String(t.insecureSkipVerify)].join('\u0001')
  return [v.upstream.join(' '), v.balance ?? 'least-request', v.discovery ?? '', tls].join('\u0000')
}

/** The version's origins as the admin API and the state file show them: a string for one, an array for several. */
export function upstreamView (upstream: readonly string[]): string | string[] {
  return upstream.length === 1 ? upstream[0]! : [...upstream]
}

/** Equality of plain JSON data (specs, segments, a mirror) as the state file would store it. */
export function jsonEqual (a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b)
}
