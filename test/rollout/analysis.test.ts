import t from 'tap'
import type { MetricSpec } from '../../src/config/plan.js'
import { combineMetrics, judgeMetric, promDuration, renderTemplate, templateNames, type MetricResult, type ProviderAnswer } from '../../src/rollout/analysis.js'
import type { CheckResult, SideFigures } from '../../src/rollout/judge.js'
import { redact, valueAt } from '../../src/rollout/provider-http.js'
import { prometheusQueryUrl, readPrometheusAnswer } from '../../src/rollout/provider-prometheus.js'

const prom = { type: 'prometheus', address: 'http://prom:9090', timeoutMs: 5000 } as const

function metric (extra: Partial<MetricSpec>): MetricSpec {
  return { name: 'm', provider: prom, query: 'q', failOnNoData: false, ...extra }
}

t.test('renderTemplate and templateNames', async (t) => {
  const values = { route: 'shop', version: 'v2', interval: '30s', step: '3', weight: '25', namespace: 'prod' }
  t.equal(renderTemplate('rate(x{version="{{version}}"}[{{interval}}])', values), 'rate(x{version="v2"}[30s])')
  t.equal(renderTemplate('{{ version }}/{{route}}/{{  step  }}/{{weight}}', values), 'v2/shop/3/25', 'whitespace inside the braces')
  t.equal(renderTemplate('{{namespace}} {{ variables.namespace }}', values), 'prod prod', 'user variables, both spellings')
  t.equal(renderTemplate('?v={{version}}&ns={{namespace}}', { version: 'a b&c', namespace: 'x/y' }, encodeURIComponent), '?v=a%20b%26c&ns=x%2Fy', 'url: values encoded')
  t.equal(renderTemplate('sum(x{a="1"})', values), 'sum(x{a="1"})', 'PromQL braces are not placeholders')
  t.same(templateNames('{{version}} {{ variables.ns }} {{version}} {{route}}'), ['version', 'ns', 'route'], 'names in order, once each')
  t.same(templateNames('x{a="1"}'), [])
})

t.test('promDuration', async (t) => {
  const cases: Array<[number, string]> = [[30_000, '30s'], [1000, '1s'], [60_000, '1m'], [90_000, '90s'], [300_000, '5m'], [3_600_000, '1h'], [7_200_000, '2h'], [5_400_000, '90m'], [1500, '1500ms'], [250, '250ms']]
  for (const [ms, want] of cases) t.equal(promDuration(ms), want, `${ms} ms`)
})

t.test('judgeMetric: thresholds', async (t) => {
  const range = metric({ thresholdRange: { min: 0.98, max: 1 } })
  t.same(judgeMetric(range, { value: 0.99 }), { verdict: 'pass', canary: 0.99 })
  t.same(judgeMetric(range, { value: 0.98 }), { verdict: 'pass', canary: 0.98 }, 'min is inclusive')
  t.same(judgeMetric(range, { value: 0.8799999999 }), { verdict: 'fail', canary: 0.8799999999, reason: 'canary 0.88 is below min 0.98' }, 'reasons round to 6 digits')
  t.same(judgeMetric(metric({ thresholdRange: { max: 0.8 } }), { value: 0.91 }), { verdict: 'fail', canary: 0.91, reason: 'canary 0.91 is above max 0.8' })
  t.same(judgeMetric(range, { noData: 'empty result (no series)' }), { verdict: 'inconclusive', canary: null, reason: 'empty result (no series)' })
  t.same(judgeMetric(range, { error: 'Prometheus at http://prom:9090 answered 503' }), { verdict: 'inconclusive', canary: null, reason: 'Prometheus at http://prom:9090 answered 503' })
  const strict = metric({ thresholdRange: { min: 0.98 }, failOnNoData: true })
  t.same(judgeMetric(strict, { noData: 'value is NaN' }), { verdict: 'fail', canary: null, reason: 'value is NaN' }, 'failOnNoData')
  t.same(judgeMetric(strict, { error: 'x timed out after 300 ms' }).verdict, 'fail', 'failOnNoData covers errors too')
})

