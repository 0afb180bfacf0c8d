import t from 'tap'
import { parseTopOptions, renderFrame } from '../../src/commands/top.js'
import { ExpositionSyntaxError, expositionFromJson, parseExposition, parseValue } from '../../src/metrics/exposition.js'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { PrometheusMetrics } from '../../src/metrics/prometheus.js'
import { histogramQuantile, summarize } from '../../src/metrics/summary.js'

/** Two scrapes 2 s apart, in the exact shape canaryd exposes (every code once per source). */
const BEFORE = `# HELP canaryd_requests_total Responses sent
# TYPE canaryd_requests_total counter
canaryd_requests_total{route="web",version="stable",code="200",source="user"} 1000
canaryd_requests_total{route="web",version="stable",code="200",source="synthetic"} 0
canaryd_requests_total{route="web",version="stable",code="502",source="user"} 0
canaryd_requests_total{route="web",version="stable",code="502",source="synthetic"} 0
canaryd_requests_total{route="web",version="canary",code="200",source="user"} 100
canaryd_requests_total{route="web",version="canary",code="200",source="synthetic"} 0
canaryd_requests_total{route="web",version="canary",code="502",source="user"} 0
canaryd_requests_total{route="web",version="canary",code="502",source="synthetic"} 0
# TYPE canaryd_request_duration_seconds histogram
canaryd_request_duration_seconds_bucket{route="web",version="stable",le="0.01"} 500
canaryd_request_duration_seconds_bucket{route="web",version="stable",le="0.1"} 1000
canaryd_request_duration_seconds_bucket{route="web",version="stable",le="+Inf"} 1000
canaryd_request_duration_seconds_bucket{route="web",version="canary",le="0.01"} 100
canaryd_request_duration_seconds_bucket{route="web",version="canary",le="0.1"} 100
canaryd_request_duration_seconds_bucket{route="web",version="canary",le="+Inf"} 100
# TYPE canaryd_upstream_errors_total counter
canaryd_upstream_errors_total{route="web",version="canary",kind="connect"} 0
# TYPE canaryd_requests_in_flight gauge
canaryd_requests_in_flight{route="web",version="stable"} 0
canaryd_requests_in_flight{route="web",version="canary"} 0
# TYPE canaryd_route_weight gauge
canaryd_route_weight{route="web",version="stable"} 90
canaryd_route_weight{route="web",version="canary"} 10
`
const AFTER = `canaryd_requests_total{route="web",version="stable",code="200",source="user"} 1180
canaryd_requests_total{route="web",version="stable",code="200",source="synthetic"} 0
canaryd_requests_total{route="web",version="stable",code="502",source="user"} 0
canaryd_requests_total{route="web",version="stable",code="502",source="synthetic"} 0
canaryd_requests_total{route="web",version="canary",code="200",source="user"} 110
canaryd_requests_total{route="web",version="canary",code="200",source="synthetic"} 0
canaryd_requests_total{route="web",version="canary",code="502",source="user"} 10
canaryd_requests_total{route="web",version="canary",code="502",source="synthetic"} 0
canaryd_request_duration_seconds_bucket{route="web",version="stable",le="0.01"} 590
canaryd_request_duration_seconds_bucket{route="web",version="stable",le="0.1"} 1180
canaryd_request_duration_seconds_bucket{route="web",version="stable",le="+Inf"} 1180
canaryd_request_duration_seconds_bucket{route="web",version="canary",le="0.01"} 100
canaryd_request_duration_seconds_bucket{route="web",version="canary",le="0.1"} 110
canaryd_request_duration_seconds_bucket{route="web",version="canary",le="+Inf"} 120
canaryd_upstream_errors_total{route="web",version="canary",kind="connect"} 10
canaryd_requests_in_flight{route="web",version="stable"} 3
canaryd_requests_in_flight{route="web",version="canary"} 1
canaryd_route_weight{route="web",version="stable"} 80
canaryd_route_weight{route="web",version="canary"} 20
canaryd_nodejs_eventloop_lag_p99_seconds 0.0123
canaryd_nodejs_heap_size_used_bytes 10485760
canaryd_process_resident_memory_bytes 52428800
`

