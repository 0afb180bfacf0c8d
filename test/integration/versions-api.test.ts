import t, { type Test } from 'tap'
import { ensureBuilt, runCli as cli } from '../helpers/cli.js'
import { send } from '../helpers/http.js'
import { startLoad } from '../helpers/load.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { adminCall } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 13 D, black-box: PUT /api/v1/routes/{route}/versions/{version} and
// `canaryd versions set` point a version at new endpoints at runtime.

ensureBuilt()

interface VersionView { name: string; upstream: string | string[]; weight: number }
interface RouteView { name: string; versions: VersionView[] }
interface ErrorBody { error: { code: string; message: string } }
interface UpstreamAudit { route: string; version: string; reason: string | null; source: string; upstream: { previous: string | string[]; next: string | string[] } }

async function proxy (t: Test, stable: string, canary: string, extra: Record<string, unknown> = {}): Promise<TestProxy> {
  const p = await startProxy(testConfig([twoVersionRoute(stable, canary, [50, 50])], extra))
  t.teardown(async () => { await p.close() })
  return p
}

async function putUpstream (p: TestProxy, version: string, upstream: unknown, extra: Record<string, unknown> = {}, route = 'web'): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await adminCall(p.adminUrl, 'PUT', `/api/v1/routes/${route}/versions/${version}`, { upstream, ...extra })
  return { status: r.status, json: r.json() }
}

async function routeView (p: TestProxy): Promise<RouteView> {
  return (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web')).json<RouteView>()
}

/** Endpoints (`x-upstream`) that answered `n` requests pinned to `version` with the override header. */
async function pinned (url: string, version: string, n = 1): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i++) {
    const r = await send(`${url}/`, { headers: { 'x-canary': version, 'x-user-id': `pin-${i}` } })
    out.push(r.status === 200 && r.headers['x-canaryd-version'] === version ? String(r.headers['x-upstream']) : `status:${r.status}`)
  }
  return out
}

/** The version each of `n` users lands on. */
async function versionsOf (url: string, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i += 25) {
    out.push(...await Promise.all(Array.from({ length: Math.min(25, n - i) }, async (_, j) =>
      String((await send(`${url}/`, { headers: { 'x-user-id': `user-${i + j}` } })).headers['x-canaryd-version']))))
  }
  return out
}

const list = (x: string | string[] | undefined): string[] => x === undefined ? [] : Array.isArray(x) ? x : [x]

t.test('PUT a version\'s upstream: effective at once, shown by the route view, audited; users keep their version', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const p = await proxy(t, u.a!.origin, u.b!.origin)
  const usersBefore = await versionsOf(p.url, 200)
  t.same(await pinned(p.url, 'canary'), ['b'])

  const r = await putUpstream(p, 'canary', u.c!.origin, { reason: 'move canary' })
  t.equal(r.status, 200, JSON.stringify(r.json))
  t.same(await pinned(p.url, 'canary'), ['c'], 'the very next request goes to the new origin')
  const view = await routeView(p)
  t.same(r.json.route, view, 'the answer carries the route as GET /api/v1/routes/web shows it')
  t.match(view, { name: 'web', versions: [{ name: 'stable', upstream: u.a!.origin, weight: 50 }, { name: 'canary', upstream: u.c!.origin, weight: 50 }] }, 'one origin is shown as a string; weights untouched')
  const entry = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit?limit=1')).json<{ entries: UpstreamAudit[] }>().entries[0]
  t.match(entry, { route: 'web', version: 'canary', reason: 'move canary' }, 'the change is audited')
  t.same({ previous: list(entry?.upstream?.previous), next: list(entry?.upstream?.next) }, { previous: [u.b!.origin], next: [u.c!.origin] }, 'with the previous and next upstream')

  const two = await putUpstream(p, 'canary', [u.c!.origin, u.b!.origin])
  t.equal(two.status, 200, JSON.stringify(two.json))
  t.same((await routeView(p)).versions.find((v) => v.name === 'canary')?.upstream, [u.c!.origin, u.b!.origin], 'several origins are shown as an array')
  const spread = new Set(await pinned(p.url, 'canary', 40))
  t.same([...spread].sort(), ['b', 'c'], 'both endpoints serve the version')
  const previous = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit?limit=1')).json<{ entries: UpstreamAudit[] }>().entries[0]
  t.same(list(previous?.upstream?.next), [u.c!.origin, u.b!.origin])

  t.equal((await putUpstream(p, 'canary', [u.a!.origin])).status, 200)
  t.equal((await routeView(p)).versions.find((v) => v.name === 'canary')?.upstream, u.a!.origin, 'a one-element list is one origin')
  t.same(await pinned(p.url, 'canary', 5), ['a', 'a', 'a', 'a', 'a'])
  const usersAfter = await versionsOf(p.url, 200)
  t.equal(usersAfter.filter((v, i) => v !== usersBefore[i]).length, 0, 'no user changed version')
})

