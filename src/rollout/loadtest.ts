/**
 * The rollout's built-in load generator (`analysis.loadTest`): bounded
 * synthetic traffic for a canary too quiet to judge. It sends real requests
 * through the proxy's own listener, each pinned to a version by the route's
 * override (header, else cookie) and marked `x-canaryd-synthetic: 1`, so the
 * proxy counts them under source="synthetic" and the judge can leave them out.
 *
 * - Pacing: a timer ticks every TICK_MS and sends floor(accumulated rps·dt)
 *   requests (the fraction carries over), so the rate holds for any rps and
 *   no tick sends more than about one tick's worth: a stalled event loop
 *   loses the time it stalled instead of bursting to catch up.
 * - Spread: versions round-robin (rps split evenly), paths round-robin
 *   within each version, users from a seeded PRNG (sticky cookie
 *   `<name>=synthetic-<i>`), so user, path and version do not correlate.
 * - Bounded: at most `maxInFlight` requests in flight; a request due while
 *   at the cap is not sent (counted as dropped), never queued.
 * - Stoppable: `stop()` clears the timer, aborts everything in flight and
 *   closes the generator's own connections, resolving within STOP_MS.
 *
 * The only sockets of rollout/ besides the analysis providers and webhooks.
 */
import { Agent, request, type Dispatcher } from 'undici'
import type { LoadTestSpec } from '../config/plan.js'
import { SYNTHETIC_HEADER } from '../metrics/names.js'

/** Where the generated requests go: the proxy's own listener, as the route sees it. */
export interface LoadTarget {
  /** The proxy's listener, e.g. http://127.0.0.1:8080 or https://127.0.0.1:8443. */
  origin: string
  /** Host header: the route's first non-wildcard host (also the TLS server name). */
  host?: string
  /** The route's override header (preferred when the route has one). */
  overrideHeader?: string
  /** The route's override cookie (used when it has no override header). */
  overrideCookie?: string
  /** The route's sticky cookie name. */
  stickyCookie: string
  /** Connect with TLS (also implied by an https origin); the certificate is not verified: it is our own listener. */
  tls?: boolean
}

/** Options of a LoadGenerator. */
export interface LoadGeneratorOptions {
  /** Told of request failures (connect errors, timeouts), at most once per second; never of stop()'s own aborts. */
  onError?: (err: unknown) => void
  /** Most requests in flight at once (default 64); one due at the cap is dropped. */
  maxInFlight?: number
  /** Seed of the user pick (default: random). Tests pass one for a repeatable run. */
  seed?: number
}

/** What a generator did since it was made. */
export interface LoadStats {
  /** Requests sent (started). */
  sent: number
  /** Answered with a status below 500. */
  ok: number
  /** Answered 5xx, or failed (connect, reset, timeout). Requests stop() aborted are in neither. */
  failed: number
  /** Due while `maxInFlight` were in flight: not sent. */
  dropped: number
}

/** Timer period, ms. */
export const TICK_MS = 50
/** Longest time one tick accounts for: a late timer (up to twice the period) is caught up, a stall is not. */
const MAX_DT_MS = 2 * TICK_MS
/** stop() resolves within this, whatever the sockets do. */
export const STOP_MS = 1000
/** onError is called at most once per this many ms. */
const ERROR_EVERY_MS = 1000
const DEFAULT_MAX_IN_FLIGHT = 64
/** Most response bytes read before the rest is discarded (the status is what counts). */
const DUMP_LIMIT = 64 * 1024

/** mulberry32: a tiny seeded PRNG, [0, 1) (the tests' seeded traffic and fuzz cases use it too). */
export function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** The host part of a Host value (no port, no IPv6 brackets). */
function hostname (host: string): string {
  if (host.startsWith('[')) return host.slice(1, host.indexOf(']'))
  const colon = host.lastIndexOf(':')
  return colon === -1 ? host : host.slice(0, colon)
}

/** True for an IPv4 or IPv6 literal (never a TLS server name). */
function isIp (h: string): boolean {
  return h.includes(':') || /^\d{1,3}(\.\d{1,3}){3}$/.test(h)
}

/** One version's pre-built request headers (all but the per-user cookie). */
interface VersionHeaders {
  readonly headers: Record<string, string>
  /** The cookie before the sticky one: the spec's own and the override cookie, `; `-terminated, or ''. */
  readonly cookiePrefix: string
}

