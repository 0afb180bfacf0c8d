import { existsSync, readFileSync } from 'node:fs'
import { connect } from 'node:net'
import t, { type Test } from 'tap'
import { App } from '../../src/app.js'
import { isLoopbackHost } from '../../src/admin/http.js'
import { send, type Reply } from '../helpers/http.js'
import { startProxy, testConfig, testLogger, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

async function setup (t: Test, extra: Record<string, unknown> = {}, metrics = true): Promise<TestProxy> {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin)], extra), { metrics })
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  return p
}

type Opts = Parameters<typeof send>[1]

async function api (p: TestProxy, path: string, opts: Opts & { json?: unknown } = {}): Promise<Reply> {
  const headers: Record<string, string> = { ...(opts.headers as Record<string, string> | undefined) }
  let body = opts.body
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json)
    headers['content-type'] ??= 'application/json'
  }
  return await send(p.adminUrl + path, { ...opts, headers, body })
}

/** What must not move when a request is rejected: weights via the API, the state file, the table, the audit. */
async function snapshot (p: TestProxy): Promise<unknown> {
  const file = p.app.config.state.file
  return {
    routes: (await api(p, '/api/v1/routes')).json(),
    file: existsSync(file) ? readFileSync(file, 'utf8') : null,
    generation: p.app.holder.current.generation,
    audit: (await api(p, '/api/v1/audit')).json()
  }
}

t.test('probes and metrics', async (t) => {
  const p = await setup(t)
  const h = await api(p, '/healthz')
  t.equal(h.status, 200)
  t.same(h.json(), { status: 'ok' })
  t.equal((await api(p, '/readyz')).status, 200)
  p.app.draining = true
  const r = await api(p, '/readyz')
  t.equal(r.status, 503, 'readyz is 503 while draining')
  p.app.draining = false
  const m = await api(p, '/metrics')
  t.equal(m.status, 200)
  t.match(m.headers['content-type'], /^text\/plain/)
  t.match(m.body.toString(), /canaryd_route_weight\{route="web",version="canary"\} 10/)
  t.equal((await api(p, '/healthz', { method: 'HEAD' })).status, 200, 'HEAD is answered by GET handlers')
})

