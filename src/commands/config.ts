/**
 * `canaryd validate` and `canaryd config print`: the start-up checks of
 * `serve` without starting anything, and the effective config (file plus
 * environment) with its secrets masked. Both read the config the way `serve`
 * does (--config, else CANARYD_CONFIG, else the default path) and print the
 * same one-line errors, from `configErrorLine`.
 */
import { checkUpstreamTls, loadListenerCertificates, proxySenders, trustedProxies } from '../app.js'
import { parseArgs } from 'node:util'
import { stringify as stringifyYaml } from 'yaml'
import { checkAdminBinding } from '../admin/server.js'
import { ConfigFileError, configPath, DEFAULT_CONFIG_PATH, parseWorkers, EnvConfigError, listenerCertificates, loadConfig, schemaLeaves, type Config } from '../config/load.js'
import { CanarydError, ConfigError } from '../errors.js'
import { resolveLogLevel } from '../logger.js'
import { checkStateDir } from '../store/file.js'

/** Usage of `validate` and `config print`. */
export const CONFIG_USAGE = `Usage:
  canaryd validate [--config FILE]            check the config, the environment and the state directory
  canaryd config print [--config FILE] [--yaml]
                                              the effective config (file + environment), secrets masked
FILE also comes from CANARYD_CONFIG (default ${DEFAULT_CONFIG_PATH}).
`

/** What a masked secret is printed as. */
export const MASK = '********'

/**
 * The line `serve` (and `validate`, `config print`) prints for a config
 * problem, without the `canaryd: ` prefix; undefined for any other error.
 * A file that cannot be read or parsed names itself; a bad environment
 * variable names the variable, not the file (the file may not even have the
 * key); every other problem is `invalid config FILE: key: reason`.
 */
export function configErrorLine (path: string, err: unknown): string | undefined {
  if (err instanceof ConfigFileError) return err.message
  if (err instanceof EnvConfigError) return `invalid ${err.message}`
  // a variable outside the schema (LOG_LEVEL) already names itself: `LOG_LEVEL: "verbose" is not a log level…`
  if (err instanceof ConfigError && /^[A-Z][A-Z0-9_]*$/.test(err.key)) return err.message
  if (err instanceof CanarydError && err.code === 'CANARYD_ERR_CONFIG_INVALID') return `invalid config ${path}: ${err.message}`
  return undefined
}

/**
 * Every check `serve` makes before it opens a socket, in the same order:
 * the config (file and environment), the state directory (created when
 * missing, as `serve` does, and probed with a real write), the log level
 * (LOG_LEVEL wins over log.level) and the admin binding (no token on a
 * non-loopback host is refused). Throws the error `serve` would stop on.
 */
export async function checkServeConfig (path: string, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  const config = loadConfig(path, env)
  try {
    parseWorkers(env.CANARYD_WORKERS)
  } catch (err) {
    throw new EnvConfigError('--workers', 'CANARYD_WORKERS', (err as Error).message.replace(/^--workers /, ''))
  }
  checkStateDir(config.state.file, env)
  resolveLogLevel(config.log.level, env)
  checkAdminBinding(config.admin.host, config.admin.token)
  // TLS files are read now, so a missing CA or a key that does not match its certificate is one line naming the key
  checkUpstreamTls(config)
  // the listener's certificates (files, key match, what OpenSSL accepts) and trustedProxies' CIDRs
  trustedProxies(config)
  proxySenders(config)
  await loadListenerCertificates(config)
  return config
}

