import { Pool } from 'undici'

/** Options shared by every upstream pool. */
export interface UpstreamOptions {
  connectTimeoutMs: number
  responseTimeoutMs: number
  bodyTimeoutMs: number
  connections: number
  keepAliveMs: number
}

/**
 * One undici Pool per upstream origin, with keep-alive, shared by every route
 * and version that points at that origin and kept across table swaps (a
 * weight change opens no connection). Pools are made when a table that needs
 * them is bound, never on the hot path.
 */
export class Upstreams {
  readonly #pools = new Map<string, Pool>()
  readonly #opts: UpstreamOptions

  constructor (opts: UpstreamOptions) {
    this.#opts = opts
  }

  /** The pool for an origin, created on first use. */
  get (origin: string): Pool {
    let p = this.#pools.get(origin)
    if (p === undefined) {
      const o = this.#opts
      p = new Pool(origin, {
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
      this.#pools.set(origin, p)
    }
    return p
  }

  /** Closes pools no longer used by any of `origins` (after a config change). */
  async retain (origins: ReadonlySet<string>): Promise<void> {
    const closing: Promise<void>[] = []
    for (const [origin, pool] of this.#pools) {
      if (!origins.has(origin)) {
        this.#pools.delete(origin)
        closing.push(pool.close())
      }
    }
    await Promise.all(closing)
  }

  /** Closes every pool, letting in-flight requests finish. */
  async close (): Promise<void> {
    await Promise.all([...this.#pools.values()].map((p) => p.close()))
    this.#pools.clear()
  }

  /** Destroys every pool at once (second signal). */
  async destroy (): Promise<void> {
    await Promise.all([...this.#pools.values()].map((p) => p.destroy()))
    this.#pools.clear()
  }
}
