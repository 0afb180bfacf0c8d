/**
 * Attacks on the dashboard (issue 18) in a real browser against a real
 * canaryd on 127.0.0.1: hostile text everywhere the page shows what others
 * wrote (audit reasons, check reasons a metrics provider echoes, error
 * messages, the URL's hash), a web page of another
 * origin trying to act or read, the token's life, and a route whose name
 * is an Object.prototype key. Every wait is bounded.
 *
 * What holds is asserted plainly. What the attack found broken was fixed;
 * the assertions of the behaviour that should hold now guard it, each with
 * a comment saying what was found. Skipped, saying why, where Chromium is
 * not installed.
 */
import { createServer, type Server } from 'node:http'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import type { Browser, Page } from 'playwright-core'
import { App } from '../../src/app.js'
import { loadConfig } from '../../src/config/load.js'
import { createLogger } from '../../src/logger.js'
import { chromiumMissing, launchBrowser, openPage, type WatchedPage } from '../helpers/browser.js'
import { configDir, postReload, rawConfig, routeFile, writeConfig } from '../helpers/reload.js'
import type { TestProxy } from '../helpers/proxy.js'
import { startUpstreams } from '../helpers/upstream.js'
import { sleep, until } from '../helpers/until.js'
import { freeSlots } from '../helpers/feed.js'
import { api, rolloutState, tid, traffic, unexpectedErrors, webProxy, weightsOf } from './lib.js'

const missing = chromiumMissing()
const skip = missing ?? false
if (missing !== undefined) t.comment(`skipping the dashboard browser tests: ${missing}`)

t.setTimeout(300_000)

let browser: Browser | undefined
const getBrowser = async (): Promise<Browser> => (browser ??= await launchBrowser(t))

/** Markup and script an attacker would put in any text the page shows; each would set window.__pwned if it ran. */
const PAYLOADS = [
  '<img src=x onerror="window.__pwned=1">',
  '"><svg onload="window.__pwned=2">',
  '</td></tr></table><script>window.__pwned=3</script>',
  'javascript:window.__pwned=4//',
  '\u202e<iframe srcdoc="<script>parent.__pwned=5</script>">\u200b'
]

/** What must never be in the page: markup the page did not make, and a set flag. */
async function injected (page: Page): Promise<{ pwned: unknown, foreign: string[] }> {
  return await page.evaluate(`({
    pwned: window.__pwned ?? null,
    foreign: [...document.querySelectorAll('img, svg, iframe, object, embed, frame, script:not([src^="/ui/"]), a[href^="javascript"], [onerror], [onload], [srcdoc]')]
      .map((e) => e.outerHTML.slice(0, 120))
  })`)
}

/** How far the page scrolls sideways past the viewport (0: nothing sticks out). */
async function overflowX (page: Page): Promise<number> {
  return Number(await page.evaluate('document.documentElement.scrollWidth - innerWidth'))
}

/** A fake Prometheus that refuses every query with the payloads in errorType and error (echoed into check reasons). */
async function hostileProvider (t: Test): Promise<string> {
  const server: Server = createServer((_req, res) => {
    res.writeHead(400, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ status: 'error', errorType: PAYLOADS[0], error: `${PAYLOADS[1]} ${PAYLOADS[2]}\n\ndata: {"forged":1}\n\n` }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise((resolve) => server.close(resolve)) })
  const a = server.address() as { port: number }
  return `http://127.0.0.1:${a.port}`
}

/** Asserts the page ran nothing injected, built no foreign markup, hit no CSP rule and threw nothing. */
async function clean (t: Test, w: WatchedPage, what: string, expected: number[] = [400, 404, 409]): Promise<void> {
  const r = await injected(w.page)
  t.equal(r.pwned, null, `${what}: no payload ran`)
  t.same(r.foreign, [], `${what}: no markup from the data`)
  t.same(w.cspViolations, [], `${what}: no CSP violation (nothing even tried)`)
  t.same(unexpectedErrors(w.errors, expected), [], `${what}: no page error`)
}

