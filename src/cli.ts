#!/usr/bin/env node
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { watchConfig } from './config/watch.js'
import { App } from './app.js'
import { configPath, DEFAULT_CONFIG_PATH, listenerCertificates, parseWorkers, type Config } from './config/load.js'
import { CanarydError, ConfigError } from './errors.js'
import { createLogger, flushLogs, type Logger } from './logger.js'
import { checkServeConfig, configErrorLine, runConfig } from './commands/config.js'

const HELP = `canaryd — a reverse proxy for canary releases

Usage:
  canaryd serve [--config FILE] [--workers N|auto] [--watch]
                                        run the proxy (FILE also from CANARYD_CONFIG; default
                                        ${DEFAULT_CONFIG_PATH}; JSON or YAML); --workers (or
                                        CANARYD_WORKERS): N node:cluster workers serve traffic,
                                        the primary keeps the admin API, state and rollouts;
                                        SIGHUP (and with --watch, a change of FILE or of a listener
                                        certificate file) reloads the routes and certificates
  canaryd validate [--config FILE]      check the config, the environment and the state directory
                                        as serve would, without starting; exit 0 (one ok line) or 1
  canaryd config print [--config FILE] [--yaml]
                                        the effective config (file + environment) as JSON (or
                                        YAML), secrets masked
  canaryd weights ROUTE VERSION=PERCENT... [--reason TEXT] [--admin URL] [--token T] [--json]
                                        change a route's weights live (e.g. stable=80 canary=20);
                                        validated, persisted and audited by the admin server
  canaryd status [ROUTE] [--admin URL] [--token T] [--json]
                                        routes, versions, weights, upstreams, rollout state
  canaryd versions set ROUTE VERSION --upstream URL[,URL...] [--reason TEXT] [--admin URL] [--token T] [--json]
                                        point a version at new endpoints live (persisted, audited)
  canaryd versions get ROUTE [VERSION] [--admin URL] [--token T] [--json]
                                        a route's versions and their upstreams
  canaryd reload [--admin URL] [--token T] [--json]
                                        re-read the config file and apply its routes (as SIGHUP)
  canaryd rollout start ROUTE [--plan FILE] [--canary NAME] [--from-start]
                        [--canary-upstream URL[,URL]] [--admin URL] [--token T]
                                        start a progressive rollout (plan: JSON/YAML, docs/rollouts.md;
                                        --canary NAME sets the plan's canary version; a canary that
                                        already has weight starts at the first step >= it unless
                                        --from-start; --canary-upstream points the canary at the new
                                        build in the same change, only while its weight is 0)
  canaryd segments ROUTE [--set FILE|-] [--reason TEXT] [--admin URL] [--token T] [--json]
                                        show or replace a route's segments (docs/release.md)
  canaryd rollout status|pause|resume|promote|abort ROUTE [--admin URL] [--token T] [--json]
                                        show or steer the route's rollout
  canaryd top [--admin URL] [--token T] [--interval MS] [--once]
                                        live view per route and version: req/s, error %,
                                        p50/p99, in-flight, weight (from the admin /metrics)
  canaryd demo [--once] [--no-story]    demo: stable + canary on loopback, proxy at 90/10,
                                        1,000 simulated users; then the story (about a minute):
                                        a healthy build rolled out 1 → 10 → 50 → 100 and promoted,
                                        a build failing 8% rolled back by the judge, as a timeline;
                                        --no-story skips it, --once exits at the end
  canaryd --help | -h                   this help
  canaryd --version | -v                the version

Environment:
  CANARYD_CONFIG        config file path (serve, validate, config print)
  LOG_LEVEL             log level (fatal, error, warn, info, debug, trace, silent)
  CANARYD_ADMIN_URL     admin URL for weights/status/versions/segments/reload/rollout/top (default http://127.0.0.1:9901)
  CANARYD_LISTEN_PORT, CANARYD_ADMIN_PORT, CANARYD_ADMIN_TOKEN, …  see docs/configuration.md
`

/** The package version, read from package.json next to dist/. */
export function version (): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}

function fail (message: string, code = 2): never {
  process.stderr.write(`canaryd: ${message}\n`)
  process.exit(code)
}

async function serve (argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, workers: { type: 'string', short: 'w' }, watch: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true })
  if (values.help === true) {
    process.stdout.write(HELP)
    return
  }
  let path: string
  let workers: number
  try {
    path = configPath(values.config)
    workers = parseWorkers(values.workers ?? process.env.CANARYD_WORKERS)
  } catch (err) {
    fail((err as Error).message)
  }
  let config
  try {
    // config, state directory (a state file that cannot be written would only fail at the
    // first weight change), log level and admin binding: the same checks as `canaryd validate`
    config = await checkServeConfig(path)
  } catch (err) {
    const line = configErrorLine(path, err)
    if (line !== undefined) fail(line, 1)
    throw err
  }
  if (workers > 1) return await serveCluster(config, workers, values.watch === true)
  const app = new App(config)
  try {
    await app.start()
  } catch (err) {
    fail((err as Error).message, 1)
  }
  onReloadSignals(app.logger, config, app.reload, values.watch === true)
  onStopSignals(app.logger, () => ({ inFlight: app.proxy.inFlight, drainMs: config.timeouts.drainTimeoutMs }), async () => {
    const clean = await app.close()
    app.logger.info({ clean }, 'stopped')
  }, () => {})
}

