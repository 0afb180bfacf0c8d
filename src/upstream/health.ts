import type { Endpoint } from './endpoint.js'
import type { Clock, EndpointGroup } from './group.js'

/** Outlier-detection settings (startup config `health.*`). */
export interface OutlierOptions {
  /** Consecutive failures that eject an endpoint; 0 turns passive ejection off. */
  consecutiveFailures: number
  /** How long an ejection lasts, ms. */
  ejectionMs: number
}

/** What a recorded failure did: nothing, ejected one endpoint, or ejected the version's last endpoint (the version is out). */
export type Ejection = 'none' | 'endpoint' | 'version'

/**
 * The versions of one route as endpoint groups, in version-index order,
 * built with each routing table: passive outlier detection per endpoint (as
 * Envoy's `consecutive_gateway_failure`), the rules for who may be ejected,
 * and the bit mask of versions with no endpoint left that `pickVersion`
 * takes. Holds no state of its own beyond the table's shape: ejections live
 * on the shared Endpoint objects, so a request that spans a table swap
 * records into the same state the new table reads.
 */
export class RouteHealth {
  readonly groups: readonly EndpointGroup[]
  /** Indexes of versions with weight > 0. */
  readonly #active: readonly number[]
  readonly #opts: OutlierOptions
  readonly #now: Clock

  constructor (groups: readonly EndpointGroup[], active: readonly number[], opts: OutlierOptions, now: Clock) {
    this.groups = groups
    this.#active = active
    this.#opts = opts
    this.#now = now
  }

  /**
   * Bit mask of version indexes with no endpoint to offer. Allocation-free;
   * the clock is read only for a group whose every endpoint is out.
   */
  excluded (): number {
    const groups = this.groups
    let mask = 0
    for (let i = 0; i < groups.length; i++) {
      if (!groups[i]!.available()) mask |= 1 << i
    }
    return mask
  }

  /** A response below 500 came back from `e`: its streak ends. */
  success (index: number, e: Endpoint): void {
    e.failures = 0
    this.groups[index]!.connectFailing = false
  }

  /**
   * Records a gateway failure of endpoint `e` of version `index`; returns
   * what it ejected. An endpoint is ejected when its version keeps another
   * endpoint, or when another active version can take the users; the last
   * endpoint of the last version standing is never ejected (its users would
   * have nowhere to go: better a chance than a certain 503).
   */
  failure (index: number, e: Endpoint, connect: boolean): Ejection {
    const g = this.groups[index]!
    e.failures++
    if (connect) g.connectFailing = true
    const n = this.#opts.consecutiveFailures
    if (n === 0 || e.failures < n || e.ejectedUntil !== 0) return 'none'
    return this.eject(index, e)
  }

  /** Ejects `e` for `ejectionMs` when the rules allow it (passive or active check); returns what it ejected. */
  eject (index: number, e: Endpoint): Ejection {
    const g = this.groups[index]!
    const now = this.#now()
    if (e.ejectedUntil !== 0 && e.ejectedUntil > now) return 'none'
    const last = !g.healthy.some((o) => o !== e)
    if (last && !this.hasOtherHealthy(index)) return 'none'
    g.eject(e, now + this.#opts.ejectionMs)
    return last ? 'version' : 'endpoint'
  }

  /** Ends `e`'s ejection early (the active check saw it healthy again). */
  restore (index: number, e: Endpoint): void {
    this.groups[index]!.restore(e)
    this.groups[index]!.connectFailing = false
  }

  /**
   * True when every other version of the route (0% ones included: they are
   * configured and could serve) has no endpoint or failed its last connect too.
   */
  othersUnreachable (index: number): boolean {
    const groups = this.groups
    for (let i = 0; i < groups.length; i++) {
      if (i === index) continue
      const g = groups[i]!
      if (g.available() && !g.connectFailing) return false
    }
    return true
  }

  /** True when another active version has an endpoint to offer (so `index` may lose its last one). */
  hasOtherHealthy (index: number): boolean {
    for (const i of this.#active) if (i !== index && this.groups[i]!.available()) return true
    return false
  }
}
