// Micro-benchmarks of the hot functions, ns/op, median of 7 rounds:
// sticky-key hashing, the version pick, both together, the sticky-key read,
// and segment matching (the four-segment example: header pin, header
// list, IP CIDR, cookie RE2 regex) for a request that matches none (every
// matcher runs) and one that matches the last.
import { hashKey } from '../dist/routing/hash.js'
import { pickFrom, pickVersion } from '../dist/routing/pick.js'
import { matchSegment } from '../dist/routing/segments.js'
import { readStickyKey, readOverride } from '../dist/routing/sticky.js'
import { buildRoutingTable } from '../dist/routing/table.js'

const table = buildRoutingTable([{
  name: 'web',
  match: { pathPrefix: '/' },
  sticky: { keys: ['header:x-user-id', 'cookie:session'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
  override: { header: 'x-canary', cookie: 'canary' },
  versions: [{ name: 'stable', upstream: ['http://127.0.0.1:1'], weight: 90 }, { name: 'canary', upstream: ['http://127.0.0.1:2'], weight: 10 }]
}, {
  name: 'three',
  match: { pathPrefix: '/3' },
  sticky: { keys: ['header:x-user-id'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
  override: {},
  versions: [{ name: 'a', upstream: ['http://127.0.0.1:1'], weight: 50 }, { name: 'b', upstream: ['http://127.0.0.1:2'], weight: 30 }, { name: 'c', upstream: ['http://127.0.0.1:3'], weight: 20 }]
}])
const segTable = buildRoutingTable([{
  name: 'seg',
  match: { pathPrefix: '/' },
  sticky: { keys: ['header:x-user-id'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
  override: {},
  versions: [{ name: 'stable', upstream: ['http://127.0.0.1:1'], weight: 99 }, { name: 'canary', upstream: ['http://127.0.0.1:2'], weight: 1 }],
  segments: [
    { name: 'staff', match: { header: { 'x-employee': ['true'] } }, version: 'canary' },
    { name: 'kr', match: { header: { 'cf-ipcountry': ['KR'] } }, weights: { stable: 50, canary: 50 } },
    { name: 'office', match: { ip: ['10.20.0.0/16', '2001:db8::/32'] }, version: 'canary' },
    { name: 'beta', match: { cookie: { plan: { regex: '^beta-' } } }, weights: { stable: 0, canary: 100 } }
  ]
}])
const route = table.routes[0]
const route3 = table.routes[1]
const segRoute = segTable.routes[0]
const keys = Array.from({ length: 1000 }, (_, i) => `user-${i}-${(i * 2654435761 >>> 0).toString(16)}`)
const hashes = keys.map((k) => hashKey(route.salt, k))
const headers = keys.map((k) => ({ host: 'shop.example.com', 'user-agent': 'bench', accept: '*/*', 'x-user-id': k }))

const plain = keys.map((k) => ({ host: 'shop.example.com', 'user-agent': 'bench', accept: '*/*', 'x-user-id': k, cookie: `session=${k}; plan=free` }))
const beta = keys.map((k) => ({ host: 'shop.example.com', 'user-agent': 'bench', accept: '*/*', 'x-user-id': k, cookie: `session=${k}; plan=beta-7` }))

let sink = 0
const cases = {
  'hashKey (salted FNV-1a + fmix32, ~24-char key)': (n) => { for (let i = 0; i < n; i++) sink ^= hashKey(route.salt, keys[i % 1000]) },
  'pickVersion, 2 versions': (n) => { for (let i = 0; i < n; i++) sink ^= pickVersion(route, hashes[i % 1000]).index },
  'pickVersion, 3 versions': (n) => { for (let i = 0; i < n; i++) sink ^= pickVersion(route3, hashes[i % 1000]).index },
  'hashKey + pickVersion (the "version pick")': (n) => { for (let i = 0; i < n; i++) sink ^= pickVersion(route, hashKey(route.salt, keys[i % 1000])).index },
  'readOverride + readStickyKey + hash + pick (whole decision)': (n) => {
    for (let i = 0; i < n; i++) {
      const h = headers[i % 1000]
      const o = readOverride(route, h)
      sink ^= (o ?? pickVersion(route, hashKey(route.salt, readStickyKey(route, h, '/', '127.0.0.1')))).index
    }
  },
  'matchSegment, 4 segments, no match (every matcher runs)': (n) => { for (let i = 0; i < n; i++) sink ^= matchSegment(segRoute, plain[i % 1000], '/', '192.0.2.7') === undefined ? 1 : 2 },
  'matchSegment, 4 segments, the last (cookie RE2) matches + pick': (n) => { for (let i = 0; i < n; i++) sink ^= pickFrom(matchSegment(segRoute, beta[i % 1000], '/', '192.0.2.7').active, hashes[i % 1000]).index }
}

const N = 2_000_000
const results = {}
for (const [name, fn] of Object.entries(cases)) {
  fn(N / 4) // warm up (JIT)
  const rounds = []
  for (let r = 0; r < 7; r++) {
    const t0 = process.hrtime.bigint()
    fn(N)
    rounds.push(Number(process.hrtime.bigint() - t0) / N)
  }
  rounds.sort((a, b) => a - b)
  results[name] = Math.round(rounds[3] * 10) / 10
}
if (sink === 0.5) console.log('unreachable')
process.stdout.write(JSON.stringify(results) + '\n')
