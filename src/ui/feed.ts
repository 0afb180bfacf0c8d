/**
 * The live feed: `GET /api/v1/events` read with fetch() and a stream
 * reader, because EventSource cannot send the Bearer header. One feed for
 * the whole page (every route), kept across page changes, so the charts
 * open with the last five minutes the server kept instead of an empty plot.
 *
 * Reconnects after 1 s, 2 s, 4 s … up to 10 s while the stream fails, and
 * stops on a 401, or when an API call met one, until a token is given
 * (retrying a refused token would only fill the server's log).
 */
import { authHeaders, authNeeded, readError, tokenNeeded } from './api.js'
import { isObj } from './dom.js'
import type { Mark, Sample } from './types.js'

/** What the header shows. */
export type FeedStatus = 'connecting' | 'live' | 'reconnecting' | 'error'

/** What a listener hears. */
export type FeedEvent =
  | { type: 'hello' }
  | { type: 'sample', sample: Sample }
  | { type: 'mark', mark: Mark }
  | { type: 'status', status: FeedStatus, message: string }
  /** the latest sample just became too old to be "now" (no newer one came): the current figures go */
  | { type: 'stale' }

/** Samples kept: five minutes at the server's one per second, as many as hello sends. */
const KEEP = 300
/**
 * No byte for this long: the connection is dead though not closed. The
 * server sends no keepalives: its samples, one a second, are the heartbeat
 * (a slow scrape may skip one, so the margin is wide).
 */
const IDLE_MS = 40_000
/** A sample older than this is not "now": its figures are not shown as current. */
const FRESH_MS = 5000
const MIN_DELAY = 1000
const MAX_DELAY = 10_000

/** Splits a text/event-stream into events; fed chunks of text, calls back per complete event. */
export class EventStreamParser {
  #buf = ''
  #event = ''
  #data: string[] = []
  constructor (private readonly onEvent: (event: string, data: string) => void) {}

  push (chunk: string): void {
    this.#buf += chunk
    // a line ends at \n, \r\n or \r; a lone \r at the end may be the first half of \r\n
    for (;;) {
      const m = /\r\n|\n|\r(?=[^\n])/.exec(this.#buf)
      if (m === null) return
      const line = this.#buf.slice(0, m.index)
      this.#buf = this.#buf.slice(m.index + m[0].length)
      this.#line(line)
    }
  }

  #line (line: string): void {
    if (line === '') {
      if (this.#data.length !== 0) this.onEvent(this.#event === '' ? 'message' : this.#event, this.#data.join('\n'))
      this.#event = ''
      this.#data = []
      return
    }
    if (line.startsWith(':')) return
    const i = line.indexOf(':')
    const field = i === -1 ? line : line.slice(0, i)
    let value = i === -1 ? '' : line.slice(i + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'event') this.#event = value
    else if (field === 'data') this.#data.push(value)
  }
}

/** The page's connection to the feed, with the samples and marks it has seen. */
export class Feed {
  /** oldest first, at most KEEP */
  samples: Sample[] = []
  /** marks within the samples' span (and later ones) */
  marks: Mark[] = []
  status: FeedStatus = 'connecting'
  message = ''
  /** false when the instance runs with metrics off: no figures to show */
  metrics = true
  /** sample events received since the page loaded (tests poll it through the document's dataset) */
  count = 0
  #listeners = new Set<(ev: FeedEvent) => void>()
  #generation = 0
  #abort: AbortController | undefined
  /** the browser's clock minus the server's, as the last live sample showed it (latency included); undefined before one */
  #skew: number | undefined
  #staleTimer: ReturnType<typeof setTimeout> | undefined

  /** Adds a listener; returns its removal. */
  on (fn: (ev: FeedEvent) => void): () => void {
    this.#listeners.add(fn)
    return () => { this.#listeners.delete(fn) }
  }

  /** (Re)connects now, with the token as it is now (after sign-in or sign-out). */
  restart (): void {
    this.#abort?.abort()
    const gen = ++this.#generation
    void this.#run(gen)
  }

  #emit (ev: FeedEvent): void {
    for (const fn of this.#listeners) {
      // one page's bug must not end the stream for the others (nor leak it: see #read)
      try {
        fn(ev)
      } catch (err) {
        console.error('dashboard: a feed listener failed', err)
      }
    }
  }

  #setStatus (status: FeedStatus, message = ''): void {
    this.status = status
    this.message = message
    this.#emit({ type: 'status', status, message })
  }

