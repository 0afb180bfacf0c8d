import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { extname, resolve } from 'node:path'
import { isIP } from 'node:net'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from '../errors.js'
import type { RouteSpec } from '../routing/spec.js'
import { validateRoutes } from './routes.js'
import { createConvict, MAX_MS, schema, type StaticConfig } from './schema.js'
import { availableParallelism } from 'node:os'

/**
 * The validated configuration: the static part (typed from the schema; a
 * restart applies it) plus the dynamic part, `routes` (a reload applies it).
 */
export type Config = StaticConfig & {
  routes: RouteSpec[]
  /** Absolute path of the file this came from ('' when built from an object). */
  source: string
}

/** Parses `--workers N|auto` (or CANARYD_WORKERS): 1 = single process. Throws a TypeError naming the flag. */
export function parseWorkers (raw: string | undefined): number {
  if (raw === undefined || raw === '') return 1
  if (raw === 'auto') return availableParallelism()
  if (!/^[1-9][0-9]{0,3}$/.test(raw)) throw new TypeError(`--workers must be a whole number from 1 or "auto", got ${JSON.stringify(raw)}`)
  return Number(raw)
}

/** Default config path when neither --config nor CANARYD_CONFIG is given. */
export const DEFAULT_CONFIG_PATH = 'config/default.json'

/**
 * The config path: `--config`, else CANARYD_CONFIG, else the default. An
 * empty one is a usage error naming where it came from (as a path, '' would
 * read the current directory and fail with EISDIR).
 */
export function configPath (flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (flag !== undefined) {
    if (flag === '') throw new TypeError('--config is empty; give the path of a JSON or YAML config file')
    return flag
  }
  const fromEnv = env.CANARYD_CONFIG
  if (fromEnv === '') throw new TypeError('CANARYD_CONFIG is set but empty; unset it or give the path of a JSON or YAML config file')
  return fromEnv ?? DEFAULT_CONFIG_PATH
}

/** A schema leaf: its dotted key and its spec (format, default, env var, sensitive). */
export interface SchemaLeaf {
  key: string
  format: unknown
  env?: string
  sensitive?: boolean
}

let leaves: readonly SchemaLeaf[] | undefined

/** Every leaf of the schema but `routes`, in schema order (walked once). */
export function schemaLeaves (): readonly SchemaLeaf[] {
  if (leaves !== undefined) return leaves
  const out: SchemaLeaf[] = []
  const walk = (node: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(node)) {
      if (typeof v !== 'object' || v === null) continue
      if ('default' in v) out.push({ key: `${prefix}${k}`, ...(v as unknown as Omit<SchemaLeaf, 'key'>) })
      else walk(v as Record<string, unknown>, `${prefix}${k}.`)
    }
  }
  walk(schema, '')
  leaves = out.filter((l) => l.key !== 'routes')
  return leaves
}

/**
 * A config value that came from an environment variable and is invalid. The
 * message names the variable first: the file may not even contain the key,
 * so blaming the file would send the operator to the wrong place.
 */
export class EnvConfigError extends ConfigError {
  /** The environment variable, e.g. CANARYD_LISTEN_PORT. */
  readonly variable: string
  constructor (key: string, variable: string, reason: string) {
    super(key, reason)
    this.name = 'EnvConfigError'
    this.variable = variable
    this.message = `environment variable ${variable} (${key}): ${reason}`
  }
}

/**
 * The reason an environment string is not a valid value of `format`, or
 * undefined. Stricter than convict's coercion on purpose: convict reads
 * `80x` as 80, `1.5` as 1 and `0` as true for a Boolean, so a typo in a
 * Deployment would silently become another value.
 */
function envProblem (format: unknown, value: string): string | undefined {
  const got = `got ${JSON.stringify(value)}`
  if (isNumberFormat(format)) {
    // digits only: `80x`, `1.5`, `-1` and `1e3` are not read as numbers
    if (/^\d+$/.test(value)) return numberProblem(format, Number(value), got)
    return format === 'ms' || format === 'positive-ms' ? `must be a whole number of milliseconds, ${got}` : numberProblem(format, Number.NaN, got)
  }
  if (format === Boolean) return value === 'true' || value === 'false' ? undefined : `must be true or false, ${got}`
  if (Array.isArray(format)) return format.includes(value) ? undefined : `must be one of ${format.join(', ')}, ${got}`
  return undefined
}

