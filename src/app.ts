import type { AddressInfo } from 'node:net'
import { isAbsolute } from 'node:path'
import { registerReloadRoute, registerVersionRoutes, type ReloadResult } from './admin/config-routes.js'
import { registerRolloutRoutes } from './admin/rollout-routes.js'
import { AdminServer, type MetricsSource } from './admin/server.js'
import { listenError, reloadConfig, restartRequired, type Config } from './config/load.js'
import { CanarydError, ConfigError } from './errors.js'
import { createLogger, droppedLogLines, type Logger } from './logger.js'
import { NOOP_OBSERVERS } from './metrics/observer.js'
import { METRIC_NAMES, PrometheusMetrics } from './metrics/prometheus.js'
import { ProxyServer } from './proxy/server.js'
import type { SubscribeFinish } from './rollout/controller.js'
import { RolloutManager } from './rollout/manager.js'
import { RolloutMetrics } from './rollout/metrics.js'
import { WebhookNotifier } from './rollout/webhooks.js'
import type { TableHolder } from './routing/holder.js'
import { RuntimeStore } from './state/store.js'
import type { RouteSpec } from './routing/spec.js'
import { Upstreams } from './upstream/pools.js'
import { loadTls, mergeTls, type UpstreamTls } from './upstream/tls.js'

/** Options of a running instance beyond the config file. */
export interface AppOptions {
  logger?: Logger
  /** Prometheus metrics on (default) or off (benchmarks compare both). */
  metrics?: boolean
}

/** The hot path of one process: upstream pools, per-version metrics and the proxy listener. */
export interface DataPlane {
  upstreams: Upstreams
  metrics: PrometheusMetrics | undefined
  proxy: ProxyServer
}

/**
 * Builds the data plane around a table holder. Used by the single-process
 * App and by every cluster worker, so both serve with exactly the same
 * options.
 */
export function createDataPlane (config: Config, holder: TableHolder, logger: Logger, metricsOn: boolean): DataPlane {
  const t = config.timeouts
  const upstreams = new Upstreams({
    connectTimeoutMs: t.upstreamConnectMs,
    responseTimeoutMs: t.upstreamResponseMs,
    bodyTimeoutMs: t.upstreamBodyMs,
    connections: config.upstream.connections,
    keepAliveMs: config.upstream.keepAliveMs,
    maxInFlight: config.upstream.maxInFlight,
    tls: staticTls(config),
    dnsRefreshMs: config.upstream.dnsRefreshMs,
    dnsServers: dnsServers(config),
    log: logger.child({ component: 'upstream' })
  })
  const metrics = metricsOn ? new PrometheusMetrics() : undefined
  const proxy = new ProxyServer({
    holder,
    upstreams,
    observers: metrics ?? NOOP_OBSERVERS,
    logger,
    clientHeadersMs: t.clientHeadersMs,
    clientIdleMs: t.clientIdleMs,
    clientBodyMs: t.clientBodyMs,
    accessLog: config.log.access,
    maxHeaderSize: config.limits.maxHeaderBytes,
    maxHeaderCount: config.limits.maxHeaderCount,
    maxUrlBytes: config.limits.maxUrlBytes,
    allowTrace: config.limits.allowTrace,
    maxConnections: config.limits.maxConnections,
    underscoreHeaders: config.limits.underscoreHeaders,
    retries: config.upstream.retries,
    largeBodyBytes: config.upstream.largeBodyBytes,
    outlier: { consecutiveFailures: config.health.consecutiveFailures, ejectionMs: config.health.ejectionMs },
    checkPath: config.health.checkPath,
    checkIntervalMs: config.health.checkIntervalMs
  })
  if (metrics !== undefined) {
    metrics.addReadout(METRIC_NAMES.connectionsOpen, 'Client connections open on the proxy listener now.', 'gauge', () => proxy.connections)
    metrics.addReadout(METRIC_NAMES.connectionsRejected, 'Client connections closed at once because limits.maxConnections were already open.', 'counter', () => proxy.rejectedConnections)
    // max across cluster workers: each holds the same endpoints and judges their health itself
    metrics.addLabelledReadout(METRIC_NAMES.endpoints, 'Endpoints of each version by state: healthy (taking requests) or ejected (outlier detection or the active health check).', 'gauge',
      () => proxy.endpointStates().flatMap((e) => [
        { labels: { route: e.route, version: e.version, state: 'healthy' }, value: e.healthy },
        { labels: { route: e.route, version: e.version, state: 'ejected' }, value: e.ejected }
      ]), 'max')
    addLogReadout(metrics)
  }
  return { upstreams, metrics, proxy }
}

