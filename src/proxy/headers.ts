import type { IncomingMessage } from 'node:http'

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy Proxy-Connection:
 * never forwarded in either direction. Upgrade is handled by the WebSocket
 * path, never by plain forwarding. Expect is answered by Node itself (100
 * Continue) and undici refuses to send it.
 */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect'
])

/** Headers canaryd sets itself on the upstream request; a client's copy is replaced. */
const SET_BY_PROXY = new Set(['x-canaryd-version', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host'])

/** Names listed in a Connection header value, lower-cased (undefined when none). */
function connectionListed (value: string | undefined): Set<string> | undefined {
  if (value === undefined) return undefined
  // fast path: the two values nearly every request carries, without a split
  if (value.length === 10 || value.length === 5) {
    const v = value.toLowerCase()
    if (v === 'keep-alive' || v === 'close') return undefined
  }
  let out: Set<string> | undefined
  for (const part of value.split(',')) {
    const n = part.trim().toLowerCase()
    if (n.length === 0 || n === 'close' || n === 'keep-alive') continue
    ;(out ??= new Set()).add(n)
  }
  return out
}

/** Options applied while copying request headers. */
export interface RequestHeaderOptions {
  /** Header names containing `_`: drop them (default, as Envoy), refuse the request, or pass them on. */
  underscoreHeaders: 'drop' | 'reject' | 'allow'
}

/**
 * Framing facts the header pass sees anyway, handed back so the hot path
 * never builds Node's lazy `req.headers` object for them. A scratch object
 * the caller reuses (filled synchronously, read at once).
 */
export interface RequestFraming {
  /** The Content-Length value, undefined when absent. */
  contentLength: string | undefined
  /** True when Transfer-Encoding (validated to be exactly `chunked`) is present. */
  chunked: boolean
}

/** Why a request is refused before forwarding: the error code it is answered with. */
export type RequestProblem = 'CANARYD_ERR_BAD_REQUEST' | 'CANARYD_ERR_NOT_IMPLEMENTED'

/**
 * Builds the upstream request's headers as a flat [name, value, …] array from
 * the client's raw headers: hop-by-hop headers and those named in Connection
 * removed, X-Forwarded-For appended to, X-Forwarded-Proto and -Host kept when
 * an outer proxy set them (else set), `x-canaryd-version` set, Host preserved.
 *
 * The same single pass refuses what llhttp lets through but an upstream could
 * read differently (request smuggling, desync): more than one Host,
 * Content-Length or Transfer-Encoding field; Transfer-Encoding with
 * Content-Length; a Transfer-Encoding other than exactly `chunked` (501 for a
 * coding we do not implement, 400 when `chunked` appears obfuscated or
 * repeated); a `Trailer` field (request trailers are not forwarded, so a
 * request announcing them is refused rather than silently altered); an
 * underscore name under the `reject` policy. Returns the problem's error code
 * instead of the array in that case.
 */
export function buildUpstreamHeaders (req: IncomingMessage, version: string, clientIp: string, opts: RequestHeaderOptions, framing?: RequestFraming): string[] | RequestProblem {
  const raw = req.rawHeaders
  const listed = connectionListed(rawConnection(raw))
  const out: string[] = []
  let host: string | undefined
  let contentLength: string | undefined
  let xff = ''
  let proto = ''
  let fhost = ''
  let hosts = 0
  let lengths = 0
  let codings = 0
  let te = ''
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    const lower = name.toLowerCase()
    if (HOP_BY_HOP.has(lower)) {
      if (lower === 'transfer-encoding') {
        codings++
        te = raw[i + 1]!
      } else if (lower === 'trailer') {
        return 'CANARYD_ERR_BAD_REQUEST'
      }
      continue
    }
    if (SET_BY_PROXY.has(lower)) {
      const v = raw[i + 1]!
      if (lower === 'x-forwarded-for') xff = xff.length === 0 ? v : `${xff}, ${v}`
      else if (lower === 'x-forwarded-proto' && proto.length === 0) proto = v
      else if (lower === 'x-forwarded-host' && fhost.length === 0) fhost = v
      continue
    }
    if (lower === 'host') {
      hosts++
      host = raw[i + 1]!
    } else if (lower === 'content-length') {
      lengths++
      contentLength = raw[i + 1]!
    }
    if (listed !== undefined && listed.has(lower)) continue
    if (opts.underscoreHeaders !== 'allow' && name.includes('_')) {
      if (opts.underscoreHeaders === 'reject') return 'CANARYD_ERR_BAD_REQUEST'
      continue
    }
    out.push(name, raw[i + 1]!)
  }
  if (hosts > 1 || lengths > 1 || codings > 1) return 'CANARYD_ERR_BAD_REQUEST'
  if (codings === 1) {
    if (lengths !== 0 || req.httpVersionMinor === 0) return 'CANARYD_ERR_BAD_REQUEST'
    if (te.toLowerCase() !== 'chunked') return te.toLowerCase().includes('chunked') || te.includes(',') ? 'CANARYD_ERR_BAD_REQUEST' : 'CANARYD_ERR_NOT_IMPLEMENTED'
    // undici frames the stream body itself (chunked when no length is known)
  }
  out.push(
    'x-forwarded-for', xff.length === 0 ? clientIp : `${xff}, ${clientIp}`,
    'x-forwarded-proto', proto.length === 0 ? 'http' : proto,
    'x-forwarded-host', fhost.length === 0 ? (host ?? '') : fhost,
    'x-canaryd-version', version
  )
  if (framing !== undefined) {
    framing.contentLength = contentLength
    framing.chunked = codings === 1
  }
  return out
}

/**
 * The Connection header's value from the raw headers (joined with ", " when
 * repeated, as Node does), without building `req.headers`: only names of
 * length 10 are lower-cased and compared.
 */
function rawConnection (raw: readonly string[]): string | undefined {
  let value: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length === 10 && name.toLowerCase() === 'connection') value = value === undefined ? raw[i + 1]! : `${value}, ${raw[i + 1]!}`
  }
  return value
}

/** True when the client reached the edge over https, as told by X-Forwarded-Proto. */
export function isSecure (req: IncomingMessage): boolean {
  const p = req.headers['x-forwarded-proto']
  if (typeof p !== 'string' || p.length < 5) return false
  const comma = p.indexOf(',')
  const first = (comma === -1 ? p : p.slice(0, comma)).trim().toLowerCase()
  return first === 'https'
}

/** A raw header as undici (Buffer) or Node's http client (string) delivers it. */
function latin1 (v: Buffer | string): string {
  return typeof v === 'string' ? v : v.toString('latin1')
}

/**
 * Copies upstream response headers (names as sent: undici's raw Buffers or
 * Node's rawHeaders strings) into a flat string array for `res.writeHead`,
 * minus hop-by-hop headers and those the upstream named in Connection. Node
 * then frames the body itself.
 */
export function filterResponseHeaders (raw: ReadonlyArray<Buffer | string>, version: string, setCookie: string): string[] {
  const out: string[] = []
  let listed: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = latin1(raw[i]!)
    const lower = name.toLowerCase()
    if (lower === 'connection') listed = connectionListed(latin1(raw[i + 1]!))
    if (HOP_BY_HOP.has(lower) || lower === 'x-canaryd-version') continue
    out.push(name, latin1(raw[i + 1]!))
  }
  if (listed !== undefined) {
    for (let i = out.length - 2; i >= 0; i -= 2) {
      if (listed.has(out[i]!.toLowerCase())) out.splice(i, 2)
    }
  }
  out.push('x-canaryd-version', version)
  if (setCookie.length !== 0) out.push('set-cookie', setCookie)
  return out
}
