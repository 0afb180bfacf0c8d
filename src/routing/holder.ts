import type { RoutingTable } from './types.js'

/** Called synchronously with the new table on every swap. */
export type SwapListener = (table: RoutingTable, previous: RoutingTable) => void

/**
 * Holds the current routing table. The control plane builds a new frozen
 * table and calls `swap`; the hot path reads `current` once per request and
 * keeps that table for the request's whole life. There are no locks: a swap
 * is one assignment, and listeners (the proxy's per-version bindings, the
 * weight gauge) run synchronously inside it, so no request can see a table
 * whose bindings are not ready.
 */
export class TableHolder {
  #table: RoutingTable
  readonly #listeners: SwapListener[] = []

  constructor (table: RoutingTable) {
    this.#table = table
  }

  /** The table in force. */
  get current (): RoutingTable {
    return this.#table
  }

  /** Replaces the table; `table.generation` must be greater than the current one. */
  swap (table: RoutingTable): void {
    const previous = this.#table
    if (table.generation <= previous.generation) throw new RangeError(`table generation ${table.generation} is not newer than ${previous.generation}`)
    for (const l of this.#listeners) l(table, previous)
    this.#table = table
  }

  /** Registers a listener, called before the new table becomes current. */
  onSwap (listener: SwapListener): void {
    this.#listeners.push(listener)
  }
}
