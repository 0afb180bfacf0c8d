import type { Readable } from 'node:stream'

/** Methods a reset may be retried for: repeating them is harmless (RFC 9110 §9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'])

/** What the retry policy needs to know about a failed attempt. */
export interface FailedAttempt {
  /** Failure kind from classifyUpstreamError (`connect`, `reset`, `timeout`, …). */
  readonly kind: string
  /** undici says the request never left (nothing was written upstream). */
  readonly notSent: boolean
  readonly method: string
  /** The request body stream, or null for none. */
  readonly body: Readable | null
  /** Some of the body was already read (it may be upstream now, and cannot be replayed). */
  readonly bodyRead: boolean
}

/**
 * The retry policy (Envoy's `connect-failure` plus `reset` for idempotent
 * requests). A body stream already read may have reached the upstream and
 * cannot be replayed, so it rules a retry out. Otherwise: a connect failure
 * (nothing was sent) is always retried; a reset is retried only for an
 * idempotent method (a stale keep-alive connection closed under our write:
 * the upstream did not process it, or processing it twice is harmless).
 * Timeouts are never retried: the upstream may still be working on it.
 * Where the retry goes (another endpoint of the same version first) is the
 * endpoint group's choice (`pickRetry`); the version never changes.
 */
export function mayRetry (a: FailedAttempt): boolean {
  if (a.body !== null && a.bodyRead) return false
  if (a.notSent || a.kind === 'connect') return true
  return a.kind === 'reset' && IDEMPOTENT.has(a.method)
}
