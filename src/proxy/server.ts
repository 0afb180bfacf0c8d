import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import { LRUCache } from 'lru-cache'
import type { Dispatcher } from 'undici'
import type { Logger } from '../logger.js'
import type { ObserverFactory, VersionObserver } from '../metrics/observer.js'
import { hashKey } from '../routing/hash.js'
import type { TableHolder } from '../routing/holder.js'
import { pickVersion } from '../routing/pick.js'
import { readOverride, readStickyKey, stickyCookieHeader } from '../routing/sticky.js'
import { matchPath, normalizeHost, routesForHost } from '../routing/table.js'
import type { Route, RoutingTable } from '../routing/types.js'
import type { Upstreams } from '../upstream/pools.js'
import { ForwardHandler, sendError, type VersionRuntime } from './forward.js'
import { buildUpstreamHeaders, isSecure } from './headers.js'

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
  dropUnderscoreHeaders?: boolean
  maxHeaderSize?: number
}

/** What the hot path reads for one routing table: built on swap, never per request. */
interface Bound {
  readonly table: RoutingTable
  /** [route.index][version.index] */
  readonly runtime: ReadonlyArray<ReadonlyArray<VersionRuntime>>
  /** Host → candidate routes in match order; bounded so random Host headers cannot grow memory. */
  readonly hosts: LRUCache<string, readonly Route[]>
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
  readonly #headerOpts: { dropUnderscoreHeaders: boolean }
  #bound: Bound
  #inFlight = 0
  #draining = false
  #drained: (() => void) | undefined

  constructor (opts: ProxyOptions) {
    this.#opts = opts
    this.#log = opts.logger
    this.#headerOpts = { dropUnderscoreHeaders: opts.dropUnderscoreHeaders ?? true }
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
  }

  /** Builds the per-table bindings: pools, metric children, an empty host cache. */
  #bind (table: RoutingTable): Bound {
    const runtime = table.routes.map((r) => r.versions.map((v): VersionRuntime => {
      const key = `${r.name}\u0000${v.name}`
      let observer = this.#observers.get(key)
      if (observer === undefined) {
        observer = this.#opts.observers.bind(r.name, v.name)
        this.#observers.set(key, observer)
      }
      return Object.freeze({ route: r.name, version: v.name, pool: this.#opts.upstreams.get(v.upstream), observer })
    }))
    this.#opts.observers.setWeights(table.routes.flatMap((r) => r.versions.map((v) => ({ route: r.name, version: v.name, weight: v.weight }))))
    return { table, runtime, hosts: new LRUCache({ max: this.#opts.hostCacheSize ?? 10_000 }) }
  }

  #handle (req: IncomingMessage, res: ServerResponse): void {
    const t0 = performance.now()
    const bound = this.#bound
    const host = normalizeHost(req.headers.host)
    let candidates = bound.hosts.get(host)
    if (candidates === undefined) {
      candidates = routesForHost(bound.table, host)
      bound.hosts.set(host, candidates)
    }
    let url = req.url ?? '/'
    if (url.charCodeAt(0) !== 47 /* / */) url = toOriginForm(url)
    if (url.length === 0) {
      sendError(res, 'CANARYD_ERR_BAD_REQUEST', '')
      return
    }
    const route = matchPath(candidates, url)
    if (route === undefined) {
      sendError(res, 'CANARYD_ERR_NO_ROUTE', '')
      return
    }

    let setCookie = ''
    const ip = req.socket.remoteAddress ?? ''
    let version = readOverride(route, req.headers)
    if (version === undefined) {
      let key = readStickyKey(route, req.headers, url, ip)
      if (key.length === 0) {
        key = randomUUID()
        setCookie = stickyCookieHeader(route, key, isSecure(req))
      }
      version = pickVersion(route, hashKey(route.salt, key))
    }
    if (version === undefined) {
      sendError(res, 'CANARYD_ERR_UPSTREAM_UNAVAILABLE', '')
      return
    }

    const rt = bound.runtime[route.index]![version.index]!
    rt.observer.start()
    this.#inFlight++
    const cl = req.headers['content-length']
    const hasBody = cl !== undefined ? cl !== '0' : req.headers['transfer-encoding'] !== undefined
    const opts: Dispatcher.DispatchOptions = {
      path: url,
      method: req.method ?? 'GET',
      headers: buildUpstreamHeaders(req, version.name, ip, this.#headerOpts),
      body: hasBody ? req : null
    }
    const handler = new ForwardHandler(req, res, rt, setCookie, opts, this.#log, 1)
    res.once('close', () => {
      if (!res.writableFinished) handler.clientClosed()
      // 499 (nginx's "client closed request") when the client left before a status went out
      const status = res.headersSent ? res.statusCode : 499
      const seconds = (performance.now() - t0) / 1000
      rt.observer.finish(status, seconds, handler.upstreamFailed)
      if (this.#opts.accessLog) this.#log.info({ route: rt.route, version: rt.version, method: opts.method, status, ms: Math.round(seconds * 1e4) / 10 }, 'access')
      if (--this.#inFlight === 0 && this.#draining) this.#drained?.()
    })
    handler.dispatch()
  }

  /** Malformed requests never reach an upstream: answer with a JSON 400/408/413/431 and close. */
  #clientError (err: NodeJS.ErrnoException, socket: Socket): void {
    if (!socket.writable || (err.code === 'ECONNRESET')) {
      socket.destroy()
      return
    }
    let status = 400
    let reason = 'Bad Request'
    let code = 'CANARYD_ERR_BAD_REQUEST'
    if (err.code === 'HPE_HEADER_OVERFLOW') { status = 431; reason = 'Request Header Fields Too Large' }
    else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') { status = 408; reason = 'Request Timeout' }
    else if (err.code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW') { status = 413; reason = 'Content Too Large' }
    const body = JSON.stringify({ error: { code, message: `${reason}: ${err.code ?? 'malformed request'}` } })
    socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
    code = ''
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
    return this.server.address() as AddressInfo
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
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.server.closeIdleConnections()
    let clean = true
    if (this.#inFlight > 0) {
      clean = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), timeoutMs)
        timer.unref()
        this.#drained = () => { clearTimeout(timer); resolve(true) }
      })
    }
    this.server.closeAllConnections()
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
