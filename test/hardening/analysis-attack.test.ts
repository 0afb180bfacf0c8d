/**
 * Issue 17 under attack (second reader): hostile plans through the admin
 * API, hostile metric providers on 127.0.0.1 (slow, huge, endless, nested,
 * echoing the secret back), the load generator against a proxy whose
 * upstream hangs, resets or is fast at the 1000 rps cap, pause/resume/abort
 * storms while it runs, the synthetic mark from a client, and the
 * controller's sequential looks with provider metrics.
 *
 * Every loop is bounded in count and time; everything listens on 127.0.0.1.
 * Each finding of the review is asserted as fixed; what stays by design is
 * asserted as documented (a plan's secrets are named by its author).
 */
import { execFileSync } from 'node:child_process'
import { closeSync, constants as fsc, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import t from 'tap'
import { request } from 'undici'
import { App, loadTargetFor } from '../../src/app.js'
import { renderTemplate, templateNames } from '../../src/config/analysis.js'
import { configFromObject } from '../../src/config/load.js'
import { validatePlan, type LoadTestSpec, type MetricSpec } from '../../src/config/plan.js'
import { formatRollout } from '../../src/commands/rollout.js'
import { METRIC_NAMES } from '../../src/metrics/names.js'
import { ownHostPeer } from '../../src/proxy/server.js'
import { runMetrics, type MetricContext, type MetricResult } from '../../src/rollout/analysis.js'
import { ManualClock } from '../../src/rollout/clock.js'
import { RolloutController, type ControllerDeps, type MetricRunner, type RolloutRecord } from '../../src/rollout/controller.js'
import { LoadGenerator, STOP_MS } from '../../src/rollout/loadtest.js'
import { captureLog } from '../helpers/log.js'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { sleep, until } from '../helpers/until.js'
import { scrape, sum } from '../metrics/scrape.js'
import { feed, memoryHost, memoryNotifier, rng, type VersionModel } from '../rollout/sim.js'

// ---------------------------------------------------------------- helpers

/** A raw HTTP server on 127.0.0.1 (port 0) with its own handler; every connection is destroyed on close. */
interface Fake { url: string; port: number; server: Server; seen: Array<{ method: string; url: string; headers: IncomingMessage['headers']; body: string }>; open: () => number; maxOpen: () => number; close: () => Promise<void> }

async function fake (handler: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<Fake> {
  const seen: Fake['seen'] = []
  const sockets = new Set<Socket>()
  let open = 0
  let maxOpen = 0
  const server = createServer((req, res) => {
    open++
    maxOpen = Math.max(maxOpen, open)
    res.on('close', () => { open-- })
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => { if (chunks.length < 64) chunks.push(c) })
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString()
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      handler(req, res, body)
    })
  })
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
  server.keepAliveTimeout = 10_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    server,
    seen,
    open: () => open,
    maxOpen: () => maxOpen,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

function json (res: ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

const CTX: MetricContext = { route: 'web', canary: 'canary', stable: 'stable', intervalMs: 1000, step: 1, weight: 10, variables: {} }

function promMetric (address: string, extra: Partial<MetricSpec> = {}, provider: Record<string, unknown> = {}): MetricSpec {
  return { name: 'm', provider: { type: 'prometheus', address, timeoutMs: 1000, ...provider } as MetricSpec['provider'], query: 'x{version="{{version}}"}', thresholdRange: { min: 0 }, failOnNoData: false, ...extra }
}

function httpMetric (url: string, jsonPath: string, extra: Partial<MetricSpec> = {}, provider: Record<string, unknown> = {}): MetricSpec {
  return { name: 'h', provider: { type: 'http', url, method: 'GET', jsonPath, timeoutMs: 1000, ...provider } as MetricSpec['provider'], thresholdRange: { min: 0 }, failOnNoData: false, ...extra }
}

function vector (...values: string[]): unknown {
  return { status: 'success', data: { resultType: 'vector', result: values.map((v, i) => ({ metric: { i: String(i) }, value: [1700000000, v] })) } }
}

const tmp = mkdtempSync(join(tmpdir(), 'canaryd-analysis-attack-'))
t.teardown(() => { rmSync(tmp, { recursive: true, force: true }) })

function spec (o: Partial<LoadTestSpec> = {}): LoadTestSpec {
  return { rps: 40, paths: ['/'], method: 'GET', headers: {}, users: 100, versions: ['canary', 'stable'], includeInAnalysis: false, timeoutMs: 5000, ...o }
}

// ---------------------------------------------------------------- plans

t.test('plan: {{__proto__}}, {{constructor}}, {{toString}} and dotted names are unknown placeholders: 400 naming the key', async (t) => {
  const stable = await fake((_q, res) => { json(res, 200, {}) })
  const p = await startProxy(testConfig([twoVersionRoute(stable.url, stable.url, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close() })
  for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'variables.__proto__', 'variables.constructor', 'variables.variables.x', 'a.b']) {
    const plan = { canary: 'canary', steps: [10], analysis: { metrics: [{ name: 'm', provider: { type: 'http', url: `http://127.0.0.1:9/s?v={{${name}}}`, jsonPath: '$.a' }, thresholdRange: { min: 1 } }] } }
    const r = await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)
    t.equal(r.status, 400, `{{${name}}} → 400`)
    t.match((r.json.error as { message: string }).message, /analysis\.metrics\[0\]\.provider\.url: unknown placeholder/, `{{${name}}} named`)
  }
  // a variable of that name does not make it known either: own keys of the plan's variables only
  const withVar = { canary: 'canary', steps: [10], analysis: { variables: { constructor: 'c' }, metrics: [{ name: 'm', provider: { type: 'prometheus', address: 'http://127.0.0.1:9' }, query: 'x{a="{{constructor}}"}', thresholdRange: { min: 1 } }] } }
  const ok = await admin(p, 'POST', '/api/v1/routes/web/rollout', withVar)
  t.equal(ok.status, 201, 'a user variable named "constructor" is an ordinary variable')
  t.equal((ok.json.plan as { analysis: { variables: Record<string, string> } }).analysis.variables.constructor, 'c')
  await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')
})

t.test('plan: a variable named __proto__ is dropped without a word', async (t) => {
  const raw = JSON.parse('{"canary":"canary","steps":[10],"analysis":{"variables":{"__proto__":"shop","ns":"a"}}}') as unknown
  let problems: string[] = []
  try {
    validatePlan(raw, ['stable', 'canary'], { override: true })
  } catch (err) {
    problems = (err as { problems: string[] }).problems
  }
  t.match(problems.join('; '), /analysis\.variables\.__proto__/, 'refused, naming the key (or kept as a variable)')
})

