import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { createLogger, type Logger } from '../../src/logger.js'
import { App } from '../../src/app.js'
import { configFromObject, type Config } from '../../src/config/load.js'

/** A silent logger for tests (LOG_LEVEL=debug to see it). */
export function testLogger (): Logger {
  return createLogger(process.env.LOG_LEVEL ?? 'silent')
}

/** A route with two versions over the given origins, for tests. */
export function twoVersionRoute (stable: string, canary: string, weights: [number, number] = [90, 10], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'web',
    sticky: { keys: ['header:x-user-id', 'cookie:session'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
    override: { header: 'x-canary', cookie: 'canary' },
    versions: [
      { name: 'stable', upstream: stable, weight: weights[0] },
      { name: 'canary', upstream: canary, weight: weights[1] }
    ],
    ...extra
  }
}

/** A config object on loopback, port 0 for proxy and admin, a temp state file. */
export function testConfig (routes: unknown[], extra: Record<string, unknown> = {}): Config {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-test-'))
  return configFromObject({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: '' },
    state: { file: join(dir, 'state.json') },
    routes,
    ...extra
  }, '(test)', {})
}

/** A started proxy and its base URL. */
export interface TestProxy {
  app: App
  url: string
  /** Base URL of the admin server (API, /healthz, /metrics). */
  adminUrl: string
  close: () => Promise<void>
}

/** Starts canaryd from a config object; close it in t.teardown. */
export async function startProxy (config: Config, opts: { metrics?: boolean } = {}): Promise<TestProxy> {
  const app = new App(config, { logger: testLogger(), metrics: opts.metrics ?? true })
  await app.start()
  return {
    app,
    url: `http://127.0.0.1:${app.proxyAddress!.port}`,
    adminUrl: `http://127.0.0.1:${app.adminAddress!.port}`,
    close: async () => { await app.close(1000) }
  }
}

/**
 * One JSON call of a test proxy's admin API; a blocked control plane fails the
 * test after 10 s instead of hanging it.
 */
export async function adminJson (p: TestProxy, method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await request(`${p.adminUrl}${path}`, {
    method: method as 'GET',
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    headersTimeout: 10_000
  })
  return { status: res.statusCode, json: await res.body.json() as Record<string, unknown> }
}

/**
 * A rollout plan quick enough for integration tests (300 ms checks, 20
 * requests a check): a canary failing a quarter of its requests is rolled
 * back within seconds, a healthy one promoted through 10 % and 50 %.
 */
export const QUICK_PLAN = Object.freeze({
  canary: 'canary',
  steps: [10, 50, 100],
  intervalMs: 300,
  analysis: { minRequests: 20, maxFailedChecks: 2, successRate: { min: 95 }, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 3 } },
  promotion: 'auto'
})
