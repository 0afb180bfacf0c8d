/**
 * The dashboard (issue 18) in a real browser: Debian's Chromium driven by
 * playwright-core against a real proxy and admin server on 127.0.0.1 with
 * real upstreams and real traffic. This file: the overview, the live
 * charts, the security headers and the page's own network behaviour, the
 * phone-width layout and the screenshots kept as test artifacts. Actions
 * (weights, rollouts) are in actions.test.ts, the token in token.test.ts.
 * Skipped, saying why, where Chromium is not installed.
 */
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import t from 'tap'
import type { Browser } from 'playwright-core'
import { request } from 'undici'
import { chromiumMissing, launchBrowser, openPage } from '../helpers/browser.js'
import { twoVersionRoute } from '../helpers/proxy.js'
import { until } from '../helpers/until.js'
import { startUpstreams } from '../helpers/upstream.js'
import { api, artifactsDir, feedSamples, figures, numberIn, tid, traffic, unexpectedErrors, waitForSamples, waitForText, webProxy } from './lib.js'

const missing = chromiumMissing()
const skip = missing ?? false
if (missing !== undefined) t.comment(`skipping the dashboard browser tests: ${missing}`)

/** One Chromium for the whole file (a fresh context per test), closed at its end. */
let browser: Browser | undefined
const getBrowser = async (): Promise<Browser> => (browser ??= await launchBrowser(t))

/** The contract's policy, exactly. */
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

t.test('the overview lists every route with its versions and weights', { skip }, async (t) => {
  const ups = await startUpstreams(t, ['blue', 'green'])
  const api2 = twoVersionRoute(ups.blue!.origin, ups.green!.origin, [65, 35], {
    name: 'api',
    match: { pathPrefix: '/api' },
    versions: [{ name: 'blue', upstream: ups.blue!.origin, weight: 65 }, { name: 'green', upstream: ups.green!.origin, weight: 35 }]
  })
  const p = await webProxy(t, [80, 20], [api2])
  const { page } = await openPage(t, await getBrowser())
  await page.goto(`${p.adminUrl}/ui/`)
  for (const [route, versions] of [['web', [['stable', 80], ['canary', 20]]], ['api', [['blue', 65], ['green', 35]]]] as const) {
    const row = page.locator(tid(`route-row-${route}`))
    await row.waitFor({ state: 'visible' })
    for (const [v, w] of versions) {
      await waitForText(row, new RegExp(`\\b${v}\\b[\\s\\S]*?\\b${w}\\b`), `route-row-${route} shows ${v} at ${w}`)
    }
    t.pass(`route-row-${route}: ${versions.map(([v, w]) => `${v} ${w}`).join(', ')}`)
  }
  t.equal(await page.locator('[data-testid^="route-row-"]').count(), 2, 'one row per route, no more')
  t.equal(await page.locator(tid('token-form')).isVisible(), false, 'no token configured: no token form')
  await page.locator(tid('route-link-web')).click()
  await until('the link opens the route page', () => page.url().endsWith('#/routes/web'), 10_000, 50)
  await page.locator(tid('chart-rps')).waitFor({ state: 'visible' })
  t.pass('route-link-web opens #/routes/web with its charts')
})

t.test('the live charts move while traffic flows', { skip }, async (t) => {
  const p = await webProxy(t, [70, 30])
  const users = traffic(t, p)
  const { page } = await openPage(t, await getBrowser())
  await page.goto(`${p.adminUrl}/ui/#/routes/web`)
  await waitForText(page.locator(tid('feed-status')), /live/, 'feed-status says live')
  for (const kind of ['rps', 'errors', 'p50', 'p99']) {
    const chart = page.locator(tid(`chart-${kind}`))
    await chart.waitFor({ state: 'visible' })
    t.ok(await chart.locator('canvas').count() >= 1, `chart-${kind} draws on a canvas`)
    t.equal(await chart.getAttribute('role'), 'img', `chart-${kind} is role=img`)
    t.ok(((await chart.getAttribute('aria-label')) ?? '').length > 0, `chart-${kind} has an aria-label`)
  }
  // both versions served traffic for at least two samples
  await until('some traffic went through', () => users.sent() > 50, 10_000, 50)
  let first: Record<string, string> = {}
  await until('figures-rps shows > 0 for stable and canary', async () => {
    first = await figures(page, 'rps')
    return numberIn(first.stable ?? '') > 0 && numberIn(first.canary ?? '') > 0
  }, 15_000, 250)
  const samples1 = await feedSamples(page)
  const at = performance.now()
  t.pass(`first read: ${JSON.stringify(first)} after ${samples1} samples`)
  let second: Record<string, string> = {}
  // a new read at least 2 s later that differs from the first (rps wobbles every second under real load)
  await until('figures-rps changed between two reads', async () => {
    second = await figures(page, 'rps')
    return performance.now() - at >= 2000 && JSON.stringify(second) !== JSON.stringify(first)
  }, 15_000, 250)
  t.pass(`second read: ${JSON.stringify(second)}`)
  t.ok(numberIn(second.stable ?? '') > 0, `stable rps > 0 in the second read (${second.stable ?? 'missing'})`)
  t.ok(numberIn(second.canary ?? '') > 0, `canary rps > 0 in the second read (${second.canary ?? 'missing'})`)
  const samples2 = await feedSamples(page)
  t.ok(samples2 > samples1, `feedSamples went up: ${samples1} → ${samples2}`)
  // the other tables have a cell per version, with a figure once both had responses
  for (const kind of ['errors', 'p50', 'p99']) {
    const f = await figures(page, kind)
    t.same(Object.keys(f).sort(), ['canary', 'stable'], `figures-${kind} has a cell per version`)
  }
  const p50 = await figures(page, 'p50')
  t.ok(numberIn(p50.stable ?? '') >= 0, `p50 of stable shows a number (${p50.stable ?? 'missing'})`)
})