/** See the module comment. */
export class LoadGenerator {
  readonly #spec: LoadTestSpec
  readonly #target: LoadTarget
  readonly #versions: readonly string[]
  readonly #byVersion: readonly VersionHeaders[]
  readonly #urls: readonly string[]
  readonly #onError: ((err: unknown) => void) | undefined
  readonly #maxInFlight: number
  readonly #random: () => number
  readonly #tls: boolean
  readonly #inFlight = new Map<AbortController, Promise<void>>()
  readonly #stats: LoadStats = { sent: 0, ok: 0, failed: 0, dropped: 0 }
  #timer: NodeJS.Timeout | undefined
  #agent: Agent | undefined
  #last = 0
  #credit = 0
  #next = 0
  #lastError = -Infinity
  #stopping: Promise<void> | undefined

  /**
   * @param spec the plan's analysis.loadTest
   * @param target the proxy listener and the route's override and sticky names
   * @param versions the version names to load (the spec's roles resolved); at least one
   * @throws TypeError for no versions, no override, a bad origin or a bad maxInFlight
   */
  constructor (spec: LoadTestSpec, target: LoadTarget, versions: readonly string[], opts: LoadGeneratorOptions = {}) {
    if (versions.length === 0) throw new TypeError('load test: no version to send requests to')
    if (!(spec.rps > 0) || !Number.isFinite(spec.rps)) throw new TypeError(`load test: rps must be a positive number, got ${spec.rps}`)
    if ((target.overrideHeader ?? '') === '' && (target.overrideCookie ?? '') === '') throw new TypeError('load test: the route has no override header or cookie to pin a version with')
    const max = opts.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT
    if (!Number.isInteger(max) || max < 1) throw new TypeError(`load test: maxInFlight must be a positive integer, got ${max}`)
    const origin = new URL(target.origin)
    if (origin.protocol !== 'http:' && origin.protocol !== 'https:') throw new TypeError(`load test: origin must be http(s), got ${target.origin}`)
    this.#spec = spec
    this.#target = target
    this.#versions = Object.freeze([...versions])
    this.#onError = opts.onError
    this.#maxInFlight = max
    this.#random = mulberry32(opts.seed ?? Math.floor(Math.random() * 4294967296))
    this.#tls = target.tls === true || origin.protocol === 'https:'
    const base = this.#tls ? `https://${origin.host}` : `http://${origin.host}`
    const paths = spec.paths.length === 0 ? ['/'] : spec.paths
    this.#urls = Object.freeze(paths.map((p) => base + p))
    this.#byVersion = Object.freeze(this.#versions.map((v) => this.#headersFor(v)))
  }

  /** The fixed headers of requests to `version`: the spec's, Host, the synthetic mark and the override. */
  #headersFor (version: string): VersionHeaders {
    const t = this.#target
    const headers: Record<string, string> = {}
    let cookie = ''
    // the spec's own headers first (names lower-cased, so ours below replace theirs, never double them)
    for (const [k, v] of Object.entries(this.#spec.headers)) {
      const name = k.toLowerCase()
      if (name === 'cookie') cookie = v
      else headers[name] = v
    }
    if (t.host !== undefined && headers.host === undefined) headers.host = t.host
    headers[SYNTHETIC_HEADER] = '1'
    const overrideHeader = t.overrideHeader ?? ''
    if (overrideHeader !== '') headers[overrideHeader.toLowerCase()] = version
    else cookie = cookie === '' ? `${t.overrideCookie!}=${version}` : `${cookie}; ${t.overrideCookie!}=${version}`
    return Object.freeze({ headers: Object.freeze(headers), cookiePrefix: cookie === '' ? '' : `${cookie}; ` })
  }

  /** True between start() and stop(). */
  get running (): boolean {
    return this.#timer !== undefined
  }

