import type { IncomingHttpHeaders } from 'node:http'
import { isIP } from 'node:net'
import ipaddr from 'ipaddr.js'
import t, { type Test } from 'tap'
import { validateSegments } from '../../src/config/segments.js'
import { ConfigError } from '../../src/errors.js'
import { hashKey } from '../../src/routing/hash.js'
import { pickFrom, pickVersion } from '../../src/routing/pick.js'
import { matchSegment } from '../../src/routing/segments.js'
import type { RouteSpec, SegmentMatch, SegmentSpec } from '../../src/routing/spec.js'
import { buildRoutingTable } from '../../src/routing/table.js'
import type { Route, Segment } from '../../src/routing/types.js'
import { seededKeys } from '../helpers/keys.js'

function route (segments: SegmentSpec[] | undefined, weights: Record<string, number> = { stable: 90, canary: 10 }): Route {
  const spec: RouteSpec = {
    name: 'web',
    match: { pathPrefix: '/' },
    sticky: { keys: ['header:x-user-id'], cookie: { name: 'canaryd_id', maxAge: 60 } },
    override: {},
    versions: Object.entries(weights).map(([n, w], i) => ({ name: n, upstream: [`http://127.0.0.1:${1000 + i}`], weight: w }))
  }
  if (segments !== undefined) spec.segments = segments
  return buildRoutingTable([spec]).routes[0]!
}

/** A route with one segment `s` matching `m`, pinned to canary. */
function one (m: SegmentMatch): Route {
  return route([{ name: 's', match: m, version: 'canary' }])
}

/** The same keys every run (see test/helpers/keys.ts). */
function keys (n: number, seed = 777): string[] {
  return seededKeys(n, seed)
}

type Case = [what: string, headers: IncomingHttpHeaders, url: string, ip: string, want: boolean]

function check (t: Test, m: SegmentMatch, cases: readonly Case[]): void {
  const r = one(m)
  for (const [what, headers, url, ip, want] of cases) {
    t.equal(matchSegment(r, headers, url, ip)?.name, want ? 's' : undefined, `${JSON.stringify(m)}: ${what}`)
  }
}

t.test('header: exact, list, regex, repeated, absent', async (t) => {
  check(t, { header: { 'x-beta': ['yes'] } }, [
    ['equal', { 'x-beta': 'yes' }, '/', '', true],
    ['case-sensitive value', { 'x-beta': 'Yes' }, '/', '', false],
    ['prefix is not equal', { 'x-beta': 'yess' }, '/', '', false],
    ['absent', {}, '/', '', false],
    ['empty', { 'x-beta': '' }, '/', '', false]
  ])
  check(t, { header: { 'x-team': ['red', 'blue', 'green'] } }, [
    ['first of list', { 'x-team': 'red' }, '/', '', true],
    ['last of list', { 'x-team': 'green' }, '/', '', true],
    ['not in list', { 'x-team': 'black' }, '/', '', false]
  ])
  check(t, { header: { 'user-agent': { regex: '^Mozilla/.*Android' } } }, [
    ['regex holds', { 'user-agent': 'Mozilla/5.0 (Linux; Android 14)' }, '/', '', true],
    ['anchored: not at start', { 'user-agent': 'curl Mozilla/5.0 Android' }, '/', '', false]
  ])
  check(t, { header: { 'x-tag': { regex: 'beta' } } }, [
    ['unanchored regex searches anywhere', { 'x-tag': 'pre-beta-2' }, '/', '', true],
    ['regex does not hold', { 'x-tag': 'stable' }, '/', '', false]
  ])
  check(t, { header: { 'x-team': ['a, b'] } }, [
    ['repeated header matched on its values joined with ", "', { 'x-team': ['a', 'b'] }, '/', '', true],
    ['one of the repeated values alone does not', { 'x-team': ['a'] }, '/', '', false]
  ])
  check(t, { header: { 'x-team': { regex: '(^|, )b($|,)' } } }, [
    ['regex over the joined repeated header', { 'x-team': ['a', 'b'] }, '/', '', true]
  ])
  // a spec built without the validator (the store's own) still matches: names are lower-cased at compile
  check(t, { header: { 'X-Beta': ['1'] } }, [['upper-case name in the spec', { 'x-beta': '1' }, '/', '', true]])
})

