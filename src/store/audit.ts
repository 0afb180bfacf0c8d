/** One applied weight change, as logged and as served by `GET /api/v1/audit`. */
export interface AuditEntry {
  /** Increasing sequence number (continues across restarts when the state file is kept). */
  id: number
  /** ISO-8601 time the change was applied. */
  time: string
  route: string
  /** Weights before the change, by version name. */
  previous: Record<string, number>
  /** Weights after the change, by version name. */
  weights: Record<string, number>
  /** Free text given by the caller, or null. */
  reason: string | null
  /** Who made the change: `api`, `rollout`, … */
  source: string
  /** Remote address of the admin client, or null (e.g. a rollout step). */
  address: string | null
  /** Routing table generation that the change produced. */
  generation: number
  /** For a version's upstream change: the version. */
  version?: string
  /** For a version's upstream change: its origins before and after. */
  upstream?: { previous: string | string[]; next: string | string[] }
  /** For a change of several versions' upstreams at once (a rollout's canary upstream, a finalized promotion): by version. */
  upstreams?: Record<string, { previous: string | string[]; next: string | string[] }>
  /** For a segments change: the route's segments before and after. */
  segments?: { previous: unknown[]; next: unknown[] }
  /** For a mirror change (a rollout's shadow phase): before and after (null: none). */
  mirror?: { previous: unknown; next: unknown }
}

/**
 * A bounded ring of the most recent changes, oldest dropped first. A plain
 * array with a cap is enough: changes are rare (humans and rollout steps),
 * so the O(n) shift on overflow never matters.
 */
export class AuditLog {
  readonly #max: number
  #entries: AuditEntry[] = []

  constructor (max: number = 1000) {
    this.#max = max
  }

  /** Appends an entry, dropping the oldest beyond the cap. */
  push (entry: AuditEntry): void {
    this.#entries.push(entry)
    if (this.#entries.length > this.#max) this.#entries.splice(0, this.#entries.length - this.#max)
  }

  /** Replaces the content (start-up, from the state file); keeps the newest `max`. */
  restore (entries: readonly AuditEntry[]): void {
    this.#entries = entries.slice(-this.#max)
  }

  /** The next id to use. */
  get nextId (): number {
    const last = this.#entries[this.#entries.length - 1]
    return last === undefined ? 1 : last.id + 1
  }

  /** Newest first, at most `limit`, optionally only one route's. */
  recent (limit: number, route?: string): AuditEntry[] {
    const out: AuditEntry[] = []
    for (let i = this.#entries.length - 1; i >= 0 && out.length < limit; i--) {
      const e = this.#entries[i]!
      if (route === undefined || e.route === route) out.push(e)
    }
    return out
  }

  /** Oldest first, the newest `n` (what goes into the state file). */
  tail (n: number): AuditEntry[] {
    return this.#entries.slice(-n)
  }
}

function isObj (v: unknown): boolean {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Keeps only well-formed entries from an untrusted array (the state file, the fleet's audit list). */
export function parseAuditEntries (raw: readonly unknown[]): AuditEntry[] {
  return raw.filter((e): e is AuditEntry => {
    if (typeof e !== 'object' || e === null) return false
    const o = e as Record<string, unknown>
    return Number.isSafeInteger(o.id) && typeof o.time === 'string' && typeof o.route === 'string' &&
      isObj(o.previous) && isObj(o.weights) && typeof o.source === 'string'
  })
}
