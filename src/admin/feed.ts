/**
 * The dashboard's live feed: `GET /api/v1/events`, a server-sent-events
 * stream with one sample per second (requests/s, 5xx %, p50 and p99 per
 * version, weights, endpoints, the rollout's state) and marks where
 * something happened (a weight change, a check, a rollout event).
 *
 * One sampler serves every open stream: whatever the number of tabs, this
 * instance reads the few metric families it needs once a second (as
 * prom-client's JSON: no text written and parsed back), and only while
 * someone watches — nothing is added to the request path, which already
 * counts what they hold. The figures are the ones `canaryd top`
 * computes from two scrapes (summarize), so the UI shows nothing the API
 * lacks. A fleet's instances each show their own traffic; the weights and
 * the rollout (checks included) are the fleet's.
 */
import type { ServerResponse } from 'node:http'
import { CanarydError, routeNotFound } from '../errors.js'
import type { Logger } from '../logger.js'
import { expositionFromJson, type Exposition } from '../metrics/exposition.js'
import { METRIC_NAMES } from '../metrics/names.js'
import { summarize } from '../metrics/summary.js'
import { round } from '../rollout/judge.js'
import type { AuditEntry } from '../store/audit.js'
import type { RuntimeStore } from '../store/store.js'
import type { AdminServer, MetricsSource } from './server.js'

/** One version's figures over one sample interval. */
export interface VersionSample {
  weight: number
  /** Responses per second. */
  rps: number
  /** 5xx share in percent; null without responses. */
  errorPct: number | null
  p50Ms: number | null
  p99Ms: number | null
  inFlight: number
  /** Endpoints taking requests and ejected ones; null when unknown (metrics off). */
  endpoints: { healthy: number; ejected: number } | null
}

/** What every stream gets each second. */
export interface Sample {
  /** End of the interval, ms since the epoch. */
  t: number
  /** Measured length of the interval, seconds (about 1). */
  seconds: number
  routes: Record<string, { versions: Record<string, VersionSample>; rollout: unknown }>
}

/** Something that happened on a route, to draw where it happened. */
export type Mark =
  | { t: number; route: string; kind: 'weights'; weights: Record<string, number>; source: string | null; reason: string | null }
  | { t: number; route: string; kind: 'check'; verdict: string; step: number; weight: number; phase: string; reasons: string[] }
  | { t: number; route: string; kind: 'rollout'; event: string; state: string; step: number; weight: number; reason: string | null }

/** The families a sample reads: summarize's rate, 5xx share, quantiles and in-flight, and the endpoints (the weights come from the store). */
const FAMILIES: readonly string[] = [METRIC_NAMES.requests, METRIC_NAMES.duration, METRIC_NAMES.inFlight, METRIC_NAMES.endpoints]

/** Sample interval, ms. */
export const FEED_INTERVAL_MS = 1000

/** Samples kept for a stream that opens later (five minutes at one a second). */
const HISTORY = 300

/** Marks kept (older ones also go once no kept sample is as old). */
const MAX_MARKS = 500

/**
 * Largest history a hello carries, bytes (newest samples first): 300 samples of a few
 * routes fit; with a hundred routes about a minute does. The history part is built once
 * per second and view and shared by every stream opening then (see #historyChunk), never a
 * serialisation of the whole history per stream.
 */
const MAX_HELLO_HISTORY_BYTES = 2 * 1024 * 1024

/** Streams one instance serves at once; past it 429. */
export const MAX_STREAMS = 32

/** A stream whose client reads slower than this much piles up is closed (it reconnects and gets the history). */
const MAX_BUFFERED_BYTES = 1024 * 1024

/** What the feed reads. */
export interface FeedSources {
  store: Pick<RuntimeStore, 'routeViews' | 'rolloutStateRef' | 'onChange' | 'routeNames'>
  /** This instance's exposition (undefined: metrics off, no figures). */
  metrics: MetricsSource | undefined
  /** This instance's id in the fleet ('local' alone). */
  instance: () => string
  logger: Logger
}

interface Client {
  res: ServerResponse
  /** Only this route, or every route. */
  route: string | undefined
  /** Bytes of the hello: a large one (many routes, full history) is not the client falling behind. */
  allowance: number
}

