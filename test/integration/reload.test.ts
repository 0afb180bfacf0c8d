import type { Server } from 'node:http'
import t from 'tap'
import { ConfigError } from '../../src/errors.js'
import { ensureBuilt } from '../helpers/cli.js'
import { send } from '../helpers/http.js'
import { startLoad } from '../helpers/load.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import {
  adminCall,
  configDir,
  fdCount,
  fileProxy,
  postReload,
  rawConfig,
  replaceConfig,
  routeFile,
  serve,
  sleep,
  startFileProxy,
  until,
  writeConfig
} from '../helpers/reload.js'
import { refusedOrigin, startUpstream, startUpstreams, type TestUpstream } from '../helpers/upstream.js'
import { startWireUpstream } from '../helpers/wire.js'

// Issue 13 C, black-box: routes reload from the file (admin call, SIGHUP,
// --watch, in-process), static keys only report a needed restart, and a
// reload never fails a request.

ensureBuilt()

/** The 200 body of a reload. */
interface ReloadResult { generation: number; added: string[]; removed: string[]; changed: string[]; restartRequired: string[] }
interface ErrorBody { error: { code: string; message: string } }

/** A route with stable at 100 % on `stable`, canary at 0 % on `canary` (default: the same origin). */
function web (stable: string | string[], canary: string | string[] = stable, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return routeFile('web', [{ name: 'stable', upstream: stable, weight: 100 }, { name: 'canary', upstream: canary, weight: 0 }], extra)
}

/** The endpoint (`x-upstream`) that answers a GET through the proxy, with `host` when given; `status:N` when not 200. */
async function answeredBy (proxyUrl: string, host?: string, user = 'u1'): Promise<string> {
  const headers: Record<string, string> = { 'x-user-id': user }
  if (host !== undefined) headers.host = host
  const r = await send(`${proxyUrl}/`, { headers }).catch((err: Error) => ({ status: -1, headers: { 'x-upstream': err.message } }))
  return r.status === 200 ? String(r.headers['x-upstream']) : `status:${r.status}`
}

/** `n` requests on new connections (spread over cluster workers), answered-by counts. */
async function batch (proxyUrl: string, n = 40): Promise<Record<string, number>> {
  const all = await Promise.all(Array.from({ length: n }, async (_, i) => await answeredBy(proxyUrl, undefined, `b${i}`)))
  const out: Record<string, number> = {}
  for (const a of all) out[a] = (out[a] ?? 0) + 1
  return out
}

t.test('POST /api/v1/reload applies added, removed and changed routes and reports them', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const host = (h: string): Record<string, unknown> => ({ match: { host: h } })
  const p = await fileProxy(t, [
    web(u.a!.origin, u.b!.origin, host('web.test')),
    routeFile('old', [{ name: 'stable', upstream: u.a!.origin, weight: 100 }, { name: 'canary', upstream: u.b!.origin, weight: 0 }], host('old.test')),
    routeFile('same', [{ name: 'stable', upstream: u.b!.origin, weight: 100 }, { name: 'canary', upstream: u.a!.origin, weight: 0 }], host('same.test'))
  ])
  t.equal(await answeredBy(p.url, 'web.test'), 'a')
  t.equal(await answeredBy(p.url, 'old.test'), 'a')
  t.equal(await answeredBy(p.url, 'new.test'), 'status:404', 'no route for new.test yet')

  p.write([
    web(u.c!.origin, u.b!.origin, host('web.test')),
    routeFile('same', [{ name: 'stable', upstream: u.b!.origin, weight: 100 }, { name: 'canary', upstream: u.a!.origin, weight: 0 }], host('same.test')),
    routeFile('new', [{ name: 'x', upstream: u.b!.origin, weight: 100 }, { name: 'y', upstream: u.a!.origin, weight: 0 }], host('new.test'))
  ])
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 200, r.body.toString())
  const body = r.json<ReloadResult>()
  t.equal(typeof body.generation, 'number', 'generation is a number')
  t.same({ added: body.added, removed: body.removed, changed: body.changed, restartRequired: body.restartRequired },
    { added: ['new'], removed: ['old'], changed: ['web'], restartRequired: [] }, 'the body names what changed (the unchanged route in none)')
  t.equal(await answeredBy(p.url, 'web.test'), 'c', 'the changed route uses its new upstream')
  t.equal(await answeredBy(p.url, 'new.test'), 'b', 'the added route serves')
  t.equal(await answeredBy(p.url, 'old.test'), 'status:404', 'the removed route is gone')
  t.equal(await answeredBy(p.url, 'same.test'), 'b', 'the unchanged route still serves')
  const names = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes')).json<{ routes: Array<{ name: string }> }>().routes.map((x) => x.name).sort()
  t.same(names, ['new', 'same', 'web'], 'the admin API lists the new route set')

  const again = await postReload(p.adminUrl)
  t.equal(again.status, 200)
  t.match(again.json(), { added: [], removed: [], changed: [], restartRequired: [] }, 'reloading an unchanged file changes nothing')

  p.write([
    web(u.a!.origin, u.b!.origin, host('web.test')),
    routeFile('same', [{ name: 'stable', upstream: u.b!.origin, weight: 100 }, { name: 'canary', upstream: u.a!.origin, weight: 0 }], host('same.test')),
    routeFile('new', [{ name: 'x', upstream: u.b!.origin, weight: 100 }, { name: 'y', upstream: u.a!.origin, weight: 0 }], host('new.test'))
  ])
  const third = await postReload(p.adminUrl)
  t.equal(third.status, 200)
  t.ok(third.json<ReloadResult>().generation > body.generation, 'a later change has a later generation')
  t.equal(await answeredBy(p.url, 'web.test'), 'a')
})