t.test('strict CSP and no framing on every UI asset; the page loads nothing from another origin and violates nothing', { skip }, async (t) => {
  const p = await webProxy(t)
  traffic(t, p)
  // the headers, as curl sees them
  for (const path of ['/ui/', '/ui/main.js', '/ui/style.css', '/ui/vendor/uPlot.iife.min.js', '/ui/vendor/uPlot.min.css']) {
    const res = await request(`${p.adminUrl}${path}`, { headersTimeout: 10_000 })
    await res.body.dump()
    t.equal(res.statusCode, 200, `${path}: 200`)
    t.equal(res.headers['content-security-policy'], CSP, `${path}: the exact CSP`)
    t.equal(res.headers['x-frame-options'], 'DENY', `${path}: X-Frame-Options DENY`)
    t.equal(res.headers['x-content-type-options'], 'nosniff', `${path}: nosniff`)
    t.equal(res.headers['referrer-policy'], 'no-referrer', `${path}: no referrer`)
  }
  const policy = CSP.split(';').map((s) => s.trim())
  t.ok(policy.includes("script-src 'self'") && policy.includes("frame-ancestors 'none'"), 'scripts from self only, no framing')
  t.notMatch(CSP, /unsafe-inline|unsafe-eval/, 'no unsafe-inline / unsafe-eval')
  const redirect = await request(`${p.adminUrl}/ui`, { headersTimeout: 10_000 })
  await redirect.body.dump()
  t.equal(redirect.statusCode, 308, 'GET /ui → 308')
  t.equal(redirect.headers.location, '/ui/', '… to /ui/')
  const nope = await request(`${p.adminUrl}/ui/nope.js`, { headersTimeout: 10_000 })
  t.equal(nope.statusCode, 404, 'an unknown asset is 404')
  await nope.body.dump()

  // a whole session: overview, route page with the feed, audit, fleet, back
  const w = await openPage(t, await getBrowser())
  const { page } = w
  const main = await page.goto(`${p.adminUrl}/ui/`)
  t.equal(main?.headers()['content-security-policy'], CSP, 'the browser got the CSP on the page')
  await page.locator(tid('route-row-web')).waitFor({ state: 'visible' })
  await page.locator(tid('route-link-web')).click()
  await page.locator(tid('chart-rps')).waitFor({ state: 'visible' })
  await waitForSamples(page, 3)
  // a change for the audit page to show (by the API, as a script would)
  t.equal((await api(p, 'PUT', '/api/v1/routes/web/weights', { body: { weights: { stable: 85, canary: 15 }, reason: 'audited by the ui test' } })).status, 200)
  await page.goto(`${p.adminUrl}/ui/#/audit`)
  await waitForText(page.locator(tid('audit-table')), /audited by the ui test/, 'the audit page lists the change')
  await page.goto(`${p.adminUrl}/ui/#/fleet`)
  await page.locator(tid('fleet-table')).waitFor({ state: 'visible' })
  await page.goto(`${p.adminUrl}/ui/#/routes/web`)
  await page.locator(tid('chart-p99')).waitFor({ state: 'visible' })
  const before = await feedSamples(page)
  await until('the feed is still delivering after navigation', async () => await feedSamples(page) > before, 10_000, 200)

  const origin = new URL(p.adminUrl).origin
  const local = w.requests.filter((r) => r.url.startsWith('data:') || r.url.startsWith('blob:'))
  const network = w.requests.filter((r) => !local.includes(r))
  t.ok(network.length >= 4, `requests recorded: ${network.length}`)
  const foreign = network.filter((r) => !r.url.startsWith(`${origin}/`))
  t.same(foreign.map((r) => r.url), [], `every request went to ${origin}`)
  if (local.length > 0) t.comment(`in-page (data:/blob:) URLs, not network: ${local.map((r) => r.url.slice(0, 40)).join(', ')}`)
  t.ok(network.some((r) => new URL(r.url).pathname === '/api/v1/events'), 'the live data comes from the SSE feed /api/v1/events')
  t.ok(network.some((r) => new URL(r.url).pathname === '/ui/vendor/uPlot.iife.min.js'), 'uPlot from the package, same origin')
  t.notOk(network.some((r) => new URL(r.url).pathname === '/favicon.ico'), 'no favicon request')
  const apiCalls = network.filter((r) => new URL(r.url).pathname.startsWith('/api/')).length
  t.ok(apiCalls < 60, `no polling storm: ${apiCalls} API requests in the session`)
  t.same(w.cspViolations, [], 'no securitypolicyviolation event')
  t.same(unexpectedErrors(w.errors), [], 'no console error, no uncaught exception')

  // issue 18: total assets under 300 KB gzipped (each UI asset the page loaded, once)
  const assets = [...new Set(network.map((r) => new URL(r.url).pathname).filter((path) => path.startsWith('/ui/')))]
  let gz = 0
  for (const path of assets) {
    const res = await request(`${p.adminUrl}${path}`, { headersTimeout: 10_000 })
    gz += gzipSync(Buffer.from(await res.body.arrayBuffer())).length
  }
  t.ok(gz < 300 * 1024, `the page's assets (${assets.join(', ')}) are ${(gz / 1024).toFixed(1)} KB gzipped, under 300 KB`)
})