t.test('judgeMetric: compare', async (t) => {
  const lower = metric({ compare: { baseline: 'stable', maxRatio: 1.05, direction: 'lower-is-worse' } })
  t.same(judgeMetric(lower, { value: 0.88 }, { value: 0.98 }), {
    verdict: 'fail', canary: 0.88, baseline: 0.98, ratio: 1.1136, reason: 'canary 0.88 vs stable 0.98 (ratio 1.1136 > 1.05, lower is worse)'
  })
  t.same(judgeMetric(lower, { value: 0.97 }, { value: 0.98 }), { verdict: 'pass', canary: 0.97, baseline: 0.98, ratio: 1.0103 })
  t.same(judgeMetric(lower, { value: 1 }, { value: 1.05 }).verdict, 'pass', 'a ratio equal to maxRatio passes')
  t.same(judgeMetric(lower, { value: 0 }, { value: 0.5 }), { verdict: 'fail', canary: 0, baseline: 0.5, ratio: null, reason: 'canary 0 vs stable 0.5 (ratio infinite > 1.05, lower is worse)' }, 'zero canary: infinitely worse')
  t.same(judgeMetric(lower, { value: 0 }, { value: 0 }), { verdict: 'pass', canary: 0, baseline: 0, ratio: 1 }, 'both zero: equal')
  t.same(judgeMetric(lower, { value: 0.9 }, { noData: 'empty result (no series)' }), { verdict: 'inconclusive', canary: 0.9, baseline: null, reason: 'baseline stable: empty result (no series)' })
  t.same(judgeMetric(lower, { value: -1 }, { value: 2 }).verdict, 'inconclusive', 'negative values: no ratio')

  const higher = metric({ compare: { baseline: 'v1', maxRatio: 1.5, direction: 'higher-is-worse' }, thresholdRange: { max: 0.8 } })
  t.same(judgeMetric(higher, { value: 0.4 }, { value: 0.2 }), { verdict: 'fail', canary: 0.4, baseline: 0.2, ratio: 2, reason: 'canary 0.4 vs v1 0.2 (ratio 2 > 1.5, higher is worse)' })
  t.same(judgeMetric(higher, { value: 0.9 }, { value: 0.2 }).reason, 'canary 0.9 is above max 0.8; canary 0.9 vs v1 0.2 (ratio 4.5 > 1.5, higher is worse)', 'both findings')
  t.same(judgeMetric(higher, { value: 0.3 }, { value: 0.3 }), { verdict: 'pass', canary: 0.3, baseline: 0.3, ratio: 1 })
  t.same(judgeMetric(higher, { value: 0.9 }, { error: 'down' }), { verdict: 'fail', canary: 0.9, baseline: null, reason: 'canary 0.9 is above max 0.8; baseline v1: down' }, 'a threshold fail wins over a missing baseline')
  t.same(judgeMetric(higher, { noData: 'value is NaN' }, { value: 0.1 }), { verdict: 'inconclusive', canary: null, baseline: 0.1, reason: 'value is NaN' })
})

function figures (): SideFigures {
  return { requests: 100, failures: 0, successRate: 100, p50Ms: 1, p99Ms: 2, sampled: 100, ejections: 0, stillEjected: false }
}
function check (verdict: CheckResult['verdict'], reasons: string[] = []): CheckResult {
  return { verdict, reasons, canary: figures(), stable: figures() }
}
function res (name: string, verdict: MetricResult['verdict'], reason?: string): MetricResult {
  const r: MetricResult = { name, verdict, canary: verdict === 'pass' ? 1 : null, queries: { canary: 'q' }, durationMs: 3 }
  if (reason !== undefined) r.reason = reason
  return r
}
t.test('combineMetrics', async (t) => {
  let c = check('pass')
  combineMetrics(c, [res('a', 'pass'), res('b', 'pass')])
  t.equal(c.verdict, 'pass')
  t.same(c.reasons, [])
  t.same(c.metrics?.map((m) => m.name), ['a', 'b'], 'results attached')

  c = check('pass')
  combineMetrics(c, [res('a', 'pass'), res('b', 'inconclusive', 'empty result (no series)')])
  t.equal(c.verdict, 'inconclusive', 'an inconclusive metric holds a passing check')
  t.same(c.reasons, ['metric b: empty result (no series)'])

  c = check('inconclusive', ['canary had 3 requests, fewer than minRequests 50'])
  combineMetrics(c, [res('a', 'fail', 'canary 0.88 is below min 0.98'), res('b', 'inconclusive', 'value is NaN')])
  t.equal(c.verdict, 'fail', 'a failed metric fails even a check with too few requests')
  t.same(c.reasons, ['metric a: canary 0.88 is below min 0.98', 'canary had 3 requests, fewer than minRequests 50', 'metric b: value is NaN'], 'metric fails first')

  c = check('fail', ['canary success rate 90% is below 99%'])
  combineMetrics(c, [res('b', 'inconclusive', 'down')])
  t.equal(c.verdict, 'fail', 'an inconclusive metric never softens a failed check')
  t.same(c.reasons, ['canary success rate 90% is below 99%', 'metric b: down'])

  c = check('pass')
  combineMetrics(c, [])
  t.equal(c.verdict, 'pass')
  t.same(c.metrics, [])
})

