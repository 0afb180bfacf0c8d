import { readFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { adminCall, fileProxy, postReload, routeFile, until } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 15, black-box: GET/PUT /api/v1/routes/{route}/segments on a real
// App: shapes, validation (400 naming the key), 404, removal, persistence
// across a restart, audit, reload (kept unless the file changes the
// segments) and traffic following the change at once.

interface Segment { name: string; match: Record<string, unknown>; version?: string; weights?: Record<string, number> }
interface SegmentsBody { route: string; segments: Segment[]; runtime: boolean; previous?: Segment[]; auditId?: number }
interface ErrorBody { error: { code: string; message: string } }
interface AuditEntry { id: number; route: string; reason: string | null; source: string; weights: Record<string, number>; segments?: { previous: Segment[]; next: Segment[] } }

/** A config segment: staff (header x-employee: true) pinned to canary. */
const STAFF = { name: 'staff', match: { header: { 'x-employee': 'true' } }, version: 'canary' }
/** STAFF as the API answers it: a single value becomes a list. */
const STAFF_NORMALISED = { name: 'staff', match: { header: { 'x-employee': ['true'] } }, version: 'canary' }

async function proxy (t: Test, segments?: unknown[]): Promise<TestProxy> {
  const u = await startUpstreams(t, ['stable', 'canary'])
  const p = await startProxy(testConfig([twoVersionRoute(u.stable!.origin, u.canary!.origin, [100, 0], segments === undefined ? {} : { segments })]))
  t.teardown(async () => { await p.close() })
  return p
}

async function getSegments (adminUrl: string, route = 'web'): Promise<{ status: number; body: SegmentsBody }> {
  const r = await adminCall(adminUrl, 'GET', `/api/v1/routes/${route}/segments`)
  return { status: r.status, body: r.json<SegmentsBody>() }
}

async function putSegments (adminUrl: string, body: unknown, route = 'web'): Promise<{ status: number; body: SegmentsBody & ErrorBody }> {
  const r = await adminCall(adminUrl, 'PUT', `/api/v1/routes/${route}/segments`, body)
  return { status: r.status, body: r.json<SegmentsBody & ErrorBody>() }
}

/** The version that served one request with `headers` (x-user-id set so stickiness is deterministic). */
async function versionFor (url: string, headers: Record<string, string> = {}): Promise<string> {
  const r = await send(`${url}/`, { headers: { 'x-user-id': 'u-1', ...headers } })
  return `${r.status}:${String(r.headers['x-canaryd-version'])}`
}

async function lastAudit (adminUrl: string): Promise<AuditEntry | undefined> {
  return (await adminCall(adminUrl, 'GET', '/api/v1/audit?limit=1')).json<{ entries: AuditEntry[] }>().entries[0]
}

t.test('GET and PUT: shapes, normalisation, audit, traffic follows at once', async (t) => {
  const p = await proxy(t, [STAFF])
  const got = await getSegments(p.adminUrl)
  t.equal(got.status, 200)
  t.same(got.body, { route: 'web', segments: [STAFF_NORMALISED], runtime: false }, 'the file\'s segments, normalised; not runtime')
  t.equal(await versionFor(p.url, { 'x-employee': 'true' }), '200:canary', 'staff gets the canary (config)')
  t.equal(await versionFor(p.url), '200:stable', 'everyone else stable (weights 100/0)')
  t.equal(await versionFor(p.url, { 'x-employee': 'true', 'x-canary': 'stable' }), '200:stable', 'the override header still beats segments')

  const next = [
    { name: 'office', match: { ip: ['127.0.0.0/8'], header: { 'X-Office': ['yes', 'oui'] } }, weights: { canary: 100 } },
    { name: 'beta', match: { cookie: { plan: { regex: '^beta-' } } }, version: 'canary' }
  ]
  const put = await putSegments(p.adminUrl, { segments: next, reason: 'office first' })
  t.equal(put.status, 200, JSON.stringify(put.body))
  const normalised = [
    { name: 'office', match: { ip: ['127.0.0.0/8'], header: { 'x-office': ['yes', 'oui'] } }, weights: { stable: 0, canary: 100 } },
    { name: 'beta', match: { cookie: { plan: { regex: '^beta-' } } }, version: 'canary' }
  ]
  t.same(put.body.segments, normalised, 'header names lower-cased; weights name every version')
  t.equal(put.body.route, 'web')
  t.equal(put.body.runtime, true, 'differs from the file: runtime')
  t.same(put.body.previous, [STAFF_NORMALISED], 'the previous segments')
  t.type(put.body.auditId, 'number')
  t.same((await getSegments(p.adminUrl)).body, { route: 'web', segments: normalised, runtime: true }, 'GET shows the new segments')
  const view = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web')).json<{ segments: Segment[] }>()
  t.same(view.segments, normalised, 'and so does the route view')

  t.equal(await versionFor(p.url, { 'x-employee': 'true' }), '200:stable', 'staff is gone: the very next request follows the new segments')
  t.equal(await versionFor(p.url, { 'x-office': 'oui' }), '200:canary', 'office (loopback client, header) gets the canary')
  t.equal(await versionFor(p.url, { 'x-office': 'no' }), '200:stable', 'both keys must hold')
  t.equal(await versionFor(p.url, { cookie: 'plan=beta-2' }), '200:canary', 'cookie regex')
  t.equal(await versionFor(p.url, { cookie: 'plan=gamma' }), '200:stable')

  const entry = await lastAudit(p.adminUrl)
  t.equal(entry?.id, put.body.auditId, 'the answer names the audit entry')
  t.match(entry, { route: 'web', reason: 'office first', source: 'api', weights: { stable: 100, canary: 0 } }, 'audited, weights untouched')
  t.same(entry?.segments, { previous: [STAFF_NORMALISED], next: normalised }, 'with the segments before and after')

  const back = await putSegments(p.adminUrl, { segments: [STAFF] })
  t.equal(back.status, 200)
  t.equal(back.body.runtime, false, 'the file\'s own segments again: no longer a runtime change')
  t.same(back.body.previous, normalised)
})

t.test('[] removes every segment', async (t) => {
  const p = await proxy(t, [STAFF])
  const r = await putSegments(p.adminUrl, { segments: [] })
  t.equal(r.status, 200, JSON.stringify(r.body))
  t.same(r.body.segments, [])
  t.equal(r.body.runtime, true, 'the file has segments: removing them is a runtime change')
  t.same((await getSegments(p.adminUrl)).body.segments, [])
  t.equal(await versionFor(p.url, { 'x-employee': 'true' }), '200:stable', 'staff no longer pinned')
  t.same((await lastAudit(p.adminUrl))?.segments, { previous: [STAFF_NORMALISED], next: [] })

  const none = await proxy(t)
  t.same((await getSegments(none.adminUrl)).body, { route: 'web', segments: [], runtime: false }, 'a route without segments')
  const again = await putSegments(none.adminUrl, { segments: [] })
  t.equal(again.status, 200)
  t.equal(again.body.runtime, false, '[] on a route whose file has none is the file\'s value')
})

t.test('validation: 400 CANARYD_ERR_INVALID_SEGMENTS naming the key; bad bodies; 404; nothing changes', async (t) => {
  const p = await proxy(t, [STAFF])
  const auditBefore = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit')).body.toString()
  const seg = (over: Record<string, unknown>): Record<string, unknown> => ({ name: 'x', match: { header: { 'x-a': '1' } }, version: 'canary', ...over })
  const invalid: Array<[string, unknown, RegExp]> = [
    ['bad CIDR', [seg({ match: { ip: ['10.0.0.0/8', '10.0.0.0/33'] } })], /segments\[0\]\.match\.ip\[1\]/],
    ['not an address', [seg({ match: { ip: ['office'] } })], /segments\[0\]\.match\.ip\[0\]/],
    ['backreference', [STAFF, seg({ match: { cookie: { plan: { regex: '(a)\\1' } } } })], /segments\[1\]\.match\.cookie\.plan\.regex: invalid RE2 pattern/],
    ['unknown version', [seg({ version: 'nope' })], /segments\[0\]\.version: unknown version "nope"/],
    ['unknown version in weights', [seg({ version: undefined, weights: { stable: 50, nope: 50 } })], /segments\[0\]\.weights\.nope/],
    ['weights not 100', [seg({ version: undefined, weights: { stable: 60, canary: 30 } })], /segments\[0\]\.weights: .*100/],
    ['duplicate name', [STAFF, { ...STAFF, version: 'stable' }], /segments\[1\]\.name: duplicate segment name "staff"/],
    ['version and weights', [seg({ weights: { canary: 100 } })], /segments\[0\]: set version \(pinned\) or weights, not both/],
    ['no match key', [seg({ match: {} })], /segments\[0\]\.match/],
    ['unknown match key', [seg({ match: { path: '/x' } })], /segments\[0\]\.match\.path: unknown key/],
    ['bad name', [seg({ name: 'no spaces' })], /segments\[0\]\.name/],
    ['not an array', { staff: STAFF }, /^segments: must be an array/]
  ]
  for (const [what, segments, re] of invalid) {
    const r = await putSegments(p.adminUrl, { segments })
    t.equal(r.status, 400, `${what}: 400`)
    t.equal(r.body.error?.code, 'CANARYD_ERR_INVALID_SEGMENTS', `${what}: code`)
    t.match(r.body.error?.message, re, `${what}: ${r.body.error?.message}`)
  }
  const bodies: Array<[string, unknown, RegExp]> = [
    ['unknown key', { segments: [], extra: 1 }, /"extra"/],
    ['missing segments', { reason: 'x' }, /"segments" is required/],
    ['not an object', [STAFF], /JSON object/]
  ]
  for (const [what, body, re] of bodies) {
    const r = await putSegments(p.adminUrl, body)
    t.equal(r.status, 400, `${what}: 400`)
    t.equal(r.body.error?.code, 'CANARYD_ERR_INVALID_BODY', `${what}: code`)
    t.match(r.body.error?.message, re, `${what}: ${r.body.error?.message}`)
  }
  const notJson = await send(`${p.adminUrl}/api/v1/routes/web/segments`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"segments": [' })
  t.equal(notJson.status, 400, 'unparsable JSON: 400')

  const getMissing = await getSegments(p.adminUrl, 'nope')
  t.equal(getMissing.status, 404)
  t.equal((getMissing.body as unknown as ErrorBody).error?.code, 'CANARYD_ERR_ROUTE_NOT_FOUND')
  const putMissing = await putSegments(p.adminUrl, { segments: [] }, 'nope')
  t.equal(putMissing.status, 404)
  t.equal(putMissing.body.error?.code, 'CANARYD_ERR_ROUTE_NOT_FOUND')

  t.same((await getSegments(p.adminUrl)).body, { route: 'web', segments: [STAFF_NORMALISED], runtime: false }, 'the segments are unchanged')
  t.equal((await adminCall(p.adminUrl, 'GET', '/api/v1/audit')).body.toString(), auditBefore, 'nothing audited')
  t.equal(await versionFor(p.url, { 'x-employee': 'true' }), '200:canary', 'traffic unchanged')
})

t.test('a runtime change survives a restart on the same state file', async (t) => {
  const u = await startUpstreams(t, ['stable', 'canary'])
  const config = testConfig([twoVersionRoute(u.stable!.origin, u.canary!.origin, [100, 0], { segments: [STAFF] })])
  const first = await startProxy(config)
  t.teardown(async () => { await first.close() })
  const next = [{ name: 'office', match: { ip: ['127.0.0.1'] }, version: 'canary' }]
  t.equal((await putSegments(first.adminUrl, { segments: next })).status, 200)
  const saved = JSON.parse(readFileSync(config.state.file, 'utf8')) as { routes: { web: { segments?: { value: unknown; config: unknown } } } }
  t.same(saved.routes.web.segments, { value: next, config: [STAFF_NORMALISED] }, 'the state file holds the runtime value and the file\'s value it replaced')
  await first.close()

  const second = await startProxy(config)
  t.teardown(async () => { await second.close() })
  t.same((await getSegments(second.adminUrl)).body, { route: 'web', segments: next, runtime: true }, 'restored after the restart')
  t.equal(await versionFor(second.url), '200:canary', 'and traffic follows it (loopback client in office)')
  t.equal(await versionFor(second.url, { 'x-canary': 'stable' }), '200:stable')
  t.same((await lastAudit(second.adminUrl))?.segments, { previous: [STAFF_NORMALISED], next }, 'the audit entry, with its segments, survives the restart')
})

t.test('reload: the runtime segments stay while the file keeps its segments, the file wins once it changes them', async (t) => {
  const u = await startUpstreams(t, ['stable', 'canary'])
  const versions = [{ name: 'stable', upstream: u.stable!.origin, weight: 100 }, { name: 'canary', upstream: u.canary!.origin, weight: 0 }]
  const p = await fileProxy(t, [routeFile('web', versions, { segments: [STAFF] })])
  const runtime = [{ name: 'office', match: { ip: ['127.0.0.0/8'] }, version: 'canary' }]
  t.equal((await putSegments(p.adminUrl, { segments: runtime })).status, 200)
  t.equal(await versionFor(p.url), '200:canary')

  // the file changes something else (a second route), not web's segments
  p.write([routeFile('web', versions, { segments: [STAFF] }), routeFile('api', versions, { match: { pathPrefix: '/api' } })])
  const r1 = await postReload(p.adminUrl)
  t.equal(r1.status, 200, r1.body.toString())
  t.same((await getSegments(p.adminUrl)).body, { route: 'web', segments: runtime, runtime: true }, 'kept across a reload that leaves the file\'s segments alone')
  t.equal(await versionFor(p.url), '200:canary', 'traffic still follows them')

  // now the file itself changes web's segments: the file is newer, it wins
  const fromFile = [{ name: 'kr', match: { header: { 'cf-ipcountry': ['KR'] } }, weights: { stable: 0, canary: 100 } }]
  p.write([routeFile('web', versions, { segments: fromFile })])
  const r2 = await postReload(p.adminUrl)
  t.equal(r2.status, 200, r2.body.toString())
  t.same((await getSegments(p.adminUrl)).body, { route: 'web', segments: fromFile, runtime: false }, 'the file\'s new segments, no runtime override')
  t.equal(await versionFor(p.url), '200:stable', 'the runtime office segment is gone')
  t.equal(await versionFor(p.url, { 'cf-ipcountry': 'KR' }), '200:canary', 'the file\'s kr segment applies')
  const saved = JSON.parse(readFileSync(p.stateFile, 'utf8')) as { routes: { web: { segments?: unknown } } }
  t.equal(saved.routes.web.segments, undefined, 'the override is gone from the state file too')
})

t.test('a segments change pauses a rollout in progress on the route', async (t) => {
  const p = await proxy(t, [STAFF])
  const start = await adminCall(p.adminUrl, 'POST', '/api/v1/routes/web/rollout', { canary: 'canary', steps: [5, 50], intervalMs: 3_600_000 })
  t.equal(start.status, 201, start.body.toString())
  t.equal((await putSegments(p.adminUrl, { segments: [] })).status, 200)
  const paused = await until(async () => (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web/rollout')).json<{ state: string }>().state === 'paused', 5000)
  t.ok(paused, 'the rollout paused: a human decides (resume or abort)')
})

t.test('a rollout\'s segment step shows in GET …/segments and moves that segment\'s users; abort restores the file\'s segments', async (t) => {
  const office = { name: 'office', match: { header: { 'x-office': ['yes'] } }, weights: { stable: 100, canary: 0 } }
  const p = await proxy(t, [STAFF, office])
  const start = await adminCall(p.adminUrl, 'POST', '/api/v1/routes/web/rollout', { steps: [{ segment: 'office', weight: 100 }, 10, 50], intervalMs: 3_600_000 })
  t.equal(start.status, 201, start.body.toString())
  t.match(start.json(), { canary: 'canary', weight: 0, segmentWeights: { office: 100 }, phase: 'steps' })
  const during = await getSegments(p.adminUrl)
  t.same(during.body.segments, [STAFF_NORMALISED, { ...office, weights: { stable: 0, canary: 100 } }], 'office at canary 100 %, staff untouched')
  t.equal(during.body.runtime, true)
  t.equal(await versionFor(p.url, { 'x-office': 'yes' }), '200:canary', 'office users on the canary')
  t.equal(await versionFor(p.url), '200:stable', 'everyone else still on stable')
  const entry = await lastAudit(p.adminUrl)
  t.match(entry, { source: 'rollout', weights: { stable: 100, canary: 0 } })
  t.same(entry?.segments?.next, during.body.segments, 'the rollout\'s segment change is audited')
  t.equal((await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web/rollout')).json<{ state: string }>().state, 'progressing', 'its own change does not pause it')

  const abort = await adminCall(p.adminUrl, 'POST', '/api/v1/routes/web/rollout/abort')
  t.equal(abort.status, 200, abort.body.toString())
  t.same((await getSegments(p.adminUrl)).body, { route: 'web', segments: [STAFF_NORMALISED, office], runtime: false }, 'back to the file\'s segments')
  t.equal(await versionFor(p.url, { 'x-office': 'yes' }), '200:stable', 'office users back on stable')
})
