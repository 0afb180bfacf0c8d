/**
 * Test upstreams with a business side, for the analysis-provider tests
 * (issue 17): each version's upstream serves requests (always 200: its HTTP
 * figures are perfect) and counts orders, `orders_total` and
 * `orders_ok_total` labelled with its version, on its own `/metrics` for a
 * real Prometheus to scrape. The share of ok orders is the version's
 * `okRatio`, exact (not random): after n orders, ok = floor(n · okRatio).
 * A separate score server answers JSON per version for the http provider.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/** What a business upstream saw of one request (not its /metrics scrapes). */
export interface BusinessRequest {
  /** performance.now() at arrival. */
  at: number
  method: string
  url: string
  headers: IncomingMessage['headers']
}

/** One version's upstream. */
export interface BusinessUpstream {
  version: string
  /** `http://127.0.0.1:PORT` */
  origin: string
  /** `127.0.0.1:PORT`: a Prometheus scrape target. */
  target: string
  /** Share of orders that succeed, 0..1; may be changed while running. */
  okRatio: number
  /** Requests served (every path but /metrics), in arrival order. */
  readonly seen: BusinessRequest[]
  /** Orders counted so far. */
  readonly orders: { total: number; ok: number }
  /** Requests that carried `x-canaryd-synthetic: 1`. */
  synthetic: () => number
  /** Times Prometheus (anyone) read /metrics. */
  readonly scrapes: number
  close: () => Promise<void>
}

async function listen (server: Server): Promise<number> {
  server.keepAliveTimeout = 10_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

async function shut (server: Server): Promise<void> {
  server.closeAllConnections()
  await new Promise<void>((resolve) => server.close(() => { resolve() }))
}

/**
 * Starts the upstream of `version` on 127.0.0.1, port 0. Every request but
 * `GET /metrics` is an order: it is answered 200 with a small JSON body and
 * counted (ok while ok/total stays within okRatio). `/metrics` answers the
 * two counters in Prometheus' text format; they exist at 0 from the start.
 */
export async function startBusinessUpstream (version: string, opts: { okRatio?: number } = {}): Promise<BusinessUpstream> {
  const seen: BusinessRequest[] = []
  const orders = { total: 0, ok: 0 }
  let scrapes = 0
  const up: { okRatio: number } = { okRatio: opts.okRatio ?? 1 }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    req.on('end', () => {
      if (req.method === 'GET' && req.url === '/metrics') {
        scrapes++
        const body = [
          '# HELP orders_total Orders placed.',
          '# TYPE orders_total counter',
          `orders_total{version="${version}"} ${orders.total}`,
          '# HELP orders_ok_total Orders placed successfully.',
          '# TYPE orders_ok_total counter',
          `orders_ok_total{version="${version}"} ${orders.ok}`,
          ''
        ].join('\n')
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4', 'content-length': Buffer.byteLength(body) })
        res.end(body)
        return
      }
      seen.push({ at: performance.now(), method: req.method ?? '', url: req.url ?? '', headers: req.headers })
      orders.total++
      // exact share: the n-th order is ok while ok < floor(n · okRatio)
      if (orders.ok < Math.floor(orders.total * up.okRatio + 1e-9)) orders.ok++
      const body = JSON.stringify({ version, order: orders.total })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-upstream': version })
      res.end(req.method === 'HEAD' ? undefined : body)
    })
  })
  const port = await listen(server)
  return {
    version,
    origin: `http://127.0.0.1:${port}`,
    target: `127.0.0.1:${port}`,
    get okRatio () { return up.okRatio },
    set okRatio (v: number) { up.okRatio = v },
    seen,
    orders,
    synthetic: () => seen.filter((s) => s.headers['x-canaryd-synthetic'] === '1').length,
    get scrapes () { return scrapes },
    close: async () => { await shut(server) }
  }
}

/** What the score server saw of one request. */
export interface ScoreRequest {
  method: string
  url: string
  /** The `version` query parameter, decoded. */
  version: string | null
  headers: IncomingMessage['headers']
  body: string
}

