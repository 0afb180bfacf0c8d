// PROXY protocol v1 and v2 (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt):
// a load balancer in front of us sends one header before the client's bytes,
// naming the client's address. Our own parser rather than an npm one because
// we need three things together: it never throws, it bounds a v2 header to a
// cap before buffering it, and it frames a stream (says how many bytes were
// the header, or that more are needed, from whatever has arrived so far).
import { isIPv4, isIPv6, SocketAddress } from 'node:net'

/** An address and port named by the header. */
export interface ProxyAddress { address: string, port: number }

/** A parsed PROXY header. */
export interface ProxyHeader {
  version: 1 | 2
  /** 'local' (v2 LOCAL, v1 UNKNOWN): the connection is the proxy's own (health check): use the real peer address. */
  command: 'proxy' | 'local'
  /** tcp4/tcp6 (v1 TCP4/TCP6, v2 AF_INET/AF_INET6 with STREAM or DGRAM), 'unix', 'unspec' */
  family: 'tcp4' | 'tcp6' | 'unix' | 'unspec'
  /** Present for command 'proxy' with family tcp4/tcp6 only. IPv6 addresses in Node's canonical compressed form (as net's remoteAddress shows them, e.g. '2001:db8::1'). */
  source?: ProxyAddress
  destination?: ProxyAddress
}

/** Result of looking at the bytes received so far on a connection. */
export type ProxyParse =
  | { state: 'more' } // a valid prefix: need more bytes
  | { state: 'done', header: ProxyHeader, length: number } // `length` bytes are the header; the rest is the client's data
  | { state: 'invalid', reason: string } // not a valid PROXY header (close the connection)

/** The spec's maximum v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses and ports). */
export const PROXY_V1_MAX = 107

/**
 * Our cap on a whole v2 header (16 + its length field). The field allows
 * 64 KiB, but real senders (AWS NLB, GCP, Azure, HAProxy) add TLVs of tens to
 * a few hundred bytes; a cap bounds what an unauthenticated peer can make us
 * buffer before we have decided anything about the connection.
 */
export const PROXY_V2_MAX = 4096

const V1_PREFIX = Buffer.from('PROXY ', 'latin1')
const V2_SIGNATURE = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1')
const CR = 0x0d
const LF = 0x0a
const MORE: ProxyParse = Object.freeze({ state: 'more' })
const NOT_PROXY = 'not a PROXY protocol header'

/** v2 family/protocol byte → our family and the size of its address block. */
const V2_FAMILIES = new Map<number, { family: ProxyHeader['family'], size: number }>([
  [0x00, { family: 'unspec', size: 0 }],
  [0x11, { family: 'tcp4', size: 12 }],
  [0x12, { family: 'tcp4', size: 12 }],
  [0x21, { family: 'tcp6', size: 36 }],
  [0x22, { family: 'tcp6', size: 36 }],
  [0x31, { family: 'unix', size: 216 }],
  [0x32, { family: 'unix', size: 216 }]
])

/**
 * Looks at the bytes received so far on a connection and says whether they
 * start with a complete PROXY header (v1 or v2), could still become one, or
 * cannot. Strict like HAProxy: anything that is not a prefix of "PROXY " or of
 * the v2 signature is refused on its first byte, so a plain HTTP or TLS client
 * is turned away at once rather than after a timeout. Never throws, never
 * reads past `buf.length`, linear in the bytes given; results are monotone in
 * the bytes (once 'done' or 'invalid', more data does not change the answer).
 */
export function parseProxyHeader (buf: Buffer): ProxyParse {
  if (buf.length === 0) return MORE
  return buf[0] === CR ? parseV2(buf) : parseV1(buf)
}

function invalid (reason: string): ProxyParse {
  return { state: 'invalid', reason }
}

/** True if the first min(buf.length, want.length) bytes equal `want`'s. */
function startsWithPrefix (buf: Buffer, want: Buffer): boolean {
  const n = Math.min(buf.length, want.length)
  for (let i = 0; i < n; i++) if (buf[i] !== want[i]) return false
  return true
}

