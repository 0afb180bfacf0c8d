/**
 * The kinds of upstream failure, the `kind` label of
 * canaryd_upstream_errors_total. Defined here, beside the metrics that label
 * by them, so metrics/ imports nothing of upstream/ (upstream's classifier
 * imports these: the arrow runs upstream → metrics, types only).
 */

/** Kinds of upstream failure, the `kind` label of canaryd_upstream_errors_total. */
export type UpstreamErrorKind = 'connect' | 'timeout' | 'reset' | 'protocol' | 'other'

/** All kinds, in label order (so every series can be created at zero). */
export const UPSTREAM_ERROR_KINDS: readonly UpstreamErrorKind[] = ['connect', 'timeout', 'reset', 'protocol', 'other']

/**
 * How a mirrored copy ended, the `result` label of
 * canaryd_mirror_requests_total: `ok` (an answer below 500), `5xx`, `error`
 * (connect, reset, protocol, no endpoint, or the user's own body failed),
 * `timeout` (no complete answer within the mirror's timeoutMs), `dropped`
 * (the route's copies in flight were at maxInFlight), `too_large` (a body
 * over maxBodyBytes, or chunked: not copied).
 */
export type MirrorResult = 'ok' | '5xx' | 'error' | 'timeout' | 'dropped' | 'too_large'

/** All mirror results, in label order (every series is created at zero). */
export const MIRROR_RESULTS: readonly MirrorResult[] = ['ok', '5xx', 'error', 'timeout', 'dropped', 'too_large']