  async #run (gen: number): Promise<void> {
    let delay = MIN_DELAY
    let first = true
    while (gen === this.#generation) {
      // an API call met a 401 meanwhile: this token would be refused too; restart() comes with the next one
      if (tokenNeeded()) {
        this.#setStatus('error', 'waiting for the admin token')
        return
      }
      this.#setStatus(first ? 'connecting' : 'reconnecting', this.message)
      first = false
      const ctrl = new AbortController()
      this.#abort = ctrl
      let message = 'the feed ended'
      try {
        const res = await fetch('/api/v1/events', { headers: authHeaders(), signal: ctrl.signal, cache: 'no-store', credentials: 'omit' })
        if (res.status === 401) {
          const err = await readError(res)
          if (gen !== this.#generation) return
          this.#setStatus('error', err.message)
          authNeeded(err.message)
          return
        }
        if (!res.ok || res.body === null) {
          message = (await readError(res)).message
        } else if (await this.#read(res.body, ctrl, gen)) {
          delay = MIN_DELAY
        }
      } catch (err) {
        message = err instanceof Error ? err.message : String(err)
      }
      // a newer connection (or a stop) took over: this one says nothing more
      if (gen !== this.#generation) return
      this.#setStatus('reconnecting', message)
      await new Promise((resolve) => setTimeout(resolve, delay))
      delay = Math.min(delay * 2, MAX_DELAY)
    }
  }

  /** Reads one stream to its end; true when it got as far as hello (the backoff then starts over). */
  async #read (body: ReadableStream<Uint8Array>, ctrl: AbortController, gen: number): Promise<boolean> {
    let greeted = false
    const parser = new EventStreamParser((event, data) => {
      if (gen !== this.#generation) return
      let msg: unknown
      try {
        msg = JSON.parse(data)
      } catch {
        return
      }
      if (!isObj(msg)) return
      if (event === 'hello') {
        greeted = true
        this.#hello(msg)
      } else if (event === 'sample') {
        this.#sample(msg as unknown as Sample)
      } else if (event === 'mark') {
        const mark = msg as unknown as Mark
        this.marks.push(mark)
        this.#emit({ type: 'mark', mark })
      }
    })
    const reader = body.getReader()
    const decoder = new TextDecoder()
    let idle = setTimeout(() => ctrl.abort(), IDLE_MS)
    try {
      for (;;) {
        const { done, value } = await reader.read()
        clearTimeout(idle)
        if (done || gen !== this.#generation) break
        idle = setTimeout(() => ctrl.abort(), IDLE_MS)
        parser.push(decoder.decode(value, { stream: true }))
      }
    } finally {
      clearTimeout(idle)
      // a stream left for any reason is closed, not just let go: an open one holds one of the
      // browser's six connections to the admin host and one of the server's 32 streams
      reader.cancel().catch(() => {})
      ctrl.abort()
    }
    return greeted
  }

  #hello (msg: Record<string, unknown>): void {
    // a reconnect's hello repeats what the server kept: it replaces ours rather than adding to it
    this.metrics = msg.metrics !== false
    this.samples = Array.isArray(msg.history) ? (msg.history as Sample[]).slice(-KEEP) : []
    this.marks = Array.isArray(msg.marks) ? msg.marks as Mark[] : []
    this.#setStatus('live')
    this.#armStale()
    this.#emit({ type: 'hello' })
  }

  #sample (s: Sample): void {
    if (typeof s.t !== 'number' || !isObj(s.routes)) return
    this.samples.push(s)
    if (this.samples.length > KEEP) this.samples.splice(0, this.samples.length - KEEP)
    const oldest = this.samples[0]?.t ?? s.t
    if (this.marks.length !== 0 && (this.marks[0]?.t ?? oldest) < oldest) this.marks = this.marks.filter((m) => m.t >= oldest)
    this.count++
    // measured on live samples only: the server's clock need not agree with the browser's
    this.#skew = Date.now() - s.t
    this.#armStale()
    document.documentElement.dataset.feedSamples = String(this.count)
    this.#emit({ type: 'sample', sample: s })
  }

  /** Emits `stale` when the current sample ages past FRESH_MS with no newer one (the feed went quiet or down). */
  #armStale (): void {
    clearTimeout(this.#staleTimer)
    const s = this.current
    if (s === undefined) return
    this.#staleTimer = setTimeout(() => {
      if (this.current === undefined) this.#emit({ type: 'stale' })
    }, FRESH_MS - this.#age(s) + 50)
  }

  /** How old a sample is by the server's clock, as far as the live samples tell it. */
  #age (s: Sample): number {
    return this.#skew === undefined ? Number.POSITIVE_INFINITY : Date.now() - this.#skew - s.t
  }

  /** The latest sample, if any (for the chart lines and "last sample at"; may be from before a gap). */
  get last (): Sample | undefined {
    return this.samples[this.samples.length - 1]
  }

  /**
   * The latest sample if it is at most FRESH_MS old, else undefined: the
   * "now" figures come only from it, so figures from before a quiet spell
   * (a hello's history) are never shown as current. Before the first live
   * sample the server's clock is not known, and nothing is current.
   */
  get current (): Sample | undefined {
    const s = this.last
    return s !== undefined && this.#age(s) <= FRESH_MS ? s : undefined
  }
}
