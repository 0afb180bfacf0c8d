import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage, type RequestOptions } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import type { Socket } from 'node:net'
import type { Readable } from 'node:stream'
import { errors } from 'undici'
import { connectOptions, loadTls } from './tls.js'

/**
 * The callbacks an exchange drives: the same core handler shape undici's
 * `dispatch` drives (onConnect → onHeaders → onData… → onComplete, or
 * onError), so one ForwardHandler serves both clients unchanged. Header names
 * and values arrive as strings here, as Buffers from undici.
 */
export interface ExchangeHandler {
  onConnect (abort: (err?: Error) => void): void
  onHeaders (statusCode: number, rawHeaders: readonly string[], resume: () => void, statusText: string): boolean
  onData (chunk: Buffer): boolean
  onComplete (trailers: null): void
  onError (err: Error): void
}

/** What one forwarded request needs (the subset of undici's DispatchOptions the proxy uses). */
export interface ExchangeRequest {
  readonly path: string
  readonly method: string
  /** Flat [name, value, …], already sanitised (hop-by-hop removed, X-Forwarded-* set). */
  readonly headers: string[]
  readonly body: Readable | null
}

/** Timeouts and pool size, the same settings the undici pools get. */
export interface HttpClientOptions {
  connectTimeoutMs: number
  responseTimeoutMs: number
  bodyTimeoutMs: number
  /** Most sockets to the origin (0 = no cap). */
  connections: number
  /** Idle keep-alive socket lifetime, lowered by the upstream's `Keep-Alive: timeout` hint. */
  keepAliveMs: number
  /** TLS options for an https origin (CA, client certificate, servername, verification), as undici's pool gets them. */
  tls?: Record<string, unknown>
}

/**
 * One upstream origin over Node's core http client, for requests with large
 * bodies. Measured in bench/README.md: undici's request-body writer costs
 * 25–40% more CPU per uploaded MiB than `http.request` on Node 20 (undici's
 * upload keeps its socket writes pending long enough to be promoted, and the
 * process runs a mark-compact every few dozen milliseconds), while for small
 * requests undici is far cheaper. So the proxy picks the client per request
 * by body size; both report through the same handler callbacks, errors are
 * undici's error classes, and the timeouts mean the same thing.
 */
export class HttpOrigin {
  readonly #agent: HttpAgent
  readonly #request: typeof httpRequest
  readonly #base: RequestOptions
  readonly #tls: boolean
  /** host[:port] of the origin, the Host sent when the client sent none (HTTP/1.0), as undici does. */
  readonly #host: string
  readonly #opts: HttpClientOptions

  constructor (origin: string, opts: HttpClientOptions) {
    const u = new URL(origin)
    const tls = u.protocol === 'https:'
    const agentOpts = {
      keepAlive: true,
      maxSockets: opts.connections === 0 ? Infinity : opts.connections,
      // the Agent lowers this to the upstream's Keep-Alive hint minus 1 s, retiring a
      // socket before the upstream closes it under a request (only when a timeout is set)
      timeout: opts.keepAliveMs,
      // reuse the most recent socket: fewer sockets stay warm, the idle ones time out
      scheduling: 'lifo' as const
    }
    // the agent's TLS options (servername included) win over each request's, so the
    // name verified is the configured one or the origin's, never the client's Host
    this.#agent = tls ? new HttpsAgent({ ...agentOpts, ...(opts.tls ?? connectOptions(loadTls({}, origin), origin)) }) : new HttpAgent(agentOpts)
    this.#request = tls ? httpsRequest as typeof httpRequest : httpRequest
    this.#base = { protocol: u.protocol, hostname: u.hostname.replace(/^\[|\]$/g, ''), port: u.port === '' ? (tls ? 443 : 80) : Number(u.port), agent: this.#agent }
    this.#tls = tls
    this.#host = u.host
    this.#opts = opts
  }

