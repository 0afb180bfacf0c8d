/**
 * `POST /api/v1/routes/{route}/rollout?dryRun=true` and YAML plans (issue 18:
 * the dashboard's Validate and its paste-a-plan box). A dry run answers what
 * a start would — the normalized plan and its warnings, or the very same
 * error — and changes nothing; a YAML body is plain data with hard limits
 * (aliases, duplicate keys, tags, size).
 */
import { existsSync, readFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { send, type Reply } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstreams } from '../helpers/upstream.js'
import { sleep, until } from '../helpers/until.js'

const R = '/api/v1/routes/web/rollout'

/** A plan a start accepts on the two-version route (docs/rollouts.md's keys). */
const PLAN = { canary: 'canary', steps: [10, 50], intervalMs: 60000 }

const PLAN_YAML = `# the dashboard's pasted plan
canary: canary
steps:
  - 10
  - 50
intervalMs: 60000
`

async function setup (t: Test, weights: [number, number] = [100, 0]): Promise<TestProxy> {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const p = await startProxy(testConfig([twoVersionRoute(up.stable!.origin, up.canary!.origin, weights)]))
  t.teardown(async () => { await p.close() })
  return p
}

/** POSTs a plan; `contentType` null sends none. */
async function post (p: TestProxy, query: string, body: string | Buffer, contentType: string | null = 'application/json', path = R): Promise<Reply> {
  return await send(`${p.adminUrl}${path}${query}`, { method: 'POST', headers: contentType === null ? {} : { 'content-type': contentType }, body })
}

function err (r: Reply): { code: string; message: string } {
  return r.json<{ error: { code: string; message: string } }>().error
}

/** What a dry run must leave as it was: the route's weights, the rollout (none), the audit log, the state file. */
async function snapshot (p: TestProxy): Promise<unknown> {
  const file = p.app.config.state.file
  const rollout = await send(`${p.adminUrl}${R}`)
  return {
    routes: (await send(`${p.adminUrl}/api/v1/routes`)).json(),
    rollout: { status: rollout.status, body: rollout.json() },
    audit: (await send(`${p.adminUrl}/api/v1/audit`)).json(),
    file: existsSync(file) ? readFileSync(file, 'utf8') : null
  }
}

t.test('a dry run with a valid JSON plan answers the normalized plan and changes nothing', async (t) => {
  const p = await setup(t)
  const before = await snapshot(p)
  t.match(before, { rollout: { status: 404, body: { error: { code: 'CANARYD_ERR_NO_ROLLOUT' } } } }, 'no rollout before')
  const r = await post(p, '?dryRun=true', JSON.stringify(PLAN))
  t.equal(r.status, 200)
  t.match(r.headers['content-type'], /^application\/json/)
  const body = r.json<{ valid: boolean; route: string; plan: Record<string, unknown>; warnings: string[] }>()
  t.equal(body.valid, true)
  t.equal(body.route, 'web')
  t.same(body.warnings, [])
  t.match(body.plan, { canary: 'canary', stable: 'stable', steps: [10, 50], intervalMs: 60000, promotion: 'auto', analysis: { minRequests: 100, maxFailedChecks: 3 } }, 'defaults filled in, stable named')
  t.same(await snapshot(p), before, 'no rollout, same weights, same audit log, same state file')
  t.same((await send(`${p.adminUrl}/api/v1/routes/web`)).json<{ versions: Array<{ weight: number }> }>().versions.map((v) => v.weight), [100, 0], 'weights unchanged')
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'GET …/rollout stays 404')
  t.same((await send(`${p.adminUrl}/api/v1/audit`)).json<{ entries: unknown[] }>().entries, [], 'the audit log gained nothing')

  // the plan a dry run shows is the plan a start runs
  const started = await post(p, '', JSON.stringify(PLAN))
  t.equal(started.status, 201)
  const view = (await send(`${p.adminUrl}${R}`)).json<{ plan: Record<string, unknown> }>()
  t.same(view.plan, body.plan, 'the started rollout runs the plan the dry run answered')
})

