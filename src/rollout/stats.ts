/**
 * Pure statistics for the canary judge: the standard normal tail, a
 * one-sided two-proportion z-test (error rates) and a one-sided Mann-Whitney U
 * test with normal approximation and tie correction (latencies). No clock, no
 * I/O, no randomness: tested against textbook values.
 */

/**
 * Complementary error function, Numerical Recipes' `erfcc` (Chebyshev fit,
 * fractional error < 1.2e-7 everywhere). Enough for p-values compared with
 * 0.01–0.05; a closed form keeps the judge dependency-free.
 */
export function erfc (x: number): number {
  const z = Math.abs(x)
  const t = 1 / (1 + 0.5 * z)
  const r = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277)))))))))
  return x >= 0 ? r : 2 - r
}

/** P(Z > z) for a standard normal Z: the one-sided upper-tail p-value of a z score. */
export function normalUpperTail (z: number): number {
  if (Number.isNaN(z)) return 1
  return 0.5 * erfc(z / Math.SQRT2)
}

/** Result of a one-sided test "is the canary worse than the baseline?". */
export interface TestResult {
  /** The z score (positive = canary worse). */
  z: number
  /** One-sided p-value: the chance of a difference at least this bad if both were equal. */
  p: number
}

/**
 * One-sided two-proportion z-test with Yates' continuity correction:
 * H0 "canary failure rate <= baseline failure rate" against "canary higher".
 * The continuity correction matters here: error counts in a canary interval
 * are small (a handful of 5xx), where the plain normal approximation calls a
 * single stray error significant.
 */
export function twoProportionTest (canaryFailures: number, canaryTotal: number, baselineFailures: number, baselineTotal: number): TestResult {
  if (canaryTotal <= 0 || baselineTotal <= 0) return { z: 0, p: 1 }
  const p1 = canaryFailures / canaryTotal
  const p2 = baselineFailures / baselineTotal
  const pooled = (canaryFailures + baselineFailures) / (canaryTotal + baselineTotal)
  // no failure (or nothing but failures) on both sides: no evidence either way
  if (pooled <= 0 || pooled >= 1) return { z: 0, p: 1 }
  const se = Math.sqrt(pooled * (1 - pooled) * (1 / canaryTotal + 1 / baselineTotal))
  const cc = 0.5 * (1 / canaryTotal + 1 / baselineTotal)
  const diff = p1 - p2
  const z = diff > cc ? (diff - cc) / se : diff > 0 ? 0 : diff / se
  return { z, p: normalUpperTail(z) }
}

/** Result of the Mann-Whitney U test. */
export interface MannWhitneyResult extends TestResult {
  /** U of the canary sample: the number of (canary, baseline) pairs where the canary is slower (ties count 1/2). */
  u: number
  /** U / (n1 n2): probability that a random canary request is slower than a random baseline one (0.5 = equal). */
  superiority: number
}

/**
 * One-sided Mann-Whitney U test (Wilcoxon rank-sum), normal approximation
 * with tie correction and continuity correction: H0 "canary latencies are
 * not stochastically larger than the baseline's". Rank-based, so one huge
 * outlier weighs as much as any other slower request: latency distributions
 * are skewed and heavy-tailed, where a t-test on means is misled (this is why
 * Kayenta's judge uses it). O((n1+n2) log(n1+n2)); the inputs are bounded
 * reservoirs, so this stays small.
 */
export function mannWhitneyTest (canary: readonly number[], baseline: readonly number[]): MannWhitneyResult {
  const n1 = canary.length
  const n2 = baseline.length
  if (n1 === 0 || n2 === 0) return { z: 0, p: 1, u: 0, superiority: 0.5 }
  const n = n1 + n2
  // values tagged with their side: even index = canary flag in a parallel array
  const idx = new Array<number>(n)
  const val = new Float64Array(n)
  for (let i = 0; i < n1; i++) val[i] = canary[i]!
  for (let i = 0; i < n2; i++) val[n1 + i] = baseline[i]!
  for (let i = 0; i < n; i++) idx[i] = i
  idx.sort((a, b) => val[a]! - val[b]!)
  let rankSumCanary = 0
  let tieTerm = 0
  let i = 0
  while (i < n) {
    let j = i + 1
    while (j < n && val[idx[j]!] === val[idx[i]!]) j++
    const t = j - i
    const avgRank = (i + 1 + j) / 2 // ranks i+1 … j share their mean
    for (let k = i; k < j; k++) if (idx[k]! < n1) rankSumCanary += avgRank
    if (t > 1) tieTerm += t * t * t - t
    i = j
  }
  const u = rankSumCanary - n1 * (n1 + 1) / 2
  const mean = n1 * n2 / 2
  const variance = (n1 * n2 / 12) * ((n + 1) - tieTerm / (n * (n - 1)))
  if (variance <= 0) return { z: 0, p: 1, u, superiority: u / (n1 * n2) }
  const d = u - mean
  // continuity correction towards the null, one-sided (upper)
  const z = (d > 0.5 ? d - 0.5 : d > 0 ? 0 : d) / Math.sqrt(variance)
  return { z, p: normalUpperTail(z), u, superiority: u / (n1 * n2) }
}

/**
 * The q-quantile (0..1) of a sample by linear interpolation between order
 * statistics (type 7, the R and NumPy default). Sorts a copy. NaN when empty.
 */
export function quantile (values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN
  const s = Float64Array.from(values).sort()
  return quantileSorted(s, q)
}

/** As `quantile`, for an already ascending-sorted sample (no copy). */
export function quantileSorted (sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length
  if (n === 0) return Number.NaN
  const h = (n - 1) * Math.min(1, Math.max(0, q))
  const lo = Math.floor(h)
  const hi = Math.min(n - 1, lo + 1)
  return sorted[lo]! + (h - lo) * (sorted[hi]! - sorted[lo]!)
}
