import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { CLI, ensureBuilt, runCli as cli } from '../helpers/cli.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

ensureBuilt()

t.test('status and weights against a running admin server', async (t) => {
  const token = 'cli-test-token-123456'
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin)], { admin: { host: '127.0.0.1', port: 0, token } }))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  const admin = ['--admin', p.adminUrl]

  const st = await cli(['status', ...admin, '--token', token])
  t.equal(st.code, 0, st.stderr)
  t.match(st.stdout, /ROUTE\s+VERSION\s+WEIGHT\s+UPSTREAM\s+ROLLOUT/)
  t.match(st.stdout, new RegExp(`web\\s+stable\\s+90%\\s+${stable.origin}\\s+-`))
  t.match(st.stdout, new RegExp(`canary\\s+10%\\s+${canary.origin}`))

  const w = await cli(['weights', 'web', 'stable=75.5', 'canary=24.5', '--reason', 'from the CLI', ...admin], { CANARYD_ADMIN_TOKEN: token })
  t.equal(w.code, 0, w.stderr)
  t.match(w.stdout, /stable 90% → 75\.5%, canary 10% → 24\.5%/)
  t.same(p.app.state.weights('web'), { stable: 75.5, canary: 24.5 })
  t.equal(p.app.state.audit(1)[0]?.reason, 'from the CLI')

  const one = await cli(['status', 'web'], { CANARYD_ADMIN_URL: p.adminUrl, CANARYD_ADMIN_TOKEN: token })
  t.equal(one.code, 0, one.stderr)
  t.match(one.stdout, /stable\s+75\.5%/)

  const bad = await cli(['weights', 'web', 'stable=80', 'canary=10', ...admin, '--token', token])
  t.equal(bad.code, 1, 'non-zero exit on an API error')
  t.match(bad.stderr, /weights sum to 90, must be 100 \(CANARYD_ERR_INVALID_WEIGHTS\)/, 'prints the server message')
  const noToken = await cli(['status', ...admin])
  t.equal(noToken.code, 1)
  t.match(noToken.stderr, /CANARYD_ERR_UNAUTHORIZED/)
  const missing = await cli(['status', 'nope', ...admin, '--token', token])
  t.equal(missing.code, 1)
  t.match(missing.stderr, /no route named "nope"/)
  const usage = await cli(['weights', 'web', 'stable:80', ...admin])
  t.equal(usage.code, 2)
  t.match(usage.stderr, /"stable:80" is not VERSION=PERCENT/)
  t.same(p.app.state.weights('web'), { stable: 75.5, canary: 24.5 }, 'rejected calls changed nothing')
  const down = await cli(['status', '--admin', 'http://127.0.0.1:9'])
  t.equal(down.code, 1)
  t.match(down.stderr, /cannot reach the admin API at http:\/\/127\.0\.0\.1:9/)
})

function configFile (admin: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-cli-'))
  const file = join(dir, 'c.json')
  writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    admin,
    state: { file: join(dir, 'state.json') },
    routes: [twoVersionRoute('http://127.0.0.1:9', 'http://127.0.0.1:9')]
  }))
  return file
}

t.test('serve refuses a non-loopback admin address without a token', async (t) => {
  const r = await cli(['serve', '--config', configFile({ host: '0.0.0.0', port: 0, token: '' })])
  t.not(r.code, 0)
  t.match(r.stderr, /admin\.host: 0\.0\.0\.0 is not a loopback address and no admin token is set/)
})

t.test('the built server serves the OpenAPI document from dist/', async (t) => {
  t.ok(existsSync('dist/admin/openapi.json'), 'tsc copied openapi.json')
  const child = spawn(process.execPath, [CLI, 'serve', '--config', configFile({ host: '127.0.0.1', port: 0, token: '' })], { env: { ...process.env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
  t.teardown(async () => { child.kill('SIGTERM'); await exited })
  const admin = await new Promise<string>((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /"admin":"([\d.]+:\d+)"[^\n]*canaryd started/.exec(out)
      if (m !== null) resolve(m[1]!)
    })
    child.on('close', () => { reject(new Error(`serve exited: ${out}`)) })
  })
  const r = await send(`http://${admin}/api/v1/openapi.json`)
  t.equal(r.status, 200)
  t.match(r.json(), { openapi: /^3\./, paths: { '/api/v1/routes/{route}/weights': { put: {} } } })
})
