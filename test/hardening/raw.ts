import { connect, type Server, type Socket } from 'node:net'

/** Bytes and connections an upstream received, counted at the socket. */
export interface WireCount {
  connections: number
  bytes: number
}

/** Counts every connection and byte `server` receives (the "nothing reached the upstream" check). */
export function countWire (server: Server): WireCount {
  const c: WireCount = { connections: 0, bytes: 0 }
  server.on('connection', (s: Socket) => {
    c.connections++
    s.on('data', (d: Buffer) => { c.bytes += d.length })
  })
  return c
}

/** What a raw client read: the whole text and the status of the first final (non-1xx) response. */
export interface RawReply {
  text: string
  status: number
  /** True when the proxy closed the connection (FIN or reset) before `waitMs`. */
  closed: boolean
}

/**
 * Writes `parts` to host:port on a raw socket (pausing `gapMs` between parts),
 * reads until the server closes or `waitMs` pass, and parses the first final
 * status line. No HTTP client in between: the bytes are exactly the test's.
 */
export async function rawRequest (port: number, parts: Array<string | Buffer>, opts: { waitMs?: number; gapMs?: number } = {}): Promise<RawReply> {
  const waitMs = opts.waitMs ?? 2000
  return await new Promise((resolve) => {
    const chunks: Buffer[] = []
    const s = connect(port, '127.0.0.1')
    let done = false
    const finish = (closed: boolean): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      s.destroy()
      const text = Buffer.concat(chunks).toString('latin1')
      const m = /HTTP\/1\.[01] ([2-9]\d\d)/.exec(text)
      resolve({ text, status: m === null ? 0 : Number(m[1]), closed })
    }
    const timer = setTimeout(() => finish(false), waitMs)
    s.on('data', (d: Buffer) => chunks.push(d))
    s.on('end', () => finish(true))
    s.on('close', () => finish(true))
    s.on('error', () => finish(true))
    s.on('connect', () => {
      void (async () => {
        for (let i = 0; i < parts.length; i++) {
          if (i > 0 && opts.gapMs !== undefined) await new Promise((resolve) => setTimeout(resolve, opts.gapMs))
          if (s.destroyed) return
          s.write(parts[i]!)
        }
      })()
    })
  })
}

/** Resolves after `ms`. */
export async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * Polls `cond` every `intervalMs` until it is true; rejects after `timeoutMs`.
 * Tests wait for the condition they need instead of a fixed sleep.
 */
export async function waitFor (cond: () => boolean | Promise<boolean>, opts: { intervalMs?: number; timeoutMs?: number } = {}): Promise<void> {
  const interval = opts.intervalMs ?? 10
  const deadline = Date.now() + (opts.timeoutMs ?? 5000)
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('waitFor: condition not met in time')
    await sleep(interval)
  }
}