t.test('an invalid file changes nothing: 400 CANARYD_ERR_CONFIG_RELOAD naming the key, one log line; app.reload() throws the ConfigError', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const p = await fileProxy(t, [web(u.a!.origin, u.b!.origin)])
  const routesBefore = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes')).body.toString()

  p.write([routeFile('web', [{ name: 'stable', upstream: u.c!.origin, weight: 80 }, { name: 'canary', upstream: u.b!.origin, weight: 0 }])])
  const logsBefore = p.logs().length
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 400)
  const err = r.json<ErrorBody>().error
  t.equal(err.code, 'CANARYD_ERR_CONFIG_RELOAD')
  t.match(err.message, /^routes\[0\]\.versions: .*80/, 'the message names the key and the reason')
  const lines = p.logs().slice(logsBefore).filter((l) => l.includes('routes[0].versions'))
  t.equal(lines.length, 1, `one log line names the key: ${lines.join(' | ')}`)
  t.equal(await answeredBy(p.url), 'a', 'still routed by the old config')
  t.equal((await adminCall(p.adminUrl, 'GET', '/api/v1/routes')).body.toString(), routesBefore, 'routes unchanged')

  // an unknown key, and a file that is not JSON: refused the same way
  writeConfig(p.file, { ...rawConfig(p.stateFile, [web(u.c!.origin)]), bogus: 1 })
  const unknown = await postReload(p.adminUrl)
  t.equal(unknown.status, 400)
  t.match(unknown.json<ErrorBody>().error, { code: 'CANARYD_ERR_CONFIG_RELOAD', message: /bogus/ })
  writeConfig(p.file, '{"routes": [')
  const broken = await postReload(p.adminUrl)
  t.equal(broken.status, 400)
  t.equal(broken.json<ErrorBody>().error.code, 'CANARYD_ERR_CONFIG_RELOAD')
  t.equal(await answeredBy(p.url), 'a', 'still routed by the old config')

  // in process: the same result object, and the ConfigError itself on an invalid file
  const app = p.app as unknown as { reload: () => unknown }
  p.write([routeFile('web', [{ name: 'stable', upstream: u.c!.origin, weight: 80 }, { name: 'canary', upstream: u.b!.origin, weight: 0 }])])
  let thrown: unknown
  try {
    await app.reload()
  } catch (e) {
    thrown = e
  }
  t.ok(thrown instanceof ConfigError, `app.reload() throws a ConfigError (${String(thrown)})`)
  t.equal((thrown as ConfigError | undefined)?.key, 'routes[0].versions')
  p.write([web(u.c!.origin, u.b!.origin)])
  const ok = await app.reload() as ReloadResult
  t.match(ok, { added: [], removed: [], changed: ['web'], restartRequired: [] })
  t.equal(typeof ok.generation, 'number')
  t.equal(await answeredBy(p.url), 'c', 'a valid file after invalid ones applies')
})

