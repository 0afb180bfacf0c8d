import t, { type Test } from 'tap'
import { configFromObject } from '../../src/config/load.js'
import { MIRROR_DEFAULTS, validateMirror, validateSegments } from '../../src/config/segments.js'
import { ConfigError } from '../../src/errors.js'

const VERSIONS = ['stable', 'canary']
const AT = 'routes[0].segments'

const v2 = (): unknown[] => [
  { name: 'stable', upstream: 'http://127.0.0.1:3001', weight: 90 },
  { name: 'canary', upstream: 'http://127.0.0.1:3002', weight: 10 }
]
const route = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ name: 'web', versions: v2(), ...extra })
const seg = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ name: 'beta', match: { cookie: { beta: '1' } }, version: 'canary', ...extra })

function fails (t: Test, what: string, fn: () => unknown, want: string): void {
  const err = t.throws(fn, what) as ConfigError
  t.type(err, ConfigError, `${what}: a ConfigError`)
  t.equal(err.message, want, what)
  t.notMatch(err.message, /\n/, `${what}: one line`)
  t.equal(err.code, 'CANARYD_ERR_CONFIG_INVALID', `${what}: code`)
}

t.test('segments: each rule names its exact key', async (t) => {
  const cases: Array<[string, unknown, string]> = [
    ['not an array', { beta: 1 }, `${AT}: must be an array of segments, got {"beta":1}`],
    ['too many', Array.from({ length: 33 }, (_, i) => seg({ name: `s${i}` })), `${AT}: at most 32 segments per route, got 33`],
    ['segment not an object', ['x'], `${AT}[0]: must be an object with name, match and version or weights`],
    ['unknown segment key', [seg({ wieghts: 1 })], `${AT}[0].wieghts: unknown key (allowed: name, match, version, weights)`],
    ['missing name', [{ match: { cookie: { a: '1' } }, version: 'canary' }], `${AT}[0].name: must be a segment name (letters, digits, _ . -; up to 63), got undefined`],
    ['bad name', [seg({ name: '-x' })], `${AT}[0].name: must be a segment name (letters, digits, _ . -; up to 63), got "-x"`],
    ['duplicate name', [seg(), seg({ match: { header: { 'x-a': '1' } } })], `${AT}[1].name: duplicate segment name "beta"`],
    ['missing match', [{ name: 'a', version: 'canary' }], `${AT}[0].match: is required`],
    ['match not an object', [seg({ match: 'x' })], `${AT}[0].match: must be an object with at least one of header, cookie, query, ip, got "x"`],
    ['empty match', [seg({ match: {} })], `${AT}[0].match: needs at least one of header, cookie, query, ip`],
    ['unknown match key', [seg({ match: { path: '/x' } })], `${AT}[0].match.path: unknown key (allowed: header, cookie, query, ip)`],
    ['both version and weights', [seg({ weights: { canary: 100 } })], `${AT}[0]: set version (pinned) or weights, not both`],
    ['neither version nor weights', [{ name: 'a', match: { cookie: { a: '1' } } }], `${AT}[0]: needs version (pinned) or weights`],
    ['unknown version', [seg({ version: 'blue' })], `${AT}[0].version: unknown version "blue" (route has stable, canary)`],
    ['version not a string', [seg({ version: 1 })], `${AT}[0].version: unknown version 1 (route has stable, canary)`],
    ['weights not an object', [{ name: 'a', match: { cookie: { a: '1' } }, weights: [50, 50] }], `${AT}[0].weights: must be an object of version name → percent, got [50,50]`],
    ['weights: unknown version', [{ name: 'a', match: { cookie: { a: '1' } }, weights: { stable: 50, blue: 50 } }], `${AT}[0].weights.blue: unknown version (route has stable, canary)`],
    ['weights: bad weight', [{ name: 'a', match: { cookie: { a: '1' } }, weights: { stable: 110, canary: -10 } }], `${AT}[0].weights.stable: must be between 0 and 100, got 110`],
    ['weights: too precise', [{ name: 'a', match: { cookie: { a: '1' } }, weights: { stable: 99.99999, canary: 0.00001 } }], `${AT}[0].weights.stable: must have at most 4 decimals, got 99.99999`],
    ['weights: string', [{ name: 'a', match: { cookie: { a: '1' } }, weights: { stable: '100' } }], `${AT}[0].weights.stable: must be a number, got "100"`],
    ['weights: sum', [{ name: 'a', match: { cookie: { a: '1' } }, weights: { canary: 20 } }], `${AT}[0].weights: weights sum to 20, must be 100`],
    ['weights: empty', [{ name: 'a', match: { cookie: { a: '1' } }, weights: {} }], `${AT}[0].weights: weights sum to 0, must be 100`],
    ['header not an object', [seg({ match: { header: ['x-a'] } })], `${AT}[0].match.header: must be an object of header name → value match, got ["x-a"]`],
    ['header: no names', [seg({ match: { header: {} } })], `${AT}[0].match.header: must name at least one header`],
    ['header: bad name', [seg({ match: { header: { 'x a': '1' } } })], `${AT}[0].match.header.x a: is not a valid header name (an HTTP token)`],
    ['header: names differ only in case', [seg({ match: { header: { 'X-A': '1', 'x-a': '2' } } })], `${AT}[0].match.header.x-a: duplicate header name "x-a" (header names are case-insensitive)`],
    ['cookie: bad name', [seg({ match: { cookie: { 'a;b': '1' } } })], `${AT}[0].match.cookie.a;b: is not a valid cookie name (an HTTP token)`],
    ['query: empty name', [seg({ match: { query: { '': '1' } } })], `${AT}[0].match.query.: a query parameter name must not be empty`],
    ['value: empty string', [seg({ match: { cookie: { plan: '' } } })], `${AT}[0].match.cookie.plan: must be a non-empty string, a non-empty array of strings or {"regex": "…"}, got ""`],
    ['value: empty array', [seg({ match: { cookie: { plan: [] } } })], `${AT}[0].match.cookie.plan: must be a non-empty string, a non-empty array of strings or {"regex": "…"}, got []`],
    ['value: a number (YAML)', [seg({ match: { query: { v: 2 } } })], `${AT}[0].match.query.v: must be a non-empty string, a non-empty array of strings or {"regex": "…"}, got 2 (quote it in YAML)`],
    ['value: null', [seg({ match: { query: { v: null } } })], `${AT}[0].match.query.v: must be a non-empty string, a non-empty array of strings or {"regex": "…"}, got null`],
    ['value: a bad list item', [seg({ match: { header: { 'x-a': ['a', true] } } })], `${AT}[0].match.header.x-a[1]: must be a non-empty string, got true (quote it in YAML)`],
    ['value: too many', [seg({ match: { header: { 'x-a': Array.from({ length: 65 }, (_, i) => `v${i}`) } } })], `${AT}[0].match.header.x-a: at most 64 values, got 65`],
    ['regex: unknown key', [seg({ match: { cookie: { plan: { regexp: 'a' } } } })], `${AT}[0].match.cookie.plan.regexp: unknown key (allowed: regex)`],
    ['regex: empty', [seg({ match: { cookie: { plan: { regex: '' } } } })], `${AT}[0].match.cookie.plan.regex: must be a non-empty RE2 pattern, got ""`],
    ['regex: too long', [seg({ match: { cookie: { plan: { regex: 'a'.repeat(1025) } } } })], `${AT}[0].match.cookie.plan.regex: pattern is 1025 characters, at most 1024`],
    ['regex: syntax', [seg({ match: { cookie: { plan: { regex: '[a' } } } })], `${AT}[0].match.cookie.plan.regex: invalid RE2 pattern: error parsing regexp: missing closing ]: \`[a\` (RE2 has no backreferences or lookaround)`],
    ['regex: backreference', [seg({ match: { cookie: { plan: { regex: '(a)\\1' } } } })], `${AT}[0].match.cookie.plan.regex: invalid RE2 pattern: error parsing regexp: invalid escape sequence: \`\\1\` (RE2 has no backreferences or lookaround)`],
    ['regex: lookahead', [seg({ match: { query: { q: { regex: 'a(?=b)' } } } })], `${AT}[0].match.query.q.regex: invalid RE2 pattern: error parsing regexp: invalid or unsupported Perl syntax: \`(?=\` (RE2 has no backreferences or lookaround)`],
    ['ip: empty', [seg({ match: { ip: [] } })], `${AT}[0].match.ip: must be a non-empty array of IP addresses or CIDRs, got []`],
    ['ip: not a list', [seg({ match: { ip: { a: 1 } } })], `${AT}[0].match.ip: must be a non-empty array of IP addresses or CIDRs, got {"a":1}`],
    ['ip: too many', [seg({ match: { ip: Array.from({ length: 257 }, (_, i) => `10.0.${i >> 8}.${i & 255}`) } })], `${AT}[0].match.ip: at most 256 entries, got 257`],
    ['ip: garbage', [seg({ match: { ip: ['10.0.0.0/8', 'nope'] } })], `${AT}[0].match.ip[1]: "nope" is not an IP address or CIDR`],
    ['ip: legacy short form', [seg({ match: { ip: ['10.1'] } })], `${AT}[0].match.ip[0]: "10.1" is not an IP address or CIDR`],
    ['ip: v4 prefix too long', [seg({ match: { ip: ['10.0.0.0/33'] } })], `${AT}[0].match.ip[0]: "10.0.0.0/33" is not a CIDR (prefix length 0-32 for IPv4)`],
    ['ip: v6 prefix too long', [seg({ match: { ip: ['2001:db8::/129'] } })], `${AT}[0].match.ip[0]: "2001:db8::/129" is not a CIDR (prefix length 0-128 for IPv6)`],
    ['ip: prefix not a number', [seg({ match: { ip: ['10.0.0.0/x'] } })], `${AT}[0].match.ip[0]: "10.0.0.0/x" is not a CIDR (prefix length 0-32 for IPv4)`],
    ['ip: zone', [seg({ match: { ip: ['fe80::1%eth0'] } })], `${AT}[0].match.ip[0]: "fe80::1%eth0" is not an IP address or CIDR`],
    ['ip: a number', [seg({ match: { ip: [10] } })], `${AT}[0].match.ip[0]: must be an IP address or CIDR, got 10`],
    ['ip: single bad string', [seg({ match: { ip: '300.0.0.1' } })], `${AT}[0].match.ip: "300.0.0.1" is not an IP address or CIDR`]
  ]
  for (const [what, raw, want] of cases) fails(t, what, () => validateSegments(raw, VERSIONS, AT), want)
})

