import { Agent as HttpsAgent } from 'node:https'
import { buildConnector, Pool } from 'undici'
import type { Logger } from '../logger.js'
import { DnsResolver, DnsWatch, discoveryHost, endpointOrigin } from './dns.js'
import { endpointSeed } from './balance/hash.js'
import { Endpoint } from './endpoint.js'
import { EndpointGroup, type Clock, type GroupSpec } from './group.js'
import { HttpOrigin } from './http-client.js'
import { connectOptions, loadTls, mergeTls, tlsKey, type UpstreamTls } from './tls.js'

/** Options shared by every upstream pool. */
export interface UpstreamOptions {
  connectTimeoutMs: number
  responseTimeoutMs: number
  bodyTimeoutMs: number
  connections: number
  keepAliveMs: number
  /** Most requests in flight per origin (0 = no cap); past it the proxy answers 503 at once. */
  maxInFlight?: number
  /** Static `upstream.tls`: defaults for every https origin, under each version's own `tls`. */
  tls?: UpstreamTls
  /** How often `discovery: "dns"` names are re-resolved (ms); default 5000. */
  dnsRefreshMs?: number
  /** DNS servers (`host:port`) for discovery; empty = the system resolver. */
  dnsServers?: readonly string[]
  /** Cold-path log (pool errors, DNS, TLS settings); silent when absent. */
  log?: Logger
  /** Millisecond clock for ejections (tests). */
  now?: Clock
}

/**
 * One upstream origin as the hot path sees it: its pool and the count of
 * requests in flight, checked against the cap before dispatch. undici would
 * otherwise queue without bound once every connection is busy.
 */
export interface UpstreamSlot {
  readonly origin: string
  readonly pool: Pool
  /** The same origin over Node's http client, for large request bodies (see http-client.ts). */
  readonly http: HttpOrigin
  /** 0 = no cap. */
  readonly cap: number
  /** TLS options of an https origin (for clients other than the pool: WebSocket); undefined for http. */
  readonly tls: { rejectUnauthorized?: boolean, [k: string]: unknown } | undefined
  /**
   * The TLS server name of an https origin, sent with every dispatch: undici
   * otherwise derives one from each request's Host and reconnects whenever
   * it changes (the connector then applies ours anyway). Undefined for http.
   */
  readonly servername: string | undefined
  inFlight: number
  /**
   * Requests holding this pool, from routing until their response closes
   * (`holdSlot` / `releaseSlot`): a pool a swap no longer lists is closed
   * only when the last one lets go, so a request routed before the swap can
   * still dispatch there (a body that arrives late, a retry).
   */
  refs: number
  /** No endpoint lists it any more: closed when `refs` reaches 0. */
  retired: boolean
  /**
   * For https: an agent with the TLS options for WebSocket upgrades
   * (http-proxy copies CA and certificate from its target but not the
   * server name, so without it Node would verify the client's Host).
   */
  readonly wsAgent: HttpsAgent | undefined
}

/** A request routed to `s` holds it until its response closes. */
export function holdSlot (s: UpstreamSlot): void {
  s.refs++
}

/** Lets go of `s`; the last request on a retired pool closes it. */
export function releaseSlot (s: UpstreamSlot): void {
  if (--s.refs === 0 && s.retired) closeSlot(s)
}

/** Graceful: requests in flight finish, then the sockets close. */
function closeSlot (s: UpstreamSlot): void {
  void s.pool.close().catch(() => {})
  s.http.close()
}

/** A group and what keeps it current. */
interface GroupEntry {
  readonly group: EndpointGroup
  readonly spec: GroupSpec
  /** One per host name of a `discovery: "dns"` version; empty otherwise. */
  readonly watches: DnsWatch[]
}

const SEP = '\u0000'

