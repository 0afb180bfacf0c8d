import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { performance } from 'node:perf_hooks'
import httpProxy from 'http-proxy'
import { LRUCache } from 'lru-cache'
import type { Dispatcher } from 'undici'
import { ERROR_CODES, type ErrorCode } from '../errors.js'
import type { Logger } from '../logger.js'
import type { ObserverFactory, VersionObserver } from '../metrics/observer.js'
import { hashKey } from '../routing/hash.js'
import type { TableHolder } from '../routing/holder.js'
import { pickVersion } from '../routing/pick.js'
import { readOverride, readStickyKey, stickyCookieHeader } from '../routing/sticky.js'
import { matchPath, normalizeHost, routesForHost } from '../routing/table.js'
import type { Route, RoutingTable } from '../routing/types.js'
import { RouteHealth, VersionHealth, type Clock, type OutlierOptions } from '../upstream/health.js'
import type { Upstreams } from '../upstream/pools.js'
import { ForwardHandler, recordFailure, sendError, type VersionRuntime } from './forward.js'
import { buildUpstreamHeaders, isSecure, type RequestHeaderOptions } from './headers.js'

/** Proxy settings taken from the startup config. */
export interface ProxyOptions {
  holder: TableHolder
  upstreams: Upstreams
  observers: ObserverFactory
  logger: Logger
  clientHeadersMs: number
  clientIdleMs: number
  accessLog: boolean
  /** Most distinct Host values whose route candidates are cached (bounds memory under random Hosts). */
  hostCacheSize?: number
  /** Header names with `_`: drop (default), reject with 400, or allow. */
  underscoreHeaders?: 'drop' | 'reject' | 'allow'
  /** Most bytes of request line + headers (llhttp's limit; past it 431). */
  maxHeaderSize?: number
  /** Most request header fields (past it 431). */
  maxHeaderCount?: number
  /** Longest request target (past it 414). */
  maxUrlBytes?: number
  /** Extra upstream attempts (see ForwardHandler's retry policy); default 1. */
  retries?: number
  /** Passive outlier detection; default 5 failures, 30 s. */
  outlier?: OutlierOptions
  /** Active health check: `GET checkPath` every `checkIntervalMs` per version ('' = off). */
  checkPath?: string
  checkIntervalMs?: number
  /** Millisecond clock for ejections (tests). */
  now?: Clock
}

/** What the hot path reads for one routing table: built on swap, never per request. */
interface Bound {
  readonly table: RoutingTable
  /** [route.index][version.index] */
  readonly runtime: ReadonlyArray<ReadonlyArray<VersionRuntime>>
  /** Host → candidate routes in match order; bounded so random Host headers cannot grow memory. */
  readonly hosts: LRUCache<string, readonly Route[]>
  /** [route.index]: outlier state of the route's versions. */
  readonly health: readonly RouteHealth[]
}

