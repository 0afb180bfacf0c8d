import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { CanarydError, ConfigError, routeNotFound } from '../errors.js'
import { listenError } from '../config/load.js'
import type { Logger } from '../logger.js'
import type { FamilyJson } from '../metrics/exposition.js'
import type { RuntimeStore } from '../store/store.js'
import { checkBearer, isLoopbackHost, readDocumentBody, readJsonBody, tokenDigest } from './http.js'
import { AdminRouter, type AdminHandler, type AdminMethod, type AdminReply, type AdminRequest } from './router.js'

// Type-only reference: it makes tsc copy openapi.json to dist/admin/, where
// the server reads it at run time (a JSON import would print Node 20's
// experimental-feature warning on every start).
type OpenApiDocument = typeof import('./openapi.json')

/** What the admin server needs of the metrics: the exposition text and its content type. */
export interface MetricsSource {
  expose: () => Promise<string>
  /** These families only, as prom-client's JSON (cheaper than `expose` for a frequent reader: the dashboard's feed). */
  families: (names: readonly string[]) => Promise<FamilyJson[]>
  registry: { contentType: string }
}

/**
 * Throws a ConfigError (CANARYD_ERR_CONFIG_INVALID) when the admin server
 * would be reachable from other machines without a token. AdminServer.listen
 * checks it before opening a socket; `canaryd validate` checks it too.
 */
export function checkAdminBinding (host: string, token: string): void {
  if (token === '' && !isLoopbackHost(host)) {
    throw new ConfigError('admin.host', `${host} is not a loopback address and no admin token is set; refusing to expose the admin API unauthenticated. Set admin.token (or CANARYD_ADMIN_TOKEN), or bind admin.host to 127.0.0.1`)
  }
}

/** Options of the admin server. */
export interface AdminServerOptions {
  store: RuntimeStore
  logger: Logger
  host: string
  port: number
  /** Bearer token for `/api/`; '' = no token (only allowed on a loopback host). */
  token: string
  /** Prometheus metrics, or undefined when metrics are off (/metrics → 404). */
  metrics?: MetricsSource | undefined
  /** True while the instance serves traffic; false before the proxy listens and while draining. */
  isReady: () => boolean
}

/** Longest `reason` accepted with a weight change, characters. */
const MAX_REASON_LENGTH = 1000

/** Largest `limit` of GET /api/v1/audit. */
const MAX_AUDIT_LIMIT = 1000

/** The `reason` of a change request body: a string of at most MAX_REASON_LENGTH, or null when absent; 400 otherwise. */
export function parseReason (reason: unknown): string | null {
  if (reason !== undefined && reason !== null && (typeof reason !== 'string' || reason.length > MAX_REASON_LENGTH)) {
    throw new CanarydError('CANARYD_ERR_INVALID_BODY', `"reason" must be a string of at most ${MAX_REASON_LENGTH} characters`)
  }
  return typeof reason === 'string' ? reason : null
}