type NumberFormat = 'port' | 'nat' | 'ms' | 'positive-ms'

function isNumberFormat (format: unknown): format is NumberFormat {
  return format === 'port' || format === 'nat' || format === 'ms' || format === 'positive-ms'
}

/**
 * The reason the number `v` is out of the range of `format`, or undefined:
 * one check for a value from the file and one from the environment.
 */
function numberProblem (format: NumberFormat, v: number, got: string): string | undefined {
  if (format === 'port') return Number.isInteger(v) && v >= 0 && v <= 65535 ? undefined : `must be a port (0–65535), ${got}`
  if (format === 'nat') return Number.isSafeInteger(v) && v >= 0 ? undefined : `must be a whole number >= 0, ${got}`
  const min = format === 'ms' ? 0 : 1
  return Number.isInteger(v) && v >= min && v <= MAX_MS ? undefined : `must be a whole number of milliseconds from ${min} to ${MAX_MS}, ${got}`
}

/**
 * The reason a value from the config file is not of `format`, or undefined.
 * convict would coerce a string (`"no"` → true for a Boolean, `"1e3"` → 1),
 * so a quoted value in YAML would silently become another one; types must
 * match exactly, and numbers must be finite (a huge literal parses as Infinity).
 */
function fileProblem (format: unknown, value: unknown): string | undefined {
  const got = `got ${typeof value === 'number' ? String(value) : JSON.stringify(value)}`
  if (format === Boolean) return typeof value === 'boolean' ? undefined : `must be true or false, ${got}`
  if (format === String) return typeof value === 'string' ? undefined : `must be a string, ${got}`
  if (Array.isArray(format)) return typeof value === 'string' && format.includes(value) ? undefined : `must be one of ${format.join(', ')}, ${got}`
  if (isNumberFormat(format)) {
    if (typeof value !== 'number' || !Number.isFinite(value)) return `must be a number, ${got}`
    return numberProblem(format, value, got)
  }
  return undefined
}

/** Checks the file's sections are objects and its values have their key's type, before convict coerces anything. */
function checkFile (raw: Record<string, unknown>): void {
  const walk = (node: Record<string, unknown>, values: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(values)) {
      const spec = node[k]
      if (typeof spec !== 'object' || spec === null || v === undefined) continue // unknown keys: convict's strict check names them
      const key = `${prefix}${k}`
      if ('default' in spec) {
        const problem = fileProblem((spec as unknown as { format: unknown }).format, v)
        if (problem !== undefined) throw new ConfigError(key, problem)
      } else if (typeof v !== 'object' || v === null || Array.isArray(v)) {
        throw new ConfigError(key, `must be an object (a section of settings), got ${Array.isArray(v) ? 'a list' : JSON.stringify(v)}`)
      } else {
        walk(spec as Record<string, unknown>, v as Record<string, unknown>, `${key}.`)
      }
    }
  }
  walk(schema, raw, '')
}

/** Throws an EnvConfigError for the first schema variable set in `env` to an invalid value. */
function checkEnv (env: NodeJS.ProcessEnv): void {
  for (const leaf of schemaLeaves()) {
    if (leaf.env === undefined) continue
    const value = env[leaf.env]
    if (value === undefined) continue
    // a list from the environment is comma-separated (convict splits it); the lists are of CIDRs
    const problem = leaf.format === Array ? value.split(',').map(cidrProblem).find((p) => p !== undefined) : envProblem(leaf.format, value)
    if (problem !== undefined) throw new EnvConfigError(leaf.key, leaf.env, problem)
  }
}

