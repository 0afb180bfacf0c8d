/**
 * Trusted proxies (src/listener/trust.ts): which peers are trusted, which
 * config entries are refused, and the client address walked out of
 * X-Forwarded-For, as tables of cases.
 */
import t from 'tap'
import { TrustedProxies } from '../../src/listener/trust.js'

t.test('trusts: v4, v6, IPv4-mapped, bare addresses, keywords', async (t) => {
  const tp = new TrustedProxies(['10.0.0.0/8', '192.168.1.7', '2001:db8::/32', '2001:db8:ffff::1', 'fd00::5'])
  const cases: Array<[string, boolean]> = [
    ['10.0.0.0', true],
    ['10.255.255.255', true],
    ['11.0.0.0', false],
    ['9.255.255.255', false],
    ['::ffff:10.1.2.3', true], // Node's remoteAddress on a dual-stack socket
    ['::FFFF:10.1.2.3', true],
    ['::ffff:a01:203', true], // the same address in hex groups
    ['0:0:0:0:0:ffff:10.1.2.3', true],
    ['::ffff:11.1.2.3', false],
    ['192.168.1.7', true], // a bare address is a /32
    ['192.168.1.8', false],
    ['2001:db8::1', true],
    ['2001:DB8:1::ABCD', true],
    ['2001:db9::1', false],
    ['fd00::5', true], // a bare IPv6 address is a /128
    ['fd00::6', false],
    ['::1', false],
    ['127.0.0.1', false],
    ['', false],
    ['garbage', false],
    ['10.1', false], // legacy spellings ipaddr.js alone would accept
    ['010.0.0.1', false],
    ['0x0a.0.0.1', false]
  ]
  for (const [addr, want] of cases) t.equal(tp.trusts(addr), want, `${JSON.stringify(addr)} → ${want}`)

  const kw = new TrustedProxies(['loopback', 'private', 'linklocal'])
  const kwCases: Array<[string, boolean]> = [
    ['127.0.0.1', true], ['127.255.0.9', true], ['::1', true], ['::ffff:127.0.0.1', true],
    ['10.9.9.9', true], ['172.16.0.1', true], ['172.31.255.255', true], ['172.32.0.1', false],
    ['192.168.200.1', true], ['192.169.0.1', false], ['fc00::1', true], ['fdff:1::1', true], ['fe00::1', false],
    ['169.254.1.1', true], ['fe80::1', true], ['fe80::1%eth0', true], ['febf::1', true], ['fec0::1', false],
    ['8.8.8.8', false], ['2606:4700::1111', false]
  ]
  for (const [addr, want] of kwCases) t.equal(kw.trusts(addr), want, `keywords: ${addr} → ${want}`)

  const mappedRange = new TrustedProxies(['::ffff:172.20.0.0/112'])
  t.equal(mappedRange.trusts('172.20.3.4'), true, 'a mapped range is an IPv4 range: plain IPv4 matches')
  t.equal(mappedRange.trusts('::ffff:172.20.3.4'), true, 'and so does the mapped form')
  t.equal(mappedRange.trusts('172.21.0.1'), false)

  const all = new TrustedProxies(['0.0.0.0/0'])
  t.equal(all.trusts('255.255.255.255'), true, '/0 holds everything IPv4')
  t.equal(all.trusts('2001:db8::1'), false, 'but no IPv6')
  t.equal(new TrustedProxies(['10.1.2.3/8']).trusts('10.200.0.1'), true, 'host bits past the prefix are ignored')
  t.equal(new TrustedProxies(['10.0.0.0/31']).trusts('10.0.0.1'), true)
  t.equal(new TrustedProxies(['10.0.0.0/31']).trusts('10.0.0.2'), false)
})

t.test('empty: nobody is trusted', async (t) => {
  const none = new TrustedProxies([])
  t.equal(none.empty, true)
  t.equal(none.trusts('127.0.0.1'), false)
  t.equal(none.clientAddress('127.0.0.1', '1.2.3.4'), '127.0.0.1', 'the header of an untrusted peer is ignored')
  t.equal(none.clientAddress('::ffff:127.0.0.1', '1.2.3.4'), '127.0.0.1', 'the peer still comes back unmapped')
  t.equal(new TrustedProxies(['loopback']).empty, false)
})