function parseV1 (buf: Buffer): ProxyParse {
  if (!startsWithPrefix(buf, V1_PREFIX)) return invalid(NOT_PROXY)
  if (buf.length <= V1_PREFIX.length) return MORE
  // the CR must leave room for its LF within PROXY_V1_MAX, so only that far is scanned
  const scan = Math.min(buf.length, PROXY_V1_MAX - 1)
  const cr = buf.subarray(0, scan).indexOf(CR)
  if (cr === -1) {
    if (buf.length >= PROXY_V1_MAX - 1) return invalid('v1 line has no CRLF within 107 bytes')
    // refuse a partial line as soon as no ending can make it valid
    const partial = readV1(buf.toString('latin1', V1_PREFIX.length), false)
    return typeof partial === 'string' ? invalid(partial) : MORE
  }
  const line = readV1(buf.toString('latin1', V1_PREFIX.length, cr), true)
  if (typeof line === 'string') return invalid(line)
  if (line === undefined || cr + 1 === buf.length) return MORE
  if (buf[cr + 1] !== LF) return invalid('v1 line ends in CR without LF')
  return { state: 'done', header: line, length: cr + 2 }
}

/**
 * Reads the text after "PROXY " (CRLF excluded). With `complete` false it is
 * only a prefix of the line and must merely be able to become valid: then
 * the result is undefined or a reason. A complete line gives the header.
 */
function readV1 (rest: string, complete: boolean): ProxyHeader | string | undefined {
  // UNKNOWN: the spec has the receiver ignore whatever follows, up to CRLF
  if (rest.startsWith('UNKNOWN')) {
    if (rest.length !== 7 && rest[7] !== ' ') return 'v1 protocol is not TCP4, TCP6 or UNKNOWN'
    return complete ? { version: 1, command: 'local', family: 'unspec' } : undefined
  }
  const parts = rest.split(' ')
  const proto = parts[0] ?? ''
  if (!complete && parts.length === 1) {
    return ['TCP4', 'TCP6', 'UNKNOWN'].some((p) => p.startsWith(proto)) ? undefined : 'v1 protocol is not TCP4, TCP6 or UNKNOWN'
  }
  if (proto !== 'TCP4' && proto !== 'TCP6') return 'v1 protocol is not TCP4, TCP6 or UNKNOWN'
  if (parts.length > 5 || (complete && parts.length < 5)) return 'v1 line does not have 4 single-space-separated fields'
  const v6 = proto === 'TCP6'
  for (let i = 1; i < parts.length; i++) {
    const field = parts[i] ?? ''
    // the last field of a partial line may still grow: only its characters and length are checked
    const prefix = !complete && i === parts.length - 1
    if (i <= 2 ? !addressOk(field, v6, prefix) : !portOk(field, prefix)) return `v1 ${V1_FIELDS[i]} is not valid`
  }
  if (!complete) return undefined
  const source = v6 ? canonicalIPv6(parts[1] ?? '') : parts[1]
  const destination = v6 ? canonicalIPv6(parts[2] ?? '') : parts[2]
  if (source === undefined || destination === undefined) return 'v1 address is not valid'
  return {
    version: 1,
    command: 'proxy',
    family: v6 ? 'tcp6' : 'tcp4',
    source: { address: source, port: Number(parts[3]) },
    destination: { address: destination, port: Number(parts[4]) }
  }
}

const V1_FIELDS = ['protocol', 'source address', 'destination address', 'source port', 'destination port']
// character sets and longest forms: a prefix outside them can never become valid
const V4_CHARS = /^[0-9.]{0,15}$/
const V6_CHARS = /^[0-9a-fA-F:.]{0,45}$/ // no '%': net.isIPv6 accepts a zone id, the spec does not
const PORT = /^(?:0|[1-9][0-9]{0,4})$/