t.test('templates: 60 KB of placeholders, unclosed braces and long runs render in linear time', async (t) => {
  const many = 'x{v="{{ version }}",r="{{route}}"} + '.repeat(1500)
  const t0 = performance.now()
  const out = renderTemplate(many, { version: 'v"1', route: 'web' })
  const names = templateNames(many)
  for (const probe of ['{{' + ' '.repeat(60_000), '{{' + 'a'.repeat(60_000), '{{a'.repeat(20_000), '{{ a.'.repeat(15_000) + '}}']) {
    templateNames(probe)
    renderTemplate(probe, { a: 'b' })
  }
  const took = performance.now() - t0
  t.same(names, ['version', 'route'])
  t.equal(out.split('v"1').length - 1, 1500, 'every placeholder rendered once, values inserted as-is in a query')
  t.ok(took < 500, `rendering and scanning hostile templates took ${took.toFixed(1)} ms`)
})

t.test('http provider: CRLF, "@", "/" and "#" in variables and version names stay inside one URL-encoded component', async (t) => {
  const srv = await fake((_q, res) => { json(res, 200, { score: 1 }) })
  t.teardown(srv.close)
  const evil = 'a\r\nX-Injected: 1\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: evil@127.0.0.2:1/#?'
  const ctx: MetricContext = { ...CTX, canary: evil, variables: { v: evil } }
  const results = await runMetrics([
    httpMetric(`${srv.url}/s/{{v}}?version={{version}}&x={{variables.v}}`, '$.score'),
    { ...httpMetric(`${srv.url}/post`, '$.score', {}, { method: 'POST', body: '{"q":"{{v}}"}' }), name: 'p' },
    promMetric(srv.url, { name: 'q', query: 'x{v="{{v}}"}' })
  ], ctx)
  t.same(results.map((r) => r.verdict), ['pass', 'pass', 'inconclusive'], JSON.stringify(results.map((r) => r.reason)))
  t.equal(srv.seen.length, 3, 'three requests, none smuggled')
  t.notOk(srv.seen.some((s) => s.headers['x-injected'] !== undefined || (s.url.includes('smuggled') && !s.url.includes('%'))), 'no injected header, no second request line')
  const get = srv.seen.find((s) => s.url.startsWith('/s/'))!
  t.equal(get.url, `/s/${encodeURIComponent(evil)}?version=${encodeURIComponent(evil)}&x=${encodeURIComponent(evil)}`)
  const post = srv.seen.find((s) => s.url === '/post')!
  t.equal(post.body, `{"q":"${evil}"}`, 'a POST body takes the value as-is (it is a body, not a header)')
  t.equal(results[0]!.queries.canary, `${srv.url}/s/${encodeURIComponent(evil)}?version=${encodeURIComponent(evil)}&x=${encodeURIComponent(evil)}`)
})

t.test('prometheus address: a "#" or "?" in it is accepted and the query goes somewhere else', async (t) => {
  for (const address of ['http://127.0.0.1:9090/#', 'http://127.0.0.1:9090/?x=1']) {
    let problems = ''
    try {
      validatePlan({ canary: 'canary', steps: [10], analysis: { metrics: [{ name: 'm', provider: { type: 'prometheus', address }, query: 'up', thresholdRange: { min: 1 } }] } }, ['stable', 'canary'])
    } catch (err) {
      problems = (err as Error).message
    }
    t.match(problems, /provider\.address/, `${address} refused`)
  }
})

// ---------------------------------------------------------------- providers

t.test('providers: slow, endless, huge, invalid, deeply nested and 1e6-element answers stay bounded', async (t) => {
  let mode = ''
  const srv = await fake((_q, res) => {
    switch (mode) {
      case 'slow-headers': setTimeout(() => { if (!res.destroyed) json(res, 200, vector('1')) }, 5000).unref(); return
      case 'drip': {
        // a byte every 50 ms, forever: bodyTimeout never fires, only the overall timeout can
        res.writeHead(200, { 'content-type': 'application/json' })
        const iv = setInterval(() => { res.write(' ') }, 50)
        res.on('close', () => { clearInterval(iv) })
        return
      }
      case 'endless': {
        // chunked, as fast as the socket takes it: the 1 MiB cap must cut it
        res.writeHead(200, { 'content-type': 'application/json' })
        const chunk = Buffer.alloc(64 * 1024, 0x20)
        let n = 0
        const pump = (): void => { while (n++ < 10_000 && !res.destroyed && res.write(chunk)); if (n < 10_000 && !res.destroyed) res.once('drain', pump) }
        pump()
        return
      }
      case 'declared': res.writeHead(200, { 'content-length': String(50 * 1024 * 1024) }); res.write('{'); return
      case 'invalid': json(res, 200, '{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]'); return
      case 'nested': json(res, 200, '['.repeat(400_000) + ']'.repeat(400_000)); return
      case 'million': {
        // a million-series vector: larger than the cap, sent without a length
        res.writeHead(200, { 'content-type': 'application/json' })
        res.write('{"status":"success","data":{"resultType":"vector","result":[')
        let i = 0
        const pump = (): void => {
          while (i < 1_000_000 && !res.destroyed) {
            const ok = res.write(`${i === 0 ? '' : ','}{"metric":{},"value":[1,"${i}"]}`)
            i++
            if (!ok) { res.once('drain', pump); return }
          }
          if (!res.destroyed) res.end(']}}')
        }
        pump()
        return
      }
      case 'html': res.writeHead(502, { 'content-type': 'text/html' }); res.end('<html>' + 'x'.repeat(5000))
    }
  })
  t.teardown(srv.close)
  const heap0 = process.memoryUsage().heapUsed
  const cases: Array<[string, MetricSpec, RegExp, number]> = [
    ['slow-headers', promMetric(srv.url, {}, { timeoutMs: 300 }), /timed out after 300 ms/, 300],
    ['drip', promMetric(srv.url, {}, { timeoutMs: 400 }), /timed out after 400 ms/, 400],
    ['endless', promMetric(srv.url), /more than the 1 MiB/, 1000],
    ['declared', promMetric(srv.url), /52428800 bytes, more than the 1 MiB/, 1000],
    ['invalid', promMetric(srv.url), /not JSON/, 1000],
    ['nested', httpMetric(srv.url, '$'), /nested deeper than 64 levels/, 1000],
    ['nested', httpMetric(srv.url, '$..x'), /nested deeper than 64 levels/, 1000],
    ['million', promMetric(srv.url), /more than the 1 MiB/, 1000],
    ['html', promMetric(srv.url), /answered 502$/, 1000]
  ]
  for (const [m, metric, reason, bound] of cases) {
    mode = m
    const t0 = performance.now()
    const [r] = await runMetrics([metric], CTX)
    const took = performance.now() - t0
    t.equal(r!.verdict, 'inconclusive', `${m}: inconclusive`)
    t.match(r!.reason, reason, `${m}: ${r!.reason}`)
    t.ok(took < bound + 500, `${m}: answered in ${took.toFixed(0)} ms (timeout ${bound})`)
    t.ok((r!.reason ?? '').length <= 300, `${m}: the reason is one bounded line`)
  }
  const grown = (process.memoryUsage().heapUsed - heap0) / 1e6
  t.ok(grown < 64, `heap grew ${grown.toFixed(1)} MB over the hostile answers`)
})

