/** Outlier-detection settings (startup config `health.*`). */
export interface OutlierOptions {
  /** Consecutive failures that eject a version; 0 turns passive ejection off. */
  consecutiveFailures: number
  /** How long an ejection lasts, ms. */
  ejectionMs: number
}

/** A millisecond clock; tests pass their own so nothing sleeps. */
export type Clock = () => number

/**
 * Health of one version of one route, as seen by the proxy (passive outlier
 * detection, as Envoy's `consecutive_gateway_failure`) and by the optional
 * active check. Kept across routing-table swaps (keyed by route and version
 * name), so a weight change neither forgets nor resets an ejection.
 *
 * Plain counters written on the hot path; no timers: an ejection ends lazily
 * the first time a request looks at it after `ejectedUntil`.
 */
export class VersionHealth {
  readonly route: string
  readonly version: string
  /** Consecutive gateway failures (connect, reset, timeout, upstream 5xx). */
  failures = 0
  /** The last attempt failed to connect: this version is known unreachable now. */
  connectFailing = false
  /** Clock time the current ejection ends; 0 when not ejected. */
  ejectedUntil = 0

  constructor (route: string, version: string) {
    this.route = route
    this.version = version
  }

  /** A response (any status below 500) came back: the streak ends. */
  success (): void {
    this.failures = 0
    this.connectFailing = false
  }

  /** True while ejected at `now`. */
  ejected (now: number): boolean {
    return this.ejectedUntil !== 0 && this.ejectedUntil > now
  }
}

/**
 * The versions of one route and their health, in version-index order, built
 * with each routing table. `excluded` gives the bit mask `pickVersion` takes.
 *
 * Holds no state of its own beyond the table's shape: every ejection lives in
 * the shared VersionHealth objects. A request that spans a table swap (or an
 * active check that awaits across one) may record a failure through the old
 * table's RouteHealth; the new table's RouteHealth must see it, so nothing
 * (such as a count of ejected versions) may be cached here.
 */
export class RouteHealth {
  readonly versions: readonly VersionHealth[]
  /** Indexes of versions with weight > 0. */
  readonly #active: readonly number[]
  readonly #opts: OutlierOptions
  readonly #now: Clock

  constructor (versions: readonly VersionHealth[], active: readonly number[], opts: OutlierOptions, now: Clock) {
    this.versions = versions
    this.#active = active
    this.#opts = opts
    this.#now = now
  }

  /**
   * Bit mask of ejected version indexes for `pickVersion`; ends expired
   * ejections (returns `ended` names through `onEnd`). Allocation-free, and
   * the clock is read only when some version is ejected (a route has a
   * handful of versions: the scan is a few loads).
   */
  excluded (onEnd?: (v: VersionHealth) => void): number {
    const versions = this.versions
    let mask = 0
    let now = -1
    for (let i = 0; i < versions.length; i++) {
      const v = versions[i]!
      if (v.ejectedUntil === 0) continue
      if (now === -1) now = this.#now()
      if (v.ejectedUntil > now) {
        mask |= 1 << i
      } else {
        v.ejectedUntil = 0
        v.failures = 0
        onEnd?.(v)
      }
    }
    return mask
  }

  /**
   * Records a gateway failure of version `index`; returns true when this
   * failure ejected it. The last version standing is never ejected (its
   * users would have nowhere to go: better a chance than a certain 503).
   */
  failure (index: number, connect: boolean): boolean {
    const v = this.versions[index]!
    v.failures++
    if (connect) v.connectFailing = true
    const n = this.#opts.consecutiveFailures
    if (n === 0 || v.failures < n) return false
    const now = this.#now()
    if (v.ejected(now)) return false
    for (const i of this.#active) {
      if (i !== index && !this.versions[i]!.ejected(now)) {
        this.eject(index, now)
        return true
      }
    }
    return false
  }

  /** Ejects version `index` until `now + ejectionMs` (passive or active check). */
  eject (index: number, now: number = this.#now()): void {
    const v = this.versions[index]!
    v.ejectedUntil = now + this.#opts.ejectionMs
  }

  /** Ends an ejection early (the active check saw the version healthy again). */
  restore (index: number): void {
    const v = this.versions[index]!
    v.ejectedUntil = 0
    v.success()
  }

  /**
   * True when every other version of the route (0% ones included: they are
   * configured and could serve) is ejected or failed its last connect too.
   */
  othersUnreachable (index: number): boolean {
    const now = this.#now()
    for (let i = 0; i < this.versions.length; i++) {
      if (i === index) continue
      const v = this.versions[i]!
      if (!v.ejected(now) && !v.connectFailing) return false
    }
    return true
  }

  /** True when another active version is not ejected (so `index` may be ejected). */
  hasOtherHealthy (index: number): boolean {
    const now = this.#now()
    for (const i of this.#active) if (i !== index && !this.versions[i]!.ejected(now)) return true
    return false
  }
}
