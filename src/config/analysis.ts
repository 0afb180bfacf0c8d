/**
 * The analysis parts of a rollout plan beyond the proxy's own counters:
 * metric providers (Prometheus, HTTP), user template variables and the
 * built-in load test. Pure data and validation, like plan.ts (which calls
 * these validators); the queries themselves are run by rollout/analysis.ts.
 */
import parseJsonPath from 'jsonpath-rfc9535/parser'
import { isObj, type Obj } from './segments.js'

/** A metric's accepted range: the canary fails below `min` or above `max`. */
export interface ThresholdRange {
  min?: number
  max?: number
}

/** Canary against a baseline version: fails when the canary is worse by more than `maxRatio`. */
export interface MetricCompare {
  /** A version name; "stable" (the default) means the plan's stable version, whatever its name. */
  baseline: string
  /** >= 1: lower-is-worse fails when baseline / canary > maxRatio; higher-is-worse when canary / baseline > maxRatio. */
  maxRatio: number
  direction: 'lower-is-worse' | 'higher-is-worse'
}

/**
 * How a provider authenticates. The plan holds where the secret is (an
 * environment variable's name or a file's path), never the secret: plans are
 * echoed by the admin API, saved in the state and shown by the CLI.
 */
export type AuthSpec =
  | { type: 'bearer'; tokenEnv?: string; tokenFile?: string }
  | { type: 'basic'; username: string; passwordEnv?: string; passwordFile?: string }
  /** An API key in a header of its own (X-Api-Key, DD-API-KEY, …). */
  | { type: 'header'; name: string; valueEnv?: string; valueFile?: string }

/** A Prometheus-compatible query API (Prometheus, Thanos, Mimir, VictoriaMetrics). */
export interface PrometheusProviderSpec {
  type: 'prometheus'
  /** Base URL, e.g. http://prometheus:9090 (a path prefix is kept: /api/v1/query is appended). */
  address: string
  timeoutMs: number
  headers?: Record<string, string>
  auth?: AuthSpec
}

/** Any HTTP endpoint answering JSON: the number is picked by an RFC 9535 JSONPath. */
export interface HttpProviderSpec {
  type: 'http'
  /** A template: `{{version}}` etc. are URL-encoded where they are inserted. */
  url: string
  method: 'GET' | 'POST'
  /** POST only; a template. */
  body?: string
  jsonPath: string
  timeoutMs: number
  headers?: Record<string, string>
  auth?: AuthSpec
}

/** Where a metric's value comes from. */
export type ProviderSpec = PrometheusProviderSpec | HttpProviderSpec

/** One metric of `analysis.metrics`. */
export interface MetricSpec {
  /** The check record's and canaryd_rollout_metric_value's name for it. */
  name: string
  provider: ProviderSpec
  /** Prometheus: the PromQL template (an instant query that returns one number). */
  query?: string
  thresholdRange?: ThresholdRange
  compare?: MetricCompare
  /** No data (error, timeout, empty result, NaN) fails the check instead of leaving it inconclusive. */
  failOnNoData: boolean
}

/** The built-in synthetic traffic generator of a low-traffic route (`analysis.loadTest`). */
export interface LoadTestSpec {
  /** Requests per second in all, spread evenly over `versions`. */
  rps: number
  paths: string[]
  method: 'GET' | 'HEAD'
  headers: Record<string, string>
  /** Distinct simulated users (sticky ids) the requests cycle through. */
  users: number
  /** "canary", "stable" (the plan's roles) or version names. */
  versions: string[]
  /** Whether the judge counts the synthetic requests (by default they are counted apart and not judged). */
  includeInAnalysis: boolean
  timeoutMs: number
  /** Credentials the app asks of its users, read at start from an env var or a file (never in the plan). */
  auth?: AuthSpec
}

/** Placeholders every template may use; user variables add to them. */
export const TEMPLATE_BUILTINS: readonly string[] = Object.freeze(['route', 'version', 'interval', 'step', 'weight'])

/** Defaults and limits of the analysis keys (docs/analysis.md). */
export const ANALYSIS_DEFAULTS = Object.freeze({
  providerTimeoutMs: 5000,
  loadTestUsers: 100,
  loadTestTimeoutMs: 5000,
  maxMetrics: 20,
  maxVariables: 50,
  maxRps: 1000,
  maxPaths: 50
})

