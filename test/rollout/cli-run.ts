/**
 * Shared by the `canaryd rollout` CLI tests (test/integration/rollout-cli*.test.ts):
 * the built dist/cli.js run as users run it, against a real App started by the test.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

// `canaryd rollout …` as users run it: the built dist/cli.js against a real
// App started here. A direct run builds first when dist is missing or older
// than the sources the command goes through.
const CLI = join(process.cwd(), 'dist/cli.js')
const stale = (src: string, out: string): boolean => !existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs
const sources = ['src/cli.ts', 'src/commands/rollout.ts', 'src/commands/client.ts', ...readdirSync('src/rollout').map((f) => `src/rollout/${f}`)]
if (sources.some((s) => s.endsWith('.ts') && stale(s, s.replace(/^src\//, 'dist/').replace(/\.ts$/, '.js')))) {
  spawnSync('npm', ['run', 'build'], { stdio: 'inherit' })
}

/** Runs `canaryd rollout ARGS` asynchronously (the admin server runs in this process: a sync spawn would block it). */
export async function cli (args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, 'rollout', ...args], { env: { ...process.env, LOG_LEVEL: 'silent', CANARYD_ADMIN_URL: '', CANARYD_ADMIN_TOKEN: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  return { code, stdout, stderr }
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

