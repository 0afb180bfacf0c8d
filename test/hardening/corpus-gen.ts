/**
 * The issue-11 differential corpus, without sockets: a seeded generator of
 * raw client byte streams (pipelines of good, refused, malformed and
 * ambiguous requests, split writes, client aborts), a parser of what a client
 * reads back, and the oracle that judges one case from what the client read
 * and what the upstreams received. The oracle is a model of HTTP/1.1 framing
 * and of the refusal contract, not a table of expected statuses: a case
 * passes when every client-visible response pairs with exactly one request
 * the upstream parsed, in order, and nothing at or after the first bad
 * request reached an upstream.
 */

/** mulberry32: a tiny seeded PRNG, so every corpus is reproducible from its seed. */
export class Rng {
  #s: number
  constructor (seed: number) { this.#s = seed >>> 0 }
  /** Uniform in [0, 1). */
  next (): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0
    let t = this.#s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  /** Integer in [lo, hi], both included. */
  int (lo: number, hi: number): number { return lo + Math.floor(this.next() * (hi - lo + 1)) }
  /** True with probability p. */
  chance (p: number): boolean { return this.next() < p }
  /** One element of a non-empty list. */
  pick<T> (list: readonly T[]): T { return list[Math.floor(this.next() * list.length)]! }
}

/**
 * How an atom is expected to fare. `good`: forwarded and answered 2xx.
 * `refused`: parsed, then refused by canaryd (a CANARYD_ERR_ answer, closed).
 * `malformed`: llhttp cannot parse it (400, closed). `maybe`: a line-ending or
 * byte-range variant llhttp may accept (then it is good) or reject (then it is
 * malformed); the oracle reads which from what the upstream received.
 */
export type AtomKind = 'good' | 'refused' | 'malformed' | 'maybe'

/** One request of a pipeline, as written on the wire. */
export interface Atom {
  kind: AtomKind
  /** Short variant name (e.g. `post-chunked`, `dup-host`), for counts and failure reports. */
  variant: string
  /** `~c{case}~r{atom}~`: in the path (or an X-Marker header when the path cannot carry it). */
  marker: string
  method: string
  /** The body the upstream must receive when the atom is forwarded (de-chunked). */
  body: Buffer
  /** The connection ends after this atom's response (HTTP/1.0, Connection: close): only ever last. */
  closes: boolean
  /** The error is inside the body (e.g. a bad chunk size): its headers may legitimately have gone upstream. */
  bodyError: boolean
  wire: Buffer
}

/** How a case ends from the client side. */
export type Abort =
  | { kind: 'none' }
  /** Write only the first `at` bytes, wait `delayMs`, destroy the socket. */
  | { kind: 'byte'; at: number; delayMs: number }
  /** Write everything, destroy the socket `afterMs` later. */
  | { kind: 'time'; afterMs: number }

/** One generated case: a pipeline written on one connection. */
export interface Case {
  index: number
  atoms: Atom[]
  /** Every atom's bytes, concatenated. */
  bytes: Buffer
  /** ends[j]: offset just past atom j in `bytes`. */
  ends: number[]
  /** Offsets (ascending, inside `bytes`) where a new write starts. */
  splits: number[]
  /** Pause between two writes. */
  gapMs: number
  abort: Abort
}

/** The marker regex shared by the generator, the upstream log scan and the oracle. */
export const MARKER = /~c(\d+)~r(\d+)~/g

/** Host values that are valid authorities (reg-name, IPv4, [IPv6], optional port). */
const GOOD_HOSTS = ['app.test', 'app.test:8080', '127.0.0.1', '127.0.0.1:80', '[::1]', '[::1]:8443', 'a-b.example', 'x_y.test', 'sub.domain.example.org', 'APP.TEST', 'localhost']
/** Host values that are not valid authorities (contract: 400 CANARYD_ERR_INVALID_HOST). */
const BAD_HOSTS = ['a@b', 'evil@127.0.0.1', '127.0.0.1/../admin?x', 'app.test:80x', '[::1', 'a b', 'app.test#frag', 'app.test/x', 'a\\b', 'h:1:2']
/** tchar without `~` (reserved for markers) and `_` (dropped by canaryd, fine but noisy). */
const TCHAR = "!#$%&'*+-.^`|0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
const ALNUM = 'abcdefghijklmnopqrstuvwxyz0123456789'
/** Visible ASCII without `~`, plus space and tab: a field value may hold all of them. */
const VCHAR = Array.from({ length: 0x7e - 0x21 }, (_, i) => String.fromCharCode(0x21 + i)).join('') + ' \t'

function str (rng: Rng, alphabet: string, lo: number, hi: number): string {
  const n = rng.int(lo, hi)
  let s = ''
  for (let i = 0; i < n; i++) s += alphabet[Math.floor(rng.next() * alphabet.length)]
  return s
}

/** A field value: visible ASCII with inner spaces/tabs, never starting or ending with whitespace. */
function value (rng: Rng, lo: number, hi: number): string {
  const v = str(rng, VCHAR, lo, hi).replace(/^[ \t]+|[ \t]+$/g, '')
  return v
}

/** Random bytes without `~` (so a body can never forge a marker). */
function body (rng: Rng, n: number): Buffer {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) {
    let x = rng.int(0, 254)
    if (x === 0x7e) x = 0x7f
    b[i] = x
  }
  return b
}

