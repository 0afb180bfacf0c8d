import type { UpstreamSlot } from './pools.js'

/**
 * One endpoint of one version: an origin to dial (a configured one, or an
 * address DNS discovery found), its connection pool (shared by every version
 * on the same origin and TLS settings) and its outlier state, which is this
 * version's view of it. Kept across routing-table swaps and DNS refreshes
 * for as long as some version lists it, so a weight change or a reload
 * neither forgets an ejection nor resets a balancer.
 *
 * Plain counters written on the hot path; no timers: an ejection ends
 * lazily (see EndpointGroup).
 */
export class Endpoint {
  /** The origin dialled, e.g. `http://10.0.0.7:8080`. */
  readonly origin: string
  readonly slot: UpstreamSlot
  /** Seed of this endpoint in the hash balancer (a hash of its origin). */
  readonly seed: number
  /** Consecutive gateway failures (connect, reset, timeout, upstream 5xx). */
  failures = 0
  /** Clock time the current ejection ends; 0 when not ejected. */
  ejectedUntil = 0

  constructor (origin: string, slot: UpstreamSlot, seed: number) {
    this.origin = origin
    this.slot = slot
    this.seed = seed
  }
}