t.test('cookie: exact and regex, raw value', async (t) => {
  check(t, { cookie: { plan: ['gold'] } }, [
    ['only cookie', { cookie: 'plan=gold' }, '/', '', true],
    ['among others', { cookie: 'a=1; plan=gold; b=2' }, '/', '', true],
    ['quoted value', { cookie: 'plan="gold"' }, '/', '', true],
    ['another value', { cookie: 'plan=silver' }, '/', '', false],
    ['suffix of another name', { cookie: 'xplan=gold' }, '/', '', false],
    ['no cookie header', {}, '/', '', false],
    ['empty value', { cookie: 'plan=' }, '/', '', false]
  ])
  check(t, { cookie: { plan: { regex: '^(gold|platinum)$' } } }, [
    ['regex alternative', { cookie: 'plan=platinum' }, '/', '', true],
    ['regex anchored', { cookie: 'plan=goldish' }, '/', '', false]
  ])
  check(t, { cookie: { who: ['a%20b'] } }, [['cookie values are not percent-decoded', { cookie: 'who=a%20b' }, '/', '', true]])
})

t.test('query: exact, list, regex, percent-decoding, malformed escapes', async (t) => {
  check(t, { query: { beta: ['1'] } }, [
    ['present', {}, '/p?beta=1', '', true],
    ['after another', {}, '/p?x=2&beta=1', '', true],
    ['another value', {}, '/p?beta=0', '', false],
    ['no query', {}, '/p', '', false],
    ['empty value', {}, '/p?beta=', '', false],
    ['in the fragment', {}, '/p?x=1#beta=1', '', false]
  ])
  check(t, { query: { tier: ['a', 'b'] } }, [
    ['list: a', {}, '/?tier=a', '', true],
    ['list: b', {}, '/?tier=b', '', true],
    ['list: c', {}, '/?tier=c', '', false]
  ])
  check(t, { query: { q: { regex: '^\\d+$' } } }, [
    ['regex digits', {}, '/?q=123', '', true],
    ['regex not digits', {}, '/?q=12a', '', false]
  ])
  check(t, { query: { name: ['gold plus', 'é'] } }, [
    ['%20 decoded', {}, '/?name=gold%20plus', '', true],
    ['UTF-8 escape decoded', {}, '/?name=%C3%A9', '', true],
    ['+ is not a space (decodeURIComponent)', {}, '/?name=gold+plus', '', false]
  ])
  check(t, { query: { raw: ['%E0%A4%A', '100%'] } }, [
    ['a malformed escape is matched as written', {}, '/?raw=%E0%A4%A', '', true],
    ['a lone % is matched as written', {}, '/?raw=100%', '', true]
  ])
})

