/**
 * A cluster worker: the data plane only. It waits for the primary's `init`
 * (the validated config and the weights in force, so it never serves a
 * single request with stale weights), builds the same proxy a single process
 * runs, and then follows the primary's table updates. The admin API, the
 * state file and the rollout controller live in the primary.
 */
import cluster from 'node:cluster'
import { createDataPlane, startListener, versionsOf, type DataPlane } from '../app.js'
import { createLogger, flushLogs, type Logger } from '../logger.js'
import { TableHolder } from '../routing/holder.js'
import { buildRoutingTable } from '../routing/table.js'
import type { Config } from '../config/load.js'
import type { ShadowPair } from '../metrics/observer.js'
import { fromWire, isOurs, type ToPrimary, type ToWorker } from './messages.js'

/** How often finished-request samples are batched to the primary (rollout windows). */
const SAMPLE_FLUSH_MS = 100

/** Most shadow pairs one route sends per batch: a judge's sample, not a log (the rest of a burst is dropped). */
const MAX_PAIRS_PER_BATCH = 2000

function send (m: ToPrimary): void {
  if (process.connected) process.send?.(m)
}

class Worker {
  readonly #config: Config
  readonly #log: Logger
  readonly #holder: TableHolder
  readonly #data: DataPlane
  readonly #listener: Extract<ToWorker, { canaryd: 'init' }>['listener']
  readonly #subs = new Map<string, { off: () => void, buf: number[], ejections: number, route: string, version: string }>()
  readonly #shadows = new Map<string, { off: () => void, buf: ShadowPair[] }>()
  #timer: NodeJS.Timeout | undefined
  #draining = false
  /** Tables being applied, in order (see 'table'). */
  #tables: Promise<void> = Promise.resolve()

  constructor (init: Extract<ToWorker, { canaryd: 'init' }>) {
    this.#config = init.config
    this.#log = createLogger(init.config.log.level, undefined, { maxBufferBytes: init.config.log.maxBufferBytes }).child({ worker: cluster.worker?.id })
    this.#holder = new TableHolder(buildRoutingTable(init.routes, init.generation))
    this.#data = createDataPlane(init.config, this.#holder, this.#log, init.metrics)
    this.#listener = init.listener
    for (const [route, version] of init.subscriptions) this.#subscribe(route, version, true)
    for (const route of init.shadows) this.#shadow(route, true)
  }

  async start (): Promise<void> {
    await this.#data.upstreams.settled()
    const a = await startListener(this.#data, this.#config, this.#log, { certs: fromWire(this.#listener.certs), ticketKeys: Buffer.from(this.#listener.ticketKeys, 'base64') })
    send({ canaryd: 'ready', address: a.main.address, port: a.main.port, ...(a.redirect === undefined ? {} : { redirect: { address: a.redirect.address, port: a.redirect.port } }) })
  }

  handle (m: ToWorker): void {
    switch (m.canaryd) {
      case 'table': {
        // new DNS names are resolved before the swap, so tables apply one at a time, in order
        const routes = m.routes
        this.#tables = this.#tables.then(async () => {
          await this.#data.upstreams.warm(versionsOf(routes))
          // IPC is ordered, but a replayed or stale table must never win over a newer one
          if (m.generation > this.#holder.current.generation) this.#holder.swap(buildRoutingTable(routes, m.generation))
        }).catch((err: unknown) => { this.#log.error({ err }, 'cannot apply the routing table') })
        return
      }
      case 'certs':
        // not listening yet (DNS warm-up): start with these rather than init's
        if (this.#data.listener === undefined) {
          this.#listener.certs = m.certs
          return
        }
        try {
          this.#data.listener.setCertificates(fromWire(m.certs))
        } catch (err) {
          this.#log.error({ err }, 'cannot serve the reloaded listener certificates: the previous ones stay')
        }
        return
      case 'sub':
        this.#subscribe(m.route, m.version, m.on)
        return
      case 'shadow':
        this.#shadow(m.route, m.on)
        return
      case 'metrics': {
        const reg = this.#data.metrics?.registry
        if (reg === undefined) {
          send({ canaryd: 'metrics', id: m.id, data: [] })
          return
        }
        const collect = m.names === undefined ? reg.getMetricsAsJSON() : this.#data.metrics!.families(m.names)
        collect.then((data) => send({ canaryd: 'metrics', id: m.id, data }), (err: unknown) => {
          this.#log.error({ err }, 'cannot collect metrics')
          send({ canaryd: 'metrics', id: m.id, data: [] })
        })
        return
      }
      case 'drain':
        void this.drain(m.ms)
    }
  }

  /** Forwards finished-request samples and ejections of (route, version) to the primary, batched. */
  #subscribe (route: string, version: string, on: boolean): void {
    const key = `${route}\u0000${version}`
    const cur = this.#subs.get(key)
    if (!on) {
      if (cur === undefined) return
      this.#flush() // samples already taken still belong to the window that asked for them
      cur.off()
      this.#subs.delete(key)
      this.#idle()
      return
    }
    const metrics = this.#data.metrics
    if (cur !== undefined || metrics === undefined) return
    const sub = { off: () => {}, buf: [] as number[], ejections: 0, route, version }
    // flags: bit 0 upstream failed, bit 1 synthetic (see the 'samples' message)
    const offFinish = metrics.onFinish(route, version, (status, seconds, failed, synthetic) => { sub.buf.push(status, seconds, (failed ? 1 : 0) | (synthetic ? 2 : 0)) })
    const offEjected = metrics.onEjected(route, version, () => { sub.ejections++ })
    sub.off = () => { offFinish(); offEjected() }
    this.#subs.set(key, sub)
    this.#busy()
  }

  /** Starts the flush timer with the first thing forwarded. */
  #busy (): void {
    this.#timer ??= setInterval(() => { this.#flush() }, SAMPLE_FLUSH_MS).unref()
  }

