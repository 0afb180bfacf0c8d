import type { Endpoint } from '../endpoint.js'

/**
 * Least request by the power of two choices (Mitzenmacher; Envoy's default
 * `LEAST_REQUEST`): draw two distinct endpoints at random and take the one
 * with fewer requests in flight. Nearly as good as scanning for the least
 * loaded, without the herd a full scan causes (every proxy process piling
 * onto the same momentarily idle endpoint), in O(1). In-flight counts are the
 * origin's (shared by every version dialling it): the load the server sees.
 */
export function pickLeastRequest (eps: readonly Endpoint[]): Endpoint | undefined {
  const n = eps.length
  if (n <= 1) return eps[0]
  const i = (Math.random() * n) | 0
  let j = (Math.random() * (n - 1)) | 0
  if (j >= i) j++
  const a = eps[i]!
  const b = eps[j]!
  return b.slot.inFlight < a.slot.inFlight ? b : a
}
