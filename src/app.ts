import type { AddressInfo } from 'node:net'
import { isAbsolute } from 'node:path'
import { createSecureContext } from 'node:tls'
import { registerReloadRoute, registerVersionRoutes, type ReloadResult } from './admin/config-routes.js'
import { Feed } from './admin/feed.js'
import { registerFleetRoutes } from './admin/fleet-routes.js'
import { registerRolloutRoutes } from './admin/rollout-routes.js'
import { registerSegmentRoutes } from './admin/segment-routes.js'
import { AdminServer, type MetricsSource } from './admin/server.js'
import { registerUi } from './admin/ui.js'
import { listenError, listenerCertificates, reloadConfig, restartRequired, type Config } from './config/load.js'
import { RUNTIME_CHECKS } from './config/segments.js'
import { CanarydError, ConfigError } from './errors.js'
import { createLogger, droppedLogLines, type Logger } from './logger.js'
import { expiryProblem, loadCertificates, type ListenerCertificate } from './listener/certs.js'
import { EdgeListener } from './listener/listener.js'
import { TrustedProxies } from './listener/trust.js'
import { NOOP_OBSERVERS, type SubscribeShadow } from './metrics/observer.js'
import { METRIC_NAMES, PrometheusMetrics } from './metrics/prometheus.js'
import { ProxyServer } from './proxy/server.js'
import type { SubscribeFinish } from './rollout/controller.js'
import { NOT_LISTENING, RolloutManager } from './rollout/manager.js'
import type { LoadTarget } from './rollout/loadtest.js'
import { RolloutMetrics } from './rollout/metrics.js'
import { WebhookNotifier } from './rollout/webhooks.js'
import type { TableHolder } from './routing/holder.js'
import { defaultInstanceId, FleetLink, heartbeatNow, type InstanceFacts } from './store/fleet.js'
import { RedisStore, redactUrl, type Heartbeat } from './store/redis.js'
import { fleetSnapshotPath, RuntimeStore } from './store/store.js'
import type { RouteSpec } from './routing/spec.js'
import { Upstreams } from './upstream/pools.js'
import { loadTls, mergeTls, type UpstreamTls } from './upstream/tls.js'

/** Options of a running instance beyond the config file. */
export interface AppOptions {
  logger?: Logger
  /** Prometheus metrics on (default) or off (benchmarks compare both). */
  metrics?: boolean
}

/** The hot path of one process: upstream pools, per-version metrics, the proxy and its listener. */
export interface DataPlane {
  upstreams: Upstreams
  metrics: PrometheusMetrics | undefined
  proxy: ProxyServer
  trust: TrustedProxies
  /** Made by startListener (certificates are read asynchronously first). */
  listener: EdgeListener | undefined
}

/** `trustedProxies` compiled; a bad entry is a ConfigError naming it. */
export function trustedProxies (config: Config): TrustedProxies {
  return compileCidrs(config.trustedProxies as string[], 'trustedProxies')
}

/** `listen.proxyProtocolTrustedIPs` compiled (empty: any peer may send a PROXY header). */
export function proxySenders (config: Config): TrustedProxies {
  return compileCidrs(config.listen.proxyProtocolTrustedIPs as string[], 'listen.proxyProtocolTrustedIPs')
}

/** A CIDR list compiled by the listener; the syntax was checked with the config (cidrProblem names the index), what the compile still refuses names `key`. */
function compileCidrs (list: string[], key: string): TrustedProxies {
  try {
    return new TrustedProxies(list.map((x) => x.trim()))
  } catch (err) {
    throw new ConfigError(key, (err as Error).message)
  }
}

/**
 * Reads and checks the listener's certificates (empty when TLS is off):
 * files, PEM, key matching the certificate, and a TLS context OpenSSL
 * accepts with the configured ciphers. A ConfigError names the key. At
 * start an expired (or not yet valid) certificate is served with a warn
 * line, as nginx does: refusing to start would take the whole edge down for
 * one stale name. On `reload` it is refused instead: the certificates in
 * service stay.
 */
