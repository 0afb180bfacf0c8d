/**
 * Segments: named groups of a route's users (by header, cookie, query
 * parameter or client address) that get their own version pick, pinned or
 * by their own weights. Everything a match needs is compiled here when the
 * routing table is built (RE2 programs, value sets, CIDRs as numbers), so a
 * request only runs closures over strings it already has.
 *
 * Regular expressions are RE2 (re2js): linear in the input whatever the
 * pattern, so a config or admin-API pattern can never stall the hot path
 * the way a backtracking `(a+)+$` would.
 */
import type { IncomingHttpHeaders } from 'node:http'
import ipaddr from 'ipaddr.js'
import { RE2JS } from 're2js'
import { findCookie, findQuery, headerValue } from './cookie.js'
import type { RouteSpec, SegmentMatch, SegmentSpec, ValueMatch } from './spec.js'
import type { Route, Segment, Version } from './types.js'
import { toPpm } from './weights.js'

type ValueTest = (value: string) => boolean
type RequestTest = (headers: IncomingHttpHeaders, url: string, ip: string) => boolean

/** One exact value: a string compare; several: a Set lookup; a regex: an RE2 search (unanchored unless the pattern anchors). */
function compileValue (m: ValueMatch): ValueTest {
  if (Array.isArray(m)) {
    if (m.length === 1) {
      const only = m[0]!
      return (v) => v === only
    }
    const set = new Set(m)
    return (v) => set.has(v)
  }
  // the common `^prefix` / `^exact$` patterns of plain characters need no regex engine (RE2 costs ~0.4 µs a search)
  const plain = /^\^([A-Za-z0-9_\-=:,@ ]+)(\$?)$/.exec(m.regex)
  if (plain !== null) {
    const lit = plain[1]!
    return plain[2] === '$' ? (v) => v === lit : (v) => v.startsWith(lit)
  }
  const re = RE2JS.compile(m.regex)
  // linear, but in value length × program size: a value this long is no user attribute, and never matches a regex
  return (v) => v.length <= MAX_REGEX_INPUT && re.test(v)
}

/** Longest value a segment regex is run on (longer values never match one): bounds a request's regex work with the program size cap. */
export const MAX_REGEX_INPUT = 4096

function headerTest (name: string, test: ValueTest): RequestTest {
  return (headers) => {
    // a repeated header is one value, as readStickyKey reads it
    const v = headerValue(headers, name)
    return v.length !== 0 && test(v)
  }
}

function cookieTest (name: string, test: ValueTest): RequestTest {
  return (headers) => {
    const v = findCookie(headers.cookie, name)
    return v.length !== 0 && test(v)
  }
}

function queryTest (name: string, test: ValueTest): RequestTest {
  return (_headers, url) => {
    const raw = findQuery(url, name)
    if (raw.length === 0) return false
    let v = raw
    // decode only what is encoded (no allocation otherwise); a malformed escape is matched as written
    if (raw.includes('%')) {
      try {
        v = decodeURIComponent(raw)
      } catch {
        v = raw
      }
    }
    return v.length !== 0 && test(v)
  }
}

/**
 * CIDRs parsed once by ipaddr.js, split by kind: IPv4 ranges as 32-bit
 * network and mask, IPv6 ranges as eight 16-bit groups of network and mask.
 * An IPv4-mapped IPv6 range of /96 or longer is stored as the IPv4 range it
 * stands for, since mapped client addresses are compared as IPv4.
 */
interface IpRanges {
  readonly v4Net: number[]
  readonly v4Mask: number[]
  /** 8 groups per range: network, then mask (16 numbers a range). */
  readonly v6: number[]
}

function v4Number (ip: ipaddr.IPv4): number {
  const [a = 0, b = 0, c = 0, d = 0] = ip.octets
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0
}

function addV4 (r: IpRanges, ip: ipaddr.IPv4, bits: number): void {
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0
  r.v4Net.push((v4Number(ip) & mask) >>> 0)
  r.v4Mask.push(mask)
}

function addV6 (r: IpRanges, ip: ipaddr.IPv6, bits: number): void {
  const masks: number[] = []
  for (let g = 0; g < 8; g++) {
    const b = Math.max(0, Math.min(16, bits - 16 * g))
    masks.push(b === 0 ? 0 : (0xffff << (16 - b)) & 0xffff)
  }
  for (let g = 0; g < 8; g++) r.v6.push((ip.parts[g] ?? 0) & masks[g]!)
  r.v6.push(...masks)
}

