import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import { constants as h2constants, type ServerHttp2Stream } from 'node:http2'
import { performance } from 'node:perf_hooks'
import type { Duplex } from 'node:stream'
import type { Dispatcher } from 'undici'
import { ERROR_CODES, errorBody, errorMessage, isRefusal, type ErrorCode } from '../errors.js'
import type { Logger } from '../logger.js'
import type { VersionObserver } from '../metrics/observer.js'
import { classifyUpstreamError } from '../upstream/classify.js'
import type { Endpoint } from '../upstream/endpoint.js'
import type { EndpointGroup } from '../upstream/group.js'
import type { RouteHealth } from '../upstream/health.js'
import type { ExchangeHandler, ExchangeRequest } from '../upstream/http-client.js'
import { holdSlot, releaseSlot } from '../upstream/pools.js'
import { filterResponseHeaders, isHttp2 } from './headers.js'
import type { MirrorCopy } from './mirror.js'
import { mayRetry } from './retry.js'

/** Everything bound to one (route, version) for the life of a routing table. */
export interface VersionRuntime {
  readonly route: string
  readonly version: string
  /** The version's index in its route (bit position in the ejection mask). */
  readonly index: number
  /** The version's endpoints and balancer. */
  readonly group: EndpointGroup
  /** Outlier state of the route's versions and their endpoints. */
  readonly health: RouteHealth
  readonly observer: VersionObserver
}

/**
 * Records a gateway failure of endpoint `ep` of `rt` for outlier detection;
 * logs and counts an ejection it causes. Cold path: only runs on failures.
 */
export function recordFailure (rt: VersionRuntime, ep: Endpoint, connect: boolean, log: Logger): void {
  const ejected = rt.health.failure(rt.index, ep, connect)
  if (ejected === 'none') return
  const msg = ejected === 'version' ? 'endpoint ejected (outlier detection): the version has no endpoint left' : 'endpoint ejected (outlier detection)'
  log.warn({ route: rt.route, version: rt.version, endpoint: ep.origin, failures: ep.failures, until: new Date(ep.ejectedUntil).toISOString() }, msg)
  rt.observer.ejected()
}

/** Origin → when its last TLS failure was logged (ms): one warn line per origin per minute. */
const tlsWarned = new Map<string, number>()
const TLS_WARN_EVERY_MS = 60_000

/**
 * Logs a failed TLS handshake with an upstream at warn, at most once per
 * origin per minute: it is a configuration fault (wrong scheme, CA,
 * certificate) an operator must see, while every request to the origin
 * repeats it. Cold path: failures only.
 */
export function warnTls (rt: VersionRuntime, origin: string, err: Error, log: Logger): void {
  const now = Date.now()
  const last = tlsWarned.get(origin)
  if (last !== undefined && now - last < TLS_WARN_EVERY_MS) return
  // bounded: reloads and DNS can bring many origins over time; only the last minute's matter
  if (tlsWarned.size >= 1024) for (const [o, t] of tlsWarned) if (now - t >= TLS_WARN_EVERY_MS) tlsWarned.delete(o)
  tlsWarned.set(origin, now)
  const code = (err as NodeJS.ErrnoException).code ?? ''
  log.warn({ route: rt.route, version: rt.version, origin, code, cause: err.message }, 'TLS handshake with the upstream failed (answered 502; logged once per origin per minute)')
}

/** Proxy-made error responses, serialised once from the registry's messages. */
const ERROR_BODIES = new Map<ErrorCode, Buffer>()
for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) ERROR_BODIES.set(code, Buffer.from(errorBody(code, errorMessage(code))))

/**
 * Sends a proxy-made JSON error (404 no route, 502/503/504 upstream failures,
 * 400 bad request). Safe to call once per response; ignores a closed client.
 * A refusal (see the registry) and an answer sent before the request body
 * was read carry `Connection: close`: Node then ends the connection after
 * this response, and the proxy's per-connection queue drops whatever the
 * client pipelined behind it (see ProxyServer).
 */
