import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse, stringify } from 'yaml'
import { parseExposition } from '../../src/metrics/exposition.js'
import { createDataPlane } from '../../src/app.js'
import { TableHolder } from '../../src/routing/holder.js'
import { buildRoutingTable } from '../../src/routing/table.js'
import { testConfig, testLogger, twoVersionRoute } from '../helpers/proxy.js'
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
  // the data plane a process serves with: per-version families and the listener's readouts
  const config = testConfig([twoVersionRoute('http://127.0.0.1:1', 'http://127.0.0.1:2')])
  const data = createDataPlane(config, new TableHolder(buildRoutingTable(config.routes, 1)), testLogger(), true)
  t.teardown(async () => { await data.upstreams.close() })
  const e = parseExposition(await data.metrics!.expose())
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

t.test('prometheus.yml (static target) passes `promtool check config` and scrapes the admin port\'s /metrics', async (t) => {
  const doc = parse(readFileSync(`${dir}prometheus.yml`, 'utf8')) as { rule_files: string[]; scrape_configs: Array<Record<string, unknown>> }
  t.same(doc.rule_files, ['canaryd-rules.yml'])
  t.same(doc.scrape_configs.map((j) => j.job_name), ['canaryd'])
  t.equal(doc.scrape_configs[0]?.metrics_path, '/metrics')
  t.same(doc.scrape_configs[0]?.static_configs, [{ targets: ['127.0.0.1:9901'] }])
  t.notOk(JSON.stringify(doc).includes('kubernetes_sd_configs'), 'no Kubernetes discovery: it runs on any Prometheus build')
  if (missing !== undefined) return
  const check = promtool(['check', 'config', 'prometheus.yml'], undefined, dir)
  t.equal(check.status, 0, check.output)
  t.match(check.output, /SUCCESS: prometheus\.yml is valid/)
})

t.test('prometheus-kubernetes.yml keeps annotated canaryd pods and relabels them to job canaryd', async (t) => {
  const text = readFileSync(`${dir}prometheus-kubernetes.yml`, 'utf8')
  const doc = parse(text) as { rule_files: string[]; scrape_configs: Array<Record<string, any>> }
  t.same(doc.rule_files, ['canaryd-rules.yml'])
  const pods = doc.scrape_configs.find((j) => j.job_name === 'canaryd-pods')
  t.same(pods?.kubernetes_sd_configs, [{ role: 'pod' }])
  const relabel = (pods?.relabel_configs ?? []) as Array<Record<string, unknown>>
  t.ok(relabel.some((r) => (r.source_labels as string[] | undefined)?.includes('__meta_kubernetes_pod_annotation_prometheus_io_scrape') === true && r.action === 'keep' && r.regex === 'true'))
  t.ok(relabel.some((r) => (r.source_labels as string[] | undefined)?.includes('__meta_kubernetes_pod_label_app_kubernetes_io_name') === true && r.action === 'keep' && r.regex === 'canaryd'))
  t.ok(relabel.some((r) => r.target_label === '__metrics_path__'), 'path from prometheus.io/path')
  const addr = relabel.find((r) => r.target_label === '__address__')
  t.ok(addr, 'port from prometheus.io/port')
  // the address rewrite as Prometheus applies it (anchored regex, $n groups): the pod IP stays,
  // the port becomes the annotation's
  const re = new RegExp(`^(?:${String(addr?.regex)})$`)
  t.equal('10.1.2.3:8080;9901'.replace(re, String(addr?.replacement)), '10.1.2.3:9901')
  t.equal('10.1.2.3;9901'.replace(re, String(addr?.replacement)), '10.1.2.3:9901', 'a pod without a declared port')
  // the rules compare versions within one job: the pod job is relabelled to the same job name
  t.ok(relabel.some((r) => r.target_label === 'job' && r.replacement === 'canaryd'))
  if (missing !== undefined) return
  // Debian's promtool is built without Kubernetes discovery, so the file itself cannot pass
  // there: require that this is the only complaint, then check everything else (relabelling,
  // rule files) by running promtool on the same file with a static target in its place
  const direct = promtool(['check', 'config', 'prometheus-kubernetes.yml'], undefined, dir)
  if (direct.status !== 0) t.match(direct.output, /field kubernetes_sd_configs not found/, 'fails on this build only for the missing Kubernetes discovery')
  else t.pass('this promtool has Kubernetes discovery and accepts the file')
  const tmp = mkdtempSync(join(tmpdir(), 'canaryd-prom-'))
  t.teardown(() => { rmSync(tmp, { recursive: true, force: true }) })
  copyFileSync(`${dir}canaryd-rules.yml`, join(tmp, 'canaryd-rules.yml'))
  for (const j of doc.scrape_configs) {
    if (j.kubernetes_sd_configs === undefined) continue
    delete j.kubernetes_sd_configs
    j.static_configs = [{ targets: ['127.0.0.1:9901'] }]
  }
  writeFileSync(join(tmp, 'prometheus-kubernetes.yml'), stringify(doc))
  const rest = promtool(['check', 'config', 'prometheus-kubernetes.yml'], undefined, tmp)
  t.equal(rest.status, 0, rest.output)
})