export async function loadListenerCertificates (config: Config, logger?: Logger, reload = false): Promise<ListenerCertificate[]> {
  const files = listenerCertificates(config)
  if (files.length === 0) return []
  let certs: ListenerCertificate[]
  try {
    certs = await loadCertificates(files, (i, f) => `${files[i]!.key}.${f}`)
  } catch (err) {
    throw new ConfigError('', (err as Error).message)
  }
  const t = config.listen.tls
  certs.forEach((c, i) => {
    try {
      createSecureContext({ cert: c.cert, key: c.key, minVersion: t.minVersion, ...(t.ciphers === '' ? {} : { ciphers: t.ciphers }) })
    } catch (err) {
      throw new ConfigError(t.ciphers !== '' && /cipher/i.test((err as Error).message) ? 'listen.tls.ciphers' : `${files[i]!.key}.certFile`, `OpenSSL refuses it: ${(err as Error).message}`)
    }
    const problem = expiryProblem(c, new Date())
    if (problem === undefined) return
    // a reload keeps what is served rather than swap in a certificate no client accepts; a start serves it (the edge must come up)
    if (reload) throw new ConfigError(`${files[i]!.key}.certFile`, `${problem}: the reload keeps the certificates in service (a restart would serve it)`)
    logger?.warn({ certFile: c.certFile, names: c.names }, `listener certificate: ${problem}`)
  })
  return certs
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
  const trust = trustedProxies(config)
  const proxy = new ProxyServer({
    holder,
    upstreams,
    observers: metrics ?? NOOP_OBSERVERS,
    logger,
    clientHeadersMs: t.clientHeadersMs,
    clientIdleMs: t.clientIdleMs,
    clientBodyMs: t.clientBodyMs,
    clientSendMs: t.clientSendMs,
    accessLog: config.log.access,
    maxHeaderSize: config.limits.maxHeaderBytes,
    maxHeaderCount: config.limits.maxHeaderCount,
    maxUrlBytes: config.limits.maxUrlBytes,
    allowTrace: config.limits.allowTrace,
    underscoreHeaders: config.limits.underscoreHeaders,
    retries: config.upstream.retries,
    largeBodyBytes: config.upstream.largeBodyBytes,
    outlier: { consecutiveFailures: config.health.consecutiveFailures, ejectionMs: config.health.ejectionMs },
    checkPath: config.health.checkPath,
    checkIntervalMs: config.health.checkIntervalMs,
    clientAddress: (peer, xff) => trust.clientAddress(peer, xff),
    http2: { maxConcurrentStreams: config.limits.http2MaxConcurrentStreams, maxHeaderListBytes: config.limits.http2MaxHeaderListBytes },
    redirect: { httpsPort: config.listen.redirectHttpsPort === 0 ? config.listen.port : config.listen.redirectHttpsPort, acmePassthrough: config.listen.acmePassthrough }
  })
  const data: DataPlane = { upstreams, metrics, proxy, trust, listener: undefined }
  if (metrics !== undefined) {
    metrics.addReadout(METRIC_NAMES.connectionsOpen, 'Client connections open on the proxy listener now (both ports, HTTP/1.1 and HTTP/2).', 'gauge', () => data.listener?.connections ?? 0)
    metrics.addReadout(METRIC_NAMES.connectionsRejected, 'Client connections closed at once because limits.maxConnections were already open.', 'counter', () => data.listener?.rejectedConnections ?? 0)
    metrics.addLabelledReadout(METRIC_NAMES.connectionErrors, 'Client connections closed before any HTTP: a failed TLS handshake, a missing or invalid PROXY protocol header, or nothing received in time (timeouts.clientHeadersMs).', 'counter',
      () => Object.entries(data.listener?.errors ?? { tls_handshake: 0, proxy_protocol: 0, prelude_timeout: 0 }).map(([reason, value]) => ({ labels: { reason }, value })), 'sum')
    // an expiry alert needs no log reading and survives restarts: `… - time() < 14 * 86400`
    metrics.addLabelledReadout(METRIC_NAMES.certificateExpiry, 'When each listener certificate served now expires (Unix seconds), by certificate file and its names.', 'gauge',
      () => (data.listener?.certificates ?? []).map((c) => ({ labels: { cert_file: c.certFile, names: c.names.join(',') }, value: Math.floor(c.notAfter.getTime() / 1000) })), 'max')
    // max across cluster workers: each holds the same endpoints and judges their health itself
    metrics.addLabelledReadout(METRIC_NAMES.endpoints, 'Endpoints of each version by state: healthy (taking requests) or ejected (outlier detection or the active health check).', 'gauge',
      () => proxy.endpointStates().flatMap((e) => [
        { labels: { route: e.route, version: e.version, state: 'healthy' }, value: e.healthy },
        { labels: { route: e.route, version: e.version, state: 'ejected' }, value: e.ejected }
      ]), 'max')
    addLogReadout(metrics)
  }
  return data
}