t.test('constructor: bad entries are named', async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    ['10.0.0.0/33', /^"10\.0\.0\.0\/33" is not a CIDR/],
    ['2001:db8::/129', /^"2001:db8::\/129" is not a CIDR/],
    ['10.0.0.0/', /^"10\.0\.0\.0\/" is not a CIDR/],
    ['10.0.0.0/-1', /^"10\.0\.0\.0\/-1" is not a CIDR/],
    ['10.0.0.0/8/8', /^"10\.0\.0\.0\/8\/8" is not a CIDR/],
    ['10.0.0.0/ 8', /^"10\.0\.0\.0\/ 8" is not a CIDR/],
    ['10.0.0/8', /^"10\.0\.0\/8" is not a CIDR/],
    ['10.1/16', /^"10\.1\/16" is not a CIDR/],
    ['256.0.0.1', /^"256\.0\.0\.1" is not an IP address, a CIDR or one of loopback, private, linklocal$/],
    ['localhost', /^"localhost" is not an IP address/],
    ['Private', /^"Private" is not an IP address/],
    ['constructor', /^"constructor" is not an IP address/],
    ['', /^"" is not an IP address/],
    [' 10.0.0.1', /^" 10\.0\.0\.1" is not an IP address/],
    ['fe80::1%eth0', /^"fe80::1%eth0" is not an IP address/],
    [8, /^8 is not an IP address/]
  ]
  for (const [entry, message] of bad) {
    t.throws(() => new TrustedProxies(['10.0.0.0/8', entry as string]), message, `${JSON.stringify(entry)} is refused`)
  }
})

