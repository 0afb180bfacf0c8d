/**
 * One registry of canaryd's errors. Every error the proxy or the admin API can
 * answer with has a stable `code` (`CANARYD_ERR_…`) and the HTTP status it maps
 * to, so clients, logs and the README all speak of the same thing. A test keeps
 * this table and the README's error table in step.
 */

/**
 * The registry: code → HTTP status, a one-line meaning (documented in README),
 * and for the codes the proxy answers itself the `message` of its JSON body
 * (one place, so a throw site never rewrites it). `refusal` marks the answers
 * to a request canaryd will not process: they end the connection, because
 * whatever the client pipelined behind such a request cannot be trusted to
 * be framed the way the client meant.
 */
export const ERROR_CODES = {
  CANARYD_ERR_CONFIG_INVALID: { status: 500, doc: 'The configuration file or environment failed validation; canaryd refuses to start.' },
  CANARYD_ERR_NO_ROUTE: { status: 404, doc: 'No route matches the request Host and path.', message: 'no route matches this host and path' },
  CANARYD_ERR_BAD_REQUEST: { status: 400, doc: 'The client request is malformed or ambiguous and was not forwarded.', message: 'the request is malformed and was not forwarded', refusal: true },
  CANARYD_ERR_INVALID_HOST: { status: 400, doc: 'The Host header is missing (HTTP/1.1), repeated, empty or not a valid authority (RFC 3986 reg-name or IP literal, optional port); the request was not forwarded.', message: 'the Host header is missing, repeated or not a valid authority', refusal: true },
  CANARYD_ERR_UPSTREAM_CONNECT: { status: 502, doc: 'The chosen upstream refused or failed the TCP connection.', message: 'the upstream refused the connection' },
  CANARYD_ERR_UPSTREAM_TLS: { status: 502, doc: 'The TLS handshake with an https upstream failed (an origin that speaks plain HTTP, an unknown CA, an expired or mismatched certificate); logged at warn once per origin per minute with the cause.', message: 'the TLS handshake with the upstream failed' },
  CANARYD_ERR_UPSTREAM_RESET: { status: 502, doc: 'The upstream closed or reset the connection before sending response headers.', message: 'the upstream closed the connection before responding' },
  CANARYD_ERR_UPSTREAM_PROTOCOL: { status: 502, doc: 'The upstream sent an invalid HTTP response (bad status line, ambiguous framing).', message: 'the upstream sent an invalid HTTP response' },
  CANARYD_ERR_UPSTREAM_TIMEOUT: { status: 504, doc: 'The upstream sent no response headers within timeouts.upstreamResponseMs.', message: 'the upstream did not respond in time' },
  CANARYD_ERR_UPSTREAM_UNAVAILABLE: { status: 503, doc: 'No version of the route can take the request (every endpoint of every version ejected, or a version with no endpoint, e.g. a DNS name that resolved to nothing).', message: 'no upstream is available for this route' },
  CANARYD_ERR_UPSTREAM_OTHER: { status: 502, doc: 'Forwarding failed for another reason; the cause is logged.', message: 'forwarding to the upstream failed' },
  CANARYD_ERR_UNAUTHORIZED: { status: 401, doc: 'Admin API: missing or wrong `Authorization: Bearer` token.' },
  CANARYD_ERR_CROSS_ORIGIN: { status: 403, doc: 'Admin API: a state-changing request (POST, PUT, PATCH, DELETE) sent by a browser from another origin (its `Origin` is not the admin address, or `Sec-Fetch-Site` says cross-site). Without a token, also any request addressed to a name other than a loopback name or `admin.host` (DNS rebinding). Stops a web page from changing weights or aborting rollouts through a browser on the admin host; the CLI, curl and scripts send no `Origin` and are not affected.' },
  CANARYD_ERR_NOT_FOUND: { status: 404, doc: 'Admin API: unknown path.' },
  CANARYD_ERR_SHUTTING_DOWN: { status: 503, doc: 'Admin API: `GET /api/v1/events` while this instance is shutting down (its event feed has closed); connect to another instance or retry once it is back.' },
  CANARYD_ERR_TOO_MANY_STREAMS: { status: 429, doc: 'Admin API: `GET /api/v1/events` while 32 event streams are open on this instance already (each dashboard tab holds one); close one or retry later.' },
  CANARYD_ERR_ROUTE_NOT_FOUND: { status: 404, doc: 'Admin API: no route with that name.', message: 'no route named {route} (routes: {routes})' },
  CANARYD_ERR_VERSION_NOT_FOUND: { status: 404, doc: 'Admin API: the route has no version with that name.', message: 'route {route} has no version {version} (versions: {versions})' },
  CANARYD_ERR_INVALID_UPSTREAM: { status: 400, doc: 'Admin API: the `upstream` of `PUT /api/v1/routes/{route}/versions/{version}` is not an http(s) origin or non-empty array of distinct origins (or, with DNS discovery, names an address instead of a host name); the message names the bad entry.' },
  CANARYD_ERR_INVALID_SEGMENTS: { status: 400, doc: 'Admin API: the `segments` of `PUT /api/v1/routes/{route}/segments` break the config\'s rules (unknown version, weights not summing to 100, a bad CIDR, an invalid RE2 pattern, duplicate names); the message names the key, e.g. `segments[1].match.ip[0]`. Nothing was changed.' },
  CANARYD_ERR_CONFIG_RELOAD: { status: 400, doc: 'Admin API: on `POST /api/v1/reload` the config file failed validation; nothing was changed and the message names the key (also logged).' },
  CANARYD_ERR_RELOAD_UNAVAILABLE: { status: 409, doc: 'Admin API: this instance was not started from a config file, so there is nothing to reload.' },
  CANARYD_ERR_METHOD_NOT_ALLOWED: { status: 405, doc: 'Admin API: the path exists but not for this method (see the Allow header). Proxy: a TRACE request while limits.allowTrace is false.', message: 'this method is not allowed', refusal: true },
  CANARYD_ERR_INVALID_JSON: { status: 400, doc: 'Admin API: the request body is not valid JSON.' },
  CANARYD_ERR_INVALID_YAML: { status: 400, doc: 'Admin API: a rollout plan sent as YAML (`Content-Type: application/yaml`) is not valid YAML, or uses what a plan never needs: more than 100 aliases, a duplicate key; the message names the line and column.' },
  CANARYD_ERR_INVALID_WEIGHTS: { status: 400, doc: 'Admin API: the weights are incomplete, out of range, too precise or do not sum to 100.' },
  CANARYD_ERR_INVALID_BODY: { status: 400, doc: 'Admin API: the JSON body does not have the expected shape.' },
  CANARYD_ERR_INVALID_QUERY: { status: 400, doc: 'Admin API: a query parameter is invalid (e.g. `limit` of /api/v1/audit outside 1–1000).' },
  CANARYD_ERR_PAYLOAD_TOO_LARGE: { status: 413, doc: 'Admin API: the request body is over 64 KiB.' },
  CANARYD_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, doc: 'Admin API: the request body is not `application/json`.' },
  CANARYD_ERR_STATE_PERSIST: { status: 500, doc: 'Admin API: the new state could not be written to state.file; nothing was changed.' },
  CANARYD_ERR_REQUEST_TIMEOUT: { status: 408, doc: 'The client did not send its request headers within timeouts.clientHeadersMs, or its body stalled for timeouts.clientBodyMs before it was forwarded.', message: 'the request headers or body did not arrive in time', refusal: true },
  CANARYD_ERR_URI_TOO_LONG: { status: 414, doc: 'The request target is longer than limits.maxUrlBytes.', message: 'the request target is too long', refusal: true },
  CANARYD_ERR_HEADERS_TOO_LARGE: { status: 431, doc: 'The request headers are over limits.maxHeaderBytes or limits.maxHeaderCount.', message: 'the request headers are too large or too many', refusal: true },
  CANARYD_ERR_EXPECTATION_FAILED: { status: 417, doc: 'The request has an Expect header other than `100-continue`.', message: 'only Expect: 100-continue is supported', refusal: true },
  CANARYD_ERR_NOT_IMPLEMENTED: { status: 501, doc: 'The request uses a transfer coding or method the proxy does not forward (only a single `chunked` coding; no CONNECT).', message: 'this transfer coding or method is not forwarded', refusal: true },
  CANARYD_ERR_UPSTREAM_OVERLOADED: { status: 503, doc: 'The upstream already has upstream.maxInFlight requests in flight; answered at once instead of queueing.', message: 'the upstream has too many requests in flight' },
  CANARYD_ERR_INVALID_PLAN: { status: 400, doc: 'Admin API / config: the rollout plan is invalid (steps, intervalMs, analysis, promotion, webhooks); the message lists every problem.' },
  CANARYD_ERR_ROLLOUT_CONFLICT: { status: 409, doc: 'Admin API: the route already has a rollout running, the action (pause, resume, promote) does not apply to the rollout\'s state, or `canaryUpstream` was given while the canary still has weight.' },
  CANARYD_ERR_NO_ROLLOUT: { status: 404, doc: 'Admin API: the route has no rollout.', message: 'route {route} has no rollout' },
  CANARYD_ERR_STORE_UNAVAILABLE: { status: 503, doc: 'Admin API, fleet mode (`store.type` redis): Redis cannot be reached or refused the command (the message says which), or a rollout\'s leader did not answer a forwarded action. When the store was unreachable before the write, nothing changed anywhere; when it stopped answering during the write (a timeout, a connection lost mid-command), the message says the change may have been applied: `GET` shows the truth once the store is back. The proxy keeps serving the last state it applied. Retry once the store is back (`canaryd_store_up`).' },
  CANARYD_ERR_STORE_CONFLICT: { status: 409, doc: 'Admin API, fleet mode: other instances changed the fleet state each time this change was about to be written (5 attempts, each re-read and re-validated on the newer generation); nothing was changed. Retry.' },
  CANARYD_ERR_STORE_CONFIG_MISMATCH: { status: 409, doc: 'Admin API, fleet mode: the fleet state of the route was written for other versions than this instance\'s config has (the instances run different configs, e.g. during a rolling config change); the change was refused so as not to overwrite the fleet\'s state with this instance\'s. Give every instance the same config (and reload it), then retry.' },
  CANARYD_ERR_INTERNAL: { status: 500, doc: 'An unexpected error; the cause is logged.', message: 'internal error' },
} as const satisfies Record<string, { status: number; doc: string; message?: string; refusal?: true }>

