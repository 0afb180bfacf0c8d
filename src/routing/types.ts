import type { IncomingHttpHeaders } from 'node:http'
import type { VersionSpec } from './spec.js'

/**
 * The routing table: immutable data built by `buildRoutingTable` whenever the
 * configuration or the weights change, and read by the hot path. Everything a
 * request needs that does not depend on the request is precomputed here.
 */

/** Where a sticky key is read from. */
export enum KeyKind { Header = 0, Cookie = 1, Query = 2, Ip = 3 }

/** One sticky-key source, parsed from `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`. */
export interface KeySource {
  readonly kind: KeyKind
  /** Lower-cased header name, cookie name or query parameter name; '' for ip. */
  readonly name: string
}

/** One version of a route, as the hot path sees it. */
export interface Version {
  readonly name: string
  /** Position in the route's `versions` array (stable across weight changes). */
  readonly index: number
  /** Weight in percent, as configured (0–100, at most 4 decimals). */
  readonly weight: number
  /** Weight in parts per million: `weight * 10_000`, an exact integer. */
  readonly ppm: number
  /** `1 / ppm`, precomputed for the pick (Infinity for a 0% version, never used). */
  readonly invPpm: number
  /** Seed of this version in the rendezvous hash (hash of its name). */
  readonly seed: number
  /** The version's endpoints, balancing, discovery and TLS, as validated (read by proxy/ to bind an endpoint group; never by the pick). */
  readonly spec: Readonly<VersionSpec>
  /** `endpointsKey(spec)`: equal keys across tables share one endpoint group. */
  readonly endpointsKey: string
}

/** Sticky cookie settings, with the Set-Cookie strings precomputed. */
export interface StickyCookie {
  readonly name: string
  readonly maxAge: number
  /** `name=` prefix of the Set-Cookie header. */
  readonly prefix: string
  /** Attributes after the value, without and with `; Secure`. */
  readonly attributes: string
  readonly attributesSecure: string
}

/**
 * A compiled segment: its matchers (built once per table) and the versions
 * its users are picked from. `active` holds the route's Version objects
 * re-weighted with the segment's own weights (same name, index and seed, so
 * a key's score changes only with the weights: monotone within the segment;
 * a pinned version is a segment with that version at 100).
 */
export interface Segment {
  readonly name: string
  /** Position in the route's `segments` (the metric child's index). */
  readonly index: number
  /** True when the request belongs to the segment (every configured key holds). */
  readonly test: (headers: IncomingHttpHeaders, url: string, ip: string) => boolean
  /** Versions with weight > 0 in the segment, in the route's version order. */
  readonly active: readonly Version[]
  /** The pinned version's name, or '' for a weighted segment. */
  readonly pinned: string
}

/** A route's mirror, compiled: the target version, a threshold in ppm, a method set. */
export interface Mirror {
  readonly version: Version
  /** percent × 10 000: a request is copied when its uniform draw in [0, 1e6) is below this. */
  readonly ppm: number
  readonly methods: ReadonlySet<string>
  readonly maxBodyBytes: number
  readonly maxInFlight: number
  readonly timeoutMs: number
}

/** One route of the table. */
export interface Route {
  readonly name: string
  readonly index: number
  /** Lower-cased host to match, `*.example.com` for a suffix match, or undefined for any. */
  readonly host: string | undefined
  readonly pathPrefix: string
  /** FNV state after the salt; see `hash.ts`. */
  readonly salt: number
  readonly versions: readonly Version[]
  /** Versions with weight > 0, in config order: the candidates of the pick. */
  readonly active: readonly Version[]
  readonly versionByName: ReadonlyMap<string, Version>
  /** Configured key sources, then the sticky cookie (always the last source). */
  readonly keys: readonly KeySource[]
  readonly cookie: StickyCookie
  /** Lower-cased override header name, or '' when none. */
  readonly overrideHeader: string
  /** Override cookie name, or '' when none. */
  readonly overrideCookie: string
  /** Segments in match order; empty when none (the hot path then skips them with one length check). */
  readonly segments: readonly Segment[]
  /** The mirror, or undefined. */
  readonly mirror: Mirror | undefined
}

/** An immutable routing table; a new one is built for every change and swapped in whole. */
export interface RoutingTable {
  readonly routes: readonly Route[]
  readonly routeByName: ReadonlyMap<string, Route>
  /** Routes in match order: exact host, then wildcard host, then any host; longer pathPrefix first. */
  readonly matchOrder: readonly Route[]
  /** A monotonically increasing number, bumped on every swap (for logs and tests). */
  readonly generation: number
}