t.test('hostile text in reasons, check reasons, hashes, plan errors and upstreams is shown as text, runs nothing', { skip }, async (t) => {
  const p = await webProxy(t, [100, 0])
  traffic(t, p)
  const prom = await hostileProvider(t)
  for (const [i, reason] of [...PAYLOADS, 'W'.repeat(1000), 'a\r\nevent: hello\r\ndata: {}\r\n\r\n'].entries()) {
    const r = await api(p, 'PUT', '/api/v1/routes/web/weights', { body: { weights: { stable: 100 - i, canary: i }, reason } })
    t.equal(r.status, 200, `weights with reason ${i}`)
  }
  await api(p, 'PUT', '/api/v1/routes/web/weights', { body: { weights: { stable: 100, canary: 0 } } })
  const plan = {
    canary: 'canary',
    steps: [10, 50],
    intervalMs: 300,
    analysis: {
      minRequests: 5,
      maxFailedChecks: 3,
      metrics: [{ name: 'evil', provider: { type: 'prometheus', address: prom }, query: 'up', thresholdRange: { min: 0 }, failOnNoData: true }]
    }
  }
  const started = await api(p, 'POST', '/api/v1/routes/web/rollout', { body: plan })
  t.equal(started.status, 201, 'a rollout asking the hostile provider started')
  await until('the rollout failed its checks on the provider\'s answer', async () => {
    const r = await api(p, 'GET', '/api/v1/routes/web/rollout')
    return JSON.stringify(r.json.checks ?? []).includes('__pwned=1')
  }, 20_000, 200)

  const w = await openPage(t, await getBrowser())
  const { page } = w
  for (const hash of ['#/', '#/routes/web', '#/audit', '#/audit?route=web', '#/fleet']) {
    await page.goto(`${p.adminUrl}/ui/${hash}`)
    await page.locator('main h1').waitFor({ state: 'visible' })
    await sleep(1500)
    await clean(t, w, hash)
    t.ok(await overflowX(page) <= 0, `${hash}: nothing sticks out sideways`)
  }
  await page.goto(`${p.adminUrl}/ui/#/routes/web`)
  await page.locator(tid('timeline')).getByText('__pwned=1', { exact: false }).first().waitFor({ state: 'attached' })
  t.match(await page.locator(tid('timeline')).innerText(), /<img src=x onerror=.?window\.__pwned=1/, 'the provider\'s answer is in the timeline, as text')
  await page.goto(`${p.adminUrl}/ui/#/audit`)
  await page.locator(tid('audit-table')).waitFor()
  t.match(await page.locator(tid('audit-table')).innerText(), /<\/td><\/tr><\/table><script>window\.__pwned=3<\/script>/, 'the audit reason is in the table, as text')

  for (const name of [...PAYLOADS, '../../api/v1/reload', 'web?x=1#y']) {
    await page.goto(`${p.adminUrl}/ui/#/routes/${encodeURIComponent(name)}`)
    await page.locator('main h1').waitFor({ state: 'visible' })
    await sleep(600)
    await clean(t, w, `#/routes/${name}`)
  }
  await page.goto(`${p.adminUrl}/ui/#/audit?route=${encodeURIComponent(PAYLOADS[0]!)}`)
  await sleep(1000)
  await clean(t, w, '#/audit?route=<payload>')
  t.notOk(w.requests.some((r) => r.method !== 'GET' && new URL(r.url).pathname === '/api/v1/reload'), 'a hash naming another API path called nothing')

  // the plan form: the server's error names the hostile keys, the upstream field's error echoes it
  await page.goto(`${p.adminUrl}/ui/#/routes/web`)
  await page.locator(tid('plan-text')).waitFor({ state: 'visible' })
  await page.locator(tid('plan-text')).fill(`canary: canary\nsteps: [10]\n${JSON.stringify(PAYLOADS[0])}: 1\nanalysis: {${JSON.stringify(PAYLOADS[1])}: 2}\n`)
  await page.locator(tid('plan-validate')).click()
  await page.locator(`${tid('plan-result')} .error`).waitFor()
  t.match(await page.locator(tid('plan-result')).innerText(), /unknown key/, 'the server\'s message is shown')
  await clean(t, w, 'plan validate')
  await page.locator(tid('plan-text')).fill('canary: canary\nsteps: [10]\n')
  await page.locator(tid('plan-upstream')).fill(`${PAYLOADS[3]},${PAYLOADS[0]}`)
  await page.locator(tid('plan-validate')).click()
  await page.locator(`${tid('plan-result')} .error`).waitFor()
  await clean(t, w, 'canaryUpstream')
  t.same((await weightsOf(p)).web, { stable: 100, canary: 0 }, 'nothing changed')

  // a 10,000-character name in the hash (a link someone sent): the heading should wrap
  await page.goto(`${p.adminUrl}/ui/#/routes/${'A'.repeat(10_000)}`)
  await page.locator('main h1').waitFor({ state: 'visible' })
  await clean(t, w, '#/routes/AAAA…')
  const wide = await overflowX(page)
  t.ok(wide <= 0, `a 10,000-character route name in the hash: the page is ${wide} px too wide`)
})

