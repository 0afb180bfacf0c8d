import { ConfigError } from '../errors.js'
import type { RouteSpec, VersionSpec } from '../routing/spec.js'
import { PlanError, validatePlan } from './plan.js'
import { parseKeySource } from '../routing/table.js'
import { checkWeight, checkWeightSum } from '../routing/weights.js'

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const HOST_RE = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i

type Obj = Record<string, unknown>

function isObj (v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function onlyKeys (o: Obj, allowed: readonly string[], at: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new ConfigError(`${at}.${k}`, `unknown key (allowed: ${allowed.join(', ')})`)
  }
}

function str (v: unknown, at: string, re?: RegExp, what?: string): string {
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(at, `must be a non-empty string, got ${JSON.stringify(v) ?? String(v)}`)
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
  if ((u.pathname !== '/' && u.pathname !== '') || u.search !== '' || u.hash !== '') throw new ConfigError(at, `${JSON.stringify(s)} must be an origin (scheme://host:port) without path or query`)
  return u.origin
}

function validateVersion (v: unknown, at: string): VersionSpec {
  if (!isObj(v)) throw new ConfigError(at, 'must be an object with name, upstream and weight')
  onlyKeys(v, ['name', 'upstream', 'weight'], at)
  const name = str(v.name, `${at}.name`, NAME_RE, 'version name (letters, digits, _ . -; up to 63)')
  const upstream = checkUpstream(v.upstream, `${at}.upstream`)
  if (v.weight === undefined) throw new ConfigError(`${at}.weight`, 'is required')
  const bad = checkWeight(v.weight)
  if (bad !== undefined) throw new ConfigError(`${at}.weight`, bad)
  return { name, upstream, weight: v.weight as number }
}

function validateRoute (r: unknown, i: number): RouteSpec {
  const at = `routes[${i}]`
  if (!isObj(r)) throw new ConfigError(at, 'must be an object')
  onlyKeys(r, ['name', 'match', 'sticky', 'override', 'versions', 'rollout'], at)
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
  if (r.rollout !== undefined) {
    try {
      spec.rollout = validatePlan(r.rollout, versions.map((v) => v.name))
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
