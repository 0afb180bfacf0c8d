import t from 'tap'
import { isIP, SocketAddress } from 'node:net'
import { isDeepStrictEqual } from 'node:util'
import { parseProxyHeader, PROXY_V1_MAX, PROXY_V2_MAX, type ProxyAddress, type ProxyHeader, type ProxyParse } from '../../src/listener/proxy-protocol.js'
import { ipv6Bytes, proxyV1, proxyV1Unknown, proxyV2 } from '../helpers/proxy-protocol.js'
import { mulberry32 } from '../../src/rollout/loadtest.js'

const SIG = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1')
const FULL6 = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'

const a = (address: string, port: number): ProxyAddress => ({ address, port })
const ascii = (s: string): Buffer => Buffer.from(s, 'latin1')

/** A v2 header from its raw parts; `length` defaults to the body's. */
function v2Raw (verCmd: number, fam: number, body: Buffer, length = body.length): Buffer {
  const head = Buffer.from([verCmd, fam, 0, 0])
  head.writeUInt16BE(length, 2)
  return Buffer.concat([SIG, head, body])
}

/** The prefix lengths of `buf` (below `upTo`) that do not parse as 'more'. */
function notMore (buf: Buffer, upTo = buf.length): number[] {
  const bad: number[] = []
  for (let k = 0; k < upTo; k++) if (parseProxyHeader(buf.subarray(0, k)).state !== 'more') bad.push(k)
  return bad
}

const tcp4 = (src: ProxyAddress, dst: ProxyAddress, version: 1 | 2 = 1): ProxyHeader => ({ version, command: 'proxy', family: 'tcp4', source: src, destination: dst })
const tcp6 = (src: ProxyAddress, dst: ProxyAddress, version: 1 | 2 = 1): ProxyHeader => ({ version, command: 'proxy', family: 'tcp6', source: src, destination: dst })