t.test('YAML plans: application/yaml, text/yaml, application/x-yaml, text/x-yaml — the same answer as JSON', async (t) => {
  const p = await setup(t)
  const json = (await post(p, '?dryRun=true', JSON.stringify(PLAN))).json()
  const before = await snapshot(p)
  for (const ct of ['application/yaml', 'text/yaml', 'application/x-yaml', 'text/x-yaml', 'application/yaml; charset=utf-8', 'Application/YAML']) {
    const r = await post(p, '?dryRun=true', PLAN_YAML, ct)
    t.equal(r.status, 200, `${ct}: 200`)
    t.same(r.json(), json, `${ct}: the same normalized plan as the JSON one`)
  }
  const flow = await post(p, '?dryRun=true', '{canary: canary, steps: [10, 50], intervalMs: 60000}', 'application/yaml')
  t.same(flow.json(), json, 'flow style')
  t.same((await post(p, '?dryRun=true', JSON.stringify(PLAN), 'application/yaml')).json(), json, 'JSON is YAML too')
  t.equal((await post(p, '?dryRun=true', 'canary: canary\nsteps: [10, 50]\nanalysis: &a {minRequests: 10}\nwebhooks: []\n', 'application/yaml')).status, 200, 'an anchor without aliases is fine')
  t.same(await snapshot(p), before, 'nothing changed')
})

t.test('an invalid plan is 400 CANARYD_ERR_INVALID_PLAN naming the key — the same message with and without dryRun', async (t) => {
  const p = await setup(t)
  const before = await snapshot(p)
  const cases: Array<[string, string, string, RegExp]> = [
    ['steps not increasing', JSON.stringify({ ...PLAN, steps: [50, 10] }), 'application/json', /steps\[1\]/],
    ['unknown key (interval)', JSON.stringify({ canary: 'canary', steps: [10], interval: 60000 }), 'application/json', /interval: unknown key/],
    ['no steps', JSON.stringify({ canary: 'canary' }), 'application/json', /steps/],
    ['unknown canary', JSON.stringify({ ...PLAN, canary: 'beta' }), 'application/json', /canary: "beta" is not a version/],
    ['intervalMs too small', JSON.stringify({ ...PLAN, intervalMs: 5 }), 'application/json', /intervalMs/],
    ['YAML: unknown key', 'canary: canary\nsteps: [10, 50]\nintervall: 5\n', 'application/yaml', /intervall: unknown key/],
    ['YAML: a step as text', 'canary: canary\nsteps: [10, fifty]\n', 'text/yaml', /steps\[1\]/],
    ['YAML: analysis.minRequests negative', 'canary: canary\nsteps: [10]\nanalysis:\n  minRequests: -1\n', 'application/yaml', /analysis\.minRequests/]
  ]
  for (const [name, body, ct, key] of cases) {
    const dry = await post(p, '?dryRun=true', body, ct)
    t.equal(dry.status, 400, `${name}: dry run 400`)
    t.equal(err(dry).code, 'CANARYD_ERR_INVALID_PLAN', `${name}: code`)
    t.match(err(dry).message, key, `${name}: names the key`)
    const real = await post(p, '', body, ct)
    t.equal(real.status, 400, `${name}: start 400`)
    t.same(err(real), err(dry), `${name}: the same error as a start`)
  }
  t.same(await snapshot(p), before, 'nothing changed')
})