function bodySize (rng: Rng): number {
  const r = rng.next()
  if (r < 0.15) return 0
  if (r < 0.75) return rng.int(1, 200)
  if (r < 0.95) return rng.int(200, 6000)
  return rng.int(6000, 40_000)
}

/**
 * `Name: value` with a random but valid spelling of the separator and, off
 * framing fields, trailing whitespace (llhttp rejects `Content-Length: 3\t`
 * and misreads `Transfer-Encoding: chunked\t`: those are malformed atoms).
 */
function field (rng: Rng, name: string, v: string, framing = false): string {
  const sep = rng.pick([': ', ': ', ': ', ':', ':  ', ':\t'])
  const tail = !framing && rng.chance(0.1) ? rng.pick([' ', '\t', '  ']) : ''
  return `${name}${sep}${v}${tail}\r\n`
}

function caseOf (rng: Rng, name: string): string {
  const r = rng.next()
  if (r < 0.7) return name
  if (r < 0.85) return name.toLowerCase()
  return name.toUpperCase()
}

/** A path carrying the marker first, then a random but valid tail. */
function path (rng: Rng, marker: string): string {
  const tail = rng.pick(['', 'x', 'a/b/c', 'a/./b', '%2e%2e/x', 'x;p=1', 'q?a=1&b=%20', '?', 'x?y=a/b', `${str(rng, ALNUM, 1, 40)}`, 'x?' + str(rng, ALNUM, 0, 200)])
  return `/${marker}/${tail}`
}

/** Headers every good request may carry: routing, benign, edge-case names and values. Counted in `n`. */
function benign (rng: Rng, budget: number, keepAlive = true): { text: string; n: number } {
  let text = ''
  let n = 0
  // one long value at most: several could pass limits.maxHeaderBytes and turn a good request into a 431
  let long = false
  const route = rng.next()
  if (route < 0.3) { text += field(rng, caseOf(rng, 'X-Canary'), rng.pick(['stable', 'canary'])); n++ } else if (route < 0.7) { text += field(rng, 'X-User-Id', `u${rng.int(0, 1e6)}`); n++ }
  const many = rng.chance(0.06)
  const count = many ? rng.int(15, Math.max(15, budget - 1)) : rng.int(0, 5)
  for (let i = 0; i < count && n < budget; i++) {
    const kind = rng.next()
    let name = `X-G${i}-${str(rng, ALNUM, 1, 8)}`
    if (kind < 0.1) name = `X-${str(rng, TCHAR, 1, 12)}`
    let v = value(rng, 1, 40)
    const vk = rng.next()
    if (vk < 0.08) v = ''
    else if (vk < 0.12 && !long) { v = value(rng, 1000, 4000); long = true } else if (vk < 0.2) v = 'a\tb c\t d'
    text += field(rng, name, v)
    n++
  }
  if (keepAlive && rng.chance(0.1)) { text += field(rng, 'Connection', 'keep-alive'); n++ }
  return { text, n }
}

function hostLine (rng: Rng): string {
  return field(rng, caseOf(rng, 'Host'), rng.pick(GOOD_HOSTS))
}

/** A random valid chunked encoding of `b`; extensions and trailer fields sometimes. */
function chunked (rng: Rng, b: Buffer): string {
  let out = ''
  let i = 0
  while (i < b.length) {
    const n = Math.min(b.length - i, rng.chance(0.3) ? b.length - i : rng.int(1, Math.max(1, Math.ceil(b.length / 3))))
    let size = n.toString(16)
    if (rng.chance(0.2)) size = size.toUpperCase()
    if (rng.chance(0.1)) size = `00${size}`
    const ext = rng.chance(0.15) ? rng.pick([';a', ';a=b', ';name="q s"', ';x=1;y=2']) : ''
    out += `${size}${ext}\r\n${b.subarray(i, i + n).toString('latin1')}\r\n`
    i += n
  }
  out += rng.chance(0.1) ? '000' : '0'
  if (rng.chance(0.08)) out += ';last=1'
  out += '\r\n'
  if (rng.chance(0.08)) out += 'X-Trailer-Field: v\r\n'
  return `${out}\r\n`
}

const MAX_FIELDS = 40

interface Built { method: string; wire: string; body: Buffer; closes: boolean; variant: string; bodyError?: boolean }