/** A stable error code from the registry. */
export type ErrorCode = keyof typeof ERROR_CODES

/** The message of a proxy-made answer (the registry's `message`, else the code itself). */
export function errorMessage (code: ErrorCode): string {
  const e: { status: number; message?: string } = ERROR_CODES[code]
  return e.message ?? code
}

/** True for the codes that refuse a request: the connection is closed after the answer. */
export function isRefusal (code: ErrorCode): boolean {
  const e: { status: number; refusal?: true } = ERROR_CODES[code]
  return e.refusal === true
}

/** Base class of every error canaryd raises on purpose: a code, its status, the cause. */
export class CanarydError extends Error {
  readonly code: ErrorCode
  readonly status: number

  constructor (code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'CanarydError'
    this.code = code
    this.status = ERROR_CODES[code].status
  }

  /** The JSON body sent to clients: `{"error":{"code":"…","message":"…"}}`. */
  toJSON (): { error: { code: ErrorCode; message: string } } {
    return { error: { code: this.code, message: this.message } }
  }
}

/**
 * Builds the error of `code` from the registry's message template, filling
 * each `{name}` from `params` (fastify's createError): one wording per code,
 * whichever module throws it. A template without placeholders is the message.
 */
export function createError (code: ErrorCode, params: Readonly<Record<string, string>> = {}, options?: { cause?: unknown }): CanarydError {
  const message = errorMessage(code).replace(/\{([a-zA-Z]+)\}/g, (m, name: string) => params[name] ?? m)
  return new CanarydError(code, message, options)
}

/** 404 CANARYD_ERR_ROUTE_NOT_FOUND for `route`, naming the routes there are. */
export function routeNotFound (route: string, routes: readonly string[]): CanarydError {
  return createError('CANARYD_ERR_ROUTE_NOT_FOUND', { route: JSON.stringify(route), routes: routes.join(', ') })
}

/** A configuration error: `key` is the dotted path of the offending key (e.g. `routes[0].versions`). */
export class ConfigError extends CanarydError {
  readonly key: string
  constructor (key: string, reason: string) {
    super('CANARYD_ERR_CONFIG_INVALID', key === '' ? reason : `${key}: ${reason}`)
    this.name = 'ConfigError'
    this.key = key
  }
}

/** Serialises an error body once; used for proxy-made responses. */
export function errorBody (code: ErrorCode, message: string): string {
  return JSON.stringify({ error: { code, message } })
}
