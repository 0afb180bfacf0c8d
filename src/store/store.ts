import { createHash, randomBytes } from 'node:crypto'
import { CanarydError, ConfigError, createError, routeNotFound } from '../errors.js'
import type { Logger } from '../logger.js'
import { TableHolder } from '../routing/holder.js'
import { jsonEqual, upstreamView, withWeights, type MirrorSpec, type RouteSpec, type SegmentSpec, type VersionSpec } from '../routing/spec.js'
import { buildRoutingTable } from '../routing/table.js'
import { checkWeight, checkWeightSum } from '../routing/weights.js'
import { AuditLog, parseAuditEntries, type AuditEntry } from './audit.js'
import { checkStateDir, checkStateDoc, isOrigin, readStateFile, STATE_FORMAT_VERSION, writeFileAtomic, type FieldOverride, type RouteState, type StateDoc, type UpstreamOverride } from './file.js'
import type { FleetRead, RedisStore } from './redis.js'
import { readSnapshot, snapshotText } from './snapshot.js'

export { fleetSnapshotPath } from './snapshot.js'

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
  /**
   * Re-validates saved runtime segments against a route's versions (the
   * config's validator, injected: state/ does not import config/). Throws
   * when they no longer fit; the override is then dropped with a warning.
   */
  checkSegments?: (segments: unknown, versions: readonly string[]) => SegmentSpec[]
  /** Re-validates a saved runtime mirror the same way. */
  checkMirror?: (mirror: unknown, versions: readonly string[]) => MirrorSpec
  /**
   * Fleet mode (`store.type` redis): the runtime state lives in Redis and
   * `file` is not read; `open()` adopts (or seeds) the fleet's state.
   */
  fleet?: RedisStore
  /** Fleet mode: the local snapshot of the last applied fleet state ('' = none); see fleetSnapshotPath. */
  snapshot?: string
  /** Fleet mode: how often the fleet's generation is checked besides the notifications (default 1000 ms). */
  syncMs?: number
}

/**
 * The fingerprint of a config's routes and their versions (names): the
 * part of the dynamic config a fleet's state is keyed by. Instances whose
 * fingerprints differ read the fleet's route states differently; other
 * differences (an upstream address per zone, a timeout) do not matter to
 * the shared state and are not flagged.
 */
export function configFingerprint (routes: readonly RouteSpec[]): string {
  const shape = routes.map((r) => [r.name, r.versions.map((v) => v.name)])
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 16)
}

/** A write refused because this instance no longer holds the route's rollout lease (fencing): nothing changed. */
export class LeaseLostError extends CanarydError {
  constructor (route: string) {
    super('CANARYD_ERR_ROLLOUT_CONFLICT', `this instance no longer leads the rollout of route ${route} (its lease expired or another instance took it over); nothing was changed`)
    this.name = 'LeaseLostError'
  }
}

/** The fleet moved on while a change was being made: it is made again on the newer state. */
class StaleGenerationError extends Error {}

/**
 * A rollout write based on a record the fleet no longer holds (an earlier
 * write of the leader's was applied although it was answered as failed):
 * refused; the leader rebuilds its controller from the fleet's record.
 */
export class StaleRolloutError extends CanarydError {
  constructor (route: string) {
    super('CANARYD_ERR_ROLLOUT_CONFLICT', `the rollout record of route ${route} changed since this instance last wrote it; nothing was changed (the rollout continues from the fleet's record)`)
    this.name = 'StaleRolloutError'
  }
}

/** How often a change is made again after losing the compare-and-set race, before 409. */
const COMMIT_ATTEMPTS = 5

/** How long the periodic check waits for Redis before treating it as unreachable. */
const WATCHDOG_MS = 1000

/** Audit entries kept in the local snapshot. */
const SNAPSHOT_AUDIT = 100

/**
 * One atomic runtime change of a route: whichever parts are given change
 * together, in one validated table, one state-file write, one swap and one
 * audit entry (a rollout step that moves weights and segments, or points the
 * canary at a new build and starts, is never half-applied).
 */
export interface RoutePatch {
  /** All versions' weights (validated here, as PUT …/weights). */
  weights?: unknown
  /** The route's segments, validated by the caller ([] removes them). */
  segments?: SegmentSpec[]
  /**
   * The segments `segments` was computed from: when the route's differ (a
   * change queued before this one), nothing changes and the caller gets
   * 409 CANARYD_ERR_ROLLOUT_CONFLICT (a rollout step never overwrites an
   * operator's segments).
   */
  expectSegments?: SegmentSpec[]
  /** The route's mirror, validated by the caller (null removes it). */
  mirror?: MirrorSpec | null
  /** New origins by version name, validated by the caller. */
  upstreams?: Record<string, string[]>
}

/** Runtime overrides of config fields, by route; replaced whole on every change (a snapshot, like the table). */
interface Overrides {
  readonly upstreams: ReadonlyMap<string, Record<string, UpstreamOverride>>
  readonly segments: ReadonlyMap<string, FieldOverride<SegmentSpec[]>>
  readonly mirror: ReadonlyMap<string, FieldOverride<MirrorSpec | null>>
}

const NO_OVERRIDES: Overrides = Object.freeze({ upstreams: new Map(), segments: new Map(), mirror: new Map() })

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
  /**
   * Fleet mode: the rollout leader's fencing token for the route; the
   * write is refused (LeaseLostError) unless the lease still holds it.
   */
  fence?: Fence
  /**
   * The revision of the route's rollout record this write replaces: the
   * write is refused (StaleRolloutError) when the record in force has
   * another (a rollout leader never writes over a record it has not seen).
   */
  expectRevision?: number
}

/** A rollout leader's lease on a route, checked by every write it makes. */
export interface Fence {
  route: string
  token: number
  instance: string
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
  /** The segments in force (config or runtime), in match order; [] when none. */
  segments: SegmentSpec[]
  /** The mirror in force, or null. */
  mirror: MirrorSpec | null
  /** The rollout summary provider's answer for this route, or null. */
  rollout: unknown
}

