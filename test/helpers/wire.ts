import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

/** One request a wire upstream parsed, in arrival order across all its connections. */
export interface WireRequest {
  /** Arrival order (0-based) over the whole upstream. */
  seq: number
  /** Index of the connection it came on (0-based, in accept order). */
  conn: number
  method: string
  url: string
  rawHeaders: string[]
  body: Buffer
}

/** A real HTTP upstream on 127.0.0.1:0 that keeps every byte it received, per connection. */
export interface WireUpstream {
  server: Server
  origin: string
  /** Raw bytes received, one Buffer list per accepted connection. */
  raw: Buffer[][]
  /** Requests parsed (by Node's own parser), in arrival order. */
  requests: WireRequest[]
  /** Requests whose response has not been sent yet (held by `delayMs` or `hold`). */
  readonly pending: number
  /** Total bytes received on every connection. */
  bytes: () => number
  /** Every byte received on connection `i`, latin1. */
  text: (i: number) => string
  /** Releases every held response (see `hold`). */
  release: () => void
  close: () => Promise<void>
}

/** Options of `startWireUpstream`. */
export interface WireOptions {
  /** Answer after this many ms (default 0: at once). */
  delayMs?: number | ((r: WireRequest) => number)
  /** Hold a request's answer until `release()` is called. */
  hold?: (r: WireRequest) => boolean
  /** Custom answer; default 200 with JSON `{seq, method, url, bodyBytes}` and `x-seq`. */
  handler?: (r: WireRequest, req: IncomingMessage, res: ServerResponse) => void
}

/**
 * Starts an upstream for framing tests: an ordinary node:http server whose
 * sockets are also tapped, so the test sees both the exact bytes that
 * crossed the wire (to prove a refused request put none upstream) and the
 * requests they parse to (to match client responses to upstream requests).
 * Node unconsumes its parser when a 'data' listener is added, so the tap
 * sees every byte before the parser does.
 */
export async function startWireUpstream (opts: WireOptions = {}): Promise<WireUpstream> {
  const raw: Buffer[][] = []
  const requests: WireRequest[] = []
  const held: Array<() => void> = []
  let pending = 0
  const connOf = new WeakMap<Socket, number>()
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const r: WireRequest = {
        seq: requests.length,
        conn: connOf.get(req.socket) ?? -1,
        method: req.method ?? '',
        url: req.url ?? '',
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks)
      }
      requests.push(r)
      pending++
      const answer = (): void => {
        pending--
        if (res.destroyed) return
        if (opts.handler !== undefined) {
          opts.handler(r, req, res)
          return
        }
        const body = JSON.stringify({ seq: r.seq, method: r.method, url: r.url, bodyBytes: r.body.length })
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-seq': String(r.seq) })
        res.end(body)
      }
      if (opts.hold?.(r) === true) {
        held.push(answer)
        return
      }
      const d = typeof opts.delayMs === 'function' ? opts.delayMs(r) : (opts.delayMs ?? 0)
      if (d > 0) setTimeout(answer, d)
      else answer()
    })
  })
  server.keepAliveTimeout = 10_000
  server.on('connection', (s: Socket) => {
    const i = raw.length
    raw.push([])
    connOf.set(s, i)
    s.on('data', (d: Buffer) => { raw[i]!.push(d) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    server,
    origin: `http://127.0.0.1:${port}`,
    raw,
    requests,
    get pending () { return pending },
    bytes: () => raw.reduce((n, l) => n + l.reduce((m, b) => m + b.length, 0), 0),
    text: (i: number) => Buffer.concat(raw[i] ?? []).toString('latin1'),
    release: () => { for (const a of held.splice(0)) a() },
    close: async () => {
      for (const a of held.splice(0)) a()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

/** One raw HTTP/2 frame (RFC 9113 §4.1): 24-bit length, type, flags, stream id, payload. */
export function h2Frame (type: number, flags: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9)
  h.writeUIntBE(payload.length, 0, 3)
  h[3] = type
  h[4] = flags
  h.writeUInt32BE(id, 5)
  return Buffer.concat([h, payload])
}