t.test('changed static keys are reported as needing a restart and not applied; routes still reload', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const d = configDir()
  const raw = rawConfig(d.stateFile, [web(u.a!.origin, u.b!.origin)], { health: { ejectionMs: 30_000 } })
  const p = await startFileProxy(d.file, d.stateFile, raw)
  t.teardown(async () => { await p.close() })
  const freePort = Number(new URL(await refusedOrigin()).port)
  writeConfig(d.file, {
    ...raw,
    listen: { host: '127.0.0.1', port: freePort },
    admin: { host: '127.0.0.1', port: 0, token: 'a-new-token-1234567890' },
    health: { ejectionMs: 12_345 },
    routes: [web(u.c!.origin, u.b!.origin)]
  })
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 200, r.body.toString())
  const body = r.json<ReloadResult>()
  t.same([...body.restartRequired].sort(), ['admin.token', 'health.ejectionMs', 'listen.port'], 'every changed static key, by name')
  t.same(body.changed, ['web'])
  t.equal(await answeredBy(p.url), 'c', 'the route change is applied')
  const moved = await send(`http://127.0.0.1:${freePort}/`).then(() => 'listening', () => 'refused')
  t.equal(moved, 'refused', 'the proxy did not move to the new port')
  t.equal((await adminCall(p.adminUrl, 'GET', '/api/v1/routes')).status, 200, 'the new admin token is not in force')
})

t.test('the reload endpoint needs the admin token; an App without a file answers 409', async (t) => {
  const u = await startUpstreams(t, ['a'])
  const token = 'reload-token-1234567890'
  const p = await fileProxy(t, [web(u.a!.origin)], { admin: { host: '127.0.0.1', port: 0, token } })
  const noToken = await postReload(p.adminUrl)
  t.equal(noToken.status, 401)
  t.equal(noToken.json<ErrorBody>().error.code, 'CANARYD_ERR_UNAUTHORIZED')
  t.equal((await postReload(p.adminUrl, 'wrong-token')).status, 401)
  const ok = await postReload(p.adminUrl, token)
  t.equal(ok.status, 200, ok.body.toString())
  t.same(ok.json<ReloadResult>().restartRequired, [], 'the token itself is not a change')

  const q = await startProxy(testConfig([twoVersionRoute(u.a!.origin, u.a!.origin)]))
  t.teardown(async () => { await q.close() })
  const r = await postReload(q.adminUrl)
  t.equal(r.status, 409)
  t.equal(r.json<ErrorBody>().error.code, 'CANARYD_ERR_RELOAD_UNAVAILABLE')
})

