import t from 'tap'
import { compileMirror, mirrorFor } from '../../src/routing/mirror.js'
import type { MirrorSpec, RouteSpec } from '../../src/routing/spec.js'
import { buildRoutingTable } from '../../src/routing/table.js'
import type { Route } from '../../src/routing/types.js'

function spec (mirror?: Partial<MirrorSpec>): RouteSpec {
  const s: RouteSpec = {
    name: 'web',
    match: { pathPrefix: '/' },
    sticky: { keys: [], cookie: { name: 'canaryd_id', maxAge: 60 } },
    override: {},
    versions: [
      { name: 'stable', upstream: ['http://127.0.0.1:1001'], weight: 100 },
      { name: 'canary', upstream: ['http://127.0.0.1:1002'], weight: 0 }
    ]
  }
  if (mirror !== undefined) s.mirror = { version: 'canary', percent: 10, methods: ['GET', 'HEAD'], maxBodyBytes: 65536, maxInFlight: 64, timeoutMs: 5000, ...mirror }
  return s
}

function route (mirror?: Partial<MirrorSpec>): Route {
  return buildRoutingTable([spec(mirror)]).routes[0]!
}

t.test('compiled: the route\'s own version, a ppm threshold, a method set', async (t) => {
  const r = route({ percent: 12.3456, methods: ['GET', 'POST'], maxBodyBytes: 10, maxInFlight: 3, timeoutMs: 99 })
  const m = r.mirror!
  t.equal(m.version, r.versionByName.get('canary'), 'the target is the route\'s Version')
  t.equal(m.ppm, 123_456)
  t.same([...m.methods], ['GET', 'POST'])
  t.same([m.maxBodyBytes, m.maxInFlight, m.timeoutMs], [10, 3, 99])
  t.ok(Object.isFrozen(m), 'frozen')
  t.equal(route().mirror, undefined, 'no mirror configured → undefined')
  t.throws(() => compileMirror(spec({ version: 'nope' }), r.versions), /mirror version nope/, 'unknown version')
  t.throws(() => compileMirror(spec({ percent: 0.00001 }), r.versions), /mirror percent/, 'too precise')
})

t.test('mirrorFor: method filter', async (t) => {
  const r = route({ percent: 100 })
  const stable = r.versionByName.get('stable')!
  t.equal(mirrorFor(r, 'GET', 0, stable), r.mirror, 'GET is copied')
  t.equal(mirrorFor(r, 'HEAD', 0, stable), r.mirror, 'HEAD is copied')
  t.equal(mirrorFor(r, 'POST', 0, stable), undefined, 'POST is not in the default methods')
  t.equal(mirrorFor(r, 'get', 0, stable), undefined, 'methods are matched as sent (upper-case)')
  const p = route({ percent: 100, methods: ['POST'] })
  t.equal(mirrorFor(p, 'POST', 0, stable), p.mirror, 'POST when listed')
  t.equal(mirrorFor(p, 'GET', 0, stable), undefined, 'GET when not listed')
  t.equal(mirrorFor(route(), 'GET', 0, stable), undefined, 'a route without a mirror')
})

t.test('mirrorFor: the ppm threshold, at its edges', async (t) => {
  const full = route({ percent: 100 })
  const stable = full.versionByName.get('stable')!
  t.equal(mirrorFor(full, 'GET', 0, stable), full.mirror, '100%: draw 0')
  t.equal(mirrorFor(full, 'GET', 999_999, stable), full.mirror, '100%: draw 999,999 (the largest)')
  const least = route({ percent: 0.0001 })
  t.equal(mirrorFor(least, 'GET', 0, stable), least.mirror, '0.0001% (1 ppm): draw 0 is copied')
  t.equal(mirrorFor(least, 'GET', 1, stable), undefined, '0.0001%: draw 1 is not')
  t.equal(mirrorFor(least, 'GET', 999_999, stable), undefined, '0.0001%: draw 999,999 is not')
  const half = route({ percent: 50 })
  t.equal(mirrorFor(half, 'GET', 499_999, stable), half.mirror, '50%: draw 499,999 is copied')
  t.equal(mirrorFor(half, 'GET', 500_000, stable), undefined, '50%: draw 500,000 is not')
  for (const percent of [0.0001, 1, 12.5, 33.3333, 100]) {
    const r = route({ percent })
    let n = 0
    for (let d = 0; d < 1_000_000; d++) if (mirrorFor(r, 'GET', d, stable) !== undefined) n++
    t.equal(n, Math.round(percent * 10_000), `${percent}%: exactly that many of the 1,000,000 draws are copied`)
  }
})

t.test('mirrorFor: a request served by the mirror version is not copied to it', async (t) => {
  const r = buildRoutingTable([{
    ...spec({ percent: 100 }),
    segments: [{ name: 'beta', match: { header: { 'x-beta': ['1'] } }, version: 'canary' }]
  }]).routes[0]!
  const canary = r.versionByName.get('canary')!
  t.equal(mirrorFor(r, 'GET', 0, canary), undefined, 'picked the mirror version')
  const segCopy = r.segments[0]!.active[0]!
  t.not(segCopy, canary, 'a segment\'s version is a re-weighted copy')
  t.equal(mirrorFor(r, 'GET', 0, segCopy), undefined, 'and is recognised as the same version')
  t.equal(mirrorFor(r, 'GET', 0, r.versionByName.get('stable')!), r.mirror, 'the other version is copied')
})
