import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Dispatcher, Pool } from 'undici'
import { ERROR_CODES, errorBody, type ErrorCode } from '../errors.js'
import type { Logger } from '../logger.js'
import type { VersionObserver } from '../metrics/observer.js'
import { classifyUpstreamError } from '../upstream/classify.js'
import { filterResponseHeaders } from './headers.js'

/** Everything bound to one (route, version) for the life of a routing table. */
export interface VersionRuntime {
  readonly route: string
  readonly version: string
  readonly pool: Pool
  readonly observer: VersionObserver
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
    this.#rt.pool.dispatch(this.#opts, this)
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
      this.#responded = false
      res.removeHeader('set-cookie')
      this.#abort?.(new Error('invalid upstream headers'))
      sendError(res, 'CANARYD_ERR_UPSTREAM_PROTOCOL', this.#rt.version)
      this.#responded = true
      return false
    }
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
      sendError(this.#res, 'CANARYD_ERR_BAD_REQUEST', this.#rt.version)
      return
    }
    // A keep-alive connection the upstream closed as we wrote to it: our bytes
    // were not processed. Retry once, on a fresh connection, when the method
    // is idempotent and there is no body to replay.
    if (!this.#responded && failure.kind === 'reset' && this.#retries > 0 && this.#opts.body == null && IDEMPOTENT.has(this.#opts.method)) {
      this.#retries--
      this.#abort = undefined
      this.dispatch()
      return
    }
    this.upstreamFailed = true
    this.#rt.observer.upstreamError(failure.kind)
    this.#log.debug({ err, route: this.#rt.route, version: this.#rt.version, kind: failure.kind }, 'upstream error')
    if (this.#responded) {
      // headers already went out: a truncated body must not look complete, so close the connection
      this.#res.destroy(err)
      return
    }
    this.#responded = true
    sendError(this.#res, failure.code, this.#rt.version)
  }
}
