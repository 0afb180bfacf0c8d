import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Dispatcher, Pool } from 'undici'
import { ERROR_CODES, errorBody, type ErrorCode } from '../errors.js'
import type { Logger } from '../logger.js'
import type { VersionObserver } from '../metrics/observer.js'
import { classifyUpstreamError } from '../upstream/classify.js'
import type { RouteHealth } from '../upstream/health.js'
import type { UpstreamSlot } from '../upstream/pools.js'
import { filterResponseHeaders } from './headers.js'

/** Everything bound to one (route, version) for the life of a routing table. */
export interface VersionRuntime {
  readonly route: string
  readonly version: string
  /** The version's index in its route (bit position in the ejection mask). */
  readonly index: number
  readonly pool: Pool
  /** The upstream origin's pool and in-flight counter (concurrency cap). */
  readonly slot: UpstreamSlot
  /** Outlier state of the route's versions. */
  readonly health: RouteHealth
  readonly observer: VersionObserver
}

/**
 * Records a gateway failure of `rt` for outlier detection; logs and counts an
 * ejection it causes. Cold path: only runs on failures.
 */
export function recordFailure (rt: VersionRuntime, connect: boolean, log: Logger): void {
  if (rt.health.failure(rt.index, connect)) {
    const h = rt.health.versions[rt.index]!
    log.warn({ route: rt.route, version: rt.version, failures: h.failures, until: new Date(h.ejectedUntil).toISOString() }, 'version ejected (outlier detection)')
    rt.observer.ejected()
  }
}

/** Proxy-made error responses, serialised once. */
const ERROR_BODIES = new Map<ErrorCode, Buffer>()
const ERROR_MESSAGES: Partial<Record<ErrorCode, string>> = {
  CANARYD_ERR_NO_ROUTE: 'no route matches this host and path',
  CANARYD_ERR_BAD_REQUEST: 'the request is malformed and was not forwarded',
  CANARYD_ERR_UPSTREAM_CONNECT: 'the upstream refused the connection',
  CANARYD_ERR_UPSTREAM_RESET: 'the upstream closed the connection before responding',
  CANARYD_ERR_UPSTREAM_PROTOCOL: 'the upstream sent an invalid HTTP response',
  CANARYD_ERR_UPSTREAM_TIMEOUT: 'the upstream did not respond in time',
  CANARYD_ERR_UPSTREAM_UNAVAILABLE: 'no upstream is available for this route',
  CANARYD_ERR_UPSTREAM_OTHER: 'forwarding to the upstream failed',
  CANARYD_ERR_UPSTREAM_OVERLOADED: 'the upstream has too many requests in flight',
  CANARYD_ERR_REQUEST_TIMEOUT: 'the request headers did not arrive in time',
  CANARYD_ERR_URI_TOO_LONG: 'the request target is too long',
  CANARYD_ERR_HEADERS_TOO_LARGE: 'the request headers are too large or too many',
  CANARYD_ERR_EXPECTATION_FAILED: 'only Expect: 100-continue is supported',
  CANARYD_ERR_NOT_IMPLEMENTED: 'this transfer coding or method is not forwarded',
  CANARYD_ERR_INTERNAL: 'internal error'
}
for (const [code, msg] of Object.entries(ERROR_MESSAGES)) ERROR_BODIES.set(code as ErrorCode, Buffer.from(errorBody(code as ErrorCode, msg)))

/**
 * Sends a proxy-made JSON error (404 no route, 502/503/504 upstream failures,
 * 400 bad request). Safe to call once per response; ignores a closed client.
 */
export function sendError (res: ServerResponse, code: ErrorCode, version: string): void {
  if (res.headersSent || res.destroyed) {
    res.destroy()
    return
  }
  const body = ERROR_BODIES.get(code) ?? Buffer.from(errorBody(code, code))
  const headers = ['content-type', 'application/json', 'content-length', String(body.length), 'cache-control', 'no-store']
  if (version.length !== 0) headers.push('x-canaryd-version', version)
  // an unread request body leaves the connection's framing unknown: close it after the answer
  if (!res.req.complete || ERROR_CODES[code].status === 400) headers.push('connection', 'close')
  res.writeHead(ERROR_CODES[code].status, headers)
  res.end(body)
}

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'])