// {{ name }} or {{ variables.name }}: whitespace allowed inside the braces (Flagger's spelling)
const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}/g

/** The placeholder names a template uses (`variables.x` reported as `x`), in order, without repeats. */
export function templateNames (template: string): string[] {
  const out: string[] = []
  for (const m of template.matchAll(PLACEHOLDER)) {
    const name = m[1]!.startsWith('variables.') ? m[1]!.slice('variables.'.length) : m[1]!
    if (!out.includes(name)) out.push(name)
  }
  return out
}

/**
 * Substitutes `{{name}}` placeholders with `values[name]` (through `encode`
 * when given: URL components). A name without a value is left as written;
 * validation refuses plans that use unknown names, so that only happens to
 * a template validated against other variables.
 */
export function renderTemplate (template: string, values: Readonly<Record<string, string>>, encode?: (s: string) => string): string {
  return template.replace(PLACEHOLDER, (whole, raw: string) => {
    const name = raw.startsWith('variables.') ? raw.slice('variables.'.length) : raw
    const v = values[name]
    if (v === undefined) return whole
    return encode === undefined ? v : encode(v)
  })
}

/** A duration in PromQL's syntax: 30s, 5m, 1h, else milliseconds (1500ms). */
export function promDuration (ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`
  if (ms % 60_000 === 0) return `${ms / 60_000}m`
  if (ms % 1000 === 0) return `${ms / 1000}s`
  return `${ms}ms`
}

/** The part of plan.ts's problem list these validators use. */
export interface ProblemSink {
  add (at: string, what: string): void
  keys (o: Obj, allowed: readonly string[], at: string): void
  num (v: unknown, at: string, opts: { min?: number; max?: number; int?: boolean; gt?: number; lt?: number }): number | undefined
}

const METRIC_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$/
const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
// a header name (RFC 9110 token) and a value without control characters
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/
// headers that carry credentials (Authorization, Cookie, X-Api-Key, DD-API-KEY, X-Auth-Token,
// PRIVATE-TOKEN, X-Vault-Token, …): they belong in "auth", whose secret stays out of the plan
const CREDENTIAL_HEADER = /authorization|cookie|token|secret|passw|session|(^|-)(api-?)?key$|^x-auth/i
// headers that frame or route a request: a plan setting them would misframe it (undici refuses most of them anyway)
const FRAMING_HEADERS: ReadonlySet<string> = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'proxy-connection', 'expect'])
// a request path as sent on the wire: visible ASCII only (no spaces, no control characters)
const PATH = /^\/[\x21-\x5b\x5d-\x7e]*$/ // no backslash either: a WHATWG URL reads it as "/"
// a "." or ".." segment, plain or percent-encoded: the client normalises it away, and the path leaves the route's prefix
const DOT_SEGMENT = /(^|\/)(\.|%2e){1,2}(\/|\?|#|$)/i

/** `analysis.variables`: string values, names that do not shadow a built-in. */
export function checkVariables (raw: unknown, p: ProblemSink): Record<string, string> | undefined {
  if (raw === undefined) return undefined
  if (!isObj(raw)) {
    p.add('analysis.variables', 'must be an object of names to strings, e.g. {"namespace": "shop"}')
    return undefined
  }
  const out: Record<string, string> = {}
  const entries = Object.entries(raw)
  if (entries.length > ANALYSIS_DEFAULTS.maxVariables) p.add('analysis.variables', `at most ${ANALYSIS_DEFAULTS.maxVariables}`)
  for (const [k, v] of entries) {
    const at = `analysis.variables.${k}`
    if (!VARIABLE_NAME.test(k)) p.add(at, 'a variable name is letters, digits and _ (not starting with a digit)')
    // a plain object cannot hold it as a key (the assignment sets its prototype)
    else if (k === '__proto__') p.add(at, 'cannot be a variable name; choose another name')
    else if (TEMPLATE_BUILTINS.includes(k) || k === 'variables') p.add(at, `is a built-in placeholder (${TEMPLATE_BUILTINS.join(', ')}); choose another name`)
    else if (typeof v !== 'string') p.add(at, `must be a string, got ${JSON.stringify(v)}`)
    else out[k] = v
  }
  return out
}

/** Each placeholder of `template` (at `at`) must be a built-in or a user variable. */
function checkTemplate (template: string, at: string, variables: Readonly<Record<string, string>> | undefined, p: ProblemSink): void {
  // {{args.service-name}} (Argo's spelling) is not a placeholder here: refused, not sent as literal text
  const stray = /\{\{[^{}]*\}\}/.exec(template.replace(PLACEHOLDER, ''))
  if (stray !== null) p.add(at, `${stray[0]} is not a placeholder (write {{route}}, {{version}}, {{interval}}, {{step}}, {{weight}} or {{variables.<name>}}; a variable name is letters, digits and _)`)
  for (const name of templateNames(template)) {
    // own keys only: {{constructor}} is not a variable of every plan
    if (TEMPLATE_BUILTINS.includes(name) || (variables !== undefined && Object.hasOwn(variables, name))) continue
    p.add(at, `unknown placeholder {{${name}}} (known: ${[...TEMPLATE_BUILTINS, ...Object.keys(variables ?? {})].join(', ')})`)
  }
}

function checkUrl (raw: unknown, at: string, p: ProblemSink, template: boolean): string | undefined {
  if (typeof raw !== 'string' || raw === '') {
    p.add(at, 'must be an http:// or https:// URL')
    return undefined
  }
  // placeholders are not URL syntax: check the URL with them replaced by a neutral word
  const probe = template ? raw.replace(PLACEHOLDER, 'x') : raw
  try {
    const u = new URL(probe)
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new TypeError('scheme')
    if (u.username !== '' || u.password !== '') {
      p.add(at, 'must not carry credentials: use "auth" (the plan is echoed by the admin API)')
      return undefined
    }
  } catch {
    // never quoted whole: an unparsable URL may still carry a password before its @
    p.add(at, `must be an http:// or https:// URL, got ${JSON.stringify(raw.replace(/\/\/[^@]*@/, '//***@'))}`)
    return undefined
  }
  return raw
}