/** The static `upstream.tls` as TLS settings ('' = unset), or undefined when none is set. */
export function staticTls (config: Config): UpstreamTls | undefined {
  const t = config.upstream.tls
  const out: UpstreamTls = {}
  if (t.ca !== '') out.ca = t.ca
  if (t.servername !== '') out.servername = t.servername
  if (t.cert !== '') out.cert = t.cert
  if (t.key !== '') out.key = t.key
  if (t.insecureSkipVerify) out.insecureSkipVerify = true
  return Object.keys(out).length === 0 ? undefined : out
}

/** `upstream.dnsServers` as a list ('' = none: the system resolver). */
export function dnsServers (config: Config): string[] {
  return config.upstream.dnsServers.split(',').map((x) => x.trim()).filter((x) => x.length !== 0)
}

/**
 * Checks the upstream TLS files of a config (static `upstream.tls` and each
 * version's own `tls` over it): readable, PEM that parses, cert and key
 * matching. Throws a ConfigError naming the key. Run by `serve` and
 * `validate` before anything starts, and by every reload.
 */
export function checkUpstreamTls (config: Config): void {
  const defaults = staticTls(config)
  const load = (tls: UpstreamTls, at: string): void => {
    try {
      loadTls(tls, at)
    } catch (err) {
      throw new ConfigError('', (err as Error).message)
    }
  }
  if (defaults !== undefined) load(defaults, 'upstream.tls')
  config.routes.forEach((r, i) => r.versions.forEach((v, j) => {
    const merged = v.tls === undefined ? undefined : mergeTls(defaults, v.tls)
    if (merged !== undefined) load(merged, `routes[${i}].versions[${j}].tls`)
  }))
}

/** Logs, at warn, every place where upstream certificates are not verified (at start and after a reload). */
export function warnInsecure (logger: Logger, config: Config): void {
  const where: string[] = []
  if (config.upstream.tls.insecureSkipVerify) where.push('upstream.tls')
  for (const r of config.routes) for (const v of r.versions) if (v.tls?.insecureSkipVerify === true) where.push(`route ${r.name} version ${v.name}`)
  for (const w of where) logger.warn({ where: w }, 'upstream TLS: insecureSkipVerify is on, certificates are not verified (testing only)')
}

/** Exposes this process's dropped log lines (stdout closed or stalled) on `metrics`. */
export function addLogReadout (metrics: PrometheusMetrics): void {
  metrics.addReadout(METRIC_NAMES.logDropped, 'Log lines dropped because stdout was closed or more than log.maxBufferBytes were waiting (the proxy never blocks on its log).', 'counter', droppedLogLines)
}

/** The control plane: runtime state, the admin server and the rollouts. */
export interface ControlPlane {
  state: RuntimeStore
  admin: AdminServer
  rollouts: RolloutManager
  /**
   * Re-reads the config file and applies its routes (SIGHUP, POST
   * /api/v1/reload, serve --watch). Throws the ConfigError naming the key
   * (the file is invalid: nothing changed, logged; the admin API answers it
   * as CANARYD_ERR_CONFIG_RELOAD) or CANARYD_ERR_RELOAD_UNAVAILABLE (no file).
   */
  reload: (address?: string | null) => Promise<ReloadResult>
}

/** What the control plane needs from wherever the traffic is served (this process, or the cluster's workers). */
export interface ControlPlaneSources {
  /** The exposition served at /metrics (undefined: metrics off → 404). */
  metrics: MetricsSource | undefined
  /** Registry the rollout metrics register on (undefined: none). */
  registry: PrometheusMetrics['registry'] | undefined
  /** Finished-request samples per (route, version), for the rollout windows. */
  subscribe: SubscribeFinish | undefined
  /** Outlier-detection ejections per (route, version): a canary ejection fails a rollout check. */
  subscribeEjection?: (route: string, version: string, listener: () => void) => () => void
  /** True while the instance serves traffic. */
  isReady: () => boolean
}