t.test('hitless: 20 reloads adding and removing endpoints, versions and routes under load fail no request', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd', 'x'])
  const extra = routeFile('extra', [{ name: 'one', upstream: u.x!.origin, weight: 100 }, { name: 'two', upstream: u.x!.origin, weight: 0 }], { match: { host: 'extra.test' } })
  const variants: unknown[][] = [
    [routeFile('web', [{ name: 'stable', upstream: u.a!.origin, weight: 90 }, { name: 'canary', upstream: u.c!.origin, weight: 10 }])],
    [routeFile('web', [{ name: 'stable', upstream: [u.a!.origin, u.b!.origin], weight: 90 }, { name: 'canary', upstream: u.c!.origin, weight: 10 }]), extra],
    [routeFile('web', [{ name: 'stable', upstream: u.b!.origin, weight: 80 }, { name: 'canary', upstream: [u.c!.origin, u.d!.origin], weight: 10 }, { name: 'beta', upstream: u.a!.origin, weight: 10 }])],
    [routeFile('web', [{ name: 'stable', upstream: [u.a!.origin, u.b!.origin], weight: 90, balance: 'round-robin' }, { name: 'canary', upstream: u.d!.origin, weight: 10 }]), extra]
  ]
  const p = await fileProxy(t, variants[0]!)
  const load = startLoad(t, p.url, (id) => `/r/${id}`)
  const results: Array<{ status: number; generation: number | undefined }> = []
  try {
    for (let i = 1; i <= 20; i++) {
      writeConfig(p.file, rawConfig(p.stateFile, variants[i % variants.length]!))
      const r = await postReload(p.adminUrl)
      results.push({ status: r.status, generation: r.status === 200 ? r.json<ReloadResult>().generation : undefined })
      await load.between(25)
    }
  } finally {
    await load.stop()
  }
  t.same(results.map((r) => r.status), new Array(20).fill(200), 'every reload applied')
  const gens = results.map((r) => r.generation ?? -1)
  t.ok(gens.every((g, i) => i === 0 || g > gens[i - 1]!), `generations increase (${gens.join(',')})`)
  t.same([...load.statuses.keys()], ['200'], `all ${load.total} requests answered 200: ${JSON.stringify([...load.statuses])}`)
  t.ok(load.total >= 400, `traffic flowed during the reloads (${load.total} requests)`)
})

t.test('a request in flight on an endpoint a reload removes still completes there; the removed pool then closes', async (t) => {
  const slow = await startWireUpstream({ hold: (r) => r.url === '/slow' })
  t.teardown(async () => { await slow.close() })
  const u = await startUpstreams(t, ['fast'])
  const p = await fileProxy(t, [web(slow.origin, u.fast!.origin)])
  const inFlight = send(`${p.url}/slow`, { headers: { 'x-user-id': 'u1' } })
  t.ok(await until(() => slow.pending === 1, 5000), 'the slow request reached its endpoint')

  p.write([web(u.fast!.origin)])
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 200, r.body.toString())
  t.equal(await answeredBy(p.url), 'fast', 'new requests go to the new endpoint')
  slow.release()
  const done = await inFlight
  t.equal(done.status, 200, 'the in-flight request completed')
  t.equal(done.headers['x-seq'], '0', 'answered by the endpoint it started on')
  const connections = async (s: Server): Promise<number> => await new Promise((resolve) => { s.getConnections((_e, n) => { resolve(n) }) })
  t.ok(await until(async () => await connections(slow.server) === 0, 5000), 'the removed endpoint\'s connections are closed after the drain')
})

t.test('100 reloads that replace the endpoint leak no file descriptors', async (t) => {
  const N = 100
  const ups: TestUpstream[] = []
  for (let i = 0; i <= N; i++) {
    const up = await startUpstream(`e${i}`)
    // idle connections stay open unless the proxy closes them: a leaked pool shows
    up.server.keepAliveTimeout = 60_000
    ups.push(up)
  }
  t.teardown(async () => { for (const up of ups) await up.close() })
  const p = await fileProxy(t, [web(ups[0]!.origin)], { upstream: { keepAliveMs: 60_000 } })
  t.equal(await answeredBy(p.url), 'e0')
  await sleep(100)
  const before = fdCount()
  const statuses: number[] = []
  let wrong = 0
  for (let i = 1; i <= N; i++) {
    p.write([web(ups[i]!.origin)])
    statuses.push((await postReload(p.adminUrl)).status)
    if (await answeredBy(p.url) !== `e${i}`) wrong++
  }
  t.same([...new Set(statuses)], [200], 'every reload applied')
  t.equal(wrong, 0, 'each reload moved traffic to the new endpoint at once')
  let after = fdCount()
  await until(() => { after = fdCount(); return after <= before + 15 }, 5000, 100)
  t.ok(after <= before + 15, `file descriptors ${before} before, ${after} after ${N} reloads (slack 15)`)
})