/**
 * Every upstream connection pool and endpoint group of one process.
 *
 * - A pool per (origin, TLS settings), shared by every route and version that
 *   dials it, kept across table swaps: a weight change opens no connection.
 * - An endpoint group per (route, version, endpoint settings): a swap that
 *   keeps a version's endpoints keeps its group (balancer turn, DNS watch),
 *   and its endpoints (their outlier state) are kept by (route, version,
 *   origin) even when the balancing changes.
 *
 * Groups are made when a table is bound (`group` for each version, then
 * `commit`), never on the hot path. `commit` bounds the state to what the
 * table in force holds: groups, endpoints and DNS watches it no longer lists
 * stop, and pools no endpoint dials any more are closed gracefully (requests
 * in flight on them finish; then their sockets close), so reloads leak no
 * connection and no memory.
 */
export class Upstreams {
  readonly #slots = new Map<string, UpstreamSlot>()
  readonly #endpoints = new Map<string, Endpoint>()
  readonly #groups = new Map<string, GroupEntry>()
  /** Groups listed by the bind in progress (see `group` / `commit`). */
  readonly #bound = new Set<string>()
  /** Last good addresses of each discovery host name (warmed before a swap, refreshed by the watches). */
  readonly #dns = new Map<string, readonly string[]>()
  /** Names warmed for a table not bound yet: a sweep before that bind must not forget them. */
  readonly #warmed = new Set<string>()
  /** First resolutions still running (start-up waits for them). */
  readonly #pending = new Set<Promise<void>>()
  readonly #resolver: DnsResolver
  readonly #opts: UpstreamOptions
  readonly #now: Clock

  constructor (opts: UpstreamOptions) {
    this.#opts = opts
    this.#now = opts.now ?? Date.now
    this.#resolver = new DnsResolver(opts.dnsServers ?? [])
  }

