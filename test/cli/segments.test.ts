import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { CLI, ensureBuilt, runCli } from '../helpers/cli.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { adminCall } from '../helpers/reload.js'
import { startUpstreams, type TestUpstream } from '../helpers/upstream.js'

// Issue 15: `canaryd segments ROUTE [--set FILE|-]` and `canaryd rollout
// start ROUTE --from-start --canary-upstream URL[,URL]`, the built CLI run
// as users run it against a real App in this process.

ensureBuilt()

interface Segment { name: string; match: Record<string, unknown>; version?: string; weights?: Record<string, number> }
interface AuditEntry { route: string; reason: string | null; source: string; segments?: { previous: Segment[]; next: Segment[] }; upstreams?: Record<string, { previous: string | string[]; next: string | string[] }>; weights: Record<string, number> }

const STAFF = { name: 'staff', match: { header: { 'x-employee': 'true' } }, version: 'canary' }
const STAFF_NORMALISED = { name: 'staff', match: { header: { 'x-employee': ['true'] } }, version: 'canary' }
const KR = { name: 'kr', match: { header: { 'cf-ipcountry': ['KR'] } }, weights: { stable: 50, canary: 50 } }

async function proxy (t: Test, weights: [number, number] = [100, 0], segments: unknown[] = [STAFF]): Promise<{ p: TestProxy; u: Record<string, TestUpstream> }> {
  const u = await startUpstreams(t, ['stable', 'canary', 'next1', 'next2'])
  const p = await startProxy(testConfig([twoVersionRoute(u.stable!.origin, u.canary!.origin, weights, { segments })]))
  t.teardown(async () => { await p.close() })
  return { p, u }
}

function tempFile (name: string, text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'canaryd-seg-')), name)
  writeFileSync(file, text)
  return file
}

/** Runs the CLI with `input` on its stdin (runCli gives it none), killed after 20 s. */
async function runWithStdin (args: string[], input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, LOG_LEVEL: 'silent', CANARYD_ADMIN_URL: '', CANARYD_ADMIN_TOKEN: '' }, stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  child.stdin.end(input)
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