t.test('jsonPath with nested descendant segments: a few KB of nesting block the event loop far past timeoutMs', async (t) => {
  const deep = '['.repeat(524_000) + ']'.repeat(524_000)
  const srv = await fake((req, res) => { json(res, 200, req.url === '/arr' ? '['.repeat(2000) + ']'.repeat(2000) : req.url === '/obj' ? '{"a":'.repeat(4000) + '1' + '}'.repeat(4000) : deep) })
  t.teardown(srv.close)
  // the third: just under 1 MiB of nesting and a plain path — JSON.parse alone takes its time on it (each query of each metric)
  for (const [path, jsonPath] of [['/arr', '$..*..*'], ['/obj', '$..[?@..a]'], ['/deep', '$.score']] as const) {
    // the longest gap between two ticks of a 10 ms timer: how long nothing else (no proxied request) could run
    let last = performance.now()
    let gap = 0
    const iv = setInterval(() => { const now = performance.now(); gap = Math.max(gap, now - last); last = now }, 10)
    const t0 = performance.now()
    const [r] = await runMetrics([httpMetric(srv.url + path, jsonPath, {}, { timeoutMs: 200 })], CTX)
    const took = performance.now() - t0
    await sleep(30)
    clearInterval(iv)
    t.comment(`${jsonPath} on ${path}: answered after ${took.toFixed(0)} ms (timeout 200), the event loop stalled ${gap.toFixed(0)} ms; ${r!.reason}`)
    t.equal(r!.verdict, 'inconclusive')
    t.ok(took < 350, `${jsonPath}: bounded by timeoutMs`)
    t.ok(gap < 100, `${jsonPath}: the event loop (the proxy's too) never stalls 100 ms`)
  }
})

t.test('a Prometheus-compatible fake: NaN, ±Inf, strings, matrices, several series and errors are inconclusive with a reason', async (t) => {
  let body: unknown
  let status = 200
  const srv = await fake((_q, res) => { json(res, status, body) })
  t.teardown(srv.close)
  const cases: Array<[unknown, RegExp, number?]> = [
    [vector('NaN'), /value is NaN/],
    [vector('+Inf'), /value is \+Inf/],
    [vector('-Inf'), /value is -Inf/],
    [vector('Infinity'), /value is Infinity/],
    [vector(), /empty result/],
    [vector('1', '2'), /2 series; aggregate/],
    [{ status: 'success', data: { resultType: 'string', result: [1, 'hello'] } }, /a string, not a number/],
    [{ status: 'success', data: { resultType: 'matrix', result: [] } }, /range vector/],
    [{ status: 'success', data: { resultType: 'scalar', result: [1, 7] } }, /sample without a value/],
    [{ status: 'success', data: { resultType: 'vector', result: [null] } }, /sample without a value/],
    [{ status: 'success', data: { resultType: 'vector', result: 'x' } }, /unexpected body/],
    [{ status: 'success' }, /unexpected body/],
    [null, /unexpected body/],
    [5, /unexpected body/],
    [{ status: 'error', errorType: 'bad_data', error: { nested: true } }, /answered 422: bad_data: \[object Object\]/, 422],
    [{ status: 'error', errorType: 'timeout', error: 'query timed out in expression evaluation' }, /answered 503: timeout: query timed out/, 503]
  ]
  for (const [b, reason, st] of cases) {
    body = b
    status = st ?? 200
    const [r] = await runMetrics([promMetric(srv.url)], CTX)
    t.equal(r!.verdict, 'inconclusive', `${JSON.stringify(b)} → inconclusive`)
    t.match(r!.reason, reason)
  }
  body = vector('0.25')
  status = 200
  const [ok] = await runMetrics([promMetric(srv.url, { thresholdRange: { min: 0.5 } })], CTX)
  t.equal(ok!.verdict, 'fail', 'a real value still judges')
})

t.test('numbers that are not numbers: "" and "0x10" samples, a JSON 1e400', async (t) => {
  let body: unknown
  const srv = await fake((_q, res) => { json(res, 200, body) })
  t.teardown(srv.close)
  for (const v of ['', ' ', '0x10', '1_0']) {
    body = vector(v)
    const [r] = await runMetrics([promMetric(srv.url)], CTX)
    t.equal(r!.canary, null, `sample ${JSON.stringify(v)} is not a number (got ${String(r!.canary)})`)
  }
  body = '{"score": 1e400}'
  const [h] = await runMetrics([httpMetric(srv.url, '$.score')], CTX)
  t.not(h!.verdict, 'pass', 'an infinite score is no data, not a pass')
  t.equal(h!.canary, null, `got ${String(h!.canary)}`)
})

// ---------------------------------------------------------------- secrets

const TOKEN = 'c17-Sekr3t-Token-Zx9'

/** True when `text` holds any 12 consecutive characters of `secret`. */
function leaks (text: string, secret: string): boolean {
  for (let i = 0; i + 12 <= secret.length; i++) if (text.includes(secret.slice(i, i + 12))) return true
  return false
}

t.test('secrets: whatever the provider echoes back, the token never reaches a reason', async (t) => {
  let mode = ''
  const srv = await fake((req, res) => {
    const auth = String(req.headers.authorization ?? '')
    switch (mode) {
      case 'prom-error': json(res, 400, { status: 'error', errorType: 'bad_data', error: `auth was ${auth} (${auth.split(' ')[1] ?? ''})` }); return
      case 'status': json(res, 401, { error: auth }); return
      case 'object': json(res, 200, { score: { you: auth } }); return
      case 'many': json(res, 200, { score: [auth, auth] }); return
      case 'html': json(res, 200, `<html>${auth}</html>`)
    }
  })
  t.teardown(srv.close)
  const file = join(tmp, 'token')
  writeFileSync(file, `  ${TOKEN}\n`)
  const env = { C17_TOKEN: TOKEN, C17_PASS: TOKEN }
  const auths: Array<Record<string, unknown>> = [{ type: 'bearer', tokenEnv: 'C17_TOKEN' }, { type: 'bearer', tokenFile: file }, { type: 'basic', username: 'u', passwordEnv: 'C17_PASS' }]
  for (const auth of auths) {
    for (const m of ['prom-error', 'status', 'object', 'many', 'html']) {
      mode = m
      const metric = m === 'prom-error' ? promMetric(srv.url, {}, { auth }) : httpMetric(srv.url, '$.score', {}, { auth })
      const results = await runMetrics([metric], CTX, { env })
      const text = JSON.stringify(results)
      const b64 = Buffer.from(`u:${TOKEN}`).toString('base64')
      t.notOk(text.includes(TOKEN) || text.includes(b64), `${String(auth.type)}/${m}: ${results[0]!.reason}`)
      // a cut-off copy is a leak too: no 12 characters in a row of the secret (or its encoding)
      t.notOk(leaks(text, TOKEN) || leaks(text, b64), `${String(auth.type)}/${m}: no fragment of the secret`, {})
    }
  }
  t.ok(srv.seen.every((s) => /^(Bearer c17-Sekr3t-Token-Zx9|Basic .+)$/.test(String(s.headers.authorization))), 'the secret was sent, trimmed')
})

