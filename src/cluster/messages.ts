/**
 * The cluster's IPC protocol: plain JSON messages between the primary
 * (admin API, state file, rollouts) and the workers (proxy listeners). Every
 * message carries a `canaryd` tag so prom-client's or Node's own cluster
 * messages are never mistaken for ours.
 */
import type { Config } from '../config/load.js'
import { withWeights, type RouteSpec } from '../routing/spec.js'
import type { RoutingTable } from '../routing/types.js'

/** Weights of every route: route → version → percent. */
export type WeightMap = Record<string, Record<string, number>>

/** Primary → worker. */
export type ToWorker =
  | { canaryd: 'init', config: Config, weights: WeightMap, generation: number, subscriptions: Array<[string, string]>, metrics: boolean }
  | { canaryd: 'table', weights: WeightMap, generation: number }
  | { canaryd: 'sub', route: string, version: string, on: boolean }
  | { canaryd: 'metrics', id: number }
  | { canaryd: 'drain', ms: number }

/** Worker → primary. */
export type ToPrimary =
  | { canaryd: 'hello' }
  | { canaryd: 'ready', address: string, port: number }
  | { canaryd: 'metrics', id: number, data: unknown[] }
  /**
   * Finished requests of one (route, version) since the last batch, flat
   * [status, seconds, upstreamFailed 0|1, …], and how many times outlier
   * detection ejected the version meanwhile.
   */
  | { canaryd: 'samples', route: string, version: string, data: number[], ejections: number }

/** True for a message of ours. */
export function isOurs (m: unknown): m is { canaryd: string } {
  return typeof m === 'object' && m !== null && typeof (m as { canaryd?: unknown }).canaryd === 'string'
}

/** The weights of a table, as sent to workers. */
export function weightsOf (table: RoutingTable): WeightMap {
  const out: WeightMap = {}
  for (const r of table.routes) {
    const w: Record<string, number> = {}
    for (const v of r.versions) w[v.name] = v.weight
    out[r.name] = w
  }
  return out
}

/** The config's route specs with the primary's runtime weights applied (the state file's, or a change's). */
export function withRuntimeWeights (routes: readonly RouteSpec[], weights: WeightMap): RouteSpec[] {
  return routes.map((r) => {
    const w = weights[r.name]
    return w === undefined ? r : withWeights(r, w)
  })
}
