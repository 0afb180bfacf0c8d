/**
 * Raw-socket helpers for the pipelining tests: a client that writes exact
 * bytes and parses every response that comes back (in order, framing
 * checked), and a view of what a wire upstream received since a mark.
 */
import { connect, type Socket } from 'node:net'
import type { Test } from 'tap'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startWireUpstream, type WireOptions, type WireUpstream } from '../helpers/wire.js'
import { scrape } from '../metrics/scrape.js'
import { waitFor } from './raw.js'

/** One complete response read off a raw socket. */
export interface RawResponse {
  status: number
  /** Lower-cased names; repeated fields joined with ", ". */
  headers: Record<string, string>
  body: Buffer
  /** The error code of a JSON error body (`{"error":{"code":…}}`), '' when the body is not one. */
  code: string
}

/** Options of `RawClient.open`. */
export interface RawClientOptions {
  /** Called synchronously each time a response is complete (so a test can write the instant it arrives). */
  onResponse?: (r: RawResponse, client: RawClient) => void
}

const HEAD_END = Buffer.from('\r\n\r\n')

/**
 * A client connection that sends the test's bytes verbatim and parses the
 * responses incrementally: Content-Length, chunked, or (for a response with
 * neither) read until the peer closes. 1xx responses are kept as responses
 * of their own. Records whether the peer (canaryd) closed the connection,
 * by FIN or reset, as opposed to the test destroying it.
 */
export class RawClient {
  readonly socket: Socket
  readonly responses: RawResponse[] = []
  /** Every byte received. */
  received = 0
  /** True once the peer ended or reset the connection. */
  peerClosed = false
  /** True when the peer closed by a reset (ECONNRESET) rather than a FIN. */
  wasReset = false
  /** Set when a response could not be parsed (the test fails on it). */
  parseError = ''
  #buf: Buffer = Buffer.alloc(0)
  readonly #opts: RawClientOptions
  #destroyedByUs = false