t.test('a dry run answers the other errors a start would: unknown route, running rollout, bad canaryUpstream; and its warnings', async (t) => {
  const p = await setup(t, [90, 10])
  const nope = await post(p, '?dryRun=true', JSON.stringify(PLAN), 'application/json', '/api/v1/routes/nope/rollout')
  t.equal(nope.status, 404)
  t.equal(err(nope).code, 'CANARYD_ERR_ROUTE_NOT_FOUND')
  const up = await post(p, '?dryRun=true&canaryUpstream=ftp://x', JSON.stringify(PLAN))
  t.equal(up.status, 400)
  t.equal(err(up).code, 'CANARYD_ERR_INVALID_UPSTREAM')
  const busy = await post(p, '?dryRun=true&canaryUpstream=http://127.0.0.1:1', JSON.stringify(PLAN))
  t.equal(busy.status, 409, 'canaryUpstream while the canary has weight')
  t.equal(err(busy).code, 'CANARYD_ERR_ROLLOUT_CONFLICT')
  const warned = await post(p, '?dryRun=true&fromStart=true', JSON.stringify(PLAN))
  t.equal(warned.status, 200)
  t.match(warned.json<{ warnings: string[] }>().warnings, [/fromStart: canary had 10%/], 'the fromStart warning a start would give')
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'still no rollout')

  t.equal((await post(p, '', JSON.stringify(PLAN))).status, 201, 'a real start')
  const state = (await send(`${p.adminUrl}${R}`)).body.toString()
  const conflict = await post(p, '?dryRun=true', JSON.stringify(PLAN))
  t.equal(conflict.status, 409, 'dry run while a rollout runs')
  t.equal(err(conflict).code, 'CANARYD_ERR_ROLLOUT_CONFLICT')
  t.equal(err(conflict).message, err(await post(p, '', JSON.stringify(PLAN))).message, 'the same message as a start')
  const yaml = await post(p, '?dryRun=true', PLAN_YAML, 'application/yaml')
  t.equal(yaml.status, 409, 'YAML too')
  const after = JSON.parse((await send(`${p.adminUrl}${R}`)).body.toString()) as Record<string, unknown>
  const was = JSON.parse(state) as Record<string, unknown>
  t.same({ ...after, updatedAt: null }, { ...was, updatedAt: null }, 'the running rollout is untouched')
})

t.test('dryRun must be true or false', async (t) => {
  const p = await setup(t)
  for (const v of ['maybe', '1', 'TRUE', 'yes', '']) {
    const r = await post(p, `?dryRun=${v}`, JSON.stringify(PLAN))
    t.equal(r.status, 400, `dryRun=${v}: 400`)
    t.equal(err(r).code, 'CANARYD_ERR_INVALID_QUERY', `dryRun=${v}: code`)
    t.match(err(r).message, /dryRun/, `dryRun=${v}: names it`)
  }
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'nothing started')
  const f = await post(p, '?dryRun=false', JSON.stringify(PLAN))
  t.equal(f.status, 201, 'dryRun=false is a start')
})

t.test('YAML alias bombs are refused at once and the server keeps answering', async (t) => {
  const p = await setup(t)
  // billion laughs: nine levels of nine aliases each
  const levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
  for (let i = 1; i < 9; i++) {
    const prev = String.fromCharCode(96 + i)
    const cur = String.fromCharCode(97 + i)
    levels.push(`${cur}: &${cur} [${Array(9).fill(`*${prev}`).join(',')}]`)
  }
  const laughs = `${levels.join('\n')}\n`
  // flat: 101 aliases of one scalar
  const flat = `x: &x 10\nsteps: [${Array(101).fill('*x').join(', ')}]\ncanary: canary\n`
  // the same in a place the plan reads: 101 aliases of one mapping
  const deep = `h: &h {minRequests: 5}\nwebhooks: [${Array(101).fill('*h').join(', ')}]\ncanary: canary\nsteps: [10]\n`
  for (const [name, body] of [['billion laughs', laughs], ['101 aliases of a scalar', flat], ['101 aliases of a mapping', deep]] as const) {
    for (const q of ['?dryRun=true', '']) {
      const start = performance.now()
      const r = await post(p, q, body, 'application/yaml')
      const ms = performance.now() - start
      t.equal(r.status, 400, `${name}${q}: 400`)
      t.match(err(r).message, /alias/i, `${name}${q}: says why`)
      t.ok(ms < 1000, `${name}${q}: answered in ${Math.round(ms)} ms`)
    }
  }
  t.equal((await send(`${p.adminUrl}/healthz`)).status, 200, 'the admin server still answers')
  t.equal((await post(p, '?dryRun=true', PLAN_YAML, 'application/yaml')).status, 200, 'and takes a good plan')
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'nothing started')
})