function compileIp (cidrs: readonly string[], where: string): IpRanges {
  const r: IpRanges = { v4Net: [], v4Mask: [], v6: [] }
  for (const cidr of cidrs) {
    const slash = cidr.indexOf('/')
    const text = slash === -1 ? cidr : cidr.slice(0, slash)
    let addr: ipaddr.IPv4 | ipaddr.IPv6
    try {
      addr = ipaddr.parse(text)
    } catch {
      throw new TypeError(`${where}: ${JSON.stringify(cidr)} is not an IP address or CIDR`)
    }
    const max = addr.kind() === 'ipv4' ? 32 : 128
    const bits = slash === -1 ? max : Number(cidr.slice(slash + 1))
    if (!Number.isInteger(bits) || bits < 0 || bits > max) throw new TypeError(`${where}: ${JSON.stringify(cidr)} has a bad prefix length`)
    if (addr.kind() === 'ipv4') {
      addV4(r, addr as ipaddr.IPv4, bits)
    } else {
      const v6 = addr as ipaddr.IPv6
      if (v6.isIPv4MappedAddress() && bits >= 96) addV4(r, v6.toIPv4Address(), bits - 96)
      else addV6(r, v6, bits)
    }
  }
  return r
}

/** The 32-bit value of a strict dotted quad in `s[start, end)` (decimal octets 0–255, no leading zeros), or -1. */
function parseDottedQuad (s: string, start: number, end: number): number {
  const len = end - start
  if (len < 7 || len > 15) return -1
  let n = 0
  let octet = 0
  let digits = 0
  let dots = 0
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i)
    if (c === 46) {
      if (digits === 0 || dots === 3) return -1
      n = n * 256 + octet
      octet = 0
      digits = 0
      dots++
    } else if (c >= 48 && c <= 57) {
      if (digits !== 0 && octet === 0) return -1 // leading zero: `010` is octal to some parsers
      octet = octet * 10 + c - 48
      if (octet > 255) return -1
      digits++
    } else {
      return -1
    }
  }
  if (digits === 0 || dots !== 3) return -1
  return n * 256 + octet
}

function hexValue (c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  if (c >= 97 && c <= 102) return c - 87
  if (c >= 65 && c <= 70) return c - 55
  return -1
}

/**
 * The eight groups of the last IPv6 address parsed. One shared scratch, not
 * an array per request: matching is synchronous, so no two parses overlap.
 */
const GROUPS = new Uint16Array(8)

/**
 * Parses an IPv6 address (RFC 4291 text: `::` once, 1–4 hex digits a group,
 * an optional trailing dotted quad; a `%zone` ignored) into GROUPS. Returns
 * false for anything else. By hand and allocation-free: ipaddr.js's
 * regex-based parser costs ~2 µs an address, which a request on a route
 * with an address segment would pay per segment.
 */
function parseV6 (s: string): boolean {
  let end = s.indexOf('%')
  if (end === -1) end = s.length
  let count = 0
  let gap = -1
  let i = 0
  if (end >= 2 && s.charCodeAt(0) === 58 && s.charCodeAt(1) === 58) {
    gap = 0
    i = 2
  }
  while (i < end) {
    const start = i
    let value = 0
    for (let h = hexValue(s.charCodeAt(i)); h !== -1 && i < end; h = hexValue(s.charCodeAt(i))) {
      value = value * 16 + h
      i++
    }
    if (i < end && s.charCodeAt(i) === 46) { // a dotted quad ends the address
      const n = parseDottedQuad(s, start, end)
      if (n < 0 || count > 6) return false
      GROUPS[count++] = n >>> 16
      GROUPS[count++] = n & 0xffff
      i = end
      break
    }
    if (i === start || i - start > 4 || count === 8) return false
    GROUPS[count++] = value
    if (i === end) break
    if (s.charCodeAt(i) !== 58) return false
    i++
    if (i < end && s.charCodeAt(i) === 58) {
      if (gap !== -1) return false
      gap = count
      i++
    } else if (i === end) {
      return false // a trailing single colon
    }
  }
  if (gap === -1) return count === 8
  if (count > 7) return false
  // move the groups after `::` to the end and zero the gap
  const tail = count - gap
  for (let k = 0; k < tail; k++) GROUPS[7 - k] = GROUPS[count - 1 - k]!
  for (let k = gap; k < 8 - tail; k++) GROUPS[k] = 0
  return true
}

/** GROUPS hold `::ffff:a.b.c.d`. */
function isMapped (): boolean {
  return GROUPS[0] === 0 && GROUPS[1] === 0 && GROUPS[2] === 0 && GROUPS[3] === 0 && GROUPS[4] === 0 && GROUPS[5] === 0xffff
}