/** Raw replies written on a socket that has no ServerResponse (clientError, upgrade, CONNECT), built once. */
function rawReply (code: ErrorCode, reason: string): string {
  const body = JSON.stringify({ error: { code, message: reason } })
  return `HTTP/1.1 ${ERROR_CODES[code].status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
}
const REPLY_400 = rawReply('CANARYD_ERR_BAD_REQUEST', 'Bad Request')
const REPLY_408 = rawReply('CANARYD_ERR_REQUEST_TIMEOUT', 'Request Timeout')
const REPLY_431 = rawReply('CANARYD_ERR_HEADERS_TOO_LARGE', 'Request Header Fields Too Large')
const REPLY_501 = rawReply('CANARYD_ERR_NOT_IMPLEMENTED', 'Not Implemented')
const REPLY_404 = rawReply('CANARYD_ERR_NO_ROUTE', 'Not Found')
const REPLY_502 = rawReply('CANARYD_ERR_UPSTREAM_CONNECT', 'Bad Gateway')
const REPLY_503 = rawReply('CANARYD_ERR_UPSTREAM_UNAVAILABLE', 'Service Unavailable')

/** The outcome of routing one request, in a scratch object reused by every request (single-threaded, used synchronously). */
interface Selection {
  rt: VersionRuntime | undefined
  url: string
  setCookie: string
  ip: string
}

/**
 * The proxy listener: node:http in front, undici pools behind. A request reads
 * the bound table once, picks its route (Host, then longest pathPrefix), its
 * version (override, else sticky key → weighted rendezvous hash) and streams
 * through the version's pool. Nothing here knows about the admin API or
 * rollouts; it only follows the TableHolder.
 */
export class ProxyServer {
  readonly server: Server
  readonly #opts: ProxyOptions
  readonly #log: Logger
  readonly #observers = new Map<string, VersionObserver>()
  readonly #headerOpts: RequestHeaderOptions
  readonly #health = new Map<string, VersionHealth>()
  readonly #outlier: OutlierOptions
  readonly #now: Clock
  readonly #maxHeaderCount: number
  readonly #maxUrlBytes: number
  readonly #retries: number
  readonly #sel: Selection = { rt: undefined, url: '', setCookie: '', ip: '' }
  readonly #ws: httpProxy
  readonly #sockets = new Set<Duplex>()
  #checkTimer: NodeJS.Timeout | undefined
  #bound: Bound
  #inFlight = 0
  #draining = false
  #drained: (() => void) | undefined

  constructor (opts: ProxyOptions) {
    this.#opts = opts
    this.#log = opts.logger
    this.#headerOpts = { underscoreHeaders: opts.underscoreHeaders ?? 'drop' }
    this.#outlier = opts.outlier ?? { consecutiveFailures: 5, ejectionMs: 30_000 }
    this.#now = opts.now ?? Date.now
    this.#maxHeaderCount = opts.maxHeaderCount ?? 100
    this.#maxUrlBytes = opts.maxUrlBytes ?? 8192
    this.#retries = opts.retries ?? 1
    // WebSocket upgrades go through http-proxy (raw socket piping); plain requests never do
    this.#ws = httpProxy.createProxyServer({ ws: true, xfwd: true })
    this.#ws.on('error', () => {}) // errors are handled per call; this only stops an unhandled 'error' crash
    this.#bound = this.#bind(opts.holder.current)
    opts.holder.onSwap((table) => {
      this.#bound = this.#bind(table)
    })
    this.server = createServer({
      headersTimeout: opts.clientHeadersMs,
      keepAliveTimeout: opts.clientIdleMs,
      // whole-request deadline off: long uploads and downloads are bounded by idle timeouts instead
      requestTimeout: 0,
      // how often Node checks headersTimeout; the default (30 s) would make 408 late
      connectionsCheckingInterval: Math.min(1000, Math.max(100, Math.floor(opts.clientHeadersMs / 4))),
      maxHeaderSize: opts.maxHeaderSize ?? 16384,
      requireHostHeader: true
    }, (req, res) => { this.#handle(req, res) })
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => { this.#clientError(err, socket) })
    // Node would answer 417 itself but keep the connection, reading the unsent body as the next request
    this.server.on('checkExpectation', (_req: IncomingMessage, res: ServerResponse) => { sendError(res, 'CANARYD_ERR_EXPECTATION_FAILED', '') })
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => { this.#upgrade(req, socket, head) })
    // CONNECT would turn the proxy into an open TCP tunnel: refused
    this.server.on('connect', (_req: IncomingMessage, socket: Duplex) => { socket.end(REPLY_501) })
  }

  /** Builds the per-table bindings: pools, metric children, an empty host cache. */
  #bind (table: RoutingTable): Bound {
    const health = table.routes.map((r) => new RouteHealth(r.versions.map((v) => {
      const key = `${r.name}\u0000${v.name}`
      let h = this.#health.get(key)
      if (h === undefined) {
        h = new VersionHealth(r.name, v.name)
        this.#health.set(key, h)
      }
      return h
    }), r.active.map((v) => v.index), this.#outlier, this.#now))
    const runtime = table.routes.map((r) => r.versions.map((v): VersionRuntime => {
      const key = `${r.name}\u0000${v.name}`
      let observer = this.#observers.get(key)
      if (observer === undefined) {
        observer = this.#opts.observers.bind(r.name, v.name)
        this.#observers.set(key, observer)
      }
      const slot = this.#opts.upstreams.slot(v.upstream)
      return Object.freeze({ route: r.name, version: v.name, index: v.index, pool: slot.pool, slot, health: health[r.index]!, observer })
    }))
    this.#opts.observers.setWeights(table.routes.flatMap((r) => r.versions.map((v) => ({ route: r.name, version: v.name, weight: v.weight }))))
    return { table, runtime, hosts: new LRUCache({ max: this.#opts.hostCacheSize ?? 10_000 }), health }
  }

  /** Logs the end of an ejection (cold path). */
  readonly #ejectionEnded = (v: VersionHealth): void => {
    this.#log.info({ route: v.route, version: v.version }, 'version back in rotation')
  }

  /**
   * Routes a request: route by Host then path, version by override, else
   * sticky key → weighted rendezvous hash over the versions not ejected.
   * Fills the reused `#sel` and returns undefined, or returns the error code.
   */
  #select (req: IncomingMessage, bound: Bound): ErrorCode | undefined {
    const sel = this.#sel
    const host = normalizeHost(req.headers.host)
    let candidates = bound.hosts.get(host)
    if (candidates === undefined) {
      candidates = routesForHost(bound.table, host)
      bound.hosts.set(host, candidates)
    }
    let url = req.url ?? '/'
    if (url.length > this.#maxUrlBytes) return 'CANARYD_ERR_URI_TOO_LONG'
    if (url.charCodeAt(0) !== 47 /* / */) url = toOriginForm(url)
    if (url.length === 0) return 'CANARYD_ERR_BAD_REQUEST'
    const route = matchPath(candidates, url)
    if (route === undefined) return 'CANARYD_ERR_NO_ROUTE'

    sel.setCookie = ''
    sel.url = url
    const ip = sel.ip = req.socket.remoteAddress ?? ''
    // an explicit override pins the version, ejected or not: the tester asked for it
    let version = readOverride(route, req.headers)
    if (version === undefined) {
      let key = readStickyKey(route, req.headers, url, ip)
      if (key.length === 0) {
        key = randomUUID()
        sel.setCookie = stickyCookieHeader(route, key, isSecure(req))
      }
      const hash = hashKey(route.salt, key)
      const excluded = bound.health[route.index]!.excluded(this.#ejectionEnded)
      version = pickVersion(route, hash, excluded)
      // every candidate ejected (weights changed since): fall back to plain weights, never to nothing
      if (version === undefined && excluded !== 0) version = pickVersion(route, hash)
    }
    if (version === undefined) return 'CANARYD_ERR_UPSTREAM_UNAVAILABLE'
    sel.rt = bound.runtime[route.index]![version.index]!
    return undefined
  }

  #handle (req: IncomingMessage, res: ServerResponse): void {
    const t0 = performance.now()
    if (this.#draining) res.shouldKeepAlive = false // answer, then close: the listener is going away
    if (req.rawHeaders.length > this.#maxHeaderCount * 2) {
      sendError(res, 'CANARYD_ERR_HEADERS_TOO_LARGE', '')
      return
    }
    // llhttp accepts `HTTP/0.9` and `HTTP/2.0` request lines; we only speak 1.x upstream
    if (req.httpVersionMajor !== 1) {
      sendError(res, 'CANARYD_ERR_BAD_REQUEST', '')
      return
    }
    const problem = this.#select(req, this.#bound)
    if (problem !== undefined) {
      sendError(res, problem, '')
      return
    }
    const sel = this.#sel
    const rt = sel.rt!
    const setCookie = sel.setCookie
    const headers = buildUpstreamHeaders(req, rt.version, sel.ip, this.#headerOpts)
    if (typeof headers === 'string') {
      sendError(res, headers, '')
      return
    }
    const slot = rt.slot
    if (slot.cap !== 0 && slot.inFlight >= slot.cap) {
      // a bounded queue is a fast 503, not a growing undici queue and a late 504
      sendError(res, 'CANARYD_ERR_UPSTREAM_OVERLOADED', rt.version)
      return
    }
    slot.inFlight++
    rt.observer.start()
    this.#inFlight++
    const cl = req.headers['content-length']
    const hasBody = cl !== undefined ? cl !== '0' : req.headers['transfer-encoding'] !== undefined
    const opts: Dispatcher.DispatchOptions = {
      path: sel.url,
      method: req.method ?? 'GET',
      headers,
      body: hasBody ? req : null
    }
    const handler = new ForwardHandler(req, res, rt, setCookie, opts, this.#log, this.#retries)
    res.once('close', () => {
      if (!res.writableFinished) handler.clientClosed()
      slot.inFlight--
      // 499 (nginx's "client closed request") when the client left before a status went out
      const status = res.headersSent ? res.statusCode : 499
      const seconds = (performance.now() - t0) / 1000
      rt.observer.finish(status, seconds, handler.upstreamFailed)
      if (this.#opts.accessLog) this.#log.info({ route: rt.route, version: rt.version, method: opts.method, status, ms: Math.round(seconds * 1e4) / 10 }, 'access')
      if (--this.#inFlight === 0 && this.#draining) this.#drained?.()
    })
    if (hasBody && cl === undefined && req.readableLength === 0 && !req.complete) {
      // chunked body: wait for its first bytes, so a bad chunk size arriving
      // with the headers (the usual smuggling payload) is refused by llhttp
      // before anything is sent upstream
      req.once('readable', () => {
        // Node reports a framing error later in the same socket read: setImmediate
        // runs after it, and by then #clientError has ended the socket
        setImmediate(() => {
          const sock = req.socket
          if (!res.destroyed && !sock.destroyed && !sock.writableEnded) handler.dispatch()
        })
      })
      return
    }
    handler.dispatch()
  }

  /**
   * `Upgrade` requests (Node hands them over with the raw socket). Only
   * WebSocket is proxied, through http-proxy, to the version the same sticky
   * rules pick; `h2c` and anything else get 400 (no 101 ever reaches the
   * client unless the upstream itself switched protocols).
   */
  #upgrade (req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => { socket.destroy() })
    if (this.#draining) {
      socket.end(REPLY_503)
      return
    }
    if (req.headers.upgrade?.toLowerCase() !== 'websocket' || req.method !== 'GET') {
      socket.end(REPLY_400)
      return
    }
    if (req.rawHeaders.length > this.#maxHeaderCount * 2) {
      socket.end(REPLY_431)
      return
    }
    const problem = this.#select(req, this.#bound)
    if (problem !== undefined) {
      socket.end(problem === 'CANARYD_ERR_NO_ROUTE' ? REPLY_404 : problem === 'CANARYD_ERR_UPSTREAM_UNAVAILABLE' ? REPLY_503 : REPLY_400)
      return
    }
    const rt = this.#sel.rt!
    const headers = buildUpstreamHeaders(req, rt.version, this.#sel.ip, this.#headerOpts)
    if (typeof headers === 'string') {
      socket.end(headers === 'CANARYD_ERR_NOT_IMPLEMENTED' ? REPLY_501 : REPLY_400)
      return
    }
    // http-proxy sends req.headers: drop what the plain path drops, keep Upgrade/Connection
    for (const name of Object.keys(req.headers)) {
      if (name.includes('_') || name.startsWith('x-forwarded-')) delete req.headers[name]
    }
    req.headers['x-canaryd-version'] = rt.version
    req.url = this.#sel.url
    rt.observer.websocket?.(1)
    this.#sockets.add(socket)
    socket.once('close', () => {
      this.#sockets.delete(socket)
      rt.observer.websocket?.(-1)
    })
    this.#ws.ws(req, socket, head, { target: rt.slot.origin }, (err: Error) => {
      const code = (err as NodeJS.ErrnoException).code ?? ''
      const connect = code === 'ECONNREFUSED' || code === 'ETIMEDOUT' || code === 'EHOSTUNREACH'
      rt.observer.upstreamError(connect ? 'connect' : 'reset')
      recordFailure(rt, connect, this.#log)
      this.#log.debug({ err, route: rt.route, version: rt.version }, 'websocket upstream error')
      // before the 101 the client still speaks HTTP: tell it; after, just close
      if (socket.writable && (socket as Socket).bytesWritten === 0) socket.end(REPLY_502)
      else socket.destroy()
    })
  }

  /**
   * Requests llhttp cannot parse (bad framing, invalid characters, oversized
   * or slow headers) never reach an upstream: answer a JSON 400/408/431 and
   * close the connection, since its framing can no longer be trusted.
   */
  #clientError (err: NodeJS.ErrnoException, socket: Socket): void {
    if (!socket.writable || err.code === 'ECONNRESET' || socket.bytesWritten !== 0) {
      // bytes already went out on this connection (e.g. a pipelined request's answer): no clean reply possible
      socket.destroy()
      return
    }
    let reply = REPLY_400
    if (err.code === 'HPE_HEADER_OVERFLOW') reply = REPLY_431
    else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') reply = REPLY_408
    socket.end(reply)
    this.#log.debug({ code: err.code }, 'malformed request refused')
  }

  /** Starts listening; resolves with the bound address. */
  async listen (port: number, host: string): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, host, () => {
        this.server.off('error', reject)
        resolve()
      })
    })
    this.#startChecks()
    return this.server.address() as AddressInfo
  }

  /**
   * The optional active health check: every interval, `GET checkPath` once per
   * upstream origin; a failure (connect error, timeout, 5xx) ejects every
   * version on that origin (never a route's last one), a success ends an
   * ejection early. Off when checkPath is ''.
   */
  #startChecks (): void {
    const path = this.#opts.checkPath ?? ''
    if (path.length === 0 || this.#checkTimer !== undefined) return
    const every = this.#opts.checkIntervalMs ?? 5000
    this.#checkTimer = setInterval(() => { void this.#checkOnce(path) }, every)
    this.#checkTimer.unref()
  }

  async #checkOnce (path: string): Promise<void> {
    const bound = this.#bound
    const byOrigin = new Map<string, VersionRuntime[]>()
    for (const versions of bound.runtime) {
      for (const rt of versions) {
        const l = byOrigin.get(rt.slot.origin)
        if (l === undefined) byOrigin.set(rt.slot.origin, [rt])
        else l.push(rt)
      }
    }
    await Promise.all([...byOrigin.values()].map(async (rts) => {
      let ok = false
      try {
        const r = await rts[0]!.pool.request({ path, method: 'GET', headersTimeout: this.#opts.checkIntervalMs ?? 5000 })
        await r.body.dump()
        ok = r.statusCode < 500
      } catch {
        ok = false
      }
      for (const rt of rts) {
        const h = rt.health.versions[rt.index]!
        if (ok) {
          if (h.ejectedUntil !== 0) this.#log.info({ route: rt.route, version: rt.version }, 'health check passed: version back in rotation')
          rt.health.restore(rt.index)
        } else if (!h.ejected(this.#now()) && rt.health.hasOtherHealthy(rt.index)) {
          rt.health.eject(rt.index)
          rt.observer.ejected()
          this.#log.warn({ route: rt.route, version: rt.version, path }, 'health check failed: version ejected')
        }
      }
    }))
  }

  /** Requests being proxied now. */
  get inFlight (): number {
    return this.#inFlight
  }

  /**
   * Graceful drain: stop accepting, close idle keep-alive connections, let
   * in-flight requests finish for up to `timeoutMs`, then cut what is left.
   * Resolves true when everything finished in time.
   */
  async drain (timeoutMs: number): Promise<boolean> {
    this.#draining = true
    if (this.#checkTimer !== undefined) clearInterval(this.#checkTimer)
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.server.closeIdleConnections()
    // a keep-alive connection whose request finishes during the drain closes right after it (shouldKeepAlive = false);
    // WebSockets are not waited for: they are cut with whatever HTTP is left
    let clean = true
    if (this.#inFlight > 0) {
      clean = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), timeoutMs)
        timer.unref()
        this.#drained = () => { clearTimeout(timer); resolve(true) }
      })
    }
    this.server.closeAllConnections()
    for (const s of this.#sockets) s.destroy()
    this.#ws.close()
    await closed
    return clean
  }
}

/**
 * Absolute-form targets (`GET http://other/x`) are reduced to origin-form:
 * the route is still chosen by the Host header and the pool by the routing
 * table, never by the URL. Returns '' for a target that is neither.
 */
function toOriginForm (url: string): string {
  const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/?#]*/.exec(url)
  if (m === null) return ''
  const rest = url.slice(m[0].length)
  return rest.length === 0 || rest.charCodeAt(0) !== 47 ? `/${rest}` : rest
}
