/**
 * The dashboard's actions (issue 18) in a real browser against a real
 * canaryd: setting weights with the sliders and starting, pausing and
 * aborting a rollout from a pasted plan, each behind its confirmation.
 * What the UI did is checked through the admin API, as a user would with
 * curl. Skipped, saying why, where Chromium is not installed.
 */
import t, { type Test } from 'tap'
import type { Browser, Page } from 'playwright-core'
import { chromiumMissing, launchBrowser, openPage, type WatchedPage } from '../helpers/browser.js'
import type { TestProxy } from '../helpers/proxy.js'
import { sleep, until } from '../helpers/until.js'
import { dialogText, rolloutState, textOf, tid, traffic, unexpectedErrors, waitForText, webProxy, weightsOf } from './lib.js'

const missing = chromiumMissing()
const skip = missing ?? false
if (missing !== undefined) t.comment(`skipping the dashboard browser tests: ${missing}`)

let browser: Browser | undefined
const getBrowser = async (): Promise<Browser> => (browser ??= await launchBrowser(t))

/** canaryd at `weights` with users on it, and a page open on the web route's page. */
async function routePage (t: Test, weights: [number, number]): Promise<{ p: TestProxy, w: WatchedPage, page: Page }> {
  const p = await webProxy(t, weights)
  traffic(t, p)
  const w = await openPage(t, await getBrowser())
  await w.page.goto(`${p.adminUrl}/ui/#/routes/web`)
  return { p, w, page: w.page }
}

t.test('setting weights with the slider changes GET /api/v1/routes; Cancel changes nothing', { skip }, async (t) => {
  const { p, w, page } = await routePage(t, [90, 10])
  const slider = page.locator(tid('weight-slider-canary'))
  await slider.waitFor({ state: 'visible' })
  t.equal(await slider.inputValue(), '10', 'the canary slider starts at the route\'s weight')
  t.equal(await page.locator(tid('weight-input-stable')).inputValue(), '90', 'stable\'s number input too')

  // keyboard only: 15 × ArrowRight on the canary slider
  await slider.focus()
  for (let i = 0; i < 15; i++) await page.keyboard.press('ArrowRight')
  t.equal(await slider.inputValue(), '25', 'canary slider at 25 after 15 × ArrowRight')
  t.equal(await page.locator(tid('weight-input-canary')).inputValue(), '25', 'its number input follows')
  t.equal(await page.locator(tid('weight-input-stable')).inputValue(), '75', 'stable rebalanced to 75 (the sum stays 100)')
  t.equal(await page.locator(tid('weight-slider-stable')).inputValue(), '75', 'and stable\'s slider too')
  // the feed keeps sending samples: an uncommitted edit must survive them
  const samples = Number(await page.evaluate('document.documentElement.dataset.feedSamples ?? 0'))
  await until('two more feed samples', async () => Number(await page.evaluate('document.documentElement.dataset.feedSamples ?? 0')) >= samples + 2, 10_000, 100)
  t.equal(await slider.inputValue(), '25', 'the edit is still there after two live updates')

  await page.locator(tid('weights-apply')).click()
  const text = await dialogText(page)
  t.match(text, /stable\s*90\s*→\s*75/, `the dialog names the change: ${text}`)
  t.match(text, /canary\s*10\s*→\s*25/)
  t.same((await weightsOf(p)).web, { stable: 90, canary: 10 }, 'nothing changed before the confirmation')
  await page.locator(tid('confirm-ok')).click()
  await until('GET /api/v1/routes has canary 25, stable 75', async () => {
    const web = (await weightsOf(p)).web
    return web?.canary === 25 && web.stable === 75
  }, 10_000, 100)
  t.pass('the API has stable 75, canary 25')
  const put = w.requests.filter((r) => r.method === 'PUT' && r.url.endsWith('/api/v1/routes/web/weights'))
  t.equal(put.length, 1, 'one PUT …/weights')
  await page.locator(tid('confirm-ok')).waitFor({ state: 'hidden' })

  // the number input, then Cancel: nothing is sent, nothing changes
  const input = page.locator(tid('weight-input-canary'))
  await input.fill('40')
  await input.press('Tab')
  await until('stable follows the number input', async () => await page.locator(tid('weight-input-stable')).inputValue() === '60', 5000, 50)
  t.equal(await slider.inputValue(), '40', 'the slider follows the number input')
  await page.locator(tid('weights-apply')).click()
  t.match(await dialogText(page), /canary\s*25\s*→\s*40/, 'the dialog starts from the current weights')
  await page.locator(tid('confirm-cancel')).click()
  await page.locator(tid('confirm-ok')).waitFor({ state: 'hidden' })
  await sleep(1000) // a PUT sent anyway would have landed by now
  t.equal(w.requests.filter((r) => r.method === 'PUT').length, 1, 'Cancel sent no request')
  t.same((await weightsOf(p)).web, { stable: 75, canary: 25 }, 'Cancel: GET /api/v1/routes unchanged')

  // Escape cancels a confirmation too
  await page.locator(tid('weights-apply')).click()
  await page.locator(tid('confirm-ok')).waitFor({ state: 'visible' })
  await page.keyboard.press('Escape')
  await page.locator(tid('confirm-ok')).waitFor({ state: 'hidden' })
  await sleep(500)
  t.equal(w.requests.filter((r) => r.method === 'PUT').length, 1, 'Escape sent no request')
  t.same((await weightsOf(p)).web, { stable: 75, canary: 25 }, 'Escape: unchanged')
  t.same(unexpectedErrors(w.errors), [], 'no console error')
})

