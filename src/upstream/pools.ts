import { Pool } from 'undici'
import { HttpOrigin } from './http-client.js'

/** Options shared by every upstream pool. */
export interface UpstreamOptions {
  connectTimeoutMs: number
  responseTimeoutMs: number
  bodyTimeoutMs: number
  connections: number
  keepAliveMs: number
  /** Most requests in flight per origin (0 = no cap); past it the proxy answers 503 at once. */
  maxInFlight?: number
}

/**
 * One upstream origin as the hot path sees it: its pool and the count of
 * requests in flight, checked against the cap before dispatch. undici would
 * otherwise queue without bound once every connection is busy.
 */
export interface UpstreamSlot {
  readonly origin: string
  readonly pool: Pool
  /** The same origin over Node's http client, for large request bodies (see http-client.ts). */
  readonly http: HttpOrigin
  /** 0 = no cap. */
  readonly cap: number
  inFlight: number
}

/**
 * One undici Pool per upstream origin, with keep-alive, shared by every route
 * and version that points at that origin and kept across table swaps (a
 * weight change opens no connection). Pools are made when a table that needs
 * them is bound, never on the hot path. Pools live until `close`: the
 * origins are fixed at start-up, so none ever becomes unused.
 */
export class Upstreams {
  readonly #slots = new Map<string, UpstreamSlot>()
  readonly #opts: UpstreamOptions

  constructor (opts: UpstreamOptions) {
    this.#opts = opts
  }

  /** The pool and in-flight counter of an origin, created on first use (kept across table swaps). */
  slot (origin: string): UpstreamSlot {
    let s = this.#slots.get(origin)
    if (s === undefined) {
      const o = this.#opts
      const pool = new Pool(origin, {
        connections: o.connections === 0 ? null : o.connections,
        connect: { timeout: o.connectTimeoutMs },
        headersTimeout: o.responseTimeoutMs,
        bodyTimeout: o.bodyTimeoutMs,
        keepAliveTimeout: o.keepAliveMs,
        keepAliveMaxTimeout: Math.max(o.keepAliveMs, 600_000),
        // the upstream's `Keep-Alive: timeout=N` hint minus this margin, so a
        // connection is retired before the upstream closes it under a request
        keepAliveTimeoutThreshold: 1000,
        pipelining: 1
      })
      const http = new HttpOrigin(origin, { connectTimeoutMs: o.connectTimeoutMs, responseTimeoutMs: o.responseTimeoutMs, bodyTimeoutMs: o.bodyTimeoutMs, connections: o.connections, keepAliveMs: o.keepAliveMs })
      s = { origin, pool, http, cap: o.maxInFlight ?? 0, inFlight: 0 }
      this.#slots.set(origin, s)
    }
    return s
  }

  /** Closes every pool, letting in-flight requests finish. */
  async close (): Promise<void> {
    await Promise.all([...this.#slots.values()].map(async (s) => { await s.pool.close() }))
    // called after the drain: what is left on the http client is idle keep-alive sockets
    for (const s of this.#slots.values()) s.http.destroy()
    this.#slots.clear()
  }
}
