/**
 * Weight validation shared by the config loader and the admin API, so a
 * weight set is judged by one rule wherever it comes from. Weights are
 * percentages with at most 4 decimals, i.e. whole parts per million.
 */

/** Parts per million in 100 %. */
const PPM_TOTAL = 1_000_000

/** Converts a percentage to whole parts per million, or returns undefined if it has more than 4 decimals. */
export function toPpm (weight: number): number | undefined {
  const scaled = weight * 10_000
  const rounded = Math.round(scaled)
  // 4 decimals survive float multiplication to within a tiny error; a 5th does not
  return Math.abs(scaled - rounded) < 1e-6 ? rounded : undefined
}

/** Formats a ppm sum back to percent for messages (80, 99.9999). */
function formatPercent (ppm: number): string {
  return String(ppm / 10_000)
}

/** A value as an error message shows it: JSON, at most 100 characters (a body's echo stays small). */
function shownValue (v: unknown): string {
  let s: string
  try {
    s = JSON.stringify(v) ?? String(v)
  } catch {
    s = Object.prototype.toString.call(v)
  }
  return s.length > 100 ? `${s.slice(0, 100)}…` : s
}

/**
 * Returns why one weight is invalid, or undefined: must be a finite number in
 * [0, 100] with at most 4 decimals.
 */
export function checkWeight (weight: unknown): string | undefined {
  if (typeof weight !== 'number' || !Number.isFinite(weight)) return `must be a number, got ${shownValue(weight)}`
  if (weight < 0 || weight > 100) return `must be between 0 and 100, got ${weight}`
  if (toPpm(weight) === undefined) return `must have at most 4 decimals, got ${weight}`
  return undefined
}

/** Returns why a set of valid weights is invalid as a whole (sum), or undefined. */
export function checkWeightSum (weights: readonly number[]): string | undefined {
  let sum = 0
  for (const w of weights) sum += toPpm(w) ?? 0
  if (sum !== PPM_TOTAL) return `weights sum to ${formatPercent(sum)}, must be 100`
  return undefined
}