t.test('ip: v4 and v6 CIDRs, plain addresses, IPv4-mapped, garbage', async (t) => {
  check(t, { ip: ['10.0.0.0/8', '192.168.1.7'] }, [
    ['inside v4 CIDR', {}, '/', '10.1.2.3', true],
    ['first address of CIDR', {}, '/', '10.0.0.0', true],
    ['last address of CIDR', {}, '/', '10.255.255.255', true],
    ['outside v4 CIDR', {}, '/', '11.0.0.1', false],
    ['plain address is a /32', {}, '/', '192.168.1.7', true],
    ['next to the plain address', {}, '/', '192.168.1.8', false],
    ['IPv4-mapped v6 compares as v4', {}, '/', '::ffff:10.9.8.7', true],
    ['IPv4-mapped v6, hex spelling', {}, '/', '::ffff:a09:807', true],
    ['mapped outside', {}, '/', '::ffff:11.0.0.1', false],
    ['a v6 client against v4 ranges', {}, '/', '2001:db8::1', false],
    ['unparsable', {}, '/', 'not-an-ip', false],
    ['legacy short form is not an address', {}, '/', '10.1', false],
    ['leading zeros are not an address', {}, '/', '010.0.0.1', false],
    ['octet over 255', {}, '/', '10.0.0.256', false],
    ['empty', {}, '/', '', false],
    ['broken v6', {}, '/', '::ffff:zz', false]
  ])
  check(t, { ip: ['2001:db8::/32', 'fe80::/10', '::1'] }, [
    ['inside v6 CIDR', {}, '/', '2001:db8:1::5', true],
    ['outside v6 CIDR', {}, '/', '2001:db9::1', false],
    ['plain v6 address is a /128', {}, '/', '::1', true],
    ['zone is ignored', {}, '/', 'fe80::1%eth0', true],
    ['a v4 client against v6 ranges', {}, '/', '10.0.0.1', false],
    ['unparsable v6', {}, '/', '2001:db8:::1', false]
  ])
  check(t, { ip: ['::ffff:10.0.0.0/104'] }, [
    ['a mapped CIDR stands for its v4 range', {}, '/', '10.20.30.40', true],
    ['and its mapped clients', {}, '/', '::ffff:10.20.30.40', true],
    ['outside it', {}, '/', '11.20.30.40', false]
  ])
  check(t, { ip: ['0.0.0.0/0'] }, [['/0 holds every v4 address', {}, '/', '203.0.113.9', true]])
})

t.test('ip: the address parser agrees with node:net and ipaddr.js', async (t) => {
  // every spelling isIP accepts is an address (and nothing else): ::/0 holds every non-mapped v6, 0.0.0.0/0 every v4 and mapped v6
  const any = one({ ip: ['0.0.0.0/0', '::/0'] })
  const spellings = [
    '::', '::1', '1::', '1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7::', '::2:3:4:5:6:7:8', '1::8', 'FE80::1', 'fe80::1%eth0', '2001:DB8:0:0:0:0:0:1',
    '::ffff:1.2.3.4', '::FFFF:1.2.3.4', '0:0:0:0:0:ffff:1.2.3.4', '::ffff:102:304', '1:2:3:4:5:6:1.2.3.4', '::1.2.3.4', '64:ff9b::192.0.2.33',
    ':', ':::', '1:::2', '1::2::3', ':1', '1:', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7:8::', '::1:2:3:4:5:6:7:8', '12345::', 'g::1', '1:2:3:4:5:6:7',
    '::ffff:1.2.3', '::ffff:01.2.3.4', '::ffff:1.2.3.4:5', '1.2.3.4::', '::1.2.3.4.5', '%eth0', '::%', '', '1.2.3.4', '255.255.255.255', '0.0.0.0',
    '1.2.3', '1.2.3.4.5', '256.1.1.1', ' 1.2.3.4', '1.2.3.4 ', '1..2.3', '01.2.3.4'
  ]
  for (const s of spellings) {
    const want = isIP(s.split('%')[0]!) !== 0 && !s.startsWith('%')
    t.equal(matchSegment(any, {}, '/', s) !== undefined, want, `${JSON.stringify(s)} is ${want ? '' : 'not '}an address`)
  }

  // random addresses and ranges, matched against ipaddr.js's own match
  let seed = 4242
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0
    return seed % n
  }
  let checked = 0
  for (let i = 0; i < 400; i++) {
    const parts = Array.from({ length: 8 }, () => rnd(4) === 0 ? 0 : rnd(0x10000))
    const base = new ipaddr.IPv6(parts)
    if (base.isIPv4MappedAddress()) continue
    const bits = rnd(129)
    const r = one({ ip: [`${base.toString()}/${bits}`] })
    const range: [ipaddr.IPv6, number] = [base, bits]
    for (let j = 0; j < 5; j++) {
      // a near neighbour: the same address with one random bit flipped (inside or outside the prefix)
      const flip = rnd(128)
      const near = parts.slice()
      near[flip >> 4] = near[flip >> 4]! ^ (0x8000 >> (flip & 15))
      const addr = new ipaddr.IPv6(near)
      if (addr.isIPv4MappedAddress()) continue
      const want = addr.match(range)
      for (const text of [addr.toString(), addr.toNormalizedString(), near.map((p) => p.toString(16).padStart(4, '0')).join(':').toUpperCase()]) {
        if (matchSegment(r, {}, '/', text) !== undefined !== want) t.fail(`${text} in ${base.toString()}/${bits}: want ${want}`)
        checked++
      }
    }
  }
  t.ok(checked > 5000, `${checked} random v6 address/range pairs agree with ipaddr.js`)
})

