/**
 * The metric providers end to end: runMetrics against a real Prometheus
 * scraping a test upstream's business counters, and against real HTTP
 * servers (auth, JSONPath, limits, timeouts). Everything on 127.0.0.1.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { AuthSpec, MetricSpec, PrometheusProviderSpec } from '../../src/config/plan.js'
import { runMetrics, type MetricContext, type MetricResult } from '../../src/rollout/analysis.js'
import { prometheusMissing, startPrometheus } from '../helpers/prometheus.js'
import { refusedOrigin, startUpstream, type TestUpstream } from '../helpers/upstream.js'
import { until } from '../helpers/until.js'

const ctx: MetricContext = { route: 'shop', canary: 'v2', stable: 'v1', intervalMs: 10_000, step: 1, weight: 10, variables: { job: 'test' } }

/** Starts a test server answering with `handler`, closed in teardown. */
async function serve (t: Test, handler: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void): Promise<TestUpstream> {
  const u = await startUpstream('metrics', handler)
  t.teardown(u.close)
  return u
}

function json (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

/** A server that reads requests and never answers (the socket is closed in teardown). */
async function hang (t: Test): Promise<TestUpstream> {
  return await serve(t, () => {})
}

/** Runs one metric and reports how long it took, measured outside runMetrics. */
async function runOne (m: MetricSpec, c: MetricContext = ctx, opts: Parameters<typeof runMetrics>[2] = {}): Promise<MetricResult & { tookMs: number }> {
  const start = performance.now()
  const [r] = await runMetrics([m], c, opts)
  return { ...r!, tookMs: performance.now() - start }
}

// business counters per version, incremented at each scrape so rate() has a slope:
// v1 (stable) 98 % orders ok, v2 88 % (10 % worse), v3 97 % (within 5 %)
const OK_PER_100: Record<string, number> = { v1: 98, v2: 88, v3: 97 }

const SUCCESS = 'sum(rate(orders_ok_total{version="{{version}}"}[{{interval}}])) / sum(rate(orders_total{version="{{ version }}"}[{{interval}}]))'

const missing = prometheusMissing()
if (missing !== undefined) t.comment(`SKIP the Prometheus provider tests: ${missing}`)

t.test('prometheus provider against a real Prometheus', { skip: missing ?? false }, async (t) => {
  const totals = new Map<string, { all: number; ok: number }>(Object.keys(OK_PER_100).map((v) => [v, { all: 0, ok: 0 }]))
  const business = await serve(t, (req, res) => {
    if (req.url !== '/metrics') { res.writeHead(404).end(); return }
    const lines = ['# TYPE orders_total counter', '# TYPE orders_ok_total counter']
    for (const [v, c] of totals) {
      c.all += 100
      c.ok += OK_PER_100[v]!
      lines.push(`orders_total{version="${v}"} ${c.all}`, `orders_ok_total{version="${v}"} ${c.ok}`)
    }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' })
    res.end(lines.join('\n') + '\n')
  })
  const started = performance.now()
  const prom = await startPrometheus({ targets: [business.origin.replace('http://', '')] })
  t.teardown(prom.stop)
  const ready = performance.now() - started
  await prom.waitForTargets()
  const up = performance.now() - started
  // rate() needs two scrapes inside the 10 s range: wait until stable's figure exists (bounded)
  await until('the success rate of v1 is queryable', async () => {
    const d = await prom.query(SUCCESS.replaceAll('{{version}}', 'v1').replaceAll('{{ version }}', 'v1').replaceAll('{{interval}}', '10s')) as { result: unknown[] }
    return d.result.length === 1
  }, 15_000, 200)
  t.comment(`Prometheus ready after ${Math.round(ready)} ms, target up after ${Math.round(up)} ms, rate() answers after ${Math.round(performance.now() - started)} ms`)

  const provider: PrometheusProviderSpec = { type: 'prometheus', address: prom.url, timeoutMs: 5000 }
  const base = { name: 'order-success', provider, query: SUCCESS, failOnNoData: false }

  t.test('threshold pass', async (t) => {
    const r = await runOne({ ...base, thresholdRange: { min: 0.95 } }, { ...ctx, canary: 'v3' })
    t.equal(r.verdict, 'pass', r.reason ?? 'pass')
    t.ok(Math.abs(r.canary! - 0.97) < 1e-9, `canary ${r.canary} is 0.97`)
    t.equal(r.queries.canary, 'sum(rate(orders_ok_total{version="v3"}[10s])) / sum(rate(orders_total{version="v3"}[10s]))', 'rendered: version and interval')
    t.equal(r.reason, undefined)
    t.equal(r.baseline, undefined, 'no compare, no baseline')
  })

  t.test('threshold fail', async (t) => {
    const r = await runOne({ ...base, thresholdRange: { min: 0.95 } })
    t.equal(r.verdict, 'fail')
    t.equal(r.reason, 'canary 0.88 is below min 0.95')
  })

  t.test('compare: a canary 10 % worse fails (lower is worse), one within 5 % passes', async (t) => {
    const compare = { baseline: 'stable', maxRatio: 1.05, direction: 'lower-is-worse' } as const
    const bad = await runOne({ ...base, compare })
    t.equal(bad.verdict, 'fail')
    t.ok(Math.abs(bad.baseline! - 0.98) < 1e-9, 'baseline is stable v1')
    t.equal(bad.ratio, 1.1136)
    t.equal(bad.reason, 'canary 0.88 vs stable 0.98 (ratio 1.1136 > 1.05, lower is worse)')
    t.match(bad.queries.baseline, /version="v1"/, 'the baseline query names the stable version')
    const good = await runOne({ ...base, compare }, { ...ctx, canary: 'v3' })
    t.equal(good.verdict, 'pass', good.reason ?? 'pass')
    t.equal(good.ratio, 1.0103)
    const named = await runOne({ ...base, compare: { ...compare, baseline: 'v3' } })
    t.match(named.queries.baseline, /version="v3"/, 'a version name as baseline')
    t.equal(named.verdict, 'fail')
  })

  t.test('empty vector, several series, NaN, a bad query: inconclusive', async (t) => {
    const empty = await runOne({ ...base, thresholdRange: { min: 0.95 } }, { ...ctx, canary: 'nope' })
    t.same({ verdict: empty.verdict, canary: empty.canary, reason: empty.reason }, { verdict: 'inconclusive', canary: null, reason: 'empty result (no series)' })
    const many = await runOne({ ...base, query: 'orders_total', thresholdRange: { min: 0 } })
    t.equal(many.verdict, 'inconclusive')
    t.equal(many.reason, 'query returned 3 series; aggregate it to one (e.g. sum(...))')
    const nan = await runOne({ ...base, query: '0/0', thresholdRange: { min: 0 } })
    t.same([nan.verdict, nan.reason], ['inconclusive', 'value is NaN'])
    const scalar = await runOne({ ...base, query: 'scalar(sum(orders_total{version="{{version}}"}) > 0) * 0 + {{weight}}', thresholdRange: { max: 50 } })
    t.same([scalar.verdict, scalar.canary], ['pass', 10], 'a scalar answer; {{weight}} rendered')
    const bad = await runOne({ ...base, query: 'sum(rate(orders_total[', thresholdRange: { min: 0 } })
    t.equal(bad.verdict, 'inconclusive')
    t.match(bad.reason, new RegExp(`^Prometheus at ${prom.url} answered 400: bad_data: `), 'Prometheus\' own error')
  })

  t.test('failOnNoData turns no data into a fail', async (t) => {
    const r = await runOne({ ...base, thresholdRange: { min: 0.95 }, failOnNoData: true }, { ...ctx, canary: 'nope' })
    t.same([r.verdict, r.reason], ['fail', 'empty result (no series)'])
  })

  t.test('a stopped Prometheus gives inconclusive, naming its address', async (t) => {
    await prom.stop()
    const r = await runOne({ ...base, thresholdRange: { min: 0.95 } })
    t.equal(r.verdict, 'inconclusive')
    t.match(r.reason, `Prometheus at ${prom.url} is unreachable (`)
  })
})

t.test('prometheus provider without a Prometheus', async (t) => {
  t.test('unreachable address', async (t) => {
    const address = await refusedOrigin()
    const r = await runOne({ name: 'x', provider: { type: 'prometheus', address, timeoutMs: 2000 }, query: 'up', thresholdRange: { min: 1 }, failOnNoData: false })
    t.equal(r.verdict, 'inconclusive')
    t.match(r.reason, `Prometheus at ${address} is unreachable (`)
    t.match(r.reason, 'ECONNREFUSED')
    const strict = await runOne({ name: 'x', provider: { type: 'prometheus', address, timeoutMs: 2000 }, query: 'up', thresholdRange: { min: 1 }, failOnNoData: true })
    t.equal(strict.verdict, 'fail', 'failOnNoData: an outage fails too')
  })

  t.test('timeout: a server that never answers', async (t) => {
    const h = await hang(t)
    const r = await runOne({ name: 'x', provider: { type: 'prometheus', address: h.origin, timeoutMs: 300 }, query: 'up', thresholdRange: { min: 1 }, compare: { baseline: 'stable', maxRatio: 1.1, direction: 'lower-is-worse' }, failOnNoData: false })
    t.equal(r.verdict, 'inconclusive')
    t.equal(r.reason, `Prometheus at ${h.origin} timed out after 300 ms; baseline stable: Prometheus at ${h.origin} timed out after 300 ms`)
    t.ok(r.tookMs >= 250 && r.tookMs < 2000, `returned in ${Math.round(r.tookMs)} ms`)
    t.ok(r.durationMs >= 250 && r.durationMs < 2000, `durationMs ${r.durationMs}`)
  })

  t.test('the caller\'s signal aborts the queries at once', async (t) => {
    const h = await hang(t)
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 100)
    const r = await runOne({ name: 'x', provider: { type: 'prometheus', address: h.origin, timeoutMs: 10_000 }, query: 'up', thresholdRange: { min: 1 }, failOnNoData: false }, ctx, { signal: ac.signal })
    t.same([r.verdict, r.reason], ['inconclusive', `Prometheus at ${h.origin}: the query was aborted`])
    t.ok(r.tookMs < 2000, `returned in ${Math.round(r.tookMs)} ms`)
  })

  t.test('a 503 without a JSON body', async (t) => {
    const s = await serve(t, (_req, res) => { res.writeHead(503).end('overloaded') })
    const r = await runOne({ name: 'x', provider: { type: 'prometheus', address: `${s.origin}/prom/`, timeoutMs: 2000 }, query: 'up', thresholdRange: { min: 1 }, failOnNoData: false })
    t.same([r.verdict, r.reason], ['inconclusive', `Prometheus at ${s.origin}/prom/ answered 503`])
    t.equal(s.seen[0]?.url, '/prom/api/v1/query?query=up', 'path prefix kept, instant query without time=')
  })
})