async function segmentsOf (p: TestProxy): Promise<{ segments: Segment[]; runtime: boolean }> {
  return (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web/segments')).json<{ segments: Segment[]; runtime: boolean }>()
}

async function lastAudit (p: TestProxy): Promise<AuditEntry | undefined> {
  return (await adminCall(p.adminUrl, 'GET', '/api/v1/audit?limit=1')).json<{ entries: AuditEntry[] }>().entries[0]
}

t.test('canaryd segments ROUTE prints the segments; --json prints the API answer', async (t) => {
  const { p } = await proxy(t, [100, 0], [STAFF, KR])
  const r = await runCli(['segments', 'web', '--admin', p.adminUrl])
  t.equal(r.code, 0, r.stderr)
  const lines = r.stdout.trimEnd().split('\n')
  t.match(lines[0], /^route web: 2 segments, first match wins$/, r.stdout)
  t.match(lines[1], /^\s+staff\s+→ canary\s+when header \{"x-employee":\["true"\]\}$/)
  t.match(lines[2], /^\s+kr\s+→ stable 50%, canary 50%\s+when header \{"cf-ipcountry":\["KR"\]\}$/)
  t.equal(lines.length, 3)

  const json = await runCli(['segments', 'web', '--json'], { CANARYD_ADMIN_URL: p.adminUrl })
  t.equal(json.code, 0, json.stderr)
  t.same(JSON.parse(json.stdout), { route: 'web', segments: [STAFF_NORMALISED, KR], runtime: false }, 'admin URL from the environment; the API body')

  const { p: empty } = await proxy(t, [100, 0], [])
  const none = await runCli(['segments', 'web', '--admin', empty.adminUrl])
  t.equal(none.code, 0, none.stderr)
  t.match(none.stdout, /^route web: no segments/)
})

t.test('--set FILE: JSON and YAML, an array or {segments}; --reason audited', async (t) => {
  const { p } = await proxy(t)
  const admin = ['--admin', p.adminUrl]
  const files: Array<[string, string, Segment[]]> = [
    ['array.json', JSON.stringify([KR]), [KR]],
    ['object.json', JSON.stringify({ segments: [STAFF, KR] }), [STAFF_NORMALISED, KR]],
    ['array.yaml', '- name: office\n  match:\n    ip: ["127.0.0.0/8"]\n  version: canary\n', [{ name: 'office', match: { ip: ['127.0.0.0/8'] }, version: 'canary' }]],
    ['object.yml', 'segments:\n  - name: beta\n    match:\n      cookie:\n        plan: { regex: "^beta-" }\n    weights: { canary: 100 }\n', [{ name: 'beta', match: { cookie: { plan: { regex: '^beta-' } } }, weights: { stable: 0, canary: 100 } }]]
  ]
  for (const [name, text, want] of files) {
    const r = await runCli(['segments', 'web', '--set', tempFile(name, text), '--reason', `from ${name}`, ...admin])
    t.equal(r.code, 0, `${name}: ${r.stderr}`)
    t.match(r.stdout, /\(changed at runtime\)/, `${name}: prints the result`)
    t.same((await segmentsOf(p)).segments, want, `${name}: applied`)
    const entry = await lastAudit(p)
    t.match(entry, { route: 'web', reason: `from ${name}`, source: 'api' }, `${name}: audited with the reason`)
    t.same(entry?.segments?.next, want)
  }
  const office = await runCli(['segments', 'web', '--set', tempFile('o.json', JSON.stringify([{ name: 'office', match: { ip: ['127.0.0.0/8'] }, version: 'canary' }])), ...admin])
  t.equal(office.code, 0, office.stderr)
  const r = await send(`${p.url}/`)
  t.equal(r.headers['x-canaryd-version'], 'canary', 'traffic follows the CLI\'s change at once')

  const removed = await runCli(['segments', 'web', '--set', tempFile('none.json', '[]'), ...admin])
  t.equal(removed.code, 0, removed.stderr)
  t.match(removed.stdout, /no segments/)
  t.same((await segmentsOf(p)).segments, [])
})

t.test('--set - reads stdin (JSON or YAML); --json prints the PUT answer', async (t) => {
  const { p } = await proxy(t)
  const json = await runWithStdin(['segments', 'web', '--set', '-', '--json', '--admin', p.adminUrl], JSON.stringify({ segments: [KR] }))
  t.equal(json.code, 0, json.stderr)
  const body = JSON.parse(json.stdout) as { route: string; segments: Segment[]; runtime: boolean; previous: Segment[] }
  t.match(body, { route: 'web', segments: [KR], runtime: true, previous: [STAFF_NORMALISED] })
  t.same((await segmentsOf(p)).segments, [KR])
  const yaml = await runWithStdin(['segments', 'web', '--set', '-', '--admin', p.adminUrl], '- name: staff\n  match: { header: { x-employee: "true" } }\n  version: canary\n')
  t.equal(yaml.code, 0, yaml.stderr)
  t.same(await segmentsOf(p), { route: 'web', segments: [STAFF_NORMALISED], runtime: false }, 'the file\'s own segments again')
  const flow = await runWithStdin(['segments', 'web', '--set', '-', '--admin', p.adminUrl], '{segments: [{name: kr, match: {header: {cf-ipcountry: KR}}, weights: {stable: 50, canary: 50}}]}\n')
  t.equal(flow.code, 0, `YAML in flow style (not JSON) is YAML too: ${flow.stderr.trim()}`)
  t.same((await segmentsOf(p)).segments, [KR], 'applied')
})

t.test('usage errors exit 2, a refused change exits 1 with the server\'s message; nothing changes', async (t) => {
  const { p } = await proxy(t)
  const admin = ['--admin', p.adminUrl]
  const usage: Array<[string, string[], RegExp]> = [
    ['no route', ['segments', ...admin], /segments needs one ROUTE/],
    ['two routes', ['segments', 'web', 'api', ...admin], /segments needs one ROUTE/],
    ['--reason without --set', ['segments', 'web', '--reason', 'why', ...admin], /--reason goes with --set/],
    ['unreadable file', ['segments', 'web', '--set', join(tmpdir(), 'canaryd-no-such-dir', 'segments.json'), ...admin], /cannot read segments .*segments\.json/],
    ['unparsable file', ['segments', 'web', '--set', tempFile('bad.json', '[{"name": '), ...admin], /cannot read segments .*bad\.json/],
    ['unknown option', ['segments', 'web', '--sett', 'x', ...admin], /--sett|Unknown option/i]
  ]
  for (const [what, args, re] of usage) {
    const r = await runCli(args)
    t.equal(r.code, 2, `${what}: exit 2 (${r.stderr.trim().split('\n')[0]})`)
    t.match(r.stderr, re, `${what}: says why`)
    t.equal(r.stdout, '', `${what}: nothing on stdout`)
  }
  const bad = await runCli(['segments', 'web', '--set', tempFile('cidr.json', JSON.stringify([{ name: 'x', match: { ip: ['10.0.0.0/33'] }, version: 'canary' }])), ...admin])
  t.equal(bad.code, 1, 'the server\'s 400: exit 1')
  t.match(bad.stderr, /segments\[0\]\.match\.ip\[0\]/, `the server's message names the key (${bad.stderr.trim()})`)
  t.match(bad.stderr, /CANARYD_ERR_INVALID_SEGMENTS/)
  const missing = await runCli(['segments', 'nope', ...admin])
  t.equal(missing.code, 1, 'unknown route: exit 1')
  t.match(missing.stderr, /CANARYD_ERR_ROUTE_NOT_FOUND/)
  t.same(await segmentsOf(p), { route: 'web', segments: [STAFF_NORMALISED], runtime: false }, 'nothing changed')
})

interface RolloutBody { state: string; weight: number; startedFrom: { weight: number; fromStart: boolean } | null; step: number }

t.test('rollout start --canary-upstream points the canary at the new build in the same audited change', async (t) => {
  const { p, u } = await proxy(t)
  const plan = tempFile('plan.json', JSON.stringify({ steps: [5, 50], intervalMs: 3_600_000 }))
  const r = await runCli(['rollout', 'start', 'web', '--plan', plan, '--canary-upstream', `${u.next1!.origin}, ${u.next2!.origin}`, '--json', '--admin', p.adminUrl])
  t.equal(r.code, 0, r.stderr)
  t.match(JSON.parse(r.stdout), { state: 'progressing', canary: 'canary', weight: 5 }, 'canary left out of the plan: the route is stable + canary')
  const view = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web')).json<{ versions: Array<{ name: string; upstream: string | string[]; weight: number }> }>()
  t.same(view.versions.find((v) => v.name === 'canary'), { name: 'canary', upstream: [u.next1!.origin, u.next2!.origin], weight: 5, runtimeUpstream: true }, 'the canary serves the new build at the first step')
  const entry = await lastAudit(p)
  t.match(entry, { route: 'web', source: 'rollout', weights: { stable: 95, canary: 5 } }, 'one audit entry for weights and upstream')
  t.same(entry?.upstreams?.canary?.next, [u.next1!.origin, u.next2!.origin])
  t.equal(entry?.upstreams?.canary?.previous, u.canary!.origin)
  const served = new Set<string>()
  for (let i = 0; i < 20; i++) served.add(String((await send(`${p.url}/`, { headers: { 'x-canary': 'canary', 'x-user-id': `c-${i}` } })).headers['x-upstream']))
  t.same([...served].sort(), ['next1', 'next2'], 'traffic for the canary goes to the new build')
})

t.test('rollout start --canary-upstream is refused while the canary has weight; --from-start is sent', async (t) => {
  const { p, u } = await proxy(t, [70, 30], [])
  const plan = tempFile('plan.yaml', 'steps: [5, 25, 50]\nintervalMs: 3600000\n')
  const refused = await runCli(['rollout', 'start', 'web', '--plan', plan, '--canary-upstream', u.next1!.origin, '--admin', p.adminUrl])
  t.equal(refused.code, 1, 'the server refuses: exit 1')
  t.match(refused.stderr, /409 CANARYD_ERR_ROLLOUT_CONFLICT: .*canaryUpstream/)
  t.same((await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web')).json<{ versions: Array<{ name: string; upstream: string }> }>().versions.map((v) => v.upstream), [u.stable!.origin, u.canary!.origin], 'upstream unchanged')

  const next = await runCli(['rollout', 'start', 'web', '--plan', plan, '--json', '--admin', p.adminUrl])
  t.equal(next.code, 0, next.stderr)
  const body = JSON.parse(next.stdout) as RolloutBody
  t.match(body, { weight: 50, step: 3, startedFrom: { weight: 30, fromStart: false } }, 'without --from-start: the first step >= 30')
  t.equal((await adminCall(p.adminUrl, 'POST', '/api/v1/routes/web/rollout/abort')).status, 200)
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/weights', { weights: { stable: 70, canary: 30 } })).status, 200)

  const from = await runCli(['rollout', 'start', 'web', '--plan', plan, '--from-start', '--json', '--admin', p.adminUrl])
  t.equal(from.code, 0, from.stderr)
  t.match(JSON.parse(from.stdout), { weight: 5, step: 1, startedFrom: { weight: 30, fromStart: true } }, '--from-start: step 1, recorded')
  t.same((await lastAudit(p))?.weights, { stable: 95, canary: 5 }, 'the weights moved back to step 1')
  const text = await runCli(['rollout', 'status', 'web', '--admin', p.adminUrl])
  t.match(text.stdout, /canary canary at 5%\s+step 1\/4 \(5 → 25 → 50 → 100\)/)
})

t.test('--from-start and --canary-upstream on another action are usage errors', async (t) => {
  const { p } = await proxy(t)
  for (const args of [['status', 'web', '--canary-upstream', 'http://127.0.0.1:9'], ['abort', 'web', '--from-start'], ['pause', 'web', '--canary-upstream', 'http://127.0.0.1:9']]) {
    const r = await runCli(['rollout', ...args, '--admin', p.adminUrl])
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`)
    t.match(r.stderr, /--from-start and --canary-upstream go with rollout start/)
  }
  const badFlag = await adminCall(p.adminUrl, 'POST', '/api/v1/routes/web/rollout?fromStart=yes', { steps: [10] })
  t.equal(badFlag.status, 400, 'the API refuses fromStart=yes')
  t.match(badFlag.json(), { error: { code: 'CANARYD_ERR_INVALID_QUERY', message: /fromStart/ } })
  const badUpstream = await adminCall(p.adminUrl, 'POST', `/api/v1/routes/web/rollout?canaryUpstream=${encodeURIComponent('ftp://files.test')}`, { steps: [10] })
  t.equal(badUpstream.status, 400, 'and a bad canaryUpstream')
  t.match(badUpstream.json(), { error: { code: 'CANARYD_ERR_INVALID_UPSTREAM', message: /ftp:\/\/files\.test/ } })
  t.equal((await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web/rollout')).status, 404, 'no rollout was started or touched')
})

t.test('formatRollout shows segment steps and the phase', async (t) => {
  const { p } = await proxy(t, [100, 0], [STAFF, KR])
  const plan = tempFile('plan.json', JSON.stringify({ steps: [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 60 }, 10, 50], intervalMs: 3_600_000 }))
  const r = await runCli(['rollout', 'start', 'web', '--plan', plan, '--admin', p.adminUrl])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /step 1\/5 \(staff:100 → kr:60 → 10 → 50 → 100\)/, r.stdout)
  t.match(r.stdout, /^segments: staff 100%$/m)
  const shadow = await proxy(t, [100, 0], [])
  const sp = tempFile('shadow.json', JSON.stringify({ steps: [10], intervalMs: 3_600_000, shadow: { percent: 10, durationMs: 600_000 } }))
  const s = await runCli(['rollout', 'start', 'web', '--plan', sp, '--admin', shadow.p.adminUrl])
  t.equal(s.code, 0, s.stderr)
  t.match(s.stdout, /phase shadow/)
})
