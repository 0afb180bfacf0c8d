import { readFileSync } from 'node:fs'
import { extname, resolve } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from '../errors.js'
import type { RouteSpec } from '../routing/spec.js'
import { validateRoutes } from './routes.js'
import { createConvict, schema } from './schema.js'

/** The validated startup configuration. */
export interface Config {
  listen: { host: string; port: number }
  admin: { host: string; port: number; token: string }
  state: { file: string }
  timeouts: {
    upstreamConnectMs: number
    upstreamResponseMs: number
    upstreamBodyMs: number
    clientHeadersMs: number
    clientIdleMs: number
    clientBodyMs: number
    drainTimeoutMs: number
  }
  upstream: { connections: number; keepAliveMs: number; maxInFlight: number; retries: number; largeBodyBytes: number }
  limits: { maxHeaderBytes: number; maxHeaderCount: number; maxUrlBytes: number; allowTrace: boolean; maxConnections: number; underscoreHeaders: 'drop' | 'reject' | 'allow' }
  health: { consecutiveFailures: number; ejectionMs: number; checkPath: string; checkIntervalMs: number }
  log: { level: string; access: boolean; maxBufferBytes: number }
  routes: RouteSpec[]
  /** Absolute path of the file this came from ('' when built from an object). */
  source: string
}

/** Default config path when neither --config nor CANARYD_CONFIG is given. */
export const DEFAULT_CONFIG_PATH = 'config/default.json'

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

/** Turns convict's multi-line error into one `key: reason` line per problem. */
function convictMessage (err: Error): ConfigError {
  const first = err.message.split('\n').map((l) => l.trim()).filter((l) => l.length > 0)[0] ?? err.message
  const undeclared = /configuration param '([^']+)' not declared in the schema/.exec(first)
  if (undeclared !== null) return new ConfigError(unknownKeyPath(undeclared[1]!), 'unknown key')
  const m = /^([\w.]+): (.*)$/.exec(first)
  if (m !== null) return new ConfigError(m[1]!, m[2]!)
  return new ConfigError('', first)
}

/** Parses a config file's text by extension: .json, .yaml or .yml. */
function parseFile (path: string): unknown {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError('', `cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  const ext = extname(path).toLowerCase()
  try {
    if (ext === '.yaml' || ext === '.yml') return parseYaml(text)
    return JSON.parse(text)
  } catch (err) {
    throw new ConfigError('', `${path} is not valid ${ext === '.yaml' || ext === '.yml' ? 'YAML' : 'JSON'}: ${(err as Error).message.split('\n')[0]}`)
  }
}

/**
 * Builds and validates a config from a plain object (file contents), with
 * environment variables applied on top (ports, addresses, secrets, timeouts).
 * Throws ConfigError with one line naming the key and the reason.
 */
export function configFromObject (raw: unknown, source: string = '', env: NodeJS.ProcessEnv = process.env): Config {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('', 'the config must be a JSON/YAML object')
  const c = createConvict(env)
  try {
    // env vars win over the file: convict re-applies them after load()
    c.load(raw)
    c.validate({ allowed: 'strict' })
  } catch (err) {
    if (err instanceof ConfigError) throw err
    throw convictMessage(err as Error)
  }
  const props = c.getProperties() as Omit<Config, 'routes' | 'source'> & { routes: unknown }
  const routes = validateRoutes(props.routes)
  return { ...props, routes, source }
}

/** Loads, parses and validates a config file (JSON or YAML). */
export function loadConfig (path: string, env: NodeJS.ProcessEnv = process.env): Config {
  const abs = resolve(path)
  return configFromObject(parseFile(abs), abs, env)
}
