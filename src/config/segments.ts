/**
 * Validation of a route's `segments` and `mirror`, shared by the config file
 * (routes.ts), the admin API (`PUT /api/v1/routes/{route}/segments`) and the
 * store (which re-validates specs read back from the state file), so a
 * segment is judged by one set of rules wherever it comes from. Each check
 * throws a ConfigError naming the exact key (`routes[0].segments[1].match.ip[0]`);
 * the output is the normalised spec, and validating it again returns an
 * equal spec.
 */
import { isIP } from 'node:net'
import { RE2JS } from 're2js'
import { ConfigError } from '../errors.js'
import type { MirrorSpec, SegmentMatch, SegmentSpec, ValueMatch } from '../routing/spec.js'
import { checkWeight, checkWeightSum, toPpm } from '../routing/weights.js'

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/** Most segments a route may have: each is tried in order on every request of the route. */
const MAX_SEGMENTS = 32
/** Most exact values one value match may list. */
const MAX_VALUES = 64
/** Longest RE2 pattern accepted. */
const MAX_PATTERN = 1024
/** Largest RE2 program a segment regex may compile to (Envoy's max_program_size idea; the patterns are under 50). */
export const MAX_PROGRAM_SIZE = 200
/** Most CIDRs one segment may list. */
const MAX_CIDRS = 256

/**
 * The defaults of a mirror's optional keys, in one object (fastify's way) so
 * the docs, the plan's shadow phase and the validator cannot disagree.
 */
export const MIRROR_DEFAULTS: Readonly<{ methods: readonly string[]; maxBodyBytes: number; maxInFlight: number; timeoutMs: number }> = Object.freeze({
  methods: Object.freeze(['GET', 'HEAD']),
  maxBodyBytes: 65536,
  maxInFlight: 64,
  timeoutMs: 5000
})

/** A JSON object as the validators see it. */
export type Obj = Record<string, unknown>

/** A plain object (not null, not an array). */
export function isObj (v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** A value as an error message shows it. */
export function shown (v: unknown): string {
  return JSON.stringify(v) ?? String(v)
}

/** Throws a ConfigError naming the first key of `o` not in `allowed`. */
export function onlyKeys (o: Obj, allowed: readonly string[], at: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new ConfigError(`${at}.${k}`, `unknown key (allowed: ${allowed.join(', ')})`)
  }
}

function versionList (versions: readonly string[]): string {
  return `route has ${versions.join(', ')}`
}

/**
 * A value match: one string (→ a one-element list), a non-empty list of
 * strings, or `{"regex": "…"}` compiled by RE2 here, so a bad pattern is a
 * config error rather than a table-build failure.
 */
function checkValueMatch (v: unknown, at: string): ValueMatch {
  const expected = 'must be a non-empty string, a non-empty array of strings or {"regex": "…"}'
  if (typeof v === 'string') {
    if (v.length === 0) throw new ConfigError(at, `${expected}, got ""`)
    return [v]
  }
  if (Array.isArray(v)) {
    if (v.length === 0) throw new ConfigError(at, `${expected}, got []`)
    if (v.length > MAX_VALUES) throw new ConfigError(at, `at most ${MAX_VALUES} values, got ${v.length}`)
    return v.map((s, j) => {
      if (typeof s !== 'string' || s.length === 0) throw new ConfigError(`${at}[${j}]`, `must be a non-empty string, got ${shown(s)}${typeof s === 'number' || typeof s === 'boolean' ? ' (quote it in YAML)' : ''}`)
      return s
    })
  }
  if (isObj(v)) {
    onlyKeys(v, ['regex'], at)
    const p = v.regex
    if (typeof p !== 'string' || p.length === 0) throw new ConfigError(`${at}.regex`, `must be a non-empty RE2 pattern, got ${shown(p)}`)
    if (p.length > MAX_PATTERN) throw new ConfigError(`${at}.regex`, `pattern is ${p.length} characters, at most ${MAX_PATTERN}`)
    let size: number
    try {
      size = RE2JS.compile(p).programSize()
    } catch (err) {
      throw new ConfigError(`${at}.regex`, `invalid RE2 pattern: ${(err as Error).message} (RE2 has no backreferences or lookaround)`)
    }
    // RE2 is linear in the value, times the program: a large program (a[ab]{900}) costs milliseconds a request (Envoy caps it too)
    if (size > MAX_PROGRAM_SIZE) throw new ConfigError(`${at}.regex`, `pattern compiles to ${size} RE2 instructions, at most ${MAX_PROGRAM_SIZE} (a large repetition such as {900} is the usual cause; match a shorter pattern or use a list of values)`)
    return { regex: p }
  }
  throw new ConfigError(at, `${expected}, got ${shown(v)}${typeof v === 'number' || typeof v === 'boolean' ? ' (quote it in YAML)' : ''}`)
}