t.test('secrets: a long token echoed as the selected value leaks its first ~55 characters', async (t) => {
  const long = 'eyJhbGciOiJIUzI1NiJ9.' + 'A'.repeat(40) + 'SECRETPART' + 'B'.repeat(60)
  const srv = await fake((req, res) => { json(res, 200, { score: String(req.headers.authorization ?? '').slice(7) }) })
  t.teardown(srv.close)
  const [r] = await runMetrics([httpMetric(srv.url, '$.score', {}, { auth: { type: 'bearer', tokenEnv: 'LONG' } })], CTX, { env: { LONG: long } })
  t.comment(`reason: ${r!.reason}`)
  t.notOk((r!.reason ?? '').includes(long.slice(0, 24)), 'no prefix of the token in the reason')
})

t.test('secrets end to end: GET rollout, check records, route list, /metrics, logs and webhook payloads never hold the token', async (t) => {
  const hooks: string[] = []
  const hook = await fake((_q, res, body) => { hooks.push(body); json(res, 200, {}) })
  const echo = await fake((req, res) => {
    const auth = String(req.headers.authorization ?? '')
    if (req.url?.startsWith('/api/v1/query') === true) json(res, 400, { status: 'error', errorType: 'bad_data', error: `you sent ${auth}` })
    else json(res, 200, { who: { auth } })
  })
  const up = await fake((_q, res) => { json(res, 200, { ok: true }) })
  const file = join(tmp, 'token-e2e')
  writeFileSync(file, `${TOKEN}\n`)
  process.env.C17_ATTACK_TOKEN = TOKEN
  const { logger, lines } = captureLog('debug')
  const config = testConfig([twoVersionRoute(up.url, up.url, [100, 0])])
  const app = new App(config, { logger, metrics: true })
  await app.start()
  const p: TestProxy = { app, url: `http://127.0.0.1:${app.proxyAddress!.port}`, adminUrl: `http://127.0.0.1:${app.adminAddress!.port}`, close: async () => { await app.close(1000) } }
  t.teardown(async () => { delete process.env.C17_ATTACK_TOKEN; await p.close(); await hook.close(); await echo.close(); await up.close() })
  const plan = {
    canary: 'canary',
    steps: [50],
    intervalMs: 200,
    analysis: {
      minRequests: 1,
      metrics: [
        { name: 'prom', provider: { type: 'prometheus', address: echo.url, timeoutMs: 500, auth: { type: 'bearer', tokenEnv: 'C17_ATTACK_TOKEN' } }, query: 'x{version="{{version}}"}', thresholdRange: { min: 0 }, compare: { maxRatio: 2 } },
        { name: 'web', provider: { type: 'http', url: `${echo.url}/score?v={{version}}`, jsonPath: '$.who', timeoutMs: 500, auth: { type: 'bearer', tokenFile: file } }, thresholdRange: { min: 0 } }
      ]
    },
    webhooks: [{ url: hook.url, retries: 0 }]
  }
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)
  t.equal(started.status, 201)
  // a few checks, each with both metrics' errors; then the abort webhook carries the last one
  await until('3 checks recorded', async () => ((await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.checks as unknown[]).length >= 3, 5000, 50)
  const rollout = JSON.stringify((await admin(p, 'GET', '/api/v1/routes/web/rollout')).json)
  t.match(rollout, /you sent Bearer \*\*\*/, 'the echo is in the record, redacted')
  t.match(rollout, /Bearer \*\*\*/)
  await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')
  await until('the aborted webhook arrives', () => hooks.some((h) => h.includes('"aborted"')), 3000)
  const routes = JSON.stringify((await admin(p, 'GET', '/api/v1/routes')).json)
  const metrics = await (await fetch(`${p.adminUrl}/metrics`)).text()
  const logs = JSON.stringify(lines)
  for (const [what, text] of [['GET rollout', rollout], ['route list', routes], ['/metrics', metrics], ['logs', logs], ['webhooks', hooks.join('\n')]] as const) {
    t.notOk(text.includes(TOKEN), `${what}: no token`)
  }
  t.ok(hooks.some((h) => h.includes('Bearer ***')), 'a webhook carried the redacted reason')
  t.ok(echo.seen.length >= 6 && echo.seen.every((s) => s.headers.authorization === `Bearer ${TOKEN}`), `the token was sent each time (${echo.seen.length} queries)`)
})

t.test('tokenEnv: canaryd\'s own settings are never a provider secret; other variables are the plan author\'s (an admin) to name', async (t) => {
  for (const name of ['CANARYD_ADMIN_TOKEN', 'CANARYD_REDIS_URL', 'canaryd_anything']) {
    t.throws(() => validatePlan({ canary: 'canary', steps: [10], analysis: { metrics: [{ name: 'm', provider: { type: 'prometheus', address: 'http://127.0.0.1:9', auth: { type: 'bearer', tokenEnv: name } }, query: 'up', thresholdRange: { min: 0 } }] } }, ['stable', 'canary']), /is one of canaryd's own settings/, `${name} refused`)
  }
  const srv = await fake((_q, res) => { json(res, 200, vector('1')) })
  t.teardown(srv.close)
  process.env.C17_UNRELATED_SECRET = 'not-for-analysis'
  t.teardown(() => { delete process.env.C17_UNRELATED_SECRET })
  let refused = false
  try {
    validatePlan({ canary: 'canary', steps: [10], analysis: { metrics: [{ name: 'm', provider: { type: 'prometheus', address: srv.url, auth: { type: 'bearer', tokenEnv: 'C17_UNRELATED_SECRET' } }, query: 'up', thresholdRange: { min: 0 } }] } }, ['stable', 'canary'])
  } catch {
    refused = true
  }
  await runMetrics([promMetric(srv.url, {}, { auth: { type: 'bearer', tokenEnv: 'C17_UNRELATED_SECRET' } })], CTX)
  // documented (docs/analysis.md, Secrets): a plan is as privileged as the admin token that sends it
  t.notOk(refused, 'another variable is the plan author\'s to name')
  t.equal(srv.seen[0]?.headers.authorization, 'Bearer not-for-analysis', 'and is sent to the provider the plan names')
})

t.test('tokenFile on a FIFO: each query leaves a libuv thread blocked in open(); four of them hang every fs call of the process (state saves)', async (t) => {
  const fifo = join(tmp, 'fifo')
  execFileSync('mkfifo', [fifo])
  const unblock = (): void => {
    // O_NONBLOCK: a sync open that never waits; each blocked reader then reads EOF and lets go of its thread
    for (let i = 0; i < 8; i++) {
      try { closeSync(openSync(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK)) } catch {}
    }
  }
  t.teardown(unblock)
  const up = await fake((_q, res) => { json(res, 200, {}) })
  const p = await startProxy(testConfig([twoVersionRoute(up.url, up.url, [100, 0]), { ...twoVersionRoute(up.url, up.url, [100, 0]), name: 'other', match: { pathPrefix: '/other' } }]))
  t.teardown(async () => { unblock(); await sleep(100); await p.close(); await up.close() })
  const metric = { name: 'm', provider: { type: 'prometheus', address: up.url, timeoutMs: 200, auth: { type: 'bearer', tokenFile: fifo } }, query: 'x{version="{{version}}"}', thresholdRange: { min: 0 }, compare: { maxRatio: 2 } }
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [50], intervalMs: 200, analysis: { minRequests: 1, metrics: [metric] } })
  t.equal(started.status, 201)
  // two checks × (canary + baseline) = four blocked opens = the whole default threadpool
  await sleep(1200)
  const probe = await Promise.race([stat(tmp).then(() => 'answered'), sleep(1500).then(() => 'hung')])
  const put = await Promise.race([admin(p, 'PUT', '/api/v1/routes/other/weights', { weights: { stable: 90, canary: 10 } }).then((r) => `HTTP ${r.status}`), sleep(1500).then(() => 'hung')])
  t.comment(`fs.stat: ${probe}; PUT weights of another route (a state-file save): ${put}`)
  unblock()
  t.equal(probe, 'answered', 'fs calls of the process still answer')
  t.equal(put, 'HTTP 200', 'an unrelated admin write still completes')
})