/** A JSON endpoint per version, for the http provider. */
export interface ScoreServer {
  origin: string
  /**
   * The JSON body answered for `version` (status 200), or a function of the
   * request that makes it; a version without one gets 404.
   */
  set: (version: string, body: unknown) => void
  /** Answers `status` (with a JSON error body) to every request until set to undefined. */
  failWith: (status: number | undefined) => void
  readonly requests: ScoreRequest[]
  close: () => Promise<void>
}

/**
 * Starts the score server on 127.0.0.1, port 0: `GET` or `POST` any path
 * with `?version=NAME` (or, for POST, a JSON body with "version") answers
 * the body `set` gave for that version, e.g. `{"score": 97, "checks":
 * {"latency": {"score": 0.99}}}`.
 */
export async function startScoreServer (): Promise<ScoreServer> {
  const bodies = new Map<string, unknown>()
  const requests: ScoreRequest[] = []
  let failing: number | undefined
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => { if (chunks.length < 64) chunks.push(c) })
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString()
      const url = new URL(req.url ?? '/', 'http://x')
      let version = url.searchParams.get('version')
      if (version === null && body !== '') {
        try { version = String((JSON.parse(body) as { version?: unknown }).version ?? '') || null } catch {}
      }
      requests.push({ method: req.method ?? '', url: req.url ?? '', version, headers: req.headers, body })
      const answer = (status: number, json: unknown): void => {
        const text = JSON.stringify(json)
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
        res.end(text)
      }
      if (failing !== undefined) answer(failing, { error: 'failing on purpose' })
      else if (version === null || !bodies.has(version)) answer(404, { error: `no score for ${String(version)}` })
      else {
        const b = bodies.get(version)
        answer(200, typeof b === 'function' ? (b as (r: ScoreRequest) => unknown)(requests[requests.length - 1]!) : b)
      }
    })
  })
  const port = await listen(server)
  return {
    origin: `http://127.0.0.1:${port}`,
    set: (version, body) => { bodies.set(version, body) },
    failWith: (status) => { failing = status },
    requests,
    close: async () => { await shut(server) }
  }
}

/** A background stream of user requests through the proxy (see userTraffic). */
export interface UserTraffic {
  /** Answers by status ("error …" for a failed request). */
  readonly statuses: Map<string, number>
  sent: () => number
  /** Stops the clients and waits for their last request. */
  stop: () => Promise<void>
}

/**
 * Real user traffic: `clients` loops, each sending `GET /order` with a new
 * `x-user-id` per request (so the route's weights spread them), waiting
 * `pauseMs` between requests (0: back to back), until stopped or `maxMs`
 * (default 30 s) passed: bounded even if a test forgets to stop it.
 */
export function userTraffic (url: string, opts: { clients?: number; pauseMs?: number; maxMs?: number; prefix?: string } = {}): UserTraffic {
  const statuses = new Map<string, number>()
  const deadline = Date.now() + (opts.maxMs ?? 30_000)
  let stopped = false
  let sent = 0
  let user = 0
  const prefix = opts.prefix ?? 'u'
  const client = async (): Promise<void> => {
    while (!stopped && Date.now() < deadline) {
      sent++
      let key: string
      try {
        const res = await fetch(`${url}/order`, { headers: { 'x-user-id': `${prefix}${user++}` }, signal: AbortSignal.timeout(5000) })
        await res.arrayBuffer()
        key = String(res.status)
      } catch (err) {
        key = `error ${(err as Error).message}`
      }
      statuses.set(key, (statuses.get(key) ?? 0) + 1)
      if (opts.pauseMs !== undefined && opts.pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, opts.pauseMs))
    }
  }
  const running = Promise.all(Array.from({ length: opts.clients ?? 4 }, client))
  return {
    statuses,
    sent: () => sent,
    stop: async () => { stopped = true; await running }
  }
}