t.test('/metrics is a JSON 404 when metrics are off', async (t) => {
  const p = await setup(t, {}, false)
  const m = await api(p, '/metrics')
  t.equal(m.status, 404)
  t.equal(m.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_NOT_FOUND')
})

t.test('GET routes and one route', async (t) => {
  const p = await setup(t)
  const [stable, canary] = p.app.config.routes[0]!.versions.map((v) => v.upstream[0])
  const all = await api(p, '/api/v1/routes')
  t.equal(all.status, 200)
  t.match(all.headers['content-type'], /^application\/json/)
  const web = { name: 'web', versions: [{ name: 'stable', upstream: stable, weight: 90 }, { name: 'canary', upstream: canary, weight: 10 }], segments: [], mirror: null, rollout: null }
  t.same(all.json(), { routes: [web] })
  const one = await api(p, '/api/v1/routes/web')
  t.equal(one.status, 200)
  t.same(one.json(), web)
  p.app.state.setRolloutSummary((r) => r === 'web' ? { state: 'progressing' } : null)
  t.same((await api(p, '/api/v1/routes/web')).json<{ rollout: unknown }>().rollout, { state: 'progressing' }, 'rollout field comes from the registered provider')
})

t.test('PUT weights applies, persists and audits', async (t) => {
  const p = await setup(t)
  const r = await api(p, '/api/v1/routes/web/weights', { method: 'PUT', json: { weights: { stable: 80, canary: 20 }, reason: 'looks good' } })
  t.equal(r.status, 200)
  const body = r.json<{ route: { versions: Array<{ weight: number }> }; previous: Record<string, number> }>()
  t.same(body.previous, { stable: 90, canary: 10 })
  t.same(body.route.versions.map((v) => v.weight), [80, 20])
  t.same((await api(p, '/api/v1/routes/web')).json<{ versions: Array<{ weight: number }> }>().versions.map((v) => v.weight), [80, 20])
  t.same(JSON.parse(readFileSync(p.app.config.state.file, 'utf8')).routes.web.weights, { stable: 80, canary: 20 })
  await api(p, '/api/v1/routes/web/weights', { method: 'PUT', json: { weights: { stable: 70, canary: 30 } }, headers: { 'content-type': 'application/json; charset=utf-8' } })
  const audit = await api(p, '/api/v1/audit')
  t.equal(audit.status, 200)
  const entries = audit.json<{ entries: Array<Record<string, unknown>> }>().entries
  t.equal(entries.length, 2)
  t.match(entries[0], { route: 'web', previous: { stable: 80, canary: 20 }, weights: { stable: 70, canary: 30 }, reason: null, source: 'api', address: '127.0.0.1' })
  t.match(entries[1], { reason: 'looks good', weights: { stable: 80, canary: 20 } })
  t.equal((await api(p, '/api/v1/audit?limit=1')).json<{ entries: unknown[] }>().entries.length, 1)
  t.equal((await api(p, '/api/v1/audit?route=web&limit=5')).json<{ entries: unknown[] }>().entries.length, 2)
})

t.test('every rejected request has its status and code, and changes nothing', async (t) => {
  const p = await setup(t)
  // one accepted change first, so the state file exists and must stay byte-identical
  t.equal((await api(p, '/api/v1/routes/web/weights', { method: 'PUT', json: { weights: { stable: 85, canary: 15 } } })).status, 200)
  const before = await snapshot(p)
  const W = '/api/v1/routes/web/weights'
  const cases: Array<[string, string, Opts & { json?: unknown }, number, string, RegExp?]> = [
    ['invalid JSON', W, { method: 'PUT', body: '{"weights":', headers: { 'content-type': 'application/json' } }, 400, 'CANARYD_ERR_INVALID_JSON', /not valid JSON/],
    ['empty body', W, { method: 'PUT', body: '', headers: { 'content-type': 'application/json' } }, 400, 'CANARYD_ERR_INVALID_JSON'],
    ['missing version', W, { method: 'PUT', json: { weights: { stable: 100 } } }, 400, 'CANARYD_ERR_INVALID_WEIGHTS', /missing "canary"/],
    ['unknown version', W, { method: 'PUT', json: { weights: { stable: 50, canary: 25, beta: 25 } } }, 400, 'CANARYD_ERR_INVALID_WEIGHTS', /no version "beta"/],
    ['out of range', W, { method: 'PUT', json: { weights: { stable: 101, canary: -1 } } }, 400, 'CANARYD_ERR_INVALID_WEIGHTS', /between 0 and 100/],
    ['5 decimals', W, { method: 'PUT', json: { weights: { stable: 75.00001, canary: 24.99999 } } }, 400, 'CANARYD_ERR_INVALID_WEIGHTS', /at most 4 decimals/],
    ['bad sum', W, { method: 'PUT', json: { weights: { stable: 70, canary: 20 } } }, 400, 'CANARYD_ERR_INVALID_WEIGHTS', /sum to 90, must be 100/],
    ['no weights key', W, { method: 'PUT', json: { reason: 'x' } }, 400, 'CANARYD_ERR_INVALID_BODY', /"weights" is required/],
    ['unknown key', W, { method: 'PUT', json: { weights: { stable: 50, canary: 50 }, force: true } }, 400, 'CANARYD_ERR_INVALID_BODY', /unknown key "force"/],
    ['reason not a string', W, { method: 'PUT', json: { weights: { stable: 50, canary: 50 }, reason: 5 } }, 400, 'CANARYD_ERR_INVALID_BODY'],
    ['body an array', W, { method: 'PUT', json: [1] }, 400, 'CANARYD_ERR_INVALID_BODY'],
    ['unknown route', '/api/v1/routes/nope/weights', { method: 'PUT', json: { weights: { stable: 50, canary: 50 } } }, 404, 'CANARYD_ERR_ROUTE_NOT_FOUND', /no route named "nope"/],
    ['unknown route GET', '/api/v1/routes/nope', {}, 404, 'CANARYD_ERR_ROUTE_NOT_FOUND'],
    ['unknown path', '/api/v1/nothing', {}, 404, 'CANARYD_ERR_NOT_FOUND'],
    ['unknown path outside api', '/', {}, 404, 'CANARYD_ERR_NOT_FOUND'],
    ['wrong method on weights', W, { method: 'POST', json: { weights: { stable: 50, canary: 50 } } }, 405, 'CANARYD_ERR_METHOD_NOT_ALLOWED'],
    ['wrong method on routes', '/api/v1/routes', { method: 'DELETE' }, 405, 'CANARYD_ERR_METHOD_NOT_ALLOWED'],
    ['too large (Content-Length)', W, { method: 'PUT', body: `{"weights":{"stable":50,"canary":50},"reason":"${'x'.repeat(70_000)}"}`, headers: { 'content-type': 'application/json' } }, 413, 'CANARYD_ERR_PAYLOAD_TOO_LARGE'],
    ['not JSON', W, { method: 'PUT', body: 'stable=50', headers: { 'content-type': 'text/plain' } }, 415, 'CANARYD_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['no content type', W, { method: 'PUT', body: '{"weights":{"stable":50,"canary":50}}' }, 415, 'CANARYD_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['bad audit limit', '/api/v1/audit?limit=0', {}, 400, 'CANARYD_ERR_INVALID_QUERY'],
    ['bad audit limit text', '/api/v1/audit?limit=ten', {}, 400, 'CANARYD_ERR_INVALID_QUERY']
  ]
  for (const [name, path, opts, status, code, msg] of cases) {
    const r = await api(p, path, opts)
    t.equal(r.status, status, `${name}: status`)
    t.match(r.headers['content-type'], /^application\/json/, `${name}: JSON`)
    const e = r.json<{ error: { code: string; message: string } }>().error
    t.equal(e.code, code, `${name}: code`)
    t.ok(e.message.length > 0, `${name}: message`)
    if (msg !== undefined) t.match(e.message, msg, `${name}: message says what is wrong`)
    if (status === 405) t.ok(r.headers.allow, `${name}: Allow header`)
    t.same(await snapshot(p), before, `${name}: nothing changed`)
  }
  t.equal((await api(p, W, { method: 'POST', json: {} })).headers.allow, 'PUT')
  t.equal((await api(p, '/api/v1/routes', { method: 'DELETE' })).headers.allow, 'GET, HEAD')
})

t.test('413 on a chunked body: reading stops at 64 KiB', async (t) => {
  const p = await setup(t)
  const before = await snapshot(p)
  const port = Number(new URL(p.adminUrl).port)
  const chunk = 'x'.repeat(64 * 1024 + 1)
  const raw = await new Promise<string>((resolve, reject) => {
    const s = connect(port, '127.0.0.1')
    let got = ''
    s.on('data', (d: Buffer) => { got += d.toString() })
    s.on('close', () => resolve(got))
    s.on('error', (err) => { if (got !== '') resolve(got); else reject(err) })
    s.write('PUT /api/v1/routes/web/weights HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n' +
      `${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`)
  })
  t.match(raw, /^HTTP\/1\.1 413 /)
  t.match(raw, /CANARYD_ERR_PAYLOAD_TOO_LARGE/)
  t.match(raw, /connection: close/i)
  t.same(await snapshot(p), before)
})

t.test('token: 401 without or with a wrong token, 200 with the right one; probes stay open', async (t) => {
  const token = 's3cret-token-0123456789'
  const p = await setup(t, { admin: { host: '127.0.0.1', port: 0, token } })
  const file = p.app.config.state.file
  for (const [name, auth] of [['none', undefined], ['wrong', 'Bearer nope'], ['wrong same length', `Bearer ${'x'.repeat(token.length)}`], ['not bearer', `Basic ${token}`]] as const) {
    const headers: Record<string, string> = auth === undefined ? {} : { authorization: auth }
    const r = await api(p, '/api/v1/routes', { headers })
    t.equal(r.status, 401, `GET ${name}`)
    t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UNAUTHORIZED')
    t.match(r.headers['www-authenticate'], /^Bearer/)
    const put = await api(p, '/api/v1/routes/web/weights', { method: 'PUT', headers, json: { weights: { stable: 0, canary: 100 } } })
    t.equal(put.status, 401, `PUT ${name}`)
    t.equal((await api(p, '/api/v1/nothing', { headers })).status, 401, `unknown path ${name}: 401 before 404`)
  }
  t.same(p.app.state.weights('web'), { stable: 90, canary: 10 })
  t.notOk(existsSync(file), 'no state written')
  const ok = { authorization: `Bearer ${token}` }
  t.equal((await api(p, '/api/v1/routes', { headers: ok })).status, 200)
  t.equal((await api(p, '/api/v1/routes/web/weights', { method: 'PUT', headers: ok, json: { weights: { stable: 0, canary: 100 } } })).status, 200)
  t.equal((await api(p, '/healthz')).status, 200)
  t.equal((await api(p, '/readyz')).status, 200)
  t.equal((await api(p, '/metrics')).status, 200)
})

t.test('a non-loopback admin address without a token refuses to start', async (t) => {
  const stable = await startUpstream('stable')
  t.teardown(stable.close)
  for (const host of ['0.0.0.0', '10.1.2.3', 'admin.example.com']) {
    const app = new App(testConfig([twoVersionRoute(stable.origin, stable.origin)], { admin: { host, port: 0, token: '' } }), { logger: testLogger() })
    await t.rejects(app.start(), { code: 'CANARYD_ERR_CONFIG_INVALID', message: /admin\.host: .* not a loopback address and no admin token is set/ }, host)
    t.equal(app.proxyAddress, undefined, 'the proxy did not start either')
    t.equal(app.admin.server.listening, false)
    await app.close(0)
  }
})

t.test('isLoopbackHost', async (t) => {
  for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', 'LOCALHOST', '::1', '[::1]', '::ffff:127.0.0.1']) t.ok(isLoopbackHost(h), h)
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com', '::ffff:10.0.0.1', '']) t.notOk(isLoopbackHost(h), h)
})