t.test('several keys: every one must hold', async (t) => {
  check(t, { header: { 'x-beta': ['1'] }, cookie: { plan: ['gold'] }, query: { r: ['eu'] }, ip: ['10.0.0.0/8'] }, [
    ['all four hold', { 'x-beta': '1', cookie: 'plan=gold' }, '/?r=eu', '10.0.0.1', true],
    ['header fails', { 'x-beta': '2', cookie: 'plan=gold' }, '/?r=eu', '10.0.0.1', false],
    ['cookie fails', { 'x-beta': '1', cookie: 'plan=iron' }, '/?r=eu', '10.0.0.1', false],
    ['query fails', { 'x-beta': '1', cookie: 'plan=gold' }, '/?r=us', '10.0.0.1', false],
    ['ip fails', { 'x-beta': '1', cookie: 'plan=gold' }, '/?r=eu', '11.0.0.1', false]
  ])
})

t.test('segment order: the first that holds wins; none → undefined', async (t) => {
  const r = route([
    { name: 'staff', match: { header: { 'x-staff': ['1'] } }, version: 'stable' },
    { name: 'beta', match: { cookie: { beta: ['1'] } }, version: 'canary' },
    { name: 'office', match: { ip: ['10.0.0.0/8'] }, weights: { stable: 50, canary: 50 } }
  ])
  t.equal(matchSegment(r, { 'x-staff': '1', cookie: 'beta=1' }, '/', '10.0.0.1')?.name, 'staff', 'first of three that hold')
  t.equal(matchSegment(r, { cookie: 'beta=1' }, '/', '10.0.0.1')?.name, 'beta', 'second of two that hold')
  t.equal(matchSegment(r, {}, '/', '10.0.0.1')?.name, 'office', 'only the last holds')
  t.equal(matchSegment(r, {}, '/', '192.0.2.1'), undefined, 'none holds')
  t.same(r.segments.map((s) => [s.name, s.index, s.pinned]), [['staff', 0, 'stable'], ['beta', 1, 'canary'], ['office', 2, '']], 'index and pinned')
  t.ok(Object.isFrozen(r.segments) && r.segments.every((s) => Object.isFrozen(s) && Object.isFrozen(s.active)), 'segments are frozen')

  const none = route(undefined)
  t.same(none.segments, [], 'no segments: an empty list')
  t.equal(matchSegment(none, { 'x-staff': '1' }, '/', '10.0.0.1'), undefined, 'no segments → undefined')
  t.equal(route([]).segments.length, 0, 'an empty segments array compiles to none')
})

