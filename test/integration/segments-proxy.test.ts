/**
 * Segments under real requests (issue 15): each request lands on the
 * version its segment says (a pinned version, or the segment's own weights
 * by the same sticky hash), the first segment that holds wins, the
 * override still beats every segment, the client address is the trusted
 * X-Forwarded-For's (or the direct peer's), and
 * canaryd_segment_requests_total counts exactly what was routed.
 */
import t from 'tap'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { hashKey } from '../../src/routing/hash.js'
import { pickFrom } from '../../src/routing/pick.js'
import type { RouteSpec } from '../../src/routing/spec.js'
import { buildRoutingTable } from '../../src/routing/table.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig } from '../helpers/proxy.js'
import { refusedOrigin, startUpstream } from '../helpers/upstream.js'
import { scrape, sum } from '../metrics/scrape.js'

const SEGMENTS = METRIC_NAMES.segmentRequests

t.test('segments route real requests, the override beats them, and the counters match', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const versions = [
    { name: 'stable', upstream: stable.origin, weight: 100 },
    { name: 'canary', upstream: canary.origin, weight: 0 }
  ]
  const sticky = { keys: ['header:x-user-id'], cookie: { name: 'canaryd_id', maxAge: 86400 } }
  const proxy = await startProxy(testConfig([
    {
      name: 'web',
      match: { pathPrefix: '/' },
      sticky,
      override: { header: 'x-canary', cookie: 'canary' },
      versions,
      segments: [
        { name: 'staff', match: { header: { 'x-employee': 'true' } }, version: 'canary' },
        { name: 'beta', match: { cookie: { plan: { regex: '^beta-' } } }, weights: { stable: 30, canary: 70 } },
        { name: 'office', match: { ip: ['10.20.0.0/16'] }, version: 'canary' },
        { name: 'asia', match: { query: { region: ['kr', 'jp'] } }, weights: { stable: 50, canary: 50 } }
      ]
    },
    {
      name: 'lab',
      match: { pathPrefix: '/lab' },
      sticky,
      override: {},
      versions,
      segments: [{ name: 'local', match: { ip: ['127.0.0.1/32'] }, version: 'canary' }]
    }
  ], { trustedProxies: ['127.0.0.1/32'] }))
  t.teardown(proxy.close)

  // every child exists at 0 from start-up: route × segment × version
  const start = await scrape(proxy)
  const children = start.samples.filter((s) => s.name === SEGMENTS)
  t.equal(children.length, 10, '(4 + 1 segments) × 2 versions')
  t.ok(children.every((s) => s.value === 0))
  t.same(new Set(children.map((s) => Object.keys(s.labels).sort().join(','))), new Set(['route,segment,version']), 'labels: route, segment, version')

  const route = proxy.app.holder.current.routeByName.get('web')!
  const segment = (name: string): NonNullable<typeof route.segments[number]> => route.segments.find((s) => s.name === name)!
  /** The version the pure pick gives `user` in a weighted segment. */
  const expect = (seg: string, user: string): string => pickFrom(segment(seg).active, hashKey(route.salt, user))!.name
  const counts = new Map<string, number>()
  const count = (r: string, seg: string, version: string): void => { counts.set(`${r}/${seg}/${version}`, (counts.get(`${r}/${seg}/${version}`) ?? 0) + 1) }
  let wrong = 0
  let onCanary = 0
  const check = async (path: string, headers: Record<string, string>, want: string, what: string): Promise<void> => {
    const r = await send(`${proxy.url}${path}`, { headers })
    if (r.status !== 200 || r.headers['x-canaryd-version'] !== want) {
      wrong++
      t.fail(`${what}: got ${String(r.headers['x-canaryd-version'])} (${r.status}), want ${want}`)
    }
    if (want === 'canary') onCanary++
  }

  const users = Array.from({ length: 200 }, (_, i) => `user-${i}`)
  let betaCanary = 0
  let asiaCanary = 0
  for (const u of users) {
    // no segment: the route's weights (stable 100)
    await check('/a', { 'x-user-id': u }, 'stable', 'nobody\'s segment')
    // header pin
    await check('/a', { 'x-user-id': u, 'x-employee': 'true' }, 'canary', 'staff')
    count('web', 'staff', 'canary')
    // a value that is not the one listed does not match
    await check('/a', { 'x-user-id': u, 'x-employee': 'yes' }, 'stable', 'staff with another value')
    // cookie regex, the segment's weights by the user's sticky hash
    const beta = expect('beta', u)
    if (beta === 'canary') betaCanary++
    await check('/a', { 'x-user-id': u, cookie: `other=1; plan=beta-${u}` }, beta, 'beta')
    count('web', 'beta', beta)
    await check('/a', { 'x-user-id': u, cookie: 'plan=gold-beta' }, 'stable', 'regex not at the start')
    // the client address from a trusted X-Forwarded-For
    await check('/a', { 'x-user-id': u, 'x-forwarded-for': '10.20.3.4' }, 'canary', 'office via X-Forwarded-For')
    count('web', 'office', 'canary')
    await check('/a', { 'x-user-id': u, 'x-forwarded-for': '10.21.3.4' }, 'stable', 'outside the office CIDR')
    // query list, percent-decoded
    const asia = expect('asia', u)
    if (asia === 'canary') asiaCanary++
    await check(`/a?x=1&region=${u.endsWith('1') ? '%6Br' : 'jp'}`, { 'x-user-id': u }, asia, 'asia')
    count('web', 'asia', asia)
    await check('/a?region=cn', { 'x-user-id': u }, 'stable', 'a region not listed')
  }
  t.equal(wrong, 0, 'every request landed where its segment says')
  // the segment's own weights, not the route's (which send everyone to stable)
  t.ok(betaCanary > 110 && betaCanary < 170, `beta: about 70% of 200 users on canary (${betaCanary})`)
  t.ok(asiaCanary > 70 && asiaCanary < 130, `asia: about 50% on canary (${asiaCanary})`)

  // sticky within a segment: the same user, the same version, every time
  for (const u of users.slice(0, 20)) {
    const want = expect('beta', u)
    for (let i = 0; i < 3; i++) {
      await check('/a', { 'x-user-id': u, cookie: 'plan=beta-x' }, want, 'beta again')
      count('web', 'beta', want)
    }
  }

  // first match wins: staff before asia
  await check('/a?region=kr', { 'x-user-id': 'user-1', 'x-employee': 'true' }, 'canary', 'staff and asia')
  count('web', 'staff', 'canary')
  // the override beats every segment, and is not a segment's request
  await check('/a', { 'x-user-id': 'user-1', 'x-employee': 'true', 'x-canary': 'stable' }, 'stable', 'override header over staff')
  await check('/a', { 'x-user-id': 'user-1', 'x-forwarded-for': '10.20.0.1', cookie: 'canary=stable' }, 'stable', 'override cookie over office')

  // the direct peer's address: 127.0.0.1 is in the lab's segment, a forwarded client is not
  for (let i = 0; i < 10; i++) {
    await check('/lab', { 'x-user-id': `l${i}` }, 'canary', 'direct 127.0.0.1')
    count('lab', 'local', 'canary')
    await check('/lab', { 'x-user-id': `l${i}`, 'x-forwarded-for': '192.0.2.9' }, 'stable', 'forwarded client outside the CIDR')
  }
  t.equal(wrong, 0)

  const e = await scrape(proxy)
  for (const r of ['web', 'lab']) {
    for (const s of r === 'web' ? ['staff', 'beta', 'office', 'asia'] : ['local']) {
      for (const v of ['stable', 'canary']) {
        t.equal(sum(e, SEGMENTS, { route: r, segment: s, version: v }), counts.get(`${r}/${s}/${v}`) ?? 0, `${r} ${s} ${v}`)
      }
    }
  }
  // a segment's request is also an ordinary request of its version
  t.equal(sum(e, METRIC_NAMES.requests, { version: 'canary' }), onCanary, 'canaryd_requests_total of canary: every request sent there')

  // a table without a segment drops its children; the others keep their counts
  const specs = structuredClone(proxy.app.config.routes) as RouteSpec[]
  specs[0]!.segments = specs[0]!.segments!.filter((s) => s.name !== 'asia')
  proxy.app.holder.swap(buildRoutingTable(specs, proxy.app.holder.current.generation + 1))
  const after = await scrape(proxy)
  t.equal(after.samples.filter((s) => s.name === SEGMENTS && s.labels.segment === 'asia').length, 0, 'the removed segment left the exposition')
  t.equal(sum(after, SEGMENTS, { route: 'web', segment: 'staff', version: 'canary' }), counts.get('web/staff/canary'), 'kept')
  await check('/a?region=kr', { 'x-user-id': 'user-1' }, 'stable', 'no asia segment any more')
})

