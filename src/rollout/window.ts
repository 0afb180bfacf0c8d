/**
 * The in-process measurement window of one (route, version) under a rollout.
 * It is fed by the metrics' finish listener (the hot path) and drained by the
 * controller once per interval; the controller's judge only ever sees these
 * summaries.
 */

/** Default latency reservoir size: enough for a p99 estimate and a powerful rank test, bounded memory. */
export const DEFAULT_RESERVOIR = 2048

/** Summary of one window: counts and a uniform sample of successful latencies (ms). */
export interface WindowSnapshot {
  /** Requests that count (client-aborted 499s are left out, see `record`). */
  requests: number
  /** 5xx answers plus upstream failures. */
  failures: number
  /** Times outlier detection ejected the version during this window. */
  ejections: number
  /**
   * True while the version is, as far as the window can tell, still out: it
   * was ejected (in this window or an earlier one) and has answered no
   * request successfully since. The proxy does not say when an ejection
   * ends; the first good answer after it is the evidence that it did.
   */
  stillEjected: boolean
  /** Uniform random sample of the latencies of non-failed requests, in milliseconds. */
  latenciesMs: number[]
  /**
   * Exact running sums over every non-failed request (not a sample): the
   * sum of ln(latency in ms), the sum of its squares, and how many requests
   * they cover. The sequential judge's latency mean and variance. Absent in
   * snapshots from instances that do not send them; a window that merged
   * such a snapshot leaves them out too (they would cover only part of its
   * traffic), and the judge then estimates from `latenciesMs`.
   */
  logSum?: number
  logSumSq?: number
  logCount?: number
}

/** ln of the smallest latency the log sums take (1 µs): a 0-ms answer (clock resolution) must not add −Infinity. */
const MIN_LOG_MS = Math.log(0.001)

/**
 * Counts and a bounded latency reservoir (Vitter's algorithm R), so memory
 * stays fixed however much traffic an interval carries while the sample stays
 * uniform over the interval. Recording is O(1) with no allocation after the
 * reservoir fills: it runs on the hot path for every request of a version
 * under rollout.
 */
export class SampleWindow {
  #requests = 0
  #failures = 0
  #ejections = 0
  /** Survives `reset`: an ejection lasts across checks until a good answer ends it. */
  #stillEjected = false
  #seen = 0
  #latencies: number[] = []
  #logSum = 0
  #logSumSq = 0
  #logCount = 0
  /** Fleet mode: a merged snapshot came without log sums, so this window's would cover only part of its traffic. */
  #logPartial = false
  /** Fleet mode: the instances whose snapshots this window merged since its last reset. */
  #sources = new Set<string>()
  /** Fleet mode: the merged sample holds each success with probability 1/#thin (see merge). */
  #thin = 1
  readonly #capacity: number
  #rng: number