/** convict names the unknown leaf (`lisen.port`); name the first segment the schema does not know (`lisen`). */
function unknownKeyPath (path: string): string {
  let node: Record<string, unknown> = schema
  const parts = path.split('.')
  for (let i = 0; i < parts.length; i++) {
    const next = node[parts[i]!]
    if (typeof next !== 'object' || next === null || 'default' in next) return parts.slice(0, i + 1).join('.')
    node = next as Record<string, unknown>
  }
  return path
}

/**
 * Turns convict's multi-line error into one `key: reason` line for the first
 * problem; a key whose variable is set in `env` is blamed on the variable.
 */
function convictMessage (err: Error, env: NodeJS.ProcessEnv): ConfigError {
  const first = err.message.split('\n').map((l) => l.trim()).filter((l) => l.length > 0)[0] ?? err.message
  const undeclared = /configuration param '([^']+)' not declared in the schema/.exec(first)
  if (undeclared !== null) return new ConfigError(unknownKeyPath(undeclared[1]!), 'unknown key')
  const m = /^([\w.]+): (.*)$/.exec(first)
  if (m === null) return new ConfigError('', first)
  const variable = schemaLeaves().find((l) => l.key === m[1])?.env
  if (variable !== undefined && env[variable] !== undefined) return new EnvConfigError(m[1]!, variable, m[2]!)
  return new ConfigError(m[1]!, m[2]!)
}

/**
 * A config file that cannot be read or parsed. Its message names the file
 * (as given) once, so the CLI prints it without its usual
 * `invalid config FILE:` prefix; a syntax error adds the line, the column
 * and a snippet with a caret under the column.
 */
export class ConfigFileError extends ConfigError {
  /** The path as given (--config or CANARYD_CONFIG). */
  readonly path: string
  /** 1-based line and column of a syntax error. */
  readonly line: number | undefined
  readonly column: number | undefined
  constructor (path: string, message: string, at?: { line: number; column: number; text: string }) {
    super('', at === undefined ? message : `${message}\n${codeFrame(at.text, at.line, at.column)}`)
    this.name = 'ConfigFileError'
    this.path = path
    this.line = at?.line
    this.column = at?.column
  }
}

/** Widest snippet line shown: a minified one-line JSON file must not flood the terminal. */
const FRAME_WIDTH = 100

/**
 * The line before (for context), the offending line and a caret under
 * `column`, each numbered. Long lines are cut to a window around the column;
 * the caret's padding copies the line's own tabs so it lines up in any terminal.
 */
export function codeFrame (text: string, line: number, column: number): string {
  const lines = text.split(/\r?\n/)
  const numWidth = String(line).length
  const out: string[] = []
  let start = Math.max(0, column - 1 - Math.floor(FRAME_WIDTH / 2))
  const target = lines[line - 1] ?? ''
  if (target.length - start < FRAME_WIDTH) start = Math.max(0, target.length - FRAME_WIDTH)
  const cut = (s: string): string => {
    const part = s.slice(start, start + FRAME_WIDTH)
    return `${start > 0 ? '…' : ''}${part}${s.length > start + FRAME_WIDTH ? '…' : ''}`
  }
  if (line >= 2 && (lines[line - 2] ?? '').trim() !== '') out.push(`  ${String(line - 1).padStart(numWidth)} | ${cut(lines[line - 2]!)}`)
  out.push(`  ${String(line).padStart(numWidth)} | ${cut(target)}`)
  const lead = target.slice(start, Math.max(start, column - 1)).replace(/[^\t]/g, ' ')
  out.push(`  ${' '.repeat(numWidth)} | ${start > 0 ? ' ' : ''}${lead}^`)
  return out.join('\n')
}

/** 1-based line and column of a 0-based offset into `text`. */
function lineColumn (text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, Math.min(offset, text.length))
  const nl = before.lastIndexOf('\n')
  return { line: before.split('\n').length, column: offset - nl }
}

/** Where jsonErrorOffset's scan stopped. */
class JsonScanStop extends Error {
  constructor (readonly at: number) {
    super(`JSON scan stopped at ${at}`)
  }
}

