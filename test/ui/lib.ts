/**
 * What the dashboard tests share: the admin API read the way a user would
 * check the UI's work (with curl), the dashboard's stable hooks
 * (`data-testid`, ui-contract), and bounded waits on a page.
 */
import { mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Locator, Page } from 'playwright-core'
import type { Test } from 'tap'
import { adminCall } from '../helpers/fleet.js'
import { userTraffic, type UserTraffic } from '../helpers/business.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { until } from '../helpers/until.js'
import { startUpstreams } from '../helpers/upstream.js'

/** A `data-testid` selector. */
export const tid = (id: string): string => `[data-testid="${id}"]`

/**
 * canaryd with the `web` route (stable/canary at `weights`, real upstreams)
 * after `routes`, on 127.0.0.1 port 0; `extra` is more config (e.g. the
 * admin block). Closed in teardown.
 */
export async function webProxy (t: Test, weights: [number, number] = [90, 10], routes: unknown[] = [], extra: Record<string, unknown> = {}): Promise<TestProxy> {
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const p = await startProxy(testConfig([...routes, twoVersionRoute(ups.stable!.origin, ups.canary!.origin, weights)], extra))
  t.teardown(async () => { await p.close() })
  return p
}

/**
 * Real users through the proxy: two clients in a loop, a new x-user-id per
 * request (so both versions get some), bounded to 45 s, stopped in teardown.
 */
export function traffic (t: Test, p: TestProxy): UserTraffic {
  const users = userTraffic(p.url, { clients: 2, pauseMs: 2, maxMs: 45_000 })
  t.teardown(async () => { await users.stop() })
  return users
}

/** One admin API call (10 s bound), with the Bearer token when given. */
export async function api (p: TestProxy, method: string, path: string, opts: { token?: string; body?: unknown } = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  return await adminCall(p.adminUrl, method, path, opts.body, opts.token)
}

/** Every route's weights by version, from GET /api/v1/routes. */
export async function weightsOf (p: TestProxy, token?: string): Promise<Record<string, Record<string, number>>> {
  const { status, json } = await api(p, 'GET', '/api/v1/routes', token === undefined ? {} : { token })
  if (status !== 200) throw new Error(`GET /api/v1/routes: ${status} ${JSON.stringify(json)}`)
  const out: Record<string, Record<string, number>> = {}
  for (const r of json.routes as Array<{ name: string; versions: Array<{ name: string; weight: number }> }>) {
    out[r.name] = Object.fromEntries(r.versions.map((v) => [v.name, v.weight]))
  }
  return out
}

/** GET …/rollout: its state, or `none` on 404. */
export async function rolloutState (p: TestProxy, route = 'web', token?: string): Promise<string> {
  const { status, json } = await api(p, 'GET', `/api/v1/routes/${route}/rollout`, token === undefined ? {} : { token })
  if (status === 404) return 'none'
  if (status !== 200) throw new Error(`GET rollout: ${status} ${JSON.stringify(json)}`)
  return String(json.state)
}

/**
 * The trimmed text of the first element of `loc` as the user reads it
 * (innerText: table cells apart, hidden parts left out), '' when there is none.
 */
export async function textOf (loc: Locator): Promise<string> {
  if (await loc.count() === 0) return ''
  return (await loc.first().innerText({ timeout: 2000 })).trim()
}

/** The number a figures cell shows ("451.2", "1,204 req/s" → 1204); NaN when none. */
export function numberIn (text: string): number {
  const m = /-?\d[\d,]*(?:\.\d+)?/.exec(text)
  return m === null ? Number.NaN : Number(m[0].replace(/,/g, ''))
}

/** The cells of `figures-<kind>`: version → the text it shows. */
export async function figures (page: Page, kind: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  for (const cell of await page.locator(`${tid(`figures-${kind}`)} [data-version]`).all()) {
    const v = await cell.getAttribute('data-version', { timeout: 2000 })
    if (v !== null) out[v] = ((await cell.textContent({ timeout: 2000 })) ?? '').trim()
  }
  return out
}

/** `document.documentElement.dataset.feedSamples` as a number (0 before the first sample). */
export async function feedSamples (page: Page): Promise<number> {
  const v = await page.evaluate('document.documentElement.dataset.feedSamples')
  const n = Number(v ?? 0)
  return Number.isFinite(n) ? n : 0
}

/** Waits (bounded) until the feed has delivered at least `n` samples; returns how many it has. */
export async function waitForSamples (page: Page, n: number, ms = 15_000): Promise<number> {
  let last = 0
  await until(`the feed delivered ${n} samples (has ${last})`, async () => (last = await feedSamples(page)) >= n, ms, 200)
  return last
}

/** Waits (bounded) until `loc`'s text matches `re`; returns it. The error says what it was. */
export async function waitForText (loc: Locator, re: RegExp, what: string, ms = 10_000): Promise<string> {
  let last = ''
  try {
    await until(what, async () => re.test(last = await textOf(loc)), ms, 100)
  } catch (err) {
    throw new Error(`${(err as Error).message}; text was ${JSON.stringify(last)}`)
  }
  return last
}

/**
 * Waits (bounded) until a message matching `re` is shown where the UI
 * shows the server's errors: the token form (its message) or the error
 * banner, whichever is visible. Returns what was shown.
 */
export async function waitForMessage (page: Page, re: RegExp, what: string, ms = 10_000): Promise<string> {
  let last = ''
  const shown = async (id: string): Promise<string> => {
    const loc = page.locator(tid(id))
    return await loc.isVisible() ? await textOf(loc) : ''
  }
  try {
    await until(what, async () => re.test(last = [await shown('token-form'), await shown('error-banner')].filter((x) => x !== '').join(' | ')), ms, 100)
  } catch (err) {
    throw new Error(`${(err as Error).message}; shown: ${JSON.stringify(last)}`)
  }
  return last
}

/** The text of the open confirmation dialog (the one `confirm-ok` is in). */
export async function dialogText (page: Page): Promise<string> {
  const ok = page.locator(tid('confirm-ok'))
  await ok.waitFor({ state: 'visible' })
  return await textOf(page.locator('dialog[open]'))
}

/** Chromium's console line for a fetch answered with an HTTP error status. */
const FAILED_LOAD = /^console: Failed to load resource: the server responded with a status of (\d{3}) .*\((\S+)\)$/

/**
 * The page's console errors and uncaught exceptions, minus Chromium's
 * "Failed to load resource" line for answers that are not errors of the
 * page: a status in `expected` (one the test provoked: a 400 for an
 * invalid plan, a 401 for a wrong token) and the 404 of GET
 * `/api/v1/routes/<r>/rollout`, the API's documented way to say "no rollout".
 */
export function unexpectedErrors (errors: readonly string[], expected: readonly number[] = []): string[] {
  return errors.filter((e) => {
    const m = FAILED_LOAD.exec(e)
    if (m === null) return true
    const status = Number(m[1])
    if (expected.includes(status)) return false
    return !(status === 404 && /\/api\/v1\/routes\/[^/]+\/rollout$/.test(m[2]!))
  })
}

/** `test-artifacts/` at the repo root (created), where screenshots are kept. */
export function artifactsDir (): string {
  const dir = fileURLToPath(new URL('../../test-artifacts/', import.meta.url))
  mkdirSync(dir, { recursive: true })
  return dir
}
