import type { AddressInfo } from 'node:net'
import { registerRolloutRoutes } from './admin/rollout-routes.js'
import { AdminServer, type MetricsSource } from './admin/server.js'
import { listenError, type Config } from './config/load.js'
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
import { Upstreams } from './upstream/pools.js'

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
    maxInFlight: config.upstream.maxInFlight
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
    addLogReadout(metrics)
  }
  return { upstreams, metrics, proxy }
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
  // a restart resumes rollouts at their step (and keeps finished ones finished)
  rollouts.restore()
  return { state, admin, rollouts }
}

/** The start-up log line's route summary. */
function describeRoutes (holder: TableHolder): unknown[] {
  return holder.current.routes.map((r) => ({
    name: r.name,
    host: r.host ?? '*',
    pathPrefix: r.pathPrefix,
    versions: r.versions.map((v) => `${v.name}=${v.weight}% ${v.upstream}`)
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
    this.state = new RuntimeStore({ routes: config.routes, file: config.state.file, logger: this.logger })
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
  }

  /**
   * Starts the listeners and logs the start-up line (addresses and routes).
   * The admin server goes first: an unsafe admin binding (non-loopback, no
   * token) is refused before any traffic is accepted.
   */
  async start (): Promise<void> {
    this.adminAddress = await this.admin.listen()
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
