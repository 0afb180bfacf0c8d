import t from 'tap'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { refusedOrigin, startUpstream } from '../helpers/upstream.js'
import { scrape, scrapeText, sum } from '../metrics/scrape.js'

/** Sends GETs for users u0…u(n-1), `concurrency` at a time; returns status and x-canaryd-version of each. */
async function drive (url: string, users: number, concurrency: number): Promise<Array<{ status: number; version: string }>> {
  const out: Array<{ status: number; version: string }> = []
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < users) {
      const i = next++
      const res = await fetch(`${url}/items/${i}`, { headers: { 'x-user-id': `u${i}` } })
      await res.arrayBuffer()
      out.push({ status: res.status, version: res.headers.get('x-canaryd-version') ?? '' })
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return out
}

t.test('1,000 users at 50/50: per-version requests_total and histogram _count grow by exactly what each version served', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })

  const before = await scrape(proxy)
  // both versions exist at zero before any request (pre-created series)
  for (const version of ['stable', 'canary']) {
    t.equal(sum(before, METRIC_NAMES.requests, { route: 'web', version, code: '200' }), 0)
    t.equal(sum(before, `${METRIC_NAMES.duration}_count`, { route: 'web', version }), 0)
    t.equal(sum(before, METRIC_NAMES.weight, { route: 'web', version }), 50)
  }
  const replies = await drive(proxy.url, 1000, 16)
  const after = await scrape(proxy)

  const served = { stable: 0, canary: 0 }
  for (const r of replies) {
    t.equal(r.status, 200)
    if (r.version === 'stable' || r.version === 'canary') served[r.version]++
  }
  t.equal(served.stable + served.canary, 1000, 'every response named its version')
  t.equal(served.stable, stable.seen.length, 'header agrees with what the stable upstream saw')
  t.ok(served.stable > 400 && served.canary > 400, `a 50/50 split (${served.stable}/${served.canary})`)
  for (const version of ['stable', 'canary'] as const) {
    const l = { route: 'web', version }
    const d = (name: string, extra: Record<string, string> = {}): number => sum(after, name, { ...l, ...extra }) - sum(before, name, { ...l, ...extra })
    t.equal(d(METRIC_NAMES.requests), served[version], `${version}: requests_total (all codes)`)
    t.equal(d(METRIC_NAMES.requests, { code: '200' }), served[version], `${version}: requests_total{code="200"}`)
    t.equal(d(`${METRIC_NAMES.duration}_count`), served[version], `${version}: duration _count`)
    t.equal(d(`${METRIC_NAMES.duration}_bucket`, { le: '+Inf' }), served[version], `${version}: +Inf bucket`)
    t.ok(d(`${METRIC_NAMES.duration}_sum`) > 0, `${version}: duration _sum grew`)
    t.equal(sum(after, METRIC_NAMES.inFlight, l), 0, `${version}: nothing in flight`)
    t.equal(sum(after, METRIC_NAMES.upstreamErrors, l), 0, `${version}: no upstream errors`)
  }
})

t.test('a dead canary is counted under version="canary": upstream_errors{kind="connect"} and requests_total{code="502"}', async (t) => {
  const stable = await startUpstream('stable')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, await refusedOrigin(), [50, 50])]))
  t.teardown(async () => { await proxy.close(); await stable.close() })

  const before = await scrape(proxy)
  const replies = await drive(proxy.url, 200, 8)
  const after = await scrape(proxy)
  const d = (name: string, labels: Record<string, string>): number => sum(after, name, labels) - sum(before, name, labels)

  const canary502 = replies.filter((r) => r.status === 502 && r.version === 'canary').length
  const stableOk = replies.filter((r) => r.status === 200 && r.version === 'stable').length
  t.ok(canary502 > 0, `some canary users got 502 (${canary502})`)
  t.equal(canary502 + stableOk + replies.filter((r) => r.version === 'canary' && r.status !== 502).length, replies.length, 'stable never failed')
  t.equal(d(METRIC_NAMES.requests, { route: 'web', version: 'canary', code: '502' }), canary502, 'requests_total{version="canary",code="502"}')
  const connect = d(METRIC_NAMES.upstreamErrors, { route: 'web', version: 'canary', kind: 'connect' })
  // every 502 the client saw is a failed connect; a connect that failed and was then served elsewhere may add more
  t.ok(connect >= canary502 && connect > 0, `upstream_errors{version="canary",kind="connect"} = ${connect} ≥ ${canary502}`)
  t.equal(d(METRIC_NAMES.upstreamErrors, { route: 'web', version: 'stable' }), 0, 'nothing charged to stable')
  t.equal(d(METRIC_NAMES.requests, { route: 'web', version: 'stable', code: '502' }), 0)
  t.equal(d(METRIC_NAMES.requests, { route: 'web', version: 'stable', code: '200' }), stableOk)
})

t.test('GET /metrics on the admin server is served with the Prometheus text content type', async (t) => {
  const stable = await startUpstream('stable')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, stable.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await stable.close() })
  const { contentType, text } = await scrapeText(proxy)
  t.match(text, /^# HELP canaryd_requests_total /m)
  t.match(contentType, /^text\/plain; version=0\.0\.4/)
})