t.test('segments: normalised form', async (t) => {
  const out = validateSegments([
    { name: 'staff', match: { header: { 'X-Staff': 'yes', 'X-Team': ['red', 'blue'] }, ip: '10.0.0.0/8' }, version: 'stable' },
    { name: 'beta', match: { cookie: { plan: { regex: '^gold' } }, query: { beta: '1' } }, weights: { canary: 25.5, stable: 74.5 } },
    { name: 'eu', match: { ip: ['192.0.2.0/24', '2001:db8::1'] }, weights: { canary: 100 } }
  ], VERSIONS, AT)
  t.same(out, [
    { name: 'staff', match: { header: { 'x-staff': ['yes'], 'x-team': ['red', 'blue'] }, ip: ['10.0.0.0/8'] }, version: 'stable' },
    { name: 'beta', match: { cookie: { plan: { regex: '^gold' } }, query: { beta: ['1'] } }, weights: { stable: 74.5, canary: 25.5 } },
    { name: 'eu', match: { ip: ['192.0.2.0/24', '2001:db8::1'] }, weights: { stable: 0, canary: 100 } }
  ], 'names lower-cased, string → [string], every version weighted')
  t.same(Object.keys(out[1]!.weights!), VERSIONS, 'weights in the route\'s version order')
  t.equal(out[0]!.weights, undefined, 'pinned: no weights')
  t.equal(out[1]!.version, undefined, 'weighted: no version')
  t.same(validateSegments(out, VERSIONS, AT), out, 'idempotent: a normalised spec validates unchanged')
  t.same(validateSegments(JSON.parse(JSON.stringify(out)), VERSIONS, AT), out, 'and after a JSON round trip (the state file)')
  t.same(validateSegments([], VERSIONS, AT), [], 'an empty list is valid')

  const proto = validateSegments([{ name: 'p', match: { cookie: JSON.parse('{"__proto__": "x"}') }, version: 'canary' }], VERSIONS, AT)
  t.same(Object.keys(proto[0]!.match.cookie!), ['__proto__'], 'a name like __proto__ stays a plain key')
  const ctor = validateSegments([{ name: 'c', match: { cookie: { a: '1' } }, weights: { constructor: 100 } }], ['stable', 'constructor'], AT)
  t.same(ctor[0]!.weights, { stable: 0, constructor: 100 }, 'a version named like an Object property')
})