t.test('tokenFile on /dev/zero: memory grows with the provider timeout', async (t) => {
  let peak = 0
  const base = process.memoryUsage().rss
  const iv = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss - base) }, 5)
  t.teardown(() => { clearInterval(iv) })
  const [r] = await runMetrics([promMetric('http://127.0.0.1:9', {}, { timeoutMs: 300, auth: { type: 'bearer', tokenFile: '/dev/zero' } })], CTX)
  clearInterval(iv)
  t.comment(`reason: ${r!.reason}; peak rss growth ${(peak / 1e6).toFixed(0)} MB in 300 ms`)
  t.ok(peak < 32e6, 'a secret file is read with a small cap')
})

// ---------------------------------------------------------------- load generator

t.test('load generator, upstream that hangs: at most 64 in flight at the upstream, the rest dropped, stop() bounded, nothing after', async (t) => {
  const hang = await fake(() => {})
  const p = await startProxy(testConfig([twoVersionRoute(hang.url, hang.url, [100, 0])]))
  t.teardown(async () => { await p.close(); await hang.close() })
  const gen = new LoadGenerator(spec({ rps: 1000, versions: ['canary', 'stable'] }), { origin: p.url, overrideHeader: 'x-canary', stickyCookie: 'canaryd_id' }, ['canary', 'stable'])
  const heap0 = process.memoryUsage().heapUsed
  gen.start()
  await sleep(1000)
  const mid = gen.stats
  t.ok(gen.inFlight <= 64, `generator in flight ${gen.inFlight}`)
  await until('64 held at the upstream', () => hang.open() >= 60, 2000)
  const t0 = performance.now()
  await gen.stop()
  const took = performance.now() - t0
  t.ok(took < STOP_MS, `stop() took ${took.toFixed(0)} ms`)
  t.equal(gen.inFlight, 0)
  t.ok(hang.maxOpen() <= 64, `the upstream never held more than 64 (max ${hang.maxOpen()})`)
  t.ok(mid.sent <= 64 && mid.dropped >= 700, `1 s at 1000 rps: sent ${mid.sent}, dropped ${mid.dropped}`)
  await until('the proxy let go of the upstream requests', () => hang.open() === 0, 3000)
  const seen = hang.seen.length
  await sleep(300)
  t.equal(hang.seen.length, seen, 'nothing reaches the upstream after stop')
  const grown = (process.memoryUsage().heapUsed - heap0) / 1e6
  t.ok(grown < 40, `heap grew ${grown.toFixed(1)} MB`)
  const e = await scrape(p)
  t.equal(sum(e, METRIC_NAMES.inFlight), 0, 'the proxy\'s in-flight gauge is back at 0')
})

t.test('load generator, upstream that resets every connection: 502s counted failed, the proxy keeps serving', async (t) => {
  let reset = true
  const up = await fake((req, res) => { if (reset) req.socket.destroy(); else json(res, 200, {}) })
  const p = await startProxy(testConfig([twoVersionRoute(up.url, up.url, [100, 0])]))
  t.teardown(async () => { await p.close(); await up.close() })
  let errors = 0
  const gen = new LoadGenerator(spec({ rps: 300 }), { origin: p.url, overrideHeader: 'x-canary', stickyCookie: 'canaryd_id' }, ['canary', 'stable'], { onError: () => { errors++ } })
  gen.start()
  await sleep(600)
  await gen.stop()
  const s = gen.stats
  t.ok(s.sent >= 100, `sent ${s.sent}`)
  t.equal(s.ok, 0)
  // those in flight at stop() (at most the 64 cap) are aborted: neither ok nor failed
  t.ok(s.failed >= s.sent - 64, `failed ${s.failed} of ${s.sent}`)
  t.ok(errors === 0, 'a 502 is an answer, not a request error')
  reset = false
  const res = await request(`${p.url}/x`)
  await res.body.dump()
  t.equal(res.statusCode, 200, 'the proxy serves normally afterwards')
  const e = await scrape(p)
  t.ok(sum(e, METRIC_NAMES.requests, { code: '502', source: 'synthetic' }) >= s.failed - 10, 'the 502s were counted synthetic')
  t.equal(sum(e, METRIC_NAMES.requests, { code: '502', source: 'user' }), 0)
})

t.test('load generator at the 1000 rps cap through canaryd for 1.5 s: the rate holds and the event loop stays responsive', async (t) => {
  const up = await fake((_q, res) => { json(res, 200, { ok: 1 }) })
  const p = await startProxy(testConfig([twoVersionRoute(up.url, up.url, [100, 0])]))
  t.teardown(async () => { await p.close(); await up.close() })
  const gen = new LoadGenerator(spec({ rps: 1000, paths: ['/a', '/b', '/c'], users: 100_000 }), { origin: p.url, overrideHeader: 'x-canary', stickyCookie: 'canaryd_id' }, ['canary', 'stable'], { seed: 3 })
  const h = monitorEventLoopDelay({ resolution: 10 })
  h.enable()
  const t0 = performance.now()
  gen.start()
  await sleep(1500)
  await gen.stop()
  h.disable()
  const secs = (performance.now() - t0) / 1000
  const s = gen.stats
  const ms = (n: number): string => (n / 1e6).toFixed(1)
  t.comment(`1000 rps for ${secs.toFixed(2)} s: ${JSON.stringify(s)} (${(s.sent / secs).toFixed(0)} rps); event-loop delay p50 ${ms(h.percentile(50))} ms, p99 ${ms(h.percentile(99))} ms, max ${ms(h.max)} ms`)
  // bounds that hold on a 2-core machine shared with the rest of the suite (alone: ~960 rps, few drops, p99 ~20 ms)
  t.ok(s.sent >= 600 && s.sent <= 1000 * secs + 60, `sent ${s.sent} in ${secs.toFixed(2)} s: never above the rate, at least half of it`)
  t.ok(s.dropped <= s.sent * 0.3, `dropped ${s.dropped}`)
  t.ok(s.ok >= s.sent - 70, `ok ${s.ok}`)
  t.ok(h.percentile(99) / 1e6 < 250, 'event-loop delay p99 under 250 ms')
})

