/**
 * Metric names, in a module of their own so readers of /metrics (`canaryd
 * top`, tests) need not load prom-client.
 */

/** Every metric family canaryd itself defines (prom-client's default metrics come on top). */
export const METRIC_NAMES = Object.freeze({
  requests: 'canaryd_requests_total',
  duration: 'canaryd_request_duration_seconds',
  upstreamErrors: 'canaryd_upstream_errors_total',
  inFlight: 'canaryd_requests_in_flight',
  ejections: 'canaryd_outlier_ejections_total',
  websockets: 'canaryd_websocket_connections_total',
  websocketsOpen: 'canaryd_websocket_connections_open',
  weight: 'canaryd_route_weight',
  connectionsOpen: 'canaryd_connections_open',
  connectionsRejected: 'canaryd_connections_rejected_total',
  logDropped: 'canaryd_log_dropped_total',
  endpoints: 'canaryd_upstream_endpoints',
  connectionErrors: 'canaryd_connection_errors_total',
  certificateExpiry: 'canaryd_tls_certificate_expiry_timestamp_seconds',
  segmentRequests: 'canaryd_segment_requests_total',
  mirrorRequests: 'canaryd_mirror_requests_total',
  storeUp: 'canaryd_store_up',
  storeConfigMismatch: 'canaryd_store_config_mismatch',
  storeGeneration: 'canaryd_store_generation'
})

/** Prefix of prom-client's default metrics (event-loop lag, heap, handles, CPU, GC). */
export const DEFAULT_METRICS_PREFIX = 'canaryd_'

/**
 * Values of the `source` label of canaryd_requests_total (the only family
 * that has it): `user` for real traffic, `synthetic` for the rollout's load
 * generator, so a low-traffic canary's figures can be read either way.
 */
export const REQUEST_SOURCES = Object.freeze(['user', 'synthetic'] as const)

/**
 * The request header that marks a request as synthetic when its value is
 * exactly `1` (sent by the load generator; the proxy forwards it unchanged).
 */
export const SYNTHETIC_HEADER = 'x-canaryd-synthetic'