  /** Sends one request; the handler hears everything that happens to it. */
  dispatch (req: ExchangeRequest, handler: ExchangeHandler, chunked: boolean): void {
    // without a Content-Length Node would frame a DELETE or OPTIONS body by closing
    // the connection: chunked, said explicitly, frames every method the same way
    let headers = chunked ? [...req.headers, 'transfer-encoding', 'chunked'] : req.headers
    if (hostOf(headers) === undefined) headers = [...headers, 'host', this.#host]
    const options: RequestOptions = { ...this.#base, method: req.method, path: req.path, headers, setHost: false }
    let cr: ClientRequest
    try {
      cr = this.#request(options)
    } catch (err) {
      // Node refuses a header or path synchronously: the same 400 undici's refusal gives
      handler.onError(Object.assign(new errors.InvalidArgumentError((err as Error).message), { cause: err }))
      return
    }
    void new Exchange(cr, req.body, handler, this.#opts, this.#tls)
  }

  /**
   * Retires the origin (a reload no longer lists it): idle sockets close now,
   * busy ones once their exchange ends (a freed socket is not kept).
   */
  close (): void {
    noKeepAlive(this.#agent)
    for (const list of Object.values(this.#agent.freeSockets)) for (const s of list ?? []) s.destroy()
  }

  /** Destroys every socket (after the drain). */
  destroy (): void {
    noKeepAlive(this.#agent)
    this.#agent.destroy()
  }
}

/** Sockets freed from now on are closed, not kept (Node's Agent reads `keepAlive` when a socket is freed). */
function noKeepAlive (agent: HttpAgent): void {
  (agent as unknown as { keepAlive: boolean }).keepAlive = false
}

/** The Host value of flat [name, value, …] headers (undefined when absent). */
function hostOf (headers: readonly string[]): string | undefined {
  for (let i = 0; i < headers.length; i += 2) {
    const n = headers[i]!
    if (n.length === 4 && n.toLowerCase() === 'host') return headers[i + 1]
  }
  return undefined
}

/**
 * One request/response on a pooled socket. Phases and their timer: waiting
 * for the socket's connect (connectTimeoutMs); waiting for the response head
 * (responseTimeoutMs) once the request is sent, and during the upload only
 * while the upstream is the slow side (its socket full: a client pausing
 * between body chunks is `clientBodyMs`'s business, not an upstream
 * timeout); reading the response body (bodyTimeoutMs of upstream silence, not
 * while the client is the slow side). The body is read only once the socket
 * is connected, so a connect failure leaves it unread and the request can be
 * retried.
 */
class Exchange {
  readonly #cr: ClientRequest
  readonly #body: Readable | null
  readonly #h: ExchangeHandler
  readonly #opts: HttpClientOptions
  readonly #tls: boolean
  #timer: NodeJS.Timeout | undefined
  #res: IncomingMessage | undefined
  /** The response is paused because the client is slower than the upstream. */
  #paused = false
  #bodyEnded = false
  #done = false

  constructor (cr: ClientRequest, body: Readable | null, handler: ExchangeHandler, opts: HttpClientOptions, tls: boolean) {
    this.#cr = cr
    this.#body = body
    this.#h = handler
    this.#opts = opts
    this.#tls = tls
    // kept for the life of the request: a late socket error must never go unhandled
    cr.on('error', this.#fail)
    cr.on('socket', this.#onSocket)
    cr.on('response', this.#onResponse)
    handler.onConnect(this.#abort)
  }

  #arm (ms: number, onTimeout: () => void): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = ms === 0 ? undefined : setTimeout(onTimeout, ms)
    this.#timer?.unref()
  }

  readonly #abort = (err?: Error): void => {
    this.#fail(err ?? new errors.RequestAbortedError())
  }

  readonly #fail = (err: Error): void => {
    if (this.#done) return
    this.#done = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#unpipe()
    // stop the flow: bytes arriving now must wait for a retry, not be emitted to no one
    if (!this.#bodyEnded) this.#body?.pause()
    this.#cr.destroy()
    this.#res?.destroy()
    this.#h.onError(err)
  }

  readonly #onSocket = (socket: Socket): void => {
    if (this.#done) return
    if (!socket.connecting) {
      this.#onConnected()
      return
    }
    this.#arm(this.#opts.connectTimeoutMs, this.#connectTimedOut)
    // over TLS the connect timeout covers the handshake too, as undici's does
    socket.once(this.#tls ? 'secureConnect' : 'connect', this.#onConnected)
  }

  readonly #connectTimedOut = (): void => {
    this.#fail(new errors.ConnectTimeoutError())
  }

  readonly #onConnected = (): void => {
    if (this.#done) return
    const body = this.#body
    if (body === null) {
      this.#cr.end()
      this.#arm(this.#opts.responseTimeoutMs, this.#headersTimedOut)
      return
    }
    // from here until the body is sent, silence is the client's (clientBodyMs) unless the upstream stops reading
    this.#arm(0, this.#headersTimedOut)
    body.on('data', this.#onChunk)
    body.on('end', this.#onBodyEnd)
    body.on('error', this.#fail)
    body.on('close', this.#onBodyClose)
    // a 'readable' listener (the proxy waits for a chunked body's first bytes) leaves the stream paused
    body.resume()
  }

  readonly #onChunk = (chunk: Buffer): void => {
    if (!this.#cr.write(chunk)) {
      // the upstream is not taking the bytes: that wait is the upstream's, timed as undici times it
      this.#body!.pause()
      this.#cr.once('drain', this.#onDrain)
      if (this.#res === undefined) this.#arm(this.#opts.responseTimeoutMs, this.#headersTimedOut)
    }
  }

  readonly #onDrain = (): void => {
    if (this.#done) return
    if (this.#res === undefined) this.#arm(0, this.#headersTimedOut)
    this.#body!.resume()
  }

  readonly #onBodyEnd = (): void => {
    this.#bodyEnded = true
    this.#unpipe()
    if (this.#done) return
    this.#cr.end()
    if (this.#res === undefined) this.#arm(this.#opts.responseTimeoutMs, this.#headersTimedOut)
  }

  readonly #onBodyClose = (): void => {
    // closed before its end: the client went away mid-upload
    if (!this.#bodyEnded) this.#fail(new errors.RequestAbortedError())
  }

  #unpipe (): void {
    const body = this.#body
    if (body === null) return
    body.off('data', this.#onChunk)
    body.off('end', this.#onBodyEnd)
    body.off('close', this.#onBodyClose)
    // 'error' stays: an error emitted after we let go must not crash the process
  }

  readonly #headersTimedOut = (): void => {
    this.#fail(new errors.HeadersTimeoutError())
  }

  readonly #onResponse = (res: IncomingMessage): void => {
    if (this.#done) {
      res.destroy()
      return
    }
    this.#res = res
    res.on('error', this.#fail)
    res.on('data', this.#onResData)
    res.on('end', this.#onResEnd)
    this.#arm(this.#opts.bodyTimeoutMs, this.#bodyTimedOut)
    let go: boolean
    try {
      go = this.#h.onHeaders(res.statusCode ?? 0, res.rawHeaders, this.#resume, res.statusMessage ?? '')
    } catch (err) {
      // a throwing handler fails its request, as undici does, never the process
      this.#fail(err as Error)
      return
    }
    // false: the handler wants no more (it already answered), as undici pauses the parser
    if (!go && !this.#done) this.#pause()
  }

  readonly #onResData = (chunk: Buffer): void => {
    this.#timer?.refresh()
    let more: boolean
    try {
      more = this.#h.onData(chunk)
    } catch (err) {
      this.#fail(err as Error)
      return
    }
    if (!more && !this.#done) this.#pause()
  }

  #pause (): void {
    this.#paused = true
    this.#res!.pause()
  }

  readonly #resume = (): void => {
    if (this.#done || !this.#paused) return
    this.#paused = false
    this.#timer?.refresh()
    this.#res!.resume()
  }

  readonly #bodyTimedOut = (): void => {
    // the client is the slow side: not the upstream's silence
    if (this.#paused) {
      this.#timer!.refresh()
      return
    }
    this.#fail(new errors.BodyTimeoutError())
  }

  readonly #onResEnd = (): void => {
    if (this.#done) return
    this.#done = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    if (this.#body !== null && !this.#bodyEnded) {
      // the upstream answered before the upload ended (a 401 or 413 from the
      // headers alone): its socket can't be reused mid-body, so close it, as
      // undici does, and read the rest of the client's body to nowhere, as
      // Node does for an unread body, so the client connection stays usable
      this.#unpipe()
      this.#cr.destroy()
      this.#body.resume()
    }
    try {
      this.#h.onComplete(null)
    } catch {
      // the response is complete: a throwing handler has nothing left to fail
    }
  }
}
