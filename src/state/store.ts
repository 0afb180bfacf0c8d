import { CanarydError, createError } from '../errors.js'
import type { Logger } from '../logger.js'
import { TableHolder } from '../routing/holder.js'
import { upstreamView, withWeights, type RouteSpec, type VersionSpec } from '../routing/spec.js'
import { buildRoutingTable } from '../routing/table.js'
import { checkWeight, checkWeightSum } from '../routing/weights.js'
import { AuditLog, parseAuditEntries, type AuditEntry } from './audit.js'
import { checkStateDir, isOrigin, readStateFile, STATE_FORMAT_VERSION, writeFileAtomic, type RouteState, type StateDoc, type UpstreamOverride } from './file.js'

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
  /**
   * Called with the route specs a change is about to put in force, before
   * anything is persisted or swapped (the data plane resolves new DNS names
   * then, so the new table finds its endpoints at once).
   */
  prepare?: (specs: readonly RouteSpec[]) => Promise<void>
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

/** A version as the admin API shows it. */
export interface VersionView {
  name: string
  /** One origin as a string, several as an array (as written in the config). */
  upstream: string | string[]
  weight: number
  /** Set when not the default `least-request`. */
  balance?: string
  /** `dns` when the origins are re-resolved. */
  discovery?: string
  /** True when the upstream was changed at runtime (PUT …/versions/{version}) and differs from the config file's. */
  runtimeUpstream?: boolean
}

/** A route as the admin API shows it. */
export interface RouteView {
  name: string
  versions: VersionView[]
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

/** Same version names (the "version set"): runtime weights carry over only then. */
function sameVersions (a: readonly { name: string }[], b: readonly { name: string }[]): boolean {
  if (a.length !== b.length) return false
  const key = (vs: readonly { name: string }[]): string => vs.map((v) => v.name).sort().join('\u0000')
  return key(a) === key(b)
}

function sameList (a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/** The route with the runtime upstreams of `overrides` applied (versions not named keep the config's). */
function withUpstreams (spec: RouteSpec, overrides: Readonly<Record<string, UpstreamOverride>> | undefined): RouteSpec {
  if (overrides === undefined) return spec
  return { ...spec, versions: spec.versions.map((v) => overrides[v.name] === undefined ? v : { ...v, upstream: [...overrides[v.name]!.upstream] }) }
}

/**
 * The runtime upstreams that still apply to `base` (the config file's
 * route): an override is dropped once the file itself changes that
 * version's upstream (the file is newer than the override then), or the
 * version is gone, or (a hand-edited state file) it is not a list of origins.
 */
function keptOverrides (base: RouteSpec, overrides: Readonly<Record<string, UpstreamOverride>> | undefined): { kept: Record<string, UpstreamOverride> | undefined; dropped: string[] } {
  if (overrides === undefined) return { kept: undefined, dropped: [] }
  const kept: Record<string, UpstreamOverride> = {}
  const dropped: string[] = []
  for (const [name, o] of Object.entries(overrides)) {
    const v = base.versions.find((x) => x.name === name)
    if (v !== undefined && sameList(v.upstream, o.config) && o.upstream.length !== 0 && o.upstream.every(isOrigin)) kept[name] = o
    else dropped.push(name)
  }
  return { kept: Object.keys(kept).length === 0 ? undefined : kept, dropped }
}

/** What a reload changed, as `POST /api/v1/reload` answers it. */
export interface ReloadSummary {
  /** Generation of the routing table the reload put in force. */
  generation: number
  added: string[]
  removed: string[]
  /** Routes present before and after whose definition in the file changed. */
  changed: string[]
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
 * for each route whose version set (version names) is unchanged, the
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
  /** The routes as the config file gives them (no runtime weights or upstreams). */
  #base: RouteSpec[]
  /** The routes in force: the file's, with runtime weights and upstreams applied. */
  #specs: RouteSpec[]
  /** Runtime upstreams by route, then version (PUT …/versions/{version}). */
  #overrides = new Map<string, Record<string, UpstreamOverride>>()
  readonly #prepare: ((specs: readonly RouteSpec[]) => Promise<void>) | undefined
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
    this.#base = structuredClone([...opts.routes])
    this.#specs = structuredClone([...opts.routes])
    this.#prepare = opts.prepare
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
      const { kept, dropped } = keptOverrides(spec, saved.upstreams)
      if (dropped.length !== 0) this.#log.warn({ route: spec.name, versions: dropped }, 'the config file changed these versions\' upstream since it was changed at runtime: the file wins')
      if (kept !== undefined) {
        this.#overrides.set(spec.name, kept)
        this.#log.info({ route: spec.name, upstreams: Object.fromEntries(Object.entries(kept).map(([k, o]) => [k, o.upstream])) }, 'runtime upstreams restored from state file')
      }
      const current = withUpstreams(spec, kept)
      if (!sameVersions(spec.versions, saved.versions)) {
        this.#log.warn({
          route: spec.name,
          stateVersions: saved.versions.map((v) => v.name),
          configVersions: spec.versions.map((v) => v.name)
        }, 'config changed the versions of this route: config weights win; saved weights and rollout state are ignored')
        return current
      }
      if (saved.rollout !== null && saved.rollout !== undefined) this.#rollouts.set(spec.name, saved.rollout)
      this.#log.info({ route: spec.name, weights: saved.weights, stateFile: this.file }, 'weights restored from state file')
      return withWeights(current, saved.weights)
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