const PLAN = { canary: 'canary', steps: [10, 50], intervalMs: 60000, analysis: { minRequests: 20 }, promotion: 'manual' }

t.test('a rollout from a pasted plan: validated, started, paused and aborted from the UI', { skip }, async (t) => {
  const { p, w, page } = await routePage(t, [100, 0])
  const planText = page.locator(tid('plan-text'))
  const result = page.locator(tid('plan-result'))
  await planText.waitFor({ state: 'visible' })

  // an invalid plan: the server's message naming the key, and nothing starts
  await planText.fill(JSON.stringify({ ...PLAN, steps: [50, 10] }, null, 2))
  await page.locator(tid('plan-validate')).click()
  // the validation output is where a user looks first; the error banner is accepted too
  let shown = ''
  await until('the validation error is shown', async () => {
    const banner = page.locator(tid('error-banner'))
    shown = `${await textOf(result)} | ${await banner.isVisible() ? await textOf(banner) : ''}`
    return /steps\[1\]/.test(shown)
  }, 10_000, 100)
  t.match(shown, /steps\[1\]: must be greater than the step before \(50\), got 10/, `the server's message: ${shown}`)
  const dry = w.requests.filter((r) => r.method === 'POST' && r.url.includes('/api/v1/routes/web/rollout'))
  t.ok(dry.length >= 1 && dry.every((r) => new URL(r.url).searchParams.get('dryRun') === 'true'), 'Validate is a dryRun POST')
  t.equal(await rolloutState(p), 'none', 'nothing started')

  // a valid plan: validated, then started after the confirmation
  await planText.fill(JSON.stringify(PLAN, null, 2))
  await page.locator(tid('plan-validate')).click()
  const valid = await waitForText(result, /60000/, 'plan-result shows the normalized plan')
  t.notMatch(valid, /CANARYD_ERR|must be/, `plan-result shows no error: ${valid.slice(0, 200)}`)
  t.equal(await rolloutState(p), 'none', 'validating started nothing')
  await page.locator(tid('plan-start')).click()
  await page.locator(tid('confirm-ok')).waitFor({ state: 'visible' })
  t.equal(await rolloutState(p), 'none', 'not before the confirmation')
  await page.locator(tid('confirm-ok')).click()
  await until('GET …/rollout is progressing', async () => await rolloutState(p) === 'progressing', 10_000, 100)
  t.same((await weightsOf(p)).web, { stable: 90, canary: 10 }, 'the first step: canary 10')
  await waitForText(page.locator(tid('rollout-state')), /progressing/, 'rollout-state shows progressing')
  t.pass('started: progressing, in the API and on the page')

  // pause
  await page.locator(tid('rollout-pause')).click()
  await page.locator(tid('confirm-ok')).click()
  await until('GET …/rollout is paused', async () => await rolloutState(p) === 'paused', 10_000, 100)
  await waitForText(page.locator(tid('rollout-state')), /paused/, 'rollout-state shows paused')
  t.ok(await page.locator(tid('rollout-pause')).isDisabled(), 'Pause is disabled while paused')
  t.ok(await page.locator(tid('rollout-resume')).isEnabled(), 'Resume is enabled while paused')
  t.pass('paused')

  // abort, after a Cancel that does nothing
  await page.locator(tid('rollout-abort')).click()
  await page.locator(tid('confirm-cancel')).click()
  await sleep(500)
  t.equal(await rolloutState(p), 'paused', 'Cancel on the abort dialog: still paused')
  await page.locator(tid('rollout-abort')).click()
  await page.locator(tid('confirm-ok')).click()
  await until('GET …/rollout is aborted', async () => await rolloutState(p) === 'aborted', 10_000, 100)
  t.same((await weightsOf(p)).web, { stable: 100, canary: 0 }, 'weights back to the starting ones')
  await waitForText(page.locator(tid('rollout-state')), /aborted/, 'rollout-state shows aborted')

  // the same plan as YAML
  const yaml = ['canary: canary', 'steps: [10, 50]', 'intervalMs: 60000', 'analysis:', '  minRequests: 20', 'promotion: manual', ''].join('\n')
  await planText.fill(yaml)
  await page.locator(tid('plan-validate')).click()
  await waitForText(result, /60000/, 'the YAML plan validates')
  await page.locator(tid('plan-start')).click()
  await page.locator(tid('confirm-ok')).click()
  await until('the YAML plan started', async () => await rolloutState(p) === 'progressing', 10_000, 100)
  t.same((await weightsOf(p)).web, { stable: 90, canary: 10 }, 'YAML plan: canary at its first step')
  t.same(unexpectedErrors(w.errors, [400]), [], 'no console error (but the 400 of the invalid plan, which Chromium logs)')
})