export function sendError (res: ServerResponse, code: ErrorCode, version: string): void {
  if (res.headersSent || res.destroyed) {
    res.destroy()
    return
  }
  const body = ERROR_BODIES.get(code)!
  const headers = ['content-type', 'application/json', 'content-length', String(body.length), 'cache-control', 'no-store']
  if (version.length !== 0) headers.push('x-canaryd-version', version)
  // an unread request body leaves the connection's framing unknown: close it after the answer
  const req = res.req
  const status = ERROR_CODES[code].status
  if (isHttp2(req)) {
    // HTTP/2: no reason phrase, no Connection header (a stream ends alone; its connection is not in doubt)
    res.writeHead(status, headers)
    endH2(res, body)
    return
  }
  if (bodyUnread(req) || isRefusal(code)) headers.push('connection', 'close')
  // the reason phrase is always given: a failed writeHead (an upstream reason
  // Node refuses) leaves its bad statusMessage behind, which would be reused
  res.writeHead(status, STATUS_CODES[status] ?? '', headers)
  res.end(body)
}

/**
 * An HTTP/1.1 request whose body (a Content-Length other than 0, or
 * chunked) has not all arrived: answered before it is read, its connection
 * must close, since the rest of the body would otherwise be parsed as
 * requests or drained for as long as the client sends.
 */