/**
 * The undici dispatch handler of one proxied request: streams the upstream
 * response into the client response with backpressure both ways (undici
 * pauses the socket while `res.write` says the client is full), maps upstream
 * failures to 502/504, and aborts the upstream request if the client leaves.
 *
 * Uses undici's core handler callbacks (onConnect/onHeaders/onData/…) with raw
 * header buffers: it is the path undici itself runs on, so no adapter or
 * header-object parse stands between the socket and the client.
 */
export class ForwardHandler implements Dispatcher.DispatchHandler {
  readonly #req: IncomingMessage
  readonly #res: ServerResponse
  readonly #rt: VersionRuntime
  readonly #setCookie: string
  readonly #opts: Dispatcher.DispatchOptions
  readonly #log: Logger
  #abort: ((err?: Error) => void) | undefined
  #resume: (() => void) | undefined
  #responded = false
  #clientGone = false
  /** Set when the upstream failed this request (for metrics and rollout analysis). */
  upstreamFailed = false
  #retries: number

  constructor (req: IncomingMessage, res: ServerResponse, rt: VersionRuntime, setCookie: string, opts: Dispatcher.DispatchOptions, log: Logger, retries: number) {
    this.#req = req
    this.#res = res
    this.#rt = rt
    this.#setCookie = setCookie
    this.#opts = opts
    this.#log = log
    this.#retries = retries
  }

  /** Starts (or restarts) the upstream request. */
  dispatch (): void {
    try {
      this.#rt.pool.dispatch(this.#opts, this)
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
    if (this.#clientGone) abort(new Error('client closed the connection'))
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true // informational: Node answers 100-continue itself
    this.#resume = resume
    this.#responded = true
    const res = this.#res
    try {
      res.writeHead(statusCode, statusText, filterResponseHeaders(rawHeaders, this.#rt.version, this.#setCookie))
    } catch (err) {
      // Node refuses a header undici accepted (e.g. a bad character): treat as a protocol error
      this.#log.debug({ err, route: this.#rt.route, version: this.#rt.version }, 'invalid upstream response headers')
      this.upstreamFailed = true
      this.#rt.observer.upstreamError('protocol')
      recordFailure(this.#rt, false, this.#log)
      this.#responded = false
      res.removeHeader('set-cookie')
      this.#abort?.(new Error('invalid upstream headers'))
      sendError(res, 'CANARYD_ERR_UPSTREAM_PROTOCOL', this.#rt.version)
      this.#responded = true
      return false
    }
    if (statusCode >= 500) recordFailure(this.#rt, false, this.#log)
    else this.#rt.health.versions[this.#rt.index]!.success()
    return true
  }

  onData (chunk: Buffer): boolean {
    const res = this.#res
    if (res.write(chunk)) return true
    // the client is slower than the upstream: pause undici until it drains
    res.once('drain', this.#onDrain)
    return false
  }

  readonly #onDrain = (): void => {
    this.#resume?.()
  }

  onComplete (): void {
    this.#res.end()
  }

  onError (err: Error): void {
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
    if (!this.#responded && this.#retries > 0 && this.#mayRetry(failure.kind, failure.notSent)) {
      this.#retries--
      this.#abort = undefined
      this.dispatch()
      return
    }
    this.upstreamFailed = true
    this.#rt.observer.upstreamError(failure.kind)
    const connect = failure.kind === 'connect'
    recordFailure(this.#rt, connect, this.#log)
    this.#log.debug({ err, route: this.#rt.route, version: this.#rt.version, kind: failure.kind }, 'upstream error')
    if (this.#responded) {
      // headers already went out: a truncated body must not look complete, so close the connection
      this.#res.destroy(err)
      return
    }
    this.#responded = true
    // every version of the route known unreachable (ejected or failing to connect): 503, as Envoy's "no healthy upstream"
    const code = connect && this.#rt.health.othersUnreachable(this.#rt.index) ? 'CANARYD_ERR_UPSTREAM_UNAVAILABLE' : failure.code
    sendError(this.#res, code, this.#rt.version)
  }

  /**
   * Retry policy. A body stream already read may have reached the upstream and
   * cannot be replayed, so it rules a retry out. Otherwise: a connect failure
   * (nothing was sent) is always retried; a reset is retried only for an
   * idempotent method (a stale keep-alive connection closed under our write:
   * the upstream did not process it, or processing it twice is harmless).
   * Timeouts are not retried: the upstream may still be working on it.
   */
  #mayRetry (kind: string, notSent: boolean): boolean {
    if (this.#opts.body != null && this.#req.readableDidRead) return false
    if (notSent || kind === 'connect') return true
    return kind === 'reset' && IDEMPOTENT.has(this.#opts.method)
  }
}