  private constructor (socket: Socket, opts: RawClientOptions) {
    this.socket = socket
    this.#opts = opts
    socket.on('data', (d: Buffer) => {
      this.received += d.length
      this.#buf = this.#buf.length === 0 ? d : Buffer.concat([this.#buf, d])
      this.#parse(false)
    })
    socket.on('end', () => { this.#peerGone() })
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNRESET') this.wasReset = true
      this.#peerGone()
    })
    socket.on('close', () => { this.#peerGone() })
  }

  /** Connects to 127.0.0.1:port. */
  static async open (port: number, opts: RawClientOptions = {}): Promise<RawClient> {
    const s = connect(port, '127.0.0.1')
    const c = new RawClient(s, opts)
    await new Promise<void>((resolve, reject) => {
      s.once('connect', () => resolve())
      s.once('error', reject)
    })
    return c
  }

  /** Writes bytes if the socket is still writable; returns whether they were written. Write errors are the peer closing (recorded). */
  write (data: string | Buffer): boolean {
    if (this.socket.destroyed || !this.socket.writable) return false
    this.socket.write(data)
    return true
  }

  /** Waits until `n` responses are complete; rejects after `timeoutMs`. */
  async waitResponses (n: number, timeoutMs = 5000): Promise<RawResponse[]> {
    await waitFor(() => this.responses.length >= n || this.parseError !== '', { timeoutMs, intervalMs: 5 })
    return this.responses
  }

  /** Waits until the peer closes; resolves false after `timeoutMs` if it did not. */
  async waitClosed (timeoutMs = 5000): Promise<boolean> {
    try {
      await waitFor(() => this.peerClosed, { timeoutMs, intervalMs: 5 })
    } catch {
      return false
    }
    return true
  }

  /** Closes the connection from the client side: a FIN (a peer cannot tell it from a half-close until it writes). */
  destroy (): void {
    this.#destroyedByUs = true
    this.socket.destroy()
  }

  /** Aborts the connection from the client side with a TCP reset (RST): unambiguously gone. */
  reset (): void {
    this.#destroyedByUs = true
    this.socket.resetAndDestroy()
  }

  #peerGone (): void {
    if (this.#destroyedByUs || this.peerClosed) return
    this.peerClosed = true
    this.#parse(true)
  }

  #parse (eof: boolean): void {
    while (this.#buf.length > 0 && this.parseError === '') {
      const headEnd = this.#buf.indexOf(HEAD_END)
      if (headEnd === -1) {
        if (eof) this.parseError = `incomplete head: ${JSON.stringify(this.#buf.subarray(0, 80).toString('latin1'))}`
        return
      }
      const lines = this.#buf.subarray(0, headEnd).toString('latin1').split('\r\n')
      const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? '')
      if (m === null) {
        this.parseError = `bad status line: ${JSON.stringify(lines[0])}`
        return
      }
      const status = Number(m[1])
      const headers: Record<string, string> = {}
      for (const line of lines.slice(1)) {
        const i = line.indexOf(':')
        const name = line.slice(0, i).toLowerCase()
        const value = line.slice(i + 1).trim()
        headers[name] = headers[name] === undefined ? value : `${headers[name]!}, ${value}`
      }
      const start = headEnd + 4
      let body: Buffer
      let next: number
      if (status < 200 || status === 204 || status === 304) {
        body = Buffer.alloc(0)
        next = start
      } else if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
        const r = dechunk(this.#buf, start)
        if (r === undefined) {
          if (eof) this.parseError = 'incomplete chunked body'
          return
        }
        body = r.body
        next = r.next
      } else if (headers['content-length'] !== undefined) {
        const len = Number(headers['content-length'])
        if (this.#buf.length < start + len) {
          if (eof) this.parseError = `body cut short: ${this.#buf.length - start} of ${len}`
          return
        }
        body = this.#buf.subarray(start, start + len)
        next = start + len
      } else {
        if (!eof) return
        body = this.#buf.subarray(start)
        next = this.#buf.length
      }
      const r: RawResponse = { status, headers, body: Buffer.from(body), code: errorCode(body) }
      this.#buf = this.#buf.subarray(next)
      this.responses.push(r)
      this.#opts.onResponse?.(r, this)
    }
  }
}

/** Decodes a chunked body starting at `start`; undefined while incomplete. */
function dechunk (buf: Buffer, start: number): { body: Buffer; next: number } | undefined {
  const parts: Buffer[] = []
  let i = start
  for (;;) {
    const eol = buf.indexOf('\r\n', i)
    if (eol === -1) return undefined
    const size = parseInt(buf.subarray(i, eol).toString('latin1'), 16)
    if (size === 0) {
      // canaryd sends no trailers: the last chunk is followed by one empty line
      if (buf.length < eol + 4) return undefined
      return { body: Buffer.concat(parts), next: eol + 4 }
    }
    if (buf.length < eol + 2 + size + 2) return undefined
    parts.push(buf.subarray(eol + 2, eol + 2 + size))
    i = eol + 2 + size + 2
  }
}

/** The `error.code` of a JSON error body, '' otherwise. */
function errorCode (body: Buffer): string {
  try {
    const j = JSON.parse(body.toString()) as { error?: { code?: unknown } }
    return typeof j.error?.code === 'string' ? j.error.code : ''
  } catch {
    return ''
  }
}

/** Byte offsets of every connection of some wire upstreams at one moment. */
export type WireMark = number[][]

/** Marks what `wires` have received so far. */
export function markWires (wires: readonly WireUpstream[]): WireMark {
  return wires.map((w) => w.raw.map((l) => l.reduce((n, b) => n + b.length, 0)))
}

/** What `wires` received since `mark`: the bytes (per connection, latin1) and the request lines found in them. */
export function wiresSince (wires: readonly WireUpstream[], mark: WireMark): { bytes: number; text: string; requestLines: string[] } {
  const texts: string[] = []
  wires.forEach((w, wi) => {
    w.raw.forEach((l, ci) => {
      const all = Buffer.concat(l)
      const from = mark[wi]?.[ci] ?? 0
      if (all.length > from) texts.push(all.subarray(from).toString('latin1'))
    })
  })
  const text = texts.join('\n')
  const requestLines = [...text.matchAll(/^([A-Z]+) (\S+) HTTP\/1\.[01]\r$/gm)].map((m) => `${m[1]!} ${m[2]!}`)
  return { bytes: texts.reduce((n, s) => n + Buffer.byteLength(s, 'latin1'), 0), text, requestLines }
}

