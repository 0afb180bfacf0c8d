import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { parseExposition } from '../../src/metrics/exposition.js'
import { PrometheusMetrics } from '../../src/metrics/prometheus.js'
import { exposedNames, metricNamesIn, promtool, promtoolMissing } from './promtool.js'

const dir = fileURLToPath(new URL('../../deploy/prometheus/', import.meta.url))

interface Rule { record?: string; alert?: string; expr: string; for?: string; labels?: Record<string, string> }

const missing = promtoolMissing()
if (missing !== undefined) t.comment(`promtool check skipped: ${missing}`)

t.test('the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`)', { skip: missing ?? false }, async (t) => {
  const check = promtool(['check', 'rules', 'canaryd-rules.yml'], undefined, dir)
  t.equal(check.status, 0, check.output)
  t.match(check.output, /SUCCESS/)
  const unit = promtool(['test', 'rules', 'canaryd-rules.test.yml'], undefined, dir)
  t.equal(unit.status, 0, unit.output)
})

t.test('the rules use only metrics canaryd exposes and include the issue\'s two canary comparisons', async (t) => {
  const doc = parse(readFileSync(`${dir}canaryd-rules.yml`, 'utf8')) as { groups: Array<{ rules: Rule[] }> }
  const rules = doc.groups.flatMap((g) => g.rules)
  const m = new PrometheusMetrics()
  m.bind('web', 'stable')
  const e = parseExposition(await m.expose())
  const names = exposedNames(e.types, e.samples.map((s) => s.name))
  for (const r of rules) for (const n of metricNamesIn(r.expr)) t.ok(names.has(n), `${r.record ?? r.alert}: ${n} is exposed`)
  const byName = new Map(rules.map((r) => [r.alert ?? r.record, r]))
  const err = byName.get('CanaryErrorRatioHigh')
  t.match(err?.expr, /> on \(job, route\) group_left 2 \* canaryd:errors5xx:ratio5m\{version="stable"\}/)
  t.equal(err?.for, '5m')
  const lat = byName.get('CanaryLatencyP99High')
  t.match(lat?.expr, /> on \(job, route\) group_left 1\.5 \* canaryd:latency:p99_5m\{version="stable"\}/)
  t.match(byName.get('canaryd:latency:p99_5m')?.expr, /histogram_quantile\(0\.99, .*canaryd_request_duration_seconds_bucket/)
})

t.test('the scrape config targets the admin port\'s /metrics and keeps annotated canaryd pods', async (t) => {
  const doc = parse(readFileSync(`${dir}prometheus.yml`, 'utf8')) as { rule_files: string[]; scrape_configs: Array<Record<string, unknown>> }
  t.same(doc.rule_files, ['canaryd-rules.yml'])
  const job = doc.scrape_configs.find((j) => j.job_name === 'canaryd')
  t.equal(job?.metrics_path, '/metrics')
  t.same(job?.static_configs, [{ targets: ['127.0.0.1:9901'] }])
  const pods = doc.scrape_configs.find((j) => j.job_name === 'canaryd-pods') as { relabel_configs: Array<Record<string, unknown>> } | undefined
  t.ok(pods?.relabel_configs.some((r) => (r.source_labels as string[] | undefined)?.includes('__meta_kubernetes_pod_annotation_prometheus_io_scrape') === true && r.action === 'keep'))
  // the rules compare versions within one job: the pod job is relabelled to the same job name
  t.ok(pods?.relabel_configs.some((r) => r.target_label === 'job' && r.replacement === 'canaryd'))
})