const valid: Array<{ name: string, buf: Buffer, header: ProxyHeader }> = [
  { name: 'v1 TCP4', buf: proxyV1(a('192.168.0.1', 56324), a('192.168.0.11', 443)), header: tcp4(a('192.168.0.1', 56324), a('192.168.0.11', 443)) },
  { name: 'v1 TCP4 ports 0 and 65535', buf: proxyV1(a('0.0.0.0', 0), a('255.255.255.255', 65535)), header: tcp4(a('0.0.0.0', 0), a('255.255.255.255', 65535)) },
  { name: 'v1 TCP6', buf: proxyV1(a('2001:db8::1', 1234), a('::1', 80)), header: tcp6(a('2001:db8::1', 1234), a('::1', 80)) },
  {
    name: 'v1 TCP6 uncompressed upper case → canonical',
    buf: ascii('PROXY TCP6 2001:DB8:0:0:0:0:0:1 0:0:0:0:0:FFFF:102:304 1 2\r\n'),
    header: tcp6(a('2001:db8::1', 1), a('::ffff:1.2.3.4', 2))
  },
  { name: 'v1 TCP6 longest (104 bytes)', buf: ascii(`PROXY TCP6 ${FULL6} ${FULL6} 65535 65535\r\n`), header: tcp6(a(FULL6, 65535), a(FULL6, 65535)) },
  { name: 'v1 UNKNOWN', buf: proxyV1Unknown(), header: { version: 1, command: 'local', family: 'unspec' } },
  { name: 'v1 UNKNOWN with addresses (107 bytes, the maximum)', buf: ascii(`PROXY UNKNOWN ${FULL6} ${FULL6} 65535 65535\r\n`), header: { version: 1, command: 'local', family: 'unspec' } },
  { name: 'v2 INET', buf: proxyV2({ src: a('10.0.0.1', 40000), dst: a('10.0.0.2', 443) }), header: tcp4(a('10.0.0.1', 40000), a('10.0.0.2', 443), 2) },
  { name: 'v2 INET DGRAM', buf: v2Raw(0x21, 0x12, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 0, 53, 0xff, 0xff])), header: tcp4(a('1.2.3.4', 53), a('5.6.7.8', 65535), 2) },
  { name: 'v2 INET6', buf: proxyV2({ src: a('2001:db8::1', 1), dst: a('::ffff:1.2.3.4', 443) }), header: tcp6(a('2001:db8::1', 1), a('::ffff:1.2.3.4', 443), 2) },
  { name: 'v2 INET6 DGRAM', buf: v2Raw(0x21, 0x22, Buffer.concat([ipv6Bytes('fe80::1'), ipv6Bytes('::'), Buffer.from([0, 1, 0, 2])])), header: tcp6(a('fe80::1', 1), a('::', 2), 2) },
  { name: 'v2 LOCAL', buf: proxyV2({ command: 'local' }), header: { version: 2, command: 'local', family: 'unspec' } },
  { name: 'v2 LOCAL with an address block: ignored', buf: proxyV2({ command: 'local', src: a('10.0.0.1', 1), dst: a('10.0.0.2', 2) }), header: { version: 2, command: 'local', family: 'tcp4' } },
  { name: 'v2 LOCAL INET with a short block: ignored', buf: v2Raw(0x20, 0x11, Buffer.alloc(0)), header: { version: 2, command: 'local', family: 'tcp4' } },
  { name: 'v2 PROXY UNSPEC', buf: proxyV2({}), header: { version: 2, command: 'proxy', family: 'unspec' } },
  { name: 'v2 UNIX STREAM', buf: v2Raw(0x21, 0x31, Buffer.alloc(216, 0x61)), header: { version: 2, command: 'proxy', family: 'unix' } },
  { name: 'v2 UNIX DGRAM', buf: v2Raw(0x21, 0x32, Buffer.alloc(216)), header: { version: 2, command: 'proxy', family: 'unix' } },
  {
    // PP2_TYPE_ALPN "h2", then an AWS VPC endpoint id (0xEA, subtype 0x01)
    name: 'v2 INET with TLVs',
    buf: proxyV2({ src: a('10.0.0.1', 1), dst: a('10.0.0.2', 2), tlvs: Buffer.concat([Buffer.from([0x01, 0x00, 0x02]), ascii('h2'), Buffer.from([0xea, 0x00, 0x0e, 0x01]), ascii('vpce-0123abcd')]) }),
    header: tcp4(a('10.0.0.1', 1), a('10.0.0.2', 2), 2)
  },
  {
    // TLVs are not read, so one claiming more bytes than the header has cannot fail it
    name: 'v2 INET6 with a TLV overrunning the header: ignored',
    buf: proxyV2({ src: a('::1', 1), dst: a('::2', 2), tlvs: Buffer.from([0x20, 0xff, 0xff, 0x00]) }),
    header: tcp6(a('::1', 1), a('::2', 2), 2)
  },
  { name: 'v2 at the cap', buf: v2Raw(0x21, 0x11, Buffer.alloc(PROXY_V2_MAX - 16)), header: tcp4(a('0.0.0.0', 0), a('0.0.0.0', 0), 2) }
]

t.test('valid headers', async (t) => {
  t.equal(valid[4]!.buf.length, 104, 'the spec\'s longest TCP6 line')
  t.equal(valid[6]!.buf.length, PROXY_V1_MAX, 'the spec\'s longest line')
  for (const { name, buf, header } of valid) {
    t.strictSame(parseProxyHeader(buf), { state: 'done', header, length: buf.length }, name)
    t.strictSame(notMore(buf), [], `${name}: every strict prefix is 'more'`)
    // the client's bytes after the header are left for it
    const data = ascii('GET / HTTP/1.1\r\nhost: x\r\n\r\n')
    const whole = Buffer.concat([buf, data])
    const r = parseProxyHeader(whole)
    t.strictSame(r, { state: 'done', header, length: buf.length }, `${name}: with trailing data`)
    if (r.state === 'done') t.strictSame(whole.subarray(r.length), data, `${name}: trailing data preserved`)
  }
})

const v1 = (s: string): Buffer => ascii(`PROXY ${s}\r\n`)
const good2 = proxyV2({ src: a('10.0.0.1', 1), dst: a('10.0.0.2', 2) })
const patch = (buf: Buffer, at: number, byte: number): Buffer => { const b = Buffer.from(buf); b[at] = byte; return b }