t.test('regex safety: RE2 is linear, backreferences are refused', async (t) => {
  const r = one({ header: { 'x-q': { regex: '(a+)+$' } } })
  const evil = 'a'.repeat(30_000) + 'b'
  const t0 = performance.now()
  const got = matchSegment(r, { 'x-q': evil }, '/', '')
  const ms = performance.now() - t0
  t.equal(got, undefined, '(a+)+$ does not hold for a…ab')
  t.ok(ms < 200, `(a+)+$ against 30,001 characters took ${ms.toFixed(1)} ms (a backtracking engine would not finish)`)
  t.equal(matchSegment(r, { 'x-q': 'a'.repeat(4096) }, '/', '')?.name, 's', 'and it holds for a…a')
  t.equal(matchSegment(r, { 'x-q': 'a'.repeat(4097) }, '/', ''), undefined, 'a value over MAX_REGEX_INPUT (4096) never matches a regex')
  t.equal(matchSegment(one({ header: { 'x-q': ['a'.repeat(5000)] } }), { 'x-q': 'a'.repeat(5000) }, '/', '')?.name, 's', 'exact values have no such limit')
  const big = t.throws(() => validateSegments([{ name: 's', match: { header: { 'x-q': { regex: 'a[ab]{900}$' } } }, version: 'canary' }], ['stable', 'canary'], 'routes[0].segments')) as ConfigError
  t.match(big.message, /^routes\[0\]\.segments\[0\]\.match\.header\.x-q\.regex: pattern compiles to \d+ RE2 instructions, at most 200/, 'a large program is refused (it would cost milliseconds a request)')

  const err = t.throws(() => validateSegments([{ name: 's', match: { header: { 'x-q': { regex: '(a)\\1' } } }, version: 'canary' }], ['stable', 'canary'], 'routes[0].segments')) as ConfigError
  t.type(err, ConfigError)
  t.match(err.message, /^routes\[0\]\.segments\[0\]\.match\.header\.x-q\.regex: invalid RE2 pattern: .*\\1/, 'a backreference is refused with re2js\'s message')
})

/** The segment pick of every key (route salt, as the proxy hashes). */
function segmentPicks (r: Route, seg: Segment, ks: readonly string[]): string[] {
  return ks.map((k) => pickFrom(seg.active, hashKey(r.salt, k))!.name)
}

t.test('within a segment: shares follow its weights, moves are monotone, the route weights do not matter', async (t) => {
  const ks = keys(20_000)
  const at = (canary: number, routeWeights?: Record<string, number>): Route => route([
    { name: 'beta', match: { cookie: { beta: ['1'] } }, weights: { stable: 100 - canary, canary } }
  ], routeWeights)
  const picks = new Map<number, string[]>()
  for (const w of [10, 20, 50]) {
    const r = at(w)
    const seg = matchSegment(r, { cookie: 'beta=1' }, '/', '')!
    t.same(seg.active.map((v) => [v.name, v.index, v.weight, v.ppm]), [['stable', 0, 100 - w, (100 - w) * 10_000], ['canary', 1, w, w * 10_000]], `segment at ${w}: re-weighted versions`)
    t.same(seg.active.map((v) => v.seed), r.versions.map((v) => v.seed), 'same seeds as the route\'s versions')
    t.same(seg.active.map((v) => v.endpointsKey), r.versions.map((v) => v.endpointsKey), 'same endpoints')
    const p = segmentPicks(r, seg, ks)
    picks.set(w, p)
    const share = 100 * p.filter((v) => v === 'canary').length / ks.length
    t.ok(Math.abs(share - w) <= 1, `segment canary weight ${w}: share ${share.toFixed(2)}%`)
  }
  for (const [lo, hi] of [[10, 20], [20, 50], [10, 50]] as const) {
    const a = picks.get(lo)!
    const b = picks.get(hi)!
    let back = 0
    let moved = 0
    for (let i = 0; i < ks.length; i++) {
      if (a[i] === b[i]) continue
      moved++
      if (!(a[i] === 'stable' && b[i] === 'canary')) back++
    }
    t.equal(back, 0, `${lo} → ${hi}: ${moved} keys moved, all stable → canary`)
    t.ok(moved > 0, `${lo} → ${hi}: some keys moved`)
  }

  for (const rw of [{ stable: 100, canary: 0 }, { stable: 0, canary: 100 }, { stable: 37.5, canary: 62.5 }]) {
    const r = at(20, rw)
    const seg = matchSegment(r, { cookie: 'beta=1' }, '/', '')!
    t.same(segmentPicks(r, seg, ks), picks.get(20), `route weights ${JSON.stringify(rw)} do not change the segment's picks`)
  }
  // and the segment does not change the route's own pick for everyone else
  const plain = route(undefined)
  const withSeg = at(50)
  t.same(ks.slice(0, 2000).map((k) => pickVersion(withSeg, hashKey(withSeg.salt, k))!.name), ks.slice(0, 2000).map((k) => pickVersion(plain, hashKey(plain.salt, k))!.name), 'route pick unchanged by a segment')
})

