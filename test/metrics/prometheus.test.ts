import t from 'tap'
import { parseExposition, type Sample } from '../../src/metrics/exposition.js'
import { NOOP_OBSERVERS } from '../../src/metrics/observer.js'
import { DROPPED_DEFAULT_METRICS, DURATION_BUCKETS, METRIC_NAMES, PRECREATED_CODES, PrometheusMetrics, REQUEST_SOURCES } from '../../src/metrics/prometheus.js'
import { UPSTREAM_ERROR_KINDS } from '../../src/metrics/kinds.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { refusedOrigin, startUpstream } from '../helpers/upstream.js'

async function samples (m: PrometheusMetrics): Promise<Sample[]> {
  return [...parseExposition(await m.expose()).samples]
}

function value (all: Sample[], name: string, labels: Record<string, string>): number | undefined {
  const s = all.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v))
  return s?.value
}

t.test('a bound version has every series at zero before any request (a 0% canary shows)', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  m.bind('web', 'stable')
  m.bind('web', 'canary')
  m.setWeights([{ route: 'web', version: 'stable', weight: 100 }, { route: 'web', version: 'canary', weight: 0 }])
  const all = await samples(m)
  for (const version of ['stable', 'canary']) {
    const l = { route: 'web', version }
    for (const code of PRECREATED_CODES) {
      for (const source of REQUEST_SOURCES) t.equal(value(all, METRIC_NAMES.requests, { ...l, code: String(code), source }), 0, `${version} code ${code} source ${source}`)
    }
    for (const kind of UPSTREAM_ERROR_KINDS) t.equal(value(all, METRIC_NAMES.upstreamErrors, { ...l, kind }), 0, `${version} kind ${kind}`)
    t.equal(value(all, METRIC_NAMES.inFlight, l), 0)
    t.equal(value(all, `${METRIC_NAMES.duration}_count`, l), 0)
    t.equal(value(all, `${METRIC_NAMES.duration}_sum`, l), 0)
    t.equal(value(all, METRIC_NAMES.ejections, l), 0)
    t.equal(all.filter((s) => s.name === `${METRIC_NAMES.duration}_bucket` && s.labels.version === version).length, DURATION_BUCKETS.length + 1)
  }
  t.equal(value(all, METRIC_NAMES.weight, { route: 'web', version: 'canary' }), 0)
  t.equal(value(all, METRIC_NAMES.weight, { route: 'web', version: 'stable' }), 100)
  // labels are bounded: only these names ever appear on canaryd's own families
  const ours = new Set<string>(Object.values(METRIC_NAMES).flatMap((n) => [n, `${n}_bucket`, `${n}_sum`, `${n}_count`]))
  for (const s of all.filter((x) => ours.has(x.name))) {
    for (const k of Object.keys(s.labels)) t.ok(['route', 'version', 'code', 'kind', 'le', 'segment', 'result', 'source'].includes(k), `${s.name} label ${k}`)
    // source is the request counter's alone
    if (s.name !== METRIC_NAMES.requests) t.notOk('source' in s.labels, `${s.name} has no source label`)
    else t.ok(s.labels.source === 'user' || s.labels.source === 'synthetic', `${s.name} source=${s.labels.source}`)
  }
})

t.test('buckets run from 1 ms to 30 s, and an observation lands in the first bucket ≥ it', async (t) => {
  t.equal(DURATION_BUCKETS[0], 0.001)
  t.equal(DURATION_BUCKETS[DURATION_BUCKETS.length - 1], 30)
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const o = m.bind('web', 'stable')
  const obs = [0.0005, 0.001, 0.0011, 0.2, 30, 31]
  for (const s of obs) { o.start(); o.finish(200, s, false, false) }
  const all = await samples(m)
  const bucket = (le: string): number | undefined => value(all, `${METRIC_NAMES.duration}_bucket`, { route: 'web', version: 'stable', le })
  t.equal(bucket('0.001'), 2, 'le is inclusive: 0.0005 and 0.001')
  t.equal(bucket('0.0025'), 3)
  t.equal(bucket('0.25'), 4)
  t.equal(bucket('30'), 5)
  t.equal(bucket('+Inf'), 6)
  t.equal(value(all, `${METRIC_NAMES.duration}_count`, { route: 'web', version: 'stable' }), 6)
  t.ok(Math.abs(value(all, `${METRIC_NAMES.duration}_sum`, { route: 'web', version: 'stable' })! - obs.reduce((a, b) => a + b)) < 1e-9)
})