/** The rollout record fields the marks read (RolloutRecord, as saved). */
interface SavedRollout {
  state?: string
  checks?: Array<{ at?: string; verdict?: string; step?: number; weight?: number; phase?: string; reasons?: unknown }>
  history?: Array<{ at?: string; event?: string; state?: string; step?: number; weight?: number; reason?: string }>
}

/** Where the marks of a route's rollout record stand: the record last read and the newest times taken from it. */
interface Cursor {
  ref: unknown
  checkAt: string
  historyAt: string
}

/**
 * A kept sample: its JSON as sent live, and as sent to streams of one route (made once per
 * route, on first need; dropped when the sampler stops). With every route watched, the route
 * copies add at most the history's size again.
 */
interface Kept {
  readonly sample: Sample
  readonly json: string
  byRoute?: Map<string, string>
}

/** The history part of a hello for one view, and the kept samples it spans (a kept sample never changes and the history only grows at one end and shrinks at the other, so the two ends name the span). */
interface HistoryChunk {
  readonly oldest: Kept
  readonly newest: Kept
  readonly bytes: Buffer
}

/** The live feed behind `GET /api/v1/events`; `close` stops it and ends every stream. */
export class Feed {
  readonly #src: FeedSources
  readonly #clients = new Set<Client>()
  /** Kept samples, oldest first, each with its JSON (written once, when it is sent live). */
  readonly #history: Kept[] = []
  /**
   * This second's history chunk per view ('' all routes, else the route; route names are
   * never empty): 31 dashboards reconnecting at once share one buffer instead of each
   * copying and encoding 2 MiB. Emptied at each new sample and when the sampler stops.
   */
  readonly #chunks = new Map<string, HistoryChunk>()
  #marks: Mark[] = []
  #timer: NodeJS.Timeout | undefined
  #busy = false
  #prev: { at: number; exposition: Exposition } | undefined
  readonly #weights = new Map<string, string>()
  readonly #cursors = new Map<string, Cursor>()
  #closed = false

