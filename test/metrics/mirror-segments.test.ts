/**
 * The segment and mirror families and the shadow-pair subscription of the
 * Prometheus metrics, without a proxy: children at 0 from the bind, kept
 * counts across binds, dropped when a table no longer has them, and pairs
 * delivered only to the route's listeners.
 */
import t from 'tap'
import { parseExposition, type Sample } from '../../src/metrics/exposition.js'
import { MIRROR_RESULTS } from '../../src/metrics/kinds.js'
import { NOOP_OBSERVERS, type ShadowPair } from '../../src/metrics/observer.js'
import { METRIC_NAMES, PrometheusMetrics } from '../../src/metrics/prometheus.js'

async function samples (m: PrometheusMetrics, name: string): Promise<Sample[]> {
  return parseExposition(await m.expose()).samples.filter((s) => s.name === name)
}

const PAIR: ShadowPair = { route: 'web', primary: 'stable', mirror: 'canary', primaryStatus: 200, primarySeconds: 0.01, primaryFailed: false, mirrorStatus: 500, mirrorSeconds: 0.02, mirrorFailed: false }

t.test('segment children: at 0 from the bind, counts kept across binds, removed ones dropped', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const labels = [
    { route: 'web', segment: 'staff', version: 'stable' },
    { route: 'web', segment: 'staff', version: 'canary' },
    { route: 'web', segment: 'kr', version: 'stable' },
    { route: 'web', segment: 'kr', version: 'canary' }
  ]
  const c = m.bindSegments(labels)
  t.equal(c.length, 4, 'one child per label set, in order')
  let all = await samples(m, METRIC_NAMES.segmentRequests)
  t.equal(all.length, 4)
  t.ok(all.every((s) => s.value === 0), 'every child at 0')
  t.same(Object.keys(all[0]!.labels).sort(), ['route', 'segment', 'version'])
  c[1]!.inc(); c[1]!.inc(); c[2]!.inc()
  const again = m.bindSegments(labels.slice(0, 2))
  t.equal(again[1], c[1], 'a kept child is the same object (requests routed before the swap still count)')
  all = await samples(m, METRIC_NAMES.segmentRequests)
  t.equal(all.length, 2, 'kr left with the table')
  t.equal(all.find((s) => s.labels.version === 'canary')!.value, 2)
  m.registry.resetMetrics()
  t.equal((await samples(m, METRIC_NAMES.segmentRequests)).every((s) => s.value === 0), true, 'reset zeroes them')
})

t.test('mirror series: every result at 0, counted by result, dropped with the mirror', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const [o] = m.bindMirrors([{ route: 'web', version: 'canary' }])
  const all = await samples(m, METRIC_NAMES.mirrorRequests)
  t.same(all.map((s) => s.labels.result), [...MIRROR_RESULTS], 'ok, 5xx, error, timeout, dropped, too_large')
  t.ok(all.every((s) => s.value === 0 && s.labels.route === 'web' && s.labels.version === 'canary'))
  o!.result('ok'); o!.result('ok'); o!.result('dropped')
  t.same(m.mirrorTotals('web', 'canary'), { ok: 2, '5xx': 0, error: 0, timeout: 0, dropped: 1, too_large: 0 })
  const [same] = m.bindMirrors([{ route: 'web', version: 'canary' }])
  t.equal(same, o, 'kept across a bind')
  m.bindMirrors([{ route: 'web', version: 'next' }])
  t.same(m.mirrorTotals('web', 'canary'), { ok: 2, '5xx': 0, error: 0, timeout: 0, dropped: 1, too_large: 0 }, 'a mirror the table no longer has keeps its counts (a short shadow phase stays visible to the next scrape)')
  t.equal((await samples(m, METRIC_NAMES.mirrorRequests)).filter((s) => s.labels.version === 'next').length, 6)
  m.bindMirrors([])
  t.equal((await samples(m, METRIC_NAMES.mirrorRequests)).length, 12, 'both kept while their versions exist')
  m.unbind('web', 'canary')
  t.equal(m.mirrorTotals('web', 'canary'), undefined, 'a version that leaves the table takes its mirror series along')
  t.equal((await samples(m, METRIC_NAMES.mirrorRequests)).length, 6)
})

t.test('shadow pairs: per route, subscribed before or after the bind, nothing when nobody listens', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const early: ShadowPair[] = []
  const offEarly = m.subscribeShadow('web', (p) => { early.push(p) })
  const other: ShadowPair[] = []
  m.subscribeShadow('api', (p) => { other.push(p) })
  const [web, api] = m.bindMirrors([{ route: 'web', version: 'canary' }, { route: 'api', version: 'v2' }])
  t.equal(web!.pairing, true, 'a subscription made before the mirror existed is seen')
  web!.pair(PAIR)
  t.same(early, [PAIR])
  t.same(other, [], 'other routes hear nothing')
  const late: ShadowPair[] = []
  const offLate = m.subscribeShadow('web', (p) => { late.push(p) })
  web!.pair(PAIR)
  t.equal(early.length, 2)
  t.equal(late.length, 1)
  offEarly()
  offLate()
  t.equal(web!.pairing, false, 'nobody listens: the proxy builds no pair')
  t.equal(api!.pairing, true)
  // the mirror goes and comes back (a rollout's shadow phase): a new subscriber is heard
  m.bindMirrors([])
  const back: ShadowPair[] = []
  m.subscribeShadow('web', (p) => { back.push(p) })
  const [web2] = m.bindMirrors([{ route: 'web', version: 'canary' }])
  t.equal(web2!.pairing, true)
  web2!.pair(PAIR)
  t.equal(back.length, 1)
})

t.test('metrics off: no-op children and observers that never pair', async (t) => {
  const [c] = NOOP_OBSERVERS.bindSegments!([{ route: 'web', segment: 's', version: 'v' }])
  c!.inc()
  const [o] = NOOP_OBSERVERS.bindMirrors!([{ route: 'web', version: 'v' }])
  o!.result('ok')
  t.equal(o!.pairing, false)
})
