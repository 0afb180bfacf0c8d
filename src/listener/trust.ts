/**
 * Trusted proxies and the client address behind them, as nginx's
 * `set_real_ip_from` with `real_ip_recursive on` and Envoy's trusted hops:
 * X-Forwarded-For is believed only as far as it was written by proxies we
 * trust, so a client cannot pick its own address (and with it its sticky key)
 * by sending the header itself.
 *
 * node:net's isIP decides what is an address: ipaddr.js also reads legacy
 * spellings (`10.1`, `0x7f.1`, `010.0.0.1`) that no proxy writes and that
 * would let garbage pass for one. ipaddr.js parses the config and IPv6;
 * dotted IPv4, by far the common case per request (and Node's own
 * `::ffff:a.b.c.d` for IPv4 peers of a dual-stack server), is read by hand
 * into a 32-bit number and masked: once isIP has vouched for it that is a
 * few arithmetic steps, where ipaddr.js's regex parser costs ~0.5 µs a hop.
 */
import { isIP } from 'node:net'
import ipaddr from 'ipaddr.js'

type IPv4 = ipaddr.IPv4
type IPv6 = ipaddr.IPv6

/** X-Forwarded-For entries looked at, from the right: the work per request stays bounded whatever a client sends. */
const MAX_HOPS = 32

