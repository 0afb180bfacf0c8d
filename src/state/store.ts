import { CanarydError, createError } from '../errors.js'
import type { Logger } from '../logger.js'
import { TableHolder } from '../routing/holder.js'
import { withWeights, type RouteSpec } from '../routing/spec.js'
import { buildRoutingTable } from '../routing/table.js'
import { checkWeight, checkWeightSum } from '../routing/weights.js'
import { AuditLog, parseAuditEntries, type AuditEntry } from './audit.js'
import { checkStateDir, readStateFile, STATE_FORMAT_VERSION, writeFileAtomic, type RouteState, type StateDoc } from './file.js'

/** Options of the runtime store. */
export interface RuntimeStoreOptions {
  /** Validated routes from the config (their weights are the defaults). */
  routes: readonly RouteSpec[]
  /** State file path; '' keeps runtime state in memory only (lost on restart). */
  file: string
  logger: Logger
  /** Audit entries kept in memory for GET /api/v1/audit (default 1000). */
  auditSize?: number
  /** Audit entries kept in the state file (default 100), so a restart keeps recent history. */
  persistedAudit?: number
  /** Clock, for tests. */
  now?: () => Date
}

/** Who changes weights and why; recorded in the audit. */
export interface ChangeOptions {
  /** Free text, e.g. "error rate fine after 1 h". */
  reason?: string | null
  /** What made the change: `api`, `rollout`, … */
  source: string
  /** Remote address of the admin client, when there is one. */
  address?: string | null
  /**
   * When given, the route's rollout state is set to this (null clears it) in
   * the same atomic write as the weights, so a rollout step and its progress
   * can never be saved apart. Leave undefined to keep the rollout state.
   */
  rollout?: unknown
}

/** A route as the admin API shows it. */
export interface RouteView {
  name: string
  versions: Array<{ name: string; upstream: string; weight: number }>
  /** The rollout summary provider's answer for this route, or null. */
  rollout: unknown
}

/** The result of a weight change. */
export interface WeightChange {
  /** Weights before the change, by version name. */
  previous: Record<string, number>
  /** The route with its new weights. */
  route: RouteView
  /** The audit entry recorded for the change. */
  entry: AuditEntry
}

function weightsOf (spec: RouteSpec): Record<string, number> {
  const out: Record<string, number> = {}
  for (const v of spec.versions) out[v.name] = v.weight
  return out
}

function sameVersions (a: readonly { name: string; upstream: string }[], b: readonly { name: string; upstream: string }[]): boolean {
  if (a.length !== b.length) return false
  const key = (vs: readonly { name: string; upstream: string }[]): string =>
    vs.map((v) => `${v.name}\u0000${v.upstream}`).sort().join('\u0001')
  return key(a) === key(b)
}

function invalid (message: string): CanarydError {
  return new CanarydError('CANARYD_ERR_INVALID_WEIGHTS', message)
}

/**
 * Validates a weight set for a route (same rules as the config: every version
 * named, none unknown, 0–100, at most 4 decimals, sum 100) and returns it, or
 * throws CANARYD_ERR_INVALID_WEIGHTS saying exactly what is wrong.
 */
export function validateWeights (spec: RouteSpec, weights: unknown): Record<string, number> {
  const names = spec.versions.map((v) => v.name)
  if (typeof weights !== 'object' || weights === null || Array.isArray(weights)) {
    throw invalid(`weights must be an object of version name to percent, e.g. {${names.map((n, i) => `"${n}":${i === 0 ? 100 : 0}`).join(',')}}`)
  }
  const w = weights as Record<string, unknown>
  for (const k of Object.keys(w)) {
    if (!names.includes(k)) throw invalid(`weights.${k}: route ${spec.name} has no version ${JSON.stringify(k)} (versions: ${names.join(', ')})`)
  }
  const missing = names.filter((n) => !Object.hasOwn(w, n))
  if (missing.length > 0) throw invalid(`weights: every version must be named; missing ${missing.map((n) => JSON.stringify(n)).join(', ')} (route ${spec.name} has ${names.join(', ')})`)
  const out: Record<string, number> = {}
  for (const n of names) {
    const bad = checkWeight(w[n])
    if (bad !== undefined) throw invalid(`weights.${n}: ${bad}`)
    out[n] = w[n] as number
  }
  const sum = checkWeightSum(Object.values(out))
  if (sum !== undefined) throw invalid(sum)
  return out
}

/**
 * The control plane's single writer of runtime state, and the only way
 * weights change at runtime (admin API and rollout controller alike).
 *
 * A change is: validate → build a new frozen routing table → persist the
 * state file atomically → swap the table in with one assignment. Persisting
 * before swapping means a change that is live has always been saved; when
 * the write fails nothing changes and the caller gets
 * CANARYD_ERR_STATE_PERSIST. Changes run one at a time on a promise chain, so
 * two callers can never interleave (both would otherwise build from the same
 * old table and the first change would be lost).
 *
 * On construction the state file is read (synchronously, start-up only):
 * for each route whose version set (names and upstreams) is unchanged, the
 * saved weights and rollout state override the config; where the config
 * changed the versions, the config wins and a warning says so. A corrupt or
 * unreadable file is moved aside and config weights are used.
 */
