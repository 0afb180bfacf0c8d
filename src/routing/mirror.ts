/**
 * The mirroring decision (Envoy's request_mirror_policies, Traefik's mirror
 * balancer): whether a request gets a copy sent to the route's mirror
 * version. Only the decision lives here, pure and precompiled; the copy is
 * sent by proxy/ and never delays or fails the user's request.
 */
import type { RouteSpec } from './spec.js'
import type { Mirror, Route, Version } from './types.js'
import { toPpm } from './weights.js'

/**
 * Compiles a route's mirror for the routing table (called by buildRoute,
 * once per table): the target as the route's own Version, the percent as a
 * ppm threshold for an integer draw, the methods as a Set. Undefined when
 * the route has no mirror. Input is a validated spec (config/segments.ts);
 * an unknown version or a percent with more than 4 decimals throws a
 * TypeError naming the route, as buildRoute does for a bad weight.
 */
export function compileMirror (spec: RouteSpec, versions: readonly Version[]): Mirror | undefined {
  const m = spec.mirror
  if (m === undefined) return undefined
  const version = versions.find((v) => v.name === m.version)
  if (version === undefined) throw new TypeError(`route ${spec.name}: mirror version ${m.version} is not a version of the route`)
  const ppm = toPpm(m.percent)
  if (ppm === undefined || ppm <= 0 || ppm > 1_000_000) throw new TypeError(`route ${spec.name}: mirror percent ${m.percent} must be over 0, at most 100, with at most 4 decimals`)
  return Object.freeze({
    version,
    ppm,
    methods: new Set(m.methods.map((x) => x.toUpperCase())),
    maxBodyBytes: m.maxBodyBytes,
    maxInFlight: m.maxInFlight,
    timeoutMs: m.timeoutMs
  })
}

/**
 * The route's mirror when this request is to be copied, else undefined:
 * its method is one of the mirror's, its `draw` (a uniform integer in
 * [0, 1_000_000), drawn by the caller so this stays pure) is below the
 * mirror's ppm, and it was not already served by the mirror version (a copy
 * to the version that answered would double its load and teach nothing).
 * Versions are compared by index: a segment's pick is a re-weighted copy of
 * the route's Version, not the same object. Allocation-free.
 */
export function mirrorFor (route: Route, method: string, draw: number, picked: Version): Mirror | undefined {
  const m = route.mirror
  if (m === undefined) return undefined
  if (draw >= m.ppm || picked.index === m.version.index || !m.methods.has(method)) return undefined
  return m
}