t.test('parseExposition reads names, escaped labels, special values, types; rejects junk with a line number', async (t) => {
  const e = parseExposition('# HELP x_total a\n# TYPE x_total counter\nx_total{a="q\\"uo\\\\te\\nnl",b="",c="x,y}"} 3 1700000000000\ny NaN\nz +Inf\nw -Inf\nv 1e-3\n')
  t.equal(e.types.get('x_total'), 'counter')
  t.same(e.samples[0], { name: 'x_total', labels: { a: 'q"uo\\te\nnl', b: '', c: 'x,y}' }, value: 3 })
  t.ok(Number.isNaN(e.samples[1]!.value))
  t.equal(e.samples[2]!.value, Infinity)
  t.equal(e.samples[3]!.value, -Infinity)
  t.equal(e.samples[4]!.value, 0.001)
  t.ok(Number.isNaN(parseValue('Nan')), 'prom-client writes Nan')
  t.throws(() => parseValue('abc'), SyntaxError)
  const err = t.throws(() => parseExposition('ok 1\n\nbad{a=1} 2\n')) as ExpositionSyntaxError
  t.equal(err.line, 3)
  t.throws(() => parseExposition('novalue{a="1"}\n'))
  t.throws(() => parseExposition('open{a="1 2\n'))
})

t.test('histogramQuantile interpolates like Prometheus histogram_quantile', async (t) => {
  const b = [{ le: 0.01, count: 50 }, { le: 0.1, count: 100 }, { le: Infinity, count: 100 }]
  t.equal(histogramQuantile(0.5, b), 0.01)
  t.ok(Math.abs(histogramQuantile(0.75, b)! - 0.055) < 1e-12)
  t.ok(Math.abs(histogramQuantile(0.25, b)! - 0.005) < 1e-12, 'first bucket interpolates from 0')
  t.equal(histogramQuantile(0.99, [{ le: 0.1, count: 1 }, { le: Infinity, count: 10 }]), 0.1, 'rank in +Inf → highest finite bound')
  t.equal(histogramQuantile(0.5, [{ le: 0.1, count: 0 }, { le: Infinity, count: 0 }]), undefined)
  t.equal(histogramQuantile(0.5, []), undefined)
})

t.test('summarize adds up the sources: user and synthetic requests are one rate and one 5xx share', async (t) => {
  const before = 'canaryd_requests_total{route="web",version="canary",code="200",source="user"} 10\n' +
    'canaryd_requests_total{route="web",version="canary",code="200",source="synthetic"} 100\n' +
    'canaryd_requests_total{route="web",version="canary",code="502",source="user"} 0\n' +
    'canaryd_requests_total{route="web",version="canary",code="502",source="synthetic"} 0\n'
  const after = 'canaryd_requests_total{route="web",version="canary",code="200",source="user"} 12\n' +
    'canaryd_requests_total{route="web",version="canary",code="200",source="synthetic"} 136\n' +
    'canaryd_requests_total{route="web",version="canary",code="502",source="user"} 0\n' +
    'canaryd_requests_total{route="web",version="canary",code="502",source="synthetic"} 2\n'
  const [row] = summarize(parseExposition(before), parseExposition(after), 2).rows
  t.equal(row?.rps, 20, '(2 user + 36 synthetic + 2 synthetic 502) / 2 s')
  t.equal(row?.errorPct, 5, '2 of 40')
})

t.test('summarize computes per-version rate, 5xx share, quantiles of the interval, in-flight and weight', async (t) => {
  const f = summarize(parseExposition(BEFORE), parseExposition(AFTER), 2)
  t.equal(f.rows.length, 2)
  const [stable, canary] = f.rows
  t.match(stable, { route: 'web', version: 'stable', weight: 80, rps: 90, errorPct: 0, inFlight: 3, upstreamErrors: 0 })
  // stable's interval: 90 of 180 ≤ 10 ms, the rest ≤ 100 ms → p50 is exactly 10 ms
  t.equal(stable!.p50, 0.01)
  t.ok(Math.abs(stable!.p99! - (0.01 + 0.09 * (178.2 - 90) / 90)) < 1e-12)
  t.match(canary, { version: 'canary', weight: 20, rps: 10, inFlight: 1, upstreamErrors: 10 })
  t.equal(canary!.errorPct, 50)
  // canary's interval: 0 in ≤10 ms, 10 in (10,100] ms, 10 above 100 ms → p99 is the highest finite bound
  t.equal(canary!.p99, 0.1)
  t.equal(f.process.eventLoopLagP99, 0.0123)
  t.equal(f.process.heapUsedBytes, 10485760)
})

t.test('summarize: a counter that went down (restart) counts from zero; no requests → no error % or quantiles', async (t) => {
  const restarted = AFTER.replace('code="200",source="user"} 1180', 'code="200",source="user"} 40').replace(/stable",le="[^"]+"} \d+/g, (m) => m.replace(/\d+$/, '40'))
  const f = summarize(parseExposition(AFTER), parseExposition(restarted), 1)
  t.equal(f.rows[0]!.rps, 40)
  t.equal(f.rows[1]!.rps, 0)
  t.equal(f.rows[1]!.errorPct, undefined)
  t.equal(f.rows[1]!.p50, undefined)
})