export class RuntimeStore {
  /** The routing table holder; the proxy reads it, only this store swaps it. */
  readonly holder: TableHolder
  /** The state file path ('' = not persisted). */
  readonly file: string
  readonly #log: Logger
  readonly #now: () => Date
  readonly #audit: AuditLog
  readonly #persistedAudit: number
  #specs: RouteSpec[]
  #rollouts = new Map<string, unknown>()
  #queue: Promise<unknown> = Promise.resolve()
  #summary: (route: string) => unknown = () => null
  readonly #listeners: Array<(entry: AuditEntry) => void> = []

  constructor (opts: RuntimeStoreOptions) {
    this.file = opts.file
    this.#log = opts.logger
    this.#now = opts.now ?? (() => new Date())
    this.#audit = new AuditLog(opts.auditSize ?? 1000)
    this.#persistedAudit = opts.persistedAudit ?? 100
    this.#specs = structuredClone([...opts.routes])
    if (this.file !== '') this.#load()
    this.holder = new TableHolder(buildRoutingTable(this.#specs, 1))
  }

  #load (): void {
    // `canaryd serve` refuses to start on this (cli.ts); an embedded store only logs it, so
    // tests and library users can still exercise the CANARYD_ERR_STATE_PERSIST path
    try {
      checkStateDir(this.file)
    } catch (err) {
      this.#log.error({ stateFile: this.file }, `${(err as Error).message}; weight changes will fail (CANARYD_ERR_STATE_PERSIST) until it is writable`)
    }
    const read = readStateFile(this.file, this.#now())
    if (read.kind === 'absent') {
      this.#log.info({ stateFile: this.file }, 'no state file yet: using config weights')
      return
    }
    if (read.kind === 'corrupt') {
      this.#log.error({ stateFile: this.file, reason: read.reason, movedTo: read.movedTo, moveError: read.moveError },
        'state file is corrupt or unreadable: starting from config weights; the bad file was moved aside (not deleted)')
      return
    }
    const doc = read.doc
    const known = new Set<string>()
    this.#specs = this.#specs.map((spec) => {
      known.add(spec.name)
      const saved = doc.routes[spec.name]
      if (saved === undefined) return spec
      if (!sameVersions(spec.versions, saved.versions)) {
        this.#log.warn({
          route: spec.name,
          stateVersions: saved.versions.map((v) => `${v.name}=${v.upstream}`),
          configVersions: spec.versions.map((v) => `${v.name}=${v.upstream}`)
        }, 'config changed the versions of this route: config weights win; saved weights and rollout state are ignored')
        return spec
      }
      if (saved.rollout !== null && saved.rollout !== undefined) this.#rollouts.set(spec.name, saved.rollout)
      this.#log.info({ route: spec.name, weights: saved.weights, stateFile: this.file }, 'weights restored from state file')
      return withWeights(spec, saved.weights)
    })
    for (const name of Object.keys(doc.routes)) {
      if (!known.has(name)) this.#log.warn({ route: name, stateFile: this.file }, 'state file names a route that is not in the config: ignored')
    }
    this.#audit.restore(parseAuditEntries(doc.audit))
  }

  /** Runs `fn` after every earlier change has finished (success or failure). */
  async #serialize<T> (fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(fn)
    this.#queue = p.catch(() => {})
    return await p
  }

  #doc (specs: readonly RouteSpec[], rollouts: ReadonlyMap<string, unknown>, extra: readonly AuditEntry[]): StateDoc {
    const routes: Record<string, RouteState> = {}
    for (const s of specs) {
      routes[s.name] = {
        versions: s.versions.map((v) => ({ name: v.name, upstream: v.upstream })),
        weights: weightsOf(s),
        rollout: rollouts.get(s.name) ?? null
      }
    }
    const keep = Math.max(0, this.#persistedAudit - extra.length)
    const audit = [...(keep === 0 ? [] : this.#audit.tail(keep)), ...extra].slice(-this.#persistedAudit)
    return { version: STATE_FORMAT_VERSION, savedAt: this.#now().toISOString(), routes, audit }
  }

  async #persist (doc: StateDoc): Promise<void> {
    if (this.file === '') return
    try {
      await writeFileAtomic(this.file, `${JSON.stringify(doc, null, 2)}\n`)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message
      this.#log.error({ stateFile: this.file, err }, 'cannot write the state file: change refused')
      throw new CanarydError('CANARYD_ERR_STATE_PERSIST', `cannot write state file ${this.file} (${code}); nothing was changed`, { cause: err })
    }
  }

  #routeIndex (route: string): number {
    const i = this.#specs.findIndex((s) => s.name === route)
    if (i === -1) throw createError('CANARYD_ERR_ROUTE_NOT_FOUND', { route: JSON.stringify(route), routes: this.#specs.map((s) => s.name).join(', ') })
    return i
  }

  /**
   * Changes a route's weights: validate, build, persist, swap (see the class
   * comment). Throws CANARYD_ERR_ROUTE_NOT_FOUND, CANARYD_ERR_INVALID_WEIGHTS
   * or CANARYD_ERR_STATE_PERSIST; in every such case nothing changed.
   * Setting the weights a route already has is still a change (audited).
   */
  async setWeights (route: string, weights: unknown, opts: ChangeOptions): Promise<WeightChange> {
    return await this.#serialize(async () => {
      const i = this.#routeIndex(route)
      const spec = this.#specs[i]!
      const next = validateWeights(spec, weights)
      const previous = weightsOf(spec)
      const specs = this.#specs.slice()
      specs[i] = withWeights(spec, next)
      const table = buildRoutingTable(specs, this.holder.current.generation + 1)
      let rollouts: Map<string, unknown> = this.#rollouts
      if (opts.rollout !== undefined) {
        rollouts = new Map(this.#rollouts)
        if (opts.rollout === null) rollouts.delete(route)
        else rollouts.set(route, jsonCopy(opts.rollout))
      }
      const entry: AuditEntry = {
        id: this.#audit.nextId,
        time: this.#now().toISOString(),
        route,
        previous,
        weights: next,
        reason: opts.reason ?? null,
        source: opts.source,
        address: opts.address ?? null,
        generation: table.generation
      }
      await this.#persist(this.#doc(specs, rollouts, [entry]))
      // persisted: from here on the change is real, apply it in memory
      this.#specs = specs
      this.#rollouts = rollouts
      this.holder.swap(table)
      this.#audit.push(entry)
      // `time` is pino's own field: the entry's time goes out as `changedAt`
      const { time, id, ...rest } = entry
      this.#log.info({ auditId: id, changedAt: time, ...rest }, 'weights changed')
      for (const l of this.#listeners) {
        try {
          l(entry)
        } catch (err) {
          this.#log.error({ err, route }, 'weight change listener failed')
        }
      }
      return { previous, route: this.routeView(route)!, entry }
    })
  }

  /**
   * Saves a route's rollout state (any JSON value; null clears it) in the
   * state file, atomically and serialised with weight changes. Used by the
   * rollout controller to survive restarts. Throws CANARYD_ERR_ROUTE_NOT_FOUND
   * or CANARYD_ERR_STATE_PERSIST (then nothing changed).
   */
  async setRolloutState (route: string, data: unknown): Promise<void> {
    await this.#serialize(async () => {
      this.#routeIndex(route)
      const rollouts = new Map(this.#rollouts)
      if (data === null || data === undefined) rollouts.delete(route)
      else rollouts.set(route, jsonCopy(data))
      await this.#persist(this.#doc(this.#specs, rollouts, []))
      this.#rollouts = rollouts
    })
  }

  /** A copy of a route's saved rollout state, or null. */
  getRolloutState (route: string): unknown {
    const v = this.#rollouts.get(route)
    return v === undefined ? null : structuredClone(v)
  }

  /**
   * Registers the provider of the `rollout` field of route objects in
   * `GET /api/v1/routes` (the rollout controller's summary). Default: null.
   */
  setRolloutSummary (fn: (route: string) => unknown): void {
    this.#summary = fn
  }

  /** Registers a listener called after every applied weight change (e.g. a rollout pausing on a manual change). */
  onChange (listener: (entry: AuditEntry) => void): void {
    this.#listeners.push(listener)
  }

  /** Names of the routes, in config order. */
  get routeNames (): string[] {
    return this.#specs.map((s) => s.name)
  }

  /** The current weights of a route, or undefined for an unknown route. */
  weights (route: string): Record<string, number> | undefined {
    const spec = this.#specs.find((s) => s.name === route)
    return spec === undefined ? undefined : weightsOf(spec)
  }

  /** One route as the admin API shows it, or undefined. */
  routeView (route: string): RouteView | undefined {
    const spec = this.#specs.find((s) => s.name === route)
    if (spec === undefined) return undefined
    let rollout: unknown = null
    try {
      rollout = this.#summary(route) ?? null
    } catch (err) {
      this.#log.warn({ err, route }, 'rollout summary provider failed')
    }
    return {
      name: spec.name,
      versions: spec.versions.map((v) => ({ name: v.name, upstream: v.upstream, weight: v.weight })),
      rollout
    }
  }

  /** Every route as the admin API shows it, in config order. */
  routeViews (): RouteView[] {
    return this.#specs.map((s) => this.routeView(s.name)!)
  }

  /** The most recent changes, newest first. */
  audit (limit: number, route?: string): AuditEntry[] {
    return this.#audit.recent(limit, route)
  }

  /** Resolves when every change queued so far has finished (used on shutdown). */
  async flush (): Promise<void> {
    await this.#queue
  }
}

/** A deep copy through JSON: what is stored is exactly what the state file can hold. */
function jsonCopy (v: unknown): unknown {
  return JSON.parse(JSON.stringify(v)) as unknown
}