/**
 * Builds the control plane around a store. In a single process the sources
 * are the local data plane; in cluster mode the primary aggregates them from
 * the workers.
 */
export function createControlPlane (config: Config, logger: Logger, state: RuntimeStore, src: ControlPlaneSources): ControlPlane {
  const admin = new AdminServer({
    store: state,
    logger,
    host: config.admin.host,
    port: config.admin.port,
    token: config.admin.token,
    metrics: src.metrics,
    isReady: src.isReady
  })
  const rollouts = new RolloutManager({
    store: state,
    logger: logger.child({ component: 'rollout' }),
    notifier: new WebhookNotifier({ logger }),
    observer: src.registry === undefined ? undefined : new RolloutMetrics(src.registry, state.routeNames),
    // without metrics there are no finish listeners: checks stay inconclusive (said in the README)
    subscribe: src.subscribe,
    subscribeEjection: src.subscribeEjection
  })
  registerRolloutRoutes(admin, rollouts)
  registerVersionRoutes(admin, state)
  const reload = reloader(config, logger, state, rollouts)
  registerReloadRoute(admin, reload)
  // a restart resumes rollouts at their step (and keeps finished ones finished)
  rollouts.restore()
  return { state, admin, rollouts, reload }
}

/**
 * The reload of one instance: read the file again (without blocking),
 * validate all of it (schema, routes, TLS files), report static keys that
 * changed (they need a restart and are not applied), and hand the routes to
 * the store, which applies them in one swap. Reloads run one at a time.
 */
function reloader (config: Config, logger: Logger, state: RuntimeStore, rollouts: RolloutManager): ControlPlane['reload'] {
  let queue: Promise<unknown> = Promise.resolve()
  const once = async (address: string | null): Promise<ReloadResult> => {
    // source is the file's absolute path; built from an object it is '' or a label
    if (!isAbsolute(config.source)) throw new CanarydError('CANARYD_ERR_RELOAD_UNAVAILABLE', 'this instance was not started from a config file: nothing to reload')
    let next: Config
    try {
      next = await reloadConfig(config.source)
      checkUpstreamTls(next)
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      logger.error({ config: config.source }, `reload refused, nothing changed: ${err.message}`)
      throw err
    }
    const restart = restartRequired(config, next)
    const summary = await state.reload(next.routes, { source: 'reload', address, reason: 'config file reloaded' })
    // rollouts whose route or versions the reload removed end before the reload answers
    await rollouts.reloaded(summary.removed)
    warnInsecure(logger, next)
    if (restart.length !== 0) logger.warn({ keys: restart }, 'reload: these static keys changed and need a restart; they were not applied')
    logger.info({ ...summary, restartRequired: restart }, 'config reloaded')
    return { ...summary, restartRequired: restart }
  }
  return async (address = null) => {
    const p = queue.then(async () => await once(address))
    queue = p.catch(() => {})
    return await p
  }
}

/** Every version of the routes, for Upstreams.warm. */
export function versionsOf (routes: readonly RouteSpec[]): RouteSpec['versions'] {
  return routes.flatMap((r) => r.versions)
}

/** The start-up log line's route summary. */
function describeRoutes (holder: TableHolder): unknown[] {
  return holder.current.routes.map((r) => ({
    name: r.name,
    host: r.host ?? '*',
    pathPrefix: r.pathPrefix,
    versions: r.versions.map((v) => `${v.name}=${v.weight}% ${v.spec.upstream.join(',')}`)
  }))
}

/**
 * The end of start-up, the same for a single process and a cluster primary:
 * the start-up log line (`addresses` first, then state file, config and
 * routes), then the config's `rollout` blocks (routes without a rollout
 * record only).
 */
export async function announceStarted (logger: Logger, config: Config, holder: TableHolder, rollouts: RolloutManager, addresses: Record<string, unknown>): Promise<void> {
  logger.info({
    ...addresses,
    stateFile: config.state.file === '' ? '(none: runtime changes are not persisted)' : config.state.file,
    config: config.source,
    routes: describeRoutes(holder)
  }, 'canaryd started')
  await rollouts.startFromConfig(config.routes.filter((r) => r.rollout !== undefined).map((r) => ({ route: r.name, plan: r.rollout })))
}