t.test('mirror: each rule names its exact key', async (t) => {
  const at = 'routes[0].mirror'
  const m = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ version: 'canary', percent: 5, ...extra })
  const cases: Array<[string, unknown, string]> = [
    ['not an object', 'canary', `${at}: must be an object with version and percent, got "canary"`],
    ['unknown key', m({ precent: 1 }), `${at}.precent: unknown key (allowed: version, percent, methods, maxBodyBytes, maxInFlight, timeoutMs)`],
    ['missing version', { percent: 5 }, `${at}.version: is required`],
    ['unknown version', m({ version: 'blue' }), `${at}.version: unknown version "blue" (route has stable, canary)`],
    ['missing percent', { version: 'canary' }, `${at}.percent: is required`],
    ['percent 0', m({ percent: 0 }), `${at}.percent: must be a number over 0 and at most 100, got 0`],
    ['percent over 100', m({ percent: 100.5 }), `${at}.percent: must be a number over 0 and at most 100, got 100.5`],
    ['percent string', m({ percent: '5' }), `${at}.percent: must be a number over 0 and at most 100, got "5"`],
    ['percent too precise', m({ percent: 1.00001 }), `${at}.percent: must have at most 4 decimals, got 1.00001`],
    ['methods empty', m({ methods: [] }), `${at}.methods: must be a non-empty array of HTTP methods, got []`],
    ['methods bad item', m({ methods: ['GET', 'BAD METHOD'] }), `${at}.methods[1]: must be an HTTP method, got "BAD METHOD"`],
    ['methods bad string', m({ methods: '' }), `${at}.methods: must be an HTTP method, got ""`],
    ['maxBodyBytes negative', m({ maxBodyBytes: -1 }), `${at}.maxBodyBytes: must be a whole number from 0 to 16777216, got -1`],
    ['maxBodyBytes too large', m({ maxBodyBytes: 16_777_217 }), `${at}.maxBodyBytes: must be a whole number from 0 to 16777216, got 16777217`],
    ['maxInFlight 0', m({ maxInFlight: 0 }), `${at}.maxInFlight: must be a whole number from 1 to 10000, got 0`],
    ['maxInFlight fraction', m({ maxInFlight: 1.5 }), `${at}.maxInFlight: must be a whole number from 1 to 10000, got 1.5`],
    ['timeoutMs too large', m({ timeoutMs: 600_001 }), `${at}.timeoutMs: must be a whole number from 1 to 600000, got 600001`],
    ['timeoutMs string', m({ timeoutMs: '5s' }), `${at}.timeoutMs: must be a whole number from 1 to 600000, got "5s"`]
  ]
  for (const [what, raw, want] of cases) fails(t, what, () => validateMirror(raw, VERSIONS, at), want)
})

