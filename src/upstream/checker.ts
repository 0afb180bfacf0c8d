import type { Logger } from '../logger.js'
import type { Endpoint } from './endpoint.js'
import type { RouteHealth } from './health.js'

/** Active health check settings (startup config `health.checkPath`, `health.checkIntervalMs`). */
export interface CheckOptions {
  /** `GET` this path on every endpoint; '' turns the check off. */
  path: string
  intervalMs: number
  /** The route healths of the table in force, read at every round. */
  targets: () => readonly RouteHealth[]
  /** An endpoint was ejected by the check (for the version's ejection counter). */
  onEject: (route: string, version: string) => void
  log: Logger
}

/** One endpoint of one version, as the check applies its result. */
interface Target { health: RouteHealth, index: number, endpoint: Endpoint }

/**
 * The optional active health check: every interval, `GET path` once per
 * pool (origin and TLS settings), whatever number of versions dial it; a
 * failure (connect error, timeout, any status but 2xx/3xx) ejects each of
 * those endpoints (never a route's last one standing), a 2xx/3xx ends an
 * ejection early. A 4xx counts as a failure: the path is ours to configure,
 * so a 404 or 401 there means the endpoint cannot serve it (wrong build,
 * wrong path) and must not be trusted with users.
 */
export class HealthChecker {
  readonly #opts: CheckOptions
  #timer: NodeJS.Timeout | undefined

  constructor (opts: CheckOptions) {
    this.#opts = opts
  }

  /** Starts the rounds (no-op when the path is '' or already started). */
  start (): void {
    if (this.#opts.path.length === 0 || this.#timer !== undefined) return
    this.#timer = setInterval(() => { void this.checkOnce() }, this.#opts.intervalMs)
    this.#timer.unref()
  }

  /** Stops the rounds (a round in flight finishes). */
  stop (): void {
    if (this.#timer !== undefined) clearInterval(this.#timer)
  }

  /** One round over every endpoint of the table in force. */
  async checkOnce (): Promise<void> {
    const { path, intervalMs, log } = this.#opts
    const bySlot = new Map<Endpoint['slot'], Target[]>()
    for (const health of this.#opts.targets()) {
      health.groups.forEach((g, index) => {
        for (const endpoint of g.all) {
          const l = bySlot.get(endpoint.slot)
          const t = { health, index, endpoint }
          if (l === undefined) bySlot.set(endpoint.slot, [t])
          else l.push(t)
        }
      })
    }
    await Promise.all([...bySlot].map(async ([slot, targets]) => {
      let ok = false
      try {
        const r = await slot.pool.request({ path, method: 'GET', headersTimeout: intervalMs })
        await r.body.dump()
        ok = r.statusCode >= 200 && r.statusCode < 400
      } catch {
        ok = false
      }
      for (const { health, index, endpoint } of targets) {
        const g = health.groups[index]!
        if (ok) {
          if (endpoint.ejectedUntil !== 0) log.info({ route: g.route, version: g.version, endpoint: endpoint.origin }, 'health check passed: endpoint back in rotation')
          health.restore(index, endpoint)
        } else if (health.eject(index, endpoint) !== 'none') {
          this.#opts.onEject(g.route, g.version)
          log.warn({ route: g.route, version: g.version, endpoint: endpoint.origin, path }, 'health check failed: endpoint ejected')
        }
      }
    }))
  }
}