t.test('a pinned segment always gives its version; ejection falls through to undefined', async (t) => {
  const ks = keys(20_000, 99)
  for (const [version, rw] of [['canary', { stable: 100, canary: 0 }], ['stable', { stable: 0, canary: 100 }], ['b', { a: 50, b: 0, c: 50 }]] as const) {
    const r = route([{ name: 'pin', match: { header: { 'x-pin': ['1'] } }, version }], rw)
    const seg = matchSegment(r, { 'x-pin': '1' }, '/', '')!
    t.equal(seg.pinned, version, 'pinned name')
    t.same(seg.active.map((v) => [v.name, v.weight]), [[version, 100]], 'one active version at 100')
    t.ok(segmentPicks(r, seg, ks).every((v) => v === version), `pinned to ${version} (route weights ${JSON.stringify(rw)}): every key`)
    const idx = r.versionByName.get(version)!.index
    t.equal(pickFrom(seg.active, hashKey(r.salt, ks[0]!), 1 << idx), undefined, 'pinned version ejected: no segment pick (the proxy falls back to the route\'s)')
  }
  // a weighted segment with its versions' 0% kept out of `active`
  const r = route([{ name: 'w', match: { header: { 'x-w': ['1'] } }, weights: { a: 0, b: 100, c: 0 } }], { a: 50, b: 0, c: 50 })
  t.same(r.segments[0]!.active.map((v) => v.name), ['b'], '0% versions are not candidates')
  t.equal(r.segments[0]!.pinned, '', 'weighted: not pinned')
})

t.test('regex fast path: ^prefix and ^exact$ of plain characters answer exactly as RE2 does', async (t) => {
  const { RE2JS } = await import('re2js')
  const patterns = ['^beta-', '^beta-$', '^a', '^KR$', '^x=1,y:2@z', '^beta-.*', '^(beta)-', 'beta-$', '^be\\.ta']
  const values = ['beta-', 'beta-1', 'xbeta-', 'beta', 'BETA-1', 'a', 'ab', 'KR', 'KRX', 'x=1,y:2@z!', 'beta-\n', '', 'be.ta', 'bexta']
  for (const p of patterns) {
    const r = one({ cookie: { plan: { regex: p } } })
    const re = RE2JS.compile(p)
    for (const v of values) {
      const want = v.length !== 0 && re.test(v) // an empty cookie never matches
      t.equal(matchSegment(r, { cookie: `plan=${v}` }, '/', '127.0.0.1') !== undefined, want, `${p} on ${JSON.stringify(v)}`)
    }
  }
})

t.test('headers named like Object.prototype members are read as values, never through the prototype', async (t) => {
  for (const name of ['constructor', '__proto__', 'tostring', 'hasownproperty']) {
    const r = one({ header: { [name]: ['v'] } })
    // Node's IncomingMessage headers object is an ordinary object
    const headers: IncomingHttpHeaders = {}
    t.equal(matchSegment(r, headers, '/', '127.0.0.1'), undefined, `${name}: absent, no throw`)
    Object.defineProperty(headers, name, { value: 'v', enumerable: true })
    t.equal(matchSegment(r, headers, '/', '127.0.0.1')?.name, 's', `${name}: present as an own value, it matches`)
  }
})
