import { fmix32 } from './hash.js'
import type { Route, Version } from './types.js'

const TWO_POW_M32 = 2 ** -32

/**
 * Picks the version for a hashed sticky key by **weighted rendezvous hashing**
 * (highest random weight, logarithmic method — Schindelhauer & Schomaker 2005):
 * each active version `v` draws `u_v = fmix32(keyHash ^ seed_v)` uniform in
 * (0,1), and the version with the smallest `-ln(u_v) / weight_v` wins. Those
 * scores are independent exponentials with rates `weight_v`, so version `v`
 * wins with probability exactly `weight_v / Σ weight`.
 *
 * Invariants (each tested in test/routing/pick.test.ts):
 * - pure: same route salt + key + weights → same version, in every process;
 * - a 0% version never wins (it is not a candidate); a 100% version always wins;
 * - a key's score for `v` depends only on the key and `weight_v`, so raising
 *   `weight_v` can only make `v` win more keys and lowering it only fewer, and
 *   with two versions every change moves keys only onto the version that rose.
 *   With three or more, when one version's weight changes and the others keep
 *   their ratios to each other (the only kind of change for which any stateless
 *   scheme can promise it; see README "Stickiness"), keys move only between
 *   that version and the others, never among the others.
 * - the seed is the hash of the version's *name*, so reordering versions in the
 *   config or adding a 0% version moves nobody.
 *
 * Allocation-free; `excluded` is a bit mask of version indexes that must not be
 * picked (ejected upstreams): their keys spread over the rest by weight, and
 * no other key moves. Returns undefined when no candidate is left.
 */
export function pickVersion (route: Route, keyHash: number, excluded: number = 0): Version | undefined {
  return pickFrom(route.active, keyHash, excluded)
}

/**
 * `pickVersion`'s algorithm over any candidate list: a segment's users are
 * picked from the segment's re-weighted versions (same seeds, so the same
 * invariants hold within the segment). `active` must hold only versions
 * with ppm > 0. Allocation-free.
 */
export function pickFrom (active: readonly Version[], keyHash: number, excluded: number = 0): Version | undefined {
  let best: Version | undefined
  let bestScore = Infinity
  for (let i = 0; i < active.length; i++) {
    const v = active[i]!
    if (excluded !== 0 && (excluded & (1 << v.index)) !== 0) continue
    const u = (fmix32(keyHash ^ v.seed) + 0.5) * TWO_POW_M32
    const score = -Math.log(u) * v.invPpm
    if (score < bestScore) {
      bestScore = score
      best = v
    }
  }
  return best
}
