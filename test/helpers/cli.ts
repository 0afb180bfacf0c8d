import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { twoVersionRoute } from './proxy.js'

/** The built CLI, run as users run it. */
export const CLI = join(process.cwd(), 'dist/cli.js')

/**
 * `npm test` builds before tap; a test file run on its own builds first when
 * dist/ is missing or older than any source it is built from.
 */
export function ensureBuilt (): void {
  const stale = readdirSync('src', { recursive: true }).map(String).some((f) => {
    if (!f.endsWith('.ts') && !f.endsWith('.json')) return false
    const out = join('dist', f.replace(/\.ts$/, '.js'))
    return !existsSync(out) || statSync(out).mtimeMs < statSync(join('src', f)).mtimeMs
  })
  if (stale) spawnSync('npm', ['run', 'build'], { stdio: 'inherit' })
}

/**
 * Runs `canaryd ARGS` asynchronously (an admin server in the test's own
 * process must keep answering, so a sync spawn would block it). The admin
 * URL and token variables are cleared unless `env` sets them. With
 * `killAfterMs` the process is killed if still running then (`killed`).
 */
export async function runCli (args: string[], env: Record<string, string> = {}, killAfterMs?: number): Promise<{ code: number | null; stdout: string; stderr: string; killed: boolean }> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, LOG_LEVEL: 'silent', CANARYD_ADMIN_URL: '', CANARYD_ADMIN_TOKEN: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let killed = false
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  // bounded when asked: a `serve` that starts when it should have refused must not hang the test
  const timer = killAfterMs === undefined ? undefined : setTimeout(() => { killed = true; child.kill('SIGKILL') }, killAfterMs)
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  clearTimeout(timer)
  return { code, stdout, stderr, killed }
}

/**
 * A config file for `canaryd serve` on loopback, ports 0, a state file in
 * the same temp dir, one route whose two versions both point at `upstream`
 * (all traffic on stable); `extra` adds or replaces top-level keys.
 */
export function loopbackConfigFile (upstream: string, extra: Record<string, unknown> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-cli-'))
  const file = join(dir, 'config.json')
  writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    state: { file: join(dir, 'state.json') },
    routes: [twoVersionRoute(upstream, upstream, [100, 0])],
    ...extra
  }))
  return file
}
