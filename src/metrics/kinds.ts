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
