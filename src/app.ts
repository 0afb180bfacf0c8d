import type { AddressInfo } from 'node:net'
import type { Config } from './config/load.js'
import { createLogger, type Logger } from './logger.js'
import { NOOP_OBSERVERS } from './metrics/observer.js'
import { PrometheusMetrics } from './metrics/prometheus.js'
import { ProxyServer } from './proxy/server.js'
import { TableHolder } from './routing/holder.js'
import { buildRoutingTable } from './routing/table.js'
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
  readonly upstreams: Upstreams
  readonly metrics: PrometheusMetrics | undefined
  readonly proxy: ProxyServer
  proxyAddress: AddressInfo | undefined
  /** True from the moment a drain starts (readiness turns 503). */
  draining = false
  #closing: Promise<boolean> | undefined

  constructor (config: Config, opts: AppOptions = {}) {
    this.config = config
    this.logger = opts.logger ?? createLogger(config.log.level)
    this.holder = new TableHolder(buildRoutingTable(config.routes, 1))
    const t = config.timeouts
    this.upstreams = new Upstreams({
      connectTimeoutMs: t.upstreamConnectMs,
      responseTimeoutMs: t.upstreamResponseMs,
      bodyTimeoutMs: t.upstreamBodyMs,
      connections: config.upstream.connections,
      keepAliveMs: config.upstream.keepAliveMs
    })
    this.metrics = (opts.metrics ?? true) ? new PrometheusMetrics() : undefined
    this.proxy = new ProxyServer({
      holder: this.holder,
      upstreams: this.upstreams,
      observers: this.metrics ?? NOOP_OBSERVERS,
      logger: this.logger,
      clientHeadersMs: t.clientHeadersMs,
      clientIdleMs: t.clientIdleMs,
      accessLog: config.log.access
    })
  }

  /** Starts the listeners and logs the start-up line (addresses and routes). */
  async start (): Promise<void> {
    this.proxyAddress = await this.proxy.listen(this.config.listen.port, this.config.listen.host)
    this.logger.info({
      proxy: `${this.proxyAddress.address}:${this.proxyAddress.port}`,
      config: this.config.source,
      routes: this.holder.current.routes.map((r) => ({
        name: r.name,
        host: r.host ?? '*',
        pathPrefix: r.pathPrefix,
        versions: r.versions.map((v) => `${v.name}=${v.weight}% ${v.upstream}`)
      }))
    }, 'canaryd started')
  }

  /** Drains and stops everything; resolves true when no request was cut. Idempotent. */
  async close (drainMs: number = this.config.timeouts.drainMs): Promise<boolean> {
    this.#closing ??= (async () => {
      this.draining = true
      const clean = await this.proxy.drain(drainMs)
      await this.upstreams.close()
      return clean
    })()
    return await this.#closing
  }
}