/** `name → value match` for header, cookie or query; `checkName` returns why a name is bad, or undefined. */
function checkFields (v: unknown, at: string, what: string, checkName: (name: string) => string | undefined, lower: boolean): Record<string, ValueMatch> {
  if (!isObj(v)) throw new ConfigError(at, `must be an object of ${what} name → value match, got ${shown(v)}`)
  const names = Object.keys(v)
  if (names.length === 0) throw new ConfigError(at, `must name at least one ${what}`)
  const out = new Map<string, ValueMatch>()
  for (const name of names) {
    const bad = checkName(name)
    if (bad !== undefined) throw new ConfigError(`${at}.${name}`, bad)
    const key = lower ? name.toLowerCase() : name
    if (out.has(key)) throw new ConfigError(`${at}.${name}`, `duplicate ${what} name ${shown(key)} (${what} names are case-insensitive)`)
    out.set(key, checkValueMatch(v[name], `${at}.${name}`))
  }
  // fromEntries defines own properties: a name like `__proto__` stays a plain key
  return Object.fromEntries(out)
}

/**
 * One CIDR or plain address. node:net's isIP decides what an address is
 * (ipaddr.js would also read legacy spellings like `10.1` or `0x0a.0.0.1`);
 * a zone (`fe80::1%eth0`) names an interface, not a range, and is refused.
 */
function checkCidr (v: unknown, at: string): string {
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(at, `must be an IP address or CIDR, got ${shown(v)}`)
  const slash = v.indexOf('/')
  const addr = slash === -1 ? v : v.slice(0, slash)
  const kind = isIP(addr)
  if (kind === 0 || addr.includes('%')) throw new ConfigError(at, `${shown(v)} is not an IP address or CIDR`)
  if (slash === -1) return v
  const max = kind === 4 ? 32 : 128
  const bits = v.slice(slash + 1)
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) throw new ConfigError(at, `${shown(v)} is not a CIDR (prefix length 0-${max} for IPv${kind})`)
  return v
}

function checkIp (v: unknown, at: string): string[] {
  // YAML-ish: one CIDR may be written without the list
  if (typeof v === 'string') return [checkCidr(v, at)]
  if (!Array.isArray(v) || v.length === 0) throw new ConfigError(at, `must be a non-empty array of IP addresses or CIDRs, got ${shown(v)}`)
  if (v.length > MAX_CIDRS) throw new ConfigError(at, `at most ${MAX_CIDRS} entries, got ${v.length}`)
  return v.map((c, j) => checkCidr(c, `${at}[${j}]`))
}

