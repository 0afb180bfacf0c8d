import type { AddressInfo } from 'node:net'
import { AdminServer } from './admin/server.js'
import type { Config } from './config/load.js'
import { createLogger, type Logger } from './logger.js'
import { NOOP_OBSERVERS } from './metrics/observer.js'
import { PrometheusMetrics } from './metrics/prometheus.js'
import { ProxyServer } from './proxy/server.js'
import { registerRolloutRoutes } from './rollout/http.js'
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

/**
 * A running canaryd: the proxy listener and, from the admin issue on, the
 * admin server, wired around one TableHolder. This is the only place where
 * the concerns meet.
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
    this.logger = opts.logger ?? createLogger(config.log.level)
    // the state file's weights (where still valid) override the config's before the first table is built
    this.state = new RuntimeStore({ routes: config.routes, file: config.state.file, logger: this.logger })
    this.holder = this.state.holder
    const t = config.timeouts
    this.upstreams = new Upstreams({
      connectTimeoutMs: t.upstreamConnectMs,
      responseTimeoutMs: t.upstreamResponseMs,
      bodyTimeoutMs: t.upstreamBodyMs,
      connections: config.upstream.connections,
      keepAliveMs: config.upstream.keepAliveMs,
      maxInFlight: config.upstream.maxInFlight
    })
    this.metrics = (opts.metrics ?? true) ? new PrometheusMetrics() : undefined
    this.proxy = new ProxyServer({
      holder: this.holder,
      upstreams: this.upstreams,
      observers: this.metrics ?? NOOP_OBSERVERS,
      logger: this.logger,
      clientHeadersMs: t.clientHeadersMs,
      clientIdleMs: t.clientIdleMs,
      accessLog: config.log.access,
      maxHeaderSize: config.limits.maxHeaderBytes,
      maxHeaderCount: config.limits.maxHeaderCount,
      maxUrlBytes: config.limits.maxUrlBytes,
      underscoreHeaders: config.limits.underscoreHeaders,
      retries: config.upstream.retries,
      outlier: { consecutiveFailures: config.health.consecutiveFailures, ejectionMs: config.health.ejectionMs },
      checkPath: config.health.checkPath,
      checkIntervalMs: config.health.checkIntervalMs
    })
    this.admin = new AdminServer({
      store: this.state,
      logger: this.logger,
      host: config.admin.host,
      port: config.admin.port,
      token: config.admin.token,
      metrics: this.metrics,
      isReady: () => !this.draining && this.proxyAddress !== undefined
    })
    const metrics = this.metrics
    this.rollouts = new RolloutManager({
      store: this.state,
      logger: this.logger.child({ component: 'rollout' }),
      notifier: new WebhookNotifier({ logger: this.logger }),
      observer: metrics === undefined ? undefined : new RolloutMetrics(metrics.registry, this.state.routeNames),
      // without metrics there are no finish listeners: checks stay inconclusive (said in the README)
      subscribe: metrics === undefined ? undefined : (route, version, l) => metrics.onFinish(route, version, l)
    })
    registerRolloutRoutes(this.admin, this.rollouts)
    // a restart resumes rollouts at their step (and keeps finished ones finished)
    this.rollouts.restore()
  }

  /**
   * Starts the listeners and logs the start-up line (addresses and routes).
   * The admin server goes first: an unsafe admin binding (non-loopback, no
   * token) is refused before any traffic is accepted.
   */
  async start (): Promise<void> {
    this.adminAddress = await this.admin.listen()
    this.proxyAddress = await this.proxy.listen(this.config.listen.port, this.config.listen.host)
    this.logger.info({
      proxy: `${this.proxyAddress.address}:${this.proxyAddress.port}`,
      admin: `${this.adminAddress.address}:${this.adminAddress.port}`,
      stateFile: this.config.state.file === '' ? '(none: runtime changes are not persisted)' : this.config.state.file,
      config: this.config.source,
      routes: this.holder.current.routes.map((r) => ({
        name: r.name,
        host: r.host ?? '*',
        pathPrefix: r.pathPrefix,
        versions: r.versions.map((v) => `${v.name}=${v.weight}% ${v.upstream}`)
      }))
    }, 'canaryd started')
    await this.rollouts.startFromConfig(this.config.routes.filter((r) => r.rollout !== undefined).map((r) => ({ route: r.name, plan: r.rollout })))
  }

  /** Drains and stops everything; resolves true when no request was cut. Idempotent. */
  async close (drainMs: number = this.config.timeouts.drainMs): Promise<boolean> {
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
