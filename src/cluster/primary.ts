/**
 * Cluster mode's primary: the control plane (admin API, state file, audit,
 * rollout controller) runs here once, and N node:cluster workers serve the
 * traffic on the shared listener.
 *
 * - A weight change is validated, persisted and swapped in the primary's
 *   table as in a single process; the swap listener then sends the new
 *   weights to every worker over IPC, where each builds the same frozen table
 *   (same hashing, so every worker picks exactly as a single process would).
 * - /metrics asks every worker for its registry and merges them with
 *   prom-client's AggregatorRegistry.aggregate (counters and histograms
 *   summed, weights by max), plus the primary's own (rollout, process).
 * - The rollout controller's windows are fed by batched samples from every
 *   worker (only for the (route, version) pairs it subscribed to).
 * - A worker that dies is logged and replaced (with backoff if it keeps
 *   dying); SIGTERM/SIGINT drains every worker, then the primary exits 0.
 */
import cluster, { type Worker } from 'node:cluster'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { AggregatorRegistry, type Registry } from 'prom-client'
import { addLogReadout, announceStarted, createControlPlane, createStore, listenerSummary, loadListenerCertificates, warnInsecure, type ControlPlane } from '../app.js'
import type { ListenerCertificate } from '../listener/certs.js'
import type { Config } from '../config/load.js'
import type { FamilyJson } from '../metrics/exposition.js'
import type { ShadowPair } from '../metrics/observer.js'
import type { Logger } from '../logger.js'
import { PrometheusMetrics, type FinishListener } from '../metrics/prometheus.js'
import { RuntimeStore } from '../store/store.js'
import { isOurs, toWire, type ToPrimary, type ToWorker } from './messages.js'

/** One forked worker as the primary tracks it. */
interface WorkerState {
  worker: Worker
  ready: boolean
  startedAt: number
}

/** Options of the primary. */
export interface PrimaryOptions {
  config: Config
  workers: number
  logger: Logger
  /** Prometheus metrics on (default). */
  metrics?: boolean
}

const METRICS_TIMEOUT_MS = 3000

/** See the module comment. */
export class ClusterPrimary {
  readonly config: Config
  readonly state: RuntimeStore
  readonly control: ControlPlane
  readonly #log: Logger
  readonly #n: number
  readonly #metricsOn: boolean
  readonly #own: PrometheusMetrics | undefined
  readonly #workers = new Map<number, WorkerState>()
  readonly #listeners = new Map<string, { route: string, version: string, ls: Set<FinishListener>, ej: Set<() => void> }>()
  /** Shadow-pair listeners by route (a rollout's shadow phase); the workers forward pairs while a route has one. */
  readonly #shadowListeners = new Map<string, Set<(p: ShadowPair) => void>>()
  readonly #pending = new Map<number, { resolve: (parts: unknown[][]) => void, reject: (err: Error) => void, left: number, parts: unknown[][], asked: Set<number>, timer: NodeJS.Timeout }>()
  #nextId = 1
  #stopping = false
  #crashes: number[] = []
  #address: { address: string, port: number, redirect?: { address: string, port: number } | undefined } | undefined
  /** The listener certificates in force (read at start, replaced by a reload): what a new worker serves. */
  #certs: ListenerCertificate[] = []
  /** TLS session ticket keys shared by every worker, so a session resumes whichever worker takes the connection. */
  readonly #ticketKeys = randomBytes(48).toString('base64')
  #allReady: (() => void) | undefined
  #startFailed: ((err: Error) => void) | undefined
  #started = false