t.test('YAML with duplicate keys is 400', async (t) => {
  const p = await setup(t)
  for (const body of ['canary: canary\ncanary: stable\nsteps: [10]\n', 'canary: canary\nsteps: [10]\nanalysis:\n  minRequests: 5\n  minRequests: 500\n']) {
    const r = await post(p, '?dryRun=true', body, 'application/yaml')
    t.equal(r.status, 400)
    t.equal(err(r).code, 'CANARYD_ERR_INVALID_YAML')
    t.match(err(r).message, /unique/i, 'says the keys must be unique')
    t.equal((await post(p, '', body, 'application/yaml')).status, 400, 'a start too')
  }
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'nothing started')
})

t.test('YAML custom tags (!!js/function, !foo, !!binary …) are never run: refused or read as plain data', async (t) => {
  const p = await setup(t)
  const g = globalThis as Record<string, unknown>
  delete g.__canarydYamlPwned
  for (const body of [
    'canary: !!js/function "function () { globalThis.__canarydYamlPwned = true; return \'canary\' }"\nsteps: [10]\n',
    'canary: !!js/function >\n  function () { globalThis.__canarydYamlPwned = true }\nsteps: [10]\n',
    'canary: canary\nsteps: !!js/undefined [10]\n',
    'canary: !foo canary\nsteps: [10, 50]\n',
    '!!js/regexp /x/: 1\ncanary: canary\nsteps: [10]\n',
    'canary: canary\nsteps: [10]\nwebhooks: [!<tag:yaml.org,2002:js/function> "function () { globalThis.__canarydYamlPwned = true }"]\n'
  ]) {
    const r = await post(p, '?dryRun=true', body, 'application/yaml')
    t.ok(r.status === 400 || r.status === 200, `${JSON.stringify(body.slice(0, 40))}: ${r.status}`)
    if (r.status === 200) {
      // read as plain data: the tagged scalar is the string it holds, nothing more
      t.notMatch(r.body.toString(), /"function|\[Function/, 'no function in the plan')
    } else {
      t.match(err(r).code, /^CANARYD_ERR_INVALID_(PLAN|JSON)$/)
    }
  }
  t.equal(g.__canarydYamlPwned, undefined, 'no tagged function ever ran')
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'nothing started')
})

t.test('a YAML custom tag writes nothing outside the logger (yaml\'s TAG_RESOLVE_FAILED process warning)', async (t) => {
  const p = await setup(t)
  const warnings: string[] = []
  const onWarning = (w: Error): void => { warnings.push(`${w.name}: ${w.message.split('\n', 1)[0]!}`) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  for (let i = 0; i < 3; i++) await post(p, '?dryRun=true', `canary: !foo${i} canary\nsteps: [10]\n`, 'application/yaml')
  await sleep(50)
  t.same(warnings, [], 'a client\'s request emits no process warning (each would print the client\'s text on stderr, outside the JSON log)')
})

t.test('a YAML body that is not a mapping is 400', async (t) => {
  const p = await setup(t)
  for (const body of ['hello\n', '- canary\n- 10\n', '42\n', '~\n', '"canary: canary"\n', '--- |\n  canary: canary\n']) {
    const r = await post(p, '?dryRun=true', body, 'application/yaml')
    t.equal(r.status, 400, `${JSON.stringify(body)}: 400`)
    t.match(err(r).code, /^CANARYD_ERR_INVALID_(PLAN|JSON|BODY)$/, `${JSON.stringify(body)}: code`)
  }
  const empty = await post(p, '?dryRun=true', '\n  \n', 'application/yaml')
  t.equal(empty.status, 400, 'an empty body')
  const two = await post(p, '?dryRun=true', `${PLAN_YAML}---\n${PLAN_YAML}`, 'application/yaml')
  t.equal(two.status, 400, 'two documents')
  const broken = await post(p, '?dryRun=true', 'canary: [canary\nsteps: {', 'application/yaml')
  t.equal(broken.status, 400, 'not YAML')
  t.equal(err(broken).code, 'CANARYD_ERR_INVALID_YAML')
  t.match(err(broken).message, /not valid YAML/)
})

t.test('other media types are 415 CANARYD_ERR_UNSUPPORTED_MEDIA_TYPE', async (t) => {
  const p = await setup(t)
  for (const ct of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'text/html', 'application/yamlx', null]) {
    for (const q of ['?dryRun=true', '']) {
      const r = await post(p, q, PLAN_YAML, ct)
      t.equal(r.status, 415, `${String(ct)}${q}: 415`)
      t.equal(err(r).code, 'CANARYD_ERR_UNSUPPORTED_MEDIA_TYPE', `${String(ct)}${q}: code`)
    }
  }
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'nothing started')
})