t.test('runtime weights survive a reload that keeps the version names; a new version set takes the file\'s weights, audited as "reload"', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const two = (stable: string): unknown => routeFile('web', [{ name: 'stable', upstream: stable, weight: 90 }, { name: 'canary', upstream: u.b!.origin, weight: 10 }])
  const p = await fileProxy(t, [two(u.a!.origin)])
  const put = await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/weights', { weights: { stable: 70, canary: 30 } })
  t.equal(put.status, 200)
  const weights = async (): Promise<Record<string, number>> => {
    const r = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web')).json<{ versions: Array<{ name: string; weight: number }> }>()
    return Object.fromEntries(r.versions.map((v) => [v.name, v.weight]))
  }

  // same names, another endpoint for stable, one route more
  p.write([two(u.c!.origin), routeFile('other', [{ name: 'x', upstream: u.a!.origin, weight: 100 }, { name: 'y', upstream: u.a!.origin, weight: 0 }], { match: { host: 'other.test' } })])
  t.equal((await postReload(p.adminUrl)).status, 200)
  t.same(await weights(), { stable: 70, canary: 30 }, 'runtime weights kept')
  const stableHit = await send(`${p.url}/`, { headers: { 'x-canary': 'stable' } })
  t.equal(stableHit.headers['x-upstream'], 'c', 'while the endpoint change is applied')

  p.write([routeFile('web', [{ name: 'stable', upstream: u.c!.origin, weight: 80 }, { name: 'canary', upstream: u.b!.origin, weight: 10 }, { name: 'beta', upstream: u.a!.origin, weight: 10 }])])
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 200)
  t.same(r.json<ReloadResult>().removed, ['other'])
  t.same(await weights(), { stable: 80, canary: 10, beta: 10 }, 'the new version set takes the file\'s weights')
  const audit = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit?route=web')).json<{ entries: Array<{ source: string; weights: Record<string, number> }> }>().entries
  t.match(audit[0], { source: 'reload', weights: { stable: 80, canary: 10, beta: 10 } }, 'the newest audit entry of the route is the reload')
  t.equal(audit.filter((e) => e.source === 'reload').length, 1, 'only the reload that changed the version set is audited')
})

t.test('a reload that removes a running rollout\'s canary aborts the rollout and says why', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const p = await fileProxy(t, [web(u.a!.origin, u.b!.origin)])
  const plan = { canary: 'canary', steps: [10, 50], intervalMs: 3_600_000, analysis: { minRequests: 5 } }
  t.equal((await adminCall(p.adminUrl, 'POST', '/api/v1/routes/web/rollout', plan)).status, 201)

  p.write([web(u.c!.origin, u.b!.origin)])
  t.equal((await postReload(p.adminUrl)).status, 200)
  const kept = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web/rollout')).json<{ state: string; weight: number }>()
  t.match(kept, { state: 'progressing', weight: 10 }, 'a reload keeping the canary leaves the rollout running')

  p.write([routeFile('web', [{ name: 'stable', upstream: u.a!.origin, weight: 100 }, { name: 'beta', upstream: u.b!.origin, weight: 0 }])])
  const r = await postReload(p.adminUrl)
  t.equal(r.status, 200, r.body.toString())
  const ro = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web/rollout')).json<{ state: string; reason: string }>()
  t.equal(ro.state, 'aborted', 'the rollout is aborted')
  t.match(ro.reason, /canary/, 'the reason names the version')
  t.match(ro.reason, /removed/i, 'and says it was removed')
  t.equal(await answeredBy(p.url), 'a')
})

t.test('canaryd serve: SIGHUP reloads the file; an invalid file logs one line and keeps the old routes', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const d = configDir()
  writeConfig(d.file, rawConfig(d.stateFile, [web(u.a!.origin)]))
  const s = await serve(d.file)
  t.teardown(s.kill)
  t.equal(await answeredBy(s.proxy), 'a')

  writeConfig(d.file, rawConfig(d.stateFile, [web(u.b!.origin)]))
  s.child.kill('SIGHUP')
  t.ok(await until(async () => await answeredBy(s.proxy) === 'b', 5000), 'after SIGHUP the new file routes')
  t.same([s.child.exitCode, s.child.signalCode], [null, null], 'still running')

  writeConfig(d.file, rawConfig(d.stateFile, [routeFile('web', [{ name: 'stable', upstream: u.c!.origin, weight: 80 }, { name: 'canary', upstream: u.c!.origin, weight: 0 }])]))
  const keyLines = (): string[] => s.log().split('\n').filter((l) => l.includes('routes[0].versions'))
  s.child.kill('SIGHUP')
  t.ok(await until(() => keyLines().length > 0, 5000), 'the refusal is logged')
  await sleep(300)
  t.equal(keyLines().length, 1, `exactly one line names the key: ${keyLines().join(' | ')}`)
  t.equal(await answeredBy(s.proxy), 'b', 'the old routes stay')
  t.same([s.child.exitCode, s.child.signalCode], [null, null], 'still running')

  writeConfig(d.file, rawConfig(d.stateFile, [web(u.c!.origin)]))
  const r = await postReload(s.admin)
  t.equal(r.status, 200, r.body.toString())
  t.equal(await answeredBy(s.proxy), 'c', 'POST /api/v1/reload works on a serve process too')
})