/** The shorthands a trusted-proxy entry may be, as proxy-addr's presets. */
const KEYWORDS: ReadonlyMap<string, readonly string[]> = new Map([
  ['loopback', ['127.0.0.0/8', '::1/128']],
  ['private', ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7']],
  ['linklocal', ['169.254.0.0/16', 'fe80::/10']]
])

function notAnEntry (entry: unknown): Error {
  return new Error(`${JSON.stringify(entry)} is not an IP address, a CIDR or one of ${[...KEYWORDS.keys()].join(', ')}`)
}

/** IPv4 ranges as 32-bit numbers: `(addr & mask) >>> 0 === net`. */
interface V4Range {
  net: number
  mask: number
}

/**
 * What parseHop read last: its kind (0: an address no range can hold) and
 * parsed form. One shared scratch, not an object per hop: the walk is
 * synchronous, so no two parses overlap.
 */
const parsed = { kind: 0 as 0 | 4 | 6, v4: 0, v6: undefined as IPv6 | undefined }

/**
 * The set of proxies whose X-Forwarded-For is believed. Built once from
 * config; `trusts` runs once per connection and `clientAddress` once per
 * request from a trusted peer.
 */
export class TrustedProxies {
  /** No CIDR configured: nobody is trusted (the hot path then skips all work). */
  readonly empty: boolean
  // split by kind: ipaddr.js throws when an IPv4 address is matched against an IPv6 range
  readonly #v4: V4Range[] = []
  readonly #v6: Array<[IPv6, number]> = []

  /**
   * `cidrs`: IPv4/IPv6 CIDRs (`10.0.0.0/8`, `2001:db8::/32`), bare addresses
   * (a bare address is a /32 or /128), or the keywords `loopback`
   * (127.0.0.0/8, ::1), `private` (RFC 1918 10/8, 172.16/12, 192.168/16 and
   * the IPv6 unique local fc00::/7) and `linklocal` (169.254.0.0/16,
   * fe80::/10). An IPv4-mapped entry (`::ffff:10.0.0.0/104`) stands for its
   * IPv4 range. Throws an Error whose message names the bad entry
   * (`"10.0.0.0/33" is not a CIDR`); the caller prefixes the config key.
   */
  constructor (cidrs: readonly string[]) {
    for (const entry of cidrs) {
      for (const cidr of KEYWORDS.get(entry) ?? [entry]) this.#add(cidr)
    }
    this.empty = this.#v4.length === 0 && this.#v6.length === 0
  }

  #add (entry: string): void {
    // config from YAML may hand over a number or null where a string belongs
    if (typeof entry !== 'string') throw notAnEntry(entry)
    const slash = entry.indexOf('/')
    const addr = slash < 0 ? entry : entry.slice(0, slash)
    const kind = isIP(addr)
    // a zone (`fe80::1%eth0`) names one host's interface: meaningless as a range
    if (kind === 0 || addr.includes('%')) {
      throw slash < 0 ? notAnEntry(entry) : new Error(`${JSON.stringify(entry)} is not a CIDR`)
    }
    const max = kind === 4 ? 32 : 128
    const bits = slash < 0 ? max : /^\d{1,3}$/.test(entry.slice(slash + 1)) ? Number(entry.slice(slash + 1)) : NaN
    if (!(bits <= max)) throw new Error(`${JSON.stringify(entry)} is not a CIDR (prefix length 0-${max} for IPv${kind})`)
    if (kind === 4) return this.#addV4(ipaddr.IPv4.parse(addr), bits)
    const ip = ipaddr.IPv6.parse(addr)
    // addresses are matched after unmapping, so a mapped range must be an IPv4 one to ever match
    if (ip.isIPv4MappedAddress() && bits >= 96) this.#addV4(ip.toIPv4Address(), bits - 96)
    else this.#v6.push([ip, bits])
  }

  #addV4 (ip: IPv4, bits: number): void {
    // host bits past the prefix are ignored, as nginx and proxy-addr do (`10.1.2.3/8` = 10/8)
    const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0
    const [a = 0, b = 0, c = 0, d = 0] = ip.octets
    this.#v4.push({ net: ((((a << 24) | (b << 16) | (c << 8) | d) & mask) >>> 0), mask })
  }

  /** `addr` (as Node's remoteAddress gives it; IPv4-mapped `::ffff:10.1.2.3` matches IPv4 ranges) is inside a trusted range. */
  trusts (addr: string): boolean {
    return !this.empty && parseHop(addr, 0, addr.length, this.#v6.length !== 0) !== undefined && this.#match()
  }

  /**
   * The client address for a request from `peer` carrying X-Forwarded-For
   * `xff` (undefined when absent; repeated headers joined with ", "). An
   * untrusted peer is the client, whatever its header says. Else the walk
   * goes from the right over [...xff hops, peer]: the first address not
   * trusted is the client; when every hop is trusted, the leftmost (nginx).
   * An entry that is not an IP address (garbage, empty, `unknown`) stops the
   * walk at the hop to its right, so garbage never becomes a client address;
   * the 33rd entry from the right counts as garbage, bounding the work.
   * Entries may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`) or
   * brackets (`[::1]`), which are dropped. Addresses come back as written,
   * except that IPv4-mapped IPv6 becomes plain IPv4, so that one user keeps
   * one sticky key whichever form a hop wrote.
   */
  clientAddress (peer: string, xff: string | undefined): string {
    const v6 = this.#v6.length !== 0
    let client = parseHop(peer, 0, peer.length, v6)
    if (client === undefined) return peer
    if (xff === undefined || this.empty || !this.#match()) return client
    let end = xff.length
    for (let n = 0; n < MAX_HOPS; n++) {
      // end === 0: the header starts with a comma, its leftmost entry is empty
      const comma = end === 0 ? -1 : xff.lastIndexOf(',', end - 1)
      const hop = parseHop(xff, comma + 1, end, v6)
      if (hop === undefined) return client
      client = hop
      if (comma < 0 || !this.#match()) return client
      end = comma
    }
    return client
  }

  /** Whether the address parseHop read last is in a trusted range. */
  #match (): boolean {
    if (parsed.kind === 4) {
      for (const r of this.#v4) if (((parsed.v4 & r.mask) >>> 0) === r.net) return true
    } else if (parsed.kind === 6) {
      const v6 = parsed.v6!
      for (const r of this.#v6) if (v6.match(r)) return true
    }
    return false
  }
}

/** Node's spelling of an IPv4 peer on a dual-stack socket. */
const NODE_MAPPED = /^::ffff:\d/i
const FFFF = /ffff/i

/**
 * The address in `s.slice(start, end)`, normalised, or undefined when it is
 * none; its parsed form goes to `parsed`. Spaces and tabs around it,
 * brackets and a port are dropped; IPv4-mapped IPv6 becomes IPv4.
 * `v6Ranges` false: no IPv6 range is trusted, so only a possibly mapped
 * IPv6 address is worth ipaddr.js's (slow) parse.
 */
function parseHop (s: string, start: number, end: number, v6Ranges: boolean): string | undefined {
  while (start < end && (s.charCodeAt(start) === 32 || s.charCodeAt(start) === 9)) start++
  while (end > start && (s.charCodeAt(end - 1) === 32 || s.charCodeAt(end - 1) === 9)) end--
  if (start === end) return undefined
  if (s.charCodeAt(start) === 91) { // '[': `[v6]` or `[v6]:port`
    let close = start + 1
    while (close < end && s.charCodeAt(close) !== 93) close++
    if (close === end || (close + 1 < end && !isPort(s, close + 1, end))) return undefined
    start++
    end = close
  } else {
    // one colon is IPv4 with a port; more is unbracketed IPv6, which cannot carry one
    // (scanned within the entry only: the whole walk stays linear in the header's length)
    let colon = -1
    for (let i = start; i < end; i++) {
      if (s.charCodeAt(i) !== 58) continue
      if (colon >= 0) { colon = -1; break }
      colon = i
    }
    if (colon >= 0) {
      if (!isPort(s, colon, end)) return undefined
      end = colon
    }
  }
  let text = start === 0 && end === s.length ? s : s.slice(start, end)
  let kind = isIP(text)
  if (kind === 6 && NODE_MAPPED.test(text) && isIP(text.slice(7)) === 4) {
    text = text.slice(7)
    kind = 4
  }
  if (kind === 4) {
    parsed.kind = 4
    parsed.v4 = dottedToNumber(text)
    return text
  }
  if (kind !== 6) return undefined
  // a zone (`fe80::1%eth0`, as Node shows a link-local peer) says which interface, not which host:
  // matched without it (isIP accepts any zone text; ipaddr.js throws on some)
  const zone = text.indexOf('%')
  if (zone !== -1) text = text.slice(0, zone)
  // every spelling of a mapped address has its `ffff` group
  if (!v6Ranges && !FFFF.test(text)) {
    parsed.kind = 0
    return text
  }
  let ip: ipaddr.IPv6
  try {
    ip = ipaddr.IPv6.parse(text)
  } catch {
    // a request header must never throw on the hot path: what ipaddr.js cannot read is garbage
    return undefined
  }
  if (!ip.isIPv4MappedAddress()) {
    parsed.kind = v6Ranges ? 6 : 0
    parsed.v6 = ip
    return text
  }
  // other spellings of a mapped address (`::ffff:a01:203`, `0:0:0:0:0:ffff:10.1.2.3`)
  const v4 = ip.toIPv4Address().toString()
  parsed.kind = 4
  parsed.v4 = dottedToNumber(v4)
  return v4
}

/** The 32-bit value of a dotted quad that isIP has checked (decimal octets 0-255, no leading zeros). */
function dottedToNumber (s: string): number {
  let n = 0
  let octet = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c === 46) {
      n = n * 256 + octet
      octet = 0
    } else {
      octet = octet * 10 + c - 48
    }
  }
  return n * 256 + octet
}

/** `s.slice(at, end)` is `:` and 1 to 5 digits. */
function isPort (s: string, at: number, end: number): boolean {
  if (s.charCodeAt(at) !== 58 || end - at < 2 || end - at > 6) return false
  for (let i = at + 1; i < end; i++) {
    const c = s.charCodeAt(i)
    if (c < 48 || c > 57) return false
  }
  return true
}