t.test('auth: secrets read at query time, never in the result', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-auth-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const accepted = new Set(['Bearer s3cret-env-token', 'Bearer s3cret-file-token', 'Bearer rotated-token', `Basic ${Buffer.from('canary:pa55word').toString('base64')}`])
  // a Prometheus API that wants a known Authorization; a wrong one is answered 400 with the header echoed (a leaky server)
  const api = await serve(t, (req, res) => {
    const got = req.headers.authorization ?? ''
    if (got === '') { res.writeHead(401).end('no credentials'); return }
    if (!accepted.has(got)) { json(res, 400, { status: 'error', errorType: 'bad_data', error: `bad credentials ${got}` }); return }
    json(res, 200, { status: 'success', data: { resultType: 'vector', result: [{ metric: {}, value: [1, '0.99'] }] } })
  })
  const metric = (auth?: AuthSpec): MetricSpec => ({ name: 'x', provider: { type: 'prometheus', address: api.origin, timeoutMs: 2000, ...(auth === undefined ? {} : { auth }) }, query: 'up', thresholdRange: { min: 0.9 }, failOnNoData: false })
  const clean = (r: MetricResult, ...secrets: string[]): void => {
    const text = JSON.stringify(r)
    for (const s of secrets) t.notOk(text.includes(s), `the result does not contain ${s.slice(0, 4)}…`)
  }

  t.test('bearer from env', async (t) => {
    const r = await runOne(metric({ type: 'bearer', tokenEnv: 'PROM_TOKEN' }), ctx, { env: { PROM_TOKEN: 's3cret-env-token' } })
    t.equal(r.verdict, 'pass', r.reason ?? 'pass')
    t.equal(api.seen.at(-1)?.headers.authorization, 'Bearer s3cret-env-token')
    clean(r, 's3cret-env-token')
    const wrong = await runOne(metric({ type: 'bearer', tokenEnv: 'PROM_TOKEN' }), ctx, { env: { PROM_TOKEN: 'wrong-token-value' } })
    t.equal(wrong.verdict, 'inconclusive')
    t.equal(wrong.reason, `Prometheus at ${api.origin} answered 400: bad_data: bad credentials Bearer ***`, 'the echoed secret is redacted')
    clean(wrong, 'wrong-token-value')
    const unset = await runOne(metric({ type: 'bearer', tokenEnv: 'PROM_TOKEN' }), ctx, { env: {} })
    t.same([unset.verdict, unset.reason], ['inconclusive', 'bearer token environment variable PROM_TOKEN is not set'])
  })

  t.test('bearer from a file, re-read at every query', async (t) => {
    const file = join(dir, 'token')
    writeFileSync(file, 's3cret-file-token\n')
    const r = await runOne(metric({ type: 'bearer', tokenFile: file }))
    t.equal(r.verdict, 'pass', r.reason ?? 'pass')
    t.equal(api.seen.at(-1)?.headers.authorization, 'Bearer s3cret-file-token', 'trimmed')
    clean(r, 's3cret-file-token')
    writeFileSync(file, 'rotated-token')
    await runOne(metric({ type: 'bearer', tokenFile: file }))
    t.equal(api.seen.at(-1)?.headers.authorization, 'Bearer rotated-token', 'a rotated token is used without a restart')
    const gone = await runOne(metric({ type: 'bearer', tokenFile: join(dir, 'missing') }))
    t.same([gone.verdict, gone.reason], ['inconclusive', `bearer token file ${join(dir, 'missing')} cannot be read (ENOENT)`])
  })

  t.test('basic from a file; no auth is a 401', async (t) => {
    const file = join(dir, 'password')
    writeFileSync(file, 'pa55word\n')
    const r = await runOne(metric({ type: 'basic', username: 'canary', passwordFile: file }))
    t.equal(r.verdict, 'pass', r.reason ?? 'pass')
    t.equal(api.seen.at(-1)?.headers.authorization, `Basic ${Buffer.from('canary:pa55word').toString('base64')}`)
    clean(r, 'pa55word')
    const none = await runOne(metric())
    t.same([none.verdict, none.reason], ['inconclusive', `Prometheus at ${api.origin} answered 401`])
  })

  t.test('the http provider sends auth and headers too', async (t) => {
    const s = await serve(t, (req, res) => {
      if (req.headers.authorization !== 'Bearer s3cret-env-token') { res.writeHead(401).end(); return }
      json(res, 200, { score: 99 })
    })
    const m: MetricSpec = { name: 'x', provider: { type: 'http', url: `${s.origin}/score`, method: 'GET', jsonPath: '$.score', timeoutMs: 2000, headers: { 'X-Tenant': 'shop' }, auth: { type: 'bearer', tokenEnv: 'T' } }, thresholdRange: { min: 90 }, failOnNoData: false }
    const r = await runOne(m, ctx, { env: { T: 's3cret-env-token' } })
    t.equal(r.verdict, 'pass', r.reason ?? 'pass')
    t.equal(s.seen[0]?.headers['x-tenant'], 'shop')
    clean(r, 's3cret-env-token')
    const denied = await runOne(m, ctx, { env: { T: 'nope-nope' } })
    t.same([denied.verdict, denied.reason], ['inconclusive', `${s.origin}/score answered 401`])
  })

  t.test('system files are not secrets: /proc/self/environ (canaryd\'s own settings) is refused, whatever its reported size', async (t) => {
    const m: MetricSpec = { name: 'x', provider: { type: 'prometheus', address: api.origin, timeoutMs: 2000, auth: { type: 'basic', username: 'u', passwordFile: '/proc/self/environ' } }, query: 'up', thresholdRange: { min: 0.9 }, failOnNoData: false }
    const seen = api.seen.length
    const r = await runOne(m)
    t.equal(r.verdict, 'inconclusive')
    t.match(r.reason, /basic auth password file \/proc\/self\/environ cannot be read \(\/proc\/\d+\/environ is a system file, not a secret\)/)
    t.equal(api.seen.length, seen, 'nothing was sent')
  })

  t.test('an API key in a header of its own (type header)', async (t) => {
    const s = await serve(t, (req, res) => {
      if (req.headers['x-api-key'] !== 'k3y-from-env') { json(res, 403, { error: `bad key ${String(req.headers['x-api-key'])}` }); return }
      json(res, 200, { score: 95 })
    })
    const m: MetricSpec = { name: 'x', provider: { type: 'http', url: `${s.origin}/score`, method: 'GET', jsonPath: '$.score', timeoutMs: 2000, auth: { type: 'header', name: 'X-Api-Key', valueEnv: 'KEY' } }, thresholdRange: { min: 90 }, failOnNoData: false }
    const r = await runOne(m, ctx, { env: { KEY: 'k3y-from-env' } })
    t.equal(r.verdict, 'pass', r.reason ?? 'pass')
    t.equal(s.seen[0]?.headers['x-api-key'], 'k3y-from-env')
    t.equal(s.seen[0]?.headers.authorization, undefined, 'no Authorization header besides it')
    clean(r, 'k3y-from-env')
    const unset = await runOne(m, ctx, { env: {} })
    t.same([unset.verdict, unset.reason], ['inconclusive', 'X-Api-Key header value environment variable KEY is not set'])
  })
})

