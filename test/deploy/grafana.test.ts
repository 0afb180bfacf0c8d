import { readFileSync } from 'node:fs'
import t from 'tap'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'
import { parseExposition } from '../../src/metrics/exposition.js'
import { scrapeText } from '../metrics/scrape.js'
import { exposedNames, metricNamesIn } from './promtool.js'

interface Panel { type: string; title: string; targets?: Array<{ expr: string; legendFormat?: string }> }
interface Dashboard { title: string; uid: string; panels: Panel[]; templating: { list: Array<{ name: string; type: string; query?: unknown; definition?: string }> }; annotations?: { list: Array<{ expr?: string }> } }

const dashboard = JSON.parse(readFileSync(new URL('../../deploy/grafana/canaryd.json', import.meta.url), 'utf8')) as Dashboard

t.test('every metric name the dashboard queries exists in a real /metrics exposition', async (t) => {
  const up = await startUpstream('stable')
  const proxy = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await up.close() })
  const e = parseExposition((await scrapeText(proxy)).text)
  const names = exposedNames(e.types, e.samples.map((s) => s.name))
  const exprs = [
    ...dashboard.panels.flatMap((p) => (p.targets ?? []).map((x) => ({ where: p.title, expr: x.expr }))),
    ...dashboard.templating.list.filter((v) => v.definition !== undefined).map((v) => ({ where: `$${v.name}`, expr: v.definition! })),
    ...(dashboard.annotations?.list ?? []).filter((a) => a.expr !== undefined).map((a) => ({ where: 'annotation', expr: a.expr! }))
  ]
  t.ok(exprs.length >= 12, `${exprs.length} queries`)
  let used = 0
  for (const { where, expr } of exprs) {
    const ns = metricNamesIn(expr)
    t.ok(ns.length > 0, `${where}: queries a canaryd metric`)
    for (const n of ns) { used++; t.ok(names.has(n), `${where}: ${n} is exposed`) }
  }
  t.ok(used > 0)
})

t.test('the dashboard has a route variable and the issue\'s panels, stable and canary side by side', async (t) => {
  const route = dashboard.templating.list.find((v) => v.name === 'route')
  t.equal(route?.type, 'query')
  t.match(route?.definition, /label_values\(canaryd_route_weight.*, route\)/)
  const panels = dashboard.panels.filter((p) => p.type !== 'row')
  const byQuery = (re: RegExp): Panel[] => panels.filter((p) => (p.targets ?? []).some((x) => re.test(x.expr)))
  t.ok(byQuery(/rate\(canaryd_requests_total\{[^}]*\}\[\$__rate_interval\]\)\)$/).length > 0, 'request rate')
  t.ok(byQuery(/code=~"5\.\."/).length > 0, 'error rate')
  for (const q of ['0.50', '0.90', '0.99']) t.ok(byQuery(new RegExp(`histogram_quantile\\(${q.replace('.', '\\.')}, sum by \\(version, le\\)`)).length > 0, `p${q}`)
  t.ok(byQuery(/canaryd_requests_in_flight/).length > 0, 'in-flight')
  t.ok(byQuery(/canaryd_route_weight/).length > 0, 'weight over time')
  // side by side: every per-route panel splits by version and filters on the route variable
  for (const p of panels) {
    for (const x of p.targets ?? []) {
      if (!x.expr.includes('route="$route"')) continue
      t.match(x.expr, /by \(version/, `${p.title}: one series per version`)
      t.match(x.legendFormat, /\{\{version\}\}/, `${p.title}: legend names the version`)
    }
  }
})
