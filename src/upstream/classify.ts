import type { ErrorCode } from '../errors.js'
import type { UpstreamErrorKind } from '../metrics/kinds.js'

/** What an upstream failure means for the client and the metrics. */
export interface UpstreamFailure {
  readonly kind: UpstreamErrorKind
  readonly code: ErrorCode
  /** True when the request bytes cannot have been processed by the upstream (safe to retry). */
  readonly notSent: boolean
  /** True when the failure was caused by the client's own request (→ 400, not an upstream error). */
  readonly clientFault: boolean
}

const CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'EADDRNOTAVAIL', 'ECONNABORTED'])
const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_DESTROYED'])

function f (kind: UpstreamErrorKind, code: ErrorCode, notSent = false, clientFault = false): UpstreamFailure {
  return Object.freeze({ kind, code, notSent, clientFault })
}

const CONNECT = f('connect', 'CANARYD_ERR_UPSTREAM_CONNECT', true)
const TLS = f('connect', 'CANARYD_ERR_UPSTREAM_TLS', true)
const CONNECT_TIMEOUT = f('connect', 'CANARYD_ERR_UPSTREAM_TIMEOUT', true)
const TIMEOUT = f('timeout', 'CANARYD_ERR_UPSTREAM_TIMEOUT')
const RESET = f('reset', 'CANARYD_ERR_UPSTREAM_RESET')
const PROTOCOL = f('protocol', 'CANARYD_ERR_UPSTREAM_PROTOCOL')
const CLIENT = f('other', 'CANARYD_ERR_BAD_REQUEST', false, true)
const OTHER = f('other', 'CANARYD_ERR_UPSTREAM_OTHER')

/**
 * Error codes of a failed TLS handshake with an upstream: Node's own
 * (`ERR_TLS_CERT_ALTNAME_INVALID`, `ERR_SSL_WRONG_VERSION_NUMBER` for an
 * https origin that speaks plain HTTP, …), OpenSSL's verification results
 * (`CERT_HAS_EXPIRED`, `UNABLE_TO_VERIFY_LEAF_SIGNATURE`,
 * `DEPTH_ZERO_SELF_SIGNED_CERT`, `SELF_SIGNED_CERT_IN_CHAIN`, …) and EPROTO.
 */
const TLS_CODE = /^(?:ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|SELF_SIGNED_|DEPTH_ZERO_|HOSTNAME_MISMATCH$|EPROTO$)/

/** True when `code` (an error's `code`) is a TLS handshake or certificate failure. */
export function isTlsErrorCode (code: string): boolean {
  return TLS_CODE.test(code)
}

/**
 * Maps an undici / socket error to a failure kind and the error code sent to
 * the client: refused → 502 connect, a failed TLS handshake (wrong scheme,
 * unknown CA, expired or mismatched certificate) → 502 TLS, kind connect, connect timeout → 504, no headers in
 * time → 504, reset/closed → 502, unparsable response (llhttp HPE_* errors,
 * length mismatch) → 502 protocol; a request undici refuses to send (invalid
 * header, body shorter than its Content-Length) is the client's fault → 400.
 */
export function classifyUpstreamError (err: unknown): UpstreamFailure {
  const e = err as { code?: string; name?: string; cause?: { code?: string } }
  const code = e?.code ?? ''
  // undici's parser errors carry no code for some failures (an invalid status line)
  if (e?.name === 'HTTPParserError') return PROTOCOL
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return CONNECT_TIMEOUT
  if (CONNECT_CODES.has(code)) return CONNECT
  if (code.length !== 0 && TLS_CODE.test(code)) return TLS
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return TIMEOUT
  if (code.startsWith('HPE_') || code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' || code === 'UND_ERR_RES_EXCEEDED_MAX_SIZE' || code === 'UND_ERR_INFO') return PROTOCOL
  if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED' || code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') return CLIENT
  if (RESET_CODES.has(code)) {
    const cause = e.cause?.code ?? ''
    if (cause.startsWith('HPE_')) return PROTOCOL
    return RESET
  }
  if (e?.cause !== undefined && e.cause !== err) return classifyUpstreamError(e.cause)
  return OTHER
}