t.test('finish counts by status, in-flight follows start/finish, errors by kind, listeners see every request', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const o = m.bind('api', 'canary')
  const seen: Array<[number, boolean]> = []
  const off = m.onFinish('api', 'canary', (status, _s, failed) => { seen.push([status, failed]) })
  o.start(); o.start(); o.start()
  t.equal(m.totals('api', 'canary')?.inFlight, 3)
  o.finish(200, 0.01, false, false)
  o.finish(418, 0.01, false, false)
  o.upstreamError('timeout')
  o.finish(504, 0.01, true, false)
  o.ejected()
  const all = await samples(m)
  const l = { route: 'api', version: 'canary' }
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '200' }), 1)
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '418' }), 1, 'a code not pre-created appears when sent')
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '504' }), 1)
  t.equal(value(all, METRIC_NAMES.upstreamErrors, { ...l, kind: 'timeout' }), 1)
  t.equal(value(all, METRIC_NAMES.upstreamErrors, { ...l, kind: 'connect' }), 0)
  t.equal(value(all, METRIC_NAMES.inFlight, l), 0)
  t.equal(value(all, METRIC_NAMES.ejections, l), 1)
  t.same(seen, [[200, false], [418, false], [504, true]])
  off()
  o.start(); o.finish(200, 0.01, false, false)
  t.equal(seen.length, 3, 'a removed listener is not called')
  t.equal(m.totals('api', 'canary')?.count, 4)
})

t.test('source: synthetic requests count under source="synthetic", the rest under "user"; totals and listeners carry it', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const o = m.bind('web', 'canary')
  const seen: Array<[number, boolean]> = []
  m.onFinish('web', 'canary', (status, _s, _f, synthetic) => { seen.push([status, synthetic]) })
  for (const [status, synthetic] of [[200, false], [200, true], [200, true], [500, true], [418, true], [404, false]] as const) {
    o.start()
    o.finish(status, 0.01, false, synthetic)
  }
  const all = await samples(m)
  const l = { route: 'web', version: 'canary' }
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '200', source: 'user' }), 1)
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '200', source: 'synthetic' }), 2)
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '500', source: 'synthetic' }), 1)
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '500', source: 'user' }), 0, 'a pre-created code exists for both sources')
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '418', source: 'synthetic' }), 1, 'a code not pre-created appears for the source that sent it')
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '418', source: 'user' }), undefined, '... and only for it')
  t.equal(value(all, METRIC_NAMES.requests, { ...l, code: '404', source: 'user' }), 1)
  t.equal(value(all, `${METRIC_NAMES.duration}_count`, l), 6, 'the histogram has no source: every request')
  t.equal(all.filter((s) => s.name === METRIC_NAMES.requests).length, PRECREATED_CODES.length * 2 + 1, 'pre-created codes × 2 sources + 418 synthetic')
  const tot = m.totals('web', 'canary')!
  t.equal(tot.codes.get(200), 3, 'totals.codes counts every source')
  t.equal(tot.syntheticCodes.get(200), 2, 'totals.syntheticCodes the synthetic part')
  t.equal(tot.codes.get(418), 1)
  t.equal(tot.syntheticCodes.get(418), 1)
  t.equal(tot.syntheticCodes.get(404), 0)
  t.same([...tot.codes.keys()].sort(), [...tot.syntheticCodes.keys()].sort(), 'same keys')
  t.same(seen, [[200, false], [200, true], [200, true], [500, true], [418, true], [404, false]], 'listeners get the flag')
  t.equal(tot.count, 6)
  t.equal(tot.inFlight, 0)
})

