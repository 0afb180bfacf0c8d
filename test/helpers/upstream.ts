import { createHash } from 'node:crypto'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import { createServer as createNetServer, type AddressInfo } from 'node:net'

/** What a test upstream saw of one request. */
export interface SeenRequest {
  method: string
  url: string
  headers: IncomingMessage['headers']
  rawHeaders: string[]
  bodyBytes: number
  bodySha256: string
}

/** A real HTTP upstream on 127.0.0.1, port 0, that echoes what it received. */
export interface TestUpstream {
  server: Server
  origin: string
  name: string
  seen: SeenRequest[]
  close: () => Promise<void>
}

/**
 * Starts an upstream that records every request and answers JSON
 * `{version, method, url, headers, bodyBytes, bodySha256}` with status 200
 * (or `handler`'s own answer when given).
 */
export async function startUpstream (name: string, handler?: (req: IncomingMessage, res: import('node:http').ServerResponse, body: Buffer) => void): Promise<TestUpstream> {
  const seen: SeenRequest[] = []
  const server = createServer((req, res) => {
    const hash = createHash('sha256')
    const chunks: Buffer[] = []
    let bytes = 0
    req.on('data', (c: Buffer) => {
      hash.update(c)
      bytes += c.length
      if (chunks.length < 64) chunks.push(c)
    })
    req.on('end', () => {
      const s: SeenRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, bodyBytes: bytes, bodySha256: hash.digest('hex') }
      seen.push(s)
      if (handler !== undefined) {
        handler(req, res, Buffer.concat(chunks))
        return
      }
      const body = JSON.stringify({ version: name, ...s })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-upstream': name })
      res.end(body)
    })
  })
  server.keepAliveTimeout = 10_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    server,
    origin: `http://127.0.0.1:${port}`,
    name,
    seen,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

/** An origin where nothing listens: a loopback port bound, then closed (connections to it are refused). */
/**
 * Several named upstreams (`startUpstream` each), closed in teardown; closing
 * one a test already closed is not an error.
 */
export async function startUpstreams (t: { teardown: (fn: () => Promise<void>) => void }, names: string[]): Promise<Record<string, TestUpstream>> {
  const out: Record<string, TestUpstream> = {}
  for (const n of names) out[n] = await startUpstream(n)
  t.teardown(async () => { for (const u of Object.values(out)) await u.close().catch(() => {}) })
  return out
}

/**
 * Ports `freePort` picks from: below Linux's ephemeral range (32768-60999 by
 * default), which the kernel hands to port-0 listeners and to the local end
 * of every outgoing connection. A port taken from that range and closed
 * again can be reused by another test's connection before the test listens
 * on it (seen in CI: EADDRINUSE on a redirect port); one from below it is
 * taken only by another pick.
 */
const PICK_FROM = 20_000
const PICK_TO = 32_000

/** Whether a loopback listener can take `port` now (it is closed again at once). */
async function canListen (port: number): Promise<boolean> {
  const s = createNetServer()
  const ok = await new Promise<boolean>((resolve) => {
    s.once('error', () => { resolve(false) })
    s.listen(port, '127.0.0.1', () => { resolve(true) })
  })
  if (ok) await new Promise<void>((resolve) => s.close(() => resolve()))
  return ok
}

/** A loopback port nothing listens on now, for a test to listen on next (see PICK_FROM). */
export async function freePort (): Promise<number> {
  // bounded: 50 random tries, then a port the kernel picks (the old way)
  for (let i = 0; i < 50; i++) {
    const port = PICK_FROM + Math.floor(Math.random() * (PICK_TO - PICK_FROM))
    if (await canListen(port)) return port
  }
  const s = createNetServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  const port = (s.address() as AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

/** An origin nothing listens on (connections refused). */
export async function refusedOrigin (): Promise<string> {
  return `http://127.0.0.1:${await freePort()}`
}

/**
 * An upstream handler whose answer exercises the response path: a custom
 * status text and header, two Set-Cookie, and hop-by-hop headers
 * (Connection naming X-Up-Secret, Keep-Alive) the proxy must drop.
 */
export function richResponse (_req: IncomingMessage, res: import('node:http').ServerResponse): void {
  res.writeHead(201, 'Made It', [
    'X-Custom', 'resp-value',
    'Set-Cookie', 'a=1; Path=/',
    'Set-Cookie', 'b=2; Path=/',
    'Connection', 'X-Up-Secret',
    'X-Up-Secret', 'hide me',
    'Keep-Alive', 'timeout=5',
    'Content-Type', 'text/plain',
    'Content-Length', '11'
  ])
  res.end('hello world')
}
