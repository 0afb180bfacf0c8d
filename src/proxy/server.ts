import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createH2Server, type Http2Server, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { performance } from 'node:perf_hooks'
import { LRUCache } from 'lru-cache'
import type { ErrorCode } from '../errors.js'
import type { Logger } from '../logger.js'
import { NOOP_COUNTER, NOOP_MIRROR_OBSERVER, type CounterChild, type ObserverFactory, type SegmentLabels, type VersionObserver } from '../metrics/observer.js'
import { SYNTHETIC_HEADER } from '../metrics/names.js'
import { hashKey } from '../routing/hash.js'
import type { TableHolder } from '../routing/holder.js'
import { mirrorFor } from '../routing/mirror.js'
import { pickFrom, pickVersion } from '../routing/pick.js'
import { matchSegment } from '../routing/segments.js'
import { readOverride, readStickyKey, stickyCookieHeader } from '../routing/sticky.js'
import { hostMatches, matchPath, normalizeHost, routesForHost } from '../routing/table.js'
import type { Route, RoutingTable, Segment } from '../routing/types.js'
import { HealthChecker } from '../upstream/checker.js'
import type { Endpoint } from '../upstream/endpoint.js'
import type { Clock } from '../upstream/group.js'
import { RouteHealth, type OutlierOptions } from '../upstream/health.js'
import type { Upstreams } from '../upstream/pools.js'
import { bodyUnread, ForwardHandler, sendError, type ForwardContext, type VersionRuntime } from './forward.js'
import { buildUpstreamHeaders, hasValidHost, isHttp2, isSecure, type ClientConnection, type RequestFraming, type RequestHeaderOptions } from './headers.js'
import { MirrorSender, type MirrorCopy, type MirrorRuntime } from './mirror.js'
import { endWith, replyOf } from './replies.js'
import { WebSocketProxy } from './websocket.js'

/** Proxy settings taken from the startup config. */
export interface ProxyOptions {
  holder: TableHolder
  upstreams: Upstreams
  observers: ObserverFactory
  logger: Logger
  clientHeadersMs: number
  clientIdleMs: number
  /** Longest client silence while a request body is incomplete; past it 408 (0 = none). Default 30000. */
  clientBodyMs?: number
  /** Longest wait for a client to take more of a response when its buffer is full; past it the response is cut (0 = none). Default 60000. */
  clientSendMs?: number
  accessLog: boolean
  /** Header names with `_`: drop (default), reject with 400, or allow. */
  underscoreHeaders?: 'drop' | 'reject' | 'allow'
  /** Most bytes of request line + headers (llhttp's limit; past it 431). */
  maxHeaderSize?: number
  /** Most request header fields (past it 431). */
  maxHeaderCount?: number
  /** Longest request target (past it 414). */
  maxUrlBytes?: number
  /** Forward TRACE (default false: 405). */
  allowTrace?: boolean
  /**
   * The client address behind a trusted peer: `peer` and the request's
   * X-Forwarded-For (the listener's TrustedProxies.clientAddress). Only
   * called for connections whose info says `trusted`.
   */
  clientAddress?: (peer: string, xff: string | undefined) => string
  /** HTTP/2 limits (SETTINGS): streams per connection, decoded header list bytes. */
  http2?: { maxConcurrentStreams: number, maxHeaderListBytes: number }
  /** The redirect port's answers: the https URL's port (443 is left out) and whether ACME challenges are routed instead. */
  redirect?: { httpsPort: number, acmePassthrough: boolean }
  /** Extra upstream attempts (see ForwardHandler's retry policy); default 1. */
  retries?: number
  /** Request bodies from this size (and chunked ones) go through Node's http client (0 = never); default 65536. */
  largeBodyBytes?: number
  /** Passive outlier detection; default 5 failures, 30 s. */
  outlier?: OutlierOptions
  /** Active health check: `GET checkPath` every `checkIntervalMs` per endpoint ('' = off). */
  checkPath?: string
  checkIntervalMs?: number
  /** Millisecond clock for ejections (tests). */
  now?: Clock
}

/**
 * What the listener knows of a client connection (listener/'s
 * ConnectionInfo, the same shape: the app wires the two).
 */
export interface ConnectionInfo extends ClientConnection {
  /** Accepted on the plain-HTTP redirect port. */
  readonly redirect: boolean
}

/**
 * The client is this host: a loopback address (127.0.0.0/8, ::1, 127.x
 * mapped into IPv6), or the very address it connected to (a listener bound
 * to one interface address is reached from that address). A load test of
 * this process's own. `remote` is the client address (after trusted proxies
 * and PROXY protocol), so a user behind a local proxy is not "this host".
 */
export function ownHostPeer (remote: string | undefined, local: string | undefined): boolean {
  if (remote === undefined) return false
  return remote.startsWith('127.') || remote === '::1' || remote.startsWith('::ffff:127.') || remote === local
}

/** A connection handed to the HTTP/1.1 server some other way (tests, or before the listener tags it): a plain, untrusted peer. */
function plainInfo (socket: Duplex): ConnectionInfo {
  return { secure: false, redirect: false, address: (socket as Socket).remoteAddress ?? '', trusted: false }
}

/**
 * An ACME HTTP-01 challenge (RFC 8555 §8.3): the prefix and one base64url
 * token, nothing else. Routed, not redirected, on the redirect port; a
 * looser prefix match would let `/.well-known/acme-challenge/../admin`
 * reach an upstream that normalises dot-segments over plain HTTP.
 */
const ACME_PATH = /^\/\.well-known\/acme-challenge\/[A-Za-z0-9_-]+$/

