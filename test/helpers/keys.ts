/**
 * Deterministic pseudo-random sticky keys (a seeded LCG): the same keys
 * every run, so share and monotonicity tables never fail by chance.
 */
export function seededKeys (n: number, seed: number): string[] {
  const out: string[] = []
  let s = seed >>> 0
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    out.push(`user-${s.toString(36)}-${i}`)
  }
  return out
}
