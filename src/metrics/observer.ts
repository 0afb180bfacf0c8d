import type { MirrorResult, UpstreamErrorKind } from './kinds.js'

/**
 * What the hot path reports about one (route, version): bound once per table
 * change, so a request makes plain method calls on pre-resolved children.
 */
export interface VersionObserver {
  /** A request was routed to this version (in-flight + 1). */
  start (): void
  /**
   * A response was finished (or the client went away) with `status`, `seconds`
   * after it was received; `upstreamFailed` when the upstream failed the
   * request (also after headers were sent, when the status alone looks fine);
   * `synthetic` when the request carried `x-canaryd-synthetic: 1` (the
   * rollout's load generator: counted under source="synthetic").
   */
  finish (status: number, seconds: number, upstreamFailed: boolean, synthetic: boolean): void
  /** The upstream failed in a way of `kind`. */
  upstreamError (kind: UpstreamErrorKind): void
  /** Outlier detection ejected this version (cold path: once per ejection). */
  ejected (): void
  /**
   * A WebSocket to this version opened (+1) or closed (-1). Optional: once per
   * connection, not per request, so the proxy calls it as `websocket?.()`.
   */
  websocket? (delta: 1 | -1): void
}

/** One counter child with its labels resolved at bind time: the hot path only calls `inc`. */
export interface CounterChild {
  inc (): void
}

/** The labels of one canaryd_segment_requests_total child. */
export interface SegmentLabels {
  readonly route: string
  readonly segment: string
  /** The version the segment's request was routed to. */
  readonly version: string
}

/**
 * One mirrored request, seen from both sides, for the rollout controller's
 * shadow judge: what the user got from the version that served it (the
 * same three facts its VersionObserver's `finish` got) and what the mirror
 * version answered to the copy. Reported once both are known; copies that
 * were dropped, too large, or never sent because the user's body failed
 * make no pair.
 */
export interface ShadowPair {
  readonly route: string
  /** The version that served the user. */
  readonly primary: string
  /** The version the copy went to. */
  readonly mirror: string
  /** Status the user got (499 when the client left before one). */
  readonly primaryStatus: number
  /** From request received to user response finished, seconds. */
  readonly primarySeconds: number
  /** The upstream failed the user's request (connect, reset, timeout, protocol). */
  readonly primaryFailed: boolean
  /** Status the mirror answered; 0 when it gave none (error, timeout, no endpoint). */
  readonly mirrorStatus: number
  /** From the copy sent to its answer read (or its failure), seconds. */
  readonly mirrorSeconds: number
  /** The copy got no complete answer (connect, reset, protocol, timeout, no endpoint). */
  readonly mirrorFailed: boolean
}

/** Called with every shadow pair of one route. */
export type ShadowListener = (pair: ShadowPair) => void

/**
 * Subscribes to the shadow pairs of `route` (also before the route has a
 * mirror: a rollout's shadow phase subscribes, then swaps in the table that
 * mirrors). Returns a function that unsubscribes.
 */
export type SubscribeShadow = (route: string, listener: ShadowListener) => () => void

/** What the proxy reports about one route's mirror (route, mirror version): bound once per table change. */
export interface MirrorObserver {
  /** A copy ended (or was not made) with `result`. */
  result (result: MirrorResult): void
  /** Someone listens for this route's shadow pairs: the proxy builds a pair only then (no work when nobody listens). */
  readonly pairing: boolean
  /** Reports a pair to the route's listeners. */
  pair (pair: ShadowPair): void
}

/** Binds observers; implemented by the Prometheus metrics and by the no-op below. */
export interface ObserverFactory {
  bind (route: string, version: string): VersionObserver
  /** Forgets a (route, version) a reload removed (optional: the no-op factory has nothing to forget). */
  unbind? (route: string, version: string): void
  /** Publishes the weights of the table in force (canaryd_route_weight). */
  setWeights (weights: ReadonlyArray<{ route: string; version: string; weight: number }>): void
  /**
   * The canaryd_segment_requests_total children of the table being bound, in
   * the order given: afterwards exactly these exist (new ones at 0, kept ones
   * keep their counts, the rest are dropped). Optional: the proxy counts
   * nowhere without it.
   */
  bindSegments? (children: readonly SegmentLabels[]): CounterChild[]
  /**
   * The mirror observers of the table being bound, one per (route, mirror
   * version) in the order given: afterwards exactly these have
   * canaryd_mirror_requests_total series (every result at 0 when new).
   */
  bindMirrors? (mirrors: ReadonlyArray<{ route: string; version: string }>): MirrorObserver[]
}

/** A counter nobody reads (metrics off). */
export const NOOP_COUNTER: CounterChild = Object.freeze({ inc () {} })

/** A mirror observer nobody reads (metrics off): never pairing, so no pair is ever built. */
export const NOOP_MIRROR_OBSERVER: MirrorObserver = Object.freeze({ result () {}, pairing: false, pair () {} })

const NOOP_OBSERVER: VersionObserver = Object.freeze({
  start () {},
  finish () {},
  upstreamError () {},
  ejected () {}
})

/** Metrics off: every call is a no-op function instead of a branch per request (pino's trick). */
export const NOOP_OBSERVERS: ObserverFactory = Object.freeze({
  bind: () => NOOP_OBSERVER,
  setWeights () {},
  bindSegments: (children: readonly SegmentLabels[]) => children.map(() => NOOP_COUNTER),
  bindMirrors: (mirrors: ReadonlyArray<{ route: string; version: string }>) => mirrors.map(() => NOOP_MIRROR_OBSERVER)
})