/** `canaryd_requests_in_flight` by version, from the admin /metrics (real HTTP). */
export async function inFlightByVersion (proxy: TestProxy): Promise<Record<string, number>> {
  const e = await scrape(proxy)
  const out: Record<string, number> = {}
  for (const s of e.samples) {
    if (s.name === 'canaryd_requests_in_flight') out[s.labels.version ?? ''] = (out[s.labels.version ?? ''] ?? 0) + s.value
  }
  return out
}

/**
 * Waits until `canaryd_requests_in_flight` is 0 for every version and the
 * proxy's own count is 0; returns the last values seen (the test asserts
 * on them, so a leak fails with the numbers instead of a timeout).
 */
export async function settleInFlight (proxy: TestProxy, timeoutMs = 3000): Promise<{ gauge: Record<string, number>; proxy: number }> {
  let gauge: Record<string, number> = {}
  try {
    await waitFor(async () => {
      gauge = await inFlightByVersion(proxy)
      return proxy.app.proxy.inFlight === 0 && Object.values(gauge).every((v) => v === 0)
    }, { timeoutMs, intervalMs: 20 })
  } catch {
    // fall through: the caller's assertions report the values
  }
  return { gauge, proxy: proxy.app.proxy.inFlight }
}

/** A running canaryd over two wire upstreams (stable, canary), for the pipeline and attack suites. */
export interface WireEnv {
  proxy: TestProxy
  port: number
  stable: WireUpstream
  canary: WireUpstream
  wires: WireUpstream[]
}

/** Options of startWireEnv. */
export interface WireEnvOptions {
  /** Top-level config keys (e.g. `{ limits: { maxConnections: 5 } }`). */
  extra?: Record<string, unknown>
  wire?: WireOptions
  /** Extra keys of the route (e.g. `match`). */
  route?: Record<string, unknown>
  weights?: [number, number]
  /** Run at teardown before the proxy closes (cut sockets the test left open). */
  beforeClose?: () => void
}

/** Starts two wire upstreams and a canaryd over them; all closed in t.teardown. */
export async function startWireEnv (t: Test, o: WireEnvOptions = {}): Promise<WireEnv> {
  const stable = await startWireUpstream(o.wire)
  const canary = await startWireUpstream(o.wire)
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, o.weights ?? [50, 50], o.route ?? {})], o.extra ?? {}))
  t.teardown(async () => {
    o.beforeClose?.()
    await proxy.close()
    await stable.close()
    await canary.close()
  })
  return { proxy, port: proxy.app.proxyAddress!.port, stable, canary, wires: [stable, canary] }
}

/** In-flight is exactly 0 for every version on /metrics and in the proxy. */
export async function assertSettled (t: Test, env: WireEnv): Promise<void> {
  const f = await settleInFlight(env.proxy)
  t.same(f.gauge, { stable: 0, canary: 0 }, 'canaryd_requests_in_flight is 0 for every version')
  t.equal(f.proxy, 0, 'app.proxy.inFlight is 0')
}

/**
 * A normal request on a fresh connection to each version (the override
 * header pins it) gets 200, and, with `checkVersion`, from that version.
 */
export async function freshRequests (t: Test, env: WireEnv, checkVersion = true): Promise<void> {
  for (const version of ['stable', 'canary']) {
    const r = await send(`${env.proxy.url}/fresh-${version}`, { headers: { host: 'app.test', 'x-canary': version } })
    t.equal(r.status, 200, `a normal request to ${version} on a fresh connection succeeds`)
    if (checkVersion) t.equal(r.headers['x-canaryd-version'], version)
  }
}
