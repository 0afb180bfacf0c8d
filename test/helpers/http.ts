import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http'
import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'

/** A finished response as tests see it. */
export interface Reply {
  status: number
  headers: IncomingHttpHeaders
  rawHeaders: string[]
  body: Buffer
  json: <T = Record<string, unknown>>() => T
  sha256: string
}

/**
 * Sends one request with node:http (which, unlike undici, lets a test send
 * Connection, Keep-Alive, TE and other hop-by-hop headers) and reads it all.
 */
export async function send (url: string, opts: { method?: string; headers?: OutgoingHttpHeaders | string[]; body?: Buffer | string | Readable; agent?: false } = {}): Promise<Reply> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method ?? 'GET', headers: opts.headers as OutgoingHttpHeaders, agent: opts.agent ?? false }, (res) => {
      const chunks: Buffer[] = []
      const hash = createHash('sha256')
      res.on('data', (c: Buffer) => { chunks.push(c); hash.update(c) })
      res.on('error', reject)
      res.on('end', () => {
        const body = Buffer.concat(chunks)
        resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body, json: <T>() => JSON.parse(body.toString()) as T, sha256: hash.digest('hex') })
      })
    })
    req.on('error', reject)
    const b = opts.body
    if (b === undefined) req.end()
    else if (typeof b === 'string' || Buffer.isBuffer(b)) req.end(b)
    else b.pipe(req)
  })
}
