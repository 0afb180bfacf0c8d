import convict from 'convict'

/** The longest delay Node's timers take (2^31 - 1 ms, about 24.8 days); past it Node fires at once. */
export const MAX_MS = 2_147_483_647

// Durations are timer delays: a larger one would make Node fire the timer after
// 1 ms (a check loop) or throw at start-up (keepAliveTimeout), so it is refused here
convict.addFormat({
  name: 'ms',
  validate (v: unknown) {
    if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > MAX_MS) throw new Error(`must be a whole number of milliseconds from 0 to ${MAX_MS}`)
  },
  coerce: (v: unknown) => Number(v)
})
convict.addFormat({
  name: 'positive-ms',
  validate (v: unknown) {
    if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > MAX_MS) throw new Error(`must be a whole number of milliseconds from 1 to ${MAX_MS}`)
  },
  coerce: (v: unknown) => Number(v)
})

/** The TypeScript type of a schema leaf's value, from its convict `format`. */
type LeafValue<F> = F extends StringConstructor ? string
  : F extends BooleanConstructor ? boolean
    : F extends readonly (infer U)[] ? U
      : F extends 'port' | 'nat' | 'ms' | 'positive-ms' | 'int' ? number
        : F extends ArrayConstructor ? unknown[]
          : never

/** The config type a schema (sub)tree describes: leaves by format, branches recursively. */
export type SchemaValues<S> = { [K in keyof S]: S[K] extends { format: infer F, default: unknown } ? LeafValue<F> : SchemaValues<S[K]> }

/**
 * The static configuration: everything but `routes`, typed from the schema
 * itself (one table holds each key's format, default, env var and doc).
 * Static keys take effect at start only; a reload reports a changed one as
 * needing a restart.
 */
export type StaticConfig = SchemaValues<Omit<typeof schema, 'routes'>>

/**
 * The startup configuration schema (convict): every key has a doc, a format,
 * a default and, where it is a port, address or secret, an environment
 * variable. `routes` is validated separately by `validateRoutes` because its
 * messages must name array positions (`routes[0].versions: …`).
 * The README's config reference is written from this table.
 */
