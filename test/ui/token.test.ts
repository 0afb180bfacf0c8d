/**
 * The dashboard and the admin token (issue 18), in a real browser against
 * a real canaryd: the token is asked once, kept in sessionStorage, sent as
 * a Bearer header and never in a URL; a wrong one shows the server's
 * message and changes nothing. And `admin.ui: false` turns the dashboard
 * off (no browser needed). The browser tests skip, saying why, where
 * Chromium is not installed.
 */
import t from 'tap'
import { request } from 'undici'
import { chromiumMissing, launchBrowser, openPage } from '../helpers/browser.js'
import { sleep, until } from '../helpers/until.js'
import { feedSamples, tid, traffic, unexpectedErrors, waitForMessage, waitForSamples, webProxy, weightsOf } from './lib.js'

const missing = chromiumMissing()
if (missing !== undefined) t.comment(`skipping the dashboard browser tests: ${missing}`)

const TOKEN = 's3cret'
const WRONG = 'wr0ng-t0ken'
const STALE = 'st4le-t0ken'

/** Status of a plain GET (no token). */
async function statusOf (url: string): Promise<number> {
  const res = await request(url, { headersTimeout: 10_000 })
  await res.body.dump()
  return res.statusCode
}

t.test('a wrong token shows the server\'s message and changes nothing; the right one is kept in sessionStorage, never in a URL', { skip: missing ?? false }, async (t) => {
  const p = await webProxy(t, [90, 10], [], { admin: { host: '127.0.0.1', port: 0, token: TOKEN } })
  traffic(t, p)
  // the page itself holds no data: it loads without the token, the API does not answer without it
  t.equal(await statusOf(`${p.adminUrl}/ui/`), 200, '/ui/ without a token: 200')
  t.equal(await statusOf(`${p.adminUrl}/ui/main.js`), 200, '/ui/main.js without a token: 200')
  t.equal(await statusOf(`${p.adminUrl}/api/v1/routes`), 401, '/api/v1/routes without a token: 401')

  const browser = await launchBrowser(t)
  const w = await openPage(t, browser)
  const { page } = w
  await page.goto(`${p.adminUrl}/ui/`)
  const form = page.locator(tid('token-form'))
  await form.waitFor({ state: 'visible' })
  t.equal(await page.locator(tid('route-row-web')).count(), 0, 'no routes before a token')

  // wrong
  await page.locator(tid('token-input')).fill(WRONG)
  await page.locator(tid('token-submit')).click()
  let shown = await waitForMessage(page, /wrong admin token/, 'the server\'s message is shown')
  t.pass(`a wrong token: "${shown}"`)
  t.ok(await form.isVisible(), 'the token form stays')
  await sleep(1500) // a feed that got through would have delivered a sample by now
  t.equal(await page.locator(tid('route-row-web')).count(), 0, 'routes are not shown with a wrong token')
  t.equal(await feedSamples(page), 0, 'no feed sample with a wrong token')

  // right
  await page.locator(tid('token-input')).fill(TOKEN)
  await page.locator(tid('token-submit')).click()
  await page.locator(tid('route-row-web')).waitFor({ state: 'visible' })
  await form.waitFor({ state: 'hidden' })
  t.pass('the right token shows the overview')
  t.equal(await page.evaluate("sessionStorage.getItem('canaryd.token')"), TOKEN, 'kept in sessionStorage[canaryd.token]')
  t.equal(await page.evaluate("localStorage.getItem('canaryd.token')"), null, 'not in localStorage')
  await page.goto(`${p.adminUrl}/ui/#/routes/web`)
  await waitForSamples(page, 2)
  const authorized = w.requests.filter((r) => r.url.includes('/api/') && r.headers.authorization === `Bearer ${TOKEN}`).map((r) => new URL(r.url).pathname)
  t.ok(authorized.includes('/api/v1/routes'), 'the API calls carry "Authorization: Bearer <token>"')
  t.ok(authorized.includes('/api/v1/events'), 'the SSE feed too')

  // a weight change with a token that became wrong (rotated on the server after sign-in): refused, nothing changes
  await page.route('**/api/v1/routes/web/weights', async (route) => {
    await route.continue({ headers: { ...route.request().headers(), authorization: `Bearer ${STALE}` } })
  })
  const slider = page.locator(tid('weight-slider-canary'))
  await slider.focus()
  for (let i = 0; i < 20; i++) await page.keyboard.press('ArrowRight')
  t.equal(await page.locator(tid('weight-input-stable')).inputValue(), '70', 'the slider moved (stable 70)')
  await page.locator(tid('weights-apply')).click()
  await page.locator(tid('confirm-ok')).click()
  await until('the PUT was sent', () => w.requests.some((r) => r.method === 'PUT'), 10_000, 50)
  shown = await waitForMessage(page, /wrong admin token/, 'the 401 is shown')
  t.pass(`the refused change shows "${shown}"`)
  t.ok(await form.isVisible(), 'a 401 shows the token form')
  t.same((await weightsOf(p, TOKEN)).web, { stable: 90, canary: 10 }, 'GET /api/v1/routes (right token): unchanged')
  await page.unroute('**/api/v1/routes/web/weights')

  // a stale token in sessionStorage at load: the form with the message, no data
  await page.evaluate(`sessionStorage.setItem('canaryd.token', '${STALE}')`)
  await page.reload()
  await form.waitFor({ state: 'visible' })
  shown = await waitForMessage(page, /wrong admin token/, 'the stale token is refused with the server\'s message')
  t.pass(`a stale token at load: "${shown}"`)
  t.equal(await page.locator(tid('route-row-web')).count(), 0, 'no routes with the stale token')
  t.same((await weightsOf(p, TOKEN)).web, { stable: 90, canary: 10 }, 'still unchanged')

  // the whole session: no token, right or wrong, in any URL
  t.ok(w.requests.length > 5, `requests recorded: ${w.requests.length}`)
  for (const secret of [TOKEN, WRONG, STALE]) {
    t.same(w.requests.filter((r) => r.url.includes(secret)).map((r) => r.url), [], `"${secret}" in no request URL`)
  }
  t.same(w.requests.filter((r) => /token=|access_token/i.test(r.url)).map((r) => r.url), [], 'no token parameter at all')
  t.same(unexpectedErrors(w.errors, [401]), [], 'no console error (but the 401s, which Chromium logs)')
})

t.test('admin.ui: false → every /ui path is 404; the API and /healthz still answer', async (t) => {
  const p = await webProxy(t, [90, 10], [], { admin: { host: '127.0.0.1', port: 0, token: '', ui: false } })
  for (const path of ['/ui/', '/ui', '/ui/main.js', '/ui/style.css', '/ui/vendor/uPlot.iife.min.js', '/ui/vendor/uPlot.min.css']) {
    t.equal(await statusOf(`${p.adminUrl}${path}`), 404, `GET ${path}: 404`)
  }
  t.equal(await statusOf(`${p.adminUrl}/api/v1/routes`), 200, 'the API is on')
  t.equal(await statusOf(`${p.adminUrl}/healthz`), 200, '/healthz is on')
  // the default is on: the same server with the key left out serves the page
  const on = await webProxy(t, [90, 10])
  t.equal(await statusOf(`${on.adminUrl}/ui/`), 200, 'default (admin.ui unset): GET /ui/ is 200')
})