/** True for a plain JSON object (not an array, not null). */
export function isObj (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

let openApiText: string | undefined

/** The OpenAPI 3 document of the admin API, as kept in src/admin/openapi.json. */
function openApiDocument (): OpenApiDocument {
  openApiText ??= readFileSync(new URL('./openapi.json', import.meta.url), 'utf8')
  return JSON.parse(openApiText) as OpenApiDocument
}

/**
 * The admin server: its own node:http listener (default 127.0.0.1:9901),
 * apart from the proxy so admin traffic never competes with or leaks into
 * proxied traffic. `/healthz`, `/readyz` and `/metrics` are open (probes and
 * scrapers carry no token); everything under `/api/` needs the bearer token
 * when one is set. Without a token it refuses to listen on a non-loopback
 * address: closed by default.
 *
 * Other modules add endpoints with `addRoute` (see AdminRouter.add).
 */
export class AdminServer {
  readonly server: Server
  readonly router = new AdminRouter()
  readonly #opts: AdminServerOptions
  readonly #log: Logger
  readonly #token: Buffer | undefined
  #listening = false

  constructor (opts: AdminServerOptions) {
    this.#opts = opts
    this.#log = opts.logger.child({ component: 'admin' })
    this.#token = opts.token === '' ? undefined : tokenDigest(opts.token)
    this.server = createServer({
      // the admin API is small and local: slow or idle clients get little time
      headersTimeout: 10_000,
      requestTimeout: 30_000,
      keepAliveTimeout: 5_000
    }, (req, res) => { void this.#handle(req, res) })
    this.#addBuiltins()
  }

  /**
   * Registers an extra endpoint, e.g. the rollout controller's
   * `POST /api/v1/routes/{route}/rollout`. Paths under `/api/` are behind the
   * token; handlers throw CanarydError for JSON errors. Add the path to
   * src/admin/openapi.json too (a test compares the two).
   */
  addRoute (method: AdminMethod, pattern: string, handler: AdminHandler): void {
    this.router.add(method, pattern, handler)
  }

  /**
   * Starts listening. Throws a ConfigError (CANARYD_ERR_CONFIG_INVALID)
   * without opening a socket when the host is not loopback and no token is set.
   */
  async listen (): Promise<AddressInfo> {
    const { host, port } = this.#opts
    checkAdminBinding(host, this.#opts.token)
    await new Promise<void>((resolve, reject) => {
      // a taken port must say it is the admin server's, and which key sets it
      const onError = (err: Error): void => { reject(listenError(err, 'admin', host, port)) }
      this.server.once('error', onError)
      this.server.listen(port, host, () => {
        this.server.off('error', onError)
        resolve()
      })
    })
    this.#listening = true
    const addr = this.server.address() as AddressInfo
    if (this.#token === undefined) this.#log.info({ admin: `${addr.address}:${addr.port}` }, 'admin API has no token: open to local clients only')
    return addr
  }

  /** Stops listening and closes every admin connection. Idempotent. */
  async close (): Promise<void> {
    if (!this.#listening) return
    this.#listening = false
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.server.closeAllConnections()
    await closed
  }

  #addBuiltins (): void {
    const { store } = this.#opts
    const r = this.router
    r.add('GET', '/healthz', () => ({ json: { status: 'ok' } }))
    r.add('GET', '/readyz', () => this.#opts.isReady()
      ? { json: { status: 'ready' } }
      : { status: 503, json: { status: 'not ready' } })
    r.add('GET', '/metrics', async () => {
      const m = this.#opts.metrics
      if (m === undefined) throw new CanarydError('CANARYD_ERR_NOT_FOUND', 'metrics are disabled in this instance')
      return { text: await m.expose(), contentType: m.registry.contentType }
    })
    r.add('GET', '/api/v1/routes', () => ({ json: { routes: store.routeViews() } }))
    r.add('GET', '/api/v1/routes/{route}', (q) => ({ json: this.#route(q.params.route!) }))
    r.add('PUT', '/api/v1/routes/{route}/weights', async (q) => await this.#putWeights(q))
    r.add('GET', '/api/v1/audit', (q) => {
      const limit = parseLimit(q.query.get('limit'))
      const route = q.query.get('route') ?? undefined
      if (route !== undefined) this.#route(route)
      return { json: { entries: store.audit(limit, route) } }
    })
    r.add('GET', '/api/v1/openapi.json', () => ({ json: openApiDocument() }))
  }

  /** The Host a request was addressed to names this admin server: a loopback name or address, or admin.host. */
  #hostAllowed (host: string | undefined): boolean {
    if (host === undefined) return true // HTTP/1.0 without Host: not a browser
    let name = host.toLowerCase()
    // the port off: "[::1]:9901" → "[::1]", "localhost:9901" → "localhost"; then a trailing dot ("localhost.")
    if (name.startsWith('[')) name = name.slice(0, name.indexOf(']') + 1)
    else if (name.indexOf(':') === name.lastIndexOf(':')) name = name.split(':')[0]!
    if (name.endsWith('.')) name = name.slice(0, -1)
    return isLoopbackHost(name) || name === this.#opts.host.toLowerCase() || name === `[${this.#opts.host.toLowerCase()}]`
  }

  #route (name: string): NonNullable<ReturnType<RuntimeStore['routeView']>> {
    const v = this.#opts.store.routeView(name)
    if (v === undefined) throw routeNotFound(name, this.#opts.store.routeNames)
    return v
  }

  async #putWeights (q: AdminRequest): Promise<AdminReply> {
    const name = q.params.route!
    this.#route(name)
    const body = await q.json()
    if (!isObj(body)) throw new CanarydError('CANARYD_ERR_INVALID_BODY', 'the body must be a JSON object like {"weights":{"stable":80,"canary":20},"reason":"…"}')
    for (const k of Object.keys(body)) {
      if (k !== 'weights' && k !== 'reason') throw new CanarydError('CANARYD_ERR_INVALID_BODY', `unknown key ${JSON.stringify(k)} (allowed: weights, reason)`)
    }
    if (body.weights === undefined) throw new CanarydError('CANARYD_ERR_INVALID_BODY', '"weights" is required, e.g. {"weights":{"stable":80,"canary":20}}')
    const change = await this.#opts.store.setWeights(name, body.weights, {
      reason: parseReason(body.reason),
      source: 'api',
      address: q.address
    })
    return { json: { route: change.route, previous: change.previous } }
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '/'
    const qi = url.indexOf('?')
    const path = qi === -1 ? url : url.slice(0, qi)
    const method = req.method ?? 'GET'
    try {
      // a browser on the admin host must not be a way in for another web page: without a token
      // (loopback only) a cross-site form POST to …/rollout/abort needs no preflight and would act
      // without a token, only loopback names reach the API: a DNS-rebinding page (its own name resolved
      // to 127.0.0.1) would otherwise be same-origin with it and read and write at will
      if (this.#token === undefined && !this.#hostAllowed(req.headers.host)) {
        throw new CanarydError('CANARYD_ERR_CROSS_ORIGIN', `Host ${JSON.stringify(String(req.headers.host ?? '').slice(0, 100))} is not a loopback name or admin.host; without admin.token the admin API answers only requests addressed to localhost, a loopback address or ${this.#opts.host}`)
      }
      if (!SAFE_METHODS.has(method)) {
        const why = crossOrigin(req.headers.origin, req.headers['sec-fetch-site'] as string | undefined, req.headers.host)
        if (why !== undefined) {
          this.#log.warn({ address: req.socket.remoteAddress, method, path, origin: req.headers.origin }, 'admin request refused: cross-origin')
          throw new CanarydError('CANARYD_ERR_CROSS_ORIGIN', `${method} ${path} refused: ${why}; state-changing calls are accepted from the admin address's own pages and from clients that send no Origin (the CLI, curl)`)
        }
      }
      if (this.#token !== undefined && (path === '/api' || path.startsWith('/api/'))) {
        try {
          checkBearer(req.headers.authorization, this.#token)
        } catch (err) {
          this.#log.warn({ address: req.socket.remoteAddress, method, path }, 'admin request refused: missing or wrong token')
          throw err
        }
      }
      const m = this.router.match(method, path)
      if (m.kind === 'none') throw new CanarydError('CANARYD_ERR_NOT_FOUND', `no admin endpoint ${path}; see GET /api/v1/openapi.json`)
      if (m.kind === 'method') {
        res.setHeader('allow', m.allow.join(', '))
        throw new CanarydError('CANARYD_ERR_METHOD_NOT_ALLOWED', `${method} is not allowed on ${path} (allowed: ${m.allow.join(', ')})`)
      }
      const reply = await m.handler({
        req,
        params: m.params,
        query: new URLSearchParams(qi === -1 ? '' : url.slice(qi + 1)),
        address: req.socket.remoteAddress ?? null,
        json: async () => await readJsonBody(req),
        document: async () => await readDocumentBody(req)
      })
      this.#send(res, reply)
    } catch (err) {
      let e: CanarydError
      if (err instanceof CanarydError) {
        e = err
      } else {
        this.#log.error({ err, method, path }, 'admin request failed')
        e = new CanarydError('CANARYD_ERR_INTERNAL', 'internal error; see the canaryd log', { cause: err })
      }
      const headers: Record<string, string> = {}
      if (e.code === 'CANARYD_ERR_UNAUTHORIZED') headers['www-authenticate'] = 'Bearer realm="canaryd-admin"'
      // the rest of an oversized body is not read: close instead of draining it
      if (e.code === 'CANARYD_ERR_PAYLOAD_TOO_LARGE') headers.connection = 'close'
      this.#send(res, { status: e.status, json: e.toJSON(), headers })
      this.#log.debug({ method, path, status: e.status, code: e.code }, 'admin request rejected')
    }
  }

  #send (res: ServerResponse, reply: AdminReply): void {
    if (res.headersSent) return
    const own: Record<string, string> = {}
    // lower-cased, so a handler's own policy replaces the default instead of being sent beside it
    for (const [k, v] of Object.entries(reply.headers ?? {})) own[k.toLowerCase()] = v
    if ('stream' in reply) {
      // no length: the body lasts as long as the handler writes it
      res.writeHead(reply.status ?? 200, { ...SECURITY_HEADERS, ...own, 'content-type': reply.contentType, 'cache-control': 'no-store' })
      reply.stream(res)
      return
    }
    const body = 'json' in reply ? `${JSON.stringify(reply.json, null, 2)}\n` : 'text' in reply ? reply.text : reply.body
    res.writeHead(reply.status ?? 200, {
      ...SECURITY_HEADERS,
      ...own,
      'content-type': 'json' in reply ? 'application/json; charset=utf-8' : reply.contentType,
      // a 304 has no body and says nothing of the length of the one it stands for (RFC 9110 §8.6)
      ...(reply.status === 304 ? {} : { 'content-length': Buffer.byteLength(body) }),
      // API answers are never cached; the dashboard's files say their own (revalidate with an ETag)
      'cache-control': own['cache-control'] ?? 'no-store'
    })
    res.end(body)
  }
}

/** Methods that change nothing: never refused for their origin. */
const SAFE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS'])

/**
 * On every admin response: nothing of it may be framed (clickjacking),
 * sniffed into another type, or run as a page (the JSON and text the API
 * answers never need a script, a style or a frame).
 */
const SECURITY_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer'
})

/**
 * Why a state-changing request comes from another origin, or undefined. A
 * browser sends `Origin` on every cross-origin POST/PUT/DELETE (and
 * `Sec-Fetch-Site`); it must name the address the request was sent to (its
 * `Host`). No `Origin` and no cross-site `Sec-Fetch-Site`: not a browser's
 * cross-site request (the CLI, curl, scripts).
 */
export function crossOrigin (origin: string | undefined, fetchSite: string | undefined, host: string | undefined): string | undefined {
  if (origin !== undefined) {
    if (origin === 'null') return 'Origin is null (a sandboxed or file page)'
    let o: URL
    try {
      o = new URL(origin)
    } catch {
      return `Origin ${JSON.stringify(origin.slice(0, 100))} is not a URL`
    }
    if (o.protocol !== 'http:' || host === undefined || o.host !== host.toLowerCase()) return `Origin ${o.origin} is not this admin address (${host ?? 'no Host'})`
    return undefined
  }
  if (fetchSite !== undefined && fetchSite !== 'same-origin' && fetchSite !== 'none') return `Sec-Fetch-Site is ${fetchSite}`
  return undefined
}

function parseLimit (raw: string | null): number {
  if (raw === null) return 100
  if (!/^\d{1,7}$/.test(raw) || Number(raw) < 1 || Number(raw) > MAX_AUDIT_LIMIT) {
    throw new CanarydError('CANARYD_ERR_INVALID_QUERY', `limit must be a whole number from 1 to ${MAX_AUDIT_LIMIT}, got ${JSON.stringify(raw)}`)
  }
  return Number(raw)
}