/** `early`: the prefix length that is already refused (a client is turned away on its first bytes). */
const invalid: Array<{ name: string, buf: Buffer, early?: number }> = [
  { name: 'HTTP request', buf: ascii('GET / HTTP/1.1\r\nhost: x\r\n\r\n'), early: 1 },
  { name: 'TLS ClientHello', buf: Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), early: 1 },
  { name: 'lowercase "proxy"', buf: ascii('proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), early: 1 },
  { name: '"PROXY" without its space', buf: ascii('PROXY\r\n'), early: 6 },
  { name: 'bad v2 signature byte', buf: patch(good2, 5, 0x0a), early: 6 },
  { name: 'bad last v2 signature byte', buf: patch(good2, 11, 0x0d), early: 12 },
  { name: 'v1 of 108 bytes', buf: ascii(`PROXY UNKNOWN ${'x'.repeat(92)}\r\n`) },
  { name: 'v1 without CRLF in 107 bytes', buf: ascii(`PROXY UNKNOWN ${'x'.repeat(200)}`), early: 106 },
  { name: 'v1 CR without LF', buf: ascii('PROXY UNKNOWN\r\r\n') },
  { name: 'v1 LF without CR', buf: ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'), early: 31 },
  { name: 'v1 lowercase protocol', buf: v1('tcp4 1.2.3.4 5.6.7.8 1 2'), early: 7 },
  { name: 'v1 unknown protocol', buf: v1('UDP4 1.2.3.4 5.6.7.8 1 2'), early: 8 },
  { name: 'v1 UNKNOWN glued to more text', buf: v1('UNKNOWNX') },
  { name: 'v1 bad IPv4', buf: v1('TCP4 256.1.1.1 5.6.7.8 1 2'), early: 21 },
  { name: 'v1 IPv4 with a leading zero', buf: v1('TCP4 01.2.3.4 5.6.7.8 1 2') },
  { name: 'v1 IPv6 under TCP4', buf: v1('TCP4 ::1 ::1 1 2'), early: 12 },
  { name: 'v1 IPv4 under TCP6', buf: v1('TCP6 1.2.3.4 5.6.7.8 1 2') },
  { name: 'v1 IPv6 zone id', buf: v1('TCP6 fe80::1%eth0 ::1 1 2'), early: 19 },
  { name: 'v1 port 65536', buf: v1('TCP4 1.2.3.4 5.6.7.8 65536 2') },
  { name: 'v1 port 080', buf: v1('TCP4 1.2.3.4 5.6.7.8 080 2') },
  { name: 'v1 port +80', buf: v1('TCP4 1.2.3.4 5.6.7.8 +80 2') },
  { name: 'v1 port 123456', buf: v1('TCP4 1.2.3.4 5.6.7.8 1 123456') },
  { name: 'v1 double space after PROXY', buf: ascii('PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), early: 7 },
  { name: 'v1 double space between fields', buf: v1('TCP4 1.2.3.4  5.6.7.8 1 2') },
  { name: 'v1 tab between fields', buf: v1('TCP4\t1.2.3.4 5.6.7.8 1 2') },
  { name: 'v1 trailing space', buf: v1('TCP4 1.2.3.4 5.6.7.8 1 2 ') },
  { name: 'v1 missing port', buf: v1('TCP4 1.2.3.4 5.6.7.8 1') },
  { name: 'v2 version nibble 1', buf: patch(good2, 12, 0x11), early: 13 },
  { name: 'v2 command 2', buf: patch(good2, 12, 0x22), early: 13 },
  { name: 'v2 family 0x41', buf: patch(good2, 13, 0x41), early: 14 },
  { name: 'v2 INET protocol 3', buf: patch(good2, 13, 0x13), early: 14 },
  { name: 'v2 UNSPEC address with STREAM', buf: patch(good2, 13, 0x01), early: 14 },
  { name: 'v2 INET length below 12', buf: v2Raw(0x21, 0x11, Buffer.alloc(11)), early: 16 },
  { name: 'v2 INET6 length below 36', buf: v2Raw(0x21, 0x21, Buffer.alloc(35)), early: 16 },
  { name: 'v2 UNIX length below 216', buf: v2Raw(0x21, 0x31, Buffer.alloc(215)), early: 16 },
  { name: 'v2 one byte over the cap', buf: v2Raw(0x21, 0x11, Buffer.alloc(PROXY_V2_MAX - 15)), early: 16 },
  { name: 'v2 length 65535', buf: v2Raw(0x21, 0x11, Buffer.alloc(12), 65535), early: 16 }
]

t.test('invalid headers', async (t) => {
  for (const { name, buf, early } of invalid) {
    const r = parseProxyHeader(buf)
    t.equal(r.state, 'invalid', `${name}: ${r.state === 'invalid' ? r.reason : JSON.stringify(r)}`)
    if (early !== undefined) {
      t.equal(parseProxyHeader(buf.subarray(0, early)).state, 'invalid', `${name}: refused after ${early} bytes`)
      t.strictSame(notMore(buf, early), [], `${name}: 'more' before that`)
    }
  }
})

t.test('the start of a connection', async (t) => {
  t.strictSame(parseProxyHeader(Buffer.alloc(0)), { state: 'more' }, 'nothing yet')
  for (const s of ['P', 'PROXY', 'PROXY ', 'PROXY T', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r', 'PROXY UNKNOWN anything at all']) {
    t.equal(parseProxyHeader(ascii(s)).state, 'more', JSON.stringify(s))
  }
  t.equal(parseProxyHeader(good2.subarray(0, 16)).state, 'more', 'v2 fixed part without its addresses')
})

/** 16 bytes in the full, uncompressed text form; SocketAddress turns it into libuv's canonical form. */
const fullHex = (b: Buffer): string => Array.from({ length: 8 }, (_, i) => b.readUInt16BE(2 * i).toString(16)).join(':')
const canonical = (text: string): string => new SocketAddress({ address: text, family: 'ipv6' }).address

/** 16 random bytes biased to zero runs and the IPv4-mapped/compatible forms, where the text form has its special cases. */
function randomIPv6Bytes (rnd: () => number): Buffer {
  const b = Buffer.alloc(16)
  for (let i = 0; i < 8; i++) {
    const r = rnd()
    b.writeUInt16BE(r < 0.45 ? 0 : r < 0.55 ? 0xffff : r < 0.6 ? 1 : Math.floor(rnd() * 0x10000), 2 * i)
  }
  const form = rnd()
  if (form < 0.15) { b.fill(0, 0, 10); b.writeUInt16BE(0xffff, 10) } else if (form < 0.25) b.fill(0, 0, 12)
  return b
}

t.test('IPv6 text equals what libuv (remoteAddress) prints', async (t) => {
  // the special cases of libuv's form, spelled out
  const named: Array<[string, string]> = [
    ['::', '::'],
    ['::1', '::1'],
    ['::0.0.0.2', '::2'], // a run of 7 zero groups is not IPv4-compatible
    ['::1.2.3.4', '::1.2.3.4'], // IPv4-compatible
    ['::ffff:1.2.3.4', '::ffff:1.2.3.4'], // IPv4-mapped
    ['::ffff:0:0', '::ffff:0.0.0.0'],
    ['::ffff:0:1.2.3.4', '::ffff:0:102:304'], // not mapped: groups 5 and 6 swapped
    ['1::', '1::'],
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], // the longest run
    ['1:0:0:2:0:0:3:4', '1::2:0:0:3:4'], // the first of two equal runs
    ['1:0:2:3:4:5:6:7', '1:0:2:3:4:5:6:7'], // a single zero group stays
    ['0:0:0:1:0:0:0:0', '0:0:0:1::'],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1']
  ]
  for (const [text, want] of named) {
    const b = ipv6Bytes(text)
    const r = parseProxyHeader(v2Raw(0x21, 0x21, Buffer.concat([b, b, Buffer.alloc(4)])))
    t.equal(r.state === 'done' ? r.header.source?.address : r.state, want, `${text} → ${want}`)
  }
  const rnd = mulberry32(1)
  const cases = Array.from({ length: 5000 }, () => randomIPv6Bytes(rnd))
  const wrong: string[] = []
  for (const b of cases) {
    const r = parseProxyHeader(v2Raw(0x21, 0x21, Buffer.concat([b, b, Buffer.alloc(4)])))
    const want = canonical(fullHex(b))
    const got = r.state === 'done' ? r.header.source?.address : r.state
    if (got !== want) wrong.push(`${fullHex(b)}: ${got} ≠ ${want}`)
  }
  t.strictSame(wrong.slice(0, 10), [], `${cases.length} addresses`)
})

t.test('fuzz: never throws, stays in bounds, monotone in the bytes', async (t) => {
  const SEED = 0x5eed
  const CASES = 20_000
  const rnd = mulberry32(SEED)
  const int = (n: number): number => Math.floor(rnd() * n)
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!
  const port = (): number => pick([0, 1, 80, 443, 65535, int(65536)])
  const ipv4 = (): string => Array.from({ length: 4 }, () => pick([0, 1, 127, 255, int(256)])).join('.')

  /** A random valid header and what it must parse to. */
  function randomValid (): { buf: Buffer, header: ProxyHeader } {
    const src = port()
    const dst = port()
    switch (int(6)) {
      case 0: {
        const s = ipv4()
        const d = ipv4()
        return { buf: proxyV1(a(s, src), a(d, dst)), header: tcp4(a(s, src), a(d, dst)) }
      }
      case 1: {
        // the sender may write IPv6 in any valid form; we report libuv's
        const s = randomIPv6Bytes(rnd)
        const d = randomIPv6Bytes(rnd)
        const text = (b: Buffer): string => rnd() < 0.5 ? canonical(fullHex(b)) : fullHex(b).toUpperCase()
        return { buf: proxyV1(a(text(s), src), a(text(d), dst), 'tcp6'), header: tcp6(a(canonical(fullHex(s)), src), a(canonical(fullHex(d)), dst)) }
      }
      case 2:
        return { buf: rnd() < 0.5 ? proxyV1Unknown() : ascii(`PROXY UNKNOWN ${'x'.repeat(int(92))}\r\n`), header: { version: 1, command: 'local', family: 'unspec' } }
      case 3: {
        const s = ipv4()
        const d = ipv4()
        return { buf: proxyV2({ src: a(s, src), dst: a(d, dst), tlvs: randomBytes(int(40)) }), header: tcp4(a(s, src), a(d, dst), 2) }
      }
      case 4: {
        const s = canonical(fullHex(randomIPv6Bytes(rnd)))
        const d = canonical(fullHex(randomIPv6Bytes(rnd)))
        return { buf: proxyV2({ src: a(s, src), dst: a(d, dst), tlvs: randomBytes(int(40)) }), header: tcp6(a(s, src), a(d, dst), 2) }
      }
      default:
        return { buf: proxyV2({ command: 'local', tlvs: randomBytes(int(40)) }), header: { version: 2, command: 'local', family: 'unspec' } }
    }
  }

  // bytes that matter to the grammar, so mutations often stay near valid
  const SPECIAL = [0x20, 0x0d, 0x0a, 0x00, 0x30, 0x31, 0x39, 0x3a, 0x2e, 0x41, 0x66, 0x46, 0xff, 0x11, 0x21, 0x31]
  const randomByte = (): number => rnd() < 0.5 ? pick(SPECIAL) : int(256)
  function randomBytes (n: number): Buffer {
    return Buffer.from(Array.from({ length: n }, randomByte))
  }

  function mutate (input: Buffer): Buffer {
    let b = Buffer.from(input)
    for (let ops = 1 + int(3); ops > 0; ops--) {
      const at = int(b.length + 1)
      switch (int(5)) {
        case 0: if (at < b.length) b[at] = b[at]! ^ (1 << int(8)); break
        case 1: b = b.subarray(0, at); break
        case 2: b = Buffer.concat([b.subarray(0, at), randomBytes(1 + int(3)), b.subarray(at)]); break
        case 3: b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + int(3))]); break
        default: if (at < b.length) b[at] = randomByte()
      }
    }
    return b
  }

  /** Random bytes, half of them behind a prefix of a real start so the parser gets past its first byte. */
  function randomBuffer (): Buffer {
    const start = pick([Buffer.alloc(0), SIG, ascii('PROXY '), ascii('PROXY TCP4 '), ascii('PROXY TCP6 '), Buffer.concat([SIG, Buffer.from([0x21])])])
    return Buffer.concat([start.subarray(0, int(start.length + 1)), randomBytes(int(64))])
  }

  const failures: string[] = []
  const fail = (buf: Buffer, msg: string): void => { if (failures.length < 10) failures.push(`${msg}: ${buf.toString('hex')}`) }
  const counts = { v1: 0, v2: 0, more: 0, invalid: 0, roundTrip: 0 }

  /** Every invariant a result must keep, whatever the input. */
  function check (buf: Buffer, r: ProxyParse): void {
    if (r.state === 'more' || r.state === 'invalid') return
    if (r.state !== 'done') return fail(buf, `unknown state ${JSON.stringify(r)}`)
    const { header: h, length } = r
    if (length > buf.length) fail(buf, `length ${length} past the buffer`)
    if (h.version === 2 && (length < 16 || length > PROXY_V2_MAX || length !== 16 + buf.readUInt16BE(14))) fail(buf, `v2 length ${length}`)
    if (h.version === 1 && (length > PROXY_V1_MAX || buf.indexOf(0x0d) !== length - 2 || buf[length - 1] !== 0x0a)) fail(buf, `v1 length ${length}`)
    const addressed = h.command === 'proxy' && (h.family === 'tcp4' || h.family === 'tcp6')
    for (const end of [h.source, h.destination]) {
      if (!addressed) {
        if (end !== undefined) fail(buf, 'an address without command proxy and tcp4/6')
        continue
      }
      if (end === undefined) return fail(buf, 'missing address')
      if (isIP(end.address) !== (h.family === 'tcp4' ? 4 : 6)) fail(buf, `address ${end.address}`)
      if (h.family === 'tcp6' && canonical(end.address) !== end.address) fail(buf, `address ${end.address} not canonical`)
      if (!Number.isInteger(end.port) || end.port < 0 || end.port > 65535) fail(buf, `port ${end.port}`)
    }
  }

  /** Results over the prefixes of `buf`: 'more', then one answer that more bytes do not change. */
  function checkPrefixes (buf: Buffer, whole: ProxyParse): void {
    let settled: ProxyParse | undefined
    for (let k = 0; k < buf.length; k++) {
      const r = parseProxyHeader(buf.subarray(0, k))
      if (settled === undefined) {
        if (r.state === 'more') continue
        settled = r
        check(buf.subarray(0, k), r)
        if (r.state !== whole.state || (r.state === 'done' && !isDeepStrictEqual(r, whole))) return fail(buf, `prefix of ${k} gives ${JSON.stringify(r)}, the whole ${JSON.stringify(whole)}`)
      } else if (r.state !== settled.state) {
        return fail(buf, `prefix of ${k} gives ${r.state} after ${settled.state}`)
      }
    }
    if (settled === undefined && whole.state === 'done' && whole.length !== buf.length) fail(buf, 'done only with the whole buffer, yet shorter')
  }

  const started = Date.now()
  for (let i = 0; i < CASES; i++) {
    const kind = rnd()
    let buf: Buffer
    let expect: ProxyHeader | undefined
    if (kind < 0.2) {
      const v = randomValid()
      expect = v.header
      buf = rnd() < 0.5 ? v.buf : Buffer.concat([v.buf, randomBytes(int(8))])
    } else if (kind < 0.75) {
      buf = mutate(randomValid().buf)
    } else {
      buf = randomBuffer()
    }
    let r: ProxyParse
    try {
      r = parseProxyHeader(buf)
    } catch (err) {
      fail(buf, `threw ${String(err)}`)
      continue
    }
    if (r.state === 'done') counts[r.header.version === 1 ? 'v1' : 'v2']++
    else counts[r.state]++
    check(buf, r)
    checkPrefixes(buf, r)
    if (expect !== undefined) {
      counts.roundTrip++
      if (r.state !== 'done' || !isDeepStrictEqual(r.header, expect)) fail(buf, `round trip: ${JSON.stringify(r)} ≠ ${JSON.stringify(expect)}`)
    }
  }
  const ms = Date.now() - started
  t.strictSame(failures, [], `${CASES} cases, seed ${SEED}, ${ms} ms`)
  // the fuzz must reach every outcome, or its silence means nothing
  t.ok(counts.v1 > 1000 && counts.v2 > 1000 && counts.more > 1000 && counts.invalid > 1000, `outcomes ${JSON.stringify(counts)}`)
})