export function bodyUnread (req: IncomingMessage): boolean {
  return !req.complete && (req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0')
}

/**
 * Ends an HTTP/2 response; when the client has not finished its request
 * body, the stream is then reset with NO_ERROR (RFC 9113 §8.1: "stop
 * sending, the answer is complete"). Without it a client that stalls its
 * body keeps the stream, and everything the request holds, open forever:
 * there is no connection to close as over HTTP/1.1.
 */
export function endH2 (res: ServerResponse, body?: Buffer): void {
  const stream = (res as unknown as { stream: ServerHttp2Stream }).stream
  if (stream.endAfterHeaders || res.req.readableEnded) {
    res.end(body)
    return
  }
  res.end(body, () => {
    if (!stream.closed && !stream.destroyed && stream.state.remoteClose === 0) stream.close(h2constants.NGHTTP2_NO_ERROR)
  })
}

/**
 * What every ForwardHandler of one proxy shares, built once with the server:
 * settings and the callback told when a request is over (access log,
 * in-flight count, drain).
 */
export interface ForwardContext {
  readonly log: Logger
  /** Extra upstream attempts (see the retry policy). */
  readonly retries: number
  /** Longest client silence while the request body is incomplete (0 = none); see `#watchBody`. */
  readonly clientBodyMs: number
  /** Longest wait for a client whose send buffer is full to take more of the response (0 = none); see `onData`. */
  readonly clientSendMs: number
  /** Bodies from this size (and chunked ones) go through Node's http client, not undici (0 = never); see upstream/http-client.ts. */
  readonly largeBodyBytes: number
  /** Called once per request when the client response closes, after the metrics. */
  readonly done: (h: ForwardHandler, status: number, seconds: number) => void
  /** The listener is draining: responses that start now carry `Connection: close`. */
  draining: boolean
}

/**
 * The undici dispatch handler of one proxied request: streams the upstream
 * response into the client response with backpressure both ways (undici
 * pauses the socket while `res.write` says the client is full), maps upstream
 * failures to 502/504, and aborts the upstream request if the client leaves.
 * It also owns the request's accounting: the version observer (start on
 * construction, finish when the client response closes) and the upstream's
 * concurrency slot (taken only at dispatch, so a request still waiting for
 * its body holds none).
 *
 * Uses undici's core handler callbacks (onConnect/onHeaders/onData/…) with raw
 * header buffers: it is the path undici itself runs on, so no adapter or
 * header-object parse stands between the socket and the client.
 */
export class ForwardHandler implements Dispatcher.DispatchHandler, ExchangeHandler {
  readonly #req: IncomingMessage
  readonly #res: ServerResponse
  readonly #rt: VersionRuntime
  /** The endpoint this attempt goes to (a retry may move it to another of the version's). */
  #ep: Endpoint
  /** The request's sticky hash (the hash balancer's key, for a retry's pick). */
  readonly #hash: number
  readonly #setCookie: string
  readonly #ctx: ForwardContext
  readonly #t0: number
  #opts: Dispatcher.DispatchOptions & ExchangeRequest | undefined
  /** The request goes through the origin's http client (a large or chunked body), not its undici pool. */
  #viaHttp = false
  #chunked = false
  #abort: ((err?: Error) => void) | undefined
  #resume: (() => void) | undefined
  /** A final answer (upstream headers or a proxy-made error) went out or is going out: nothing else may be sent. */
  #responded = false
  #clientGone = false
  /** The outcome is decided and accounted (by the proxy itself): a later onError is only our own abort echoing. */
  #settled = false
  #slotTaken = false
  #bodyTimer: NodeJS.Timeout | undefined
  /** Armed while the client's send buffer is full (see onData). */
  #sendTimer: NodeJS.Timeout | undefined
  #bodyBytes = 0
  /** Set when the upstream failed this request (for metrics and rollout analysis). */
  upstreamFailed = false
  #retries: number
  /** The client spoke HTTP/2 (Node's compatibility objects behind req and res). */
  readonly #h2: boolean
  /** The request carried `x-canaryd-synthetic: 1` (the load generator's): counted under source="synthetic". */
  readonly #synthetic: boolean
  /** The client address, for the access log (set only when it is on). */
  client = ''
  /** The request's mirrored copy, when it must hear how the user's response ended (see ProxyServer's #mirror). */
  mirror: MirrorCopy | undefined = undefined

  constructor (req: IncomingMessage, res: ServerResponse, rt: VersionRuntime, ep: Endpoint, hash: number, setCookie: string, t0: number, ctx: ForwardContext, h2 = false, synthetic = false) {
    this.#req = req
    this.#res = res
    this.#rt = rt
    this.#ep = ep
    this.#hash = hash
    this.#setCookie = setCookie
    this.#ctx = ctx
    this.#t0 = t0
    this.#retries = ctx.retries
    this.#h2 = h2
    this.#synthetic = synthetic
    // an HTTP/2 stream has no pipeline to continue (and req.socket would build a proxy object)
    this.socket = h2 ? undefined : req.socket
    holdSlot(ep.slot)
    rt.observer.start()
    // 'close' is emitted once: `on` spares the wrapper `once` would allocate
    res.on('close', this.#onClose)
  }

  /** The (route, version) this request is charged to. */
  get runtime (): VersionRuntime {
    return this.#rt
  }

  /** The HTTP/1.1 client connection (it carries the pipeline queue; Node unsets req.socket once the exchange is over); undefined over HTTP/2. */
  readonly socket: Duplex | undefined

  /** The request's method (for the access log). */
  get method (): string {
    return this.#req.method ?? 'GET'
  }

  /** Answers `code` without forwarding (a request refused after routing: counted on the version). */
  refuse (code: ErrorCode): void {
    this.#responded = true
    sendError(this.#res, code, this.#rt.version)
  }

  /**
   * Forwards the request: at once, or, for a chunked body none of which has
   * arrived yet, once its first bytes are in (so a bad chunk size arriving
   * with the headers, the usual smuggling payload, is refused by llhttp
   * before anything is sent upstream). While the body is incomplete a
   * client that goes silent for `clientBodyMs` is answered 408.
   */
  forward (path: string, headers: string[], contentLength: string | undefined, chunked: boolean): void {
    const req = this.#req
    const hasBody = contentLength !== undefined ? contentLength !== '0' : chunked
    this.#opts = { path, method: req.method ?? 'GET', headers, body: hasBody ? req : null }
    const large = this.#ctx.largeBodyBytes
    if (hasBody && large !== 0 && (contentLength === undefined || Number(contentLength) >= large)) {
      this.#viaHttp = true
      this.#chunked = contentLength === undefined
    }
    if (hasBody && !req.complete && this.#ctx.clientBodyMs !== 0) this.#watchBody()
    if (hasBody && contentLength === undefined && req.readableLength === 0 && !req.complete) {
      req.once('readable', () => { this.#onFirstBytes() })
      return
    }
    this.#take()
  }

  // The callbacks below that only some requests need are methods, wrapped in
  // a closure where they are used: as arrow-function fields they would be
  // allocated for every request, needed or not.

  #onFirstBytes (): void {
    // Node reports a framing error later in the same socket read: setImmediate
    // runs after it, and by then the server's clientError has ended the socket
    setImmediate(() => { this.#afterFirstBytes() })
  }

  #afterFirstBytes (): void {
    const req = this.#req
    const sock = req.socket
    if (this.#responded || this.#res.destroyed || sock.destroyed || sock.writableEnded) return
    if (req.complete && req.readableLength === 0) {
      // an empty chunked body (`0\r\n\r\n`): the request stream has ended (or is
      // about to) with nothing to read, and a stream that already emitted 'end'
      // would never feed the upstream request. Forward it with no body.
      this.#opts!.body = null
      this.#viaHttp = false
    }
    this.#take()
  }

  /** Takes a concurrency slot of the upstream and dispatches; past the cap, a fast 503. */
  #take (): void {
    let slot = this.#ep.slot
    if (slot.cap !== 0 && slot.inFlight >= slot.cap) {
      // the balancer's choice is full: another endpoint of the version with room takes it
      const other = this.#rt.group.healthy.find((e) => e.slot.inFlight < e.slot.cap)
      if (other === undefined) {
        // a bounded queue is a fast 503, not a growing undici queue and a late 504
        this.refuse('CANARYD_ERR_UPSTREAM_OVERLOADED')
        return
      }
      this.#switch(other)
      slot = other.slot
    }
    slot.inFlight++
    this.#slotTaken = true
    this.dispatch()
  }

  /**
   * Client body idle timeout. No timer per chunk: one timer per request with
   * a body, re-armed while the socket's byte count moves, so a stall is seen
   * between 1× and 2× `clientBodyMs` after the last byte. Time the proxy
   * itself is not reading (undici applying backpressure: the request stream
   * paused or holding bytes) is never the client's stall.
   */
  #watchBody (): void {
    if (this.#h2) {
      // the session's socket moves with any stream's bytes, a PING or a WINDOW_UPDATE: the stream's own
      // inactivity timer is refreshed by this stream's frames only (no 'data' listener: the compatibility
      // request attaches its own lazily, and one added first would take the bytes it has not read yet)
      const stream = (this.#req as unknown as { stream: ServerHttp2Stream }).stream
      stream.on('timeout', () => { this.#checkStream(stream) })
      stream.setTimeout(this.#ctx.clientBodyMs)
      return
    }
    this.#bodyBytes = this.#req.socket.bytesRead
    this.#bodyTimer = setTimeout(() => { this.#checkBody() }, this.#ctx.clientBodyMs)
    this.#bodyTimer.unref()
  }

  #checkBody (): void {
    const req = this.#req
    if (req.complete || this.#clientGone || this.#settled || this.#res.destroyed) return
    const read = req.socket.bytesRead
    // once undici has the body, a paused or non-empty request stream is our backpressure, not the client's silence
    if (read !== this.#bodyBytes || this.#ourBackpressure()) {
      this.#bodyBytes = read
      this.#bodyTimer!.refresh()
      return
    }
    this.#stalled()
  }

  /** HTTP/2: no frame on the stream for clientBodyMs. */
  #checkStream (stream: ServerHttp2Stream): void {
    const req = this.#req
    // the client ended its body (END_STREAM), or the request is over: nothing to watch
    if (req.complete || this.#clientGone || this.#settled || stream.destroyed || stream.state.remoteClose !== 0) {
      stream.setTimeout(0)
      return
    }
    if (this.#ourBackpressure()) {
      stream.setTimeout(this.#ctx.clientBodyMs)
      return
    }
    this.#stalled()
  }

  #ourBackpressure (): boolean {
    const req = this.#req
    return this.#slotTaken && (req.readableLength !== 0 || req.isPaused())
  }

  /** The client went silent mid-body: 408 (or a cut response if one started), and the upstream request aborted. */
  #stalled (): void {
    this.#ctx.log.debug({ route: this.#rt.route, version: this.#rt.version }, 'client request body stalled')
    const responded = this.#responded
    this.#responded = true
    this.#settled = true // whatever undici reports after the abort is not the upstream's fault
    if (responded) this.#res.destroy()
    else sendError(this.#res, 'CANARYD_ERR_REQUEST_TIMEOUT', this.#rt.version)
    this.#abort?.(new Error('client request body timed out'))
  }

  readonly #onClose = (): void => {
    const res = this.#res
    if (this.#bodyTimer !== undefined) clearTimeout(this.#bodyTimer)
    if (this.#sendTimer !== undefined) clearTimeout(this.#sendTimer)
    // an HTTP/2 stream reset or a session torn down reports writableFinished (its state is closed): ended is what says the answer went out
    if (this.#h2 ? !res.writableEnded : !res.writableFinished) this.clientClosed()
    if (this.#slotTaken) {
      this.#slotTaken = false
      this.#ep.slot.inFlight--
    }
    releaseSlot(this.#ep.slot)
    // 499 (nginx's "client closed request") when the client left before a status went out
    const status = res.headersSent ? res.statusCode : 499
    const seconds = (performance.now() - this.#t0) / 1000
    this.#rt.observer.finish(status, seconds, this.upstreamFailed, this.#synthetic)
    this.#ctx.done(this, status, seconds)
  }

  /** Starts (or restarts) the upstream request. */
  dispatch (): void {
    if (this.#viaHttp) {
      this.#ep.slot.http.dispatch(this.#opts!, this, this.#chunked)
      return
    }
    const slot = this.#ep.slot
    // a constant TLS server name: without it undici reconnects whenever the client's Host changes
    if (slot.servername !== undefined) (this.#opts as { servername?: string }).servername = slot.servername
    try {
      slot.pool.dispatch(this.#opts!, this)
    } catch (err) {
      // undici validates some headers synchronously (e.g. a hop-by-hop name, a bad
      // character Node let through): never let that escape as an exception
      this.onError(err as Error)
    }
  }

  /** The client went away: abort the upstream request. */
  clientClosed (): void {
    if (this.#clientGone) return
    this.#clientGone = true
    this.#abort?.(new Error('client closed the connection'))
  }

  onConnect (abort: (err?: Error) => void): void {
    this.#abort = abort
    if (this.#clientGone || this.#settled) abort(new Error('client closed the connection'))
  }

  onHeaders (statusCode: number, rawHeaders: ReadonlyArray<Buffer | string>, resume: () => void, statusText: string): boolean {
    // informational (1xx): Node answers 100-continue itself. A status below 100 falls
    // through to writeHead, which refuses it: a clean 502 protocol error, not a hang
    if (statusCode >= 100 && statusCode < 200) return true
    if (this.#responded) return false
    this.#resume = resume
    this.#responded = true
    const res = this.#res
    // a drain began while this request was in flight: close the connection after this answer
    if (this.#ctx.draining) res.shouldKeepAlive = false
    // an answer before the whole request body arrived: the body client may drop the rest, so close after it
    if (!this.#req.complete) res.shouldKeepAlive = false
    // no cork here: undici delivers the head, the body and the end of a small
    // response in one tick, and Node's first res.write() corks the socket until
    // the next tick itself, so they leave in one writev (checked with strace)
    try {
      // HTTP/2 has no reason phrase (Node warns when given one)
      if (this.#h2) res.writeHead(statusCode, filterResponseHeaders(rawHeaders, this.#rt.version, this.#setCookie))
      else res.writeHead(statusCode, statusText, filterResponseHeaders(rawHeaders, this.#rt.version, this.#setCookie))
    } catch (err) {
      // Node refuses a header undici accepted (e.g. DEL in a value): one protocol
      // failure and a clean 502. `#settled` makes the onError that undici's
      // abort() calls synchronously below record and send nothing
      this.#log.debug({ err, route: this.#rt.route, version: this.#rt.version }, 'invalid upstream response headers')
      this.upstreamFailed = true
      this.#rt.observer.upstreamError('protocol')
      recordFailure(this.#rt, this.#ep, false, this.#log)
      // Node may have stored the headers before refusing one (HTTP/2 does): the 502 must not carry them, nor fail on them again
      for (const n of res.getHeaderNames()) res.removeHeader(n)
      this.#settled = true
      sendError(res, 'CANARYD_ERR_UPSTREAM_PROTOCOL', this.#rt.version)
      this.#abort?.(new Error('invalid upstream headers'))
      return false
    }
    if (statusCode >= 500) recordFailure(this.#rt, this.#ep, false, this.#log)
    else this.#rt.health.success(this.#rt.index, this.#ep)
    return true
  }

  get #log (): Logger {
    return this.#ctx.log
  }

  onData (chunk: Buffer): boolean {
    const res = this.#res
    if (res.write(chunk)) return true
    // the client is slower than the upstream: pause undici until it drains, for clientSendMs at most
    res.once('drain', () => { this.#drained() })
    const ms = this.#ctx.clientSendMs
    if (ms !== 0 && this.#sendTimer === undefined) {
      this.#sendTimer = setTimeout(() => { this.#sendStalled() }, ms)
      this.#sendTimer.unref()
    }
    return false
  }

  #drained (): void {
    if (this.#sendTimer !== undefined) {
      clearTimeout(this.#sendTimer)
      this.#sendTimer = undefined
    }
    this.#resume?.()
  }

  /**
   * The client took nothing more for clientSendMs with its buffer full (it
   * stopped reading, or reads a byte now and then): the response is cut
   * and the upstream request aborted, so it cannot hold an upstream
   * connection for as long as it likes (nginx's send_timeout).
   */
  #sendStalled (): void {
    if (this.#res.writableFinished || this.#clientGone) return
    this.#ctx.log.debug({ route: this.#rt.route, version: this.#rt.version }, 'client stopped reading its response: cut')
    this.#settled = true
    this.clientClosed()
    // HTTP/2: an error resets the stream with INTERNAL_ERROR; without one it would read as NO_ERROR, a clean stop
    if (this.#h2) this.#res.destroy(new Error('client stopped reading'))
    else this.#res.destroy()
  }

  onComplete (): void {
    if (this.#h2) endH2(this.#res)
    else this.#res.end()
  }

  onError (err: Error): void {
    if (this.#settled) return
    // the client aborted (mid-upload the body stream errors first): nothing to answer, not the upstream's fault
    if (this.#clientGone || this.#res.destroyed || (this.#req.destroyed && !this.#req.complete)) {
      this.#clientGone = true
      return
    }
    const failure = classifyUpstreamError(err)
    if (failure.clientFault) {
      this.#log.debug({ err, route: this.#rt.route }, 'request refused before forwarding')
      if (this.#responded) this.#res.destroy()
      else sendError(this.#res, 'CANARYD_ERR_BAD_REQUEST', this.#rt.version)
      this.#responded = true
      return
    }
    const connect = failure.kind === 'connect'
    if (!this.#responded && this.#retries > 0 && mayRetry({ kind: failure.kind, notSent: failure.notSent, method: this.#opts!.method, body: this.#opts!.body, bodyRead: this.#req.readableDidRead })) {
      const failed = this.#ep
      const next = this.#rt.group.pickRetry(failed, this.#hash)
      if (next !== undefined && this.#move(next)) {
        // the failed attempt still counts towards its endpoint's outlier streak
        if (next !== failed) recordFailure(this.#rt, failed, connect, this.#log)
        this.#retries--
        this.#abort = undefined
        this.dispatch()
        return
      }
    }
    this.upstreamFailed = true
    this.#rt.observer.upstreamError(failure.kind)
    recordFailure(this.#rt, this.#ep, connect, this.#log)
    if (failure.code === 'CANARYD_ERR_UPSTREAM_TLS') warnTls(this.#rt, this.#ep.origin, err, this.#log)
    else this.#log.debug({ err, route: this.#rt.route, version: this.#rt.version, kind: failure.kind }, 'upstream error')
    if (this.#responded) {
      // headers already went out: a truncated body must not look complete, so close the connection
      this.#res.destroy(err)
      return
    }
    this.#responded = true
    // every version of the route known unreachable (ejected or failing to connect): 503, as Envoy's "no healthy upstream"
    // (a TLS failure keeps its own code: the origin answers, its certificate or scheme is wrong)
    const code = failure.code === 'CANARYD_ERR_UPSTREAM_CONNECT' && this.#rt.health.othersUnreachable(this.#rt.index) ? 'CANARYD_ERR_UPSTREAM_UNAVAILABLE' : failure.code
    sendError(this.#res, code, this.#rt.version)
  }

  /** Moves the request's concurrency slot to `next` for a retry; false when `next` is at its cap. */
  #move (next: Endpoint): boolean {
    if (next === this.#ep) return true
    if (!this.#slotTaken) {
      this.#switch(next)
      return true
    }
    const slot = next.slot
    if (slot.cap !== 0 && slot.inFlight >= slot.cap) return false
    this.#ep.slot.inFlight--
    slot.inFlight++
    this.#switch(next)
    return true
  }

  /** The request now goes to `next`: its hold on the pool moves with it. */
  #switch (next: Endpoint): void {
    holdSlot(next.slot)
    releaseSlot(this.#ep.slot)
    this.#ep = next
  }
}