  constructor (opts: PrimaryOptions) {
    this.config = opts.config
    this.#log = opts.logger
    this.#n = opts.workers
    this.#metricsOn = opts.metrics ?? true
    // the primary's own registry: process metrics of the primary and the rollout metrics
    this.#own = this.#metricsOn ? new PrometheusMetrics() : undefined
    if (this.#own !== undefined) addLogReadout(this.#own)
    warnInsecure(opts.logger, opts.config)
    this.state = createStore(opts.config, opts.logger)
    this.state.holder.onSwap((table) => { this.#broadcast({ canaryd: 'table', routes: [...this.state.specs], generation: table.generation }) })
    const own = this.#own
    this.control = createControlPlane(opts.config, opts.logger, this.state, {
      metrics: own === undefined ? undefined : { expose: async () => await this.metricsText(), families: async (names) => await this.metricsJson(names), registry: { contentType: own.registry.contentType } },
      registry: own?.registry,
      gauges: own,
      subscribe: this.#metricsOn ? (route, version, l) => this.#subscribe(route, version, l, undefined) : undefined,
      subscribeEjection: this.#metricsOn ? (route, version, l) => this.#subscribe(route, version, undefined, l) : undefined,
      subscribeShadow: this.#metricsOn ? (route, l) => this.#subscribeShadow(route, l) : undefined,
      isReady: () => !this.#stopping && this.readyWorkers === this.#n,
      applyCertificates: (certs) => {
        this.#certs = certs
        this.#broadcast({ canaryd: 'certs', certs: toWire(certs) })
      }
    })
    cluster.setupPrimary({ exec: fileURLToPath(new URL('./worker.js', import.meta.url)), args: [] })
  }

  /**
   * The config a worker serves with: limits.maxConnections is the instance's
   * cap, so each of the N workers (which the primary hands connections to in
   * turn) holds its share of it.
   */
  #workerConfig (): Config {
    const max = this.config.limits.maxConnections
    if (max === 0) return this.config
    return { ...this.config, limits: { ...this.config.limits, maxConnections: Math.max(1, Math.ceil(max / this.#n)) } }
  }

  /** Workers listening now. */
  get readyWorkers (): number {
    let n = 0
    for (const w of this.#workers.values()) if (w.ready) n++
    return n
  }

  /** Process ids of the live workers. */
  get workerPids (): number[] {
    return [...this.#workers.values()].map((w) => w.worker.process.pid ?? 0)
  }

  /** Starts the admin server, forks the workers and waits until all listen; logs the start-up line. */
  async start (): Promise<void> {
    // fleet mode: the fleet's state (or the local snapshot) is in force before the workers get their first table
    await this.control.open()
    const admin = await this.control.admin.listen()
    this.#certs = await loadListenerCertificates(this.config, this.#log)
    const ready = new Promise<void>((resolve, reject) => {
      this.#allReady = resolve
      this.#startFailed = reject
    })
    for (let i = 0; i < this.#n; i++) this.#fork()
    await ready
    this.#started = true
    const a = this.#address!
    this.control.listening(`${admin.address}:${admin.port}`, `${a.address}:${a.port}`)
    await announceStarted(this.#log, this.config, this.state.holder, this.control.rollouts, {
      ...(this.state.redis === undefined ? {} : { instance: this.state.redis.instanceId }),
      ...listenerSummary(this.config, { main: a, redirect: a.redirect }),
      admin: `${admin.address}:${admin.port}`,
      workers: this.workerPids
    })
  }

  #fork (): void {
    const worker = cluster.fork()
    const ws: WorkerState = { worker, ready: false, startedAt: Date.now() }
    this.#workers.set(worker.id, ws)
    worker.on('message', (m: unknown) => { if (isOurs(m)) this.#onMessage(ws, m as ToPrimary) })
    worker.on('exit', (code, signal) => { this.#onExit(ws, code, signal) })
    worker.on('error', (err) => { this.#log.warn({ err, worker: worker.id }, 'worker IPC error') })
  }

  #onMessage (ws: WorkerState, m: ToPrimary): void {
    switch (m.canaryd) {
      case 'hello': {
        // a replacement forked just before a stop: it never serves
        if (this.#stopping) {
          ws.worker.process.kill('SIGTERM')
          return
        }
        // the worker's handler is attached: hand it the config and the weights in force
        const table = this.state.holder.current
        const subscriptions = [...this.#listeners.values()].map((l): [string, string] => [l.route, l.version])
        this.#send(ws.worker, { canaryd: 'init', config: this.#workerConfig(), routes: [...this.state.specs], generation: table.generation, subscriptions, shadows: [...this.#shadowListeners.keys()], metrics: this.#metricsOn, listener: { certs: toWire(this.#certs), ticketKeys: this.#ticketKeys } })
        return
      }
      case 'ready':
        ws.ready = true
        this.#address ??= { address: m.address, port: m.port, redirect: m.redirect }
        this.#log.debug({ worker: ws.worker.id, pid: ws.worker.process.pid }, 'worker listening')
        if (this.readyWorkers === this.#n) this.#allReady?.()
        return
      case 'metrics': {
        const p = this.#pending.get(m.id)
        if (p === undefined) return
        if (!p.asked.delete(ws.worker.id)) return
        p.parts.push(m.data)
        if (--p.left === 0) this.#settleMetrics(m.id)
        return
      }
      case 'samples': {
        const l = this.#listeners.get(`${m.route}\u0000${m.version}`)
        if (l === undefined) return
        const d = m.data
        for (let i = 0; i + 2 < d.length; i += 3) {
          // flags: bit 0 upstream failed, bit 1 synthetic (see the 'samples' message)
          const flags = d[i + 2]!
          for (const fn of l.ls) fn(d[i]!, d[i + 1]!, (flags & 1) !== 0, (flags & 2) !== 0)
        }
        for (let i = 0; i < m.ejections; i++) for (const fn of l.ej) fn()
        return
      }
      case 'pairs': {
        const ls = this.#shadowListeners.get(m.route)
        if (ls === undefined || !Array.isArray(m.pairs)) return
        for (const p of m.pairs) for (const fn of ls) fn(p)
      }
    }
  }

  #onExit (ws: WorkerState, code: number | null, signal: string | null): void {
    this.#workers.delete(ws.worker.id)
    // a scrape waiting for this worker's answer must not wait for the timeout
    for (const [id, p] of this.#pending) {
      if (p.asked.delete(ws.worker.id)) {
        if (--p.left === 0) this.#settleMetrics(id)
      }
    }
    if (this.#stopping) return
    if (!this.#started) {
      // before the cluster ever served, an exit is a start-up failure (a taken port, a bad
      // address): restarting would loop forever, so fail start() and let serve exit 1
      this.#startFailed?.(new Error(`worker ${ws.worker.id} exited during start-up (code ${code}, signal ${signal}); its error is printed above`))
      return
    }
    const now = Date.now()
    this.#crashes = this.#crashes.filter((t) => now - t < 60_000)
    this.#crashes.push(now)
    // a worker that dies at once, again and again, must not fork-bomb the machine
    const delay = Math.min(10_000, 100 * 2 ** Math.max(0, this.#crashes.length - 2))
    this.#log.error({ worker: ws.worker.id, pid: ws.worker.process.pid, code, signal, restartInMs: delay, crashesLastMinute: this.#crashes.length }, 'worker exited unexpectedly; starting a replacement')
    setTimeout(() => { if (!this.#stopping) this.#fork() }, delay).unref()
  }

  #send (w: Worker, m: ToWorker): void {
    if (w.isConnected()) w.send(m)
  }

  #broadcast (m: ToWorker): void {
    for (const ws of this.#workers.values()) this.#send(ws.worker, m)
  }

  /**
   * The rollout controller's subscriptions (finished requests, or ejections)
   * of one (route, version): the workers forward both for a watched pair.
   */
  #subscribe (route: string, version: string, finish: FinishListener | undefined, ejected: (() => void) | undefined): () => void {
    const key = `${route}\u0000${version}`
    let l = this.#listeners.get(key)
    if (l === undefined) {
      l = { route, version, ls: new Set(), ej: new Set() }
      this.#listeners.set(key, l)
      this.#broadcast({ canaryd: 'sub', route, version, on: true })
    }
    const entry = l
    if (finish !== undefined) entry.ls.add(finish)
    if (ejected !== undefined) entry.ej.add(ejected)
    return () => {
      if (finish !== undefined) entry.ls.delete(finish)
      if (ejected !== undefined) entry.ej.delete(ejected)
      if (entry.ls.size === 0 && entry.ej.size === 0 && this.#listeners.get(key) === entry) {
        this.#listeners.delete(key)
        this.#broadcast({ canaryd: 'sub', route, version, on: false })
      }
    }
  }

  /** A rollout's shadow-pair subscription of a route: every worker forwards the route's pairs while it lasts. */
  #subscribeShadow (route: string, listener: (p: ShadowPair) => void): () => void {
    let ls = this.#shadowListeners.get(route)
    if (ls === undefined) {
      ls = new Set()
      this.#shadowListeners.set(route, ls)
      this.#broadcast({ canaryd: 'shadow', route, on: true })
    }
    const set = ls
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0 && this.#shadowListeners.get(route) === set) {
        this.#shadowListeners.delete(route)
        this.#broadcast({ canaryd: 'shadow', route, on: false })
      }
    }
  }

  /** Resolves a metrics request once every asked worker answered (or died). */
  #settleMetrics (id: number): void {
    const p = this.#pending.get(id)
    if (p === undefined) return
    this.#pending.delete(id)
    clearTimeout(p.timer)
    p.resolve(p.parts)
  }

  /** The /metrics exposition: every worker's registry and the primary's, merged by prom-client. */
  async metricsText (): Promise<string> {
    return await (await this.#aggregate()).metrics()
  }

  /** Only the families `names`, merged across the workers, as prom-client's JSON (the dashboard's feed, once a second). */
  async metricsJson (names: readonly string[]): Promise<FamilyJson[]> {
    return await (await this.#aggregate(names)).getMetricsAsJSON() as unknown as FamilyJson[]
  }

  /** Every worker's registry and the primary's (or only the families `names`), merged by prom-client. */
  async #aggregate (names?: readonly string[]): Promise<Registry> {
    const ready = [...this.#workers.values()].filter((w) => w.ready && w.worker.isConnected())
    // one array per worker: aggregate() merges same-named metrics across them
    const perSource: unknown[][] = ready.length === 0
      ? []
      : await new Promise<unknown[][]>((resolve, reject) => {
        const id = this.#nextId++
        const timer = setTimeout(() => {
          const p = this.#pending.get(id)
          if (p === undefined) return
          this.#pending.delete(id)
          // a partial sum would look like a counter reset to Prometheus: fail this scrape instead
          reject(new Error(`${p.left} of ${ready.length} workers did not answer the metrics request within ${METRICS_TIMEOUT_MS} ms`))
        }, METRICS_TIMEOUT_MS)
        timer.unref()
        this.#pending.set(id, { resolve, reject, left: ready.length, parts: [], asked: new Set(ready.map((w) => w.worker.id)), timer })
        for (const w of ready) this.#send(w.worker, names === undefined ? { canaryd: 'metrics', id } : { canaryd: 'metrics', id, names: [...names] })
      })
    if (this.#own !== undefined) perSource.push(names === undefined ? await this.#own.registry.getMetricsAsJSON() : await this.#own.families(names))
    return AggregatorRegistry.aggregate(perSource as Parameters<typeof AggregatorRegistry.aggregate>[0])
  }

  /**
   * Graceful stop: readiness turns 503, every worker drains its in-flight
   * requests (up to timeouts.drainTimeoutMs) and exits; then the rollouts stop, the
   * state is flushed and the admin server closes. Resolves when all is done.
   */
  async stop (drainMs: number = this.config.timeouts.drainTimeoutMs): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    const exits = [...this.#workers.values()].map((ws) => new Promise<void>((resolve) => {
      if (ws.worker.isDead()) resolve()
      else ws.worker.once('exit', () => resolve())
    }))
    this.#broadcast({ canaryd: 'drain', ms: drainMs })
    const killer = setTimeout(() => {
      for (const ws of this.#workers.values()) ws.worker.process.kill('SIGKILL')
    }, drainMs + 3000)
    killer.unref()
    await Promise.all(exits)
    clearTimeout(killer)
    await this.control.close()
    await this.state.flush()
    await this.control.admin.close()
  }

  /** Second signal: no drain. */
  kill (): void {
    this.#stopping = true
    for (const ws of this.#workers.values()) ws.worker.process.kill('SIGKILL')
  }
}
