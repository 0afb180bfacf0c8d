import type { IncomingMessage } from 'node:http'
import { Http2ServerRequest } from 'node:http2'
import { isIPv6 } from 'node:net'

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy Proxy-Connection:
 * never forwarded in either direction. Upgrade is handled by the WebSocket
 * path, never by plain forwarding. Expect is answered by Node itself (100
 * Continue) and undici refuses to send it.
 */
const HOP_BY_HOP = new Set([
  // HTTP2-Settings belongs to an h2c upgrade (RFC 7540 §3.2.1); Node's HTTP/2 refuses it in a response
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings'
])

/** How the request-header pass treats a name: one Map lookup per field instead of one per set. */
const HOP = 1
const SET_BY_PROXY = 2
const FROM_TRUSTED_ONLY = 3
const FIELDS = new Map<string, number>()
for (const n of HOP_BY_HOP) FIELDS.set(n, HOP)
// set by canaryd itself on the upstream request; a client's copy is replaced (X-Forwarded-For/-Proto/-Host kept from a trusted proxy).
// x-canaryd-mirror marks mirrored copies only: a client's must never make a real request look like one (an upstream may skip side effects for copies)
for (const n of ['x-canaryd-version', 'x-canaryd-mirror', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-real-ip']) FIELDS.set(n, SET_BY_PROXY)
// other headers frameworks build URLs or client facts from (Spring, Django, Rails, Express): passed on only from a trusted proxy, as Traefik does
for (const n of ['forwarded', 'x-forwarded-port', 'x-forwarded-prefix', 'x-forwarded-server', 'x-forwarded-ssl', 'x-forwarded-scheme']) FIELDS.set(n, FROM_TRUSTED_ONLY)

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

/** What the forwarded headers need to know of the client connection (fixed when it was accepted). */
export interface ClientConnection {
  /** The client reached canaryd over TLS. */
  readonly secure: boolean
  /** The peer's address (or the PROXY header's source). */
  readonly address: string
  /** The peer is a trusted proxy: its X-Forwarded-* are kept. */
  readonly trusted: boolean
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
export type RequestProblem = 'CANARYD_ERR_BAD_REQUEST' | 'CANARYD_ERR_NOT_IMPLEMENTED' | 'CANARYD_ERR_INVALID_HOST'

/**
 * Header names a client's `Connection` value never removes: without Host the
 * upstream would see the internal origin as Host (another virtual host), and
 * Content-Length frames the body we forward. Transfer-Encoding is hop-by-hop
 * anyway (undici frames the body itself).
 */
const NEVER_LISTED = new Set(['host', 'content-length'])

/** 1 for the characters of an RFC 3986 reg-name besides `%` (unreserved and sub-delims), by char code. */
const REG_NAME = new Uint8Array(128)
for (const c of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&\'()*+,;=') REG_NAME[c.charCodeAt(0)] = 1

function isHexDigit (c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102)
}

/** `h` from `from` on is a port: 1–5 digits, at most 65535. */
function isPort (h: string, from: number): boolean {
  const n = h.length - from
  if (n < 1 || n > 5) return false
  let v = 0
  for (let i = from; i < h.length; i++) {
    const c = h.charCodeAt(i)
    if (c < 48 || c > 57) return false
    v = v * 10 + c - 48
  }
  return v <= 65535
}

/**
 * The request's Host is acceptable: present on HTTP/1.1 (RFC 9112 §3.2; 1.0
 * may omit it) and, when present, a plain authority (see isValidHost). A
 * repeated Host is refused later, by buildUpstreamHeaders' count.
 */
export function hasValidHost (req: IncomingMessage): boolean {
  const host = req.headers.host
  return host === undefined ? req.httpVersionMinor === 0 : isValidHost(host)
}

/**
 * True when `h` is a valid Host value (RFC 9110 §7.2: uri-host [":" port]):
 * a non-empty RFC 3986 reg-name (which covers IPv4) or a bracketed IPv6
 * literal, then an optional port of 1–5 digits. Userinfo (`a@b`), paths,
 * queries, fragments, spaces and backslashes are refused: an upstream or a
 * log reader that splits the value differently from us would see another
 * host (nginx refuses the same). One pass over the characters, no
 * allocation but for an IPv6 literal.
 */
export function isValidHost (h: string): boolean {
  const n = h.length
  if (n === 0) return false
  if (h.charCodeAt(0) === 91 /* [ */) {
    const close = h.indexOf(']')
    if (close < 3 || !isIPv6(h.slice(1, close))) return false
    if (close === n - 1) return true
    return h.charCodeAt(close + 1) === 58 /* : */ && isPort(h, close + 2)
  }
  for (let i = 0; i < n; i++) {
    const c = h.charCodeAt(i)
    if (c === 58 /* : */) return i !== 0 && isPort(h, i + 1)
    if (c === 37 /* % */) {
      if (i + 2 >= n || !isHexDigit(h.charCodeAt(i + 1)) || !isHexDigit(h.charCodeAt(i + 2))) return false
      i += 2
      continue
    }
    if (c >= 128 || REG_NAME[c] === 0) return false
  }
  return true
}

/**
 * Builds the upstream request's headers as a flat [name, value, …] array from
 * the client's raw headers: hop-by-hop headers and those named in Connection
 * removed (never Host or Content-Length), `x-canaryd-version` set (last:
 * the mirror replaces its value for a copy), a client's `x-canaryd-mirror`
 * dropped, Host preserved. X-Forwarded-For/-Proto/-Host: from a trusted peer they are kept
 * (the peer appended to X-Forwarded-For; -Proto and -Host set only when
 * absent); from any other peer a client's copies are replaced, so nobody can
 * make an upstream believe a forged address or scheme (Traefik's and
 * Envoy's default). X-Real-IP is always canaryd's `client` (the address
 * the `ip` sticky key uses), whoever sent one.
 *
 * An HTTP/2 request (RFC 9113 §8.2.3, §8.3.1) loses its pseudo-headers,
 * gets `:authority` as Host (the caller put it in `req.headers.host`) and
 * has its `cookie` fields joined with "; " into one, as an HTTP/1.1 upstream
 * expects. Its body framing is the stream's: no Content-Length and a stream
 * not ended with the headers is a body of unknown length.
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
export function buildUpstreamHeaders (req: IncomingMessage, h2: boolean, version: string, conn: ClientConnection, client: string, opts: RequestHeaderOptions, framing?: RequestFraming): string[] | RequestProblem {
  const raw = req.rawHeaders
  const listed = connectionListed(rawConnection(raw))
  const out: string[] = []
  let cookie: string | undefined
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
    if (h2) {
      if (lower.charCodeAt(0) === 58 /* : */) continue
      if (lower === 'cookie') {
        cookie = cookie === undefined ? raw[i + 1]! : `${cookie}; ${raw[i + 1]!}`
        continue
      }
    }
    const kind = FIELDS.get(lower)
    if (kind === HOP) {
      if (lower === 'transfer-encoding') {
        codings++
        te = raw[i + 1]!
      } else if (lower === 'trailer') {
        return 'CANARYD_ERR_BAD_REQUEST'
      }
      continue
    }
    if (kind === SET_BY_PROXY) {
      // a client's own values are replaced, not extended, unless its hop is trusted: nothing to collect then
      if (!conn.trusted) continue
      const v = raw[i + 1]!
      if (lower === 'x-forwarded-for') xff = xff.length === 0 ? v : `${xff}, ${v}`
      else if (lower === 'x-forwarded-proto' && proto.length === 0) proto = v
      else if (lower === 'x-forwarded-host' && fhost.length === 0) fhost = v
      continue
    }
    if (kind === FROM_TRUSTED_ONLY && !conn.trusted) continue
    if (lower === 'host') {
      hosts++
      host = raw[i + 1]!
    } else if (lower === 'content-length') {
      lengths++
      contentLength = raw[i + 1]!
    }
    if (listed !== undefined && listed.has(lower) && !NEVER_LISTED.has(lower)) continue
    if (opts.underscoreHeaders !== 'allow' && name.includes('_')) {
      if (opts.underscoreHeaders === 'reject') return 'CANARYD_ERR_BAD_REQUEST'
      continue
    }
    out.push(name, raw[i + 1]!)
  }
  if (hosts > 1) return 'CANARYD_ERR_INVALID_HOST'
  if (lengths > 1 || codings > 1) return 'CANARYD_ERR_BAD_REQUEST'
  if (codings === 1) {
    if (lengths !== 0 || req.httpVersionMinor === 0) return 'CANARYD_ERR_BAD_REQUEST'
    if (te.toLowerCase() !== 'chunked') return te.toLowerCase().includes('chunked') || te.includes(',') ? 'CANARYD_ERR_BAD_REQUEST' : 'CANARYD_ERR_NOT_IMPLEMENTED'
    // undici frames the stream body itself (chunked when no length is known)
  }
  if (h2) {
    // :authority, put in req.headers.host by the caller (a Host field, when also sent, is the same)
    if (host === undefined) {
      host = req.headers.host ?? ''
      out.push('host', host)
    }
    if (cookie !== undefined) out.push('cookie', cookie)
  }
  const peer = conn.address
  out.push(
    'x-forwarded-for', xff.length === 0 ? peer : `${xff}, ${peer}`,
    'x-forwarded-proto', proto.length === 0 ? (conn.secure ? 'https' : 'http') : proto,
    'x-forwarded-host', fhost.length === 0 ? (host ?? '') : fhost,
    // the client address canaryd decided (as nginx-ingress and Traefik send it): never a client's own copy
    'x-real-ip', client,
    'x-canaryd-version', version
  )
  if (framing !== undefined) {
    framing.contentLength = contentLength
    // an HTTP/2 body has no framing header: the stream says whether one follows
    framing.chunked = codings === 1 || (h2 && contentLength === undefined && !(req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders)
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

/**
 * The request came over HTTP/2 (Node's compatibility request). Not
 * `httpVersionMajor === 2`: llhttp accepts an HTTP/1.1 request line saying
 * `HTTP/2.0`, and that request must still be refused as HTTP/1.1 (and its
 * connection closed).
 */
export function isHttp2 (req: IncomingMessage): boolean {
  return (req as unknown) instanceof Http2ServerRequest
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