t.test('at phone width (390×844) the route page does not overflow and the charts show', { skip }, async (t) => {
  const p = await webProxy(t)
  traffic(t, p)
  const { page } = await openPage(t, await getBrowser(), { viewport: { width: 390, height: 844 } })
  const overflow = async (): Promise<{ scroll: number; inner: number }> =>
    await page.evaluate('({ scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth })') as { scroll: number; inner: number }
  await page.goto(`${p.adminUrl}/ui/`)
  await page.locator(tid('route-row-web')).waitFor({ state: 'visible' })
  const o1 = await overflow()
  t.ok(o1.scroll <= o1.inner + 1, `overview: scrollWidth ${o1.scroll} ≤ innerWidth ${o1.inner} + 1`)
  await page.goto(`${p.adminUrl}/ui/#/routes/web`)
  for (const kind of ['rps', 'errors', 'p50', 'p99']) {
    const chart = page.locator(tid(`chart-${kind}`))
    await chart.waitFor({ state: 'visible' })
    await chart.scrollIntoViewIfNeeded()
    const box = await chart.boundingBox()
    t.ok(box !== null && box.width > 100 && box.height > 50, `chart-${kind} is shown (${JSON.stringify(box)})`)
    t.ok(box !== null && box.x >= -1 && box.x + box.width <= 391, `chart-${kind} fits the 390 px screen`)
    const canvas = await chart.locator('canvas').first().boundingBox()
    t.ok(canvas !== null && canvas.width > 100 && canvas.width <= 391, `its canvas was sized to the container (${canvas?.width ?? 'none'} px)`)
  }
  await waitForSamples(page, 2)
  const o2 = await overflow()
  t.ok(o2.scroll <= o2.inner + 1, `route page: scrollWidth ${o2.scroll} ≤ innerWidth ${o2.inner} + 1`)
  await page.locator(tid('weights-apply')).scrollIntoViewIfNeeded()
  t.ok(await page.locator(tid('weights-apply')).isVisible(), 'the weights controls are reachable')
})

t.test('screenshots of the route page (traffic, a rollout running) and the overview are kept as test artifacts', { skip }, async (t) => {
  const p = await webProxy(t, [100, 0])
  traffic(t, p)
  const started = await api(p, 'POST', '/api/v1/routes/web/rollout', {
    body: { canary: 'canary', steps: [5, 10, 25, 50], intervalMs: 3000, analysis: { minRequests: 20, maxFailedChecks: 3 }, promotion: 'manual' }
  })
  t.equal(started.status, 201, `rollout started: ${JSON.stringify(started.json).slice(0, 200)}`)
  const dir = artifactsDir()
  const { page } = await openPage(t, await getBrowser(), { viewport: { width: 1280, height: 800 } })
  await page.goto(`${p.adminUrl}/ui/#/routes/web`)
  await page.locator(tid('chart-rps')).waitFor({ state: 'visible' })
  await waitForText(page.locator(tid('rollout-state')), /progressing|awaiting|paused|promoted|rolled-back/, 'the rollout panel shows the rollout')
  // a check or two on the charts and the timeline, and some history on the lines
  await until('a check ran', async () => {
    const r = await api(p, 'GET', '/api/v1/routes/web/rollout')
    return Array.isArray(r.json.checks) && r.json.checks.length >= 1
  }, 20_000, 250)
  await waitForSamples(page, 6)
  const route = join(dir, 'dashboard-route.png')
  writeFileSync(route, await page.screenshot({ fullPage: true, timeout: 15_000 }))
  const size = statSync(route).size
  t.ok(size > 10 * 1024, `test-artifacts/dashboard-route.png is ${(size / 1024).toFixed(0)} KB (> 10 KB)`)
  await page.goto(`${p.adminUrl}/ui/#/`)
  await page.locator(tid('route-row-web')).waitFor({ state: 'visible' })
  await waitForSamples(page, 2)
  const overview = join(dir, 'dashboard-overview.png')
  writeFileSync(overview, await page.screenshot({ fullPage: true, timeout: 15_000 }))
  t.ok(statSync(overview).size > 5 * 1024, `test-artifacts/dashboard-overview.png is ${(statSync(overview).size / 1024).toFixed(0)} KB`)
})