/**
 * The offset of the first character JSON.parse rejects in `text` (a small
 * recursive-descent scan of the JSON grammar), or undefined when the scan
 * finds none. Only used when V8's message gives no position, as for
 * `Unexpected token 'x', "…" is not valid JSON` (a bare word or single quotes).
 */
export function jsonErrorOffset (text: string): number | undefined {
  let i = 0
  const fail = (): never => { throw new JsonScanStop(i) }
  const ws = (): void => { while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++ }
  const str = (): void => {
    i++ // the opening quote
    for (;;) {
      const c = text[i]
      if (c === undefined || c < ' ') fail()
      if (c === '"') { i++; return }
      if (c === '\\') {
        i++
        if (text[i] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail()
          i += 5
        } else if (text[i] !== undefined && '"\\/bfnrt'.includes(text[i]!)) i++
        else fail()
      } else i++
    }
  }
  const NUM = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y
  const value = (): void => {
    ws()
    const c = text[i]
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']'
      i++
      ws()
      if (text[i] === close) { i++; return }
      for (;;) {
        if (c === '{') {
          ws()
          if (text[i] !== '"') fail()
          str()
          ws()
          if (text[i] !== ':') fail()
          i++
        }
        value()
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === close) { i++; return }
        fail()
      }
    }
    if (c === '"') return str()
    NUM.lastIndex = i
    if (NUM.exec(text) !== null) { i = NUM.lastIndex; return }
    for (const lit of ['true', 'false', 'null']) if (text.startsWith(lit, i)) { i += lit.length; return }
    fail()
  }
  try {
    value()
    ws()
    return i < text.length ? i : undefined
  } catch (err) {
    // a RangeError is a nesting deep enough to overflow the stack: no position then
    return err instanceof JsonScanStop ? err.at : undefined
  }
}

/** A YAML syntax error: yaml's reason without its own location and frame, and where. */
function yamlFailure (path: string, text: string, err: Error): ConfigFileError {
  const linePos = (err as Error & { linePos?: Array<{ line: number; col: number }> }).linePos
  const reason = /^([\s\S]*?) at line \d+, column \d+/.exec(err.message)?.[1] ?? err.message.split('\n')[0]!
  const at = linePos?.[0]
  if (at === undefined) return new ConfigFileError(path, `${path} is not valid YAML: ${reason}`)
  return new ConfigFileError(path, `${path} is not valid YAML: line ${at.line}, column ${at.col}: ${reason}`, { text, line: at.line, column: at.col })
}

/** A JSON syntax error: V8's reason without its position, and the line and column computed from it. */
function jsonFailure (path: string, text: string, err: Error): ConfigFileError {
  const msg = err.message.split('\n')[0]!
  let offset: number | undefined
  let reason = msg
  const pos = /^(.*?) in JSON at position (\d+)/.exec(msg)
  if (pos !== null) {
    reason = pos[1]!
    offset = Number(pos[2])
  } else if (/^Unexpected end of JSON input/.test(msg)) {
    reason = 'unexpected end of input'
    offset = text.trimEnd().length
  } else {
    // `Unexpected token 'u', "{"a": undefined}" is not valid JSON`: the quoted text is the file, not a location
    reason = /^(Unexpected token '.+?'), /s.exec(err.message)?.[1] ?? msg
    offset = jsonErrorOffset(text)
  }
  if (offset === undefined) return new ConfigFileError(path, `${path} is not valid JSON: ${reason}`)
  const { line, column } = lineColumn(text, offset)
  return new ConfigFileError(path, `${path} is not valid JSON: line ${line}, column ${column}: ${reason}`, { text, line, column })
}

/** Reads and parses a config file by extension: .json, .yaml or .yml. `shown` is the path as the user gave it. */
function parseFile (path: string, shown: string): unknown {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw unreadable(shown, err)
  }
  return parseText(text, path, shown)
}