/** Counts requests per upstream; `at` of the last. */
async function counter (): Promise<Fake & { last: () => number }> {
  let last = 0
  const f = await fake((_q, res) => { last = performance.now(); json(res, 200, { ok: 1 }) })
  return Object.assign(f, { last: () => last })
}

t.test('pause/resume/abort storms while a load test runs: one generator at most, none after the abort', async (t) => {
  const stable = await counter()
  const canary = await counter()
  const p = await startProxy(testConfig([twoVersionRoute(stable.url, canary.url, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  const arrivals = (): number => stable.seen.length + canary.seen.length
  const RPS = 100
  const plan = { canary: 'canary', steps: [50], intervalMs: 60_000, analysis: { minRequests: 1_000_000, loadTest: { rps: RPS } } }
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)).status, 201)
  await until('synthetic traffic', () => arrivals() >= 10, 3000)
  const random = rng(17)
  const statuses = new Map<number, number>()
  for (let round = 0; round < 25; round++) {
    const ops = Array.from({ length: 1 + Math.floor(random() * 4) }, () => random() < 0.5 ? 'pause' : 'resume')
    const res = await Promise.all(ops.map(async (op) => await admin(p, 'POST', `/api/v1/routes/web/rollout/${op}`)))
    for (const r of res) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1)
  }
  t.same([...statuses.keys()].filter((s) => s !== 200 && s !== 409), [], `only 200 and 409 (${JSON.stringify([...statuses])})`)
  const state = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.state
  if (state === 'paused') await admin(p, 'POST', '/api/v1/routes/web/rollout/resume')
  // progressing again: the rate must be one generator's, not the sum of leaked ones
  await sleep(300)
  const a0 = arrivals()
  await sleep(1000)
  const rate = arrivals() - a0
  t.ok(rate >= RPS * 0.6 && rate <= RPS * 1.3, `${rate} requests in 1 s at rps ${RPS} after the storm`)
  // abort with pauses and resumes racing it
  const racing = await Promise.all([
    admin(p, 'POST', '/api/v1/routes/web/rollout/abort'),
    admin(p, 'POST', '/api/v1/routes/web/rollout/pause'),
    admin(p, 'POST', '/api/v1/routes/web/rollout/resume'),
    admin(p, 'POST', '/api/v1/routes/web/rollout/pause')
  ])
  const aborted = performance.now()
  t.equal(racing[0]!.status, 200)
  t.equal((await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.state, 'aborted')
  await sleep(1100)
  const after = arrivals()
  await sleep(1000)
  t.equal(arrivals(), after, 'no request arrives once the abort is a second old')
  t.ok(Math.max(stable.last(), canary.last()) <= aborted + 1000, `last arrival ${Math.round(Math.max(stable.last(), canary.last()) - aborted)} ms after the abort`)
  // a second rollout, aborted during its first second: same
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)).status, 201)
  await sleep(150)
  await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')
  await sleep(1100)
  const after2 = arrivals()
  await sleep(700)
  t.equal(arrivals(), after2, 'nothing after the second abort either')
})

t.test('x-canaryd-synthetic: only this host\'s mark counts, and only a plan with a load test leaves marked requests out', async (t) => {
  const table: Array<[string | undefined, boolean]> = [
    ['127.0.0.1', true], ['127.0.0.6', true], ['127.255.255.254', true], ['::1', true], ['::ffff:127.0.0.1', true], ['10.0.0.9', true],
    ['10.0.0.1', false], ['::ffff:10.0.0.1', false], ['0.0.0.0', false], ['::', false], ['', false], [undefined, false], ['fe80::1', false], ['1.127.0.0', false]
  ]
  for (const [addr, want] of table) t.equal(ownHostPeer(addr, '10.0.0.9'), want, `${String(addr)} → ${want}`)
  // a same-host proxy (or a sidecar on 127.0.0.6) forwards its clients' mark: without a load test in the plan it changes nothing
  // one request in four fails: far below successRate.min, never the 5 in a row outlier detection ejects on
  let n = 0
  const stable = await fake((_q, res) => { json(res, 200, {}) })
  const canary = await fake((_q, res) => { json(res, n++ % 4 === 0 ? 500 : 200, {}) })
  const p = await startProxy(testConfig([twoVersionRoute(stable.url, canary.url, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  const plan = { canary: 'canary', steps: [50], intervalMs: 300, analysis: { minRequests: 5, maxFailedChecks: 1, successRate: { min: 99 } } }
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)).status, 201)
  const deadline = performance.now() + 1200
  let sent = 0
  while (performance.now() < deadline && sent < 400) {
    const res = await request(`${p.url}/x`, { headers: { 'x-canary': 'canary', 'x-canaryd-synthetic': '1', 'x-user-id': `u${sent++}` } })
    await res.body.dump()
    await sleep(5)
  }
  const r = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json as unknown as RolloutRecord
  const e = await scrape(p)
  t.comment(`state ${r.state}; checks ${r.checks.map((c) => `${c.verdict}:${c.canary.requests} (${c.reasons.join('; ')})`).join(', ')}; synthetic 500s ${sum(e, METRIC_NAMES.requests, { code: '500', source: 'synthetic' })}`)
  t.ok(sum(e, METRIC_NAMES.requests, { code: '500', source: 'synthetic' }) >= 20, 'the client\'s 500s were counted synthetic (a loopback peer)')
  t.equal(r.state, 'rolled-back', 'a canary failing a quarter of its requests is rolled back: a plan without a load test judges every request')
  t.ok(r.checks.some((c) => c.canary.requests > 0), 'the judge saw them')
})

t.test('loadTargetFor: a proxy listening on a non-loopback address', async (t) => {
  const config = testConfig([twoVersionRoute('http://127.0.0.1:1', 'http://127.0.0.1:2', [100, 0])])
  const routeSpec = configFromObject({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0, token: '' }, state: { file: '' }, routes: [twoVersionRoute('http://127.0.0.1:1', 'http://127.0.0.1:2', [100, 0])] }, '(t)', {}).routes[0]
  const target = loadTargetFor(config, routeSpec, '10.1.2.3:8080')
  const origin = typeof target === 'string' ? undefined : new URL(target.origin).hostname
  t.comment(`target: ${JSON.stringify(target)}`)
  t.equal(origin, '10.1.2.3', 'aimed at the address the proxy listens on')
  t.ok(ownHostPeer(origin, origin), 'whose connections, from that same address, the proxy counts as this host\'s')
})

