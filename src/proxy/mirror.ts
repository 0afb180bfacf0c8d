import type { IncomingMessage } from 'node:http'
import { performance } from 'node:perf_hooks'
import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { MirrorResult } from '../metrics/kinds.js'
import type { MirrorObserver } from '../metrics/observer.js'
import type { Mirror, Route } from '../routing/types.js'
import { classifyUpstreamError } from '../upstream/classify.js'
import type { EndpointGroup } from '../upstream/group.js'
import { holdSlot, releaseSlot, type UpstreamSlot } from '../upstream/pools.js'
import type { RequestFraming } from './headers.js'

/**
 * Request mirroring (Envoy's request_mirror_policies, Traefik's mirror
 * service, nginx's `mirror`): a copy of a request the user is being served
 * is sent to the route's mirror version and its answer read and discarded.
 * Routing decides *whether* (routing/mirror.ts, pure, with the caller's
 * draw); this module only sends.
 *
 * The user's request never waits for, fails with or changes because of its
 * copy: the copy has its own in-flight cap per route (over it: dropped), its
 * own timeout, and no part in the version's metrics, rollout windows or
 * outlier detection (its endpoint's failures and successes are not
 * recorded). It is not held by the proxy's drain: close() abandons copies.
 *
 * A request body is copied as the user's request receives it, by watching
 * the request stream's `push` (the one place both Node's HTTP/1.1 parser and
 * its HTTP/2 compatibility layer hand it bytes). Nothing reads the stream:
 * its flow, its buffer, backpressure, `readableDidRead` (the retry rule) and
 * the body-stall timers are exactly what they are without a copy. The copy
 * goes out when the body is complete, as one Buffer of the announced
 * Content-Length (bounded by maxBodyBytes); an unsized (chunked) or larger
 * body is not copied (`too_large`).
 */

/** The per-route mirror bindings of one routing table (made at bind, never per request). */
export interface MirrorRuntime {
  readonly route: string
  readonly mirror: Mirror
  /** The mirror version's name. */
  readonly version: string
  /** The mirror version's endpoints in the bound table. */
  readonly group: EndpointGroup
  readonly observer: MirrorObserver
  /** The route's copies in flight: one counter per route name, kept across tables so a swap never lifts the cap. */
  readonly gate: Gate
}

/** Copies of one route in flight (per process). */
interface Gate {
  inFlight: number
}

const kTeed = Symbol('canaryd.mirrorTee')

/** A request stream whose `push` is watched (see `#tee`); the original push is kept on it. */
type TeedRequest = IncomingMessage & { [kTeed]?: MirrorCopy }

/**
 * Every mirrored copy of one proxy: the per-route gates, the copies in
 * flight (close() abandons them), and the bind of a table's mirrors.
 */
export class MirrorSender {
  #gates = new Map<string, Gate>()
  readonly #live = new Set<MirrorCopy>()
  #closed = false

  /**
   * The mirror bindings of a table, [route.index] (undefined for a route
   * without a mirror). `groupOf` gives a version's endpoint group in the
   * table; `observers` the routes' mirror observers, in the order of the
   * mirrored routes. Gates of routes no longer mirrored are dropped (copies
   * still in flight hold theirs).
   */
  bind (routes: readonly Route[], groupOf: (route: Route, versionIndex: number) => EndpointGroup, observers: readonly MirrorObserver[]): Array<MirrorRuntime | undefined> {
    const gates = new Map<string, Gate>()
    let i = 0
    const out = routes.map((r): MirrorRuntime | undefined => {
      const m = r.mirror
      if (m === undefined) return undefined
      const gate = this.#gates.get(r.name) ?? { inFlight: 0 }
      gates.set(r.name, gate)
      return Object.freeze({ route: r.name, mirror: m, version: m.version.name, group: groupOf(r, m.version.index), observer: observers[i++]!, gate })
    })
    this.#gates = gates
    return out
  }