/** What the hot path reads for one routing table: built on swap, never per request. */
interface Bound {
  readonly table: RoutingTable
  /** [route.index][version.index] */
  readonly runtime: ReadonlyArray<ReadonlyArray<VersionRuntime>>
  /**
   * Raw Host header value → candidate routes in match order; bounded so random
   * Host headers cannot grow memory. A Host that matches no host-specific
   * route maps to the shared `anyHost` array (nothing allocated per Host).
   */
  readonly hosts: LRUCache<string, readonly Route[]>
  /** The routes without `match.host`, in match order: the candidates of every Host no host-specific route matches. */
  readonly anyHost: readonly Route[]
  /** No route has `match.host`: every request's candidates are `anyHost`, no Host lookup at all. */
  readonly hostless: boolean
  /** [route.index]: outlier state of the route's versions. */
  readonly health: readonly RouteHealth[]
  /** [route.index][segment.index][version.index]: canaryd_segment_requests_total children (empty for a route without segments). */
  readonly segments: ReadonlyArray<ReadonlyArray<readonly CounterChild[]>>
  /** [route.index]: the route's mirror bindings, undefined when it has no mirror. */
  readonly mirrors: ReadonlyArray<MirrorRuntime | undefined>
}

const REPLY_400 = replyOf('CANARYD_ERR_BAD_REQUEST')
const REPLY_408 = replyOf('CANARYD_ERR_REQUEST_TIMEOUT')
const REPLY_431 = replyOf('CANARYD_ERR_HEADERS_TOO_LARGE')

/**
 * Pipelined requests waiting on one connection past which the proxy stops
 * reading from it (Node's parser would otherwise turn a stream of pipelined
 * bytes into an unbounded queue while the first request is slow); reading
 * resumes when the queue is down to `PIPELINE_RESUME`.
 */
const PIPELINE_PAUSE = 32
const PIPELINE_RESUME = 8

/** What arrived on a connection while another request of it was being handled. */
type Queued =
  | { kind: 'request', req: IncomingMessage, res: ServerResponse }
  | { kind: 'expect', req: IncomingMessage, res: ServerResponse }
  | { kind: 'upgrade', req: IncomingMessage, socket: Duplex, head: Buffer }
  | { kind: 'connect', socket: Duplex }

/**
 * One client connection's pipeline state, made on accept and kept on its
 * socket. HTTP/1.1 lets a client send requests before the answers to earlier
 * ones; Node parses them all and emits every one at once. The proxy instead
 * handles a connection's requests strictly one at a time, in order (as
 * nginx does): the next is routed and dispatched only when the previous
 * response has closed. So one connection never holds more than one upstream
 * slot, a refused request stops everything behind it before a byte of it
 * is sent, and a malformed tail is answered after the requests before it.
 */
class Connection {
  constructor (info: ConnectionInfo) {
    this.info = info
  }

  /** TLS or not, client address, trusted hop: fixed when the connection was accepted. */
  readonly info: ConnectionInfo
  /** A request of this connection is being handled, until its response closes. */
  active = false
  /** The request being handled (for the clientError decision), and its response. */
  req: IncomingMessage | undefined = undefined
  res: ServerResponse | undefined = undefined
  /** Requests that arrived while one was active, oldest first (undefined until the first). */
  queue: Queued[] | undefined = undefined
  /** Nothing more is processed: a refusal ended the connection, or it is gone. */
  closed = false
  /** llhttp failed on this connection (later clientError calls repeat the same failure). */
  failed = false
  /** The raw error reply owed once the requests queued before a parse error are answered. */
  owed: string | undefined = undefined
  /** The proxy paused reading because the queue is long. */
  paused = false
}

/** Marks a request that expects 100-continue: #handle sends the 100 once the request is accepted. */
const kContinue = Symbol('canaryd.continue')

/** The socket property holding its Connection (a symbol: no clash with Node's own fields). */
const kConn = Symbol('canaryd.connection')
type ConnSocket = Duplex & { [kConn]?: Connection, _paused?: boolean, parser?: { resume: () => void } | null }

/** An HTTP/2 session's ConnectionInfo (set when the session starts). */
const kInfo = Symbol('canaryd.connectionInfo')
/** How many of an HTTP/2 session's requests reached the proxy and are not closed yet. */
const kActive = Symbol('canaryd.activeStreams')
type InfoSession = ServerHttp2Session & { [kInfo]?: ConnectionInfo, [kActive]?: number }

/** After an idle session's GOAWAY, how long a stream the proxy never saw may hold it (see the session timeout). */
const H2_IDLE_GRACE_MS = 1000

/** Most distinct Host values whose route candidates are cached per table (bounds memory under random Hosts). */
const HOST_CACHE_SIZE = 10_000

/** The outcome of routing one request, in a scratch object reused by every request (single-threaded, used synchronously). */
interface Selection {
  rt: VersionRuntime | undefined
  /** The endpoint the version's balancer chose. */
  ep: Endpoint | undefined
  /** The sticky key's hash (0 when the override chose the version): the hash balancer's key, kept for a retry's pick. */
  hash: number
  url: string
  setCookie: string
  /** The client address (the `ip` sticky key, the access log). */
  ip: string
  /** The route matched (its mirror is looked at after routing). */
  route: Route | undefined
}

/**
 * The proxy: node:http and node:http2 in front, undici pools behind. The
 * listener (listener/) accepts connections and hands each to the HTTP/1.1
 * server (`acceptHttp1`) or the HTTP/2 one (`acceptHttp2`); neither server
 * listens itself. A request reads the bound table once, picks its route
 * (Host or :authority, then longest pathPrefix), its version (override, else
 * sticky key → weighted rendezvous hash) and streams through the version's
 * pool, over HTTP/1.1 whatever the client spoke. Nothing here knows about
 * the admin API or rollouts; it only follows the TableHolder.
 */