/** A request canaryd must forward. `last`: it may close the connection (HTTP/1.0, Connection: close). */
function goodAtom (rng: Rng, marker: string, last: boolean): Built {
  const variants = ['get', 'get', 'get', 'head', 'post-cl', 'post-cl', 'post-chunked', 'post-chunked', 'put-cl', 'delete', 'options', 'patch-cl', 'get-abs-form', 'get-cl0', 'post-expect-100', 'post-te-case']
  if (last) variants.push('http10', 'conn-close', 'conn-close')
  const variant = rng.pick(variants)
  const p = path(rng, marker)
  const b = benign(rng, MAX_FIELDS - 4, variant !== 'conn-close' && variant !== 'http10')
  const h = hostLine(rng)
  const withBody = (method: string, framing: 'cl' | 'chunked' | 'te-case', extra = ''): Built => {
    const data = body(rng, bodySize(rng))
    if (framing === 'cl') {
      const cl = rng.chance(0.05) ? `00${data.length}` : String(data.length)
      return { method, variant, closes: false, body: data, wire: `${method} ${p} HTTP/1.1\r\n${h}${b.text}${extra}${field(rng, caseOf(rng, 'Content-Length'), cl, true)}\r\n${data.toString('latin1')}` }
    }
    const te = framing === 'te-case' ? rng.pick(['Chunked', 'CHUNKED', 'cHuNkEd']) : 'chunked'
    return { method, variant, closes: false, body: data, wire: `${method} ${p} HTTP/1.1\r\n${h}${b.text}${extra}${field(rng, caseOf(rng, 'Transfer-Encoding'), te, true)}\r\n${chunked(rng, data)}` }
  }
  switch (variant) {
    case 'head': return { method: 'HEAD', variant, closes: false, body: Buffer.alloc(0), wire: `HEAD ${p} HTTP/1.1\r\n${h}${b.text}\r\n` }
    case 'post-cl': return withBody('POST', 'cl')
    case 'post-chunked': return withBody('POST', 'chunked')
    case 'post-te-case': return withBody('POST', 'te-case')
    case 'put-cl': return withBody('PUT', 'cl')
    case 'patch-cl': return withBody('PATCH', 'cl')
    case 'post-expect-100': return withBody('POST', 'cl', 'Expect: 100-continue\r\n')
    case 'delete': return { method: 'DELETE', variant, closes: false, body: Buffer.alloc(0), wire: `DELETE ${p} HTTP/1.1\r\n${h}${b.text}\r\n` }
    case 'options': return { method: 'OPTIONS', variant, closes: false, body: Buffer.alloc(0), wire: `OPTIONS ${p} HTTP/1.1\r\n${h}${b.text}\r\n` }
    case 'get-abs-form': return { method: 'GET', variant, closes: false, body: Buffer.alloc(0), wire: `GET http://app.test${p} HTTP/1.1\r\n${h}${b.text}\r\n` }
    case 'get-cl0': return { method: 'GET', variant, closes: false, body: Buffer.alloc(0), wire: `GET ${p} HTTP/1.1\r\n${h}${b.text}Content-Length: 0\r\n\r\n` }
    case 'http10': return { method: 'GET', variant, closes: true, body: Buffer.alloc(0), wire: `GET ${p} HTTP/1.0\r\n${h}${b.text}\r\n` }
    case 'conn-close': return { method: 'GET', variant, closes: true, body: Buffer.alloc(0), wire: `GET ${p} HTTP/1.1\r\n${h}${b.text}Connection: close\r\n\r\n` }
    default: return { method: 'GET', variant, closes: false, body: Buffer.alloc(0), wire: `GET ${p} HTTP/1.1\r\n${h}${b.text}\r\n` }
  }
}

