/**
 * The validated, plain-data description of routes that the routing table is
 * built from. It comes from the config file (startup) and is what the state
 * file and the admin API change (runtime weights).
 */

/** One version of a route. */
export interface VersionSpec {
  name: string
  /** Origin of the upstream, e.g. `http://10.0.0.1:8080`. */
  upstream: string
  /** Percent, 0–100 with at most 4 decimals; the versions of a route sum to 100. */
  weight: number
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
