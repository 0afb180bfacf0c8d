import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

const cli = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

/** Runs the built CLI; resolves with exit code and output. */
async function run (args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return await new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    p.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    p.on('error', reject)
    p.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

t.test('canaryd top --once prints one plain frame per route and version from a real proxy\'s /metrics', { skip: existsSync(cli) ? false : 'dist/cli.js missing: run npm run build' }, async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary', (_req, res) => { res.writeHead(500, { 'content-length': '0' }); res.end() })
  // outlier ejection off: an all-500 canary would otherwise be ejected and get no traffic
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [70, 30])], { health: { consecutiveFailures: 0 } }))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })

  // traffic during the sampling interval: 4 requests every 50 ms for ~1.5 s
  let stop = false
  let sent = 0
  const load = (async () => {
    while (!stop) {
      await Promise.all([0, 1, 2, 3].map(async () => { const r = await fetch(`${proxy.url}/x`, { headers: { 'x-user-id': `u${sent++}` } }); await r.arrayBuffer() }))
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()
  const r = await run(['top', '--once', '--interval', '1000'], { CANARYD_ADMIN_URL: proxy.adminUrl, CANARYD_ADMIN_TOKEN: 'not-needed' })
  stop = true
  await load
  t.equal(r.code, 0, r.stderr)
  t.notOk(r.stdout.includes('\u001b'), 'no terminal codes with --once')
  const lines = r.stdout.split('\n')
  t.match(lines[0], new RegExp(`^canaryd top — ${proxy.adminUrl.replace(/\./g, '\\.')} — `))
  t.match(lines[2], /^ROUTE\s+VERSION\s+WEIGHT%\s+REQ\/S\s+ERR%\s+P50ms\s+P99ms\s+INFLIGHT\s+UPERR$/)
  const row = (version: string): string[] => (lines.find((l) => l.startsWith('web ') && l.includes(` ${version} `)) ?? '').trim().split(/\s+/)
  const s = row('stable')
  const c = row('canary')
  t.equal(s[2], '70', 'stable weight')
  t.equal(c[2], '30', 'canary weight')
  t.ok(Number(s[3]) > 0 && Number(c[3]) > 0, `both versions have req/s (${s[3]}, ${c[3]})`)
  t.equal(s[4], '0.00', 'stable has no 5xx')
  t.equal(c[4], '100.00', 'every canary response is a 500')
  t.ok(Number(s[5]) > 0 && Number(s[6]) >= Number(s[5]), 'p50 ≤ p99, in ms')
  t.match(r.stdout, /process: event-loop lag p99 /)
})

t.test('canaryd top --once against nothing fails with a message; bad flags exit 2', { skip: existsSync(cli) ? false : 'dist/cli.js missing' }, async (t) => {
  const down = await run(['top', '--once', '--interval', '100', '--admin', 'http://127.0.0.1:1'])
  t.equal(down.code, 1)
  t.match(down.stderr, /^canaryd top: /)
  const bad = await run(['top', '--interval', 'soon'])
  t.equal(bad.code, 2)
  t.match(bad.stderr, /--interval must be/)
})