t.test('canaryd serve --watch reloads when the file changes, written in place or renamed over', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd'])
  const d = configDir()
  writeConfig(d.file, rawConfig(d.stateFile, [web(u.a!.origin)]))
  const s = await serve(d.file, ['--watch'])
  t.teardown(s.kill)
  t.equal(await answeredBy(s.proxy), 'a')

  const timed = async (what: string, check: () => boolean | Promise<boolean>): Promise<void> => {
    const started = Date.now()
    t.ok(await until(check, 8000), what)
    t.comment(`${what}: after ${Date.now() - started} ms`)
  }
  writeConfig(d.file, rawConfig(d.stateFile, [web(u.b!.origin)]))
  await timed('an in-place write is picked up', async () => await answeredBy(s.proxy) === 'b')

  replaceConfig(d.file, rawConfig(d.stateFile, [web(u.c!.origin)]))
  await timed('a file renamed over the config is picked up', async () => await answeredBy(s.proxy) === 'c')

  writeConfig(d.file, rawConfig(d.stateFile, [routeFile('web', [{ name: 'stable', upstream: u.d!.origin, weight: 80 }, { name: 'canary', upstream: u.d!.origin, weight: 0 }])]))
  await timed('an invalid write is logged, naming the key', () => s.log().includes('routes[0].versions'))
  t.equal(await answeredBy(s.proxy), 'c', 'and changes nothing')

  writeConfig(d.file, rawConfig(d.stateFile, [web(u.d!.origin)]))
  await timed('the next valid write is picked up', async () => await answeredBy(s.proxy) === 'd')
})

t.test('canaryd serve --workers 2: SIGHUP and POST /api/v1/reload reach every worker', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const d = configDir()
  writeConfig(d.file, rawConfig(d.stateFile, [web(u.a!.origin)]))
  const s = await serve(d.file, ['--workers', '2'])
  t.teardown(s.kill)
  t.equal(s.workers.length, 2, 'two workers')
  t.same(await batch(s.proxy), { a: 40 })

  writeConfig(d.file, rawConfig(d.stateFile, [web(u.b!.origin)]))
  s.child.kill('SIGHUP')
  let last: Record<string, number> = {}
  t.ok(await until(async () => { last = await batch(s.proxy); return last.b === 40 }, 5000, 100), `after SIGHUP every worker routes to b (${JSON.stringify(last)})`)

  writeConfig(d.file, rawConfig(d.stateFile, [web(u.c!.origin)]))
  const r = await postReload(s.admin)
  t.equal(r.status, 200, r.body.toString())
  t.same(r.json<ReloadResult>().changed, ['web'])
  t.ok(await until(async () => { last = await batch(s.proxy); return last.c === 40 }, 5000, 100), `after POST every worker routes to c (${JSON.stringify(last)})`)

  writeConfig(d.file, rawConfig(d.stateFile, [routeFile('web', [{ name: 'stable', upstream: u.a!.origin, weight: 80 }, { name: 'canary', upstream: u.a!.origin, weight: 0 }])]))
  const bad = await postReload(s.admin)
  t.equal(bad.status, 400)
  t.equal(bad.json<ErrorBody>().error.code, 'CANARYD_ERR_CONFIG_RELOAD')
  t.same(await batch(s.proxy), { c: 40 }, 'an invalid file changes no worker')
})
