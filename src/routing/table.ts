import { saltState, versionSeed } from './hash.js'
import { compileMirror } from './mirror.js'
import { compileSegments } from './segments.js'
import { endpointsKey, type RouteSpec } from './spec.js'
import { KeyKind, type KeySource, type Route, type RoutingTable, type Version } from './types.js'
import { toPpm } from './weights.js'

/** Parses a sticky key source string; throws a TypeError naming the bad source. */
export function parseKeySource (src: string): KeySource {
  if (src === 'ip') return Object.freeze({ kind: KeyKind.Ip, name: '' })
  const colon = src.indexOf(':')
  const kind = colon === -1 ? '' : src.slice(0, colon)
  const name = colon === -1 ? '' : src.slice(colon + 1)
  if (name.length === 0) throw new TypeError(`"${src}" is not a key source; use header:NAME, cookie:NAME, query:NAME or ip`)
  switch (kind) {
    case 'header': return Object.freeze({ kind: KeyKind.Header, name: name.toLowerCase() })
    case 'cookie': return Object.freeze({ kind: KeyKind.Cookie, name })
    case 'query': return Object.freeze({ kind: KeyKind.Query, name })
    default: throw new TypeError(`"${src}" is not a key source; use header:NAME, cookie:NAME, query:NAME or ip`)
  }
}

function buildRoute (spec: RouteSpec, index: number): Route {
  const versions: Version[] = spec.versions.map((v, i) => {
    const ppm = toPpm(v.weight)
    if (ppm === undefined) throw new TypeError(`route ${spec.name}: weight ${v.weight} of ${v.name} has more than 4 decimals`)
    return Object.freeze({
      name: v.name,
      index: i,
      weight: v.weight,
      ppm,
      invPpm: ppm === 0 ? Infinity : 1 / ppm,
      seed: versionSeed(v.name),
      spec: v,
      endpointsKey: endpointsKey(v)
    })
  })
  const c = spec.sticky.cookie
  const attributes = `; Max-Age=${c.maxAge}; Path=/${c.domain !== undefined ? `; Domain=${c.domain}` : ''}; HttpOnly; SameSite=Lax`
  const keys = spec.sticky.keys.map(parseKeySource)
  keys.push(Object.freeze({ kind: KeyKind.Cookie, name: c.name }))
  const host = spec.match.host?.toLowerCase()
  return Object.freeze({
    name: spec.name,
    index,
    host,
    pathPrefix: spec.match.pathPrefix,
    salt: saltState(spec.sticky.salt ?? spec.name),
    versions: Object.freeze(versions),
    active: Object.freeze(versions.filter((v) => v.ppm > 0)),
    versionByName: new Map(versions.map((v) => [v.name, v])),
    keys: Object.freeze(keys),
    cookie: Object.freeze({
      name: c.name,
      maxAge: c.maxAge,
      prefix: `${c.name}=`,
      attributes,
      attributesSecure: `${attributes}; Secure`
    }),
    overrideHeader: spec.override.header?.toLowerCase() ?? '',
    overrideCookie: spec.override.cookie ?? '',
    segments: Object.freeze(compileSegments(spec, versions)),
    mirror: compileMirror(spec, versions)
  })
}

/** Match order: exact host, then wildcard hosts (longest suffix first), then any host; longest pathPrefix first within each. */
function hostRank (r: Route): number {
  if (r.host === undefined) return 0
  return r.host.startsWith('*.') ? 1 : 2
}

function compareRoutes (a: Route, b: Route): number {
  const ra = hostRank(a)
  const rb = hostRank(b)
  if (ra !== rb) return rb - ra
  if (ra === 1 && a.host!.length !== b.host!.length) return b.host!.length - a.host!.length
  if (a.pathPrefix.length !== b.pathPrefix.length) return b.pathPrefix.length - a.pathPrefix.length
  return a.index - b.index
}

/**
 * Builds a frozen routing table from validated route specs. Everything the
 * hot path needs (salt states, version seeds, 1/ppm, Set-Cookie strings,
 * match order, segment matchers and weights, the mirror threshold) is
 * computed here, once per change.
 */
export function buildRoutingTable (specs: readonly RouteSpec[], generation: number = 1): RoutingTable {
  const routes = specs.map(buildRoute)
  return Object.freeze({
    routes: Object.freeze(routes),
    routeByName: new Map(routes.map((r) => [r.name, r])),
    matchOrder: Object.freeze([...routes].sort(compareRoutes)),
    generation
  })
}

/** Does a route's host pattern match a (lower-cased, port-less) host? */
export function hostMatches (pattern: string | undefined, host: string): boolean {
  if (pattern === undefined) return true
  if (pattern.startsWith('*.')) return host.length > pattern.length - 1 && host.endsWith(pattern.slice(1))
  return pattern === host
}

/**
 * The routes that can match a host, in match order. The hot path caches this
 * per Host value (bounded LRU) and then only checks path prefixes.
 */
export function routesForHost (table: RoutingTable, host: string): readonly Route[] {
  return table.matchOrder.filter((r) => hostMatches(r.host, host))
}

/** Picks the most specific route for a host's candidates and a path, or undefined (→ 404). */
export function matchPath (candidates: readonly Route[], path: string): Route | undefined {
  for (let i = 0; i < candidates.length; i++) {
    const r = candidates[i]!
    if (path.startsWith(r.pathPrefix)) return r
  }
  return undefined
}

/** Normalises a Host header for matching: lower-case, port and trailing dot removed. */
export function normalizeHost (host: string | undefined): string {
  if (host === undefined || host.length === 0) return ''
  let h = host
  if (h.charCodeAt(0) === 91 /* [ */) {
    const end = h.indexOf(']')
    h = end === -1 ? h : h.slice(0, end + 1)
  } else {
    const colon = h.indexOf(':')
    if (colon !== -1) h = h.slice(0, colon)
  }
  if (h.endsWith('.')) h = h.slice(0, -1)
  return h.toLowerCase()
}