export const schema = {
  listen: {
    host: { doc: 'Address the proxy listens on.', format: String, default: '0.0.0.0', env: 'CANARYD_LISTEN_HOST' },
    port: { doc: 'Port the proxy listens on (0 = any free port).', format: 'port', default: 8080, env: 'CANARYD_LISTEN_PORT' },
    tls: {
      certFile: { doc: 'PEM certificate (chain, leaf first) served by the proxy listener: with `keyFile`, turns TLS on. For several certificates chosen by SNI use `certificates` instead. Reloaded without a restart (SIGHUP, POST /api/v1/reload, serve --watch).', format: String, default: '', env: 'CANARYD_TLS_CERT_FILE' },
      keyFile: { doc: 'PEM private key (unencrypted) of `certFile`.', format: String, default: '', env: 'CANARYD_TLS_KEY_FILE' },
      certificates: { doc: 'Several certificates, `[{ "certFile": …, "keyFile": … }, …]`: each handshake gets the one whose names match the requested server name (SNI; exact name first, then a `*.` wildcard for one label); no match or no SNI gets the first. Instead of `certFile`/`keyFile`.', format: Array, default: [] as unknown[] },
      minVersion: { doc: 'Oldest TLS version accepted.', format: ['TLSv1.2', 'TLSv1.3'], default: 'TLSv1.2', env: 'CANARYD_TLS_MIN_VERSION' },
      ciphers: { doc: 'OpenSSL cipher list ("" = Node\'s default: ECDHE with AES-GCM or ChaCha20 first, no RC4, no 3DES, no export ciphers). TLS 1.2 names restrict TLS 1.2; `TLS_…` names in the list set the TLS 1.3 suites.', format: String, default: '', env: 'CANARYD_TLS_CIPHERS' }
    },
    http2: { doc: 'With TLS, offer HTTP/2 by ALPN (h2, then http/1.1). false = HTTP/1.1 only.', format: Boolean, default: true, env: 'CANARYD_LISTEN_HTTP2' },
    h2c: { doc: 'Without TLS, also accept cleartext HTTP/2 with prior knowledge (a connection starting with the HTTP/2 preface), beside HTTP/1.1. For a trusted network (e.g. behind a load balancer that speaks h2c); no HTTP/1.1 Upgrade: h2c.', format: Boolean, default: false, env: 'CANARYD_LISTEN_H2C' },
    redirectPort: { doc: 'With TLS, also listen on this port for plain HTTP and answer every request with 308 to the same URL over https (0 = off). Requests under /.well-known/acme-challenge/ are routed instead, when `acmePassthrough` is on.', format: 'port', default: 0, env: 'CANARYD_LISTEN_REDIRECT_PORT' },
    redirectHttpsPort: { doc: 'Port written in the redirect\'s https URL (0 = listen.port; 443 is left out). Set it when the public port differs from listen.port (a Service mapping 443 to 8443).', format: 'port', default: 0, env: 'CANARYD_LISTEN_REDIRECT_HTTPS_PORT' },
    acmePassthrough: { doc: 'On the redirect port, route requests under /.well-known/acme-challenge/ like any other request (HTTP-01 challenges answered by a route of yours, e.g. an ACME client beside the app) instead of redirecting them.', format: Boolean, default: true, env: 'CANARYD_LISTEN_ACME_PASSTHROUGH' },
    proxyProtocol: { doc: 'Every connection (both ports) must start with a PROXY protocol v1 or v2 header (AWS NLB, HAProxy send-proxy); the address it carries is the client address. A connection without a valid header is closed.', format: Boolean, default: false, env: 'CANARYD_LISTEN_PROXY_PROTOCOL' },
    proxyProtocolTrustedIPs: { doc: 'With proxyProtocol: CIDRs (or addresses, or `loopback`, `private`, `linklocal`) of the load balancers that may send PROXY headers; a connection from any other peer is closed before a byte is read, so a client that reaches the port directly cannot name its own address ([] = any peer; then firewall the port). Comma-separated in the env var.', format: Array, default: [] as unknown[], env: 'CANARYD_LISTEN_PROXY_PROTOCOL_TRUSTED_IPS' }
  },
  trustedProxies: { doc: 'CIDRs (or addresses, or `loopback`, `private`, `linklocal`) of the proxies in front of canaryd. X-Forwarded-For/-Proto/-Host from any other peer are replaced; from these they are kept, and the client address (the `ip` sticky key, the access log) is the first untrusted hop from the right of X-Forwarded-For. Comma-separated in the env var.', format: Array, default: [] as unknown[], env: 'CANARYD_TRUSTED_PROXIES' },
  admin: {
    host: { doc: 'Address of the admin server (API, /metrics, /healthz). A non-loopback address requires a token.', format: String, default: '127.0.0.1', env: 'CANARYD_ADMIN_HOST' },
    port: { doc: 'Port of the admin server (0 = any free port).', format: 'port', default: 9901, env: 'CANARYD_ADMIN_PORT' },
    token: { doc: 'Bearer token required on /api/ when set.', format: String, default: '', env: 'CANARYD_ADMIN_TOKEN', sensitive: true },
    ui: { doc: 'Serve the web dashboard at /ui/ on the admin server (its pages hold no data: they read the admin API with the same token). false = /ui/ answers 404; the API and its event stream stay.', format: Boolean, default: true, env: 'CANARYD_ADMIN_UI' }
  },
  state: {
    file: { doc: 'File holding runtime state (weights, rollouts), written atomically. With `store.type` redis, the local snapshot of the fleet state is written next to it (`state.json` → `state.fleet.json`).', format: String, default: './data/state.json', env: 'CANARYD_STATE_FILE' }
  },
  store: {
    type: { doc: 'Where runtime state lives: `file` (the state file; one instance) or `redis` (a fleet: every instance holds the same weights, segments, upstreams and rollouts; see docs/fleet.md).', format: ['file', 'redis'], default: 'file', env: 'CANARYD_STORE_TYPE' },
    url: { doc: 'With `store.type` redis: the Redis (6+) or Valkey URL, `redis://[:password@]host:port/db`, or `rediss://…` for TLS. `canaryd config print` masks its password.', format: String, default: 'redis://127.0.0.1:6379/0', env: 'CANARYD_REDIS_URL' },
    prefix: { doc: 'With `store.type` redis: the prefix of every key canaryd writes (fleets sharing one Redis use different prefixes).', format: String, default: 'canaryd:', env: 'CANARYD_REDIS_PREFIX' },
    instanceId: { doc: 'This instance\'s name in the fleet ("" = the host name and 6 random hex digits). In Kubernetes, the pod name.', format: String, default: '', env: 'CANARYD_INSTANCE_ID' },
    leaseTtlMs: { doc: 'A rollout leader\'s lease: renewed every third of it; when its leader dies another instance takes the rollout over after at most this long (plus one renewal period).', format: 'positive-ms', default: 10000, env: 'CANARYD_STORE_LEASE_TTL_MS' },
    syncMs: { doc: 'How often an instance checks the fleet\'s generation besides the change notifications (catches a lost notification).', format: 'positive-ms', default: 1000, env: 'CANARYD_STORE_SYNC_MS' },
    heartbeatMs: { doc: 'How often an instance refreshes its heartbeat (GET /api/v1/fleet); an instance silent for 3 periods drops out of the list.', format: 'positive-ms', default: 2000, env: 'CANARYD_STORE_HEARTBEAT_MS' },
    connectTimeoutMs: { doc: 'At start, how long to wait for Redis before starting from the local snapshot (or refusing to start without one).', format: 'positive-ms', default: 5000, env: 'CANARYD_STORE_CONNECT_TIMEOUT_MS' }
  },
  timeouts: {
    upstreamConnectMs: { doc: 'TCP (and TLS) connect timeout to an upstream.', format: 'ms', default: 5000, env: 'CANARYD_UPSTREAM_CONNECT_MS' },
    upstreamResponseMs: { doc: 'Time allowed for the upstream to send response headers; past it the client gets 504.', format: 'ms', default: 30000, env: 'CANARYD_UPSTREAM_RESPONSE_MS' },
    upstreamBodyMs: { doc: 'Largest silence allowed between two chunks of the upstream response body (0 = none).', format: 'ms', default: 30000, env: 'CANARYD_UPSTREAM_BODY_MS' },
    clientHeadersMs: { doc: 'Time a client has to send its request headers; past it, 408.', format: 'ms', default: 10000, env: 'CANARYD_CLIENT_HEADERS_MS' },
    clientIdleMs: { doc: 'How long an idle client keep-alive connection is kept open.', format: 'ms', default: 60000, env: 'CANARYD_CLIENT_IDLE_MS' },
    clientBodyMs: { doc: 'Longest silence allowed from a client whose request body is incomplete (before or during forwarding); past it, 408 and the connection is closed (0 = none).', format: 'ms', default: 30000, env: 'CANARYD_CLIENT_BODY_MS' },
    clientSendMs: { doc: 'Longest a client may take to accept more of a response once canaryd\'s send buffer to it is full (nginx\'s send_timeout); past it the connection (HTTP/2: the stream) is closed and the upstream request aborted, so a client that never reads cannot hold an upstream connection (0 = none).', format: 'ms', default: 60000, env: 'CANARYD_CLIENT_SEND_MS' },
    drainTimeoutMs: { doc: 'On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.', format: 'ms', default: 30000, env: 'CANARYD_DRAIN_TIMEOUT_MS' }
  },
  upstream: {
    connections: { doc: 'Most keep-alive connections per upstream origin, for each of the two upstream clients (undici, and Node\'s http client for large bodies).', format: 'nat', default: 128, env: 'CANARYD_UPSTREAM_CONNECTIONS' },
    keepAliveMs: { doc: 'How long an idle upstream connection is kept (capped by the upstream\'s Keep-Alive hint).', format: 'ms', default: 4000, env: 'CANARYD_UPSTREAM_KEEPALIVE_MS' },
    maxInFlight: { doc: 'Most requests in flight to one upstream origin; past it the proxy answers 503 at once instead of queueing (0 = no cap).', format: 'nat', default: 1024, env: 'CANARYD_UPSTREAM_MAX_IN_FLIGHT' },
    retries: { doc: 'Extra attempts after a connect failure, or after a reset of an idempotent request before any response byte; a request body already read is never replayed.', format: 'nat', default: 1, env: 'CANARYD_UPSTREAM_RETRIES' },
    dnsRefreshMs: { doc: 'How often the host names of versions with `"discovery": "dns"` are re-resolved; every A/AAAA record is an endpoint. A failed resolution keeps the last good set (logged at most once per minute per name).', format: 'positive-ms', default: 5000, env: 'CANARYD_UPSTREAM_DNS_REFRESH_MS' },
    dnsServers: { doc: 'DNS servers for discovery, comma-separated `host[:port]` (IPv6 as `[::1]:53`); "" = the system resolver (getaddrinfo: /etc/hosts and search domains, as Kubernetes short names need).', format: String, default: '', env: 'CANARYD_UPSTREAM_DNS_SERVERS' },
    tls: {
      ca: { doc: 'PEM file of the CA(s) that verify https upstreams (replaces the system roots); "" = system roots. A version\'s own `tls` overrides each field.', format: String, default: '', env: 'CANARYD_UPSTREAM_TLS_CA' },
      servername: { doc: 'TLS server name (SNI, and the name the certificate must hold) for https upstreams; "" = the origin\'s host name (none for an IP origin).', format: String, default: '', env: 'CANARYD_UPSTREAM_TLS_SERVERNAME' },
      cert: { doc: 'PEM client certificate for mTLS to https upstreams (with `key`); "" = none.', format: String, default: '', env: 'CANARYD_UPSTREAM_TLS_CERT' },
      key: { doc: 'PEM private key of `cert` (unencrypted); "" = none.', format: String, default: '', env: 'CANARYD_UPSTREAM_TLS_KEY', sensitive: true },
      insecureSkipVerify: { doc: 'Do not verify https upstreams\' certificates (testing only; logged at warn at start).', format: Boolean, default: false, env: 'CANARYD_UPSTREAM_TLS_INSECURE_SKIP_VERIFY' }
    },
    largeBodyBytes: { doc: 'Requests whose body is at least this many bytes (by Content-Length), and every chunked request body, go upstream through Node\'s http client, which uploads with less CPU than undici; smaller requests use undici (0 = always undici).', format: 'nat', default: 65536, env: 'CANARYD_UPSTREAM_LARGE_BODY_BYTES' }
  },
  limits: {
    maxHeaderBytes: { doc: 'Most bytes of request line plus headers; past it, 431.', format: 'nat', default: 16384, env: 'CANARYD_MAX_HEADER_BYTES' },
    maxHeaderCount: { doc: 'Most request header fields; past it, 431.', format: 'nat', default: 100, env: 'CANARYD_MAX_HEADER_COUNT' },
    maxUrlBytes: { doc: 'Longest request target; past it, 414.', format: 'nat', default: 8192, env: 'CANARYD_MAX_URL_BYTES' },
    allowTrace: { doc: 'Forward TRACE requests; when false (default, as nginx and Envoy), TRACE is answered 405 and never reaches an upstream.', format: Boolean, default: false, env: 'CANARYD_ALLOW_TRACE' },
    maxConnections: { doc: 'Most client connections the proxy listener holds open at once on each of its ports (per process: each cluster worker gets its share); past it a new connection is closed at once, without a response, and counted in canaryd_connections_rejected_total. Connections already served are unaffected (0 = no cap).', format: 'nat', default: 10000, env: 'CANARYD_MAX_CONNECTIONS' },
    http2MaxConcurrentStreams: { doc: 'HTTP/2: most streams (requests) one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused by the protocol.', format: 'nat', default: 128, env: 'CANARYD_HTTP2_MAX_CONCURRENT_STREAMS' },
    http2MaxHeaderListBytes: { doc: 'HTTP/2: most bytes of a request\'s decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE: names, values and 32 bytes per field); past it the stream is reset.', format: 'nat', default: 32768, env: 'CANARYD_HTTP2_MAX_HEADER_LIST_BYTES' },
    underscoreHeaders: { doc: 'Request header names containing `_`: drop them (as Envoy), reject the request with 400, or allow them.', format: ['drop', 'reject', 'allow'], default: 'drop', env: 'CANARYD_UNDERSCORE_HEADERS' }
  },
  health: {
    consecutiveFailures: { doc: 'Outlier detection: consecutive connect failures or 5xx responses that eject a version (0 = off).', format: 'nat', default: 5, env: 'CANARYD_HEALTH_CONSECUTIVE_FAILURES' },
    ejectionMs: { doc: 'How long an ejected version gets no new users.', format: 'ms', default: 30000, env: 'CANARYD_HEALTH_EJECTION_MS' },
    checkPath: { doc: 'Active health check: `GET` this path on every version\'s upstream ("" = off); a connect error, timeout or any status but 2xx/3xx (4xx included) ejects, a 2xx/3xx brings the version back.', format: String, default: '', env: 'CANARYD_HEALTH_CHECK_PATH' },
    checkIntervalMs: { doc: 'Active health check period.', format: 'positive-ms', default: 5000, env: 'CANARYD_HEALTH_CHECK_INTERVAL_MS' }
  },
  log: {
    level: { doc: 'pino log level (LOG_LEVEL wins).', format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info', env: 'CANARYD_LOG_LEVEL' },
    access: { doc: 'Log one line per request at info (route, version, status, duration). Off by default.', format: Boolean, default: false, env: 'CANARYD_ACCESS_LOG' },
    maxBufferBytes: { doc: 'Most log bytes waiting for a slow stdout; past it (and once stdout is closed) lines are dropped and counted in canaryd_log_dropped_total instead of blocking the proxy.', format: 'nat', default: 1048576, env: 'CANARYD_LOG_MAX_BUFFER_BYTES' }
  },
  routes: {
    doc: 'Routes: match, sticky keys, override, versions with weights. See README.',
    format: Array,
    default: [] as unknown[]
  }
} as const

/**
 * A convict instance over the schema. `env` is passed explicitly (tests isolate
 * it) and command-line parsing is off: canaryd's CLI owns argv.
 */
export function createConvict (env: NodeJS.ProcessEnv): convict.Config<unknown> {
  return convict(schema as convict.Schema<unknown>, { env, args: [] })
}