// ---------------------------------------------------------------- starts refused

t.test('start: analysis.loadTest on a route without override, and paths outside the route prefix, are 400 naming the key', async (t) => {
  const up = await counter()
  const other = await counter()
  const noOverride = { ...twoVersionRoute(up.url, up.url, [100, 0]), name: 'plain', match: { pathPrefix: '/plain' }, override: {} }
  const api = { ...twoVersionRoute(up.url, up.url, [100, 0]), name: 'web', match: { pathPrefix: '/api' } }
  const rest = { ...twoVersionRoute(other.url, other.url, [100, 0]), name: 'rest' }
  const p = await startProxy(testConfig([noOverride, api, rest]))
  t.teardown(async () => { await p.close(); await up.close(); await other.close() })
  const r1 = await admin(p, 'POST', '/api/v1/routes/plain/rollout', { canary: 'canary', steps: [10], analysis: { loadTest: { rps: 5 } } })
  t.equal(r1.status, 400)
  t.match((r1.json.error as { message: string }).message, /analysis\.loadTest: the route has no override header or cookie/)
  const r2 = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [10], analysis: { loadTest: { rps: 5, paths: ['/api/a', '/other', '/'] } } })
  t.equal(r2.status, 400)
  const msg = (r2.json.error as { message: string }).message
  t.match(msg, /analysis\.loadTest\.paths\[1\]: "\/other" is outside route web's pathPrefix "\/api"/)
  t.match(msg, /analysis\.loadTest\.paths\[2\]/)
  t.notMatch(msg, /paths\[0\]/)
  for (const bad of [['/api\u0000'], ['/api x'], ['api'], [], Array.from({ length: 51 }, () => '/api'), ['/api/\r\nX: 1']]) {
    const r = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [10], analysis: { loadTest: { rps: 5, paths: bad } } })
    t.equal(r.status, 400, `paths ${JSON.stringify(bad).slice(0, 40)} → 400`)
  }
  for (const rps of [0, -1, 1000.5, 1e9, 'fast', null]) {
    const r = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [10], analysis: { loadTest: { rps } } })
    t.equal(r.status, 400, `rps ${JSON.stringify(rps)} → 400`)
    t.match((r.json.error as { message: string }).message, /analysis\.loadTest\.rps/)
  }
  for (const headers of [{ Host: 'evil' }, { 'transfer-encoding': 'chunked' }, { 'x-a': 'a\r\nb' }, { Authorization: 'Bearer x' }, { 'bad name': 'x' }]) {
    const r = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [10], analysis: { loadTest: { rps: 5, headers } } })
    t.equal(r.status, 400, `headers ${JSON.stringify(headers)} → 400`)
  }
  t.equal(other.seen.length, 0)
})

t.test('start: a load-test path a longer prefix of the same host takes is 400, and a backslash never reaches the client', async (t) => {
  const up = await counter()
  const api = { ...twoVersionRoute(up.url, up.url, [100, 0]), name: 'web', match: { pathPrefix: '/app' } }
  const admin2 = { ...twoVersionRoute(up.url, up.url, [100, 0]), name: 'appadmin', match: { pathPrefix: '/app/admin' } }
  const p = await startProxy(testConfig([api, admin2]))
  t.teardown(async () => { await p.close(); await up.close() })
  const r = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [10], analysis: { loadTest: { rps: 5, paths: ['/app/x', '/app/admin/y'] } } })
  t.equal(r.status, 400)
  t.match((r.json.error as { message: string }).message, /analysis\.loadTest\.paths\[1\]: "\/app\/admin\/y" is routed to route appadmin \(pathPrefix "\/app\/admin"\), not web/)
  const b = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [10], analysis: { loadTest: { rps: 5, paths: ['/app\\..\\admin'] } } })
  t.equal(b.status, 400, 'a WHATWG URL reads \\ as /: refused')
  t.match((b.json.error as { message: string }).message, /analysis\.loadTest\.paths: .*backslashes/)
  t.equal(up.seen.length, 0)
})

t.test('start: a load-test path with dot segments passes the prefix check and loads another route', async (t) => {
  const up = await counter()
  const other = await counter()
  const api = { ...twoVersionRoute(up.url, up.url, [100, 0]), name: 'web', match: { pathPrefix: '/api' } }
  const rest = { ...twoVersionRoute(other.url, other.url, [100, 0]), name: 'rest' }
  const p = await startProxy(testConfig([api, rest]))
  t.teardown(async () => { await p.close(); await up.close(); await other.close() })
  const r = await admin(p, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [10], intervalMs: 60_000, analysis: { loadTest: { rps: 50, paths: ['/api/../elsewhere', '/api/%2e%2e/also'] } } })
  if (r.status === 201) {
    await sleep(500)
    await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')
    t.comment(`accepted; route rest got ${other.seen.length} synthetic requests (${[...new Set(other.seen.map((s) => s.url))].join(', ')}), route web ${up.seen.length}`)
  }
  t.equal(r.status, 400, 'refused: the path the generator sends leaves the prefix')
})

// ---------------------------------------------------------------- controller

const GOOD: VersionModel = { errorRate: 0.002, medianMs: 50, sigma: 0.3 }

interface H { clock: ManualClock; c: RolloutController; metricCalls: number; loadCalls: number; persisted: RolloutRecord[] }

async function controller (raw: unknown, opts: { results?: () => MetricResult[]; loadTest?: ControllerDeps['loadTest'] } = {}): Promise<H> {
  const clock = new ManualClock()
  const persisted: RolloutRecord[] = []
  const h = { clock, metricCalls: 0, loadCalls: 0, persisted } as unknown as H
  const runMetrics: MetricRunner = async () => { h.metricCalls++; return opts.results?.() ?? [] }
  const deps: ControllerDeps = {
    host: memoryHost([], persisted),
    clock,
    notifier: memoryNotifier([]),
    reservoir: 512,
    runMetrics,
    loadTest: (route, s, versions, failed) => { h.loadCalls++; return opts.loadTest?.(route, s, versions, failed) }
  }
  const plan = validatePlan(raw, ['stable', 'canary'], { override: true })
  h.c = await RolloutController.start('web', plan, 'stable', ['stable', 'canary'], deps)
  return h
}

const PROM = { name: 'orders', provider: { type: 'prometheus', address: 'http://127.0.0.1:9' }, query: 'x{version="{{version}}"}', thresholdRange: { min: 0.9 } }