  constructor (src: FeedSources) {
    this.#src = src
    // a change is marked at once with who made it and why: one made here, and one made
    // elsewhere in the fleet (the store hands on its audit entry when it applies it); the
    // per-second diff in #sample catches any other (a config reload's weights, a missed entry)
    src.store.onChange((e) => { if (this.#timer !== undefined) this.#weightsMark(e.route, e.weights, Date.parse(e.time) || Date.now(), e) })
  }

  /** Registers `GET /api/v1/events`. */
  register (admin: Pick<AdminServer, 'addRoute'>): void {
    admin.addRoute('GET', '/api/v1/events', (q) => {
      const route = q.query.get('route') ?? undefined
      if (route !== undefined && !this.#src.store.routeNames.includes(route)) {
        throw routeNotFound(route, this.#src.store.routeNames)
      }
      // a HEAD has no body to stream: it must neither hang nor hold one of the streams
      if (q.req.method === 'HEAD') return { text: '', contentType: 'text/event-stream; charset=utf-8', headers: { 'x-accel-buffering': 'no' } }
      if (this.#closed) throw new CanarydError('CANARYD_ERR_SHUTTING_DOWN', 'the event feed is closed: this instance is shutting down')
      if (this.#clients.size >= MAX_STREAMS) throw new CanarydError('CANARYD_ERR_TOO_MANY_STREAMS', `${MAX_STREAMS} event streams are open on this instance already; close a dashboard tab or retry later`)
      return {
        contentType: 'text/event-stream; charset=utf-8',
        // a buffering proxy in front (nginx) would hold the stream back
        headers: { 'x-accel-buffering': 'no' },
        stream: (res) => { this.#open({ res, route, allowance: 0 }) }
      }
    })
  }

  /** Stops sampling and ends every stream. Idempotent. */
  close (): void {
    this.#closed = true
    this.#stop()
    for (const c of this.#clients) c.res.end()
    this.#clients.clear()
  }

  #open (c: Client): void {
    this.#clients.add(c)
    c.res.once('close', () => {
      this.#clients.delete(c)
      if (this.#clients.size === 0) this.#stop()
    })
    // the socket's own buffering would hold the first small events back
    c.res.socket?.setNoDelay(true)
    const chunk = this.#historyChunk(c.route)
    const oldest = chunk === undefined ? Infinity : chunk.oldest.sample.t
    const marks = this.#marks.filter((m) => m.t >= Math.min(oldest, Date.now()) - FEED_INTERVAL_MS && (c.route === undefined || m.route === c.route))
    const head = JSON.stringify({ intervalMs: FEED_INTERVAL_MS, instance: this.#src.instance(), metrics: this.#src.metrics !== undefined, marks })
    // one event, the history spliced in as text: {"intervalMs":…,"marks":[…],"history":[…]};
    // written in three pieces, corked into one send, the shared chunk by reference
    const [open, close] = eventFrame('hello')
    const before = `${open}${head.slice(0, -1)},"history":[`
    const after = `]}${close}`
    c.allowance = Buffer.byteLength(before) + (chunk?.bytes.length ?? 0) + Buffer.byteLength(after)
    c.res.cork()
    c.res.write(before)
    if (chunk !== undefined) c.res.write(chunk.bytes)
    c.res.write(after)
    c.res.uncork()
    if (this.#timer === undefined && !this.#closed) {
      this.#seed()
      this.#timer = setInterval(() => { void this.#tick() }, FEED_INTERVAL_MS)
      this.#timer.unref()
      void this.#tick()
    }
  }

  /**
   * What the weights and the rollout records are when the sampler starts: a change from
   * here on is a mark, even one in the first second (the first sample needs two scrapes).
   */
  #seed (): void {
    const now = Date.now()
    // the first sight of a route's weights records them without a mark
    for (const view of this.#src.store.routeViews()) this.#weightsMark(view.name, weightsOf(view), now, undefined)
    this.#marksFromRollouts(now)
  }

  /**
   * The history part of a hello for `route` (undefined: all routes), newest samples first up
   * to the byte budget and none older than the window a page draws (samples from before a
   * quiet spell count only while within it); undefined when there is none. Rebuilt only when
   * the span changed: a new sample, or the oldest one leaving the window.
   */
  #historyChunk (route: string | undefined): HistoryChunk | undefined {
    const since = Date.now() - HISTORY * FEED_INTERVAL_MS
    let bytes = 0
    let first = this.#history.length
    while (first > 0) {
      const h = this.#history[first - 1]!
      if (h.sample.t < since) break
      bytes += jsonFor(h, route).length + 1
      if (bytes > MAX_HELLO_HISTORY_BYTES) break
      first--
    }
    if (first === this.#history.length) return undefined
    const oldest = this.#history[first]!
    const newest = this.#history[this.#history.length - 1]!
    const key = route ?? ''
    const had = this.#chunks.get(key)
    if (had !== undefined && had.oldest === oldest && had.newest === newest) return had
    const chunk = { oldest, newest, bytes: Buffer.from(this.#history.slice(first).map((h) => jsonFor(h, route)).join(',')) }
    this.#chunks.set(key, chunk)
    return chunk
  }

  #stop (): void {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
    // the chunks and the route copies go with the watchers (the samples stay for the next one's hello)
    this.#chunks.clear()
    for (const k of this.#history) delete k.byRoute
    // the next watcher starts afresh: a rate over the gap would mean nothing, and a change
    // made while nobody watched has no time to be drawn at (the audit log and the timeline keep it)
    this.#prev = undefined
    this.#weights.clear()
    this.#cursors.clear()
  }

  #write (c: Client, text: string): void {
    if (c.res.writableLength > MAX_BUFFERED_BYTES + c.allowance) {
      this.#src.logger.debug({ buffered: c.res.writableLength }, 'event stream closed: the client reads too slowly')
      c.res.destroy()
      return
    }
    c.res.write(text)
  }

  /** A sample to every stream; a route's streams get its part (made once per route). */
  #sendSample (kept: Kept): void {
    const all = formatEvent('sample', kept.json)
    for (const c of this.#clients) this.#write(c, c.route === undefined ? all : formatEvent('sample', jsonFor(kept, c.route)))
  }

  /** A mark to the streams of every route and those of its route. */
  #sendMark (m: Mark): void {
    const all = formatEvent('mark', JSON.stringify(m))
    for (const c of this.#clients) if (c.route === undefined || c.route === m.route) this.#write(c, all)
  }

  async #tick (): Promise<void> {
    // a slow exposition (a cluster's workers answering late) skips a beat instead of piling up
    if (this.#busy || this.#timer === undefined) return
    this.#busy = true
    try {
      const now = Date.now()
      let exposition: Exposition | undefined
      if (this.#src.metrics !== undefined) {
        try {
          exposition = expositionFromJson(await this.#src.metrics.families(FAMILIES))
        } catch (err) {
          this.#src.logger.debug({ err }, 'event feed: the metrics could not be read this second')
        }
      }
      if (this.#timer === undefined) return
      const sample = this.#sample(now, exposition)
      this.#marksFromRollouts(now)
      if (sample !== undefined) {
        const kept: Kept = { sample, json: JSON.stringify(sample) }
        this.#history.push(kept)
        // every chunk ends at the newest sample: none holds memory (or old samples) past this second
        this.#chunks.clear()
        // at most HISTORY samples, none older than the window (after a quiet spell, the older ones go)
        const since = now - HISTORY * FEED_INTERVAL_MS
        let drop = Math.max(0, this.#history.length - HISTORY)
        while (drop < this.#history.length && this.#history[drop]!.sample.t < since) drop++
        if (drop > 0) this.#history.splice(0, drop)
        const oldest = this.#history[0]!.sample.t
        if (this.#marks.length > 0 && (this.#marks[0]!.t < oldest - FEED_INTERVAL_MS || this.#marks.length > MAX_MARKS)) {
          this.#marks = this.#marks.filter((m) => m.t >= oldest - FEED_INTERVAL_MS).slice(-MAX_MARKS)
        }
        this.#sendSample(kept)
      }
      if (exposition !== undefined) this.#prev = { at: now, exposition }
    } finally {
      this.#busy = false
    }
  }

  /**
   * One second's figures; undefined for the very first scrape (a rate needs two) and when
   * this second's scrape failed (no figures is not zero traffic: the next sample covers both seconds).
   */
  #sample (now: number, cur: Exposition | undefined): Sample | undefined {
    const prev = this.#prev
    const views = this.#src.store.routeViews()
    // a change made elsewhere in the fleet (no local onChange) is seen here, figures or not
    for (const view of views) this.#weightsMark(view.name, weightsOf(view), now, undefined)
    if (this.#src.metrics !== undefined && (cur === undefined || prev === undefined)) return undefined
    const seconds = prev === undefined ? FEED_INTERVAL_MS / 1000 : (now - prev.at) / 1000
    const rows = new Map<string, ReturnType<typeof summarize>['rows'][number]>()
    const endpoints = new Map<string, { healthy: number; ejected: number }>()
    if (cur !== undefined && prev !== undefined) {
      for (const r of summarize(prev.exposition, cur, seconds).rows) rows.set(`${r.route}\u0000${r.version}`, r)
      for (const s of cur.samples) {
        if (s.name !== METRIC_NAMES.endpoints) continue
        const key = `${s.labels.route ?? ''}\u0000${s.labels.version ?? ''}`
        let e = endpoints.get(key)
        if (e === undefined) endpoints.set(key, e = { healthy: 0, ejected: 0 })
        if (s.labels.state === 'healthy') e.healthy += s.value
        else if (s.labels.state === 'ejected') e.ejected += s.value
      }
    }
    const routes: Sample['routes'] = {}
    for (const view of views) {
      const versions: Record<string, VersionSample> = {}
      for (const v of view.versions) {
        const key = `${view.name}\u0000${v.name}`
        const r = rows.get(key)
        versions[v.name] = {
          weight: v.weight,
          rps: round(r?.rps ?? 0, 2),
          errorPct: r?.errorPct === undefined ? null : round(r.errorPct, 3),
          p50Ms: r?.p50 === undefined ? null : round(r.p50 * 1000, 3),
          p99Ms: r?.p99 === undefined ? null : round(r.p99 * 1000, 3),
          inFlight: r?.inFlight ?? 0,
          endpoints: endpoints.get(key) ?? null
        }
      }
      routes[view.name] = { versions, rollout: view.rollout }
    }
    return { t: now, seconds: round(seconds, 3), routes }
  }

  /** Marks a weight change of `route` unless these are the weights last seen. The first sight only records them. */
  #weightsMark (route: string, weights: Record<string, number>, t: number, entry: AuditEntry | undefined): void {
    const key = JSON.stringify(weights)
    const before = this.#weights.get(route)
    this.#weights.set(route, key)
    if (before === undefined || before === key) return
    this.#mark({ t, route, kind: 'weights', weights, source: entry?.source ?? null, reason: entry?.reason ?? null })
  }

  /** Marks the checks and events a rollout record gained since it was last read (by identity: every save is a new object). */
  #marksFromRollouts (now: number): void {
    for (const route of this.#src.store.routeNames) {
      const ref = this.#src.store.rolloutStateRef(route)
      const cur = this.#cursors.get(route)
      if (cur !== undefined && cur.ref === ref) continue
      const r = (typeof ref === 'object' && ref !== null ? ref : {}) as SavedRollout
      const checks = Array.isArray(r.checks) ? r.checks : []
      const history = Array.isArray(r.history) ? r.history : []
      const next: Cursor = {
        ref,
        checkAt: newestAt(checks, cur?.checkAt ?? ''),
        historyAt: newestAt(history, cur?.historyAt ?? '')
      }
      this.#cursors.set(route, next)
      // the first read of a record only places the cursor: what happened before anyone watched has no figures to sit on
      if (cur === undefined) continue
      for (const c of checks) {
        if (typeof c.at !== 'string' || c.at <= cur.checkAt) continue
        this.#mark({ t: Date.parse(c.at) || now, route, kind: 'check', verdict: String(c.verdict ?? ''), step: c.step ?? 0, weight: c.weight ?? 0, phase: c.phase ?? 'steps', reasons: Array.isArray(c.reasons) ? c.reasons.map(String) : [] })
      }
      for (const h of history) {
        if (typeof h.at !== 'string' || h.at <= cur.historyAt) continue
        this.#mark({ t: Date.parse(h.at) || now, route, kind: 'rollout', event: String(h.event ?? ''), state: String(h.state ?? ''), step: h.step ?? 0, weight: h.weight ?? 0, reason: h.reason ?? null })
      }
    }
  }

  #mark (m: Mark): void {
    this.#marks.push(m)
    this.#sendMark(m)
  }
}

/** A route view's weights by version. */
function weightsOf (view: { versions: ReadonlyArray<{ name: string; weight: number }> }): Record<string, number> {
  return Object.fromEntries(view.versions.map((v) => [v.name, v.weight]))
}

/** The newest `at` of `items` (ISO-8601 strings compare in time order), or `floor`. */
function newestAt (items: ReadonlyArray<{ at?: string }>, floor: string): string {
  let max = floor
  for (const i of items) if (typeof i.at === 'string' && i.at > max) max = i.at
  return max
}

/** A kept sample's JSON for the streams of `route` (undefined: all routes); a route's is made once, on first need. */
function jsonFor (k: Kept, route: string | undefined): string {
  if (route === undefined) return k.json
  k.byRoute ??= new Map()
  let json = k.byRoute.get(route)
  if (json === undefined) k.byRoute.set(route, json = JSON.stringify(keepRoute(k.sample, route)))
  return json
}

/** A sample with only `route` in it. */
function keepRoute (s: Sample, route: string): Sample {
  // own keys only: a route named `constructor` must not find Object's
  const r = Object.hasOwn(s.routes, route) ? s.routes[route] : undefined
  return { t: s.t, seconds: s.seconds, routes: r === undefined ? {} : { [route]: r } }
}

/** The text before and after the JSON of one server-sent event (JSON has no raw newline, so one data line). */
function eventFrame (kind: string): readonly [string, string] {
  return [`event: ${kind}\ndata: `, '\n\n']
}

/** One server-sent event of JSON text. */
function formatEvent (kind: string, json: string): string {
  const [open, close] = eventFrame(kind)
  return open + json + close
}