function checkHeaders (raw: unknown, at: string, p: ProblemSink): Record<string, string> | undefined {
  if (raw === undefined) return undefined
  if (!isObj(raw)) {
    p.add(at, 'must be an object of header names to values')
    return undefined
  }
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(raw)) {
    if (!HEADER_NAME.test(k)) p.add(`${at}.${k}`, 'is not a valid header name')
    else if (typeof v !== 'string' || !HEADER_VALUE.test(v)) p.add(`${at}.${k}`, 'must be a string without control characters')
    else if (CREDENTIAL_HEADER.test(k)) p.add(`${at}.${k}`, 'put credentials in "auth" (bearer, basic, or {"type": "header", "name": …, "valueEnv": …}): the plan is echoed by the admin API')
    else if (FRAMING_HEADERS.has(k.toLowerCase())) p.add(`${at}.${k}`, `is set by canaryd (${[...FRAMING_HEADERS].join(', ')} frame or route the request)`)
    else out[k] = v
  }
  return out
}

/** `provider.auth`: where the secret is; exactly one source per secret. */
function checkAuth (raw: unknown, at: string, p: ProblemSink): AuthSpec | undefined {
  if (raw === undefined) return undefined
  if (!isObj(raw)) {
    p.add(at, 'must be an object like {"type": "bearer", "tokenEnv": "PROM_TOKEN"}')
    return undefined
  }
  const from = (envKey: string, fileKey: string): { env?: string; file?: string } | undefined => {
    const env = raw[envKey]
    const file = raw[fileKey]
    if ((env === undefined) === (file === undefined)) {
      p.add(at, `give exactly one of ${envKey} (an environment variable's name) or ${fileKey} (a file's path)`)
      return undefined
    }
    if (env !== undefined) {
      if (typeof env !== 'string' || !ENV_NAME.test(env)) { p.add(`${at}.${envKey}`, 'must be an environment variable name'); return undefined }
      // canaryd's own settings (the admin token, the Redis URL and its password) are never sent to a provider
      if (env.toUpperCase().startsWith('CANARYD_')) { p.add(`${at}.${envKey}`, `${env} is one of canaryd's own settings; name a variable of the provider's secret`); return undefined }
      return { env }
    }
    if (typeof file !== 'string' || file === '') { p.add(`${at}.${fileKey}`, 'must be a file path'); return undefined }
    return { file }
  }
  if (raw.type === 'bearer') {
    p.keys(raw, ['type', 'tokenEnv', 'tokenFile'], `${at}.`)
    const src = from('tokenEnv', 'tokenFile')
    if (src === undefined) return undefined
    return src.env !== undefined ? { type: 'bearer', tokenEnv: src.env } : { type: 'bearer', tokenFile: src.file! }
  }
  if (raw.type === 'basic') {
    p.keys(raw, ['type', 'username', 'passwordEnv', 'passwordFile'], `${at}.`)
    if (typeof raw.username !== 'string' || raw.username === '' || raw.username.includes(':')) {
      p.add(`${at}.username`, 'must be a non-empty string without ":"')
      return undefined
    }
    const src = from('passwordEnv', 'passwordFile')
    if (src === undefined) return undefined
    return src.env !== undefined ? { type: 'basic', username: raw.username, passwordEnv: src.env } : { type: 'basic', username: raw.username, passwordFile: src.file! }
  }
  if (raw.type === 'header') {
    p.keys(raw, ['type', 'name', 'valueEnv', 'valueFile'], `${at}.`)
    if (typeof raw.name !== 'string' || !HEADER_NAME.test(raw.name) || FRAMING_HEADERS.has(raw.name.toLowerCase())) {
      p.add(`${at}.name`, 'must be a header name, e.g. "X-Api-Key" (not one that frames the request)')
      return undefined
    }
    const src = from('valueEnv', 'valueFile')
    if (src === undefined) return undefined
    return src.env !== undefined ? { type: 'header', name: raw.name, valueEnv: src.env } : { type: 'header', name: raw.name, valueFile: src.file! }
  }
  p.add(`${at}.type`, `must be "bearer", "basic" or "header", got ${JSON.stringify(raw.type)}`)
  return undefined
}