/** Where the proxy listens: the main address, and the redirect port's when there is one. */
export interface ListenAddresses { main: AddressInfo, redirect: AddressInfo | undefined }

/**
 * Opens the proxy listener of a data plane: certificates read (async), the
 * EdgeListener made and bound, the redirect's https port fixed once the
 * main port is known, the active health checks started. `ticketKeys`: a
 * cluster's shared session ticket keys.
 */
export async function startListener (data: DataPlane, config: Config, logger: Logger, given?: { certs?: ListenerCertificate[], ticketKeys?: Buffer }): Promise<ListenAddresses> {
  // a cluster worker serves the certificates its primary read (one truth across workers, even after a reload)
  const certs = given?.certs ?? await loadListenerCertificates(config, logger)
  const ticketKeys = given?.ticketKeys
  const l = config.listen
  const listener = new EdgeListener({
    host: l.host,
    port: l.port,
    redirectPort: l.redirectPort,
    tls: certs.length === 0
      ? undefined
      : { certificates: certs, settings: { minVersion: l.tls.minVersion, ciphers: l.tls.ciphers, http2: l.http2, handshakeTimeoutMs: config.timeouts.clientHeadersMs, ...(ticketKeys === undefined ? {} : { ticketKeys }) } },
    h2c: l.h2c,
    proxyProtocol: l.proxyProtocol,
    trust: data.trust,
    proxySenders: proxySenders(config),
    preludeTimeoutMs: config.timeouts.clientHeadersMs,
    maxConnections: config.limits.maxConnections,
    log: logger.child({ component: 'listener' })
  }, { http1: (s, info) => { data.proxy.acceptHttp1(s, info) }, http2: (s, info) => { data.proxy.acceptHttp2(s, info) } })
  data.listener = listener
  const addr = await listener.listen().catch((err: unknown) => {
    // the listener names itself in its listen errors
    if ((err as { redirect?: boolean }).redirect === true) throw listenError(err, 'redirect', l.host, l.redirectPort)
    throw listenError(err, 'proxy', l.host, l.port)
  })
  if (l.redirectHttpsPort === 0) data.proxy.setHttpsPort(addr.main.port)
  data.proxy.start()
  return addr
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

/**
 * The runtime store of `config.store`: the state file (one instance), or
 * the fleet's state in Redis with the local snapshot next to the state
 * file. The same for a single process and a cluster primary.
 */
export function createStore (config: Config, logger: Logger, prepare?: (specs: readonly RouteSpec[]) => Promise<void>): RuntimeStore {
  const base = { routes: config.routes, file: config.state.file, logger, ...(prepare === undefined ? {} : { prepare }), ...RUNTIME_CHECKS }
  const st = config.store
  if (st.type !== 'redis') return new RuntimeStore(base)
  const redis = new RedisStore({ url: st.url, prefix: st.prefix, instanceId: st.instanceId === '' ? defaultInstanceId() : st.instanceId, logger: logger.child({ component: 'store' }) })
  return new RuntimeStore({ ...base, fleet: redis, snapshot: fleetSnapshotPath(config.state.file), syncMs: st.syncMs })
}

/** The control plane: runtime state, the admin server and the rollouts. */
export interface ControlPlane {
  state: RuntimeStore
  admin: AdminServer
  rollouts: RolloutManager
  /**
   * Fleet mode: connects to the store and adopts the fleet's state (or
   * starts from the local snapshot; throws a ConfigError naming store.url
   * without one), then joins the fleet (heartbeat, rollout leases). Call
   * before the listeners start. A no-op with the file store.
   */
  open: () => Promise<void>
  /** Says where this instance listens (its heartbeat carries it), once listening. */
  listening: (admin: string, proxy: string) => void
  /** Leaves the fleet (leases given up, heartbeat removed) and stops following the store. */
  close: () => Promise<void>
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
  /** Shadow pairs (user answer + mirrored copy's answer) per route, for a rollout's shadow judge. */
  subscribeShadow?: SubscribeShadow
  /** True while the instance serves traffic. */
  isReady: () => boolean
  /** Serves reloaded listener certificates (this process's listener, or every worker's). Throws when they are refused: the reload then changes nothing. */
  applyCertificates?: (certs: ListenerCertificate[]) => void
  /** Where the store gauges are exposed (canaryd_store_up, …). */
  gauges?: Pick<PrometheusMetrics, 'addReadout'>
}

/**
 * Where a route's load test sends its requests: this process's own proxy
 * listener (`at`, "address:port" as bound; a wildcard bind is reached over
 * loopback), with the route's host and the override that pins each
 * version; or why it cannot run.
 */
export function loadTargetFor (config: Config, spec: RouteSpec | undefined, at: string): LoadTarget | string {
  if (spec === undefined) return 'no such route'
  if (at === '') return NOT_LISTENING
  if (config.listen.proxyProtocol) return 'the proxy listener expects a PROXY protocol header on every connection (listen.proxyProtocol)'
  if (spec.override.header === undefined && spec.override.cookie === undefined) return `route ${spec.name} has no override header or cookie to pin each version`
  const i = at.lastIndexOf(':')
  let host = at.slice(0, i)
  if (host === '0.0.0.0' || host === '') host = '127.0.0.1'
  else if (host === '::') host = '::1'
  const tls = config.listen.tls.certFile !== '' || config.listen.tls.certificates.length > 0
  const target: LoadTarget = { origin: `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${at.slice(i + 1)}`, stickyCookie: spec.sticky.cookie.name, tls }
  const h = spec.match.host
  // a wildcard host is reached with a name it matches
  if (h !== undefined) target.host = h.startsWith('*.') ? `synthetic.${h.slice(2)}` : h
  if (spec.override.header !== undefined) target.overrideHeader = spec.override.header
  else target.overrideCookie = spec.override.cookie
  return target
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
  const addresses = { admin: '', proxy: '' }
  const redis = state.redis
  // read at each heartbeat, once `rollouts` below exists
  const describe = (): InstanceFacts => ({ ...addresses, generation: state.generation, leader: rollouts.leading, config: state.configHash })
  const link = redis === undefined ? undefined : new FleetLink({ redis, logger: logger.child({ component: 'fleet' }), leaseTtlMs: config.store.leaseTtlMs, heartbeatMs: config.store.heartbeatMs, describe, startedAt: STARTED_AT })
  const rollouts = new RolloutManager({
    store: state,
    ...(link === undefined ? {} : { fleet: link }),
    logger: logger.child({ component: 'rollout' }),
    notifier: new WebhookNotifier({ logger }),
    observer: src.registry === undefined ? undefined : new RolloutMetrics(src.registry, state.routeNames),
    // without metrics there are no finish listeners: checks stay inconclusive (said in the README)
    subscribe: src.subscribe,
    subscribeEjection: src.subscribeEjection,
    subscribeShadow: src.subscribeShadow,
    loadTarget: (route) => loadTargetFor(config, state.specs?.find((s) => s.name === route), addresses.proxy)
  })
  registerRolloutRoutes(admin, rollouts)
  registerVersionRoutes(admin, state)
  registerSegmentRoutes(admin, state)
  const instanceId = (): string => redis?.instanceId ?? 'local'
  const self = (): Heartbeat => heartbeatNow(instanceId(), STARTED_AT, describe())
  registerFleetRoutes(admin, { store: state, self, ...(link === undefined ? {} : { instances: async () => await link.instances() }) })
  if (src.gauges !== undefined) {
    src.gauges.addReadout(METRIC_NAMES.storeUp, 'Whether the runtime store can be reached (1) or not (0); always 1 with the file store. While 0 the proxy serves the last applied state, admin writes answer 503 and rollouts hold.', 'gauge', () => state.up ? 1 : 0)
    src.gauges.addReadout(METRIC_NAMES.storeConfigMismatch, 'Fleet mode: 1 when this instance\'s routes config differs from the fleet\'s (the config it was seeded or last reloaded with); the fleet state then applies only to routes with the same versions.', 'gauge', () => state.configMismatch ? 1 : 0)
    src.gauges.addReadout(METRIC_NAMES.storeGeneration, 'The runtime store generation this instance has applied (fleet mode: the same on every instance once a change has spread).', 'gauge', () => state.generation)
  }
  const reload = reloader(config, logger, state, rollouts, src.applyCertificates)
  registerReloadRoute(admin, reload)
  const adminLog = logger.child({ component: 'admin' })
  const feed = new Feed({ store: state, metrics: src.metrics, instance: instanceId, logger: adminLog })
  feed.register(admin)
  registerUi(admin, config.admin.ui, adminLog)
  // a restart resumes rollouts at their step (and keeps finished ones finished); a fleet does it once it has the fleet's state
  if (link === undefined) rollouts.restore()
  return {
    state,
    admin,
    rollouts,
    reload,
    listening: (a, p) => {
      addresses.admin = a
      addresses.proxy = p
      link?.beat()
      rollouts.listening()
    },
    open: async () => {
      if (link === undefined) return
      await state.open(config.store.connectTimeoutMs)
      await link.start()
      state.onGeneration(() => { link.beat() })
      rollouts.restore()
    },
    close: async () => {
      feed.close()
      rollouts.close()
      await rollouts.leave()
      await state.close()
      await link?.close()
      await redis?.close()
    }
  }
}

/** When this process started (the heartbeat says it). */
const STARTED_AT = new Date().toISOString()

/**
 * The reload of one instance: read the file again (without blocking),
 * validate all of it (schema, routes, TLS files), report static keys that
 * changed (they need a restart and are not applied), and hand the routes to
 * the store, which applies them in one swap. Reloads run one at a time.
 */
function reloader (config: Config, logger: Logger, state: RuntimeStore, rollouts: RolloutManager, applyCertificates: ControlPlaneSources['applyCertificates']): ControlPlane['reload'] {
  let queue: Promise<unknown> = Promise.resolve()
  const tlsOn = listenerCertificates(config).length !== 0
  const once = async (address: string | null): Promise<ReloadResult> => {
    // source is the file's absolute path; built from an object it is '' or a label
    if (!isAbsolute(config.source)) throw new CanarydError('CANARYD_ERR_RELOAD_UNAVAILABLE', 'this instance was not started from a config file: nothing to reload')
    let next: Config
    let certs: ListenerCertificate[] | undefined
    try {
      next = await reloadConfig(config.source)
      checkUpstreamTls(next)
      trustedProxies(next)
      proxySenders(next)
      // certificates are read and checked before anything is applied: a bad file keeps the old ones (and the old routes)
      if (tlsOn && listenerCertificates(next).length !== 0) certs = await loadListenerCertificates(next, logger, true)
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      logger.error({ config: config.source }, `reload refused, nothing changed: ${err.message}`)
      throw err
    }
    const restart = restartRequired(config, next)
    const summary = await state.reload(next.routes, { source: 'reload', address, reason: 'config file reloaded' })
    // after the routes: a reload the store refuses changes nothing, certificates included
    if (certs !== undefined) {
      try {
        applyCertificates?.(certs)
        logger.info({ certificates: certs.map((c) => ({ certFile: c.certFile, names: c.names, notAfter: c.notAfter.toISOString(), fingerprint: c.fingerprint })) }, 'listener certificates loaded: new TLS handshakes use them')
      } catch (err) {
        // checked by OpenSSL above already: unexpected, and the routes are in force, so say it without failing the reload
        logger.error({ err }, 'the listener refused the reloaded certificates: the previous ones stay')
      }
    }
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

/** The start-up line's listener fields: where the proxy listens and what it speaks. */
export function listenerSummary (config: Config, addr: { main: { address: string, port: number }, redirect?: { address: string, port: number } | undefined }): Record<string, unknown> {
  const l = config.listen
  const tls = listenerCertificates(config).length !== 0
  return {
    proxy: `${addr.main.address}:${addr.main.port}`,
    ...(addr.redirect === undefined ? {} : { redirect: `${addr.redirect.address}:${addr.redirect.port}` }),
    protocols: tls ? (l.http2 ? 'https (h2, http/1.1)' : 'https (http/1.1)') : (l.h2c ? 'http (http/1.1, h2c)' : 'http (http/1.1)'),
    ...(l.proxyProtocol ? { proxyProtocol: true } : {}),
    ...((config.trustedProxies as string[]).length === 0 ? {} : { trustedProxies: config.trustedProxies })
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
    ...(config.store.type === 'redis'
      ? { store: `redis ${redactUrl(config.store.url)} (prefix ${config.store.prefix})`, snapshot: fleetSnapshotPath(config.state.file) || '(none: state.file is "")' }
      : { stateFile: config.state.file === '' ? '(none: runtime changes are not persisted)' : config.state.file }),
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
  /** The data plane (its listener exists once started). */
  readonly data: DataPlane
  proxyAddress: AddressInfo | undefined
  /** The plain-HTTP redirect port's address (listen.redirectPort), when on. */
  redirectAddress: AddressInfo | undefined
  adminAddress: AddressInfo | undefined
  /** True from the moment a drain starts (readiness turns 503). */
  draining = false
  #closing: Promise<boolean> | undefined
  /** Certificates a reload loaded before the listener existed. */
  #pendingCerts: ListenerCertificate[] | undefined

  constructor (config: Config, opts: AppOptions = {}) {
    this.config = config
    this.logger = opts.logger ?? createLogger(config.log.level, undefined, { maxBufferBytes: config.log.maxBufferBytes })
    // the state file's weights (where still valid) override the config's before the first table is built
    warnInsecure(this.logger, config)
    // a change's new DNS names are resolved before its table is swapped in (see Upstreams.warm)
    this.state = createStore(config, this.logger, async (specs) => { await this.upstreams.warm(versionsOf(specs)) })
    this.holder = this.state.holder
    const data = this.data = createDataPlane(config, this.holder, this.logger, opts.metrics ?? true)
    this.upstreams = data.upstreams
    this.metrics = data.metrics
    this.proxy = data.proxy
    const metrics = this.metrics
    const control = createControlPlane(config, this.logger, this.state, {
      metrics,
      registry: metrics?.registry,
      subscribe: metrics === undefined ? undefined : (route, version, l) => metrics.onFinish(route, version, l),
      subscribeEjection: metrics === undefined ? undefined : (r, v, l) => metrics.onEjected(r, v, l),
      subscribeShadow: metrics === undefined ? undefined : (r, l) => metrics.subscribeShadow(r, l),
      gauges: metrics,
      isReady: () => !this.draining && this.proxyAddress !== undefined,
      applyCertificates: (certs) => {
        // a reload before the listener is up (the admin API starts first): the listener starts with them
        if (data.listener === undefined) this.#pendingCerts = certs
        else data.listener.setCertificates(certs)
      }
    })
    this.admin = control.admin
    this.rollouts = control.rollouts
    this.reload = control.reload
    this.#control = control
  }

  readonly #control: ControlPlane

  /** Re-reads the config file and applies its routes; see ControlPlane.reload. */
  readonly reload: ControlPlane['reload']

  /**
   * Starts the listeners and logs the start-up line (addresses and routes).
   * The admin server goes first: an unsafe admin binding (non-loopback, no
   * token) is refused before any traffic is accepted.
   */
  async start (): Promise<void> {
    // fleet mode: the fleet's state (or the local snapshot) is in force before any listener opens
    await this.#control.open()
    this.adminAddress = await this.admin.listen()
    // DNS-discovered versions get their first endpoints before traffic (Envoy's cluster warming); bounded by the resolver's timeout
    await this.upstreams.settled()
    const addr = await startListener(this.data, this.config, this.logger, { certs: this.#pendingCerts })
    this.proxyAddress = addr.main
    this.redirectAddress = addr.redirect
    this.#control.listening(`${this.adminAddress.address}:${this.adminAddress.port}`, `${addr.main.address}:${addr.main.port}`)
    await announceStarted(this.logger, this.config, this.holder, this.rollouts, {
      ...(this.state.redis === undefined ? {} : { instance: this.state.redis.instanceId }),
      ...listenerSummary(this.config, addr),
      admin: `${this.adminAddress.address}:${this.adminAddress.port}`
    })
  }

  /** Drains and stops everything; resolves true when no request was cut. Idempotent. */
  async close (drainMs: number = this.config.timeouts.drainTimeoutMs): Promise<boolean> {
    this.#closing ??= (async () => {
      this.draining = true
      this.data.listener?.close()
      const clean = await this.proxy.drain(drainMs)
      await this.upstreams.close()
      // admin last: /readyz answers 503 during the drain; a change in flight finishes its write
      await this.#control.close()
      await this.state.flush()
      await this.admin.close()
      return clean
    })()
    return await this.#closing
  }
}