  /** `seed` makes the reservoir's replacement choices reproducible in tests. */
  constructor (capacity: number = DEFAULT_RESERVOIR, seed: number = 0x9e3779b9) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new TypeError(`reservoir capacity must be a positive integer, got ${capacity}`)
    this.#capacity = capacity
    this.#rng = (seed >>> 0) || 1
  }

  /** xorshift32: cheap, seeded, good enough to pick reservoir slots. */
  #random (): number {
    let x = this.#rng
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    this.#rng = x >>> 0
    return this.#rng / 4294967296
  }

  /**
   * Records one finished request. A failure is a 5xx or an upstream error.
   * 499 (the client left first) is ignored: it says nothing about the version
   * and its duration is the client's patience. Failed requests are kept out
   * of the latency sample: a fast-failing canary must not look fast, and its
   * failures are already judged by the error-rate test.
   */
  record (status: number, seconds: number, upstreamFailed: boolean): void {
    if (status === 499 && !upstreamFailed) return
    this.#requests++
    if (upstreamFailed || status >= 500) {
      this.#failures++
      return
    }
    this.#stillEjected = false
    const ms = seconds * 1000
    const l = ms > 0.001 ? Math.log(ms) : MIN_LOG_MS
    this.#logSum += l
    this.#logSumSq += l * l
    this.#logCount++
    this.#seen++
    if (this.#latencies.length < this.#capacity) {
      this.#latencies.push(ms)
      return
    }
    const j = Math.floor(this.#random() * this.#seen)
    if (j < this.#capacity) this.#latencies[j] = ms
  }

  /**
   * Records that outlier detection ejected the version (cold path: once per
   * ejection). Failed answers that were in flight at the ejection do not end
   * it; only a successful one does (see `record`).
   */
  recordEjection (): void {
    this.#ejections++
    this.#stillEjected = true
  }

  /**
   * Fleet mode: adds another instance's window (`source` names it). Counts
   * add up. Its latencies are a uniform sample of its successes, each
   * standing for successes/sampled of them; the merged sample must stay
   * uniform over every instance's successes, so it keeps each success with
   * the same probability 1/#thin: a busier (more subsampled) instance
   * raises #thin and thins what is held, a quieter one's latencies are
   * thinned on the way in, and a sample over capacity is thinned uniformly
   * (raising #thin by as much). The sample is smaller than the reservoir
   * when instances subsample differently; it is never biased towards the
   * quiet ones. Ejections: the version is still out when an instance says
   * so; an instance that saw it answer well since says it is back.
   */
  merge (s: WindowSnapshot, source: string): void {
    this.#sources.add(source)
    this.#requests += s.requests
    this.#failures += s.failures
    this.#ejections += s.ejections
    const ok = s.requests - s.failures
    if (s.stillEjected) this.#stillEjected = true
    else if (ok > 0) this.#stillEjected = false
    // sums add up exactly across instances; without them (an older sender) this window's would be partial
    if (s.logCount !== undefined && s.logSum !== undefined && s.logSumSq !== undefined) {
      this.#logSum += s.logSum
      this.#logSumSq += s.logSumSq
      this.#logCount += s.logCount
    } else if (ok > 0) {
      this.#logPartial = true
    }
    const n = s.latenciesMs.length
    if (n === 0) return
    const w = Math.max(1, ok / n)
    if (w > this.#thin) {
      this.#keep(this.#thin / w)
      this.#thin = w
    }
    const p = w / this.#thin
    for (const ms of s.latenciesMs) if (p >= 1 || this.#random() < p) this.#latencies.push(ms)
    const over = this.#latencies.length
    if (over > this.#capacity) {
      // a uniform subset of a uniform sample is uniform: drop at random (partial Fisher-Yates)
      for (let i = 0; i < this.#capacity; i++) {
        const j = i + Math.floor(this.#random() * (over - i))
        const t = this.#latencies[i]!
        this.#latencies[i] = this.#latencies[j]!
        this.#latencies[j] = t
      }
      this.#latencies.length = this.#capacity
      this.#thin *= over / this.#capacity
    }
  }

  /** Keeps each held latency with probability `p` (fleet merges). */
  #keep (p: number): void {
    this.#latencies = this.#latencies.filter(() => this.#random() < p)
  }

  /** Fleet mode: the instances merged since the last reset. */
  get sources (): ReadonlySet<string> {
    return this.#sources
  }

  /** Requests counted so far in this window. */
  get requests (): number {
    return this.#requests
  }

  /** The current contents, without resetting. */
  peek (): WindowSnapshot {
    return this.#snapshot(this.#latencies.slice())
  }

  /** Returns the contents and starts a new, empty window. */
  take (): WindowSnapshot {
    const s = this.#snapshot(this.#latencies)
    this.reset()
    return s
  }

  #snapshot (latenciesMs: number[]): WindowSnapshot {
    const s: WindowSnapshot = { requests: this.#requests, failures: this.#failures, ejections: this.#ejections, stillEjected: this.#stillEjected, latenciesMs }
    if (!this.#logPartial) {
      s.logSum = this.#logSum
      s.logSumSq = this.#logSumSq
      s.logCount = this.#logCount
    }
    return s
  }

  /**
   * Empties the window (after a conclusive check, a step change or a resume).
   * `stillEjected` is kept: it is the version's state, not this window's count.
   */
  reset (): void {
    this.#requests = 0
    this.#failures = 0
    this.#ejections = 0
    this.#seen = 0
    this.#latencies = []
    this.#logSum = 0
    this.#logSumSq = 0
    this.#logCount = 0
    this.#logPartial = false
    this.#sources = new Set()
    this.#thin = 1
  }
}
