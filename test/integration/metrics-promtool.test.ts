import t from 'tap'
import { promtool, promtoolMissing } from '../deploy/promtool.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'
import { scrapeText } from '../metrics/scrape.js'

const missing = promtoolMissing()
if (missing !== undefined) t.comment(`promtool check skipped: ${missing}`)

t.test('GET /metrics after real traffic passes `promtool check metrics`', { skip: missing ?? false }, async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary', (_req, res) => { res.writeHead(503, { 'content-length': '0' }); res.end() })
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50]), { ...twoVersionRoute(stable.origin, canary.origin, [100, 0]), name: 'api.v2', match: { pathPrefix: '/api' } }]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  for (let i = 0; i < 40; i++) await send(`${proxy.url}/${i % 2 === 0 ? 'api/' : ''}x`, { headers: { 'x-user-id': `u${i}` } })
  const { text } = await scrapeText(proxy)
  t.match(text, /code="503"/, 'traffic produced a non-pre-created code')
  t.match(text, /canaryd_route_weight\{route="api\.v2",version="canary"\} 0/, 'the second route\'s 0 % canary is exposed')
  const r = promtool(['check', 'metrics'], text)
  t.equal(r.status, 0, r.output)
  t.notMatch(r.output, /should|must|error/i, 'no lint findings')
})