t.test('mirror: defaults, normalisation, idempotence', async (t) => {
  t.same(MIRROR_DEFAULTS, { methods: ['GET', 'HEAD'], maxBodyBytes: 65536, maxInFlight: 64, timeoutMs: 5000 })
  t.ok(Object.isFrozen(MIRROR_DEFAULTS) && Object.isFrozen(MIRROR_DEFAULTS.methods), 'the defaults cannot be changed by a caller')
  const d = validateMirror({ version: 'canary', percent: 2.5 }, VERSIONS, 'mirror')
  t.same(d, { version: 'canary', percent: 2.5, methods: ['GET', 'HEAD'], maxBodyBytes: 65536, maxInFlight: 64, timeoutMs: 5000 }, 'every field filled')
  t.not(d.methods, MIRROR_DEFAULTS.methods, 'a copy of the default methods')
  const n = validateMirror({ version: 'stable', percent: 100, methods: ['get', 'Post', 'GET'], maxBodyBytes: 0, maxInFlight: 10_000, timeoutMs: 1 }, VERSIONS, 'mirror')
  t.same(n.methods, ['GET', 'POST'], 'methods upper-cased, repeats dropped')
  t.same([n.maxBodyBytes, n.maxInFlight, n.timeoutMs], [0, 10_000, 1], 'the range edges are valid')
  t.same(validateMirror({ version: 'canary', percent: 0.0001, methods: 'put' }, VERSIONS, 'mirror').methods, ['PUT'], 'a single method → [method]')
  t.same(validateMirror(n, VERSIONS, 'mirror'), n, 'idempotent')
  t.same(validateMirror(d, VERSIONS, 'mirror'), d, 'idempotent with defaults')
})