t.test('bad requests are refused with the right code and change nothing', async (t) => {
  const u = await startUpstreams(t, ['a', 'b'])
  const p = await proxy(t, u.a!.origin, u.b!.origin)
  const before = JSON.stringify(await routeView(p))
  const auditBefore = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit')).body.toString()

  for (const bad of ['ftp://files.test', 'http://127.0.0.1:1/some/path', 'not a url', 'http://127.0.0.1:99999']) {
    const r = await putUpstream(p, 'canary', bad)
    t.equal(r.status, 400, `${bad}: 400`)
    const err = (r.json as unknown as ErrorBody).error
    t.equal(err?.code, 'CANARYD_ERR_INVALID_UPSTREAM', `${bad}: code`)
    t.ok(err?.message.includes(bad), `${bad}: the message names it (${err?.message})`)
  }
  const inList = await putUpstream(p, 'canary', [u.b!.origin, 'http://127.0.0.1:1?q=1'])
  t.equal(inList.status, 400)
  t.match((inList.json as unknown as ErrorBody).error, { code: 'CANARYD_ERR_INVALID_UPSTREAM', message: /http:\/\/127\.0\.0\.1:1\?q=1/ }, 'one bad origin in a list is named')
  t.equal((await putUpstream(p, 'canary', [])).status, 400, 'an empty list is refused')
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/canary', {})).status, 400, 'a body without upstream is refused')

  const noRoute = await putUpstream(p, 'canary', u.a!.origin, {}, 'nope')
  t.equal(noRoute.status, 404)
  t.equal((noRoute.json as unknown as ErrorBody).error?.code, 'CANARYD_ERR_ROUTE_NOT_FOUND')
  const noVersion = await putUpstream(p, 'nope', u.a!.origin)
  t.equal(noVersion.status, 404)
  t.equal((noVersion.json as unknown as ErrorBody).error?.code, 'CANARYD_ERR_VERSION_NOT_FOUND')

  t.equal(JSON.stringify(await routeView(p)), before, 'the route is unchanged')
  t.equal((await adminCall(p.adminUrl, 'GET', '/api/v1/audit')).body.toString(), auditBefore, 'nothing audited')
  t.same(await pinned(p.url, 'canary'), ['b'], 'traffic unchanged')
})

t.test('the new upstream is persisted: a restart on the same state file and config keeps it', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const config = testConfig([twoVersionRoute(u.a!.origin, u.b!.origin, [70, 30])])
  const first = await startProxy(config)
  t.teardown(async () => { await first.close() })
  t.equal((await putUpstream(first, 'canary', [u.c!.origin, u.b!.origin])).status, 200)
  await first.close()

  const second = await startProxy(config)
  t.teardown(async () => { await second.close() })
  const view = await routeView(second)
  t.same(view.versions.map((v) => [v.name, v.upstream, v.weight]), [['stable', u.a!.origin, 70], ['canary', [u.c!.origin, u.b!.origin], 30]], 'the runtime upstream (and the weights) survive the restart')
  t.same([...new Set(await pinned(second.url, 'canary', 30))].sort(), ['b', 'c'], 'and traffic follows it')
})