function checkMatch (v: unknown, at: string): SegmentMatch {
  if (!isObj(v)) throw new ConfigError(at, `must be an object with at least one of header, cookie, query, ip, got ${shown(v)}`)
  onlyKeys(v, ['header', 'cookie', 'query', 'ip'], at)
  const out: SegmentMatch = {}
  if (v.header !== undefined) out.header = checkFields(v.header, `${at}.header`, 'header', (n) => TOKEN_RE.test(n) ? undefined : 'is not a valid header name (an HTTP token)', true)
  if (v.cookie !== undefined) out.cookie = checkFields(v.cookie, `${at}.cookie`, 'cookie', (n) => TOKEN_RE.test(n) ? undefined : 'is not a valid cookie name (an HTTP token)', false)
  if (v.query !== undefined) out.query = checkFields(v.query, `${at}.query`, 'query parameter', (n) => n.length === 0 ? 'a query parameter name must not be empty' : /[&=#?\s]/.test(n) ? `${JSON.stringify(n)} can never match: a query parameter name has no &, =, #, ? or white space (give it percent-encoded as sent, e.g. a%20b)` : undefined, false)
  if (v.ip !== undefined) out.ip = checkIp(v.ip, `${at}.ip`)
  if (Object.keys(out).length === 0) throw new ConfigError(at, 'needs at least one of header, cookie, query, ip')
  return out
}

/** `weights`: version → percent, every version of the route in the result (unnamed → 0), summing to 100. */
function checkSegmentWeights (v: unknown, versions: readonly string[], at: string): Record<string, number> {
  if (!isObj(v)) throw new ConfigError(at, `must be an object of version name → percent, got ${shown(v)}`)
  for (const [name, w] of Object.entries(v)) {
    if (!versions.includes(name)) throw new ConfigError(`${at}.${name}`, `unknown version (${versionList(versions)})`)
    const bad = checkWeight(w)
    if (bad !== undefined) throw new ConfigError(`${at}.${name}`, bad)
  }
  const out = Object.fromEntries(versions.map((name): [string, number] => [name, Object.hasOwn(v, name) ? v[name] as number : 0]))
  const sum = checkWeightSum(Object.values(out))
  if (sum !== undefined) throw new ConfigError(at, sum)
  return out
}

function checkSegment (v: unknown, versions: readonly string[], at: string): SegmentSpec {
  if (!isObj(v)) throw new ConfigError(at, 'must be an object with name, match and version or weights')
  onlyKeys(v, ['name', 'match', 'version', 'weights'], at)
  if (typeof v.name !== 'string' || !NAME_RE.test(v.name)) throw new ConfigError(`${at}.name`, `must be a segment name (letters, digits, _ . -; up to 63), got ${shown(v.name)}`)
  if (v.match === undefined) throw new ConfigError(`${at}.match`, 'is required')
  const match = checkMatch(v.match, `${at}.match`)
  const spec: SegmentSpec = { name: v.name, match }
  if (v.version !== undefined && v.weights !== undefined) throw new ConfigError(at, 'set version (pinned) or weights, not both')
  if (v.version !== undefined) {
    if (typeof v.version !== 'string' || !versions.includes(v.version)) throw new ConfigError(`${at}.version`, `unknown version ${shown(v.version)} (${versionList(versions)})`)
    spec.version = v.version
  } else if (v.weights !== undefined) {
    spec.weights = checkSegmentWeights(v.weights, versions, `${at}.weights`)
  } else {
    throw new ConfigError(at, 'needs version (pinned) or weights')
  }
  return spec
}

/**
 * Validates a route's `segments` (at most 32, names unique in the route) and
 * returns them normalised: header names lower-cased, a single value as a
 * one-element list, `weights` naming every version of the route. `versions`
 * are the route's version names; `at` is the key path of the array itself
 * (`routes[0].segments` in the config, `segments` in the admin API).
 */
export function validateSegments (raw: unknown, versions: readonly string[], at: string): SegmentSpec[] {
  if (!Array.isArray(raw)) throw new ConfigError(at, `must be an array of segments, got ${shown(raw)}`)
  if (raw.length > MAX_SEGMENTS) throw new ConfigError(at, `at most ${MAX_SEGMENTS} segments per route, got ${raw.length}`)
  const out = raw.map((s, i) => checkSegment(s, versions, `${at}[${i}]`))
  const seen = new Set<string>()
  out.forEach((s, i) => {
    if (seen.has(s.name)) throw new ConfigError(`${at}[${i}].name`, `duplicate segment name ${shown(s.name)}`)
    seen.add(s.name)
  })
  return out
}

function checkInt (v: unknown, at: string, min: number, max: number, fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(at, `must be a whole number from ${min} to ${max}, got ${shown(v)}`)
  return v
}

function checkMethods (v: unknown, at: string): string[] {
  if (v === undefined) return [...MIRROR_DEFAULTS.methods]
  const list = typeof v === 'string' ? [v] : v
  if (!Array.isArray(list) || list.length === 0) throw new ConfigError(at, `must be a non-empty array of HTTP methods, got ${shown(v)}`)
  const out: string[] = []
  list.forEach((m, j) => {
    const mat = typeof v === 'string' ? at : `${at}[${j}]`
    if (typeof m !== 'string' || !TOKEN_RE.test(m)) throw new ConfigError(mat, `must be an HTTP method, got ${shown(m)}`)
    const up = m.toUpperCase()
    if (!out.includes(up)) out.push(up)
  })
  return out
}

/**
 * Validates a route's `mirror` and returns it with every field (defaults
 * from MIRROR_DEFAULTS; methods upper-cased, without repeats). `version`
 * must be one of the route's `versions`; `at` is the key path of the
 * object (`routes[0].mirror`).
 */
export function validateMirror (raw: unknown, versions: readonly string[], at: string): MirrorSpec {
  if (!isObj(raw)) throw new ConfigError(at, `must be an object with version and percent, got ${shown(raw)}`)
  onlyKeys(raw, ['version', 'percent', 'methods', 'maxBodyBytes', 'maxInFlight', 'timeoutMs'], at)
  if (raw.version === undefined) throw new ConfigError(`${at}.version`, 'is required')
  if (typeof raw.version !== 'string' || !versions.includes(raw.version)) throw new ConfigError(`${at}.version`, `unknown version ${shown(raw.version)} (${versionList(versions)})`)
  const p = raw.percent
  if (p === undefined) throw new ConfigError(`${at}.percent`, 'is required')
  if (typeof p !== 'number' || !Number.isFinite(p) || p <= 0 || p > 100) throw new ConfigError(`${at}.percent`, `must be a number over 0 and at most 100, got ${shown(p)}`)
  if (toPpm(p) === undefined) throw new ConfigError(`${at}.percent`, `must have at most 4 decimals, got ${p}`)
  return {
    version: raw.version,
    percent: p,
    methods: checkMethods(raw.methods, `${at}.methods`),
    maxBodyBytes: checkInt(raw.maxBodyBytes, `${at}.maxBodyBytes`, 0, 16_777_216, MIRROR_DEFAULTS.maxBodyBytes),
    maxInFlight: checkInt(raw.maxInFlight, `${at}.maxInFlight`, 1, 10_000, MIRROR_DEFAULTS.maxInFlight),
    timeoutMs: checkInt(raw.timeoutMs, `${at}.timeoutMs`, 1, 600_000, MIRROR_DEFAULTS.timeoutMs)
  }
}

/**
 * The checks the runtime store applies to segments and a mirror saved in the
 * state file (state/ does not import config/: the app injects these).
 */
export const RUNTIME_CHECKS = Object.freeze({
  checkSegments: (raw: unknown, versions: readonly string[]): SegmentSpec[] => validateSegments(raw, versions, 'segments'),
  checkMirror: (raw: unknown, versions: readonly string[]): MirrorSpec => validateMirror(raw, versions, 'mirror')
})