  /** A copy of the counts so far. */
  get stats (): LoadStats {
    return { ...this.#stats }
  }

  /** Requests in flight now. */
  get inFlight (): number {
    return this.#inFlight.size
  }

  /** Starts sending (again, after a stop: the counts go on). No-op while running. */
  start (): void {
    if (this.#timer !== undefined) return
    this.#agent = this.#makeAgent()
    this.#last = performance.now()
    this.#credit = 0
    this.#timer = setInterval(() => { this.#tick() }, TICK_MS)
    // a load test never keeps a stopping process alive
    this.#timer.unref()
  }

  /**
   * Stops: no request is sent after this is called; those in flight are
   * aborted and the generator's connections closed. Resolves within STOP_MS
   * (a socket slow to close is left to close on its own).
   */
  async stop (): Promise<void> {
    if (this.#timer !== undefined) {
      clearInterval(this.#timer)
      this.#timer = undefined
    }
    if (this.#stopping !== undefined) return await this.#stopping
    const agent = this.#agent
    this.#agent = undefined
    const pending = [...this.#inFlight.values()]
    for (const c of this.#inFlight.keys()) c.abort()
    if (agent === undefined && pending.length === 0) return
    const closed = Promise.allSettled([...pending, agent?.destroy()])
    let bound: NodeJS.Timeout | undefined
    const late = new Promise<void>((resolve) => {
      bound = setTimeout(resolve, STOP_MS - 50)
      bound.unref()
    })
    this.#stopping = Promise.race([closed.then(() => {}), late]).finally(() => {
      clearTimeout(bound)
      this.#stopping = undefined
    })
    await this.#stopping
  }

  /** The generator's own connections: TLS to our own listener is not verified (its certificate names the route's hosts, not 127.0.0.1). */
  #makeAgent (): Agent {
    const connections = this.#maxInFlight
    if (!this.#tls) return new Agent({ connections })
    const host = this.#target.host === undefined ? new URL(this.#target.origin).hostname : hostname(this.#target.host)
    const servername = isIp(host) ? undefined : host
    return new Agent({ connections, connect: { rejectUnauthorized: false, ...(servername === undefined ? {} : { servername }) } })
  }

  /** One timer tick: never throws (an error goes to onError). */
  #tick (): void {
    try {
      const now = performance.now()
      const dt = Math.min(MAX_DT_MS, now - this.#last)
      this.#last = now
      this.#credit += this.#spec.rps * dt / 1000
      const n = Math.floor(this.#credit)
      this.#credit -= n
      for (let i = 0; i < n; i++) this.#sendNext()
    } catch (err) {
      this.#report(err)
    }
  }

  /** Sends the next request of the round-robin, or counts it dropped at the cap. */
  #sendNext (): void {
    const k = this.#next++
    if (this.#inFlight.size >= this.#maxInFlight) {
      this.#stats.dropped++
      return
    }
    const agent = this.#agent
    if (agent === undefined) return
    const nv = this.#versions.length
    const vh = this.#byVersion[k % nv]!
    const url = this.#urls[Math.floor(k / nv) % this.#urls.length]!
    const user = Math.floor(this.#random() * this.#spec.users)
    const headers = { ...vh.headers, cookie: `${vh.cookiePrefix}${this.#target.stickyCookie}=synthetic-${user}` }
    const ac = new AbortController()
    this.#stats.sent++
    const done = this.#send(agent, url, headers, ac.signal).finally(() => { this.#inFlight.delete(ac) })
    this.#inFlight.set(ac, done)
  }

  /** One request; settles, never rejects. */
  async #send (agent: Dispatcher, url: string, headers: Record<string, string>, signal: AbortSignal): Promise<void> {
    try {
      const ms = this.#spec.timeoutMs
      const res = await request(url, { dispatcher: agent, method: this.#spec.method, headers, signal, headersTimeout: ms, bodyTimeout: ms })
      // the status is the answer; the body is read (bounded) so the connection can be reused
      await res.body.dump({ limit: DUMP_LIMIT })
      if (res.statusCode < 500) this.#stats.ok++
      else this.#stats.failed++
    } catch (err) {
      // stop()'s own aborts (and the agent it destroyed) are neither ok nor failed
      if (signal.aborted) return
      this.#stats.failed++
      this.#report(err)
    }
  }

  /** Tells onError, at most once per second; an onError that throws is ignored. */
  #report (err: unknown): void {
    const now = performance.now()
    if (this.#onError === undefined || now - this.#lastError < ERROR_EVERY_MS) return
    this.#lastError = now
    try {
      this.#onError(err)
    } catch {}
  }
}
