/**
 * Shared by the `canaryd rollout` CLI tests (test/integration/rollout-cli*.test.ts):
 * the built dist/cli.js run as users run it, against a real App started by the test.
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { ensureBuilt, runCli } from '../helpers/cli.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

ensureBuilt()

/** Runs `canaryd rollout ARGS` against a real App started by the test. */
export async function cli (args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return await runCli(['rollout', ...args], env)
}

/** Writes a plan file (JSON or YAML by its name) in a fresh temp dir. */
export function planFile (name: string, text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'canaryd-plan-')), name)
  writeFileSync(file, text)
  return file
}

/** A long interval: the rollout sits at its step while the CLI steers it. */
export const PLAN = { canary: 'canary', steps: [5, 25, 50], intervalMs: 3_600_000, analysis: { minRequests: 50 } }

/** Starts a two-version route `web` (stable 100 %, canary 0 %) on real upstreams; `token` protects the admin API. */
export async function setup (t: Test, token = ''): Promise<TestProxy> {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])], { admin: { host: '127.0.0.1', port: 0, token } }))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  return p
}