t.test('a page of another origin can neither act on nor read the admin API, nor frame the dashboard, nor hold its streams', { skip }, async (t) => {
  const p = await webProxy(t, [100, 0])
  traffic(t, p)
  const started = await api(p, 'POST', '/api/v1/routes/web/rollout', { body: { canary: 'canary', steps: [10, 50], intervalMs: 60_000, analysis: { minRequests: 5 } } })
  t.equal(started.status, 201, 'a rollout is running')
  const before = await weightsOf(p)
  const admin = p.adminUrl
  const hosts = ['127.0.0.1', 'localhost', '127.0.0.1.', 'localhost.']
  const port = new URL(admin).port
  const evil = `<!doctype html><meta charset="utf-8"><body>
<iframe name="sink"></iframe>
<form id="f1" method="POST" action="${admin}/api/v1/routes/web/rollout/abort" target="sink"><input name="a" value="b"></form>
<form id="f2" method="POST" enctype="text/plain" action="${admin}/api/v1/routes/web/weights" target="sink"><input name='{"weights":{"stable":1,"canary":99},"x":"' value='"}'></form>
<iframe id="ui" src="${admin}/ui/"></iframe>
<script>
window.results = {}
const r = (k, v) => { window.results[k] = v }
const A = ${JSON.stringify(admin)}
async function go () {
  for (const h of ${JSON.stringify(hosts)}) for (let i = 0; i < 8; i++) {
    const img = new Image(); img.src = 'http://' + h + ':${port}/api/v1/events?img=' + i; document.body.appendChild(img)
    fetch('http://' + h + ':${port}/api/v1/events?f=' + i, { mode: 'no-cors', credentials: 'omit' }).catch(() => {})
  }
  try { const x = await fetch(A + '/api/v1/routes/web/rollout/abort', { method: 'POST', mode: 'no-cors' }); r('nocors-abort', x.type) } catch (e) { r('nocors-abort', 'error') }
  try { const x = await fetch(A + '/api/v1/routes/web/weights', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"weights":{"stable":2,"canary":98}}' }); r('cors-put', x.status) } catch (e) { r('cors-put', 'error') }
  try { const x = await fetch(A + '/api/v1/routes'); r('read-routes', (await x.text()).slice(0, 40)) } catch (e) { r('read-routes', 'error') }
  try { const x = await fetch(A + '/api/v1/events'); r('read-events', x.status) } catch (e) { r('read-events', 'error') }
  try { const x = await fetch(A + '/api/v1/events', { mode: 'no-cors' }); r('nocors-events', x.type + ':' + (x.body === null ? 'no body' : 'body')) } catch (e) { r('nocors-events', 'error') }
  try { r('beacon', navigator.sendBeacon(A + '/api/v1/routes/web/rollout/pause', 'x')) } catch (e) { r('beacon', 'error') }
  const es = new EventSource(A + '/api/v1/events'); es.addEventListener('hello', () => r('eventsource', 'read')); es.onerror = () => r('eventsource', 'error ' + es.readyState)
  document.getElementById('f1').submit()
  setTimeout(() => document.getElementById('f2').submit(), 300)
  setTimeout(() => { try { r('frame', String(document.getElementById('ui').contentDocument?.body?.innerHTML ?? 'no document')) } catch (e) { r('frame', 'blocked') } r('done', true) }, 2000)
}
go()
</script>`
  const server = createServer((_req, res) => { res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }); res.end(evil) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise((resolve) => server.close(resolve)) })
  const evilPort = (server.address() as { port: number }).port
  // localhost vs 127.0.0.1: another origin (and another site) than the admin address; 127.0.0.1 on another port: same site, another origin
  for (const origin of [`http://localhost:${evilPort}`, `http://127.0.0.1:${evilPort}`]) {
    const w = await openPage(t, await getBrowser())
    await w.page.goto(`${origin}/`)
    await until('the page tried everything', async () => Boolean(await w.page.evaluate('window.results?.done')), 15_000, 100)
    await sleep(1000)
    const results = await w.page.evaluate('window.results') as Record<string, unknown>
    t.comment(`${origin}: ${JSON.stringify(results)}`)
    t.equal(results['read-routes'], 'error', `${origin}: cannot read /api/v1/routes (no CORS headers)`)
    t.equal(results['read-events'], 'error', `${origin}: cannot read /api/v1/events`)
    t.equal(results['nocors-events'], 'opaque:no body', `${origin}: a no-cors read is opaque`)
    t.equal(results['cors-put'], 'error', `${origin}: a PUT fails its preflight`)
    t.match(String(results.eventsource), /^error/, `${origin}: EventSource gets nothing`)
    t.same(w.page.frames().filter((f) => f.url().startsWith(`${admin}/ui`)).map((f) => f.url()), [], `${origin}: the dashboard is not framed (frame-ancestors 'none', X-Frame-Options DENY)`)
    t.equal(await rolloutState(p), 'progressing', `${origin}: the rollout was not aborted or paused`)
    t.same(await weightsOf(p), before, `${origin}: the weights did not change`)
    const refused = w.requests.filter((r) => r.method === 'POST' && r.url.startsWith(admin))
    t.ok(refused.length >= 3, `${origin}: its POSTs were sent (${refused.length}) and refused`)
    const feeds = w.requests.filter((r) => new URL(r.url).pathname === '/api/v1/events').length
    const orb = w.failed.filter((f) => f.includes('/api/v1/events') && /ERR_BLOCKED_BY_ORB|ERR_ABORTED|ERR_FAILED/.test(f)).length
    t.equal(orb, feeds, `${origin}: each of its ${feeds} stream requests failed in the browser (img: ERR_BLOCKED_BY_ORB; no-cors fetch: aborted)`)
    // the server sees each close a moment later
    let free = 0
    await until('the server has all 32 streams free', async () => (free = await freeSlots(t, Number(port))) === 32, 8000, 500).catch(() => {})
    t.equal(free, 32, `${origin}: while the page is open, it holds none of the 32 streams`)
    await w.context.close()
  }
})