/**
 * A running single-process canaryd: the proxy listener and the admin server
 * wired around one TableHolder. This module is the only place where the
 * concerns meet (cluster mode reuses the two factories above).
 */
export class App {
  readonly config: Config
  readonly logger: Logger
  readonly holder: TableHolder
  /** Runtime state (weights, rollout state, audit): the only writer of `holder`. */
  readonly state: RuntimeStore
  /** The admin server (API, probes, /metrics); other modules add endpoints with `admin.addRoute`. */
  readonly admin: AdminServer
  /** Progressive delivery: one rollout controller per route at most, restored from the state file. */
  readonly rollouts: RolloutManager
  readonly upstreams: Upstreams
  readonly metrics: PrometheusMetrics | undefined
  readonly proxy: ProxyServer
  proxyAddress: AddressInfo | undefined
  adminAddress: AddressInfo | undefined
  /** True from the moment a drain starts (readiness turns 503). */
  draining = false
  #closing: Promise<boolean> | undefined

  constructor (config: Config, opts: AppOptions = {}) {
    this.config = config
    this.logger = opts.logger ?? createLogger(config.log.level, undefined, { maxBufferBytes: config.log.maxBufferBytes })
    // the state file's weights (where still valid) override the config's before the first table is built
    warnInsecure(this.logger, config)
    // a change's new DNS names are resolved before its table is swapped in (see Upstreams.warm)
    this.state = new RuntimeStore({ routes: config.routes, file: config.state.file, logger: this.logger, prepare: async (specs) => { await this.upstreams.warm(versionsOf(specs)) } })
    this.holder = this.state.holder
    const data = createDataPlane(config, this.holder, this.logger, opts.metrics ?? true)
    this.upstreams = data.upstreams
    this.metrics = data.metrics
    this.proxy = data.proxy
    const metrics = this.metrics
    const control = createControlPlane(config, this.logger, this.state, {
      metrics,
      registry: metrics?.registry,
      subscribe: metrics === undefined ? undefined : (route, version, l) => metrics.onFinish(route, version, l),
      subscribeEjection: metrics === undefined ? undefined : (r, v, l) => metrics.onEjected(r, v, l),
      isReady: () => !this.draining && this.proxyAddress !== undefined
    })
    this.admin = control.admin
    this.rollouts = control.rollouts
    this.reload = control.reload
  }

  /** Re-reads the config file and applies its routes; see ControlPlane.reload. */
  readonly reload: ControlPlane['reload']

  /**
   * Starts the listeners and logs the start-up line (addresses and routes).
   * The admin server goes first: an unsafe admin binding (non-loopback, no
   * token) is refused before any traffic is accepted.
   */
  async start (): Promise<void> {
    this.adminAddress = await this.admin.listen()
    // DNS-discovered versions get their first endpoints before traffic (Envoy's cluster warming); bounded by the resolver's timeout
    await this.upstreams.settled()
    const { host, port } = this.config.listen
    // the admin server names itself in its listen errors; the proxy's are named here
    this.proxyAddress = await this.proxy.listen(port, host).catch((err: unknown) => { throw listenError(err, 'proxy', host, port) })
    await announceStarted(this.logger, this.config, this.holder, this.rollouts, {
      proxy: `${this.proxyAddress.address}:${this.proxyAddress.port}`,
      admin: `${this.adminAddress.address}:${this.adminAddress.port}`
    })
  }

  /** Drains and stops everything; resolves true when no request was cut. Idempotent. */
  async close (drainMs: number = this.config.timeouts.drainTimeoutMs): Promise<boolean> {
    this.#closing ??= (async () => {
      this.draining = true
      const clean = await this.proxy.drain(drainMs)
      await this.upstreams.close()
      // admin last: /readyz answers 503 during the drain; a change in flight finishes its write
      this.rollouts.close()
      await this.state.flush()
      await this.admin.close()
      return clean
    })()
    return await this.#closing
  }
}
