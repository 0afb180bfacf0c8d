import type { Endpoint } from '../endpoint.js'

/**
 * MurmurHash3's fmix32 finaliser. routing/ has the same function for the
 * version pick; upstream/ may not import routing/ (STYLE.md's arrows), and
 * the endpoint pick deliberately mixes with its own seeds anyway.
 */
function mix (x: number): number {
  let h = x | 0
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** An endpoint's seed: FNV-1a of its origin (ASCII), mixed. Equal origins get equal seeds in every process. */
export function endpointSeed (origin: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < origin.length; i++) h = Math.imul(h ^ origin.charCodeAt(i), 0x01000193)
  return mix(h ^ 0x27d4eb2f)
}

/**
 * Consistent hashing by rendezvous (highest random weight): the endpoint
 * whose `mix(keyHash ^ seed)` is highest wins. When an endpoint joins, it
 * takes only the keys it now wins (about 1/n of them) and no other key
 * moves; when one leaves (removed, or ejected), only its keys move, spread
 * over the rest. O(n) per request, allocation-free: versions have a handful
 * of endpoints (a ring would pay its memory and rebuilds for nothing there).
 * The key hash is the route's sticky hash, so a user stays on one endpoint
 * as long as it is there (caches stay warm).
 */
export function pickHash (eps: readonly Endpoint[], keyHash: number): Endpoint | undefined {
  const n = eps.length
  if (n <= 1) return eps[0]
  let best = eps[0]!
  let bestScore = mix(keyHash ^ best.seed)
  for (let i = 1; i < n; i++) {
    const e = eps[i]!
    const s = mix(keyHash ^ e.seed)
    if (s > bestScore) {
      bestScore = s
      best = e
    }
  }
  return best
}