t.test('the token: never in a URL, a Referer, localStorage, a cookie, the DOM or the debug log; sign-out forgets it; a second tab has none', { skip }, async (t) => {
  const TOKEN = 'tok3n-under-attack'
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const d = configDir()
  const lines: string[] = []
  const sink = new Writable({ write (chunk: Buffer, _enc, cb) { if (lines.length < 100_000) lines.push(chunk.toString()); cb() } })
  writeConfig(d.file, rawConfig(d.stateFile, [routeFile('web', [{ name: 'stable', upstream: ups.stable!.origin, weight: 90 }, { name: 'canary', upstream: ups.canary!.origin, weight: 10 }])], { admin: { host: '127.0.0.1', port: 0, token: TOKEN } }))
  const app = new App(loadConfig(d.file), { logger: createLogger('debug', sink), metrics: true })
  await app.start()
  t.teardown(async () => { await app.close(1000) })
  const admin = `http://127.0.0.1:${app.adminAddress!.port}`

  const w = await openPage(t, await getBrowser())
  const { page } = w
  await page.goto(`${admin}/ui/#/routes/web`)
  await page.locator(tid('token-form')).waitFor({ state: 'visible' })
  await page.locator(tid('token-input')).fill('wrong-tok3n')
  await page.locator(tid('token-submit')).click()
  await until('the wrong token is refused', async () => /wrong admin token/.test(await page.locator('#token-message').innerText()), 10_000, 100)
  await page.locator(tid('token-input')).fill(TOKEN)
  await page.locator(tid('token-submit')).click()
  await page.locator(tid('token-form')).waitFor({ state: 'hidden' })
  await until('the feed is live', async () => (await page.locator('#feed-status').innerText()) === 'live', 15_000, 100)
  // a weight change and a refused one, so the log has its debug lines for both
  await api({ adminUrl: admin } as TestProxy, 'PUT', '/api/v1/routes/web/weights', { token: TOKEN, body: { weights: { stable: 80, canary: 20 }, reason: 'attack test' } })
  await api({ adminUrl: admin } as TestProxy, 'PUT', '/api/v1/routes/web/weights', { token: 'nope', body: { weights: { stable: 80, canary: 20 } } })
  await sleep(1500)

  const look = async (p: Page): Promise<Record<string, unknown>> => await p.evaluate(`(() => {
    const tok = ${JSON.stringify(TOKEN)}
    return {
      url: location.href.includes(tok),
      local: Object.keys(localStorage),
      session: Object.keys(sessionStorage),
      cookie: document.cookie,
      dom: document.documentElement.outerHTML.includes(tok),
      attrs: [...document.querySelectorAll('*')].some((e) => [...e.attributes].some((a) => a.value.includes(tok))),
      input: document.getElementById('token-input').value,
      perf: performance.getEntries().some((e) => e.name.includes(tok))
    }
  })()`)
  const signedIn = await look(page)
  t.same(signedIn, { url: false, local: [], session: ['canaryd.token'], cookie: '', dom: false, attrs: false, input: '', perf: false }, 'signed in: in sessionStorage only')
  const sent = await Promise.all(w.requests.map(async (r) => ({ url: r.url, headers: r.headers })))
  t.notOk(sent.some((r) => r.url.includes(TOKEN)), 'no request URL holds the token')
  t.notOk(sent.some((r) => r.headers.referer !== undefined), 'no request carries a Referer')
  t.notOk(sent.some((r) => !r.url.startsWith(admin)), 'no request leaves the admin origin')
  t.notOk(lines.some((l) => l.includes(TOKEN)), `the debug log (${lines.length} lines) never holds the token`)
  t.ok(lines.some((l) => /wrong token/.test(l)), 'the log has the refused request, without the token')

  const second = await w.context.newPage()
  await second.goto(`${admin}/ui/`)
  await second.locator(tid('token-form')).waitFor({ state: 'visible' })
  t.same((await look(second)).session, [], 'a second tab has no token (sessionStorage is per tab)')
  await second.close()

  const n = w.requests.length
  await page.locator('#sign-out').click()
  await page.locator(tid('token-form')).waitFor({ state: 'visible' })
  await sleep(1500)
  t.same((await look(page)).session, [], 'sign-out forgets it')
  const after = await Promise.all(w.requests.slice(n).map(async (r) => r.headers.authorization ?? null))
  t.ok(after.length > 0, `the page asked again after sign-out (${after.length})`)
  t.same(after.filter((a) => a !== null), [], 'without an Authorization header')
  await page.reload()
  await page.locator(tid('token-form')).waitFor({ state: 'visible' })
  t.same((await look(page)).session, [], 'nor does a reload bring it back: the form asks again')
})