  /** The log, or a no-op (library users and unit tests pass none). */
  get #log (): Pick<Logger, 'info' | 'warn' | 'error' | 'debug'> {
    return this.#opts.log ?? SILENT
  }

  /**
   * The endpoint group of one version for the table being bound: the
   * existing one when `key` (routing's endpointsKey) is unchanged, else a new
   * one. Call `commit` after the last version of the table.
   */
  group (route: string, version: string, spec: GroupSpec, key: string): EndpointGroup {
    const gk = `${route}${SEP}${version}${SEP}${key}`
    this.#bound.add(gk)
    const have = this.#groups.get(gk)
    if (have !== undefined) return have.group
    const group = new EndpointGroup(route, version, spec.balance ?? 'least-request', this.#now, this.#restored)
    const entry: GroupEntry = { group, spec, watches: [] }
    this.#groups.set(gk, entry)
    if (spec.discovery === 'dns') {
      for (const origin of spec.upstream) {
        const host = discoveryHost(origin)
        if (host === undefined) continue
        const watch = new DnsWatch({
          resolver: this.#resolver,
          hostname: host,
          refreshMs: this.#opts.dnsRefreshMs ?? 5000,
          log: this.#opts.log ?? (SILENT as unknown as Logger),
          onChange: (addresses) => { this.#dnsChanged(entry, host, addresses) }
        })
        entry.watches.push(watch)
        const first = watch.start().catch(() => {})
        this.#pending.add(first)
        void first.then(() => this.#pending.delete(first))
      }
    }
    group.setEndpoints(this.#endpointsOf(route, version, spec))
    return group
  }

  /**
   * Ends a bind: groups the new table does not list are dropped (their DNS
   * watches stopped), then endpoints and pools nothing lists any more.
   */
  commit (): void {
    for (const [gk, entry] of this.#groups) {
      if (this.#bound.has(gk)) continue
      for (const w of entry.watches) w.stop()
      this.#groups.delete(gk)
    }
    this.#bound.clear()
    this.#warmed.clear()
    this.#sweep()
  }

  /** The endpoints a group should have now: its origins, or for DNS, every address each name resolved to. */
  #endpointsOf (route: string, version: string, spec: GroupSpec): Endpoint[] {
    const out: Endpoint[] = []
    const seen = new Set<string>()
    for (const origin of spec.upstream) {
      const host = spec.discovery === 'dns' ? discoveryHost(origin) : undefined
      if (host === undefined) {
        out.push(this.#endpoint(route, version, origin, spec.tls, undefined))
        continue
      }
      for (const address of this.#dns.get(host) ?? []) {
        const o = endpointOrigin(origin, address)
        if (seen.has(o)) continue
        seen.add(o)
        out.push(this.#endpoint(route, version, o, spec.tls, host))
      }
    }
    return out
  }

  /** The Endpoint of (route, version, origin, TLS), kept while listed (its outlier state with it). */
  #endpoint (route: string, version: string, origin: string, own: UpstreamTls | undefined, dnsHost: string | undefined): Endpoint {
    let tls = mergeTls(this.#opts.tls, own)
    // a discovered https endpoint is dialled by address but is the named service: verify (and send SNI for) the name
    if (dnsHost !== undefined && origin.startsWith('https:') && tls?.servername === undefined) tls = { ...tls, servername: dnsHost }
    const tk = origin.startsWith('https:') ? tlsKey(tls) : ''
    const key = `${route}${SEP}${version}${SEP}${origin}${SEP}${tk}`
    let e = this.#endpoints.get(key)
    if (e === undefined) {
      e = new Endpoint(origin, this.slot(origin, origin.startsWith('https:') ? tls ?? {} : undefined), endpointSeed(origin))
      this.#endpoints.set(key, e)
    }
    return e
  }

  /**
   * A DNS answer changed: rebuild the group's endpoints from every name's
   * last good answer. Only live groups hear it: `commit` and `close` stop the
   * watches of groups they drop, and a stopped watch never calls back.
   */
  #dnsChanged (entry: GroupEntry, host: string, addresses: readonly string[]): void {
    this.#dns.set(host, [...addresses])
    const g = entry.group
    const before = g.all.map((e) => e.origin)
    g.setEndpoints(this.#endpointsOf(g.route, g.version, entry.spec))
    this.#log.info({ route: g.route, version: g.version, host, endpoints: g.all.map((e) => e.origin), before }, 'DNS discovery changed the endpoints')
    this.#sweep()
  }

  /**
   * Resolves the discovery names of `specs` not resolved yet, so a table
   * swapped in next finds its endpoints at once (Envoy's cluster warming):
   * called before a reload or an upstream change is applied. Bounded by
   * the resolver's timeout; a failure leaves the name unresolved (its
   * version has no endpoint until a refresh succeeds; users fall back by
   * weight) and is logged by the watch.
   */
  async warm (specs: Iterable<GroupSpec>): Promise<void> {
    const hosts = new Set<string>()
    for (const s of specs) {
      if (s.discovery !== 'dns') continue
      for (const o of s.upstream) {
        const h = discoveryHost(o)
        if (h !== undefined && !this.#dns.has(h)) hosts.add(h)
      }
    }
    await Promise.all([...hosts].map(async (h) => {
      try {
        this.#dns.set(h, await this.#resolver.resolve(h))
        this.#warmed.add(h)
      } catch (err) {
        this.#log.warn({ host: h, cause: (err as Error).message }, 'DNS discovery: cannot resolve yet; the version has no endpoint until it does')
      }
    }))
  }

  /** Resolves when every DNS watch started so far has its first answer (or failed it). */
  async settled (): Promise<void> {
    await Promise.all([...this.#pending])
  }

  /** Drops endpoints no group lists, DNS answers no group uses, and closes pools no endpoint dials. */
  #sweep (): void {
    const listed = new Set<Endpoint>()
    const hosts = new Set<string>()
    for (const entry of this.#groups.values()) {
      for (const e of entry.group.all) listed.add(e)
      for (const w of entry.watches) hosts.add(w.hostname)
    }
    for (const [k, e] of this.#endpoints) if (!listed.has(e)) this.#endpoints.delete(k)
    for (const h of this.#dns.keys()) if (!hosts.has(h) && !this.#warmed.has(h)) this.#dns.delete(h)
    const dialled = new Set<UpstreamSlot>()
    for (const e of this.#endpoints.values()) dialled.add(e.slot)
    for (const [k, s] of this.#slots) {
      if (dialled.has(s)) continue
      this.#slots.delete(k)
      // requests routed before the swap may still dispatch here (a retry, a late body): close after the last
      s.retired = true
      if (s.refs === 0) closeSlot(s)
    }
  }

  /** The pool and in-flight counter of an origin (with its TLS settings), created on first use. */
  slot (origin: string, tls?: UpstreamTls): UpstreamSlot {
    const key = tls === undefined ? origin : `${origin}${SEP}${tlsKey(tls)}`
    let s = this.#slots.get(key)
    if (s === undefined) {
      const o = this.#opts
      let connect: Record<string, unknown> | undefined
      if (tls !== undefined) {
        try {
          connect = connectOptions(loadTls(tls, `TLS settings of ${origin}`), origin)
        } catch (err) {
          // checked before a config is applied: a file that vanished since is a 502 (TLS) per request, logged here
          this.#log.error({ origin, cause: (err as Error).message }, 'cannot load upstream TLS settings: default verification is used')
          connect = connectOptions(loadTls({}, origin), origin)
        }
      }
      const pool = new Pool(origin, {
        connections: o.connections === 0 ? null : o.connections,
        connect: fixedServername({ timeout: o.connectTimeoutMs, ...connect }),
        headersTimeout: o.responseTimeoutMs,
        bodyTimeout: o.bodyTimeoutMs,
        keepAliveTimeout: o.keepAliveMs,
        keepAliveMaxTimeout: Math.max(o.keepAliveMs, 600_000),
        // the upstream's `Keep-Alive: timeout=N` hint minus this margin, so a
        // connection is retired before the upstream closes it under a request
        keepAliveTimeoutThreshold: 1000,
        pipelining: 1
      })
      const http = new HttpOrigin(origin, { connectTimeoutMs: o.connectTimeoutMs, responseTimeoutMs: o.responseTimeoutMs, bodyTimeoutMs: o.bodyTimeoutMs, connections: o.connections, keepAliveMs: o.keepAliveMs, tls: connect })
      s = { origin, pool, http, cap: o.maxInFlight ?? 0, tls: connect, servername: connect === undefined ? undefined : String(connect.servername ?? '') || new URL(origin).hostname, inFlight: 0, refs: 0, retired: false, wsAgent: connect === undefined ? undefined : new HttpsAgent({ ...connect, keepAlive: false }) }
      this.#slots.set(key, s)
    }
    return s
  }

  /** Pools open now (tests check that reloads leave none behind). */
  get poolCount (): number {
    return this.#slots.size
  }

  readonly #restored = (g: EndpointGroup, e: Endpoint): void => {
    this.#log.info({ route: g.route, version: g.version, endpoint: e.origin }, 'endpoint back in rotation')
  }

  /** Closes every pool, letting in-flight requests finish; stops DNS watches. */
  async close (): Promise<void> {
    for (const entry of this.#groups.values()) for (const w of entry.watches) w.stop()
    await Promise.all([...this.#slots.values()].map(async (s) => { await s.pool.close() }))
    // called after the drain: what is left on the http client is idle keep-alive sockets
    for (const s of this.#slots.values()) s.http.destroy()
    this.#slots.clear()
  }
}

/**
 * undici's connector prefers the servername it derives from each request's
 * Host header over the one configured, so a client's Host would choose the
 * certificate name verified. A configured `servername` must win: the
 * connector is wrapped to pass it on every connect.
 */
function fixedServername (opts: Record<string, unknown>): Record<string, unknown> | buildConnector.connector {
  const name = opts.servername
  if (typeof name !== 'string') return opts
  const connector = buildConnector(opts as buildConnector.BuildOptions)
  return (o, cb) => connector({ ...o, servername: name }, cb)
}

const noop = (): void => {}
const SILENT = { info: noop, warn: noop, error: noop, debug: noop }