t.test('binding again keeps the counts; weights follow every table, versions gone drop to 0', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const a = m.bind('web', 'canary')
  a.start(); a.finish(200, 0.01, false, false)
  const b = m.bind('web', 'canary')
  b.start(); b.finish(200, 0.01, false, false)
  t.equal(m.totals('web', 'canary')?.codes.get(200), 2)
  m.setWeights([{ route: 'web', version: 'stable', weight: 90 }, { route: 'web', version: 'canary', weight: 10 }])
  m.setWeights([{ route: 'web', version: 'stable', weight: 75.5 }, { route: 'web', version: 'canary', weight: 24.5 }])
  let all = await samples(m)
  t.equal(value(all, METRIC_NAMES.weight, { route: 'web', version: 'stable' }), 75.5)
  t.equal(value(all, METRIC_NAMES.weight, { route: 'web', version: 'canary' }), 24.5)
  m.setWeights([{ route: 'web', version: 'stable', weight: 100 }])
  all = await samples(m)
  t.equal(value(all, METRIC_NAMES.weight, { route: 'web', version: 'canary' }), 0)
})

t.test('default metrics carry the canaryd_ prefix (event-loop lag, heap, handles); _total gauges are dropped', async (t) => {
  const m = new PrometheusMetrics()
  const text = await m.expose()
  const e = parseExposition(text)
  for (const name of ['canaryd_nodejs_eventloop_lag_seconds', 'canaryd_nodejs_eventloop_lag_p99_seconds', 'canaryd_nodejs_heap_size_used_bytes', 'canaryd_nodejs_active_handles', 'canaryd_process_resident_memory_bytes']) {
    t.ok(e.types.has(name), name)
  }
  for (const name of DROPPED_DEFAULT_METRICS) t.notOk(e.types.has(name), `${name} dropped`)
  t.notOk([...e.types.keys()].some((n) => !n.startsWith('canaryd_')), 'every family is canaryd_*')
  t.match(m.contentType, /^text\/plain; version=0\.0\.4/)
  const off = new PrometheusMetrics({ defaultMetrics: false })
  t.notOk(parseExposition(await off.expose()).types.has('canaryd_nodejs_heap_size_used_bytes'))
})

t.test('metrics off: traffic is served and counted nowhere, /metrics is 404, the no-op observer keeps no state', async (t) => {
  const stable = await startUpstream('stable')
  t.teardown(stable.close)
  // the canary refuses connections: its 502 goes through upstreamError/finish of the no-op observer too
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, await refusedOrigin(), [100, 0])]), { metrics: false })
  t.teardown(p.close)
  t.equal(p.app.metrics, undefined, 'no metrics object at all')

  for (let i = 0; i < 3; i++) {
    const r = await fetch(`${p.url}/x`, { headers: { 'x-user-id': `u${i}` } })
    t.equal(r.status, 200)
    t.equal((await r.json() as { version: string }).version, 'stable')
  }
  const failed = await fetch(`${p.url}/x`, { headers: { 'x-canary': 'canary' } })
  t.equal(failed.status, 502, 'a failed upstream is still answered')
  t.equal((await failed.json() as { error: { code: string } }).error.code, 'CANARYD_ERR_UPSTREAM_CONNECT')
  t.equal(p.app.proxy.inFlight, 0, 'in-flight accounting does not depend on metrics')

  const m = await fetch(`${p.adminUrl}/metrics`)
  t.equal(m.status, 404)
  t.same(await m.json(), { error: { code: 'CANARYD_ERR_NOT_FOUND', message: 'metrics are disabled in this instance' } })
  t.equal((await fetch(`${p.adminUrl}/readyz`)).status, 200, 'the control plane works without metrics')

  // one frozen object for every (route, version): a call has nowhere to keep a count
  const o = NOOP_OBSERVERS.bind('web', 'stable')
  t.equal(o, NOOP_OBSERVERS.bind('api', 'canary'))
  t.ok(Object.isFrozen(o) && Object.isFrozen(NOOP_OBSERVERS))
  t.same(Object.keys(o).sort(), ['ejected', 'finish', 'start', 'upstreamError'])
  t.equal(o.websocket, undefined, 'no websocket hook: the proxy skips the call')
})
