import convict from 'convict'

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
    port: { doc: 'Port the proxy listens on (0 = any free port).', format: 'port', default: 8080, env: 'CANARYD_LISTEN_PORT' }
  },
  admin: {
    host: { doc: 'Address of the admin server (API, /metrics, /healthz). A non-loopback address requires a token.', format: String, default: '127.0.0.1', env: 'CANARYD_ADMIN_HOST' },
    port: { doc: 'Port of the admin server (0 = any free port).', format: 'port', default: 9901, env: 'CANARYD_ADMIN_PORT' },
    token: { doc: 'Bearer token required on /api/ when set.', format: String, default: '', env: 'CANARYD_ADMIN_TOKEN', sensitive: true }
  },
  state: {
    file: { doc: 'File holding runtime state (weights, rollouts), written atomically.', format: String, default: './data/state.json', env: 'CANARYD_STATE_FILE' }
  },
  timeouts: {
    upstreamConnectMs: { doc: 'TCP (and TLS) connect timeout to an upstream.', format: 'nat', default: 5000, env: 'CANARYD_UPSTREAM_CONNECT_MS' },
    upstreamResponseMs: { doc: 'Time allowed for the upstream to send response headers; past it the client gets 504.', format: 'nat', default: 30000, env: 'CANARYD_UPSTREAM_RESPONSE_MS' },
    upstreamBodyMs: { doc: 'Largest silence allowed between two chunks of the upstream response body (0 = none).', format: 'nat', default: 30000, env: 'CANARYD_UPSTREAM_BODY_MS' },
    clientHeadersMs: { doc: 'Time a client has to send its request headers; past it, 408.', format: 'nat', default: 10000, env: 'CANARYD_CLIENT_HEADERS_MS' },
    clientIdleMs: { doc: 'How long an idle client keep-alive connection is kept open.', format: 'nat', default: 60000, env: 'CANARYD_CLIENT_IDLE_MS' },
    drainMs: { doc: 'On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.', format: 'nat', default: 30000, env: 'CANARYD_DRAIN_MS' }
  },
  upstream: {
    connections: { doc: 'Most keep-alive connections per upstream origin.', format: 'nat', default: 128, env: 'CANARYD_UPSTREAM_CONNECTIONS' },
    keepAliveMs: { doc: 'How long an idle upstream connection is kept (capped by the upstream\'s Keep-Alive hint).', format: 'nat', default: 4000, env: 'CANARYD_UPSTREAM_KEEPALIVE_MS' }
  },
  log: {
    level: { doc: 'pino log level (LOG_LEVEL wins).', format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info', env: 'CANARYD_LOG_LEVEL' },
    access: { doc: 'Log one line per request at info (route, version, status, duration). Off by default.', format: Boolean, default: false, env: 'CANARYD_ACCESS_LOG' }
  },
  routes: {
    doc: 'Routes: match, sticky keys, override, versions with weights. See README.',
    format: Array,
    default: [] as unknown[]
  }
}

/**
 * A convict instance over the schema. `env` is passed explicitly (tests isolate
 * it) and command-line parsing is off: canaryd's CLI owns argv.
 */
export function createConvict (env: NodeJS.ProcessEnv): convict.Config<unknown> {
  return convict(schema as convict.Schema<unknown>, { env, args: [] })
}
