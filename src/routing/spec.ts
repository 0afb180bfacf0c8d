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