t.test('switching a version\'s upstream 10 times under load fails no request', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd'])
  const p = await proxy(t, u.a!.origin, u.b!.origin)
  const load = startLoad(t, p.url)
  const targets: Array<string | string[]> = [u.c!.origin, [u.b!.origin, u.d!.origin], u.d!.origin, [u.c!.origin, u.b!.origin, u.d!.origin], u.b!.origin]
  const puts: number[] = []
  const wrong: string[] = []
  try {
    for (let i = 0; i < 10; i++) {
      const target = targets[i % targets.length]!
      puts.push((await putUpstream(p, 'canary', target)).status)
      const names = list(target).map((o) => Object.values(u).find((x) => x.origin === o)!.name)
      const got = (await pinned(p.url, 'canary'))[0]!
      if (!names.includes(got)) wrong.push(`${i}: ${got} not in ${names.join(',')}`)
      await load.between(25)
    }
  } finally {
    await load.stop()
  }
  t.same(puts, new Array(10).fill(200), 'every switch applied')
  t.same(wrong, [], 'right after each switch the version is served by its new endpoints')
  t.same([...load.statuses.keys()], ['200'], `all ${load.total} requests answered 200: ${JSON.stringify([...load.statuses])}`)
  t.ok(load.total >= 200, `traffic flowed during the switches (${load.total} requests)`)
})

t.test('canaryd versions set ROUTE VERSION --upstream URL[,URL]', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const token = 'versions-cli-token-123456'
  const p = await proxy(t, u.a!.origin, u.b!.origin, { admin: { host: '127.0.0.1', port: 0, token } })
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/canary', { upstream: u.c!.origin })).status, 401, 'the API needs the token')

  const ok = await cli(['versions', 'set', 'web', 'canary', '--upstream', `${u.c!.origin},${u.b!.origin}`, '--reason', 'from the CLI', '--admin', p.adminUrl, '--token', token])
  t.equal(ok.code, 0, ok.stderr)
  t.ok(ok.stdout.includes(u.c!.origin) && ok.stdout.includes(u.b!.origin), `prints the result (${ok.stdout.trim()})`)
  const view = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web', undefined, token)).json<RouteView>()
  t.same(view.versions.find((v) => v.name === 'canary')?.upstream, [u.c!.origin, u.b!.origin], 'applied')
  const entry = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit?limit=1', undefined, token)).json<{ entries: UpstreamAudit[] }>().entries[0]
  t.match(entry, { route: 'web', version: 'canary', reason: 'from the CLI' })

  const env = await cli(['versions', 'set', 'web', 'canary', '--upstream', u.a!.origin], { CANARYD_ADMIN_URL: p.adminUrl, CANARYD_ADMIN_TOKEN: token })
  t.equal(env.code, 0, env.stderr)
  t.same(await pinned(p.url, 'canary'), ['a'], 'admin address and token from the environment')

  const bad = await cli(['versions', 'set', 'web', 'canary', '--upstream', 'ftp://bad.test', '--admin', p.adminUrl, '--token', token])
  t.not(bad.code, 0, 'a bad URL exits non-zero')
  const lines = bad.stderr.trim().split('\n')
  t.equal(lines.length, 1, `one line: ${bad.stderr}`)
  t.match(lines[0], /ftp:\/\/bad\.test/, 'naming the bad URL')
  const missing = await cli(['versions', 'set', 'web', 'nope', '--upstream', u.a!.origin, '--admin', p.adminUrl, '--token', token])
  t.not(missing.code, 0, 'an unknown version exits non-zero')
  t.match(missing.stderr, /CANARYD_ERR_VERSION_NOT_FOUND|nope/)
  t.same(await pinned(p.url, 'canary'), ['a'], 'refused calls changed nothing')
})