t.test('renderFrame prints one aligned line per route and version, no terminal codes', async (t) => {
  const f = summarize(parseExposition(BEFORE), parseExposition(AFTER), 2)
  const text = renderFrame(f, { admin: 'http://127.0.0.1:9901', at: new Date('2025-01-02T03:04:05Z') })
  const lines = text.split('\n')
  t.equal(lines[0], 'canaryd top — http://127.0.0.1:9901 — 03:04:05 UTC — over 2.0 s')
  t.match(lines[2], /^ROUTE\s+VERSION\s+WEIGHT%\s+REQ\/S\s+ERR%\s+P50ms\s+P99ms\s+INFLIGHT\s+UPERR$/)
  t.match(lines[3], /^web\s+stable\s+80\s+90\.0\s+0\.00\s+10\.0\s+\d+\.\d\s+3\s+0$/)
  t.match(lines[4], /^web\s+canary\s+20\s+10\.0\s+50\.00\s+\S+\s+100\s+1\s+10$/)
  t.equal(lines[2]!.indexOf('REQ/S') + 5, lines[3]!.indexOf('90.0') + 4, 'numbers right-aligned under their header')
  t.match(text, /event-loop lag p99 12\.3 ms, heap used 10\.0 MiB, rss 50\.0 MiB/)
  t.notOk(text.includes('\u001b'), 'no terminal codes')
})

t.test('parseTopOptions: flags over environment over defaults; bad values throw', async (t) => {
  t.same(parseTopOptions([], {}), { admin: 'http://127.0.0.1:9901', token: '', intervalMs: 2000, once: false })
  t.same(parseTopOptions([], { CANARYD_ADMIN_URL: 'http://h:1/', CANARYD_ADMIN_TOKEN: 's' }), { admin: 'http://h:1', token: 's', intervalMs: 2000, once: false })
  t.same(parseTopOptions(['--admin', 'http://x:2', '--token', 'f', '--interval', '500', '--once'], { CANARYD_ADMIN_URL: 'http://h:1', CANARYD_ADMIN_TOKEN: 's' }), { admin: 'http://x:2', token: 'f', intervalMs: 500, once: true })
  t.equal(parseTopOptions(['--help'], {}), 'help')
  t.throws(() => parseTopOptions(['--interval', '10'], {}), TypeError)
  t.throws(() => parseTopOptions(['--interval', 'x'], {}), TypeError)
  t.throws(() => parseTopOptions(['--admin', 'ftp://x'], {}), TypeError)
  t.throws(() => parseTopOptions(['--bogus'], {}))
})

t.test('the feed\'s JSON path reads the same samples as the text: summarize gives the same frame', async (t) => {
  const m = new PrometheusMetrics({ defaultMetrics: false })
  const stable = m.bind('web', 'stable')
  const canary = m.bind('web', 'canary')
  m.setWeights([{ route: 'web', version: 'stable', weight: 90 }, { route: 'web', version: 'canary', weight: 10 }])
  const names = [METRIC_NAMES.requests, METRIC_NAMES.duration, METRIC_NAMES.inFlight, METRIC_NAMES.weight, METRIC_NAMES.upstreamErrors]
  const round = (seed: number): void => {
    for (let i = 0; i < 200; i++) {
      const o = i % 10 === 0 ? canary : stable
      o.start()
      o.finish(i % 37 === 0 ? 503 : 200, ((i * seed) % 97) / 1000 + 0.0005, false, i % 50 === 0)
    }
    canary.upstreamError('connect')
  }
  round(7)
  const textA = parseExposition(await m.expose())
  const jsonA = expositionFromJson(await m.families(names))
  round(13)
  const textB = parseExposition(await m.expose())
  const jsonB = expositionFromJson(await m.families(names))
  const fromText = summarize(textA, textB, 1)
  const fromJson = summarize(jsonA, jsonB, 1)
  t.same(fromJson.rows, fromText.rows, 'rows: rps, error %, p50, p99, in flight, upstream errors, weight')
  t.ok(fromJson.rows.length === 2 && fromJson.rows.every((r) => r.rps > 0 && r.p99 !== undefined), 'both versions have figures')
  t.equal(fromJson.rows.find((r) => r.version === 'stable')?.weight, 90)
})