  /**
   * Starts a copy of `req` (already routed to `primary` and about to be
   * forwarded with `headers`), or counts why none is made (`too_large`,
   * `dropped`) and returns undefined. A copy with a body starts collecting
   * it now; `arm` (after the user's request is forwarded) lets it go.
   */
  begin (mr: MirrorRuntime, req: IncomingMessage, primary: string, path: string, headers: readonly string[], framing: RequestFraming, hash: number): MirrorCopy | undefined {
    if (this.#closed) return undefined
    const m = mr.mirror
    const cl = framing.contentLength
    const hasBody = cl !== undefined ? cl !== '0' : framing.chunked
    let size = 0
    if (hasBody) {
      size = cl === undefined ? -1 : Number(cl)
      if (size < 0 || !(size <= m.maxBodyBytes)) {
        mr.observer.result('too_large')
        return undefined
      }
    }
    if (mr.gate.inFlight >= m.maxInFlight) {
      mr.observer.result('dropped')
      return undefined
    }
    // the copy says where it went and that it is one: x-canaryd-version (set last by buildUpstreamHeaders) names the mirror version
    const h = headers.slice()
    h[h.length - 1] = mr.version
    h.push('x-canaryd-mirror', '1')
    const copy = new MirrorCopy(this, mr, primary, { path, method: req.method ?? 'GET', headers: h, body: null }, hash)
    mr.gate.inFlight++
    this.#live.add(copy)
    if (hasBody) copy.tee(req, size)
    return copy
  }

  /** A copy is over (counted or abandoned). */
  release (copy: MirrorCopy): void {
    this.#live.delete(copy)
  }

  /** Copies in flight now (tests). */
  get inFlight (): number {
    return this.#live.size
  }

  /** Abandons every copy in flight (not counted) and makes no more: the proxy is closing. */
  close (): void {
    this.#closed = true
    for (const c of [...this.#live]) c.abandon()
    this.#live.clear()
  }
}

/**
 * One copy: its body collected from the user's request stream, its
 * exchange with the mirror version (undici's core handler callbacks, as
 * ForwardHandler; the answer is read and dropped), its timeout, and the
 * two halves of its shadow pair.
 */
export class MirrorCopy implements Dispatcher.DispatchHandler {
  readonly #sender: MirrorSender
  readonly #mr: MirrorRuntime
  readonly #primary: string
  readonly #opts: Dispatcher.DispatchOptions & { body: Buffer | null, servername?: string }
  readonly #hash: number
  /** The body being collected (`#size` bytes announced), and how much of it arrived. */
  #body: Buffer | undefined
  #got = 0
  /** The user's body arrived whole (or there is none). */
  #bodyDone = true
  /** The user's request was forwarded: the copy may go as soon as its body is complete. */
  #armed = false
  #sent = false
  /** Handed to undici: its final callback (onComplete/onError) is still owed. */
  #dispatched = false
  /** The in-flight cap slot and the pool hold were given back (once). */
  #released = false
  /** Counted and released: whatever undici reports later is our own abort echoing. */
  #settled = false
  /** The copy never produced an answer worth judging (the user's body failed, or the proxy closed): no pair. */
  #noPair = false
  #slot: UpstreamSlot | undefined
  #abort: ((err?: Error) => void) | undefined
  #timer: NodeJS.Timeout | undefined
  #t0 = 0
  #status = 0
  #seconds = -1
  #failed = false
  /** The user's side, once its response closed (-1 until then). */
  #pStatus = -1
  #pSeconds = 0
  #pFailed = false

  constructor (sender: MirrorSender, mr: MirrorRuntime, primary: string, opts: Dispatcher.DispatchOptions & { body: Buffer | null }, hash: number) {
    this.#sender = sender
    this.#mr = mr
    this.#primary = primary
    this.#opts = opts
    this.#hash = hash
  }

  /**
   * Collects the body of `req` (`size` bytes announced) without reading the
   * stream: what is buffered already is copied, and `push` is wrapped for
   * the rest. Called before the request is forwarded, when nothing of the
   * body has been consumed yet.
   */
  tee (req: IncomingMessage, size: number): void {
    this.#bodyDone = false
    this.#body = Buffer.allocUnsafe(size)
    const r = req as TeedRequest
    if (req.readableDidRead) {
      // cannot happen before forward (nothing reads it yet); if it did, what was read is gone
      this.#bodyFailed()
      return
    }
    const state = (req as unknown as { _readableState: { buffer: Iterable<Buffer | null>, ended: boolean } })._readableState
    for (const chunk of state.buffer) if (chunk !== null && !this.#chunk(chunk)) return
    if (state.ended) {
      this.#ended()
      return
    }
    r[kTeed] = this
    const push = req.push
    // one wrapper per mirrored request, on that request only: every other request keeps Readable's own push
    req.push = function (this: Readable, chunk: unknown, encoding?: BufferEncoding): boolean {
      const copy = r[kTeed]
      if (copy !== undefined) {
        if (chunk === null) copy.#ended()
        else copy.#chunk(typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk as Buffer)
      }
      return push.call(this, chunk, encoding)
    }
  }

  /** Copies one chunk of the user's body; false (and the copy given up) when it overflows the announced length. */
  #chunk (chunk: Buffer): boolean {
    const body = this.#body
    if (body === undefined || this.#bodyDone) return true
    if (this.#got + chunk.length > body.length) {
      this.#bodyFailed()
      return false
    }
    chunk.copy(body, this.#got)
    this.#got += chunk.length
    return true
  }

  #ended (): void {
    if (this.#body === undefined || this.#bodyDone || this.#settled) return
    if (this.#got !== this.#body.length) {
      this.#bodyFailed()
      return
    }
    this.#bodyDone = true
    this.#opts.body = this.#body
    this.#body = undefined
    if (this.#armed) this.#send()
  }

  /** The user's body failed (or broke its framing): the copy is not sent; result error, no pair. */
  #bodyFailed (): void {
    this.#body = undefined
    this.#bodyDone = true
    this.#noPair = true
    this.#settle('error', 0, false)
  }

  /** The user's request was forwarded: a bodyless copy goes now, one with a body when it is complete. */
  arm (): void {
    this.#armed = true
    if (this.#bodyDone && !this.#settled) this.#send()
  }

  /**
   * The user's response closed with what its VersionObserver's `finish`
   * got. A copy still waiting for the body will never get it (the
   * exchange is over): it is given up. Otherwise this is one half of the
   * shadow pair.
   */
  primaryDone (status: number, seconds: number, failed: boolean): void {
    this.#pStatus = status
    this.#pSeconds = seconds
    this.#pFailed = failed
    if (!this.#bodyDone) {
      this.#bodyFailed()
      return
    }
    if (this.#settled) this.#pair()
  }

  #send (): void {
    if (this.#sent) return
    this.#sent = true
    const mr = this.#mr
    const group = mr.group
    const ep = group.pick(this.#hash) ?? group.pickAny(this.#hash)
    this.#t0 = performance.now()
    if (ep === undefined) {
      // the mirror version has no endpoint: its failure to serve, judged like one
      this.#settle('error', 0, true)
      return
    }
    const slot = ep.slot
    // copies use spare connections only: with requests already queued for the origin, a copy would queue users behind it
    if (slot.pool.stats.queued !== 0) {
      // never sent: no evidence about the mirror version, so no shadow pair (it would read as a canary failure)
      this.#noPair = true
      this.#settle('dropped', 0, true)
      return
    }
    this.#slot = slot
    // held, not counted in slot.inFlight: a copy never takes a user's place under the origin's cap, and a pool retired by a swap closes after it
    holdSlot(slot)
    if (slot.servername !== undefined) this.#opts.servername = slot.servername
    this.#timer = setTimeout(() => { this.#timedOut() }, mr.mirror.timeoutMs)
    this.#timer.unref()
    this.#dispatched = true
    try {
      slot.pool.dispatch(this.#opts, this)
    } catch (err) {
      // undici validates some headers synchronously
      this.onError(err as Error)
    }
  }

  #timedOut (): void {
    this.#timer = undefined
    if (this.#settled) return
    this.#settle('timeout', 0, true)
    this.#abort?.(new Error('mirror copy timed out'))
  }

  onConnect (abort: (err?: Error) => void): void {
    this.#abort = abort
    if (this.#settled) abort(new Error('mirror copy abandoned'))
  }

  onHeaders (statusCode: number): boolean {
    // informational answers are not the answer
    if (statusCode < 200) return true
    this.#status = statusCode
    return true
  }

  onData (): boolean {
    // discarded as it arrives: the copy's answer is only its status and timing
    return true
  }

  onComplete (): void {
    this.#dispatched = false
    if (this.#settled) {
      this.#release()
      return
    }
    const status = this.#status
    this.#settle(status >= 500 ? '5xx' : 'ok', status, false)
  }

  onError (err: Error): void {
    this.#dispatched = false
    if (this.#settled) {
      this.#release()
      return
    }
    // undici's own response timeouts count as the copy's timeout too
    this.#settle(classifyUpstreamError(err).kind === 'timeout' ? 'timeout' : 'error', 0, true)
  }

  /** Counts the copy's result once, lets go of its slot and gate, and pairs it when the user's side is known. */
  #settle (result: MirrorResult, status: number, failed: boolean): void {
    if (this.#settled) return
    this.#settled = true
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer)
      this.#timer = undefined
    }
    this.#seconds = this.#t0 === 0 ? 0 : (performance.now() - this.#t0) / 1000
    this.#status = status
    this.#failed = failed
    // the cap counts copies undici still holds (queued or on a socket): a timed-out copy frees its place only when undici lets go of it
    if (!this.#dispatched) this.#release()
    this.#mr.observer.result(result)
    if (this.#pStatus !== -1) this.#pair()
  }

  #release (): void {
    if (this.#released) return
    this.#released = true
    if (this.#slot !== undefined) {
      releaseSlot(this.#slot)
      this.#slot = undefined
    }
    this.#mr.gate.inFlight--
    this.#sender.release(this)
  }

  /** Both halves known: one pair to the route's listeners (built only when someone listens). */
  #pair (): void {
    if (this.#noPair) return
    this.#noPair = true
    const o = this.#mr.observer
    if (!o.pairing) return
    o.pair({
      route: this.#mr.route,
      primary: this.#primary,
      mirror: this.#mr.version,
      primaryStatus: this.#pStatus,
      primarySeconds: this.#pSeconds,
      primaryFailed: this.#pFailed,
      mirrorStatus: this.#status,
      mirrorSeconds: this.#seconds,
      mirrorFailed: this.#failed
    })
  }

  /** The proxy is closing: the copy is aborted, not counted, not paired. */
  abandon (): void {
    if (this.#settled) {
      // counted already (a timeout) but still held by undici: let it go now
      if (this.#dispatched) {
        this.#release()
        this.#abort?.(new Error('proxy closing: mirror copy abandoned'))
      }
      return
    }
    this.#settled = true
    this.#noPair = true
    this.#body = undefined
    this.#bodyDone = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    // closing: the cap no longer matters, and undici's pools are being closed behind this
    this.#release()
    this.#abort?.(new Error('proxy closing: mirror copy abandoned'))
  }

  /** Whether this copy still needs to hear the user's side: its body is incomplete, or its pair is owed to a listener. */
  get wantsPrimary (): boolean {
    return !this.#bodyDone || this.#mr.observer.pairing
  }
}
