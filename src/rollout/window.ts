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
  /** Uniform random sample of the latencies of non-failed requests, in milliseconds. */
  latenciesMs: number[]
}

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
  #seen = 0
  #latencies: number[] = []
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
    const ms = seconds * 1000
    this.#seen++
    if (this.#latencies.length < this.#capacity) {
      this.#latencies.push(ms)
      return
    }
    const j = Math.floor(this.#random() * this.#seen)
    if (j < this.#capacity) this.#latencies[j] = ms
  }

  /** Requests counted so far in this window. */
  get requests (): number {
    return this.#requests
  }

  /** The current contents, without resetting. */
  peek (): WindowSnapshot {
    return { requests: this.#requests, failures: this.#failures, latenciesMs: this.#latencies.slice() }
  }

  /** Returns the contents and starts a new, empty window. */
  take (): WindowSnapshot {
    const s: WindowSnapshot = { requests: this.#requests, failures: this.#failures, latenciesMs: this.#latencies }
    this.reset()
    return s
  }

  /** Empties the window (after a conclusive check, a step change or a resume). */
  reset (): void {
    this.#requests = 0
    this.#failures = 0
    this.#seen = 0
    this.#latencies = []
  }
}