t.test('a route named like an Object.prototype key ("constructor") added by a reload: its page charts and the feed stay healthy', { skip }, async (t) => {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const d = configDir()
  const web = routeFile('web', [{ name: 'stable', upstream: ups.stable!.origin, weight: 90 }, { name: 'canary', upstream: ups.canary!.origin, weight: 10 }])
  const proto = routeFile('constructor', [{ name: 'stable', upstream: ups.stable!.origin, weight: 90 }, { name: 'canary', upstream: ups.canary!.origin, weight: 10 }], { match: { host: 'c.example.com' } })
  writeConfig(d.file, rawConfig(d.stateFile, [web]))
  const app = new App(loadConfig(d.file), { logger: createLogger('silent'), metrics: true })
  await app.start()
  t.teardown(async () => { await app.close(1000) })
  const admin = `http://127.0.0.1:${app.adminAddress!.port}`
  const port = app.adminAddress!.port

  const w = await openPage(t, await getBrowser())
  const { page } = w
  await page.goto(`${admin}/ui/#/routes/web`)
  await until('a few samples without the new route', async () => Number(await page.evaluate('document.documentElement.dataset.feedSamples ?? 0')) >= 3, 15_000, 100)
  writeConfig(d.file, rawConfig(d.stateFile, [web, proto]))
  const reload = await postReload(admin)
  t.equal(reload.status, 200, 'the reload added "constructor"')
  await page.goto(`${admin}/ui/#/routes/constructor`)
  await page.locator(tid('chart-rps')).waitFor({ state: 'attached' })
  const feeds = (): number => w.requests.filter((r) => new URL(r.url).pathname === '/api/v1/events').length
  // the feed's backoff is 1, 2, 4, 8, 10, 10 … s: about seven attempts in 35 s
  await sleep(35_000)
  const status = await page.locator('#feed-status').innerText()
  const why = await page.locator('#feed-status').getAttribute('title')
  t.comment(`feed: ${status} (${why ?? ''}); ${feeds()} feed requests; the server has ${await freeSlots(t, port)} of 32 streams free`)
  // found and fixed (issue 18 review): samples from before the reload lack the route, and s.routes["constructor"] is Object itself: LiveChart.update (src/ui/charts.ts valueOf(s.routes[route]?.versions[v])) throws; the throw escapes the feed listener (src/ui/feed.ts #emit has no try), #read gives up without cancelling the body or aborting its fetch, and #run reconnects: each round leaks one open stream, until Chromium's 6 connections per host are taken and every API call of the tab hangs; the server keeps those streams, of its 32
  t.equal(status, 'live', 'the feed is live')
  t.equal(feeds(), 1, 'one feed request for the whole visit')
  t.equal(await freeSlots(t, port), 31, 'the tab holds one stream of the server\'s 32')
  await page.evaluate("location.hash = '#/'")
  const listed = await page.locator(tid('route-row-web')).waitFor({ state: 'visible', timeout: 8000 }).then(() => true, () => false)
  t.ok(listed, 'the overview still loads afterwards')
})