function unreadable (shown: string, err: unknown): ConfigFileError {
  return new ConfigFileError(shown, `cannot read config file ${shown}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
}

/**
 * Loads a config file like `loadConfig`, reading it without blocking (a
 * reload runs while the proxy serves).
 */
export async function reloadConfig (path: string, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  const abs = resolve(path)
  let text: string
  try {
    text = await readFile(abs, 'utf8')
  } catch (err) {
    throw unreadable(path, err)
  }
  return configFromObject(parseText(text, abs, path), abs, env)
}

/** Parses a config file's text as YAML (by extension) or JSON, with a code frame on a syntax error. */
function parseText (text: string, path: string, shown: string): unknown {
  // an editor's UTF-8 byte order mark is not part of the document (JSON.parse rejects it)
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)
  const ext = extname(path).toLowerCase()
  if (ext === '.yaml' || ext === '.yml') {
    try {
      return parseYaml(text)
    } catch (err) {
      throw yamlFailure(shown, text, err as Error)
    }
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw jsonFailure(shown, text, err as Error)
  }
}

/**
 * Builds and validates a config from a plain object (file contents), with
 * environment variables applied on top (ports, addresses, secrets, timeouts).
 * Throws ConfigError with one line naming the key and the reason.
 */
export function configFromObject (raw: unknown, source: string = '', env: NodeJS.ProcessEnv = process.env): Config {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('', 'the config must be a JSON/YAML object')
  // before convict, whose coercion would turn some typos into other values (see envProblem, fileProblem)
  checkFile(raw as Record<string, unknown>)
  checkEnv(env)
  const c = createConvict(env)
  try {
    // env vars win over the file: convict re-applies them after load()
    c.load(raw)
    c.validate({ allowed: 'strict' })
  } catch (err) {
    if (err instanceof ConfigError) throw err
    throw convictMessage(err as Error, env)
  }
  const props = c.getProperties() as Omit<Config, 'routes' | 'source'> & { routes: unknown }
  checkListen(props)
  checkStore(props)
  const routes = validateRoutes(props.routes)
  return { ...props, routes, source }
}

/** A listener certificate's files (listen.tls.certFile/keyFile, or one entry of listen.tls.certificates). */
export interface CertificateFiles { certFile: string, keyFile: string }

/**
 * The listener certificates a config names, in SNI order, each with the
 * config key of its entry ('listen.tls' or 'listen.tls.certificates[1]');
 * empty when TLS is off.
 */
export function listenerCertificates (config: Pick<Config, 'listen'>): Array<CertificateFiles & { key: string }> {
  const t = config.listen.tls
  if (t.certFile !== '') return [{ certFile: t.certFile, keyFile: t.keyFile, key: 'listen.tls' }]
  return (t.certificates as CertificateFiles[]).map((c, i) => ({ ...c, key: `listen.tls.certificates[${i}]` }))
}

/**
 * The shape of the listener settings convict cannot check: the two ways of
 * naming certificates, the settings that only make sense with (or without)
 * TLS, and trustedProxies' syntax (cidrProblem). The certificate files
 * are read by the app, which owns the listener.
 */
function checkListen (props: Omit<Config, 'routes' | 'source'>): void {
  const l = props.listen
  const t = l.tls
  if ((t.certFile === '') !== (t.keyFile === '')) throw new ConfigError(t.certFile === '' ? 'listen.tls.certFile' : 'listen.tls.keyFile', 'listen.tls.certFile and listen.tls.keyFile go together: set both or neither')
  if (t.certFile !== '' && t.certificates.length !== 0) throw new ConfigError('listen.tls.certificates', 'use either listen.tls.certFile/keyFile or listen.tls.certificates, not both')
  t.certificates.forEach((c, i) => {
    const at = `listen.tls.certificates[${i}]`
    if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new ConfigError(at, `must be an object { "certFile": …, "keyFile": … }, got ${JSON.stringify(c)}`)
    for (const k of Object.keys(c)) if (k !== 'certFile' && k !== 'keyFile') throw new ConfigError(`${at}.${k}`, 'unknown key (certFile and keyFile only)')
    for (const k of ['certFile', 'keyFile'] as const) {
      const v = (c as Record<string, unknown>)[k]
      if (typeof v !== 'string' || v.length === 0) throw new ConfigError(`${at}.${k}`, `must be a file path, got ${JSON.stringify(v)}`)
    }
  })
  const tls = t.certFile !== '' || t.certificates.length !== 0
  if (l.h2c && tls) throw new ConfigError('listen.h2c', 'cleartext HTTP/2 is for a listener without TLS; with listen.tls, HTTP/2 is offered by ALPN (listen.http2)')
  if (l.redirectPort !== 0) {
    if (!tls) throw new ConfigError('listen.redirectPort', 'the https redirect needs TLS on the proxy listener (listen.tls)')
    if (l.redirectPort === l.port) throw new ConfigError('listen.redirectPort', `must differ from listen.port (${l.port})`)
  }
  props.trustedProxies.forEach((p, i) => {
    const problem = cidrProblem(p)
    if (problem !== undefined) throw new ConfigError(`trustedProxies[${i}]`, problem)
  })
  l.proxyProtocolTrustedIPs.forEach((p, i) => {
    const problem = cidrProblem(p)
    if (problem !== undefined) throw new ConfigError(`listen.proxyProtocolTrustedIPs[${i}]`, problem)
  })
  if (l.proxyProtocolTrustedIPs.length !== 0 && !l.proxyProtocol) throw new ConfigError('listen.proxyProtocolTrustedIPs', 'names who may send PROXY headers: it needs listen.proxyProtocol: true')
}

/**
 * The store settings convict cannot check: a Redis URL the client can use
 * (scheme, host, a numeric db), checked only with `store.type` redis. The
 * password is never echoed in the message.
 */
function checkStore (props: Omit<Config, 'routes' | 'source'>): void {
  const st = props.store
  if (st.type !== 'redis') return
  let u: URL
  try {
    u = new URL(st.url)
  } catch {
    throw new ConfigError('store.url', 'must be a URL like redis://host:6379/0 (rediss:// for TLS) when store.type is redis')
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new ConfigError('store.url', `must start with redis:// or rediss://, got ${u.protocol}//…`)
  if (u.hostname === '') throw new ConfigError('store.url', 'names no host (redis://host:6379/0)')
  const db = u.pathname.replace(/^\//, '')
  if (db !== '' && !/^\d{1,5}$/.test(db)) throw new ConfigError('store.url', `the path is the database number (redis://host:6379/0), got /${db}`)
  if (st.leaseTtlMs < 1000) throw new ConfigError('store.leaseTtlMs', `must be at least 1000 ms (renewed every third of it), got ${st.leaseTtlMs}`)
}

/** The keywords trustedProxies accepts beside CIDRs and addresses (listener/trust.ts expands them). */
const PROXY_KEYWORDS = new Set(['loopback', 'private', 'linklocal'])

/**
 * Why `v` is not a trustedProxies entry (a keyword, an address, or a CIDR
 * with a prefix length the family allows), or undefined. The syntax only:
 * the listener compiles the list (and would refuse the same entries).
 */
export function cidrProblem (v: unknown): string | undefined {
  const got = `got ${JSON.stringify(v)}`
  if (typeof v !== 'string') return `must be a CIDR, an address or one of ${[...PROXY_KEYWORDS].join(', ')}, ${got}`
  const s = v.trim()
  if (PROXY_KEYWORDS.has(s)) return undefined
  const slash = s.indexOf('/')
  const family = isIP(slash === -1 ? s : s.slice(0, slash))
  if (family === 0) return `must be a CIDR, an address or one of ${[...PROXY_KEYWORDS].join(', ')}, ${got}`
  if (slash === -1) return undefined
  const bits = s.slice(slash + 1)
  const max = family === 4 ? 32 : 128
  return /^\d{1,3}$/.test(bits) && Number(bits) <= max ? undefined : `the prefix length must be 0–${max}, ${got}`
}

/**
 * Loads, parses and validates a config file (JSON or YAML). A file that
 * cannot be read or parsed throws a ConfigFileError naming `path` as given;
 * a bad value from an environment variable throws an EnvConfigError.
 */
export function loadConfig (path: string, env: NodeJS.ProcessEnv = process.env): Config {
  const abs = resolve(path)
  return configFromObject(parseFile(abs, path), abs, env)
}

/** A value at a dotted key of a config ('listen.port'). */
function valueAt (c: unknown, key: string): unknown {
  let v = c
  for (const part of key.split('.')) v = (v as Record<string, unknown> | undefined)?.[part]
  return v
}

/** The keys naming the listener's certificate files: reloaded in place (the TLS settings around them are not). */
const CERT_KEYS = new Set(['listen.tls.certFile', 'listen.tls.keyFile', 'listen.tls.certificates'])

/**
 * The static keys whose values differ between the running config and a
 * reloaded one: a reload applies the routes (and the listener's
 * certificates, while TLS stays on) and reports these as needing a restart
 * (schema order).
 */
export function restartRequired (running: Config, next: Config): string[] {
  // certificates reload in place while TLS stays on; turning TLS on or off changes the listener itself
  const certsReload = listenerCertificates(running).length !== 0 && listenerCertificates(next).length !== 0
  return schemaLeaves()
    .filter((l) => !(certsReload && CERT_KEYS.has(l.key)))
    .filter((l) => JSON.stringify(valueAt(running, l.key)) !== JSON.stringify(valueAt(next, l.key)))
    .map((l) => l.key)
}

/** The listeners canaryd opens: the proxy (listen.*), its https redirect (listen.redirectPort) and the admin server (admin.*). */
export type Listener = 'proxy' | 'redirect' | 'admin'

/** What a failed listen() means, and which of the listener's keys (host or port) to change. */
const LISTEN_FAILURES: Record<string, { key: 'host' | 'port'; reason: string }> = {
  EADDRINUSE: { key: 'port', reason: 'address already in use' },
  EACCES: { key: 'port', reason: 'permission denied' },
  EADDRNOTAVAIL: { key: 'host', reason: 'address not available on this machine' },
  EAFNOSUPPORT: { key: 'host', reason: 'address family not supported' },
  ENOTFOUND: { key: 'host', reason: 'host name not found' },
  EAI_AGAIN: { key: 'host', reason: 'host name lookup failed (temporary)' },
  EAI_FAIL: { key: 'host', reason: 'host name lookup failed' }
}

/**
 * Wraps a listen() failure of the proxy or the admin server into an Error
 * whose one-line message says which listener failed and which key (and
 * environment variable) sets what to change:
 * `cannot listen on 127.0.0.1:8080 (proxy: listen.port / CANARYD_LISTEN_PORT): address already in use`.
 * The errno `code`, `listener` and the original error (`cause`) are kept.
 * Anything but a socket error (no errno code) is returned unchanged.
 */
export function listenError (err: unknown, listener: Listener, host: string, port: number): unknown {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number }
  // errno codes only (EADDRINUSE, EAI_AGAIN): not Node's ERR_… nor canaryd's CANARYD_ERR_…
  if (typeof e?.code !== 'string' || !/^E[A-Z0-9_]+$/.test(e.code) || e.code.startsWith('ERR_')) return err
  const known = LISTEN_FAILURES[e.code]
  const section = listener === 'admin' ? 'admin' : 'listen'
  const leaves = schemaLeaves()
  const name = (k: 'host' | 'port'): string => {
    const key = listener === 'redirect' && k === 'port' ? 'listen.redirectPort' : `${section}.${k}`
    return `${key} / ${leaves.find((l) => l.key === key)?.env ?? '?'}`
  }
  const keys = known === undefined ? `${name('host')}, ${name('port')}` : name(known.key)
  let reason = known?.reason ?? `${e.code} (${e.message})`
  const p = e.port ?? port
  if (e.code === 'EACCES' && p > 0 && p < 1024) reason += ': ports below 1024 need root or CAP_NET_BIND_SERVICE'
  const h = e.address ?? host
  const where = `${h.includes(':') ? `[${h}]` : h}:${p}`
  return Object.assign(new Error(`cannot listen on ${where} (${listener}: ${keys}): ${reason}`, { cause: err }), { code: e.code, listener })
}
