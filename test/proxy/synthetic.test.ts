/**
 * The `source` label of canaryd_requests_total, end to end: a request whose
 * x-canaryd-synthetic header is exactly `1` counts under source="synthetic"
 * (over HTTP/1.1 and HTTP/2), every other request under source="user"; the
 * header reaches the upstream unchanged, and finish listeners (the rollout
 * windows) get the flag.
 */
import http2 from 'node:http2'
import t from 'tap'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { PRECREATED_CODES } from '../../src/metrics/prometheus.js'
import { ownHostPeer } from '../../src/proxy/server.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'
import { until } from '../helpers/until.js'
import { scrape, sum } from '../metrics/scrape.js'

t.test('x-canaryd-synthetic: 1 → source="synthetic" over HTTP/1.1 and HTTP/2; anything else → "user"', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  // h2c with prior knowledge, HTTP/1.1 on the same port
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, h2c: true } }))
  t.teardown(p.close)
  const metrics = p.app.metrics!
  const flags: boolean[] = []
  const off = metrics.onFinish('web', 'canary', (_st, _s, _f, synthetic) => { flags.push(synthetic) })
  t.teardown(off)

  let e = await scrape(p)
  for (const version of ['stable', 'canary']) {
    for (const code of PRECREATED_CODES) {
      for (const source of ['user', 'synthetic']) t.equal(sum(e, METRIC_NAMES.requests, { version, code: String(code), source }), 0)
      t.equal(e.samples.filter((s) => s.name === METRIC_NAMES.requests && s.labels.version === version && s.labels.code === String(code)).length, 2, `${version} ${code}: both sources exist at 0 from start-up`)
    }
  }

  // HTTP/1.1: only the exact value 1 is synthetic
  const h1: Array<[string[] | Record<string, string>, boolean]> = [
    [{ 'x-canaryd-synthetic': '1' }, true],
    [{ 'x-canaryd-synthetic': '1', 'x-canary': 'canary' }, true],
    [{ 'x-canaryd-synthetic': '0' }, false],
    [{ 'x-canaryd-synthetic': 'true' }, false],
    [{ 'x-canaryd-synthetic': ' 1x' }, false],
    [['host', 'web.test', 'x-canaryd-synthetic', '1', 'x-canaryd-synthetic', '1'], false], // repeated: "1, 1", not exactly 1
    [{}, false]
  ]
  for (const [headers] of h1) {
    const r = await send(`${p.url}/h1`, { headers })
    t.equal(r.status, 200)
  }
  const h1Synthetic = h1.filter(([, s]) => s).length
  await until('HTTP/1.1 counted', async () => sum(await scrape(p), METRIC_NAMES.requests, {}) === h1.length, 2000)
  e = await scrape(p)
  t.equal(sum(e, METRIC_NAMES.requests, { source: 'synthetic', code: '200' }), h1Synthetic, 'HTTP/1.1 synthetic')
  t.equal(sum(e, METRIC_NAMES.requests, { source: 'user', code: '200' }), h1.length - h1Synthetic, 'HTTP/1.1 user')
  t.equal(sum(e, METRIC_NAMES.requests, { version: 'canary', source: 'synthetic' }), 1, 'the override and the mark together')
  const marked = stable.seen.filter((r) => r.headers['x-canaryd-synthetic'] === '1')
  t.equal(marked.length, 1, 'the upstream sees the mark unchanged')

  // HTTP/2
  const s = http2.connect(p.url)
  s.on('error', () => {})
  t.teardown(() => { s.destroy() })
  const h2 = async (headers: Record<string, string>): Promise<number> => await new Promise((resolve, reject) => {
    const st = s.request({ ':method': 'GET', ':path': '/h2', ...headers })
    let status = 0
    st.on('response', (h) => { status = Number(h[':status']) })
    st.on('data', () => {})
    st.on('end', () => { resolve(status) })
    st.on('error', reject)
  })
  t.equal(await h2({ 'x-canaryd-synthetic': '1', 'x-canary': 'canary' }), 200)
  t.equal(await h2({ 'x-canaryd-synthetic': '1' }), 200)
  t.equal(await h2({ 'x-canaryd-synthetic': 'yes' }), 200)
  t.equal(await h2({}), 200)
  await until('HTTP/2 counted', async () => sum(await scrape(p), METRIC_NAMES.requests, {}) === h1.length + 4, 2000)
  e = await scrape(p)
  t.equal(sum(e, METRIC_NAMES.requests, { source: 'synthetic' }), h1Synthetic + 2, 'HTTP/2 synthetic')
  t.equal(sum(e, METRIC_NAMES.requests, { source: 'user' }), h1.length - h1Synthetic + 2, 'HTTP/2 user')
  t.equal(sum(e, METRIC_NAMES.requests, { version: 'canary', source: 'synthetic' }), 2)
  t.same(flags, [true, true], 'the canary\'s finish listener got the flag for each of its requests')

  // totals: every source, and the synthetic part
  const tot = metrics.totals('web', 'stable')!
  t.equal(tot.codes.get(200), h1.length - 1 + 3, 'every source: 6 HTTP/1.1 and 3 HTTP/2 requests on stable')
  t.equal(tot.syntheticCodes.get(200), h1Synthetic - 1 + 1, 'the synthetic part: one of each protocol')
  // the histogram has no source label: every request is in it
  t.equal(sum(e, `${METRIC_NAMES.duration}_count`, {}), h1.length + 4)
  t.notOk(e.samples.some((x) => x.name !== METRIC_NAMES.requests && 'source' in x.labels), 'no other family has the label')
})

t.test('a refused synthetic request (a bad header after routing) is charged to its version as synthetic too', async (t) => {
  const stable = await startUpstream('stable')
  t.teardown(stable.close)
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, stable.origin, [100, 0])]))
  t.teardown(p.close)
  // a Transfer-Encoding other than plain chunked: refused (400) after the version was picked
  const r = await send(`${p.url}/`, { method: 'POST', headers: ['host', 'web.test', 'x-canaryd-synthetic', '1', 'transfer-encoding', 'gzip, chunked'], body: '0\r\n\r\n' })
  t.ok(r.status >= 400, `refused with ${r.status}`)
  await until('counted', async () => sum(await scrape(p), METRIC_NAMES.requests, { source: 'synthetic' }) === 1, 2000)
  t.equal(sum(await scrape(p), METRIC_NAMES.requests, { source: 'user' }), 0)
})

t.test('only this host can mark its requests synthetic (the generator sends to its own listener)', async (t) => {
  for (const a of ['127.0.0.1', '127.3.2.1', '::1', '::ffff:127.0.0.1']) t.ok(ownHostPeer(a, '10.0.0.5'), a)
  for (const a of [undefined, '10.0.0.7', '192.168.1.2', '::ffff:10.0.0.7', 'fe80::1', '2001:db8::1', '::', '0.0.0.0', '1.127.0.0']) t.notOk(ownHostPeer(a, '10.0.0.5'), String(a))
  t.ok(ownHostPeer('10.0.0.5', '10.0.0.5'), 'a listener bound to 10.0.0.5 reached from 10.0.0.5: this host')
  t.ok(ownHostPeer('::ffff:10.0.0.5', '::ffff:10.0.0.5'), 'the same, IPv4-mapped')
})