t.test('sequential judge + a provider that is down: a check is recorded, saved and queried at every look', async (t) => {
  const inconclusive = (): MetricResult[] => [{ name: 'orders', verdict: 'inconclusive', canary: null, reason: 'Prometheus at http://127.0.0.1:9 is unreachable (connect ECONNREFUSED)', queries: { canary: 'q' }, durationMs: 1 }]
  const h = await controller({ canary: 'canary', steps: [10, 50], intervalMs: 10_000, analysis: { minRequests: 100, maxFailedChecks: 3, baseline: { judge: 'sequential' }, metrics: [PROM] } }, { results: inconclusive })
  const random = rng(5)
  // plenty of equal traffic: the sequential judge passes early at the first look that holds it
  for (let look = 0; look < 20; look++) {
    feed(h.c.windows.canary, 3000, GOOD, random)
    feed(h.c.windows.stable, 3000, GOOD, random)
    await h.clock.advance(1000)
  }
  const checks = h.c.record.checks.length
  t.comment(`2 intervals (20 looks): ${checks} checks recorded, ${h.metricCalls} provider rounds, ${h.persisted.length} saves`)
  t.ok(checks <= 3, 'about one check per interval, as for an undecided interval')
  t.ok(h.metricCalls <= 4, 'the provider is asked about once per interval')
})

t.test('sequential judge awaiting promotion: every early pass is a recorded, saved check', async (t) => {
  const h = await controller({ canary: 'canary', steps: [10], intervalMs: 10_000, promotion: 'manual', analysis: { minRequests: 100, baseline: { judge: 'sequential' } } })
  const random = rng(6)
  for (let look = 0; look < 40 && h.c.state !== 'awaiting-promotion'; look++) {
    feed(h.c.windows.canary, 3000, GOOD, random)
    feed(h.c.windows.stable, 3000, GOOD, random)
    await h.clock.advance(1000)
  }
  t.equal(h.c.state, 'awaiting-promotion')
  const before = h.c.record.checks.length
  const saves = h.persisted.length
  // a busy service: 20 000 requests a side per 1 s look
  for (let look = 0; look < 20; look++) {
    feed(h.c.windows.canary, 20_000, GOOD, random)
    feed(h.c.windows.stable, 20_000, GOOD, random)
    await h.clock.advance(1000)
  }
  const added = h.c.record.checks.length - before
  t.comment(`2 intervals awaiting promotion (20 looks): ${added} checks recorded, ${h.persisted.length - saves} saves`)
  t.ok(added <= 3, 'about one check per interval while nothing can change')
  await h.c.abort()
})

t.test('a load test that cannot start is retried at every look (the manager logs a warning each time)', async (t) => {
  const h = await controller({ canary: 'canary', steps: [10], intervalMs: 1000, analysis: { minRequests: 1_000_000, baseline: { judge: 'sequential' }, loadTest: { rps: 5 } } }, { loadTest: () => undefined })
  await h.clock.advance(3000)
  t.comment(`3 intervals (30 looks): loadTest asked ${h.loadCalls} times`)
  t.ok(h.loadCalls <= 4, 'asked once, or once per interval at most')
  await h.c.abort()
})

t.test('after a restart the load test starts only at the first look, not with the restored rollout', async (t) => {
  const stable = await counter()
  const canary = await counter()
  const dir = mkdtempSync(join(tmp, 'restart-'))
  const raw = { listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0, token: '' }, state: { file: join(dir, 'state.json') }, routes: [twoVersionRoute(stable.url, canary.url, [100, 0])] }
  const first = await startProxy(configFromObject(raw, '(test)', {}))
  t.teardown(async () => { await stable.close(); await canary.close() })
  const plan = { canary: 'canary', steps: [50], intervalMs: 2500, analysis: { minRequests: 1_000_000, loadTest: { rps: 50 } } }
  t.equal((await admin(first, 'POST', '/api/v1/routes/web/rollout', plan)).status, 201)
  await until('synthetic traffic', () => stable.seen.length + canary.seen.length >= 5, 3000)
  await first.close()
  await sleep(200)
  const before = stable.seen.length + canary.seen.length
  const second = await startProxy(configFromObject(raw, '(test)', {}))
  t.teardown(second.close)
  const t0 = performance.now()
  let ms = Infinity
  try {
    ms = await until('synthetic traffic after the restart', () => stable.seen.length + canary.seen.length > before, 3500)
  } catch {}
  t.comment(`synthetic traffic resumed ${Math.round(ms)} ms after the restart (interval 2500 ms)`)
  await admin(second, 'POST', '/api/v1/routes/web/rollout/abort')
  t.ok(performance.now() - t0 < 5000)
  t.ok(ms < 1000, 'the restored rollout loads its canary at once')
})

t.test('shadow phase: the load test\'s requests to stable are mirrored to the canary and judged, whatever includeInAnalysis says', async (t) => {
  const stable = await counter()
  const canary = await counter()
  const p = await startProxy(testConfig([twoVersionRoute(stable.url, canary.url, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  const plan = { canary: 'canary', steps: [50], intervalMs: 400, shadow: { percent: 100, durationMs: 100 }, analysis: { minRequests: 1_000_000, loadTest: { rps: 40, versions: ['stable'], includeInAnalysis: false } } }
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)).status, 201)
  await until('two shadow checks', async () => ((await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.checks as unknown[]).length >= 2, 4000, 50)
  const r = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json as unknown as RolloutRecord
  await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')
  const last = r.checks[r.checks.length - 1]!
  t.comment(`no user request was sent; last shadow check: ${JSON.stringify(last.shadow)}, canary side ${last.canary.requests} requests; the canary upstream saw ${canary.seen.length}`)
  t.equal(r.checks[0]!.phase, 'shadow')
  t.equal(last.shadow?.pairs ?? 0, 0, 'no synthetic pair is judged')
})

// ---------------------------------------------------------------- CLI

t.test('a provider\'s error text reaches `canaryd rollout status` with its terminal escapes', async (t) => {
  const srv = await fake((_q, res) => { json(res, 400, { status: 'error', errorType: 'bad_data', error: 'boom \u001b]0;owned\u0007\u001b[2J\u001b[31mRED\u009b2J' }) })
  t.teardown(srv.close)
  const results = await runMetrics([promMetric(srv.url)], CTX)
  const check = { at: '2026-01-01T00:00:00.000Z', step: 1, weight: 10, failedChecks: 0, verdict: 'inconclusive', reasons: [`metric m: ${results[0]!.reason}`], canary: { requests: 0 }, stable: { requests: 0 }, metrics: results }
  const out = formatRollout({ route: 'web', state: 'progressing', canary: 'canary', weight: 10, step: 1, steps: [10], failedChecks: 0, reason: null, checks: [check] })
  t.comment(JSON.stringify(out))
  // C0 controls but tab and newline, DEL and C1 (the 8-bit CSI 0x9b among them)
  const control = new RegExp('[' + String.fromCharCode(0) + '-' + String.fromCharCode(8) + String.fromCharCode(11) + '-' + String.fromCharCode(31) + String.fromCharCode(127) + '-' + String.fromCharCode(159) + ']')
  t.notMatch(out, control, 'no control character reaches the terminal')
})