t.test('clientAddress: the walk from the right', async (t) => {
  // proxies: 10/8 (our load balancers) and 2001:db8:1::/48 (an IPv6 CDN edge)
  const tp = new TrustedProxies(['10.0.0.0/8', '2001:db8:1::/48'])
  const many = (n: number): string => Array.from({ length: n }, (_, i) => `10.0.${i >> 8}.${i & 255}`).join(', ')
  const cases: Array<{ name: string, peer: string, xff: string | undefined, want: string }> = [
    { name: 'untrusted peer ignores xff', peer: '203.0.113.5', xff: '1.1.1.1', want: '203.0.113.5' },
    { name: 'untrusted mapped peer comes back unmapped', peer: '::ffff:203.0.113.5', xff: '1.1.1.1', want: '203.0.113.5' },
    { name: 'untrusted IPv6 peer as written', peer: '2001:DB8:2::1', xff: '1.1.1.1', want: '2001:DB8:2::1' },
    { name: 'trusted peer, no xff', peer: '10.0.0.1', xff: undefined, want: '10.0.0.1' },
    { name: 'trusted mapped peer, no xff', peer: '::ffff:10.0.0.1', xff: undefined, want: '10.0.0.1' },
    { name: 'trusted peer, one hop', peer: '10.0.0.1', xff: '198.51.100.7', want: '198.51.100.7' },
    { name: "'a, b' with b trusted → a", peer: '10.0.0.1', xff: '198.51.100.7, 10.0.0.2', want: '198.51.100.7' },
    { name: 'first untrusted from the right wins over a spoofed left part', peer: '10.0.0.1', xff: '6.6.6.6, 198.51.100.7, 10.0.0.2', want: '198.51.100.7' },
    { name: 'all trusted → leftmost', peer: '10.0.0.1', xff: '10.9.9.9, 10.0.0.2', want: '10.9.9.9' },
    { name: 'garbage in the middle stops at the hop to its right', peer: '10.0.0.1', xff: '1.1.1.1, garbage, 10.0.0.2', want: '10.0.0.2' },
    { name: "'unknown' stops the walk", peer: '10.0.0.1', xff: 'unknown, 10.0.0.2', want: '10.0.0.2' },
    { name: 'garbage rightmost → the peer', peer: '10.0.0.1', xff: '1.1.1.1, nope', want: '10.0.0.1' },
    { name: 'empty xff → the peer', peer: '10.0.0.1', xff: '', want: '10.0.0.1' },
    { name: 'blank xff → the peer', peer: '10.0.0.1', xff: '   ', want: '10.0.0.1' },
    { name: 'trailing comma is an empty hop', peer: '10.0.0.1', xff: '1.1.1.1,', want: '10.0.0.1' },
    { name: 'empty hop in the middle', peer: '10.0.0.1', xff: '1.1.1.1, , 10.0.0.2', want: '10.0.0.2' },
    { name: 'leading comma behind trusted hops', peer: '10.0.0.1', xff: ',10.0.0.2', want: '10.0.0.2' },
    { name: 'untrusted hop left of garbage is not reached', peer: '10.0.0.1', xff: '1.1.1.1, 10.0.0.256', want: '10.0.0.1' },
    { name: 'legacy IPv4 spelling is garbage', peer: '10.0.0.1', xff: '1.1.1.1, 10.1', want: '10.0.0.1' },
    { name: 'spaces and tabs around entries', peer: '10.0.0.1', xff: ' \t198.51.100.7 \t,\t10.0.0.2  ', want: '198.51.100.7' },
    { name: 'no spaces at all', peer: '10.0.0.1', xff: '198.51.100.7,10.0.0.2', want: '198.51.100.7' },
    { name: 'repeated headers joined', peer: '10.0.0.1', xff: '198.51.100.7, 10.0.0.3, 10.0.0.2', want: '198.51.100.7' },
    { name: 'IPv4 with a port', peer: '10.0.0.1', xff: '198.51.100.7:5678, 10.0.0.2:443', want: '198.51.100.7' },
    { name: 'bracketed IPv6 with a port', peer: '10.0.0.1', xff: '[2001:db8::1]:443', want: '2001:db8::1' },
    { name: 'bracketed IPv6 without a port', peer: '10.0.0.1', xff: '[::1]', want: '::1' },
    { name: 'a trusted bracketed hop is walked past', peer: '10.0.0.1', xff: '198.51.100.7, [2001:db8:1::9]:80', want: '198.51.100.7' },
    { name: 'bad port is garbage', peer: '10.0.0.1', xff: '198.51.100.7:http', want: '10.0.0.1' },
    { name: 'empty port is garbage', peer: '10.0.0.1', xff: '198.51.100.7:', want: '10.0.0.1' },
    { name: 'six-digit port is garbage', peer: '10.0.0.1', xff: '198.51.100.7:123456', want: '10.0.0.1' },
    { name: 'unclosed bracket is garbage', peer: '10.0.0.1', xff: '[2001:db8::1', want: '10.0.0.1' },
    { name: 'junk after a bracket is garbage', peer: '10.0.0.1', xff: '[2001:db8::1]x', want: '10.0.0.1' },
    { name: 'mapped hop becomes IPv4', peer: '10.0.0.1', xff: '::ffff:198.51.100.7', want: '198.51.100.7' },
    { name: 'mapped hex hop becomes IPv4', peer: '10.0.0.1', xff: '[::ffff:c633:6407]:80', want: '198.51.100.7' },
    { name: 'mapped trusted hop is walked past', peer: '10.0.0.1', xff: '198.51.100.7, ::ffff:10.0.0.2', want: '198.51.100.7' },
    { name: 'IPv6 chain', peer: '2001:db8:1::1', xff: '2001:db8:cafe::17, 2001:db8:1::2', want: '2001:db8:cafe::17' },
    { name: 'IPv6 chain, all trusted → leftmost', peer: '2001:db8:1::1', xff: '2001:db8:1::3, 2001:db8:1::2', want: '2001:db8:1::3' },
    { name: 'IPv6 kept as written (case)', peer: '2001:db8:1::1', xff: '2001:DB8:CAFE::17', want: '2001:DB8:CAFE::17' },
    { name: 'mixed chain: v4 client behind v6 edge behind v4 balancer', peer: '::ffff:10.0.0.1', xff: '198.51.100.7, 2001:db8:1::2', want: '198.51.100.7' },
    { name: '32 trusted hops → the leftmost of them', peer: '10.0.0.1', xff: many(32), want: '10.0.0.0' },
    { name: '33 trusted hops: the 33rd from the right is garbage', peer: '10.99.0.1', xff: many(33), want: '10.0.0.1' },
    { name: 'a client left of 32 trusted hops is not reached', peer: '10.0.0.1', xff: `198.51.100.7, ${many(32)}`, want: '10.0.0.0' },
    { name: 'a client within 32 hops is found', peer: '10.0.0.1', xff: `6.6.6.6, 198.51.100.7, ${many(31)}`, want: '198.51.100.7' }
  ]
  for (const c of cases) t.equal(tp.clientAddress(c.peer, c.xff), c.want, c.name)

  t.equal(tp.clientAddress('garbage', '1.1.1.1'), 'garbage', 'a peer that is no address is returned untouched')
  const huge = `${'1.1.1.1, '.repeat(100_000)}10.0.0.2`
  const t0 = performance.now()
  t.equal(tp.clientAddress('10.0.0.1', huge), '1.1.1.1', 'a huge header: only its right end is read')
  t.ok(performance.now() - t0 < 50, 'and quickly')
})

t.test('clientAddress: IPv6 hops when no IPv6 range is trusted', async (t) => {
  const v4only = new TrustedProxies(['10.0.0.0/8'])
  t.equal(v4only.clientAddress('10.0.0.1', '2001:db8::1, 10.0.0.2'), '2001:db8::1')
  t.equal(v4only.clientAddress('10.0.0.1', '1.1.1.1, ffff::1'), 'ffff::1', 'an ffff group that is not a mapped address')
  t.equal(v4only.clientAddress('10.0.0.1', '1.1.1.1, ::ffff:a00:2'), '1.1.1.1', 'a mapped trusted hop still matches IPv4 ranges')
  t.equal(v4only.trusts('::1'), false)
})