t.test('a segment whose versions are all ejected falls back to the route\'s pick', async (t) => {
  const stable = await startUpstream('stable')
  t.teardown(stable.close)
  const proxy = await startProxy(testConfig([{
    name: 'web',
    match: { pathPrefix: '/' },
    sticky: { keys: ['header:x-user-id'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
    override: {},
    versions: [{ name: 'stable', upstream: stable.origin, weight: 100 }, { name: 'canary', upstream: await refusedOrigin(), weight: 0 }],
    segments: [{ name: 'staff', match: { header: { 'x-employee': 'true' } }, version: 'canary' }]
  }], { health: { consecutiveFailures: 2, ejectionMs: 60_000 } }))
  t.teardown(proxy.close)
  // the staff's canary refuses connections until outlier detection ejects it
  let failed = 0
  let r = await send(`${proxy.url}/`, { headers: { 'x-user-id': 'u', 'x-employee': 'true' } })
  while (r.headers['x-canaryd-version'] === 'canary' && failed < 10) {
    failed++
    r = await send(`${proxy.url}/`, { headers: { 'x-user-id': 'u', 'x-employee': 'true' } })
  }
  t.equal(failed, 2, 'two failures eject the canary\'s only endpoint')
  t.equal(r.status, 200)
  t.equal(r.headers['x-canaryd-version'], 'stable', 'then the route\'s own pick')
  const e = await scrape(proxy)
  t.equal(sum(e, SEGMENTS, { route: 'web', segment: 'staff', version: 'canary' }), 2)
  t.equal(sum(e, SEGMENTS, { route: 'web', segment: 'staff', version: 'stable' }), 1, 'counted on the version it went to')
})