  #doc (specs: readonly RouteSpec[], rollouts: ReadonlyMap<string, unknown>, extra: readonly AuditEntry[], overrides: ReadonlyMap<string, Record<string, UpstreamOverride>> = this.#overrides): StateDoc {
    const routes: Record<string, RouteState> = {}
    for (const s of specs) {
      const r: RouteState = {
        versions: s.versions.map((v) => ({ name: v.name, upstream: upstreamView(v.upstream) })),
        weights: weightsOf(s),
        rollout: rollouts.get(s.name) ?? null
      }
      const o = overrides.get(s.name)
      if (o !== undefined) r.upstreams = o
      routes[s.name] = r
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
      const entry = this.#entry(this.#audit.nextId, route, previous, next, opts, table.generation)
      await this.#persist(this.#doc(specs, rollouts, [entry]))
      // persisted: from here on the change is real, apply it in memory
      this.#specs = specs
      this.#rollouts = rollouts
      this.holder.swap(table)
      this.#record(entry, 'weights changed')
      return { previous, route: this.routeView(route)!, entry }
    })
  }

  /** Audits an applied change, logs it and tells the change listeners. */
  #record (entry: AuditEntry, message: string): void {
    this.#audit.push(entry)
    // `time` is pino's own field: the entry's time goes out as `changedAt`
    const { time, id, ...rest } = entry
    this.#log.info({ auditId: id, changedAt: time, ...rest }, message)
    for (const l of this.#listeners) {
      try {
        l(entry)
      } catch (err) {
        this.#log.error({ err, route: entry.route }, 'change listener failed')
      }
    }
  }

  #entry (id: number, route: string, previous: Record<string, number>, weights: Record<string, number>, opts: ChangeOptions, generation: number): AuditEntry {
    return { id, time: this.#now().toISOString(), route, previous, weights, reason: opts.reason ?? null, source: opts.source, address: opts.address ?? null, generation }
  }

  /**
   * Points a version at new endpoints (`PUT /api/v1/routes/{route}/versions/{version}`):
   * `upstream` is validated by the caller (config's rules). Persisted as a
   * runtime upstream that survives restarts and reloads until the config
   * file itself changes that version's upstream; setting the file's own
   * value again removes it. Audited; effective at once (requests in flight
   * finish on the endpoints they started on). Throws
   * CANARYD_ERR_ROUTE_NOT_FOUND, CANARYD_ERR_VERSION_NOT_FOUND or
   * CANARYD_ERR_STATE_PERSIST; then nothing changed.
   */
  async setUpstream (route: string, version: string, upstream: readonly string[], opts: ChangeOptions): Promise<{ previous: string | string[]; route: RouteView; entry: AuditEntry }> {
    return await this.#serialize(async () => {
      const i = this.#routeIndex(route)
      const spec = this.#specs[i]!
      const vi = spec.versions.findIndex((v) => v.name === version)
      if (vi === -1) throw createError('CANARYD_ERR_VERSION_NOT_FOUND', { route, version: JSON.stringify(version), versions: spec.versions.map((v) => v.name).join(', ') })
      const previous = spec.versions[vi]!.upstream
      const config = this.#base.find((b) => b.name === route)!.versions.find((v) => v.name === version)!.upstream
      const overrides = new Map(this.#overrides)
      const mine = { ...overrides.get(route) }
      if (sameList(upstream, config)) delete mine[version]
      else mine[version] = { upstream: [...upstream], config: [...config] }
      if (Object.keys(mine).length === 0) overrides.delete(route)
      else overrides.set(route, mine)
      const specs = this.#specs.slice()
      const versions = spec.versions.slice()
      versions[vi] = { ...versions[vi]!, upstream: [...upstream] } satisfies VersionSpec
      specs[i] = { ...spec, versions }
      await this.#prepare?.(specs)
      const table = buildRoutingTable(specs, this.holder.current.generation + 1)
      const w = weightsOf(spec)
      const entry: AuditEntry = { ...this.#entry(this.#audit.nextId, route, w, w, opts, table.generation), version, upstream: { previous: upstreamView(previous), next: upstreamView(upstream) } }
      await this.#persist(this.#doc(specs, this.#rollouts, [entry], overrides))
      this.#specs = specs
      this.#overrides = overrides
      this.holder.swap(table)
      this.#record(entry, 'version upstream changed')
      return { previous: upstreamView(previous), route: this.routeView(route)!, entry }
    })
  }

  /**
   * Applies a reloaded config file's routes (validated by the caller).
   * Routes whose version set (names) is unchanged keep their runtime
   * weights, rollout state and runtime upstreams (unless the file changed
   * that version's upstream); a route whose version set changed takes the
   * file's weights, audited with source `reload`; new routes come in at the
   * file's weights; removed routes go, with their state. One atomic write,
   * one swap: a request sees the old table or the new one, never a mix.
   */
  async reload (routes: readonly RouteSpec[], opts: ChangeOptions): Promise<ReloadSummary> {
    return await this.#serialize(async () => {
      const base = structuredClone([...routes])
      const current = new Map(this.#specs.map((s) => [s.name, s]))
      const oldBase = new Map(this.#base.map((s) => [s.name, s]))
      const added: string[] = []
      const changed: string[] = []
      const pending: Array<{ route: string; previous: Record<string, number>; weights: Record<string, number>; reason: string }> = []
      const overrides = new Map<string, Record<string, UpstreamOverride>>()
      const specs = base.map((spec) => {
        const cur = current.get(spec.name)
        if (cur === undefined) {
          added.push(spec.name)
          return spec
        }
        if (JSON.stringify(oldBase.get(spec.name)) !== JSON.stringify(spec)) changed.push(spec.name)
        const { kept, dropped } = keptOverrides(spec, this.#overrides.get(spec.name))
        if (kept !== undefined) overrides.set(spec.name, kept)
        if (dropped.length !== 0) this.#log.warn({ route: spec.name, versions: dropped }, 'reload: the file changed these versions\' upstream (or removed them): their runtime upstream is dropped')
        const next = withUpstreams(spec, kept)
        if (sameVersions(cur.versions, spec.versions)) return withWeights(next, weightsOf(cur))
        pending.push({ route: spec.name, previous: weightsOf(cur), weights: weightsOf(spec), reason: `reload changed the versions (${cur.versions.map((v) => v.name).join(', ')} → ${spec.versions.map((v) => v.name).join(', ')}): the file's weights apply` })
        return next
      })
      const names = new Set(base.map((s) => s.name))
      const removed = this.#specs.map((s) => s.name).filter((n) => !names.has(n))
      const rollouts = new Map([...this.#rollouts].filter(([r]) => names.has(r)))
      await this.#prepare?.(specs)
      const table = buildRoutingTable(specs, this.holder.current.generation + 1)
      let id = this.#audit.nextId
      const entries = pending.map((p) => this.#entry(id++, p.route, p.previous, p.weights, { ...opts, reason: p.reason }, table.generation))
      await this.#persist(this.#doc(specs, rollouts, entries, overrides))
      this.#base = base
      this.#specs = specs
      this.#overrides = overrides
      this.#rollouts = rollouts
      this.holder.swap(table)
      for (const e of entries) this.#record(e, 'weights changed by reload')
      return { generation: table.generation, added, removed, changed }
    })
  }

  /** The routes in force (runtime weights and upstreams applied), e.g. for cluster workers. */
  get specs (): readonly RouteSpec[] {
    return this.#specs
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
    const overrides = this.#overrides.get(route)
    return {
      name: spec.name,
      versions: spec.versions.map((v) => {
        const view: VersionView = { name: v.name, upstream: upstreamView(v.upstream), weight: v.weight }
        if (v.balance !== undefined) view.balance = v.balance
        if (v.discovery !== undefined) view.discovery = v.discovery
        if (overrides?.[v.name] !== undefined) view.runtimeUpstream = true
        return view
      }),
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
