import { pickHash } from './balance/hash.js'
import { pickLeastRequest } from './balance/least-request.js'
import { pickRoundRobin } from './balance/round-robin.js'
import type { Endpoint } from './endpoint.js'
import type { UpstreamTls } from './tls.js'

/** How a version spreads its requests over its endpoints. */
export type Balance = 'least-request' | 'round-robin' | 'hash'

/** A millisecond clock; tests pass their own so nothing sleeps. */
export type Clock = () => number

/** What an endpoint group is made from: a version's endpoint settings (routing's VersionSpec has this shape). */
export interface GroupSpec {
  readonly upstream: readonly string[]
  readonly balance?: Balance
  readonly discovery?: 'dns'
  readonly tls?: UpstreamTls
}

const NO_ENDPOINTS: readonly Endpoint[] = Object.freeze([])

/**
 * The endpoints of one version of one route and its balancer (Envoy's
 * cluster, Traefik's service). The version pick (routing/) never looks in
 * here: it only asks whether the version has an endpoint to offer at all,
 * so adding, removing or losing an endpoint never moves a user to another
 * version.
 *
 * `healthy` is recomputed on the cold events (an ejection, an endpoint set
 * from config or DNS) and when the earliest ejection has expired, which the
 * hot path notices with one clock read, only while some endpoint is out.
 * Arrays are replaced, never mutated: a request that read one keeps it.
 */
export class EndpointGroup {
  readonly route: string
  readonly version: string
  readonly balance: Balance
  /** Every endpoint now: the configured origins, or what DNS answered last. */
  all: readonly Endpoint[] = NO_ENDPOINTS
  /** Endpoints not ejected: the balancer's candidates. */
  healthy: readonly Endpoint[] = NO_ENDPOINTS
  /** The last attempt on this version failed to connect (it is known unreachable now). */
  connectFailing = false
  /** Earliest end of a current ejection (ms), 0 when none is ejected. */
  #nextEnd = 0
  readonly #turn = { next: 0 }
  readonly #now: Clock
  readonly #onRestored: (g: EndpointGroup, e: Endpoint) => void

  constructor (route: string, version: string, balance: Balance, now: Clock, onRestored: (g: EndpointGroup, e: Endpoint) => void) {
    this.route = route
    this.version = version
    this.balance = balance
    this.#now = now
    this.#onRestored = onRestored
  }

  /** Replaces the endpoint set (config, DNS); ejections of endpoints still listed carry over. */
  setEndpoints (eps: readonly Endpoint[]): void {
    this.all = Object.freeze([...eps])
    this.#recompute(this.#now(), false)
  }

  /** Rebuilds `healthy`, ending expired ejections (logged through onRestored when `announce`). */
  #recompute (now: number, announce: boolean): void {
    let next = 0
    const healthy: Endpoint[] = []
    for (const e of this.all) {
      if (e.ejectedUntil !== 0 && e.ejectedUntil <= now) {
        e.ejectedUntil = 0
        e.failures = 0
        if (announce) this.#onRestored(this, e)
      }
      if (e.ejectedUntil === 0) healthy.push(e)
      else if (next === 0 || e.ejectedUntil < next) next = e.ejectedUntil
    }
    this.healthy = healthy.length === this.all.length ? this.all : Object.freeze(healthy)
    this.#nextEnd = next
  }

  /** Ends expired ejections when the earliest one is due (one clock read, only while one is out). */
  #refresh (): void {
    if (this.#nextEnd === 0) return
    const now = this.#now()
    if (now >= this.#nextEnd) this.#recompute(now, true)
  }

  /** True when some endpoint can take a request (for the version pick's exclusion mask). */
  available (): boolean {
    if (this.healthy.length !== 0) return true
    this.#refresh()
    return this.healthy.length !== 0
  }

  /**
   * The endpoint for a request by the version's balancer, over the healthy
   * endpoints; `keyHash` is the request's sticky hash (used by `hash`).
   * Undefined when every endpoint is out (or there is none yet).
   */
  pick (keyHash: number): Endpoint | undefined {
    this.#refresh()
    return this.#pickFrom(this.healthy, keyHash)
  }

  /** Any endpoint, health ignored: the version is the last one standing, better a chance than a certain 503. */
  pickAny (keyHash: number): Endpoint | undefined {
    return this.#pickFrom(this.all, keyHash)
  }

  /**
   * An endpoint for a retry after `failed` failed: another healthy one when
   * there is one (as Envoy's `previous_hosts` retry predicate), else
   * `failed` itself when it is still listed (a stale keep-alive connection is
   * the usual cause), else undefined (it was removed meanwhile).
   */
  pickRetry (failed: Endpoint, keyHash: number): Endpoint | undefined {
    this.#refresh()
    const h = this.healthy
    if (h.length > 1 || (h.length === 1 && h[0] !== failed)) {
      const e = this.#pickFrom(h, keyHash)
      if (e !== failed) return e
      for (const o of h) if (o !== failed) return o
    }
    return this.all.includes(failed) ? failed : this.#pickFrom(this.all, keyHash)
  }

  #pickFrom (eps: readonly Endpoint[], keyHash: number): Endpoint | undefined {
    if (eps.length <= 1) return eps[0]
    switch (this.balance) {
      case 'round-robin': return pickRoundRobin(eps, this.#turn)
      case 'hash': return pickHash(eps, keyHash)
      default: return pickLeastRequest(eps)
    }
  }

  /** Ejects an endpoint until `until` (outlier detection or the active check). */
  eject (e: Endpoint, until: number): void {
    e.ejectedUntil = until
    this.#recompute(this.#now(), true)
  }

  /** Ends an endpoint's ejection early (the active check saw it healthy). */
  restore (e: Endpoint): void {
    e.ejectedUntil = 0
    e.failures = 0
    this.#recompute(this.#now(), false)
  }

  /** Healthy and ejected endpoint counts (canaryd_upstream_endpoints). */
  counts (): { healthy: number; ejected: number } {
    this.#refresh()
    return { healthy: this.healthy.length, ejected: this.all.length - this.healthy.length }
  }
}