/** `host:port`, with an IPv6 host in brackets. */
function hostPort (host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`
}

function plural (n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

/** The one `ok` line of `validate`: what the config defines and where canaryd would listen and keep its state. */
export function summarize (path: string, config: Config): string {
  const versions = config.routes.reduce((n, r) => n + r.versions.length, 0)
  const rollouts = config.routes.filter((r) => r.rollout !== undefined).length
  const state = config.state.file === '' ? 'in memory only (state.file "")' : `state file ${config.state.file}`
  return `ok ${path}: ${plural(config.routes.length, 'route')} (${config.routes.map((r) => r.name).join(', ')}), ${plural(versions, 'version')}, ` +
    `${plural(rollouts, 'rollout plan')}; proxy ${hostPort(config.listen.host, config.listen.port)}${listenExtras(config)}, admin ${hostPort(config.admin.host, config.admin.port)}` +
    `${config.admin.token === '' ? '' : ' (token set)'}; ${state}`
}

/** What the proxy listener speaks beyond plain HTTP/1.1, for the `validate` line ('' when nothing). */
function listenExtras (config: Config): string {
  const l = config.listen
  const certs = listenerCertificates(config).length
  const parts: string[] = []
  if (certs !== 0) parts.push(`TLS ${plural(certs, 'certificate')}${l.http2 ? ' + h2' : ''}`)
  if (l.h2c) parts.push('h2c')
  if (l.redirectPort !== 0) parts.push(`redirect from ${l.redirectPort}`)
  if (l.proxyProtocol) parts.push('PROXY protocol')
  return parts.length === 0 ? '' : ` (${parts.join(', ')})`
}

/** A webhook URL without its path and query, which often hold the secret (a Slack hook's does). */
function maskUrl (url: unknown): unknown {
  if (typeof url !== 'string') return url
  try {
    const u = new URL(url)
    return u.pathname === '/' && u.search === '' ? url : `${u.origin}/${MASK}`
  } catch {
    return MASK
  }
}

/**
 * The effective config as a plain object, ready to print: the schema's keys
 * in schema order, then the normalised routes. Every schema key marked
 * `sensitive` (admin.token among them) is MASK when set, and the path and
 * query of rollout webhook URLs are masked. Loading the printed config gives
 * the same config (the masked values aside).
 */
export function printableConfig (config: Config): Record<string, unknown> {
  const { source: _source, ...rest } = config
  const out = structuredClone(rest) as unknown as Record<string, unknown>
  const sensitive = new Set(schemaLeaves().filter((l) => l.sensitive === true).map((l) => l.key))
  sensitive.add('admin.token') // a secret even if the schema ever lost its flag
  for (const key of sensitive) {
    const parts = key.split('.')
    const parent = parts.slice(0, -1).reduce<Record<string, unknown> | undefined>((o, k) => o?.[k] as Record<string, unknown> | undefined, out)
    const leaf = parts.at(-1)!
    if (parent !== undefined && parent[leaf] !== '' && parent[leaf] !== undefined) parent[leaf] = MASK
  }
  // the Redis URL stays a URL (host and db are worth seeing), its credentials do not
  const store = out.store as { url: string }
  store.url = maskCredentials(store.url)
  for (const r of out.routes as Array<{ rollout?: { webhooks?: Array<{ url: unknown }> } }>) {
    for (const w of r.rollout?.webhooks ?? []) w.url = maskUrl(w.url)
  }
  return out
}

/** A URL with its user name and password masked (redis://:MASK@host:6379/0); anything else unchanged. */
function maskCredentials (url: string): string {
  try {
    const u = new URL(url)
    if (u.password === '' && u.username === '') return url
    if (u.password !== '') u.password = MASK
    if (u.username !== '') u.username = MASK
    return u.toString()
  } catch {
    return url
  }
}

/** A usage error: the message, the usage, exit code 2. */
function usage (message: string): void {
  process.stderr.write(`canaryd: ${message}\n${CONFIG_USAGE}`)
  process.exitCode = 2
}

/** Prints a config problem as `serve` would and sets exit code 1; rethrows anything else. */
function failConfig (path: string, err: unknown): void {
  const line = configErrorLine(path, err)
  if (line === undefined) throw err
  process.stderr.write(`canaryd: ${line}\n`)
  process.exitCode = 1
}

/**
 * `canaryd validate [--config FILE]` (cmd 'validate') and
 * `canaryd config print [--config FILE] [--yaml]` (cmd 'config'):
 * exit 0 when the config is good, 1 with serve's message when it is not,
 * 2 on a usage error.
 */
export async function runConfig (cmd: 'validate' | 'config', argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  let values: { config?: string | undefined; yaml?: boolean | undefined; help?: boolean | undefined }
  let positionals: string[]
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: { config: { type: 'string', short: 'c' }, yaml: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }
    }))
  } catch (err) {
    return usage((err as Error).message)
  }
  if (values.help === true) {
    process.stdout.write(CONFIG_USAGE)
    return
  }
  const sub = cmd === 'config' ? positionals.shift() : undefined
  if (cmd === 'config' && sub !== 'print') return usage(sub === undefined ? 'config needs a subcommand: print' : `unknown config subcommand "${sub}"`)
  if (positionals.length > 0) return usage(`unexpected argument "${positionals[0]}"`)
  if (cmd === 'validate' && values.yaml === true) return usage('--yaml is an option of config print')
  let path: string
  try {
    path = configPath(values.config, env)
  } catch (err) {
    return usage((err as Error).message)
  }
  if (cmd === 'validate') {
    let config: Config
    try {
      config = await checkServeConfig(path, env)
    } catch (err) {
      return failConfig(path, err)
    }
    process.stdout.write(`${summarize(path, config)}\n`)
    return
  }
  let config: Config
  try {
    config = loadConfig(path, env)
  } catch (err) {
    return failConfig(path, err)
  }
  const printable = printableConfig(config)
  process.stdout.write(values.yaml === true ? stringifyYaml(printable) : `${JSON.stringify(printable, null, 2)}\n`)
}