function checkProvider (raw: unknown, at: string, variables: Readonly<Record<string, string>> | undefined, p: ProblemSink): ProviderSpec | undefined {
  if (!isObj(raw)) {
    p.add(at, 'must be an object like {"type": "prometheus", "address": "http://prometheus:9090"}')
    return undefined
  }
  const timeoutMs = raw.timeoutMs === undefined ? ANALYSIS_DEFAULTS.providerTimeoutMs : p.num(raw.timeoutMs, `${at}.timeoutMs`, { int: true, min: 100, max: 60_000 })
  const headers = checkHeaders(raw.headers, `${at}.headers`, p)
  const auth = checkAuth(raw.auth, `${at}.auth`, p)
  const extra = (s: ProviderSpec): ProviderSpec => {
    if (headers !== undefined && Object.keys(headers).length !== 0) s.headers = headers
    if (auth !== undefined) s.auth = auth
    return s
  }
  if (raw.type === 'prometheus') {
    p.keys(raw, ['type', 'address', 'timeoutMs', 'headers', 'auth'], `${at}.`)
    const address = checkUrl(raw.address, `${at}.address`, p, false)
    // /api/v1/query is appended: a query string or a fragment would swallow it
    if (address !== undefined && /[?#]/.test(address)) { p.add(`${at}.address`, 'must be a base URL without "?" or "#" (/api/v1/query is appended to it)'); return undefined }
    if (address === undefined || timeoutMs === undefined) return undefined
    return extra({ type: 'prometheus', address: address.replace(/\/+$/, ''), timeoutMs })
  }
  if (raw.type === 'http') {
    p.keys(raw, ['type', 'url', 'method', 'body', 'jsonPath', 'timeoutMs', 'headers', 'auth'], `${at}.`)
    const url = checkUrl(raw.url, `${at}.url`, p, true)
    if (url !== undefined) checkTemplate(url, `${at}.url`, variables, p)
    let method: 'GET' | 'POST' = 'GET'
    if (raw.method !== undefined) {
      if (raw.method === 'GET' || raw.method === 'POST') method = raw.method
      else p.add(`${at}.method`, `must be "GET" or "POST", got ${JSON.stringify(raw.method)}`)
    }
    let body: string | undefined
    if (raw.body !== undefined) {
      if (typeof raw.body !== 'string') p.add(`${at}.body`, 'must be a string (a template)')
      else if (method !== 'POST') p.add(`${at}.body`, 'is sent with "method": "POST" only')
      else { body = raw.body; checkTemplate(body, `${at}.body`, variables, p) }
    }
    let jsonPath: string | undefined
    if (typeof raw.jsonPath !== 'string' || !raw.jsonPath.startsWith('$')) p.add(`${at}.jsonPath`, 'is required: an RFC 9535 JSONPath selecting one number, e.g. "$.score"')
    else {
      try {
        parseJsonPath(raw.jsonPath)
        const costly = jsonPathCost(raw.jsonPath)
        if (costly !== undefined) p.add(`${at}.jsonPath`, costly)
        else jsonPath = raw.jsonPath
      } catch (err) {
        p.add(`${at}.jsonPath`, `is not a valid RFC 9535 JSONPath: ${(err as Error).message.split('\n')[0]}`)
      }
    }
    if (url === undefined || jsonPath === undefined || timeoutMs === undefined) return undefined
    const s: HttpProviderSpec = { type: 'http', url, method, jsonPath, timeoutMs }
    if (body !== undefined) s.body = body
    return extra(s)
  }
  p.add(`${at}.type`, `must be "prometheus" or "http", got ${JSON.stringify(raw.type)}`)
  return undefined
}

/**
 * Why a JSONPath could cost more than a metric is worth, or undefined.
 * Descendant segments nest their cost: `$..*..*` on a small answer walks
 * every pair of nodes, a descendant inside a filter every node per node, and
 * the query runs on the proxy's event loop. One descendant segment, outside
 * any filter, is linear in the answer and enough to find one number.
 */
function jsonPathCost (path: string): string | undefined {
  // string literals ('..' inside quotes is a name, not a segment) are blanked first
  const bare = path.replace(/'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"/g, '""')
  const descendants = bare.split('..').length - 1
  if (descendants > 1) return 'may use one descendant segment (..) at most: each one more multiplies the work on the whole answer'
  if (descendants === 1 && inFilter(bare, bare.indexOf('..'))) return 'may not use a descendant segment (..) inside a filter: it repeats the search for every node'
  return undefined
}

/** Whether position `at` of a JSONPath (string literals blanked) lies inside a filter selector `[?…]`. */
function inFilter (path: string, at: number): boolean {
  // the brackets open at `at`, innermost last, each marked filter or not
  const open: boolean[] = []
  for (let i = 0; i < at; i++) {
    const c = path[i]
    if (c === '[') open.push(/^\[\s*\?/.test(path.slice(i, i + 20)))
    else if (c === ']') open.pop()
  }
  return open.includes(true)
}

function checkRange (raw: unknown, at: string, p: ProblemSink): ThresholdRange | undefined {
  if (!isObj(raw)) {
    p.add(at, 'must be an object like {"min": 0.98} or {"max": 0.8}')
    return undefined
  }
  p.keys(raw, ['min', 'max'], `${at}.`)
  const out: ThresholdRange = {}
  if (raw.min !== undefined) { const v = p.num(raw.min, `${at}.min`, {}); if (v !== undefined) out.min = v }
  if (raw.max !== undefined) { const v = p.num(raw.max, `${at}.max`, {}); if (v !== undefined) out.max = v }
  if (raw.min === undefined && raw.max === undefined) p.add(at, 'needs min, max or both')
  if (out.min !== undefined && out.max !== undefined && out.min > out.max) p.add(at, `min (${out.min}) is above max (${out.max})`)
  return out
}

function checkCompare (raw: unknown, at: string, versions: readonly string[] | undefined, canary: string, p: ProblemSink): MetricCompare | undefined {
  if (!isObj(raw)) {
    p.add(at, 'must be an object like {"baseline": "stable", "maxRatio": 1.05, "direction": "lower-is-worse"}')
    return undefined
  }
  p.keys(raw, ['baseline', 'maxRatio', 'direction'], `${at}.`)
  let baseline = 'stable'
  if (raw.baseline !== undefined) {
    if (typeof raw.baseline !== 'string' || raw.baseline === '') p.add(`${at}.baseline`, 'must be "stable" or a version name')
    else if (raw.baseline !== 'stable' && versions !== undefined && !versions.includes(raw.baseline)) p.add(`${at}.baseline`, `${JSON.stringify(raw.baseline)} is not a version of the route (${versions.join(', ')})`)
    else if (raw.baseline === canary && canary !== 'stable') p.add(`${at}.baseline`, `is the canary itself (${canary}): compare it with "stable" or another version`)
    else baseline = raw.baseline
  }
  const maxRatio = p.num(raw.maxRatio, `${at}.maxRatio`, { min: 1 })
  let direction: MetricCompare['direction'] = 'lower-is-worse'
  if (raw.direction !== undefined) {
    if (raw.direction === 'lower-is-worse' || raw.direction === 'higher-is-worse') direction = raw.direction
    else p.add(`${at}.direction`, `must be "lower-is-worse" or "higher-is-worse", got ${JSON.stringify(raw.direction)}`)
  }
  return maxRatio === undefined ? undefined : { baseline, maxRatio, direction }
}

/** `analysis.metrics`: each metric's provider, template, and what judges it. */
export function checkMetrics (raw: unknown, variables: Readonly<Record<string, string>> | undefined, versions: readonly string[] | undefined, canary: string, p: ProblemSink): MetricSpec[] | undefined {
  if (raw === undefined) return undefined
  if (!Array.isArray(raw)) {
    p.add('analysis.metrics', 'must be an array of metrics')
    return undefined
  }
  if (raw.length > ANALYSIS_DEFAULTS.maxMetrics) {
    p.add('analysis.metrics', `at most ${ANALYSIS_DEFAULTS.maxMetrics}`)
    return undefined
  }
  const out: MetricSpec[] = []
  const names = new Set<string>()
  raw.forEach((m, i) => {
    const at = `analysis.metrics[${i}]`
    if (!isObj(m)) { p.add(at, 'must be an object with name, provider and thresholdRange or compare'); return }
    p.keys(m, ['name', 'provider', 'query', 'thresholdRange', 'compare', 'failOnNoData'], `${at}.`)
    let ok = true
    if (typeof m.name !== 'string' || !METRIC_NAME.test(m.name)) { p.add(`${at}.name`, 'must be 1–63 letters, digits, _ . : - (starting with a letter or digit)'); ok = false } else if (names.has(m.name)) { p.add(`${at}.name`, `${JSON.stringify(m.name)} is used twice`); ok = false } else names.add(m.name)
    const provider = checkProvider(m.provider, `${at}.provider`, variables, p)
    let query: string | undefined
    if (provider?.type === 'prometheus') {
      if (typeof m.query !== 'string' || m.query.trim() === '') { p.add(`${at}.query`, 'is required for a prometheus provider: a PromQL template returning one number'); ok = false } else { query = m.query; checkTemplate(query, `${at}.query`, variables, p) }
    } else if (m.query !== undefined && provider?.type === 'http') { p.add(`${at}.query`, 'is for prometheus providers; an http provider\'s url is its template'); ok = false }
    const thresholdRange = m.thresholdRange === undefined ? undefined : checkRange(m.thresholdRange, `${at}.thresholdRange`, p)
    const compare = m.compare === undefined ? undefined : checkCompare(m.compare, `${at}.compare`, versions, canary, p)
    if (m.thresholdRange === undefined && m.compare === undefined) { p.add(at, 'needs thresholdRange, compare or both: nothing would judge it'); ok = false }
    let failOnNoData = false
    if (m.failOnNoData !== undefined) {
      if (typeof m.failOnNoData !== 'boolean') p.add(`${at}.failOnNoData`, `must be true or false, got ${JSON.stringify(m.failOnNoData)}`)
      else failOnNoData = m.failOnNoData
    }
    if (!ok || provider === undefined) return
    const spec: MetricSpec = { name: m.name as string, provider, failOnNoData }
    if (query !== undefined) spec.query = query
    if (thresholdRange !== undefined) spec.thresholdRange = thresholdRange
    if (compare !== undefined) spec.compare = compare
    out.push(spec)
  })
  return out
}

/** `analysis.loadTest`; `override` says whether the route can pin a version (the generator's only way to reach each one). */
export function checkLoadTest (raw: unknown, versions: readonly string[] | undefined, override: boolean | undefined, p: ProblemSink): LoadTestSpec | undefined {
  if (raw === undefined) return undefined
  const at = 'analysis.loadTest'
  if (!isObj(raw)) {
    p.add(at, 'must be an object like {"rps": 20, "paths": ["/"]}')
    return undefined
  }
  p.keys(raw, ['rps', 'paths', 'method', 'headers', 'users', 'versions', 'includeInAnalysis', 'timeoutMs', 'auth'], `${at}.`)
  const auth = checkAuth(raw.auth, `${at}.auth`, p)
  if (override === false) p.add(at, 'the route has no override header or cookie: the load test pins each version through it (set the route\'s "override": {"header": "x-canaryd-version"})')
  const rps = p.num(raw.rps, `${at}.rps`, { gt: 0, max: ANALYSIS_DEFAULTS.maxRps })
  let paths = ['/']
  if (raw.paths !== undefined) {
    if (!Array.isArray(raw.paths) || raw.paths.length === 0 || raw.paths.length > ANALYSIS_DEFAULTS.maxPaths || !raw.paths.every((x) => typeof x === 'string' && x.startsWith('/') && PATH.test(x) && !DOT_SEGMENT.test(x.split(/[?#]/)[0]!))) {
      p.add(`${at}.paths`, `must be 1–${ANALYSIS_DEFAULTS.maxPaths} paths, each starting with "/", without spaces, control characters, backslashes or "." and ".." segments`)
    } else paths = [...raw.paths as string[]]
  }
  let method: 'GET' | 'HEAD' = 'GET'
  if (raw.method !== undefined) {
    // synthetic traffic never writes: a copy of a POST would create real orders
    if (raw.method === 'GET' || raw.method === 'HEAD') method = raw.method
    else p.add(`${at}.method`, `must be "GET" or "HEAD" (synthetic traffic never writes), got ${JSON.stringify(raw.method)}`)
  }
  const headers = checkHeaders(raw.headers, `${at}.headers`, p) ?? {}
  const users = raw.users === undefined ? ANALYSIS_DEFAULTS.loadTestUsers : p.num(raw.users, `${at}.users`, { int: true, min: 1, max: 100_000 })
  let list = ['canary', 'stable']
  if (raw.versions !== undefined) {
    if (!Array.isArray(raw.versions) || raw.versions.length === 0 || !raw.versions.every((v) => typeof v === 'string' && v !== '')) p.add(`${at}.versions`, 'must be a non-empty array of "canary", "stable" or version names')
    else {
      list = [...new Set(raw.versions as string[])]
      for (const v of list) if (v !== 'canary' && v !== 'stable' && versions !== undefined && !versions.includes(v)) p.add(`${at}.versions`, `${JSON.stringify(v)} is not "canary", "stable" or a version of the route (${versions.join(', ')})`)
    }
  }
  let includeInAnalysis = false
  if (raw.includeInAnalysis !== undefined) {
    if (typeof raw.includeInAnalysis !== 'boolean') p.add(`${at}.includeInAnalysis`, `must be true or false, got ${JSON.stringify(raw.includeInAnalysis)}`)
    else includeInAnalysis = raw.includeInAnalysis
  }
  const timeoutMs = raw.timeoutMs === undefined ? ANALYSIS_DEFAULTS.loadTestTimeoutMs : p.num(raw.timeoutMs, `${at}.timeoutMs`, { int: true, min: 100, max: 60_000 })
  if (rps === undefined || users === undefined || timeoutMs === undefined) return undefined
  const spec: LoadTestSpec = { rps, paths, method, headers, users, versions: list, includeInAnalysis, timeoutMs }
  if (auth !== undefined) spec.auth = auth
  return spec
}