t.test('through the config file: key paths under routes[i], absent when not given', async (t) => {
  const c = configFromObject({
    routes: [route({
      segments: [{ name: 'beta', match: { cookie: { beta: '1' } }, version: 'canary' }],
      mirror: { version: 'canary', percent: 10 }
    })]
  }, '', {})
  const r = c.routes[0]!
  t.same(r.segments, [{ name: 'beta', match: { cookie: { beta: ['1'] } }, version: 'canary' }])
  t.same(r.mirror, { version: 'canary', percent: 10, methods: ['GET', 'HEAD'], maxBodyBytes: 65536, maxInFlight: 64, timeoutMs: 5000 })

  const plain = configFromObject({ routes: [route()] }, '', {}).routes[0]!
  t.notOk('segments' in plain, 'no segments key when not given')
  t.notOk('mirror' in plain, 'no mirror key when not given')
  const empty = configFromObject({ routes: [route({ segments: [], mirror: null })] }, '', {}).routes[0]!
  t.notOk('segments' in empty, 'segments: [] is normalised to absent')
  t.notOk('mirror' in empty, 'mirror: null (an empty YAML key) is absent')

  fails(t, 'ip in a route', () => configFromObject({ routes: [route(), route({ name: 'api', match: { pathPrefix: '/api' }, segments: [seg(), seg({ name: 'office', match: { ip: ['10.0.0.0/8', '10.0.0.0/40'] } })] })] }, '', {}),
    'routes[1].segments[1].match.ip[1]: "10.0.0.0/40" is not a CIDR (prefix length 0-32 for IPv4)')
  fails(t, 'regex in a route', () => configFromObject({ routes: [route({ segments: [seg(), seg({ name: 'x', match: { cookie: { plan: { regex: '(' } } } })] })] }, '', {}),
    'routes[0].segments[1].match.cookie.plan.regex: invalid RE2 pattern: error parsing regexp: missing closing ): `(` (RE2 has no backreferences or lookaround)')
  fails(t, 'mirror in a route', () => configFromObject({ routes: [route({ mirror: { version: 'canary' } })] }, '', {}), 'routes[0].mirror.percent: is required')
  fails(t, 'segments not a list in a route', () => configFromObject({ routes: [route({ segments: 'beta' })] }, '', {}), 'routes[0].segments: must be an array of segments, got "beta"')
})
