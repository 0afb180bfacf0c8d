/**
 * The cluster's IPC protocol: plain JSON messages between the primary
 * (admin API, state file, rollouts) and the workers (proxy listeners). Every
 * message carries a `canaryd` tag so prom-client's or Node's own cluster
 * messages are never mistaken for ours.
 */
import type { Config } from '../config/load.js'
import type { ListenerCertificate } from '../listener/certs.js'
import type { ShadowPair } from '../metrics/observer.js'
import type { RouteSpec } from '../routing/spec.js'

/** A listener certificate as JSON carries it (the expiry as an ISO string). */
export type WireCertificate = Omit<ListenerCertificate, 'notAfter' | 'notBefore'> & { notAfter: string, notBefore: string }

export function toWire (certs: readonly ListenerCertificate[]): WireCertificate[] {
  return certs.map((c) => ({ ...c, notAfter: c.notAfter.toISOString(), notBefore: c.notBefore.toISOString() }))
}

export function fromWire (certs: readonly WireCertificate[]): ListenerCertificate[] {
  return certs.map((c) => ({ ...c, notAfter: new Date(c.notAfter), notBefore: new Date(c.notBefore) }))
}

/** Primary → worker. */
export type ToWorker =
  /** `routes`: the routes in force (runtime weights and upstreams applied); `config`: the static part the worker serves with. */
  | { canaryd: 'init', config: Config, routes: RouteSpec[], generation: number, subscriptions: Array<[string, string]>, shadows: string[], metrics: boolean, listener: { certs: WireCertificate[], ticketKeys: string } }
  /** Reloaded listener certificates (the primary read and checked them): new handshakes use them. */
  | { canaryd: 'certs', certs: WireCertificate[] }
  /** Every change (weights, a version's upstream, a reload) sends the whole routes: a worker never merges. */
  | { canaryd: 'table', routes: RouteSpec[], generation: number }
  | { canaryd: 'sub', route: string, version: string, on: boolean }
  /** Forward (or stop forwarding) the shadow pairs of a route: a rollout's shadow phase runs in the primary. */
  | { canaryd: 'shadow', route: string, on: boolean }
  /** `names`: only these families (the dashboard's feed); absent: all of them (GET /metrics). */
  | { canaryd: 'metrics', id: number, names?: string[] }
  | { canaryd: 'drain', ms: number }

/** Worker → primary. */
export type ToPrimary =
  | { canaryd: 'hello' }
  | { canaryd: 'ready', address: string, port: number, redirect?: { address: string, port: number } }
  | { canaryd: 'metrics', id: number, data: unknown[] }
  /**
   * Finished requests of one (route, version) since the last batch, flat
   * [status, seconds, flags, …] with flags = upstreamFailed (bit 0) |
   * synthetic (bit 1), and how many times outlier detection ejected the
   * version meanwhile.
   */
  | { canaryd: 'samples', route: string, version: string, data: number[], ejections: number }
  /** Shadow pairs of one route since the last batch (bounded per batch). */
  | { canaryd: 'pairs', route: string, pairs: ShadowPair[] }

/** True for a message of ours. */
export function isOurs (m: unknown): m is { canaryd: string } {
  return typeof m === 'object' && m !== null && typeof (m as { canaryd?: unknown }).canaryd === 'string'
}