  /** Stops the flush timer once nothing is forwarded any more. */
  #idle (): void {
    if (this.#subs.size !== 0 || this.#shadows.size !== 0 || this.#timer === undefined) return
    clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** Forwards a route's shadow pairs to the primary, batched with the samples. */
  #shadow (route: string, on: boolean): void {
    const cur = this.#shadows.get(route)
    if (!on) {
      if (cur === undefined) return
      this.#flush()
      cur.off()
      this.#shadows.delete(route)
      this.#idle()
      return
    }
    const metrics = this.#data.metrics
    if (cur !== undefined || metrics === undefined) return
    const sub = { off: () => {}, buf: [] as ShadowPair[] }
    sub.off = metrics.subscribeShadow(route, (p) => { if (sub.buf.length < MAX_PAIRS_PER_BATCH) sub.buf.push(p) })
    this.#shadows.set(route, sub)
    this.#busy()
  }

  #flush (): void {
    for (const [route, s] of this.#shadows) {
      if (s.buf.length === 0) continue
      send({ canaryd: 'pairs', route, pairs: s.buf })
      s.buf = []
    }
    for (const s of this.#subs.values()) {
      if (s.buf.length === 0 && s.ejections === 0) continue
      send({ canaryd: 'samples', route: s.route, version: s.version, data: s.buf, ejections: s.ejections })
      s.buf = []
      s.ejections = 0
    }
  }

  /** Graceful drain of this worker's listener, then exit 0. */
  async drain (ms: number = this.#config.timeouts.drainTimeoutMs): Promise<void> {
    if (this.#draining) return
    this.#draining = true
    this.#data.listener?.close()
    const clean = await this.#data.proxy.drain(ms)
    this.#flush()
    await this.#data.upstreams.close()
    this.#log.debug({ clean }, 'worker drained')
    // bounded: a stdout nobody reads never holds the exit (see LogSink)
    await flushLogs(1000)
    process.exit(0)
  }
}

let worker: Worker | undefined
const early: ToWorker[] = []
process.on('message', (m: unknown) => {
  if (!isOurs(m)) return
  const msg = m as ToWorker
  if (msg.canaryd === 'init') {
    if (worker !== undefined) return
    try {
      worker = new Worker(msg)
    } catch (err) {
      process.stderr.write(`canaryd worker: cannot start: ${(err as Error).message}\n`)
      process.exit(1)
    }
    for (const e of early.splice(0)) worker.handle(e)
    worker.start().catch((err: unknown) => {
      // the same line as a single process: startListener names the listener, its key and env var
      process.stderr.write(`canaryd: ${(err as Error).message}\n`)
      process.exit(1)
    })
    return
  }
  if (worker === undefined) early.push(msg)
  else worker.handle(msg)
})
// Ctrl-C reaches the whole process group: the primary orchestrates the drain, workers wait for it
process.on('SIGINT', () => {})
// SIGHUP (a reload) is the primary's: a worker gets its routes from the primary, and must not die of it
process.on('SIGHUP', () => {})
// a SIGTERM sent to this worker alone drains it (the primary then replaces it)
process.on('SIGTERM', () => { void (worker?.drain() ?? process.exit(0)) })
// the primary is gone: nobody can update weights any more, so stop serving
process.on('disconnect', () => { void (worker?.drain(5_000) ?? process.exit(0)) })
send({ canaryd: 'hello' })