function addressOk (s: string, v6: boolean, prefix: boolean): boolean {
  if (!(v6 ? V6_CHARS : V4_CHARS).test(s)) return false
  return prefix || (v6 ? isIPv6(s) : isIPv4(s))
}

function portOk (s: string, prefix: boolean): boolean {
  if (prefix && s === '') return true
  return PORT.test(s) && Number(s) <= 65535
}

/** '2001:DB8:0::1' → '2001:db8::1', through libuv's own text form (as remoteAddress); undefined if it refuses. */
function canonicalIPv6 (s: string): string | undefined {
  try {
    return new SocketAddress({ address: s, family: 'ipv6' }).address
  } catch {
    return undefined
  }
}

function parseV2 (buf: Buffer): ProxyParse {
  if (!startsWithPrefix(buf, V2_SIGNATURE)) return invalid(NOT_PROXY)
  // each fixed byte is judged as soon as it arrives, so garbage is refused early
  const verCmd = buf[12]
  if (verCmd !== undefined && verCmd >> 4 !== 2) return invalid('v2 version is not 2')
  if (verCmd !== undefined && (verCmd & 0x0f) > 1) return invalid('v2 command is neither LOCAL nor PROXY')
  const fam = buf[13]
  const family = fam === undefined ? undefined : V2_FAMILIES.get(fam)
  if (fam !== undefined && family === undefined) return invalid('v2 address family or protocol is not supported')
  if (buf.length < 16 || verCmd === undefined || family === undefined) return MORE
  const length = 16 + buf.readUInt16BE(14)
  if (length > PROXY_V2_MAX) return invalid(`v2 header is longer than ${PROXY_V2_MAX} bytes`)
  const local = (verCmd & 0x0f) === 0
  // the spec has LOCAL ignore the address block, so only PROXY needs one
  if (!local && length - 16 < family.size) return invalid('v2 length is shorter than its address block')
  if (buf.length < length) return MORE
  const header: ProxyHeader = { version: 2, command: local ? 'local' : 'proxy', family: family.family }
  // TLVs after the address block are not read: we use none of them, and not
  // parsing them means nothing in them can fail the header
  if (!local && family.family === 'tcp4') {
    header.source = { address: formatIPv4(buf, 16), port: buf.readUInt16BE(24) }
    header.destination = { address: formatIPv4(buf, 20), port: buf.readUInt16BE(26) }
  } else if (!local && family.family === 'tcp6') {
    header.source = { address: formatIPv6(buf, 16), port: buf.readUInt16BE(48) }
    header.destination = { address: formatIPv6(buf, 32), port: buf.readUInt16BE(50) }
  }
  return { state: 'done', header, length }
}

function formatIPv4 (b: Buffer, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`
}

/**
 * 16 bytes → the text libuv's inet_ntop gives (so it equals a socket's
 * remoteAddress): lowercase hex, the first longest run of two or more zero
 * groups as '::', and '::a.b.c.d' / '::ffff:a.b.c.d' for IPv4-compatible and
 * IPv4-mapped addresses.
 */
function formatIPv6 (b: Buffer, at: number): string {
  const words: number[] = []
  for (let i = 0; i < 8; i++) words.push(b.readUInt16BE(at + 2 * i))
  let best = -1
  let bestLen = 0
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) { i++; continue }
    let j = i
    while (j < 8 && words[j] === 0) j++
    if (j - i > bestLen) { best = i; bestLen = j - i }
    i = j
  }
  if (bestLen < 2) best = -1
  if (best === 0 && (bestLen === 6 || (bestLen === 5 && words[5] === 0xffff))) {
    return (bestLen === 6 ? '::' : '::ffff:') + formatIPv4(b, at + 12)
  }
  if (best === -1) return words.map((w) => w.toString(16)).join(':')
  const head = words.slice(0, best).map((w) => w.toString(16)).join(':')
  const tail = words.slice(best + bestLen).map((w) => w.toString(16)).join(':')
  return `${head}::${tail}`
}
