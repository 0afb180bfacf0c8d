import { ConfigError } from '../errors.js'
import type { Balance, RouteSpec, TlsSpec, VersionSpec } from '../routing/spec.js'
import { PlanError, planContext, validatePlan } from './plan.js'
import { isObj, type Obj, onlyKeys, shown, validateMirror, validateSegments } from './segments.js'
import { parseKeySource } from '../routing/table.js'
import { checkWeight, checkWeightSum } from '../routing/weights.js'

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const HOST_RE = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i

function str (v: unknown, at: string, re?: RegExp, what?: string): string {
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(at, `must be a non-empty string, got ${shown(v)}`)
  if (re !== undefined && !re.test(v)) throw new ConfigError(at, `${JSON.stringify(v)} is not a valid ${what ?? 'value'}`)
  return v
}

function obj (v: unknown, at: string): Obj {
  if (v === undefined) return {}
  if (!isObj(v)) throw new ConfigError(at, 'must be an object')
  return v
}

/** Validates an upstream URL: http(s), a host, no path, query, credentials or fragment. Returns the origin. */
export function checkUpstream (v: unknown, at: string): string {
  const s = str(v, at)
  let u: URL
  try {
    u = new URL(s)
  } catch {
    throw new ConfigError(at, `${JSON.stringify(s)} is not a URL`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ConfigError(at, `${JSON.stringify(s)} must be an http:// or https:// URL`)
  if (u.username !== '' || u.password !== '') throw new ConfigError(at, 'must not contain credentials')
  if (u.port === '0') throw new ConfigError(at, `${JSON.stringify(s)} has port 0, which cannot be dialled`)
  if ((u.pathname !== '/' && u.pathname !== '') || u.search !== '' || u.hash !== '') throw new ConfigError(at, `${JSON.stringify(s)} must be an origin (scheme://host:port) without path or query`)
  return u.origin
}

/** Most origins one version may list (each is a connection pool). */
export const MAX_ORIGINS = 64

const BALANCES: readonly Balance[] = ['least-request', 'round-robin', 'hash']

/**
 * Validates a version's `upstream`: one origin or a non-empty array of
 * distinct origins. Returns the normalised origins (always an array).
 */
export function checkUpstreams (v: unknown, at: string): string[] {
  if (!Array.isArray(v)) return [checkUpstream(v, at)]
  if (v.length === 0) throw new ConfigError(at, 'must be an origin or a non-empty array of origins')
  if (v.length > MAX_ORIGINS) throw new ConfigError(at, `at most ${MAX_ORIGINS} origins per version, got ${v.length}`)
  const out = v.map((o, i) => checkUpstream(o, `${at}[${i}]`))
  const seen = new Set<string>()
  out.forEach((o, i) => {
    if (seen.has(o)) throw new ConfigError(`${at}[${i}]`, `duplicate origin ${o}`)
    seen.add(o)
  })
  return out
}

/** Validates a `tls` block (upstream TLS): file paths, a server name, a flag. Files are checked when pools are made (see upstream/tls.ts). */
export function checkTls (v: unknown, at: string): TlsSpec | undefined {
  if (v === undefined) return undefined
  const o = obj(v, at)
  onlyKeys(o, ['ca', 'servername', 'cert', 'key', 'insecureSkipVerify'], at)
  const out: TlsSpec = {}
  for (const k of ['ca', 'cert', 'key'] as const) if (o[k] !== undefined) out[k] = str(o[k], `${at}.${k}`)
  if (o.servername !== undefined) out.servername = str(o.servername, `${at}.servername`, HOST_RE, 'server name').toLowerCase()
  if (o.insecureSkipVerify !== undefined) {
    if (typeof o.insecureSkipVerify !== 'boolean') throw new ConfigError(`${at}.insecureSkipVerify`, `must be true or false, got ${JSON.stringify(o.insecureSkipVerify)}`)
    // false is kept: it turns a static upstream.tls.insecureSkipVerify off for this version
    out.insecureSkipVerify = o.insecureSkipVerify
  }
  if ((out.cert === undefined) !== (out.key === undefined)) throw new ConfigError(out.cert === undefined ? `${at}.cert` : `${at}.key`, 'cert and key go together (a client certificate for mTLS)')
  return Object.keys(out).length === 0 ? undefined : out
}

/** Validates one version: name, upstream (one origin or several), weight, balance, discovery, tls. */
export function validateVersion (v: unknown, at: string): VersionSpec {
  if (!isObj(v)) throw new ConfigError(at, 'must be an object with name, upstream and weight')
  onlyKeys(v, ['name', 'upstream', 'weight', 'balance', 'discovery', 'tls'], at)
  const name = str(v.name, `${at}.name`, NAME_RE, 'version name (letters, digits, _ . -; up to 63)')
  const spec: VersionSpec = { name, upstream: [], weight: 0 }
  applyEndpoints(spec, v, at)
  if (v.weight === undefined) throw new ConfigError(`${at}.weight`, 'is required')
  const bad = checkWeight(v.weight)
  if (bad !== undefined) throw new ConfigError(`${at}.weight`, bad)
  spec.weight = v.weight as number
  return spec
}

/**
 * Validates the endpoint part of a version (`upstream`, `balance`,
 * `discovery`, `tls`) from `v` into `spec`. Shared by the config and by
 * `PUT /api/v1/routes/{route}/versions/{version}`, so both accept exactly
 * the same thing.
 */
export function applyEndpoints (spec: VersionSpec, v: Obj, at: string): void {
  spec.upstream = checkUpstreams(v.upstream, `${at}.upstream`)
  if (v.balance !== undefined) {
    if (!BALANCES.includes(v.balance as Balance)) throw new ConfigError(`${at}.balance`, `must be one of ${BALANCES.join(', ')}, got ${JSON.stringify(v.balance)}`)
    if (v.balance !== 'least-request') spec.balance = v.balance as Balance
    else delete spec.balance
  } else {
    delete spec.balance
  }
  if (v.discovery !== undefined && v.discovery !== 'static') {
    if (v.discovery !== 'dns') throw new ConfigError(`${at}.discovery`, `must be "dns" or "static", got ${JSON.stringify(v.discovery)}`)
    spec.upstream.forEach((o, i) => {
      const host = new URL(o).hostname
      if (/^[0-9.]+$/.test(host) || host.startsWith('[')) throw new ConfigError(spec.upstream.length === 1 ? `${at}.upstream` : `${at}.upstream[${i}]`, `discovery "dns" needs a host name, got the address ${host}`)
    })
    spec.discovery = 'dns'
  } else {
    delete spec.discovery
  }
  const tls = checkTls(v.tls, `${at}.tls`)
  if (tls === undefined) delete spec.tls
  else spec.tls = tls
}

function validateRoute (r: unknown, i: number): RouteSpec {
  const at = `routes[${i}]`
  if (!isObj(r)) throw new ConfigError(at, 'must be an object')
  onlyKeys(r, ['name', 'match', 'sticky', 'override', 'versions', 'segments', 'mirror', 'rollout'], at)
  const name = str(r.name, `${at}.name`, NAME_RE, 'route name (letters, digits, _ . -; up to 63)')

  const m = obj(r.match, `${at}.match`)
  onlyKeys(m, ['host', 'pathPrefix'], `${at}.match`)
  let host: string | undefined
  if (m.host !== undefined) host = str(m.host, `${at}.match.host`, HOST_RE, 'host name (example.com or *.example.com)').toLowerCase()
  const pathPrefix = m.pathPrefix === undefined ? '/' : str(m.pathPrefix, `${at}.match.pathPrefix`)
  if (!pathPrefix.startsWith('/')) throw new ConfigError(`${at}.match.pathPrefix`, `must start with "/", got ${JSON.stringify(pathPrefix)}`)

  const s = obj(r.sticky, `${at}.sticky`)
  onlyKeys(s, ['keys', 'salt', 'cookie'], `${at}.sticky`)
  const keysRaw = s.keys === undefined ? [] : s.keys
  if (!Array.isArray(keysRaw)) throw new ConfigError(`${at}.sticky.keys`, 'must be an array of key sources')
  const keys = keysRaw.map((k, j) => {
    const kat = `${at}.sticky.keys[${j}]`
    const ks = str(k, kat)
    try {
      parseKeySource(ks)
    } catch (err) {
      throw new ConfigError(kat, (err as Error).message)
    }
    if (ks.startsWith('header:') && !TOKEN_RE.test(ks.slice(7))) throw new ConfigError(kat, `${JSON.stringify(ks.slice(7))} is not a valid header name`)
    return ks
  })
  const salt = s.salt === undefined ? undefined : str(s.salt, `${at}.sticky.salt`)
  const c = obj(s.cookie, `${at}.sticky.cookie`)
  onlyKeys(c, ['name', 'maxAge', 'domain'], `${at}.sticky.cookie`)
  const cookieName = c.name === undefined ? 'canaryd_id' : str(c.name, `${at}.sticky.cookie.name`, TOKEN_RE, 'cookie name')
  const maxAge = c.maxAge === undefined ? 86400 : c.maxAge
  if (typeof maxAge !== 'number' || !Number.isInteger(maxAge) || maxAge < 0) throw new ConfigError(`${at}.sticky.cookie.maxAge`, `must be a whole number of seconds >= 0, got ${JSON.stringify(maxAge)}`)
  const domain = c.domain === undefined ? undefined : str(c.domain, `${at}.sticky.cookie.domain`, HOST_RE, 'cookie domain')

  const o = obj(r.override, `${at}.override`)
  onlyKeys(o, ['header', 'cookie'], `${at}.override`)
  const override: RouteSpec['override'] = {}
  if (o.header !== undefined) override.header = str(o.header, `${at}.override.header`, TOKEN_RE, 'header name').toLowerCase()
  if (o.cookie !== undefined) override.cookie = str(o.cookie, `${at}.override.cookie`, TOKEN_RE, 'cookie name')

  if (!Array.isArray(r.versions)) throw new ConfigError(`${at}.versions`, 'must be an array of versions')
  if (r.versions.length < 2) throw new ConfigError(`${at}.versions`, `at least two versions are required, got ${r.versions.length}`)
  if (r.versions.length > 31) throw new ConfigError(`${at}.versions`, `at most 31 versions are supported, got ${r.versions.length}`)
  const versions = r.versions.map((v, j) => validateVersion(v, `${at}.versions[${j}]`))
  const seen = new Set<string>()
  versions.forEach((v, j) => {
    if (seen.has(v.name)) throw new ConfigError(`${at}.versions[${j}].name`, `duplicate version name ${JSON.stringify(v.name)}`)
    seen.add(v.name)
  })
  const sum = checkWeightSum(versions.map((v) => v.weight))
  if (sum !== undefined) throw new ConfigError(`${at}.versions`, sum)

  const spec: RouteSpec = {
    name,
    match: host === undefined ? { pathPrefix } : { host, pathPrefix },
    sticky: { keys, cookie: domain === undefined ? { name: cookieName, maxAge } : { name: cookieName, maxAge, domain } },
    override,
    versions
  }
  if (salt !== undefined) spec.sticky.salt = salt
  const names = versions.map((v) => v.name)
  // null (a YAML key left empty) and [] mean none, as absent does: the spec carries only what routes
  if (r.segments !== undefined && r.segments !== null) {
    const segments = validateSegments(r.segments, names, `${at}.segments`)
    if (segments.length !== 0) spec.segments = segments
  }
  if (r.mirror !== undefined && r.mirror !== null) spec.mirror = validateMirror(r.mirror, names, `${at}.mirror`)
  if (r.rollout !== undefined) {
    try {
      spec.rollout = validatePlan(r.rollout, names, planContext(spec))
    } catch (err) {
      if (err instanceof PlanError) throw new ConfigError(`${at}.rollout`, err.problems.join('; '))
      throw err
    }
  }
  return spec
}

/**
 * Validates the `routes` array and returns normalised specs, or throws a
 * ConfigError naming the first bad key (`routes[0].versions: weights sum to 80, must be 100`).
 */
export function validateRoutes (raw: unknown): RouteSpec[] {
  if (!Array.isArray(raw)) throw new ConfigError('routes', 'must be an array')
  if (raw.length === 0) throw new ConfigError('routes', 'at least one route is required')
  const specs = raw.map(validateRoute)
  const names = new Set<string>()
  const matches = new Set<string>()
  specs.forEach((s, i) => {
    if (names.has(s.name)) throw new ConfigError(`routes[${i}].name`, `duplicate route name ${JSON.stringify(s.name)}`)
    names.add(s.name)
    const m = `${s.match.host ?? '*'} ${s.match.pathPrefix}`
    if (matches.has(m)) throw new ConfigError(`routes[${i}].match`, `another route already matches host ${s.match.host ?? '(any)'} and pathPrefix ${s.match.pathPrefix}`)
    matches.add(m)
  })
  return specs
}