/** A request llhttp parses and canaryd must refuse (contract list of issue 11, plus the framing refusals). */
function refusedAtom (rng: Rng, marker: string): Built {
  const p = path(rng, marker)
  const H = hostLine(rng)
  const mk = `X-Marker: ${marker}\r\n`
  const b = benign(rng, 5).text
  const variant = rng.pick(['dup-host', 'no-host', 'trace', 'invalid-host', 'invalid-host', 'empty-host', 'expect-foo', 'trailer', 'te-gzip-te-chunked', 'http10-te', 'options-star', 'url-too-long', 'too-many-fields', 'te-gzip', 'te-chunked-chunked', 'cl-te', 'dup-cl', 'h2c-upgrade', 'http20', 'connect'])
  const data = body(rng, rng.int(0, 50))
  const d = data.toString('latin1')
  const r = (method: string, wire: string): Built => ({ method, variant, closes: false, body: Buffer.alloc(0), wire })
  switch (variant) {
    case 'dup-host': return r('GET', `GET ${p} HTTP/1.1\r\n${H}${b}Host: other.test\r\n\r\n`)
    case 'no-host': return r('GET', `GET ${p} HTTP/1.1\r\n${b}\r\n`)
    case 'trace': return r('TRACE', `TRACE ${p} HTTP/1.1\r\n${H}${b}\r\n`)
    case 'invalid-host': return r('GET', `GET ${p} HTTP/1.1\r\n${b}Host: ${rng.pick(BAD_HOSTS)}\r\n\r\n`)
    case 'empty-host': return r('GET', `GET ${p} HTTP/1.1\r\n${b}Host:\r\n\r\n`)
    case 'expect-foo': return r('POST', `POST ${p} HTTP/1.1\r\n${H}${b}Expect: ${rng.pick(['foo', '200-ok', '100-continue-x'])}\r\nContent-Length: ${data.length}\r\n\r\n${d}`)
    case 'trailer': return r('POST', `POST ${p} HTTP/1.1\r\n${H}${b}Trailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(rng, data)}`)
    case 'te-gzip-te-chunked': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\n${b}Transfer-Encoding: chunked\r\n\r\n${chunked(rng, data)}`)
    case 'http10-te': return r('POST', `POST ${p} HTTP/1.0\r\n${H}${b}Transfer-Encoding: chunked\r\n\r\n${chunked(rng, data)}`)
    case 'options-star': return r('OPTIONS', `OPTIONS * HTTP/1.1\r\n${H}${mk}${b}\r\n`)
    case 'url-too-long': return r('GET', `GET ${p}${'u'.repeat(1100)} HTTP/1.1\r\n${H}${b}\r\n`)
    case 'too-many-fields': return r('GET', `GET ${p} HTTP/1.1\r\n${H}${Array.from({ length: MAX_FIELDS + rng.int(1, 10) }, (_, i) => `X-F${i}: v\r\n`).join('')}\r\n`)
    case 'te-gzip': return r('POST', `POST ${p} HTTP/1.1\r\n${H}${b}Transfer-Encoding: gzip\r\n\r\n${d}`)
    case 'te-chunked-chunked': return r('POST', `POST ${p} HTTP/1.1\r\n${H}${b}Transfer-Encoding: chunked, chunked\r\n\r\n${chunked(rng, data)}`)
    case 'cl-te': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Content-Length: ${data.length + 5}\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(rng, data)}`)
    case 'dup-cl': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Content-Length: ${data.length}\r\nContent-Length: ${data.length}\r\n\r\n${d}`)
    case 'h2c-upgrade': return r('GET', `GET ${p} HTTP/1.1\r\n${H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n`)
    case 'http20': return r('GET', `GET ${p} HTTP/2.0\r\n${H}${b}\r\n`)
    default: return r('CONNECT', `CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n${mk}\r\n`)
  }
}

/** A request llhttp cannot parse. */
function malformedAtom (rng: Rng, marker: string): Built {
  const p = path(rng, marker)
  const H = hostLine(rng)
  const mk = `X-Marker: ${marker}\r\n`
  const b = benign(rng, 5).text
  const variant = rng.pick(['bad-chunk-size', 'chunk-too-long', 'bare-cr', 'nul-value', 'space-before-colon', 'bad-method', 'lower-method', 'bad-version', 'space-in-target', 'obs-fold', 'bad-name-char', 'cl-nonnumeric', 'cl-plus', 'cl-negative', 'empty-name', 'nonascii-name', 'ctl-value', 'headers-too-large', 'te-trailing-tab', 'cl-trailing-tab', 'garbage'])
  const r = (method: string, wire: string, bodyError = false): Built => ({ method, variant, closes: false, body: Buffer.alloc(0), wire, bodyError })
  switch (variant) {
    case 'bad-chunk-size': return r('POST', `POST ${p} HTTP/1.1\r\n${H}${b}Transfer-Encoding: chunked\r\n\r\n${rng.pick(['zz', '-1', ' 3', '3 x', 'fffffffffffffffffff'])}\r\nabc\r\n0\r\n\r\n`, true)
    case 'chunk-too-long': return r('POST', `POST ${p} HTTP/1.1\r\n${H}${b}Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n`, true)
    case 'bare-cr': return r('GET', `GET ${p} HTTP/1.1\r\n${H}X-A: b\rc\r\n${b}\r\n`)
    case 'nul-value': return r('GET', `GET ${p} HTTP/1.1\r\n${H}X-A: b\x00c\r\n\r\n`)
    case 'space-before-colon': return r('GET', `GET ${p} HTTP/1.1\r\n${H}${rng.pick(['X-A : b', 'Content-Length : 0', 'Transfer-Encoding : chunked'])}\r\n\r\n`)
    case 'bad-method': return r('G@T', `G@T ${p} HTTP/1.1\r\n${H}\r\n`)
    case 'lower-method': return r('get', `get ${p} HTTP/1.1\r\n${H}\r\n`)
    case 'bad-version': return r('GET', `GET ${p} ${rng.pick(['HTTP/1.1x', 'HTTP/1.', 'HTTX/1.1', 'HTTP/11'])}\r\n${H}\r\n`)
    case 'space-in-target': return r('GET', `GET ${p}a b HTTP/1.1\r\n${H}\r\n`)
    case 'obs-fold': return r('GET', `GET ${p} HTTP/1.1\r\n${H}X-A: b\r\n ${rng.pick(['c', 'Transfer-Encoding: chunked'])}\r\n\r\n`)
    case 'bad-name-char': return r('GET', `GET ${p} HTTP/1.1\r\n${H}${rng.pick(['X(A)', 'X"A', 'X/A', 'X[A]', 'X{A}', 'X@A', 'X=A'])}: b\r\n\r\n`)
    case 'cl-nonnumeric': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Content-Length: ${rng.pick(['abc', '1a', '0x10', '1 2', '1.5'])}\r\n\r\nabc`)
    case 'cl-plus': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Content-Length: +3\r\n\r\nabc`)
    case 'cl-negative': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Content-Length: -1\r\n\r\nabc`)
    case 'empty-name': return r('GET', `GET ${p} HTTP/1.1\r\n${H}: b\r\n\r\n`)
    case 'nonascii-name': return r('GET', `GET ${p} HTTP/1.1\r\n${H}X-\xe9: b\r\n\r\n`)
    case 'ctl-value': return r('GET', `GET ${p} HTTP/1.1\r\n${H}X-A: b${rng.pick(['\x01', '\x07', '\x1f', '\x7f'])}c\r\n\r\n`)
    // llhttp hands Node the request (value trimmed to `chunked`), then fails on the body: an error inside the body
    case 'te-trailing-tab': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n`, true)
    case 'cl-trailing-tab': return r('POST', `POST ${p} HTTP/1.1\r\n${H}Content-Length: 3\t\r\n\r\nabc`)
    case 'headers-too-large': return r('GET', `GET ${p} HTTP/1.1\r\n${H}X-Big: ${'b'.repeat(17_000)}\r\n\r\n`)
    default: return r('?', `${rng.pick(['\x00\x01\x02', 'HELLO', '{"json":1}', '\x16\x03\x01\x02\x00', 'PRI * HTTP/2.0'])}\r\n${mk}\r\n`)
  }
}

/** A request llhttp may accept or reject: line-ending and byte-range variants. */
function maybeAtom (rng: Rng, marker: string): Built {
  const p = path(rng, marker)
  const host = rng.pick(GOOD_HOSTS)
  const variant = rng.pick(['lf-all', 'lf-request-line', 'lf-final', 'lf-post-cl', 'obs-text-value', 'double-space', 'leading-crlf', 'tab-in-value-only'])
  const r = (method: string, wire: string, data: Buffer = Buffer.alloc(0)): Built => ({ method, variant, closes: false, body: data, wire })
  switch (variant) {
    case 'lf-all': return r('GET', `GET ${p} HTTP/1.1\nHost: ${host}\nX-A: b\n\n`)
    case 'lf-request-line': return r('GET', `GET ${p} HTTP/1.1\nHost: ${host}\r\n\r\n`)
    case 'lf-final': return r('GET', `GET ${p} HTTP/1.1\r\nHost: ${host}\r\n\n`)
    case 'lf-post-cl': {
      const data = body(rng, rng.int(0, 40))
      return r('POST', `POST ${p} HTTP/1.1\nHost: ${host}\nContent-Length: ${data.length}\n\n${data.toString('latin1')}`, data)
    }
    case 'obs-text-value': return r('GET', `GET ${p} HTTP/1.1\r\nHost: ${host}\r\nX-A: caf\xe9 \xff\x80\r\n\r\n`)
    case 'double-space': return r('GET', `GET  ${p} HTTP/1.1\r\nHost: ${host}\r\n\r\n`)
    case 'leading-crlf': return r('GET', `\r\nGET ${p} HTTP/1.1\r\nHost: ${host}\r\n\r\n`)
    default: return r('GET', `GET ${p} HTTP/1.1\r\nHost: ${host}\r\nX-A:\t\t\r\n\r\n`)
  }
}

/**
 * Generates `count` cases from `seed`. About a third are all-good pipelines,
 * a third hold one refused request, a fifth one malformed request, the rest a
 * random mix; some are split over several writes and some aborted by the
 * client at a random byte offset or time.
 */
export function generateCorpus (seed: number, count: number): Case[] {
  const rng = new Rng(seed)
  const out: Case[] = []
  for (let i = 0; i < count; i++) {
    const n = rng.pick([1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6])
    const shape = rng.next()
    const badAt = rng.int(0, n - 1)
    const atoms: Atom[] = []
    for (let j = 0; j < n; j++) {
      const marker = `~c${i}~r${j}~`
      let kind: AtomKind = rng.chance(0.1) ? 'maybe' : 'good'
      if (shape < 0.35) { /* all good */ } else if (shape < 0.65) { if (j === badAt) kind = 'refused' } else if (shape < 0.85) { if (j === badAt) kind = 'malformed' } else {
        const r = rng.next()
        kind = r < 0.5 ? 'good' : r < 0.75 ? 'refused' : r < 0.9 ? 'malformed' : 'maybe'
      }
      const built = kind === 'good' ? goodAtom(rng, marker, j === n - 1) : kind === 'refused' ? refusedAtom(rng, marker) : kind === 'malformed' ? malformedAtom(rng, marker) : maybeAtom(rng, marker)
      atoms.push({ kind, variant: built.variant, marker, method: built.method, body: built.body, closes: built.closes, bodyError: built.bodyError ?? false, wire: Buffer.from(built.wire, 'latin1') })
    }
    const bytes = Buffer.concat(atoms.map((a) => a.wire))
    const ends: number[] = []
    let at = 0
    for (const a of atoms) { at += a.wire.length; ends.push(at) }
    const splits: number[] = []
    if (rng.chance(0.4) && bytes.length > 1) {
      const k = rng.int(1, 3)
      for (let s = 0; s < k; s++) splits.push(rng.int(1, bytes.length - 1))
      splits.sort((a, b) => a - b)
    }
    const r = rng.next()
    let abort: Abort = { kind: 'none' }
    if (r < 0.1 && bytes.length > 1) abort = { kind: 'byte', at: rng.int(1, bytes.length - 1), delayMs: rng.int(0, 5) }
    else if (r < 0.15) abort = { kind: 'time', afterMs: rng.int(0, 8) }
    out.push({ index: i, atoms, bytes, ends, splits: [...new Set(splits)], gapMs: rng.int(0, 3), abort })
  }
  return out
}

/** One response as a client reads it. */
export interface ClientResponse {
  status: number
  /** Lower-cased names; repeated fields joined with ', '. */
  headers: Record<string, string>
  body: Buffer
  /** The whole message arrived (by its framing). */
  complete: boolean
}

/** Everything a client read on one connection, split into final responses. */
export interface ParsedStream {
  responses: ClientResponse[]
  /** 1xx interim responses skipped. */
  interim: number
  /** Bytes that are not an HTTP response (after the last parsed one), or ''. */
  junk: string
}

/**
 * Splits a client's received bytes into responses, each framed as RFC 9112 §6
 * says: no body for HEAD (the upstream marks its HEAD answers `x-method:
 * HEAD`), 1xx, 204 and 304; chunked; Content-Length; else until close.
 * `closed`: the server closed the connection (makes a close-delimited body complete).
 */
export function parseResponses (buf: Buffer, closed: boolean): ParsedStream {
  const responses: ClientResponse[] = []
  let interim = 0
  let pos = 0
  const s = buf.toString('latin1')
  while (pos < s.length) {
    const headEnd = s.indexOf('\r\n\r\n', pos)
    const m = /^HTTP\/1\.[01] (\d{3})[^\r\n]*/.exec(s.slice(pos, pos + 200))
    if (m === null) return { responses, interim, junk: s.slice(pos, pos + 200) }
    const status = Number(m[1])
    if (headEnd === -1) {
      responses.push({ status, headers: {}, body: Buffer.alloc(0), complete: false })
      return { responses, interim, junk: '' }
    }
    const headers: Record<string, string> = {}
    for (const line of s.slice(pos, headEnd).split('\r\n').slice(1)) {
      const c = line.indexOf(':')
      if (c <= 0) return { responses, interim, junk: s.slice(pos, pos + 200) }
      const name = line.slice(0, c).toLowerCase()
      const v = line.slice(c + 1).trim()
      headers[name] = headers[name] === undefined ? v : `${headers[name]}, ${v}`
    }
    pos = headEnd + 4
    if (status >= 100 && status < 200 && status !== 101) { interim++; continue }
    if (status === 101) {
      responses.push({ status, headers, body: buf.subarray(pos), complete: true })
      return { responses, interim, junk: '' }
    }
    if (status === 204 || status === 304 || headers['x-method'] === 'HEAD') {
      responses.push({ status, headers, body: Buffer.alloc(0), complete: true })
      continue
    }
    if ((headers['transfer-encoding'] ?? '').toLowerCase().includes('chunked')) {
      const parts: Buffer[] = []
      let complete = false
      for (;;) {
        const eol = s.indexOf('\r\n', pos)
        if (eol === -1) break
        const size = parseInt(s.slice(pos, eol).split(';')[0]!, 16)
        if (Number.isNaN(size)) return { responses, interim, junk: s.slice(pos, pos + 200) }
        if (size === 0) {
          const end = s.indexOf('\r\n\r\n', eol)
          if (end === -1) { pos = s.length; break }
          pos = end + 4
          complete = true
          break
        }
        if (eol + 2 + size + 2 > s.length) { parts.push(buf.subarray(eol + 2, Math.min(s.length, eol + 2 + size))); pos = s.length; break }
        parts.push(buf.subarray(eol + 2, eol + 2 + size))
        pos = eol + 2 + size + 2
      }
      if (!complete) pos = s.length
      responses.push({ status, headers, body: Buffer.concat(parts), complete })
      continue
    }
    if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length'])
      const end = Math.min(s.length, pos + n)
      responses.push({ status, headers, body: buf.subarray(pos, end), complete: end - pos === n })
      pos = end
      continue
    }
    responses.push({ status, headers, body: buf.subarray(pos), complete: closed })
    pos = s.length
  }
  return { responses, interim, junk: '' }
}

/** One request an upstream parsed that carries this case's marker. */
export interface UpstreamRecord {
  atom: number
  version: string
  seq: number
  method: string
  url: string
  body: Buffer
  /** Logical clock when the upstream parsed it and when it sent its answer (-1: not yet). */
  arrive: number
  answer: number
  /** The body the upstream answered with ('' for HEAD and 204). */
  sent: string
}

/** What one case produced on both sides. */
export interface Observation {
  received: Buffer
  /** The server closed the connection before the client stopped reading. */
  serverClosed: boolean
  /** Bytes the client actually wrote. */
  written: number
  /** The client destroyed the connection itself (Abort other than none). */
  aborted: boolean
  /**
   * The client saw a reset (ECONNRESET). A server that closes while the
   * client's later pipelined bytes are still arriving makes its kernel send
   * RST, and a client that had not read the answer yet loses it: the
   * lingering-close problem. Only allowed where the server had to close.
   */
  reset: boolean
  /** Upstream requests of this case, in any order. */
  upstream: UpstreamRecord[]
  /** rawCount[j]: how many times atom j's marker appears in every byte the upstreams received. */
  rawCount: number[]
}

/** Statuses a refusal may carry (404 no-route and 503 are not refusals). */
const REFUSAL_STATUSES = new Set([400, 405, 408, 413, 414, 417, 431, 501])

/**
 * Judges one case; returns its problems ([] = pass). The model: atoms are
 * served in order; the first bad atom (refused or malformed, or a `maybe`
 * the upstream never saw) gets one CANARYD_ERR_ answer with Connection:
 * close, after the complete answers of every atom before it, and the
 * connection ends; no atom at or after it puts a byte upstream. An aborted
 * case may stop anywhere, but what it did get must fit the same model.
 */
export function judgeCase (c: Case, o: Observation): string[] {
  const problems: string[] = []
  const n = c.atoms.length
  const byAtom = new Map<number, UpstreamRecord>()
  for (const u of o.upstream) {
    if (byAtom.has(u.atom)) problems.push(`atom ${u.atom} reached the upstream twice`)
    byAtom.set(u.atom, u)
  }
  // a `maybe` atom is good when the upstream saw it, else it was rejected
  const bad = c.atoms.map((a, j) => a.kind === 'refused' || a.kind === 'malformed' || (a.kind === 'maybe' && !byAtom.has(j) && o.rawCount[j] === 0))
  let firstBad = bad.indexOf(true)
  if (firstBad === -1) firstBad = n
  const closer = c.atoms.findIndex((a) => a.closes)
  // atoms that can be answered at all: a closing atom ends the connection after its response
  const served = closer === -1 ? n : closer + 1

  // (1) upstream side: only atoms before the first bad one, well-formed, bodies intact, in order, one at a time
  for (let j = 0; j < n; j++) {
    const raw = o.rawCount[j] ?? 0
    const parsed = byAtom.has(j) ? 1 : 0
    const a = c.atoms[j]!
    if (j > firstBad && raw > 0) problems.push(`atom ${j} (${a.kind} ${a.variant}) is after bad atom ${firstBad} but ${raw} copies of its marker reached an upstream`)
    if (j === firstBad && raw > 0 && !(a.bodyError && raw === 1 && parsed === 0)) problems.push(`bad atom ${j} (${a.kind} ${a.variant}) put bytes upstream (${raw} markers, ${parsed} parsed)`)
    if (j < firstBad && raw !== parsed) {
      const partialAllowed = o.aborted && parsed === 0 && raw === 1
      if (!partialAllowed) problems.push(`atom ${j} (${a.variant}): ${raw} markers in the upstream bytes but ${parsed} parsed requests`)
    }
  }
  for (const u of o.upstream) {
    const a = c.atoms[u.atom]
    if (a === undefined) { problems.push(`upstream request for unknown atom ${u.atom}`); continue }
    if (u.atom >= firstBad) continue // already reported above
    if (u.method !== a.method) problems.push(`atom ${u.atom}: upstream method ${u.method}, sent ${a.method}`)
    if (!u.body.equals(a.body)) problems.push(`atom ${u.atom} (${a.variant}): upstream body ${u.body.length} B differs from the ${a.body.length} B sent`)
    if (c.ends[u.atom]! > o.written) problems.push(`atom ${u.atom} reached the upstream but the client wrote only ${o.written} of its ${c.ends[u.atom]} bytes`)
  }
  const ordered = [...o.upstream].sort((x, y) => x.arrive - y.arrive)
  for (let k = 0; k < ordered.length; k++) {
    const u = ordered[k]!
    if (u.atom !== k) problems.push(`upstream arrival #${k} is atom ${u.atom} (expected atom ${k}: a prefix, in order)`)
    const prev = ordered[k - 1]
    if (prev !== undefined && (prev.answer === -1 || u.arrive < prev.answer)) problems.push(`atom ${u.atom} reached the upstream before atom ${prev.atom} was answered (pipeline not one at a time)`)
  }

  // (2) client side
  const parsed = parseResponses(o.received, o.serverClosed)
  const rs = parsed.responses
  if (parsed.junk.length > 0) problems.push(`unparseable bytes after ${rs.length} responses: ${JSON.stringify(parsed.junk.slice(0, 80))}`)
  const used = new Set<UpstreamRecord>()
  for (let i = 0; i < rs.length; i++) {
    const r = rs[i]!
    const last = i === rs.length - 1
    if (!r.complete && !(last && (o.aborted || o.reset))) problems.push(`response ${i} (status ${r.status}) is incomplete`)
    if (i < served && i < firstBad) {
      if (r.status < 200 || r.status > 299) { problems.push(`response ${i} is ${r.status} ${errorCode(r)}, expected 2xx for atom ${i} (${c.atoms[i]!.variant})`); continue }
      const u = o.upstream.find((x) => x.version === r.headers['x-version'] && String(x.seq) === r.headers['x-seq'])
      if (u === undefined) { problems.push(`response ${i} (2xx) pairs with no upstream request (x-version ${r.headers['x-version']}, x-seq ${r.headers['x-seq']})`); continue }
      if (used.has(u)) problems.push(`response ${i} repeats the answer to atom ${u.atom}`)
      used.add(u)
      if (u.atom !== i) problems.push(`response ${i} is the answer to atom ${u.atom}`)
      if (r.complete && r.body.toString('latin1') !== u.sent) problems.push(`response ${i}: body differs from what the upstream sent`)
    } else if (i === firstBad) {
      const code = errorCode(r)
      if (!REFUSAL_STATUSES.has(r.status) && !(c.atoms[i]!.bodyError && r.status >= 400)) problems.push(`response ${i} to bad atom (${c.atoms[i]!.kind} ${c.atoms[i]!.variant}) has status ${r.status}`)
      if (r.complete && !code.startsWith('CANARYD_ERR_')) problems.push(`response ${i} to bad atom (${c.atoms[i]!.variant}) has no CANARYD_ERR_ JSON body (${JSON.stringify(r.body.toString('latin1').slice(0, 60))})`)
      if (!/\bclose\b/i.test(r.headers.connection ?? '') && r.complete) problems.push(`response ${i} to bad atom (${c.atoms[i]!.variant}) lacks Connection: close`)
    } else {
      problems.push(`response ${i} (status ${r.status}) after the connection should have ended at atom ${Math.min(firstBad, served - 1)}`)
    }
  }
  const expected = firstBad < served ? firstBad + 1 : served
  const mustClose = expected < n || closer !== -1
  if (o.reset && !o.aborted && !mustClose) problems.push('the connection was reset although no request asked for it to end')
  if (!o.aborted) {
    // a reset after the server's close may cost the client the last answers, never the upstream side
    const lost = o.reset && mustClose && rs.length < expected
    if (rs.length !== expected && !lost) problems.push(`${rs.length} responses, expected ${expected} (first bad atom ${firstBad === n ? 'none' : firstBad})`)
    if (byAtom.size !== Math.min(firstBad, served)) problems.push(`${byAtom.size} requests reached the upstream, expected ${Math.min(firstBad, served)}`)
    if (mustClose && !o.serverClosed) problems.push('the connection was not closed after its last response')
  }
  // an aborted case is judged by the same rules on what it got; "one at a time"
  // is judged on the upstream clock above, not here: the proxy may have finished
  // writing answers (and dispatched the next request) the client had not yet
  // read when it left
  return problems
}

function errorCode (r: ClientResponse): string {
  try {
    const j = JSON.parse(r.body.toString('latin1')) as { error?: { code?: unknown } }
    return typeof j.error?.code === 'string' ? j.error.code : ''
  } catch {
    return ''
  }
}