/** `serve --workers N`: the primary runs the control plane, N workers serve traffic. */
async function serveCluster (config: Config, workers: number, watch: boolean): Promise<void> {
  const { ClusterPrimary } = await import('./cluster/primary.js')
  const logger = createLogger(config.log.level, undefined, { maxBufferBytes: config.log.maxBufferBytes })
  const primary = new ClusterPrimary({ config, workers, logger })
  try {
    await primary.start()
  } catch (err) {
    primary.kill()
    fail((err as Error).message, 1)
  }
  onReloadSignals(logger, config, primary.control.reload, watch)
  onStopSignals(logger, () => ({ workers: primary.workerPids.length, drainMs: config.timeouts.drainTimeoutMs }), async () => {
    await primary.stop()
    logger.info('stopped')
  }, () => { primary.kill() })
}

/**
 * SIGHUP (as nginx and HAProxy) and, with `--watch`, a change of the config
 * file or of a listener certificate or key file (those named at start: a
 * renewal rewrites them in place, as cert-manager does) reload the routes
 * and certificates. Changes to several files within a moment are one
 * reload. The outcome is logged by the reload itself (one line naming the
 * key when a file is invalid); nothing here can stop the process.
 */
function onReloadSignals (logger: Logger, config: Config, reload: (address?: string | null) => Promise<unknown>, watch: boolean): void {
  const source = config.source
  const run = (why: string): void => {
    logger.info({ trigger: why, config: source }, 'reloading the config')
    reload(null).catch((err: unknown) => {
      // an invalid file was logged by the reload; anything else is unexpected
      if (!(err instanceof ConfigError)) logger.error({ err }, 'reload failed')
    })
  }
  process.on('SIGHUP', () => { run('SIGHUP') })
  if (!watch) return
  let soon: NodeJS.Timeout | undefined
  const changed = (): void => {
    if (soon !== undefined) clearTimeout(soon)
    soon = setTimeout(() => { run('file changed') }, WATCH_COALESCE_MS)
    soon.unref()
  }
  const files = new Set([source, ...listenerCertificates(config).flatMap((c) => [resolve(c.certFile), resolve(c.keyFile)])])
  for (const f of files) watchConfig(f, changed)
}

/** Changes of several watched files closer than this are one reload (a certificate and its key land together). */
const WATCH_COALESCE_MS = 1500

/** How long shutdown waits for stdout to take the buffered log lines. */
const LOG_FLUSH_MS = 1000

/**
 * SIGTERM/SIGINT: drain (readiness 503, in-flight requests finish up to
 * timeouts.drainTimeoutMs), give stdout at most LOG_FLUSH_MS to take the
 * buffered log lines, then exit 0; a second signal exits at once. The log
 * sink never decides whether canaryd stops: a closed or stalled stdout only
 * loses lines.
 */
function onStopSignals (logger: Logger, describe: () => Record<string, unknown>, stop: () => Promise<void>, kill: () => void): void {
  let signals = 0
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++
    if (signals > 1) {
      logger.warn({ signal: sig }, 'second signal: exiting now')
      kill()
      process.exit(1)
    }
    logger.info({ signal: sig, ...describe() }, 'draining')
    void stop().then(() => 0, (err: unknown) => {
      logger.error({ err }, 'error while stopping')
      return 1
    }).then(async (code) => {
      await flushLogs(LOG_FLUSH_MS) // bounded and asynchronous: never a synchronous flush that could hang
      process.exit(code)
    })
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
}

async function main (argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv
  // a reader that stops early (`canaryd status | head -1`, `top | less` quit) is
  // not an error of ours: exit quietly instead of an unhandled EPIPE stack.
  // serve never exits for it: its log sink drops lines instead (src/logger.ts)
  if (cmd !== 'serve') {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0)
    })
  }
  switch (cmd) {
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(HELP)
      return
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(`${version()}\n`)
      return
    case 'serve':
      return await serve(rest)
    case 'validate':
    case 'config':
      return await runConfig(cmd, rest)
    case 'weights':
    case 'status':
    case 'versions':
    case 'reload': {
      const { runClient } = await import('./commands/client.js')
      return await runClient(cmd, rest)
    }
    case 'top': {
      const { runTop } = await import('./commands/top.js')
      return await runTop(rest)
    }
    case 'rollout': {
      const { runRollout } = await import('./commands/rollout.js')
      return await runRollout(rest)
    }
    case 'segments': {
      const { runSegments } = await import('./commands/segments.js')
      return await runSegments(rest)
    }
    case 'demo': {
      const { runDemo } = await import('./demo.js')
      // --no-story is its own flag: parseArgs of Node 20 has no negated options
      const { values } = parseArgs({ args: rest, options: { once: { type: 'boolean' }, 'no-story': { type: 'boolean' } }, strict: true })
      await runDemo({ once: values.once ?? false, story: values['no-story'] !== true })
      return
    }
    default:
      fail(`unknown command "${cmd}"; see canaryd --help`)
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS') === true) fail(err.message)
  // e.g. LOG_LEVEL=verbose, found when the logger is created: one line, as config errors are
  if (err instanceof CanarydError && err.code === 'CANARYD_ERR_CONFIG_INVALID') fail(err.message, 1)
  process.stderr.write(`canaryd: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