export class ProxyServer {
  /** The HTTP/1.1 server (fed by acceptHttp1). */
  readonly server: Server
  /** The HTTP/2 server (fed by acceptHttp2). */
  readonly #h2: Http2Server
  /** HTTP/2 sessions open now: told to go away on drain. */
  readonly #sessions = new Set<ServerHttp2Session>()
  /** The info of the connection acceptHttp2 is handing over (the session is made synchronously inside). */
  #nextInfo: ConnectionInfo | undefined
  readonly #clientAddress: (peer: string, xff: string | undefined) => string
  #redirectPort: number
  readonly #acme: boolean
  readonly #opts: ProxyOptions
  readonly #log: Logger
  readonly #observers = new Map<string, VersionObserver>()
  readonly #headerOpts: RequestHeaderOptions
  readonly #outlier: OutlierOptions
  readonly #now: Clock
  readonly #maxHeaderCount: number
  readonly #maxUrlBytes: number
  readonly #allowTrace: boolean
  readonly #retries: number
  readonly #sel: Selection = { rt: undefined, ep: undefined, hash: 0, url: '', setCookie: '', ip: '', route: undefined }
  readonly #framing: RequestFraming = { contentLength: undefined, chunked: false }
  readonly #ctx: ForwardContext
  readonly #ws: WebSocketProxy
  readonly #checker: HealthChecker
  /** Mirrored copies: their gates, the copies in flight (never part of the drain). */
  readonly #mirrors = new MirrorSender()
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
    this.#allowTrace = opts.allowTrace ?? false
    this.#retries = opts.retries ?? 1
    this.#clientAddress = opts.clientAddress ?? ((peer) => peer)
    this.#redirectPort = opts.redirect?.httpsPort ?? 443
    this.#acme = opts.redirect?.acmePassthrough ?? true
    this.#ctx = { log: this.#log, retries: this.#retries, clientBodyMs: opts.clientBodyMs ?? 30_000, clientSendMs: opts.clientSendMs ?? 60_000, largeBodyBytes: opts.largeBodyBytes ?? 65_536, done: this.#requestDone, draining: false }
    this.#ws = new WebSocketProxy(this.#log)
    this.#checker = new HealthChecker({
      path: opts.checkPath ?? '',
      intervalMs: opts.checkIntervalMs ?? 5000,
      targets: () => this.#bound.health,
      onEject: (route, version) => { this.#observers.get(`${route}\u0000${version}`)?.ejected() },
      log: this.#log
    })
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
      // checked in #handle instead: Node's own 400 has no JSON body and does not stop the pipeline behind it
      requireHostHeader: false
    }, (req, res) => { this.#onRequest(req, res) })
    // the server never listens (the listener hands it sockets), but Node
    // starts its connection tracking (headersTimeout checks,
    // closeIdleConnections) on 'listening'
    this.server.emit('listening')
    this.server.on('connection', (socket: Socket) => { this.#accepted(socket) })
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => { this.#clientError(err, socket) })
    // Node takes any Expect whose value merely contains `100-continue`
    // (`100-continue-x`, `foo, 100-continue`) as 100-continue: only the exact
    // expectation is one we meet; the rest are refused like any other
    this.server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
      if (req.headers.expect?.trim().toLowerCase() === '100-continue') {
        // 100 Continue only once the request is accepted and its turn has come (see #handle)
        ;(req as IncomingMessage & { [kContinue]?: true })[kContinue] = true
        this.#onRequest(req, res)
        return
      }
      this.#expectationFailed(req, res)
    })
    // Node would answer 417 itself but keep the connection, reading the unsent body as the next request
    this.server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => { this.#expectationFailed(req, res) })
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on('error', () => { socket.destroy() })
      // Node has handed the socket over: its socketOnDrain (called by every
      // response still written on it) must not resume it before http-proxy pipes it
      ;(socket as ConnSocket)._paused = false
      this.#arrive(socket, { kind: 'upgrade', req, socket, head })
    })
    // CONNECT would turn the proxy into an open TCP tunnel: refused. Node removed
    // its own socket 'error' listener before emitting 'connect': without ours a
    // client reset while the 501 is written would crash the process
    this.server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
      socket.on('error', () => { socket.destroy() })
      this.#arrive(socket, { kind: 'connect', socket })
    })
    const h2 = opts.http2 ?? { maxConcurrentStreams: 128, maxHeaderListBytes: 32768 }
    this.#h2 = createH2Server({
      settings: { maxConcurrentStreams: h2.maxConcurrentStreams, maxHeaderListSize: h2.maxHeaderListBytes },
      // a backstop only: browsers split cookies into one field per crumb (RFC 9113 §8.2.3), which
      // #handle counts as one, as over HTTP/1.1; the bytes are bounded by maxHeaderListSize
      maxHeaderListPairs: 2 * (opts.maxHeaderCount ?? 100) + 4,
      // streams refused at creation, and invalid frames, per session before it is closed. Rapid reset
      // (CVE-2023-44487) itself is bounded by nghttp2's RST_STREAM rate limit (GOAWAY after ~1,000)
      maxSessionRejectedStreams: 100,
      maxSessionInvalidFrames: 1000
    }, (req, res) => { this.#onH2Request(req, res) })
    this.#h2.on('session', (session: InfoSession) => {
      session[kInfo] = this.#nextInfo
      this.#sessions.add(session)
      // an idle session (no frame either way) is closed as an idle keep-alive connection is; close() lets open streams finish
      session.setTimeout(opts.clientIdleMs, () => { this.#idleSession(session) })
      session.on('close', () => { this.#sessions.delete(session) })
      session.on('error', () => { session.destroy() })
      if (this.#draining) session.close()
    })
    // a stream-level failure (the client reset it, a protocol error) ends that request only; its response 'close' does the accounting
    this.#h2.on('streamError', () => {})
    // CONNECT (a tunnel) is refused as over HTTP/1.1 (Node would answer a bare 405 without this listener)
    this.#h2.on('connect', (_req: Http2ServerRequest, res: Http2ServerResponse) => { this.#answer(res as unknown as ServerResponse, 'CANARYD_ERR_NOT_IMPLEMENTED') })
    // Expect as over HTTP/1.1: 100 Continue only once the request is accepted (Node would send it before routing), other expectations 417 JSON
    this.#h2.on('checkContinue', (req: Http2ServerRequest, res: Http2ServerResponse) => {
      ;(req as unknown as { [kContinue]?: true })[kContinue] = true
      this.#onH2Request(req, res)
    })
    this.#h2.on('checkExpectation', (_req: Http2ServerRequest, res: Http2ServerResponse) => { this.#answer(res as unknown as ServerResponse, 'CANARYD_ERR_EXPECTATION_FAILED') })
  }

  /**
   * A session with no frame either way for clientIdleMs: GOAWAY, and open
   * streams finish (each bounded by its own timeouts). When none of them is
   * a request the proxy saw, what holds the session is a HEADERS block that
   * never ended (a slowloris) or a peer nghttp2 stopped reading after a
   * protocol error: it is cut after a short grace.
   */
  #idleSession (session: InfoSession): void {
    session.close()
    if ((session[kActive] ?? 0) !== 0) return
    setTimeout(() => { if (!session.destroyed) session.destroy() }, H2_IDLE_GRACE_MS).unref()
  }

  /** An accepted HTTP/1.1 connection (plain, TLS, or the redirect port's) from the listener. */
  acceptHttp1 (socket: Duplex, info: ConnectionInfo): void {
    ;(socket as ConnSocket)[kConn] = new Connection(info)
    this.server.emit('connection', socket)
  }

  /** An accepted HTTP/2 connection (ALPN h2, or an h2c preface) from the listener. */
  acceptHttp2 (socket: Duplex, info: ConnectionInfo): void {
    this.#nextInfo = info
    this.#h2.emit('connection', socket)
    this.#nextInfo = undefined
  }

  /** An Expect we do not meet: 417, in its turn on the connection (a refusal: the connection then closes). */
  #expectationFailed (req: IncomingMessage, res: ServerResponse): void {
    this.#arrive(req.socket, { kind: 'expect', req, res })
  }

  /**
   * An arrival other than a plain request (417, upgrade, CONNECT): handled
   * now, or queued behind the connection's active request; ignored (a
   * handed-over socket destroyed) once the connection is closing. A socket
   * Node handed over is no longer read by Node, so while it waits its turn
   * it is watched for the client leaving.
   */
  #arrive (socket: Duplex, item: Queued): void {
    const conn = this.#conn(socket)
    const handedOver = item.kind === 'upgrade' || item.kind === 'connect'
    if (conn.closed || conn.failed) {
      if (handedOver) socket.destroy()
      return
    }
    if (!conn.active) {
      this.#run(conn, item)
      return
    }
    if (handedOver) watchLeaving(socket)
    this.#enqueue(conn, socket, item)
  }

  /** A client connection reached the HTTP/1.1 server: give it its pipeline state (acceptHttp1 made it already). */
  #accepted (socket: Socket): void {
    const s0 = socket as ConnSocket
    const conn = s0[kConn] ??= new Connection(plainInfo(socket))
    // Node's socketOnDrain resumes any socket whose _paused is set: keep ours paused
    socket.on('resume', () => {
      const s = socket as ConnSocket
      if (conn.paused && s.parser != null) {
        s._paused = true
        ;(s.parser as unknown as { pause: () => void }).pause()
        s.pause()
      }
    })
  }

  /** The socket's pipeline state (made here for a socket handed to the server some other way). */
  #conn (socket: Duplex): Connection {
    const s = socket as ConnSocket
    s[kConn] ??= new Connection(plainInfo(socket))
    return s[kConn]
  }

  /** A parsed request: handled now, or queued behind the connection's active one. */
  #onRequest (req: IncomingMessage, res: ServerResponse): void {
    const socket = req.socket
    const conn = this.#conn(socket)
    // after a refusal or a client error nothing on this connection is processed: it is closing
    if (conn.closed || conn.failed) return
    if (conn.active) {
      this.#enqueue(conn, socket, { kind: 'request', req, res })
      return
    }
    conn.active = true
    conn.req = req
    conn.res = res
    this.#handle(req, res, conn.info, false)
  }

  /**
   * An HTTP/2 request (Node's compatibility API: the same request/response
   * surface as HTTP/1.1, so one #handle serves both). `:authority` stands
   * for Host, as RFC 9113 §8.3.1 says; streams need no pipeline queue.
   */
  #onH2Request (req: Http2ServerRequest, res: Http2ServerResponse): void {
    const session = req.stream.session as InfoSession | undefined
    const info = session?.[kInfo] ?? H2_PLAIN
    if (session !== undefined) {
      session[kActive] = (session[kActive] ?? 0) + 1
      res.once('close', () => { session[kActive]!-- })
    }
    const headers = req.headers
    const authority = headers[':authority']
    if (authority !== undefined) {
      // a Host besides :authority must name the same thing, or the upstream and we could disagree on it
      if (headers.host !== undefined && headers.host !== authority) {
        this.#answer(res as unknown as ServerResponse, 'CANARYD_ERR_INVALID_HOST')
        return
      }
      headers.host = authority
    } else if (headers.host === undefined) {
      this.#answer(res as unknown as ServerResponse, 'CANARYD_ERR_INVALID_HOST')
      return
    }
    this.#handle(req as unknown as IncomingMessage, res as unknown as ServerResponse, info, true)
  }

  #enqueue (conn: Connection, socket: Duplex, item: Queued): void {
    const q = conn.queue ??= []
    q.push(item)
    if (q.length >= PIPELINE_PAUSE && !conn.paused) {
      // the way Node itself pauses a connection whose answers are not read:
      // `_paused` keeps Node's body reads from resuming it, and Node pauses
      // the parser after the current chunk. Node's own drain handling resumes
      // it again on every response write: the 'resume' listener set in
      // #accepted pauses it back while the queue is long
      const s = socket as ConnSocket
      conn.paused = true
      s._paused = true
      s.pause()
    }
  }

  /**
   * The connection's active request is over (its response closed): run the
   * next queued one, or, when a refusal or the client ended the connection,
   * drop the queue: nothing behind a refusal is ever routed or forwarded.
   */
  #next (socket: Duplex): void {
    const conn = (socket as ConnSocket)[kConn]
    if (conn === undefined) return
    conn.active = false
    conn.req = undefined
    conn.res = undefined
    if (conn.closed) return
    if (socket.destroyed || socket.writableEnded) {
      conn.closed = true
      conn.queue = undefined
      return
    }
    const q = conn.queue
    if (q !== undefined && q.length !== 0) {
      const item = q.shift()!
      if (conn.paused && q.length <= PIPELINE_RESUME) {
        const s = socket as ConnSocket
        conn.paused = false
        if (s._paused === true) {
          s._paused = false
          if (s.parser != null) {
            s.parser.resume()
            s.resume()
          }
        }
      }
      this.#run(conn, item)
      return
    }
    if (conn.owed !== undefined) {
      // the requests before the bytes llhttp refused are all answered: now the refusal
      conn.closed = true
      endWith(socket, conn.owed)
    }
  }

  /** Handles one arrival as the connection's active request. */
  #run (conn: Connection, item: Queued): void {
    conn.active = true
    switch (item.kind) {
      case 'request':
        conn.req = item.req
        conn.res = item.res
        this.#handle(item.req, item.res, conn.info, false)
        return
      case 'expect':
        conn.req = item.req
        conn.res = item.res
        this.#answer(item.res, 'CANARYD_ERR_EXPECTATION_FAILED')
        return
      case 'upgrade':
        // an upgrade ends HTTP on this connection either way (Node stopped parsing it)
        conn.closed = true
        if (stopWatching(item.socket)) return
        this.#upgrade(item.req, item.socket, item.head, conn.info)
        return
      case 'connect':
        conn.closed = true
        if (stopWatching(item.socket)) return
        endWith(item.socket, replyOf('CANARYD_ERR_NOT_IMPLEMENTED'))
    }
  }

  /** Answers a request with a proxy-made error before any version is charged; the pipeline goes on when it closes. */
  #answer (res: ServerResponse, code: ErrorCode): void {
    if (isHttp2(res.req)) {
      sendError(res, code, '')
      return
    }
    // the socket now: Node unsets req.socket once the exchange is over
    const socket = res.req.socket
    res.on('close', () => { this.#next(socket) })
    sendError(res, code, '')
  }

  /**
   * Builds the per-table bindings: endpoint groups (pools made here, never
   * per request; groups kept when a version's endpoints are unchanged),
   * metric children, an empty host cache. State outside the table (metric
   * children, groups, endpoints, pools) is then bounded to what this table
   * holds: what a reload removed is dropped, and pools nobody dials close
   * once their requests in flight are done.
   */
  #bind (table: RoutingTable): Bound {
    const upstreams = this.#opts.upstreams
    const groups = table.routes.map((r) => r.versions.map((v) => upstreams.group(r.name, v.name, v.spec, v.endpointsKey)))
    upstreams.commit()
    const health = table.routes.map((r) => new RouteHealth(groups[r.index]!, r.active.map((v) => v.index), this.#outlier, this.#now))
    const live = new Set<string>()
    const runtime = table.routes.map((r) => r.versions.map((v): VersionRuntime => {
      const key = `${r.name}\u0000${v.name}`
      live.add(key)
      let observer = this.#observers.get(key)
      if (observer === undefined) {
        observer = this.#opts.observers.bind(r.name, v.name)
        this.#observers.set(key, observer)
      }
      return Object.freeze({ route: r.name, version: v.name, index: v.index, group: groups[r.index]![v.index]!, health: health[r.index]!, observer })
    }))
    for (const key of this.#observers.keys()) {
      if (live.has(key)) continue
      this.#observers.delete(key)
      const [route, version] = key.split('\u0000') as [string, string]
      this.#opts.observers.unbind?.(route, version)
    }
    const factory = this.#opts.observers
    factory.setWeights(table.routes.flatMap((r) => r.versions.map((v) => ({ route: r.name, version: v.name, weight: v.weight }))))
    // every (route, segment, version) child exists from the bind on, at 0; a segment or version the table dropped leaves
    const labels: SegmentLabels[] = []
    for (const r of table.routes) for (const seg of r.segments) for (const v of r.versions) labels.push({ route: r.name, segment: seg.name, version: v.name })
    const children = factory.bindSegments?.(labels) ?? labels.map(() => NOOP_COUNTER)
    let next = 0
    const segments = table.routes.map((r) => Object.freeze(r.segments.map(() => Object.freeze(r.versions.map(() => children[next++]!)))))
    const mirrored = table.routes.filter((r) => r.mirror !== undefined).map((r) => ({ route: r.name, version: r.mirror!.version.name }))
    const mirrorObservers = factory.bindMirrors?.(mirrored) ?? mirrored.map(() => NOOP_MIRROR_OBSERVER)
    const mirrors = this.#mirrors.bind(table.routes, (r, vi) => groups[r.index]![vi]!, mirrorObservers)
    const anyHost = Object.freeze(table.matchOrder.filter((r) => r.host === undefined))
    return { table, runtime, hosts: new LRUCache({ max: HOST_CACHE_SIZE }), anyHost, hostless: anyHost.length === table.matchOrder.length, health, segments, mirrors }
  }

  /** Healthy and ejected endpoints per (route, version) of the table in force (canaryd_upstream_endpoints). */
  endpointStates (): Array<{ route: string, version: string, healthy: number, ejected: number }> {
    return this.#bound.runtime.flatMap((versions) => versions.map((rt) => ({ route: rt.route, version: rt.version, ...rt.group.counts() })))
  }

  /**
   * Routes a request: route by Host then path, version by override, else
   * by the first segment whose match holds (the segment's own weights), else
   * sticky key → weighted rendezvous hash over the versions not ejected.
   * Fills the reused `#sel` and returns undefined, or returns the error code.
   */
  #select (req: IncomingMessage, bound: Bound, info: ConnectionInfo): ErrorCode | undefined {
    const sel = this.#sel
    let candidates = bound.anyHost
    if (!bound.hostless) {
      // keyed by the raw value: normalising (and any allocation) only on a miss
      const raw = req.headers.host ?? ''
      const hit = bound.hosts.get(raw)
      if (hit !== undefined) {
        candidates = hit
      } else {
        candidates = candidatesFor(bound, normalizeHost(raw))
        bound.hosts.set(raw, candidates)
      }
    }
    let url = req.url ?? '/'
    if (url.length > this.#maxUrlBytes) return 'CANARYD_ERR_URI_TOO_LONG'
    if (url.charCodeAt(0) !== 47 /* / */) url = toOriginForm(url)
    if (url.length === 0) return 'CANARYD_ERR_BAD_REQUEST'
    const route = matchPath(candidates, url)
    if (route === undefined) return 'CANARYD_ERR_NO_ROUTE'

    sel.setCookie = ''
    sel.url = url
    sel.route = route
    // behind a trusted proxy the client is the first untrusted hop of X-Forwarded-For; else the peer (or the PROXY header's source)
    const ip = sel.ip = info.trusted ? this.#clientAddress(info.address, req.headers['x-forwarded-for'] as string | undefined) : info.address
    // an explicit override pins the version, ejected or not: the tester asked for it
    let version = readOverride(route, req.headers)
    let hash = 0
    if (version === undefined) {
      let key = readStickyKey(route, req.headers, url, ip)
      if (key.length === 0) {
        key = randomUUID()
        sel.setCookie = stickyCookieHeader(route, key, info.secure || (info.trusted && isSecure(req)))
      }
      hash = hashKey(route.salt, key)
      const excluded = bound.health[route.index]!.excluded()
      let seg: Segment | undefined
      // a route without segments pays this one length check
      if (route.segments.length === 0 || (seg = matchSegment(route, req.headers, url, ip)) === undefined) {
        version = pickVersion(route, hash, excluded)
        // every candidate ejected (weights changed since): fall back to plain weights, never to nothing
        if (version === undefined && excluded !== 0) version = pickVersion(route, hash)
        if (version === undefined) return 'CANARYD_ERR_UPSTREAM_UNAVAILABLE'
      } else {
        // the segment's versions all ejected: the route's own pick, as for anyone else
        version = pickFrom(seg.active, hash, excluded) ?? pickVersion(route, hash, excluded) ?? pickVersion(route, hash)
        if (version === undefined) return 'CANARYD_ERR_UPSTREAM_UNAVAILABLE'
        bound.segments[route.index]![seg.index]![version.index]!.inc()
      }
    }
    const rt = sel.rt = bound.runtime[route.index]![version.index]!
    const group = rt.group
    if (hash === 0 && group.balance === 'hash') {
      // the override chose the version: the hash balancer still keys the endpoint by the user
      const key = readStickyKey(route, req.headers, url, ip)
      // no key to keep: spread like any new user instead of always the same endpoint
      hash = key.length !== 0 ? hashKey(route.salt, key) : (Math.random() * 4294967296) >>> 0
    }
    // a version picked with every endpoint out (the last one standing, or the
    // override's choice) is still served: better a chance than a certain 503
    const ep = group.pick(hash) ?? group.pickAny(hash)
    if (ep === undefined) return 'CANARYD_ERR_UPSTREAM_UNAVAILABLE'
    sel.ep = ep
    sel.hash = hash
    return undefined
  }

  #handle (req: IncomingMessage, res: ServerResponse, info: ConnectionInfo, h2: boolean): void {
    const t0 = performance.now()
    if (this.#draining) res.shouldKeepAlive = false // answer, then close: the listener is going away
    // HTTP/2's :method, :path and :scheme are the request line, not fields (:authority counts, as Host
    // does), and cookie crumbs are one field (the exact count only past the quick bound)
    if (req.rawHeaders.length > (this.#maxHeaderCount + (h2 ? 3 : 0)) * 2 && (!h2 || h2Fields(req.rawHeaders) > this.#maxHeaderCount + 3)) {
      this.#answer(res, 'CANARYD_ERR_HEADERS_TOO_LARGE')
      return
    }
    // llhttp accepts `HTTP/0.9` and `HTTP/2.0` request lines; real HTTP/2 comes through #onH2Request
    if (req.httpVersionMajor !== 1 && !h2) {
      this.#answer(res, 'CANARYD_ERR_BAD_REQUEST')
      return
    }
    // HTTP/1.1 requires Host (RFC 9112 §3.2); 1.0 may omit it. A value that is not
    // a plain authority is refused before it can pick a route or reach a log
    if (!hasValidHost(req)) {
      this.#answer(res, 'CANARYD_ERR_INVALID_HOST')
      return
    }
    if (info.redirect && !(this.#acme && ACME_PATH.test(req.url ?? ''))) {
      this.#redirect(req, res, info)
      return
    }
    if (req.method === 'TRACE' && !this.#allowTrace) {
      this.#answer(res, 'CANARYD_ERR_METHOD_NOT_ALLOWED')
      return
    }
    const bound = this.#bound
    const problem = this.#select(req, bound, info)
    if (problem !== undefined) {
      const check = buildUpstreamHeaders(req, h2, '', info, '', this.#headerOpts)
      this.#answer(res, typeof check === 'string' ? check : problem)
      return
    }
    const sel = this.#sel
    const rt = sel.rt!
    // from here the request is charged to its version: refusals (400/501), the overload 503, upstream answers.
    // The source label costs one lookup in the header object #select already built (Host), nothing else.
    // Only this host's header counts (the load generator sends to its own listener): a client
    // elsewhere cannot take its requests out of the judge's view by marking them. The client
    // address, not the socket's peer: behind trusted proxies or PROXY protocol it is the user's
    const synthetic = req.headers[SYNTHETIC_HEADER] === '1' && ownHostPeer(sel.ip, req.socket.localAddress)
    const handler = new ForwardHandler(req, res, rt, sel.ep!, sel.hash, sel.setCookie, t0, this.#ctx, h2, synthetic)
    if (this.#opts.accessLog) handler.client = sel.ip
    this.#inFlight++
    const framing = this.#framing
    const headers = buildUpstreamHeaders(req, h2, rt.version, info, sel.ip, this.#headerOpts, framing)
    if (typeof headers === 'string') {
      handler.refuse(headers)
      return
    }
    // a route without a mirror pays this one check; a copy with a body starts collecting it before anything reads the body.
    // A load test's request is never copied: it reaches each version itself, and its copy would be judged as a user's
    const copy = sel.route!.mirror === undefined || synthetic ? undefined : this.#mirror(req, bound, rt, headers, handler)
    // the client holds its body until told to send it: never for a request we refuse
    if ((req as IncomingMessage & { [kContinue]?: true })[kContinue] === true) res.writeContinue()
    handler.forward(sel.url, headers, framing.contentLength, framing.chunked)
    // the user's request goes first; the copy after it (a bodyless one now, else once the body is complete)
    copy?.arm()
  }

  /**
   * The mirror decision for a routed request (routing/mirror.ts, with a
   * uniform draw in [0, 1e6)) and, when it says so, the copy's start. The
   * handler is told of the copy when the copy needs the user's side: its
   * body is still arriving, or a shadow pair is listened for.
   */
  #mirror (req: IncomingMessage, bound: Bound, rt: VersionRuntime, headers: readonly string[], handler: ForwardHandler): MirrorCopy | undefined {
    if (this.#draining) return undefined
    const sel = this.#sel
    const route = sel.route!
    const m = mirrorFor(route, req.method ?? 'GET', Math.floor(Math.random() * 1_000_000), route.versions[rt.index]!)
    if (m === undefined) return undefined
    const copy = this.#mirrors.begin(bound.mirrors[route.index]!, req, rt.version, sel.url, headers, this.#framing, sel.hash)
    if (copy !== undefined && copy.wantsPrimary) handler.mirror = copy
    return copy
  }

  /** Called by each ForwardHandler when its client response closed (after the version's metrics). */
  readonly #requestDone = (h: ForwardHandler, status: number, seconds: number): void => {
    // a mirrored request: the user's half of its shadow pair (or the end of a body its copy still waited for)
    if (h.mirror !== undefined) h.mirror.primaryDone(status, seconds, h.upstreamFailed)
    if (this.#opts.accessLog) {
      const rt = h.runtime
      this.#log.info({ route: rt.route, version: rt.version, method: h.method, status, ms: Math.round(seconds * 1e4) / 10, client: h.client }, 'access')
    }
    if (--this.#inFlight === 0 && this.#draining) this.#drained?.()
    if (h.socket !== undefined) this.#next(h.socket)
  }

  /**
   * The redirect port's answer: 308 (method and body kept, RFC 9110 §15.4.9)
   * to the same host and target over https. The Host was validated, so it
   * cannot inject anything into Location; an HTTP/1.0 request without one
   * has no URL to send it to.
   */
  #redirect (req: IncomingMessage, res: ServerResponse, info: ConnectionInfo): void {
    const host = req.headers.host
    if (host === undefined) {
      this.#answer(res, 'CANARYD_ERR_INVALID_HOST')
      return
    }
    // the same refusals as on the main port (a repeated Host, smuggling-shaped framing): the header pass is the one check
    const problem = buildUpstreamHeaders(req, false, '', info, '', this.#headerOpts)
    if (typeof problem === 'string') {
      this.#answer(res, problem)
      return
    }
    const url = req.url ?? '/'
    if (url.length > this.#maxUrlBytes) {
      this.#answer(res, 'CANARYD_ERR_URI_TOO_LONG')
      return
    }
    const socket = req.socket
    res.on('close', () => { this.#next(socket) })
    const headers = ['location', redirectLocation(host, this.#redirectPort, url), 'content-length', '0', 'cache-control', 'no-store']
    // a body nobody will read: close after the answer rather than drain it for as long as the client sends
    if (bodyUnread(req)) headers.push('connection', 'close')
    res.writeHead(308, 'Permanent Redirect', headers)
    res.end()
  }

  /**
   * `Upgrade` requests (Node hands them over with the raw socket). Only
   * WebSocket is proxied, through http-proxy, to the version the same sticky
   * rules pick; `h2c` and anything else get 400 (no 101 ever reaches the
   * client unless the upstream itself switched protocols).
   */
  #upgrade (req: IncomingMessage, socket: Duplex, head: Buffer, info: ConnectionInfo): void {
    if (this.#draining) {
      endWith(socket, replyOf('CANARYD_ERR_UPSTREAM_UNAVAILABLE'))
      return
    }
    if (req.headers.upgrade?.toLowerCase() !== 'websocket' || req.method !== 'GET') {
      endWith(socket, REPLY_400)
      return
    }
    if (req.rawHeaders.length > this.#maxHeaderCount * 2) {
      endWith(socket, REPLY_431)
      return
    }
    if (!hasValidHost(req) || (info.redirect && req.headers.host === undefined)) {
      endWith(socket, replyOf('CANARYD_ERR_INVALID_HOST'))
      return
    }
    if (info.redirect) {
      // ws:// on the redirect port: the client is told where wss:// is, as for any request
      endWith(socket, `HTTP/1.1 308 Permanent Redirect\r\nlocation: ${redirectLocation(req.headers.host!, this.#redirectPort, req.url ?? '/')}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`)
      return
    }
    const problem = this.#select(req, this.#bound, info)
    if (problem !== undefined) {
      endWith(socket, replyOf(problem))
      return
    }
    const sel = this.#sel
    const rt = sel.rt!
    const headers = buildUpstreamHeaders(req, false, rt.version, info, sel.ip, this.#headerOpts)
    if (typeof headers === 'string') {
      endWith(socket, replyOf(headers))
      return
    }
    this.#ws.forward(req, socket, head, sel.url, headers, rt, sel.ep!)
  }

  /**
   * Requests llhttp cannot parse (bad framing, invalid characters, oversized
   * or slow headers) never reach an upstream: answer a JSON 400/408/431 and
   * close the connection, since its framing can no longer be trusted. The
   * requests the client sent before the bad bytes are answered first, in
   * order (a pipeline GET, GET, garbage gets 200, 200, 400, as from nginx);
   * the one whose own body failed to parse cannot be, and is cut.
   */
  #clientError (err: NodeJS.ErrnoException, socket: Socket): void {
    const conn = this.#conn(socket)
    // llhttp stays failed: more bytes from the client report the same error again
    if (conn.failed) return
    conn.failed = true
    if (!socket.writable || err.code === 'ECONNRESET' || conn.closed) {
      conn.closed = true
      socket.destroy()
      return
    }
    let reply = REPLY_400
    if (err.code === 'HPE_HEADER_OVERFLOW') reply = REPLY_431
    else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') reply = REPLY_408
    this.#log.debug({ code: err.code }, 'malformed request refused')
    const q = conn.queue
    if (q !== undefined && q.length !== 0) {
      // the last request parsed is the one whose body broke: it never runs
      const last = q[q.length - 1]!
      if ((last.kind === 'request' || last.kind === 'expect') && !last.req.complete) q.pop()
    }
    if (conn.active) {
      if (conn.req !== undefined && !conn.req.complete) {
        // the active request's own body is what failed: it cannot finish
        conn.closed = true
        if (conn.res !== undefined && conn.res.headersSent) socket.destroy()
        else endWith(socket, reply)
        return
      }
      conn.owed = reply
      return
    }
    if (q !== undefined && q.length !== 0) {
      conn.owed = reply
      return
    }
    // nothing in flight: every earlier response on this connection is complete
    conn.closed = true
    endWith(socket, reply)
  }

  /** The port written in redirect-port answers (https; 443 is left out): set once the listener knows its own. */
  setHttpsPort (port: number): void {
    this.#redirectPort = port
  }

  /** Starts the active health checks (once the listener is up). */
  start (): void {
    this.#checker.start()
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
    this.#ctx.draining = true
    this.#checker.stop()
    // copies hold no drain: abandoned at once (a hanging mirror target must not hold a shutdown either)
    this.#mirrors.close()
    this.server.closeIdleConnections()
    // HTTP/2: GOAWAY; streams already open finish, new ones go to a new connection
    for (const s of this.#sessions) s.close()
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
    for (const s of this.#sessions) s.destroy()
    this.#ws.close()
    // stops Node's connection checks (the server never listened: the callback's error says so)
    this.server.close(() => {})
    return clean
  }
}

/** An HTTP/2 request's field count with its `cookie` crumbs counted as the one field they are joined into. */
function h2Fields (raw: readonly string[]): number {
  const cookies = countField(raw, 'cookie')
  return raw.length / 2 - (cookies > 1 ? cookies - 1 : 0)
}

/** How many fields named `lower` (lower-case) a raw header list has. */
function countField (raw: readonly string[], lower: string): number {
  let n = 0
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === lower.length && raw[i]!.toLowerCase() === lower) n++
  return n
}

/** Info of an HTTP/2 session that came without one (never from the listener). */
const H2_PLAIN: ConnectionInfo = { secure: false, redirect: false, address: '', trusted: false }

/** The https URL a redirect-port request is sent to: the Host's name (port dropped), the https port unless 443, the same target. */
function redirectLocation (host: string, port: number, url: string): string {
  // a validated Host: `[v6]` or `name`, each with an optional `:port`
  const end = host.charCodeAt(0) === 91 /* [ */ ? host.indexOf(']') + 1 : (host.indexOf(':') === -1 ? host.length : host.indexOf(':'))
  const target = url.charCodeAt(0) === 47 /* / */ ? url : toOriginForm(url) || '/'
  return `https://${host.slice(0, end)}${port === 443 ? '' : `:${port}`}${target}`
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

/** Candidates of a (normalised) host that missed the cache: `anyHost` itself unless some host-specific route matches it. */
function candidatesFor (bound: Bound, host: string): readonly Route[] {
  const order = bound.table.matchOrder
  for (let i = 0; i < order.length; i++) {
    const r = order[i]!
    if (r.host !== undefined && hostMatches(r.host, host)) return routesForHost(bound.table, host)
  }
  return bound.anyHost
}

const kWatch = Symbol('canaryd.watchLeaving')

/** The client's FIN has been received (its bytes before it may still be unread). */
function clientEnded (socket: Duplex): boolean {
  return (socket as unknown as { _readableState: { ended: boolean } })._readableState.ended
}

/**
 * A socket Node handed over (upgrade, CONNECT) while its turn has not come:
 * Node no longer reads it for us, so watch for the client's FIN ourselves
 * (without consuming a byte) and close it, which also aborts the request ahead.
 */
function watchLeaving (socket: Duplex): void {
  const onReadable = (): void => {
    if (clientEnded(socket)) socket.destroy()
  }
  ;(socket as Duplex & { [kWatch]?: () => void })[kWatch] = onReadable
  socket.on('readable', onReadable)
}
/** Stops watching; true when the client already left (the socket is then destroyed). */
function stopWatching (socket: Duplex): boolean {
  const s = socket as Duplex & { [kWatch]?: () => void }
  const w = s[kWatch]
  if (w !== undefined) socket.removeListener('readable', w)
  if (socket.destroyed || clientEnded(socket)) {
    socket.destroy()
    return true
  }
  return false
}