t.test('a YAML plan over 64 KiB is 413', async (t) => {
  const p = await setup(t)
  const big = `${PLAN_YAML}# ${'x'.repeat(70 * 1024)}\n`
  for (const q of ['?dryRun=true', '']) {
    const r = await post(p, q, big, 'application/yaml')
    t.equal(r.status, 413, `${q}: 413`)
    t.equal(err(r).code, 'CANARYD_ERR_PAYLOAD_TOO_LARGE')
  }
  const justUnder = `${PLAN_YAML}# ${'x'.repeat(60 * 1024)}\n`
  t.equal((await post(p, '?dryRun=true', justUnder, 'application/yaml')).status, 200, 'under the limit is fine')
  t.equal((await send(`${p.adminUrl}${R}`)).status, 404, 'nothing started')
})

t.test('a real start with a YAML body is 201 and the rollout runs to promotion with traffic', async (t) => {
  const p = await setup(t)
  const yaml = `canary: canary
steps: [10, 50, 100]
intervalMs: 300
analysis:
  minRequests: 20
  maxFailedChecks: 2
  successRate: {min: 95}
  baseline: {maxErrorRateRatio: 2, maxLatencyP99Ratio: 3}
promotion: auto
`
  const r = await post(p, '', yaml, 'application/yaml')
  t.equal(r.status, 201)
  t.match(r.json(), { state: 'progressing', canary: 'canary', weight: 10, warnings: [] })
  t.same((await send(`${p.adminUrl}/api/v1/routes/web`)).json<{ versions: Array<{ weight: number }> }>().versions.map((v) => v.weight), [90, 10], 'the first step is applied')
  const pool = new Pool(p.url, { connections: 2 })
  t.teardown(async () => { await pool.close() })
  let state = 'progressing'
  let sent = 0
  const deadline = Date.now() + 20_000
  const client = async (): Promise<void> => {
    for (let i = 0; i < 20_000 && state === 'progressing' && Date.now() < deadline; i++) {
      const res = await pool.request({ path: '/', method: 'GET', headers: { 'x-user-id': `u${sent++}` }, headersTimeout: 10_000 })
      await res.body.dump()
      await sleep(2)
    }
  }
  const clients = [client(), client()]
  await until('the rollout ends', async () => {
    state = (await send(`${p.adminUrl}${R}`)).json<{ state: string }>().state
    return state !== 'progressing'
  }, 20_000, 200).catch(() => {})
  state = 'done'
  await Promise.all(clients)
  const view = (await send(`${p.adminUrl}${R}`)).json<{ state: string; weight: number; checks: Array<{ verdict: string }> }>()
  t.equal(view.state, 'promoted', `promoted after ${sent} requests`)
  t.equal(view.weight, 100)
  t.ok(view.checks.some((c) => c.verdict === 'pass'), 'checks passed')
})
