/**
 * Browser tests of the dashboard (issue 18): Debian's Chromium (package
 * `chromium`) driven by playwright-core, headless, offline (no background
 * networking, no component updates, no QUIC) and with a fresh profile per
 * launch: playwright's `chromium.launch` makes its own temp
 * `--user-data-dir` and removes it on close (it refuses the flag in `args`;
 * only `launchPersistentContext` takes a directory), so no state is shared
 * between files or runs. Every wait is bounded; teardown closes what was
 * opened, contexts first.
 */
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'

/** The browser binary (Debian package `chromium`). */
export const CHROMIUM = 'chromium'

/** Where Debian installs it, when PATH does not say. */
const DEBIAN_CHROMIUM = '/usr/bin/chromium'

/**
 * Flags beside playwright's own (it adds --headless, --no-sandbox and its
 * pipe): nothing the browser does by itself may reach the network, so the
 * tests' "no request leaves for another origin" sees only the page's.
 */
const CHROMIUM_ARGS: readonly string[] = Object.freeze([
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage'
])

/** How long a launch, a close, an action or a navigation may take. */
const LAUNCH_MS = 30_000
const CLOSE_MS = 10_000
const ACTION_MS = 10_000
const NAVIGATION_MS = 15_000

function executable (path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** The Chromium executable: the first `chromium` on PATH, else Debian's; undefined when neither runs. */
export function chromiumPath (): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir !== '' && executable(join(dir, CHROMIUM))) return join(dir, CHROMIUM)
  }
  return executable(DEBIAN_CHROMIUM) ? DEBIAN_CHROMIUM : undefined
}

/** Why the browser tests cannot run here, or undefined when they can (the message says how to get it: a skip is never silent). */
export function chromiumMissing (): string | undefined {
  return chromiumPath() === undefined ? 'chromium is not installed (Debian packages chromium fonts-liberation); .ci/run installs it' : undefined
}

/** Rejects with `what` after `ms`, so a hung browser fails a test instead of the whole run. */
async function within<T> (what: string, ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`${what}: not within ${ms} ms`)) }, ms) })
  try {
    return await Promise.race([p, late])
  } finally {
    clearTimeout(timer)
  }
}

/** What tap's `t` offers that these helpers use. */
interface Teardown { teardown: (fn: () => Promise<void> | void) => void }

/** Launches Chromium (fresh temp profile); closed in `t`'s teardown. */
export async function launchBrowser (t: Teardown): Promise<Browser> {
  const executablePath = chromiumPath()
  if (executablePath === undefined) throw new Error(chromiumMissing())
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [...CHROMIUM_ARGS],
    timeout: LAUNCH_MS,
    // the test runner owns the signals; playwright must not install handlers in tap's worker
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false
  })
  t.teardown(async () => { await within('closing chromium', CLOSE_MS, browser.close()).catch(() => {}) })
  return browser
}

/** One request the page made, as the tests check it. */
export interface SeenBrowserRequest {
  method: string
  url: string
  /** Every header Chromium sent (lower-case names), read once the request is done. */
  headers: Record<string, string>
}

/** A page in its own context, with everything it did recorded from its first request on. */
export interface WatchedPage {
  context: BrowserContext
  page: Page
  /** Every request of the context, in order (navigations, scripts, fetches, the SSE feed). */
  readonly requests: SeenBrowserRequest[]
  /** Console messages of type error, and uncaught exceptions (`pageerror: …`). */
  readonly errors: string[]
  /** `securitypolicyviolation` events the page saw: "directive blocked-uri". */
  readonly cspViolations: string[]
  /** Requests that failed at the network level ("url: reason"), aborted SSE streams included. */
  readonly failed: string[]
}

/**
 * A new context (fresh sessionStorage) and page at `viewport` (default
 * 1280×800), with actions bounded to 10 s and navigations to 15 s. Every
 * request is recorded (with its headers, once sent), console errors and
 * page errors kept, and a `securitypolicyviolation` listener installed
 * before any page script runs (an init script, which CSP does not govern),
 * reporting through a binding so a reload loses nothing. Closed in teardown.
 */
export async function openPage (t: Teardown, browser: Browser, opts: { viewport?: { width: number; height: number } } = {}): Promise<WatchedPage> {
  const context = await browser.newContext({ viewport: opts.viewport ?? { width: 1280, height: 800 } })
  t.teardown(async () => { await within('closing a browser context', CLOSE_MS, context.close()).catch(() => {}) })
  context.setDefaultTimeout(ACTION_MS)
  context.setDefaultNavigationTimeout(NAVIGATION_MS)
  const requests: SeenBrowserRequest[] = []
  const errors: string[] = []
  const cspViolations: string[] = []
  const failed: string[] = []
  await context.exposeBinding('__canarydTestCsp', (_source, v: unknown) => { cspViolations.push(String(v)) })
  await context.addInitScript('document.addEventListener("securitypolicyviolation", (e) => { window.__canarydTestCsp(e.violatedDirective + " " + e.blockedURI) })')
  context.on('request', (req) => {
    const seen: SeenBrowserRequest = { method: req.method(), url: req.url(), headers: req.headers() }
    requests.push(seen)
    // allHeaders() has what the network stack added (Authorization set by fetch is in both)
    req.allHeaders().then((h) => { seen.headers = h }, () => {})
  })
  context.on('requestfailed', (req) => { failed.push(`${req.url()}: ${req.failure()?.errorText ?? '?'}`) })
  const page = await context.newPage()
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()} (${m.location().url})`) })
  page.on('pageerror', (e) => { errors.push(`pageerror: ${e.message}`) })
  return { context, page, requests, errors, cspViolations, failed }
}