function ipTest (r: IpRanges): RequestTest {
  const v4Net = r.v4Net
  const v4Mask = r.v4Mask
  const v6 = r.v6
  return (_headers, _url, ip) => {
    let n = parseDottedQuad(ip, 0, ip.length)
    if (n < 0) {
      if (!parseV6(ip)) return false // not an address: never a match, never a throw
      if (!isMapped()) {
        for (let at = 0; at < v6.length; at += 16) {
          let g = 0
          while (g < 8 && (GROUPS[g]! & v6[at + 8 + g]!) === v6[at + g]) g++
          if (g === 8) return true
        }
        return false
      }
      n = ((GROUPS[6]! << 16) | GROUPS[7]!) >>> 0
    }
    for (let i = 0; i < v4Net.length; i++) if (((n & v4Mask[i]!) >>> 0) === v4Net[i]) return true
    return false
  }
}

/** One closure for a whole `match`: every key given must hold. Header, cookie, query first; the address (the only parse) last. */
function compileMatch (m: SegmentMatch, where: string): RequestTest {
  const tests: RequestTest[] = []
  for (const [name, v] of Object.entries(m.header ?? {})) tests.push(headerTest(name.toLowerCase(), compileValue(v)))
  for (const [name, v] of Object.entries(m.cookie ?? {})) tests.push(cookieTest(name, compileValue(v)))
  for (const [name, v] of Object.entries(m.query ?? {})) tests.push(queryTest(name, compileValue(v)))
  if (m.ip !== undefined && m.ip.length !== 0) tests.push(ipTest(compileIp(m.ip, `${where}.match.ip`)))
  if (tests.length === 0) throw new TypeError(`${where}: match has no key`)
  if (tests.length === 1) return tests[0]!
  return (headers, url, ip) => {
    for (let i = 0; i < tests.length; i++) if (!tests[i]!(headers, url, ip)) return false
    return true
  }
}

/**
 * The route's version `v` with another weight. Same name, index, seed and
 * endpoints, so a key's rendezvous score depends only on the weight (the
 * pick stays monotone within the segment) and the proxy finds the version's
 * endpoint group by `index` as for the route's own pick. Built with the
 * property order of table.ts's versions, so the pick loop sees one shape.
 */
function reweigh (v: Version, weight: number, where: string): Version {
  const ppm = toPpm(weight)
  if (ppm === undefined) throw new TypeError(`${where}: weight ${weight} of ${v.name} has more than 4 decimals`)
  return Object.freeze({
    name: v.name,
    index: v.index,
    weight,
    ppm,
    invPpm: ppm === 0 ? Infinity : 1 / ppm,
    seed: v.seed,
    spec: v.spec,
    endpointsKey: v.endpointsKey
  })
}

function compileSegment (s: SegmentSpec, index: number, versions: readonly Version[], route: string): Segment {
  const where = `route ${route} segment ${s.name}`
  if (s.version !== undefined && !versions.some((v) => v.name === s.version)) throw new TypeError(`${where}: unknown version ${s.version}`)
  if (s.weights !== undefined) {
    for (const name of Object.keys(s.weights)) if (!versions.some((v) => v.name === name)) throw new TypeError(`${where}: unknown version ${name}`)
  }
  const weightOf = (name: string): number => s.version !== undefined ? (name === s.version ? 100 : 0) : (s.weights !== undefined && Object.hasOwn(s.weights, name) ? s.weights[name]! : 0)
  const active = versions.map((v) => reweigh(v, weightOf(v.name), where)).filter((v) => v.ppm > 0)
  return Object.freeze({
    name: s.name,
    index,
    test: compileMatch(s.match, where),
    active: Object.freeze(active),
    pinned: s.version ?? ''
  })
}

/**
 * Compiles a route's segments for the routing table (called by buildRoute,
 * once per table): matchers become closures, weights become re-weighted
 * copies of the route's `versions`. Input is a validated spec
 * (config/segments.ts); anything inconsistent throws a TypeError naming the
 * route and segment, as buildRoute does for a bad weight.
 */
export function compileSegments (spec: RouteSpec, versions: readonly Version[]): Segment[] {
  const segments = spec.segments ?? []
  return segments.map((s, i) => compileSegment(s, i, versions, spec.name))
}

/**
 * The first of the route's segments whose match holds for the request, or
 * undefined (the route's own pick applies). Order is the config's: a user
 * in two segments belongs to the first, so a segment list reads like a
 * firewall's rules. Pure: takes the parsed request parts, never a socket;
 * a route without segments costs one length check.
 */
export function matchSegment (route: Route, headers: IncomingHttpHeaders, url: string, ip: string): Segment | undefined {
  const segments = route.segments
  if (segments.length === 0) return undefined
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i]!
    if (s.test(headers, url, ip)) return s
  }
  return undefined
}