/** The segments of a route as GET/PUT …/segments answer them. */
export interface SegmentsView {
  route: string
  segments: SegmentSpec[]
  /** True when changed at runtime and different from the config file's. */
  runtime: boolean
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

/** The route with `segments` in force ([] removes the key, as the config's validator normalises it). */
function withSegments (spec: RouteSpec, segments: readonly SegmentSpec[]): RouteSpec {
  const { segments: _, ...rest } = spec
  return segments.length === 0 ? rest : { ...rest, segments: structuredClone([...segments]) }
}

/** The route with `mirror` in force (null removes it). */
function withMirror (spec: RouteSpec, mirror: MirrorSpec | null): RouteSpec {
  const { mirror: _, ...rest } = spec
  return mirror === null ? rest : { ...rest, mirror: structuredClone(mirror) }
}

/** The override map with `route`'s field at `value`: no override when it equals the file's `config` (the file then says it). */
function overridden<T> (map: ReadonlyMap<string, FieldOverride<T>>, route: string, value: T, config: T): Map<string, FieldOverride<T>> {
  const out = new Map(map)
  if (jsonEqual(value, config)) out.delete(route)
  else out.set(route, { value: structuredClone(value), config })
  return out
}

/**
 * Whether a runtime field override still applies to `base`: the config
 * file has not changed the field since (else the file, newer, wins) and
 * the value still fits the route's versions (`check`). Undefined when not.
 */
function keptField<T> (o: FieldOverride<T> | undefined, config: T, check: (v: T) => T): FieldOverride<T> | undefined {
  if (o === undefined || !jsonEqual(o.config, config)) return undefined
  try {
    return { value: check(o.value), config }
  } catch {
    return undefined
  }
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
  /** Runtime overrides of config fields (upstreams, segments, mirror), by route. */
  #ov: Overrides = NO_OVERRIDES
  readonly #prepare: ((specs: readonly RouteSpec[]) => Promise<void>) | undefined
  readonly #checkSegments: (segments: unknown, versions: readonly string[]) => SegmentSpec[]
  readonly #checkMirror: (mirror: unknown, versions: readonly string[]) => MirrorSpec
  #rollouts = new Map<string, unknown>()
  #queue: Promise<unknown> = Promise.resolve()
  #summary: (route: string) => unknown = () => null
  readonly #listeners: Array<(entry: AuditEntry) => void> = []
  /** Warnings of the last #fromDoc, so a fleet synced many times says each problem once. */
  #said = ''
  /** The unreadable route states of the last fleet state applied (said once). */
  #bad = ''
  /** The state file was read at start (a new fleet is seeded from it). */
  #stateLoaded = false
  /** The last sync failure said (a fleet state that stays unreadable is said once). */
  #syncError = ''
  readonly #fleet: RedisStore | undefined
  readonly #snapshot: string
  readonly #syncMs: number
  /** The store generation applied: the fleet's (Redis), or this process's count of changes (file). */
  #gen = 0
  /** The fleet's route states as last read or written (JSON as stored), by route. */
  #fleetRoutes = new Map<string, string>()
  /** The fleet's config fingerprint, and this instance's. */
  #fleetConfig = ''
  /** The history of the fleet state applied (FleetRead.lineage). */
  #lineage = ''
  #configHash: string
  #syncing: Promise<void> | undefined
  #again = false
  #timer: NodeJS.Timeout | undefined
  #snapshotChain: Promise<void> = Promise.resolve()
  #snapshotFailed = false
  readonly #syncListeners: Array<(routes: string[]) => void> = []
  readonly #generationListeners: Array<() => void> = []

  constructor (opts: RuntimeStoreOptions) {
    this.file = opts.file
    this.#log = opts.logger
    this.#now = opts.now ?? (() => new Date())
    this.#audit = new AuditLog(opts.auditSize ?? 1000)
    this.#persistedAudit = opts.persistedAudit ?? 100
    this.#base = structuredClone([...opts.routes])
    this.#specs = structuredClone([...opts.routes])
    this.#prepare = opts.prepare
    this.#checkSegments = opts.checkSegments ?? ((v) => v as SegmentSpec[])
    this.#checkMirror = opts.checkMirror ?? ((v) => v as MirrorSpec)
    this.#fleet = opts.fleet
    this.#snapshot = opts.snapshot ?? ''
    this.#syncMs = opts.syncMs ?? 1000
    this.#configHash = configFingerprint(this.#base)
    // fleet mode too: a new fleet is seeded with this state (moving from one instance to a fleet keeps its weights); an existing fleet's state replaces it at open()
    if (this.file !== '') this.#load()
    this.holder = new TableHolder(buildRoutingTable(this.#specs, 1))
  }

  /**
   * Fleet mode: connects to Redis and adopts the fleet's state (seeding it
   * from this instance's config when the fleet is new); when Redis cannot
   * be reached within `connectTimeoutMs`, starts from the local snapshot
   * (said in the log) or, without one, throws a ConfigError naming
   * store.url. Then follows the fleet: pub/sub notifications plus a
   * generation check every syncMs. A no-op with the file store.
   */
  async open (connectTimeoutMs: number): Promise<void> {
    const fleet = this.#fleet
    if (fleet === undefined) return
    if (this.#snapshot !== '') {
      try {
        checkStateDir(this.#snapshot)
      } catch (err) {
        this.#log.error({ snapshot: this.#snapshot }, `${(err as Error).message}; the local snapshot of the fleet state cannot be written (a restart while Redis is down would then refuse to start)`)
      }
    }
    let up = await fleet.connect(connectTimeoutMs)
    await fleet.listen('changes', (m) => { if (Number(m) !== this.#gen) this.#requestSync() })
    if (up) {
      try {
        await this.#serialize(async () => {
          // an empty Redis (new, or restarted without persistence) is seeded with the freshest state this instance has: its snapshot, else its state file, else its config
          const snap = await fleet.generation() === 0 ? readSnapshot(this.#snapshot) : undefined
          if (snap?.kind === 'ok') await this.#adopt(snap.read, true)
          await this.#syncOnce(true)
        })
      } catch (err) {
        // Redis went away between the connection and the first read: as if it had never answered (an unreadable state, with Redis answering, is said as it is)
        if (!(err instanceof CanarydError) || err.code !== 'CANARYD_ERR_STORE_UNAVAILABLE' || fleet.up) throw err
        up = false
      }
    }
    if (!up) {
      const why = fleet.lastError === '' ? `within ${connectTimeoutMs} ms` : `within ${connectTimeoutMs} ms (${fleet.lastError})`
      const found = readSnapshot(this.#snapshot)
      if (found.kind !== 'ok') {
        await fleet.close()
        const none = this.#snapshot === '' ? 'there is no local snapshot of the fleet state (state.file is "")' : found.kind === 'absent' ? `there is no local snapshot of the fleet state (${this.#snapshot})` : `the local snapshot of the fleet state (${this.#snapshot}) is unusable: ${found.reason}`
        throw new ConfigError('store.url', `cannot reach Redis at ${fleet.where} ${why} and ${none} to start from: start Redis or fix store.url (CANARYD_REDIS_URL), then start again`)
      }
      const snap = found.read
      await this.#serialize(async () => { await this.#adopt(snap, true) })
      this.#log.warn({ redis: fleet.where, err: fleet.lastError === '' ? undefined : fleet.lastError, snapshot: this.#snapshot, generation: snap.generation, savedAt: snap.savedAt },
        `starting from the local snapshot of the fleet state: Redis could not be used ${why}; admin writes answer 503 until it is, then this instance resyncs`)
    }
    fleet.onUp((u) => { if (u) this.#requestSync() })
    this.#timer = setInterval(() => { this.#check() }, this.#syncMs)
    this.#timer.unref()
  }

  /**
   * The periodic generation check: catches a lost notification and a Redis
   * that came back empty, and is the watchdog of a Redis that stopped
   * answering on an open connection (frozen): no answer within a second
   * and the store is treated as unreachable until it answers again.
   */
  #check (): void {
    const fleet = this.#fleet
    if (fleet === undefined || !fleet.up || this.#syncing !== undefined) return
    const watchdog = setTimeout(() => { fleet.suspect() }, WATCHDOG_MS)
    watchdog.unref()
    fleet.generation().then((g) => { if (g !== this.#gen || g === 0) this.#requestSync() }, () => {}).finally(() => { clearTimeout(watchdog) })
  }

  /** Runs a sync now, or once more after the one running (notifications coalesce). */
  #requestSync (): void {
    if (this.#syncing !== undefined) {
      this.#again = true
      return
    }
    this.#syncing = (async () => {
      do {
        this.#again = false
        try {
          await this.#serialize(async () => { await this.#syncOnce(false) })
          this.#syncError = ''
        } catch (err) {
          // Redis away is said by the store itself; anything else (an unreadable generation) once per distinct message
          const msg = (err as Error).message
          if (this.#fleet?.up === true && msg !== this.#syncError) this.#log.warn({ err: msg }, 'cannot apply the fleet state (retried on the next notification or check)')
          this.#syncError = msg
        }
      } while (this.#again && this.#fleet?.up === true)
    })().finally(() => { this.#syncing = undefined })
  }

  /** Fleet mode: applies the fleet's latest generation now (a new rollout leader does, before acting). */
  async sync (): Promise<void> {
    if (this.#fleet === undefined) return
    await this.#serialize(async () => { await this.#syncOnce(false) })
  }

  /**
   * Reads the fleet's state and applies it when its generation differs
   * from the one applied. A fleet never seeded (or a Redis that lost its
   * data) is seeded with this instance's state: the last applied fleet
   * state when there is one (a restart of Redis without persistence loses
   * nothing the fleet had applied), else its config.
   */
  async #syncOnce (first: boolean): Promise<void> {
    const fleet = this.#fleet!
    const lastId = this.#audit.nextId - 1
    let read = await fleet.read(first ? 1000 : 50)
    // Redis holds nothing, or an older state than this instance applied (lost its data and was
    // seeded again by an instance that had missed the last changes, or restored from an older
    // copy): this instance's state goes back in, unless another instance's newer one got there first
    // (of the same history: a fleet started afresh meanwhile is adopted, never overwritten by an old snapshot)
    if (read === undefined || (read.generation < this.#gen && read.lineage === this.#lineage)) {
      const routes = this.#fleetRoutes.size !== 0 ? new Map(this.#fleetRoutes) : this.#ownRoutes()
      const gen = Math.max(1, this.#gen)
      const config = this.#fleetConfig !== '' ? this.#fleetConfig : this.#configHash
      const fresh = this.#gen === 0
      const lineage = fresh || this.#lineage === '' ? randomBytes(8).toString('hex') : this.#lineage
      if (await fleet.seed(gen, config, lineage, routes, this.#audit.tail(1000))) {
        const why = fresh ? `fleet state seeded from this instance's ${this.#stateLoaded ? 'state file' : 'config'}` : read === undefined ? 'Redis held no fleet state: seeded it again from this instance\'s last applied state (its local snapshot, or what it had in memory)' : `Redis held an older fleet state (generation ${read.generation}) than this instance applied: put this instance's back`
        this.#log[read === undefined && this.#gen === 0 ? 'info' : 'warn']({ redis: fleet.where, generation: gen, routes: [...routes.keys()] }, why)
        this.#gen = gen
        this.#fleetRoutes = routes
        this.#fleetConfig = config
        this.#lineage = lineage
        this.#applied()
        return
      }
      read = await fleet.read(1000)
      if (read === undefined) return
    }
    if (!first && read.generation === this.#gen) return
    const ids = parseAuditEntries(read.audit)
    // the tail read may have missed entries: read the whole capped list once
    if (!first && ids.length !== 0 && ids[0]!.id > lastId + 1 && read.audit.length < 1000) read = await fleet.read(1000) ?? read
    await this.#adopt(read, first)
  }

  /** This instance's route states as the fleet stores them (JSON by route): what it seeds a new fleet with. */
  #ownRoutes (): Map<string, string> {
    const doc = this.#doc(this.#specs, this.#rollouts, [])
    return new Map(Object.entries(doc.routes).map(([k, v]) => [k, JSON.stringify(v)]))
  }

  /**
   * Applies a fleet state (read from Redis, or the local snapshot): the
   * routes it gives this instance's config (#fromDoc), one swap when the
   * routes in force changed, the audit entries not seen yet (listeners
   * hear of them, so a rollout leader pauses on a change made through
   * another instance), and the sync listeners with the routes whose rollout
   * record changed.
   */
  async #adopt (read: FleetRead & { savedAt?: string }, first: boolean): Promise<void> {
    const routes: Record<string, RouteState> = {}
    // a route state nobody could have written (hand-edited, truncated) does not move traffic: the last good one stays
    const accepted = new Map(read.routes)
    const bad: string[] = []
    for (const [name, json] of read.routes) {
      const r = parseRouteState(name, json)
      if (r !== undefined) {
        routes[name] = r
        continue
      }
      bad.push(`${name}=${json.slice(0, 200)}`)
      const previous = this.#fleetRoutes.get(name)
      const kept = previous === undefined ? undefined : parseRouteState(name, previous)
      if (kept !== undefined) {
        routes[name] = kept
        accepted.set(name, previous!)
      } else accepted.delete(name)
    }
    const badKey = bad.join('\n')
    if (badKey !== this.#bad && bad.length !== 0) this.#log.error({ redis: this.#fleet?.where, routes: bad.map((b) => b.slice(0, b.indexOf('='))) }, 'the fleet state in Redis holds an unreadable state for these routes: the last good one (or the config) stays in force; a write to the route replaces it')
    this.#bad = badKey
    const r = this.#fromDoc({ version: STATE_FORMAT_VERSION, savedAt: '', routes, audit: [] }, 'fleet state', first)
    const specsChanged = JSON.stringify(r.specs) !== JSON.stringify(this.#specs)
    if (specsChanged) await this.#prepare?.(r.specs)
    const lastId = this.#audit.nextId - 1
    const entries = parseAuditEntries(read.audit)
    const changedRollouts = [...new Set([...r.rollouts.keys(), ...this.#rollouts.keys()])]
      .filter((k) => JSON.stringify(r.rollouts.get(k) ?? null) !== JSON.stringify(this.#rollouts.get(k) ?? null))
    this.#specs = r.specs
    this.#ov = r.ov
    this.#rollouts = r.rollouts
    if (specsChanged) this.holder.swap(buildRoutingTable(r.specs, this.holder.current.generation + 1))
    const wasMismatch = this.configMismatch
    this.#gen = read.generation
    this.#fleetRoutes = accepted
    this.#fleetConfig = read.config
    this.#lineage = read.lineage
    if (this.configMismatch !== wasMismatch || (first && this.configMismatch)) {
      if (this.configMismatch) this.#log.warn({ config: this.#configHash, fleetConfig: read.config, routes: r.mismatched }, 'this instance\'s routes differ from the fleet\'s (the config the fleet was seeded or last reloaded with): the fleet state applies only to routes with the same versions; nothing is merged. Give every instance the same config (and reload)')
      else this.#log.info({ config: this.#configHash }, 'this instance\'s routes match the fleet\'s again')
    }
    if (first) this.#audit.restore(entries)
    else for (const e of entries) if (e.id > lastId) this.#record(e, 'change applied from the fleet', 'debug')
    for (const l of this.#syncListeners) {
      try {
        l(changedRollouts)
      } catch (err) {
        this.#log.error({ err }, 'fleet sync listener failed')
      }
    }
    this.#applied()
  }

  /** A fleet generation was applied: tells the generation listeners and writes the local snapshot, atomically, after the ones queued before it (never on the request path). */
  #applied (): void {
    for (const l of this.#generationListeners) l()
    if (this.#snapshot === '') return
    const text = snapshotText(this.#gen, this.#fleetConfig, this.#lineage, this.#fleetRoutes, this.#audit.tail(SNAPSHOT_AUDIT), this.#now())
    this.#snapshotChain = this.#snapshotChain.then(async () => {
      await writeFileAtomic(this.#snapshot, text)
      this.#snapshotFailed = false
    }).catch((err: unknown) => {
      if (!this.#snapshotFailed) this.#log.error({ err, snapshot: this.#snapshot }, 'cannot write the local snapshot of the fleet state (a restart while Redis is down would use an older one, or refuse to start)')
      this.#snapshotFailed = true
    })
  }

  /** Called after each fleet generation is applied (written here, or read from the fleet). */
  onGeneration (listener: () => void): void {
    this.#generationListeners.push(listener)
  }

  /** Called after the fleet's state is applied, with the routes whose rollout record changed (fleet mode). */
  onSync (listener: (routes: string[]) => void): void {
    this.#syncListeners.push(listener)
  }

  /** The store generation this instance has applied. */
  get generation (): number {
    return this.#gen
  }

  /** Fleet mode: the Redis side (membership and leases use the same connection). */
  get redis (): RedisStore | undefined {
    return this.#fleet
  }

  /** True in fleet mode (`store.type` redis). */
  get fleet (): boolean {
    return this.#fleet !== undefined
  }

  /** False while the fleet store cannot be reached (always true with the file store). */
  get up (): boolean {
    return this.#fleet?.up ?? true
  }

  /** True when this instance's routes config differs from the fleet's. */
  get configMismatch (): boolean {
    return this.#fleet !== undefined && this.#fleetConfig !== '' && this.#fleetConfig !== this.#configHash
  }

  /** This instance's config fingerprint. */
  get configHash (): string {
    return this.#configHash
  }

  /** The fleet's config fingerprint (the config it was seeded or last reloaded with); '' with the file store. */
  get fleetConfigHash (): string {
    return this.#fleetConfig
  }

  /** Stops following the fleet (shutdown); waits for the snapshot being written. */
  async close (): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
    await this.flush()
    await this.#snapshotChain
  }

  #load (): void {
    // `canaryd serve` refuses to start on this (cli.ts); an embedded store only logs it, so
    // tests and library users can still exercise the CANARYD_ERR_STATE_PERSIST path.
    // A fleet never writes the state file (it only seeds a new fleet from it); open() checks the snapshot's directory
    if (this.#fleet === undefined) {
      try {
        checkStateDir(this.file)
      } catch (err) {
        this.#log.error({ stateFile: this.file }, `${(err as Error).message}; weight changes will fail (CANARYD_ERR_STATE_PERSIST) until it is writable`)
      }
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
    const r = this.#fromDoc(read.doc, 'state file', true)
    this.#stateLoaded = true
    this.#specs = r.specs
    this.#ov = r.ov
    this.#rollouts = r.rollouts
    this.#audit.restore(parseAuditEntries(read.doc.audit))
  }

  /**
   * What a saved document (the state file, the fleet's state in Redis, the
   * local snapshot) makes of the config's routes: for each route whose
   * version set is unchanged, its weights and rollout record; runtime
   * upstreams, segments and mirror wherever the file has not changed them
   * since. Routes the document lacks keep the config's values; routes only
   * the document has are ignored. `verbose` logs each route restored (at
   * start); else only what is dropped, once per distinct set of problems.
   */
  #fromDoc (doc: StateDoc, source: string, verbose: boolean): { specs: RouteSpec[]; ov: Overrides; rollouts: Map<string, unknown>; mismatched: string[] } {
    const known = new Set<string>()
    const upstreams = new Map<string, Record<string, UpstreamOverride>>()
    const segments = new Map<string, FieldOverride<SegmentSpec[]>>()
    const mirror = new Map<string, FieldOverride<MirrorSpec | null>>()
    const rollouts = new Map<string, unknown>()
    const mismatched: string[] = []
    const warnings: Array<[Record<string, unknown>, string]> = []
    const info = (o: Record<string, unknown>, m: string): void => { if (verbose) this.#log.info(o, m) }
    const specs = this.#base.map((spec) => {
      known.add(spec.name)
      const saved = doc.routes[spec.name]
      if (saved === undefined) return spec
      const { kept, dropped } = keptOverrides(spec, saved.upstreams)
      if (dropped.length !== 0) warnings.push([{ route: spec.name, versions: dropped }, 'the config file changed these versions\' upstream since it was changed at runtime: the file wins'])
      if (kept !== undefined) {
        upstreams.set(spec.name, kept)
        info({ route: spec.name, upstreams: Object.fromEntries(Object.entries(kept).map(([k, o]) => [k, o.upstream])) }, `runtime upstreams restored from ${source}`)
      }
      const { spec: current, segments: restored } = this.#applyKept(spec, withUpstreams(spec, kept), saved.segments, saved.mirror, { segments, mirror })
      if (restored !== undefined) info({ route: spec.name, segments: restored.map((x) => x.name) }, `runtime segments restored from ${source}`)
      else if (saved.segments !== undefined) warnings.push([{ route: spec.name }, 'the config file changed this route\'s segments (or its versions) since they were changed at runtime: the file wins'])
      if (!sameVersions(spec.versions, saved.versions)) {
        mismatched.push(spec.name)
        warnings.push([{
          route: spec.name,
          savedVersions: saved.versions.map((v) => v.name),
          configVersions: spec.versions.map((v) => v.name)
        }, source === 'state file'
          ? 'config changed the versions of this route: config weights win; saved weights and rollout state are ignored'
          : `the ${source} was written for other versions of this route than this instance's config has (instances with different configs?): config weights apply here; its weights and rollout state are ignored`])
        return current
      }
      if (saved.rollout !== null && saved.rollout !== undefined) rollouts.set(spec.name, saved.rollout)
      info({ route: spec.name, weights: saved.weights, source }, `weights restored from ${source}`)
      return withWeights(current, saved.weights)
    })
    for (const name of Object.keys(doc.routes)) {
      if (!known.has(name)) {
        mismatched.push(name)
        warnings.push([{ route: name }, `the ${source} names a route that is not in the config: ignored`])
      }
    }
    // a fleet is synced many times: the same problems are said once, when they first appear
    const said = JSON.stringify(warnings.map(([, m]) => m).concat(mismatched))
    if (verbose || said !== this.#said) for (const [o, m] of warnings) this.#log.warn(o, m)
    this.#said = said
    return { specs, ov: { upstreams, segments, mirror }, rollouts, mismatched }
  }

  /**
   * Puts the segment and mirror overrides that still hold for the file's
   * route `base` (keptField) on `spec` and into `into`; returns the spec and
   * the runtime segments kept (undefined when none).
   */
  #applyKept (base: RouteSpec, spec: RouteSpec, segments: FieldOverride<SegmentSpec[]> | undefined, mirror: FieldOverride<MirrorSpec | null> | undefined,
    into: { segments: Map<string, FieldOverride<SegmentSpec[]>>; mirror: Map<string, FieldOverride<MirrorSpec | null>> }): { spec: RouteSpec; segments: SegmentSpec[] | undefined } {
    const fields = this.#keptFields(base, segments, mirror)
    let out = spec
    if (fields.segments !== undefined) {
      into.segments.set(base.name, fields.segments)
      out = withSegments(out, fields.segments.value)
    }
    if (fields.mirror !== undefined) {
      into.mirror.set(base.name, fields.mirror)
      out = withMirror(out, fields.mirror.value)
    }
    return { spec: out, segments: fields.segments?.value }
  }

  /** The segment and mirror overrides that still apply to the file's route `base` (see keptField). */
  #keptFields (base: RouteSpec, segments: FieldOverride<SegmentSpec[]> | undefined, mirror: FieldOverride<MirrorSpec | null> | undefined): { segments?: FieldOverride<SegmentSpec[]>; mirror?: FieldOverride<MirrorSpec | null> } {
    const names = base.versions.map((v) => v.name)
    const out: { segments?: FieldOverride<SegmentSpec[]>; mirror?: FieldOverride<MirrorSpec | null> } = {}
    const s = keptField(segments, base.segments ?? [], (v) => v.length === 0 ? [] : this.#fitSegments(base.name, v, names))
    if (s !== undefined) out.segments = s
    const m = keptField(mirror, base.mirror ?? null, (v) => v === null ? null : this.#checkMirror(v, names))
    if (m !== undefined) out.mirror = m
    return out
  }

  /**
   * Saved runtime segments fitted to the route's versions now: a version the
   * file removed is dropped from weights that gave it 0 (validation had
   * written it in), and only segments that no longer fit (pinned to it, or
   * giving it traffic) are dropped, each with a warning. Throws when none
   * is left (the file's segments then apply).
   */
  #fitSegments (route: string, saved: readonly SegmentSpec[], names: readonly string[]): SegmentSpec[] {
    const kept: SegmentSpec[] = []
    for (const seg of saved) {
      const s = structuredClone(seg)
      if (s.weights !== undefined) {
        for (const [n, w] of Object.entries(s.weights)) if (!names.includes(n) && w === 0) delete s.weights[n]
      }
      try {
        kept.push(...this.#checkSegments([s], names))
      } catch (err) {
        this.#log.warn({ route, segment: seg.name, err: (err as Error).message }, 'runtime segment no longer fits the route\'s versions: dropped')
      }
    }
    if (kept.length === 0) throw new TypeError('no runtime segment fits the route')
    return this.#checkSegments(kept, names)
  }

  /** Runs `fn` after every earlier change has finished (success or failure). */
  async #serialize<T> (fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(fn)
    this.#queue = p.catch(() => {})
    return await p
  }

  #doc (specs: readonly RouteSpec[], rollouts: ReadonlyMap<string, unknown>, extra: readonly AuditEntry[], ov: Overrides = this.#ov): StateDoc {
    const routes: Record<string, RouteState> = {}
    for (const s of specs) {
      const r: RouteState = {
        versions: s.versions.map((v) => ({ name: v.name, upstream: upstreamView(v.upstream) })),
        weights: weightsOf(s),
        rollout: rollouts.get(s.name) ?? null
      }
      const o = ov.upstreams.get(s.name)
      if (o !== undefined) r.upstreams = o
      const seg = ov.segments.get(s.name)
      if (seg !== undefined) r.segments = seg
      const m = ov.mirror.get(s.name)
      if (m !== undefined) r.mirror = m
      routes[s.name] = r
    }
    const keep = Math.max(0, this.#persistedAudit - extra.length)
    const audit = [...(keep === 0 ? [] : this.#audit.tail(keep)), ...extra].slice(-this.#persistedAudit)
    return { version: STATE_FORMAT_VERSION, savedAt: this.#now().toISOString(), routes, audit }
  }

  /**
   * Makes a change durable before it is applied: the state file, or in
   * fleet mode one compare-and-set write of the routes it `touched` (all
   * of them for a reload) and its audit `entries`, based on the generation
   * applied. Throws CANARYD_ERR_STATE_PERSIST, CANARYD_ERR_STORE_UNAVAILABLE,
   * LeaseLostError, CANARYD_ERR_STORE_CONFIG_MISMATCH or (internally) StaleGenerationError; nothing changed then.
   */
  async #persist (doc: StateDoc, entries: readonly AuditEntry[], touched: readonly string[] | 'all', fence?: Fence, drop: readonly string[] = []): Promise<void> {
    const fleet = this.#fleet
    if (fleet !== undefined) {
      const routes = new Map<string, string>()
      for (const [name, r] of Object.entries(doc.routes)) {
        if (touched !== 'all' && !touched.includes(name)) continue
        // a reload is the config speaking (it becomes the fleet's reference); any other write must not replace a route state made for other versions
        if (touched !== 'all') this.#checkSameVersions(name, r)
        const json = JSON.stringify(r)
        // a route a change names is always written (its Redis copy may be unreadable while the kept one equals it); a reload writes only what differs
        if (touched !== 'all' || this.#fleetRoutes.get(name) !== json) routes.set(name, json)
      }
      const config = touched === 'all' ? this.#configHash : ''
      const dropped = drop.filter((n) => this.#fleetRoutes.has(n))
      const res = await fleet.commit(this.#gen, routes, entries, { config, drop: dropped, fence: fence === undefined ? undefined : { route: fence.route, value: `${fence.token} ${fence.instance}` } })
      if (!res.ok && res.reason === 'fenced') throw new LeaseLostError(fence!.route)
      if (!res.ok) throw new StaleGenerationError()
      // written: the caller applies it at once (nothing awaits in between)
      this.#gen = res.generation
      for (const [k, v] of routes) this.#fleetRoutes.set(k, v)
      for (const k of dropped) this.#fleetRoutes.delete(k)
      if (config !== '') this.#fleetConfig = config
      // after the caller has applied it (its audit entry included)
      setImmediate(() => { this.#applied() })
      return
    }
    this.#gen++
    if (this.file === '') return
    try {
      await writeFileAtomic(this.file, `${JSON.stringify(doc, null, 2)}\n`)
    } catch (err) {
      this.#gen--
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message
      this.#log.error({ stateFile: this.file, err }, 'cannot write the state file: change refused')
      throw new CanarydError('CANARYD_ERR_STATE_PERSIST', `cannot write state file ${this.file} (${code}); nothing was changed`, { cause: err })
    }
  }

  /** Fleet mode: refuses a write of `route` when the fleet's state for it was made for other versions than this instance's (409, nothing changed). */
  #checkSameVersions (route: string, next: RouteState): void {
    const json = this.#fleetRoutes.get(route)
    if (json === undefined) return
    let fleetVersions: string[]
    try {
      fleetVersions = (JSON.parse(json) as RouteState).versions.map((v) => v.name)
    } catch {
      return
    }
    const mine = next.versions.map((v) => v.name)
    if (sameVersions(fleetVersions.map((name) => ({ name })), mine.map((name) => ({ name })))) return
    throw new CanarydError('CANARYD_ERR_STORE_CONFIG_MISMATCH', `route ${route}: the fleet state was written for versions ${fleetVersions.join(', ')}, this instance's config has ${mine.join(', ')}; nothing was changed. Give every instance the same config (and reload it), then retry`)
  }

  /** Refuses a rollout write whose base revision is not the record in force (StaleRolloutError). */
  #checkRevision (route: string, expect: number | undefined): void {
    if (expect === undefined) return
    const cur = this.#rollouts.get(route) as { revision?: unknown } | undefined
    if ((typeof cur?.revision === 'number' ? cur.revision : 0) !== expect) throw new StaleRolloutError(route)
  }

  /**
   * Runs a change after every earlier one (#serialize); in fleet mode a
   * change that lost the race to another instance is made again on the
   * fleet's newer state (re-validated: it may now be refused), up to
   * COMMIT_ATTEMPTS times, then 409 CANARYD_ERR_STORE_CONFLICT.
   */
  async #change<T> (fn: () => Promise<T>): Promise<T> {
    return await this.#serialize(async () => {
      for (let i = 0; i < COMMIT_ATTEMPTS; i++) {
        try {
          return await fn()
        } catch (err) {
          if (!(err instanceof StaleGenerationError)) throw err
          await this.#syncOnce(false)
        }
      }
      throw new CanarydError('CANARYD_ERR_STORE_CONFLICT', `other instances changed the fleet state ${COMMIT_ATTEMPTS} times while this change was being written; nothing was changed, retry`)
    })
  }

  #routeIndex (route: string): number {
    const i = this.#specs.findIndex((s) => s.name === route)
    if (i === -1) throw routeNotFound(route, this.#specs.map((s) => s.name))
    return i
  }

  /**
   * Changes a route's weights: validate, build, persist, swap (see the class
   * comment). Throws CANARYD_ERR_ROUTE_NOT_FOUND, CANARYD_ERR_INVALID_WEIGHTS
   * or CANARYD_ERR_STATE_PERSIST; in every such case nothing changed.
   * Setting the weights a route already has is still a change (audited).
   */
  async setWeights (route: string, weights: unknown, opts: ChangeOptions): Promise<WeightChange> {
    return await this.update(route, { weights }, opts)
  }

  /**
   * Replaces a route's segments (validated by the caller with the config's
   * rules; [] removes them). Persisted as a runtime override that holds
   * until the config file itself changes the route's segments; audited.
   */
  async setSegments (route: string, segments: SegmentSpec[], opts: ChangeOptions): Promise<WeightChange> {
    return await this.update(route, { segments }, opts)
  }

  /**
   * Applies a RoutePatch: every part given changes together in one
   * validated table, one state-file write, one swap and one audit entry
   * (with the rollout record of `opts.rollout` in the same write). Throws
   * CANARYD_ERR_ROUTE_NOT_FOUND, CANARYD_ERR_VERSION_NOT_FOUND,
   * CANARYD_ERR_INVALID_WEIGHTS or CANARYD_ERR_STATE_PERSIST; in every such
   * case nothing changed.
   */
  async update (route: string, patch: RoutePatch, opts: ChangeOptions): Promise<WeightChange> {
    return await this.#change(async () => {
      const i = this.#routeIndex(route)
      const spec = this.#specs[i]!
      this.#checkRevision(route, opts.expectRevision)
      if (patch.expectSegments !== undefined && !jsonEqual(spec.segments ?? [], patch.expectSegments)) {
        throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `route ${route}: its segments changed while this change was being made; nothing was changed`)
      }
      const base = this.#base.find((b) => b.name === route)!
      const previous = weightsOf(spec)
      const next = patch.weights === undefined ? previous : validateWeights(spec, patch.weights)
      let changed = withWeights(spec, next)
      const extra: Partial<AuditEntry> = {}
      let ov = this.#ov
      if (patch.upstreams !== undefined) {
        const mine = { ...ov.upstreams.get(route) }
        const changes: NonNullable<AuditEntry['upstreams']> = {}
        const versions = changed.versions.map((v) => {
          const u = patch.upstreams![v.name]
          if (u === undefined) return v
          const config = base.versions.find((b) => b.name === v.name)!.upstream
          if (sameList(u, config)) delete mine[v.name]
          else mine[v.name] = { upstream: [...u], config: [...config] }
          changes[v.name] = { previous: upstreamView(v.upstream), next: upstreamView(u) }
          return { ...v, upstream: [...u] } satisfies VersionSpec
        })
        for (const n of Object.keys(patch.upstreams)) {
          if (changes[n] === undefined) throw createError('CANARYD_ERR_VERSION_NOT_FOUND', { route, version: JSON.stringify(n), versions: spec.versions.map((v) => v.name).join(', ') })
        }
        const upstreams = new Map(ov.upstreams)
        if (Object.keys(mine).length === 0) upstreams.delete(route)
        else upstreams.set(route, mine)
        ov = { ...ov, upstreams }
        changed = { ...changed, versions }
        extra.upstreams = changes
      }
      if (patch.segments !== undefined) {
        ov = { ...ov, segments: overridden(ov.segments, route, patch.segments, base.segments ?? []) }
        // a rollout step re-sends the segments it owns: the audit says segments only when they changed
        if (!jsonEqual(spec.segments ?? [], patch.segments)) extra.segments = { previous: spec.segments ?? [], next: structuredClone(patch.segments) }
        changed = withSegments(changed, patch.segments)
      }
      if (patch.mirror !== undefined) {
        ov = { ...ov, mirror: overridden(ov.mirror, route, patch.mirror, base.mirror ?? null) }
        if (!jsonEqual(spec.mirror ?? null, patch.mirror)) extra.mirror = { previous: spec.mirror ?? null, next: patch.mirror }
        changed = withMirror(changed, patch.mirror)
      }
      const specs = this.#specs.slice()
      specs[i] = changed
      if (patch.upstreams !== undefined) await this.#prepare?.(specs)
      const table = buildRoutingTable(specs, this.holder.current.generation + 1)
      let rollouts: Map<string, unknown> = this.#rollouts
      if (opts.rollout !== undefined) {
        rollouts = new Map(this.#rollouts)
        if (opts.rollout === null) rollouts.delete(route)
        else rollouts.set(route, jsonCopy(opts.rollout))
      }
      const entry: AuditEntry = { ...this.#entry(this.#audit.nextId, route, previous, next, opts, table.generation), ...extra }
      await this.#persist(this.#doc(specs, rollouts, [entry], ov), [entry], [route], opts.fence)
      // persisted: from here on the change is real, apply it in memory
      this.#specs = specs
      this.#rollouts = rollouts
      this.#ov = ov
      this.holder.swap(table)
      const what = [patch.weights !== undefined ? 'weights' : '', patch.segments !== undefined ? 'segments' : '', patch.mirror !== undefined ? 'mirror' : '', patch.upstreams !== undefined ? 'upstreams' : ''].filter((x) => x !== '')
      this.#record(entry, `${what.length === 0 ? 'route' : what.join(' and ')} changed`)
      return { previous, route: this.routeView(route)!, entry }
    })
  }

  /** A route's segments and whether they were changed at runtime, or undefined for an unknown route. */
  segmentsView (route: string): SegmentsView | undefined {
    const spec = this.#specs.find((s) => s.name === route)
    if (spec === undefined) return undefined
    return { route, segments: structuredClone(spec.segments ?? []), runtime: this.#ov.segments.has(route) }
  }

  /** Audits an applied change, logs it and tells the change listeners. */
  #record (entry: AuditEntry, message: string, level: 'info' | 'debug' = 'info'): void {
    this.#audit.push(entry)
    // `time` is pino's own field: the entry's time goes out as `changedAt`
    const { time, id, ...rest } = entry
    this.#log[level]({ auditId: id, changedAt: time, ...rest }, message)
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
    return await this.#change(async () => {
      const i = this.#routeIndex(route)
      const spec = this.#specs[i]!
      const vi = spec.versions.findIndex((v) => v.name === version)
      if (vi === -1) throw createError('CANARYD_ERR_VERSION_NOT_FOUND', { route, version: JSON.stringify(version), versions: spec.versions.map((v) => v.name).join(', ') })
      const previous = spec.versions[vi]!.upstream
      const config = this.#base.find((b) => b.name === route)!.versions.find((v) => v.name === version)!.upstream
      const overrides = new Map(this.#ov.upstreams)
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
      const ov = { ...this.#ov, upstreams: overrides }
      await this.#persist(this.#doc(specs, this.#rollouts, [entry], ov), [entry], [route], opts.fence)
      this.#specs = specs
      this.#ov = ov
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
    return await this.#change(async () => {
      const base = structuredClone([...routes])
      const current = new Map(this.#specs.map((s) => [s.name, s]))
      const oldBase = new Map(this.#base.map((s) => [s.name, s]))
      const added: string[] = []
      const changed: string[] = []
      const pending: Array<{ route: string; previous: Record<string, number>; weights: Record<string, number>; reason: string }> = []
      const overrides = new Map<string, Record<string, UpstreamOverride>>()
      const segOverrides = new Map<string, FieldOverride<SegmentSpec[]>>()
      const mirrorOverrides = new Map<string, FieldOverride<MirrorSpec | null>>()
      const specs = base.map((spec) => {
        const cur = current.get(spec.name)
        if (cur === undefined) {
          added.push(spec.name)
          return spec
        }
        if (JSON.stringify(oldBase.get(spec.name)) !== JSON.stringify(spec)) changed.push(spec.name)
        const { kept, dropped } = keptOverrides(spec, this.#ov.upstreams.get(spec.name))
        if (kept !== undefined) overrides.set(spec.name, kept)
        if (dropped.length !== 0) this.#log.warn({ route: spec.name, versions: dropped }, 'reload: the file changed these versions\' upstream (or removed them): their runtime upstream is dropped')
        const oldSeg = this.#ov.segments.get(spec.name)
        const { spec: next, segments: keptSegments } = this.#applyKept(spec, withUpstreams(spec, kept), oldSeg, this.#ov.mirror.get(spec.name), { segments: segOverrides, mirror: mirrorOverrides })
        if (keptSegments === undefined && oldSeg !== undefined) this.#log.warn({ route: spec.name }, 'reload: the file changed this route\'s segments (or versions they name): its runtime segments are dropped')
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
      const ov: Overrides = { upstreams: overrides, segments: segOverrides, mirror: mirrorOverrides }
      const hash = configFingerprint(base)
      const previousHash = this.#configHash
      this.#configHash = hash
      try {
        await this.#persist(this.#doc(specs, rollouts, entries, ov), entries, 'all', undefined, removed)
      } catch (err) {
        this.#configHash = previousHash
        throw err
      }
      this.#base = base
      this.#specs = specs
      this.#ov = ov
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
   * or CANARYD_ERR_STATE_PERSIST (then nothing changed); in fleet mode
   * also CANARYD_ERR_STORE_UNAVAILABLE, and LeaseLostError when `fence` no
   * longer holds the route's lease.
   */
  async setRolloutState (route: string, data: unknown, fence?: Fence, expectRevision?: number): Promise<void> {
    await this.#change(async () => {
      this.#routeIndex(route)
      this.#checkRevision(route, expectRevision)
      const rollouts = new Map(this.#rollouts)
      if (data === null || data === undefined) rollouts.delete(route)
      else rollouts.set(route, jsonCopy(data))
      await this.#persist(this.#doc(this.#specs, rollouts, []), [], [route], fence)
      this.#rollouts = rollouts
    })
  }

  /**
   * A route's saved rollout state itself, not a copy, or undefined: read it,
   * never change it. Every save (here or, in a fleet, anywhere) puts a new
   * object in its place, so a reader that keeps the last one it saw knows
   * by identity whether anything changed (the dashboard's feed, each second).
   */
  rolloutStateRef (route: string): unknown {
    return this.#rollouts.get(route)
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
    const overrides = this.#ov.upstreams.get(route)
    return {
      name: spec.name,
      versions: spec.versions.map((v) => {
        const view: VersionView = { name: v.name, upstream: upstreamView(v.upstream), weight: v.weight }
        if (v.balance !== undefined) view.balance = v.balance
        if (v.discovery !== undefined) view.discovery = v.discovery
        if (overrides?.[v.name] !== undefined) view.runtimeUpstream = true
        return view
      }),
      segments: structuredClone(spec.segments ?? []),
      mirror: spec.mirror === undefined ? null : structuredClone(spec.mirror),
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

/** A route state as the fleet stores it (JSON), checked like the state file's; undefined when unreadable. */
function parseRouteState (name: string, json: string): RouteState | undefined {
  let r: unknown
  try {
    r = JSON.parse(json)
  } catch {
    return undefined
  }
  return checkStateDoc({ version: STATE_FORMAT_VERSION, routes: { [name]: r } }) === undefined ? r as RouteState : undefined
}

/** A deep copy through JSON: what is stored is exactly what the state file can hold. */
function jsonCopy (v: unknown): unknown {
  return JSON.parse(JSON.stringify(v)) as unknown
}