t.test('http provider', async (t) => {
  const scores: Record<string, number> = { v1: 96, v2: 95 }
  const s = await serve(t, (req, res, body) => {
    const u = new URL(req.url ?? '/', 'http://x')
    const v = u.searchParams.get('version') ?? ''
    switch (u.pathname) {
      case '/score': return json(res, 200, { score: scores[v] ?? null })
      case '/nested': return json(res, 200, { data: { versions: [{ name: 'v1', stats: { score: 0.7 } }, { name: 'v2', stats: { score: 0.5 } }] } })
      case '/string': return json(res, 200, { score: '97.5' })
      case '/text': return json(res, 200, { score: 'high' })
      case '/post': return json(res, 200, { echo: JSON.parse(body.toString()) as unknown, type: req.headers['content-type'] })
      case '/down': res.writeHead(503).end(); return
      case '/html': res.writeHead(200, { 'content-type': 'text/html' }).end('<html>'); return
      case '/big': return json(res, 200, { pad: 'x'.repeat(1024 * 1024), score: 1 })
      case '/big-chunked': {
        // no content-length: the cap must hold while streaming
        res.writeHead(200, { 'content-type': 'application/json' })
        res.write('{"pad":"')
        for (let i = 0; i < 40; i++) res.write('x'.repeat(32 * 1024))
        res.end('","score":1}')
        return
      }
    }
    res.writeHead(404).end()
  })
  const http = (path: string, jsonPath = '$.score', extra: Partial<MetricSpec> = {}): MetricSpec =>
    ({ name: 'checkout-api', provider: { type: 'http', url: `${s.origin}${path}`, method: 'GET', jsonPath, timeoutMs: 2000 }, thresholdRange: { min: 90 }, failOnNoData: false, ...extra })

  t.test('$.score with a templated, URL-encoded url', async (t) => {
    const m = http('/score?version={{version}}&team={{team}}&w={{weight}}')
    const r = await runOne(m, { ...ctx, variables: { team: 'a b&c' } })
    t.equal(r.verdict, 'pass', r.reason ?? 'pass')
    t.equal(r.canary, 95)
    t.equal(s.seen.at(-1)?.url, '/score?version=v2&team=a%20b%26c&w=10', 'values URL-encoded')
    t.equal(r.queries.canary, `${s.origin}/score?version=v2&team=a%20b%26c&w=10`)
    const cmp = await runOne({ ...m, compare: { baseline: 'stable', maxRatio: 1.05, direction: 'lower-is-worse' } }, { ...ctx, variables: { team: 't' } })
    t.same([cmp.verdict, cmp.canary, cmp.baseline, cmp.ratio], ['pass', 95, 96, 1.0105], 'compare queries the baseline version')
    const none = await runOne(m, { ...ctx, canary: 'v9', variables: { team: 't' } })
    t.same([none.verdict, none.reason], ['inconclusive', 'jsonPath $.score is null'])
  })

  t.test('a nested path and a filter', async (t) => {
    const r = await runOne(http('/nested', '$.data.versions[?@.name == "{{version}}"].stats.score', { thresholdRange: { min: 0.6 } }))
    // the jsonPath is not a template: {{version}} stays literal and selects nothing
    t.same([r.verdict, r.reason], ['inconclusive', 'jsonPath $.data.versions[?@.name == "{{version}}"].stats.score selected nothing'])
    const nested = await runOne(http('/nested', '$.data.versions[1].stats.score', { thresholdRange: { min: 0.6 } }))
    t.same([nested.verdict, nested.canary, nested.reason], ['fail', 0.5, 'canary 0.5 is below min 0.6'])
    const filtered = await runOne(http('/nested', '$.data.versions[?@.name == "v1"].stats.score', { thresholdRange: { min: 0.6 } }))
    t.same([filtered.verdict, filtered.canary], ['pass', 0.7])
  })

  t.test('numbers as strings are accepted, text is not', async (t) => {
    const r = await runOne(http('/string'))
    t.same([r.verdict, r.canary], ['pass', 97.5])
    const text = await runOne(http('/text'))
    t.same([text.verdict, text.canary, text.reason], ['inconclusive', null, 'jsonPath $.score is not a number: "high"'])
  })

  t.test('POST with a templated body', async (t) => {
    const m: MetricSpec = { name: 'x', provider: { type: 'http', url: `${s.origin}/post`, method: 'POST', body: '{"version":"{{version}}","route":"{{route}}"}', jsonPath: '$.echo.version', timeoutMs: 2000 }, thresholdRange: { min: 0 }, failOnNoData: false }
    const r = await runOne(m)
    t.same([r.verdict, r.reason], ['inconclusive', 'jsonPath $.echo.version is not a number: "v2"'], 'the body was rendered (v2 echoed back)')
    t.equal(s.seen.at(-1)?.method, 'POST')
    t.equal(s.seen.at(-1)?.headers['content-type'], 'application/json')
  })

  t.test('errors: 503, not JSON, over 1 MiB, timeout', async (t) => {
    const down = await runOne(http('/down'))
    t.same([down.verdict, down.reason], ['inconclusive', `${s.origin}/down answered 503`])
    const html = await runOne(http('/html'))
    t.same([html.verdict, html.reason], ['inconclusive', `${s.origin}/html answered 200 with a body that is not JSON`])
    const big = await runOne(http('/big'))
    t.equal(big.verdict, 'inconclusive')
    t.match(big.reason, /answered \d+ bytes, more than the 1 MiB a metric may take$/)
    const chunked = await runOne(http('/big-chunked'))
    t.same([chunked.verdict, chunked.reason], ['inconclusive', `${s.origin}/big-chunked answered more than the 1 MiB a metric may take`])
    const h = await hang(t)
    const slow = await runOne({ ...http('/score'), provider: { type: 'http', url: `${h.origin}/score`, method: 'GET', jsonPath: '$.score', timeoutMs: 300 } })
    t.same([slow.verdict, slow.reason], ['inconclusive', `${h.origin}/score timed out after 300 ms`])
    t.ok(slow.tookMs < 2000, `returned in ${Math.round(slow.tookMs)} ms`)
  })

  t.test('metrics run in parallel', async (t) => {
    const h = await hang(t)
    const slow = (name: string): MetricSpec => ({ name, provider: { type: 'http', url: `${h.origin}/x`, method: 'GET', jsonPath: '$.x', timeoutMs: 400 }, thresholdRange: { min: 0 }, failOnNoData: false })
    const start = performance.now()
    const rs = await runMetrics([slow('a'), slow('b'), slow('c'), http('/score?version={{version}}')], ctx)
    const took = performance.now() - start
    t.same(rs.map((r) => [r.name, r.verdict]), [['a', 'inconclusive'], ['b', 'inconclusive'], ['c', 'inconclusive'], ['checkout-api', 'pass']], 'in the order given')
    t.ok(took < 1200, `three 400 ms timeouts took ${Math.round(took)} ms together`)
  })
})
