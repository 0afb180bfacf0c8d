/**
 * The admin API against a browser on the admin host (issue 18's security
 * part, before the dashboard): a web page of another origin cannot change
 * anything through it — a cross-site form POST needs no preflight, and
 * without a token (loopback only) it would reach …/rollout/abort or
 * …/reload — while the CLI, curl and scripts (no Origin) and the admin
 * address's own pages are unaffected; every response forbids framing,
 * sniffing and running as a page.
 */
import t from 'tap'
import { crossOrigin } from '../../src/admin/server.js'
import { send } from '../helpers/http.js'
import { QUICK_PLAN, startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

t.test('crossOrigin: only the admin address itself, or no Origin at all', async (t) => {
  t.equal(crossOrigin(undefined, undefined, '127.0.0.1:9901'), undefined, 'CLI/curl: no Origin')
  t.equal(crossOrigin(undefined, 'none', '127.0.0.1:9901'), undefined, 'typed in the address bar')
  t.equal(crossOrigin(undefined, 'same-origin', '127.0.0.1:9901'), undefined)
  t.equal(crossOrigin('http://127.0.0.1:9901', 'same-origin', '127.0.0.1:9901'), undefined, 'the admin\'s own page')
  t.equal(crossOrigin('http://[::1]:9901', undefined, '[::1]:9901'), undefined, 'IPv6')
  t.equal(crossOrigin('http://LOCALHOST:9901', undefined, 'localhost:9901'), undefined, 'case-insensitive host')
  for (const [origin, site, host] of [
    ['http://127.0.0.1:3000', undefined, '127.0.0.1:9901'],
    ['http://localhost:9901', undefined, '127.0.0.1:9901'],
    ['https://127.0.0.1:9901', undefined, '127.0.0.1:9901'],
    ['http://evil.example', 'cross-site', '127.0.0.1:9901'],
    ['null', undefined, '127.0.0.1:9901'],
    ['not a url', undefined, '127.0.0.1:9901'],
    ['http://127.0.0.1:9901', undefined, undefined],
    [undefined, 'cross-site', '127.0.0.1:9901'],
    [undefined, 'same-site', '127.0.0.1:9901']
  ] as const) t.ok(crossOrigin(origin, site, host) !== undefined, `${String(origin)} / ${String(site)} → refused`)
})

t.test('a cross-origin abort, weights change or reload is 403 and changes nothing; the CLI\'s requests and same-origin ones work', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  const post = async (path: string, headers: Record<string, string>, body?: unknown): Promise<{ status: number; json: { error?: { code: string; message: string } }; headers: Record<string, unknown> }> => {
    const r = await send(`${p.adminUrl}${path}`, { method: path.endsWith('/weights') ? 'PUT' : 'POST', headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
    return { status: r.status, json: r.json(), headers: r.headers as Record<string, unknown> }
  }
  t.equal((await post('/api/v1/routes/web/rollout', {}, QUICK_PLAN)).status, 201, 'no Origin: started')
  // what a page on http://127.0.0.1:3000 gets for a form POST (no body, no preflight) and a fetch
  const evil = { origin: 'http://127.0.0.1:3000', 'sec-fetch-site': 'same-site' }
  const abort = await post('/api/v1/routes/web/rollout/abort', evil)
  t.equal(abort.status, 403)
  t.equal(abort.json.error?.code, 'CANARYD_ERR_CROSS_ORIGIN')
  t.match(abort.json.error?.message, /POST \/api\/v1\/routes\/web\/rollout\/abort refused: Origin http:\/\/127\.0\.0\.1:3000 is not this admin address/)
  t.equal((await send(`${p.adminUrl}/api/v1/routes/web/rollout`)).json<{ state: string }>().state, 'progressing', 'the rollout was not aborted')
  t.equal((await post('/api/v1/routes/web/weights', { origin: 'http://evil.example' }, { weights: { stable: 0, canary: 100 } })).status, 403)
  t.equal((await post('/api/v1/reload', { 'sec-fetch-site': 'cross-site' })).status, 403, 'no Origin but a cross-site fetch: refused too')
  const own = new URL(p.adminUrl)
  const same = await post('/api/v1/routes/web/rollout/abort', { origin: own.origin, 'sec-fetch-site': 'same-origin' })
  t.equal(same.status, 200, 'the admin address\'s own page may act')
  t.equal((await send(`${p.adminUrl}/api/v1/routes`, { headers: { origin: 'http://evil.example' } })).status, 200, 'reads are not refused (the API sends no CORS headers: a foreign page cannot read the answer)')
  const h = (await send(`${p.adminUrl}/api/v1/routes`)).headers
  t.match(h['content-security-policy'], /default-src 'none'; frame-ancestors 'none'/)
  t.equal(h['x-frame-options'], 'DENY')
  t.equal(h['x-content-type-options'], 'nosniff')
  t.equal(h['access-control-allow-origin'], undefined, 'no CORS')
  t.equal(abort.headers['x-frame-options'], 'DENY', 'errors carry them too')
})

t.test('without a token, only requests addressed to a loopback name reach the API (DNS rebinding)', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  const port = new URL(p.adminUrl).port
  // a page at http://rebind.attacker.example:PORT whose name now resolves to 127.0.0.1: same-origin with itself
  const evil = `rebind.attacker.example:${port}`
  const read = await send(`${p.adminUrl}/api/v1/routes`, { headers: { host: evil } })
  t.equal(read.status, 403, 'cannot even read')
  t.equal(read.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_CROSS_ORIGIN')
  const write = await send(`${p.adminUrl}/api/v1/routes/web/weights`, { method: 'PUT', headers: { host: evil, origin: `http://${evil}`, 'content-type': 'application/json' }, body: JSON.stringify({ weights: { stable: 0, canary: 100 } }) })
  t.equal(write.status, 403)
  t.equal((await send(`${p.adminUrl}/api/v1/routes/web`)).json<{ versions: Array<{ name: string; weight: number }> }>().versions.find((v) => v.name === 'canary')?.weight, 0, 'nothing changed')
  for (const host of [`localhost:${port}`, `localhost.:${port}`, `127.0.0.1:${port}`, '127.0.0.1', `[::1]:${port}`, `LOCALHOST:${port}`]) {
    t.equal((await send(`${p.adminUrl}/api/v1/routes`, { headers: { host } })).status, 200, `${host} accepted`)
  }
})
