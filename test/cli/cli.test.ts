import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { send } from '../helpers/http.js'
import { startUpstream } from '../helpers/upstream.js'

// The CLI is tested as users run it: the built dist/cli.js (`npm test` builds first).
const CLI = join(process.cwd(), 'dist/cli.js')
if (!existsSync(CLI)) spawnSync('npm', ['run', 'build'], { stdio: 'inherit' })
const run = (args: string[], env: Record<string, string> = {}): ReturnType<typeof spawnSync> =>
  spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, LOG_LEVEL: 'silent', ...env }, timeout: 60_000 })

t.test('--help and --version', async (t) => {
  const h = run(['--help'])
  t.equal(h.status, 0)
  t.match(String(h.stdout), /canaryd serve \[--config FILE\]/)
  t.match(String(h.stdout), /canaryd demo/)
  const v = run(['--version'])
  t.equal(v.status, 0)
  t.equal(String(v.stdout).trim(), (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version)
  for (const w of ['0', 'two', '-1', '1.5']) {
    const r = run(['serve', '--workers', w])
    t.equal(r.status, 2, `--workers ${w} is a usage error`)
    t.match(String(r.stderr), /--workers must be a whole number from 1 or "auto"|Option '--workers' argument is ambiguous/)
  }
  const bad = run(['frobnicate'])
  t.equal(bad.status, 2)
  t.match(String(bad.stderr), /unknown command "frobnicate"/)
})

t.test('an invalid config exits non-zero with one line naming the key and the reason', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-cli-'))
  const file = join(dir, 'bad.json')
  writeFileSync(file, JSON.stringify({ routes: [{ name: 'web', versions: [{ name: 'stable', upstream: 'http://127.0.0.1:1', weight: 70 }, { name: 'canary', upstream: 'http://127.0.0.1:2', weight: 10 }] }] }))
  const r = run(['serve', '--config', file])
  t.equal(r.status, 1)
  const lines = String(r.stderr).trim().split('\n')
  t.equal(lines.length, 1, 'one line')
  t.equal(lines[0], `canaryd: invalid config ${file}: routes[0].versions: weights sum to 80, must be 100`)
  const viaEnv = run(['serve'], { CANARYD_CONFIG: join(dir, 'missing.yaml') })
  t.equal(viaEnv.status, 1, 'CANARYD_CONFIG is read')
  t.match(String(viaEnv.stderr), /missing\.yaml.*ENOENT/)
})

t.test('serve: proxies real traffic and exits 0 on SIGTERM', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-cli-'))
  const file = join(dir, 'c.yaml')
  writeFileSync(file, [
    'listen: { host: 127.0.0.1, port: 0 }',
    'admin: { host: 127.0.0.1, port: 0 }',
    `state: { file: ${JSON.stringify(join(dir, 'state.json'))} }`,
    'routes:',
    '  - name: web',
    '    sticky: { keys: ["header:x-user-id"] }',
    '    versions:',
    `      - { name: stable, upstream: "${stable.origin}", weight: 50 }`,
    `      - { name: canary, upstream: "${canary.origin}", weight: 50 }`
  ].join('\n'))
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { env: { ...process.env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const started = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString()
      const line = out.split('\n').find((l) => l.includes('canaryd started'))
      if (line !== undefined) resolve(line)
    })
    child.on('exit', (code) => reject(new Error(`exited ${code}: ${out}`)))
  })
  const line = JSON.parse(await started) as { proxy: string; routes: Array<{ name: string }> }
  t.equal(line.routes[0]!.name, 'web', 'the start-up line lists the routes')
  const port = Number(line.proxy.split(':').at(-1))
  const seen = new Set<string>()
  for (let i = 0; i < 40; i++) {
    const r = await send(`http://127.0.0.1:${port}/`, { headers: { 'x-user-id': `u${i}` } })
    t.equal(r.status, 200)
    seen.add(String(r.headers['x-canaryd-version']))
  }
  t.same([...seen].sort(), ['canary', 'stable'], 'traffic is split')
  t.notMatch(out, /"msg":"access"/, 'no per-request log line at info by default')
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'exit 0 after SIGTERM')
})

t.test('demo --once shows the split and that every user stayed on one version', async (t) => {
  const r = run(['demo', '--once', '--no-story'])
  t.equal(r.status, 0, String(r.stderr))
  const out = String(r.stdout)
  t.match(out, /sent 3000 requests from 1000 users/)
  const m = /users on stable: (\d+) \([\d.]+%\)\s+users on canary: (\d+)/.exec(out)
  t.ok(m !== null, 'split line printed')
  const canary = Number(m?.[2])
  t.ok(canary > 60 && canary < 140, `about 10% of 1,000 users on canary (${canary})`)
  t.match(out, /every one of the 1000 users stayed on one version/)
  t.match(out, /anonymous: 100\/100/)
  t.match(out, /^dashboard: http:\/\/127\.0\.0\.1:\d+\/ui\//m, 'the dashboard URL')
})

t.test('a reader that closes early (`canaryd … | head -1`): exit 0, no EPIPE stack', async (t) => {
  for (const args of [['--help'], ['config', 'print', '--config', 'config/default.json']]) {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LOG_LEVEL: 'silent' } })
    // closed long before the child (≈ 0.4 s to start) writes a byte
    child.stdout.destroy()
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
    t.equal(code, 0, `${args.join(' ')}: exit 0`)
    t.notMatch(stderr, /EPIPE|Error/, `${args.join(' ')}: nothing on stderr (${stderr.slice(0, 80)})`)
  }
})
