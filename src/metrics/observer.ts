import type { UpstreamErrorKind } from './kinds.js'

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
   * request (also after headers were sent, when the status alone looks fine).
   */
  finish (status: number, seconds: number, upstreamFailed: boolean): void
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

/** Binds observers; implemented by the Prometheus metrics and by the no-op below. */
export interface ObserverFactory {
  bind (route: string, version: string): VersionObserver
  /** Forgets a (route, version) a reload removed (optional: the no-op factory has nothing to forget). */
  unbind? (route: string, version: string): void
  /** Publishes the weights of the table in force (canaryd_route_weight). */
  setWeights (weights: ReadonlyArray<{ route: string; version: string; weight: number }>): void
}

const NOOP_OBSERVER: VersionObserver = Object.freeze({
  start () {},
  finish () {},
  upstreamError () {},
  ejected () {}
})

/** Metrics off: every call is a no-op function instead of a branch per request (pino's trick). */
export const NOOP_OBSERVERS: ObserverFactory = Object.freeze({
  bind: () => NOOP_OBSERVER,
  setWeights () {}
})