t.test('readPrometheusAnswer', async (t) => {
  const vec = (...values: string[]): unknown => ({ status: 'success', data: { resultType: 'vector', result: values.map((v, i) => ({ metric: { i: String(i) }, value: [1700000000.1, v] })) } })
  const cases: Array<[string, unknown, ProviderAnswer]> = [
    ['one sample', vec('0.98'), { value: 0.98 }],
    ['scalar', { status: 'success', data: { resultType: 'scalar', result: [1700000000, '42'] } }, { value: 42 }],
    ['empty vector', vec(), { noData: 'empty result (no series)' }],
    ['two series', vec('1', '2'), { noData: 'query returned 2 series; aggregate it to one (e.g. sum(...))' }],
    ['NaN', vec('NaN'), { noData: 'value is NaN' }],
    ['+Inf', vec('+Inf'), { noData: 'value is +Inf' }],
    ['-Inf scalar', { status: 'success', data: { resultType: 'scalar', result: [1, '-Inf'] } }, { noData: 'value is -Inf' }],
    ['matrix', { status: 'success', data: { resultType: 'matrix', result: [] } }, { error: 'query returned a range vector; ask for an instant value (e.g. rate(x[{{interval}}]) rather than x[{{interval}}])' }],
    ['string', { status: 'success', data: { resultType: 'string', result: [1, 'a'] } }, { error: 'query returned a string, not a number' }],
    ['no data', {}, { error: 'Prometheus answered an unexpected body (no data.resultType)' }],
    ['null', null, { error: 'Prometheus answered an unexpected body (no data.resultType)' }]
  ]
  for (const [name, body, want] of cases) t.same(readPrometheusAnswer(body), want, name)
  t.equal(prometheusQueryUrl('http://prom:9090/prefix/', 'sum(x{a="b c"})'), 'http://prom:9090/prefix/api/v1/query?query=sum(x%7Ba%3D%22b%20c%22%7D)', 'prefix kept, query encoded')
})

t.test('valueAt (JSONPath)', async (t) => {
  const doc = { score: 95, s: '97.5', blank: ' ', text: 'abc', nan: 'NaN', flag: true, none: null, obj: { a: 1 }, data: { items: [{ name: 'v2', score: 0.5 }, { name: 'v1', score: 0.7 }] } }
  const cases: Array<[string, ProviderAnswer]> = [
    ['$.score', { value: 95 }],
    ['$.s', { value: 97.5 }],
    ['$.data.items[1].score', { value: 0.7 }],
    ['$.data.items[?@.name == "v2"].score', { value: 0.5 }],
    ["$['data']['items'][0]['score']", { value: 0.5 }],
    ['$.missing', { noData: 'jsonPath $.missing selected nothing' }],
    ['$.none', { noData: 'jsonPath $.none is null' }],
    ['$.text', { error: 'jsonPath $.text is not a number: "abc"' }],
    ['$.blank', { error: 'jsonPath $.blank is not a number: " "' }],
    ['$.nan', { error: 'jsonPath $.nan is not a number: "NaN"' }],
    ['$.flag', { error: 'jsonPath $.flag is not a number: true' }],
    ['$.obj', { error: 'jsonPath $.obj is not a number: {"a":1}' }],
    ['$.data.items[*].score', { error: 'jsonPath $.data.items[*].score selected 2 values; it must select one' }]
  ]
  for (const [path, want] of cases) t.same(valueAt(doc, path), want, path)
  t.match(valueAt(doc, '$..['), { error: /^jsonPath \$\.\.\[ is invalid: / }, 'a bad path is an error, not a throw')
})

t.test('redact', async (t) => {
  t.equal(redact('a s3cret b\n  c s3cret', ['s3cret']), 'a *** b c ***', 'secrets out, one line')
  t.equal(redact('x'.repeat(400), []).length, 300, 'bounded')
})

t.test('a quoted number too large for a double is no data; a secret is redacted also as a JSON string shows it', async (t) => {
  t.match(valueAt({ score: '1e999' }, '$.score'), { noData: /not a finite number/ })
  t.match(valueAt({ score: 1e308 * 10 }, '$.score'), { noData: /not a finite number/ })
  t.same(valueAt({ score: ' 97.5 ' }, '$.score'), { value: 97.5 })
  const secret = 'pa"ss\\word'
  t.equal(redact(`echo ${JSON.stringify({ auth: secret })}`, [secret]), 'echo {"auth":"***"}')
  t.equal(redact(`raw ${secret}`, [secret]), 'raw ***')
  t.equal(redact('a\u001b[31mred\u0007\u009b2J', []), 'a[31mred2J', 'control characters are dropped')
})
