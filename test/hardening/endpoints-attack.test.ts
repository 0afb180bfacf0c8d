import { spawn } from 'node:child_process'
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import { CLI, ensureBuilt } from '../helpers/cli.js'
import { makeTestPki, opensslSkip } from '../helpers/certs.js'
import { startDnsServer } from '../helpers/dns.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, type TestProxy } from '../helpers/proxy.js'
import {
  adminCall,
  configDir,
  endpointGauge,
  type FileProxy,
  fileProxy,
  postReload,
  rawConfig,
  routeFile,
  sleep,
  startFileProxy,
  until,
  writeConfig
} from '../helpers/reload.js'
import { refusedOrigin, startUpstream, startUpstreams, type TestUpstream } from '../helpers/upstream.js'

// Issue 13, second reader: attacks on endpoint groups, balancers, reload and
// the versions API, against real servers on 127.0.0.1. Each test names the
// behaviour the contract (or the config's own doc) promises. The first block
// are bugs found (they fail until fixed); the rest are attacks that held.

ensureBuilt()

interface ErrorBody { error: { code: string; message: string } }

async function inProc (t: Test, routes: unknown[], extra: Record<string, unknown> = {}): Promise<TestProxy> {
  const p = await startProxy(testConfig(routes, extra))
  t.teardown(async () => { await p.close() })
  return p
}

function web (stable: unknown, canary: unknown, extra: Record<string, unknown> = {}, weights: [number, number] = [100, 0], vextra: [Record<string, unknown>, Record<string, unknown>] = [{}, {}]): Record<string, unknown> {
  return routeFile('web', [{ name: 'stable', upstream: stable, weight: weights[0], ...vextra[0] }, { name: 'canary', upstream: canary, weight: weights[1], ...vextra[1] }] as never, extra)
}

async function get (url: string, headers: Record<string, string> = {}): Promise<{ status: number, upstream: string, version: string }> {
  try {
    const r = await send(`${url}/`, { headers })
    return { status: r.status, upstream: String(r.headers['x-upstream'] ?? ''), version: String(r.headers['x-canaryd-version'] ?? '') }
  } catch (err) {
    return { status: -1, upstream: (err as Error).message, version: '' }
  }
}

/** The state file as the store writes it (the parts these tests read). */
interface StateDoc { routes: Record<string, { weights: Record<string, number>, versions: Array<{ name: string, upstream: unknown }>, upstreams?: unknown }> }

/**
 * An upstream whose first request is held until `release()` is called, then
 * has its connection reset with no answer (a keep-alive connection the
 * upstream closed under the request); every later request is answered 200.
 */
async function resetFirst (t: Test, name: string): Promise<{ up: TestUpstream, held: () => boolean, release: () => void, count: () => number }> {
  let release: (() => void) | undefined
  let n = 0
  const up = await startUpstream(name, (req, res) => {
    n++
    if (n === 1) {
      release = () => { req.socket.destroy() }
      return
    }
    res.setHeader('x-upstream', name)
    res.end(name)
  })
  t.teardown(async () => { await up.close() })
  return { up, held: () => release !== undefined, release: () => { release?.() }, count: () => n }
}

/** Sends a chunked POST whose headers go now and whose body goes after `before()` resolved; resolves with the status. */
async function chunkedAfter (url: string, before: () => Promise<unknown>): Promise<number> {
  return await new Promise<number>((resolve) => {
    const req = httpRequest(`${url}/`, { method: 'POST', headers: { 'transfer-encoding': 'chunked', 'x-user-id': 'u' }, agent: false }, (res) => {
      res.resume()
      res.on('end', () => { resolve(res.statusCode ?? 0) })
    })
    req.on('error', () => { resolve(-1) })
    req.flushHeaders()
    // the proxy has routed the request and waits for its first body bytes
    setTimeout(() => { void before().then(() => { req.end('hello') }) }, 200)
  })
}

// ------------------------------------------------------------------ bugs

t.test('a GET reset by its upstream is retried even when a PUT removed that endpoint meanwhile (in-flight requests finish where they started)', async (t) => {
  const u = await startUpstreams(t, ['b', 'c'])
  // control: with no change in between, the reset is retried on the same endpoint and succeeds
  const ctl = await resetFirst(t, 'a0')
  const p0 = await inProc(t, [web(ctl.up.origin, u.c!.origin)], { health: { consecutiveFailures: 0 } })
  const pending0 = get(p0.url, { 'x-user-id': 'x' })
  t.ok(await until(ctl.held, 3000), 'control: the request reached its endpoint')
  ctl.release()
  t.equal((await pending0).status, 200, 'control: the reset GET is retried and served')

  const a = await resetFirst(t, 'a')
  const p = await inProc(t, [web(a.up.origin, u.c!.origin)], { health: { consecutiveFailures: 0 } })
  const pending = get(p.url, { 'x-user-id': 'x' })
  t.ok(await until(a.held, 3000), 'the request reached its endpoint')
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: u.b!.origin })).status, 200, 'stable now points at b')
  a.release()
  const r = await pending
  t.equal(r.status, 200, `the reset GET is retried and served, like the control (got ${r.status}; requests a saw: ${a.count()})`)
})

t.test('a chunked request whose body arrives after a PUT moved its version is served, not 502 (upstream.largeBodyBytes: 0)', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const p0 = await inProc(t, [web(u.a!.origin, u.c!.origin)], { upstream: { largeBodyBytes: 0 } })
  t.equal(await chunkedAfter(p0.url, async () => {}), 200, 'control: without a change in between, 200')
  const p = await inProc(t, [web(u.a!.origin, u.c!.origin)], { upstream: { largeBodyBytes: 0 } })
  const status = await chunkedAfter(p.url, async () => await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: u.b!.origin }))
  t.equal(status, 200, 'the request routed before the swap is not failed by it')
})

t.test('round-robin never answers 503 overloaded while another endpoint of the version has room (upstream.maxInFlight)', async (t) => {
  let hold: Array<() => void> = []
  const slow = await startUpstream('slow', (_req, res) => { hold.push(() => { res.setHeader('x-upstream', 'slow'); res.end('slow') }) })
  t.teardown(async () => { for (const h of hold) h(); hold = []; await slow.close() })
  const u = await startUpstreams(t, ['fast', 'c'])
  const p = await inProc(t, [web([slow.origin, u.fast!.origin], u.c!.origin, {}, [100, 0], [{ balance: 'round-robin' }, {}])], { upstream: { maxInFlight: 2 }, health: { consecutiveFailures: 0 } })
  // round robin sends every other request to `slow`, which holds them: it fills up (2 in flight)
  const pending = Array.from({ length: 4 }, async (_, i) => await get(p.url, { 'x-user-id': `h${i}` }))
  t.ok(await until(() => hold.length >= 2, 3000), 'slow holds 2 requests: at its cap')
  const results = []
  for (let i = 0; i < 6; i++) results.push(await get(p.url, { 'x-user-id': `n${i}` }))
  for (const h of hold) h()
  hold = []
  await Promise.all(pending)
  t.same(results.map((r) => `${r.status} ${r.upstream}`), Array(6).fill('200 fast'), 'every request goes to the endpoint with room')
})

t.test('a state file whose runtime upstream is not a valid origin does not stop start-up: the config\'s upstream is used', async (t) => {
  const u = await startUpstreams(t, ['a', 'c'])
  for (const bad of ['garbage', 'ftp://127.0.0.1:1', 'http://127.0.0.1:1/path']) {
    const d = configDir()
    // a file from another build, or edited by hand: the shape is right, the origin is not
    writeFileSync(d.stateFile, JSON.stringify({
      version: 1,
      savedAt: new Date().toISOString(),
      routes: { web: { versions: [{ name: 'stable', upstream: u.a!.origin }, { name: 'canary', upstream: u.c!.origin }], weights: { stable: 50, canary: 50 }, rollout: null, upstreams: { canary: { upstream: [bad], config: [u.c!.origin] } } } },
      audit: []
    }))
    let p: FileProxy | undefined
    let err: unknown
    try {
      p = await startFileProxy(d.file, d.stateFile, rawConfig(d.stateFile, [web(u.a!.origin, u.c!.origin, {}, [50, 50])]))
    } catch (e) {
      err = e
    }
    t.equal(err, undefined, `${bad}: the proxy starts (threw ${String(err)})`)
    if (p !== undefined) {
      t.equal((await get(p.url, { 'x-canary': 'canary' })).upstream, 'c', `${bad}: canary is served by the config's upstream`)
      await p.close()
    }
  }
})

t.test('hash balancing spreads override requests that carry no sticky key over the endpoints', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'x', 'c'])
  const p = await inProc(t, [web([u.a!.origin, u.b!.origin, u.x!.origin], u.c!.origin, {}, [0, 100], [{ balance: 'hash' }, {}])])
  const seen = new Set<string>()
  for (let i = 0; i < 30; i++) seen.add((await get(p.url, { 'x-canary': 'stable' })).upstream)
  // without the override, a request without a key gets a random one (and a cookie): it lands anywhere
  t.ok(seen.size > 1, `30 keyless override requests are not all on one endpoint (${[...seen].join(', ')})`)
})

t.test('an origin with port 0 (never dialable) is refused by PUT versions and by the config', async (t) => {
  const u = await startUpstreams(t, ['a', 'c'])
  const p = await inProc(t, [web(u.a!.origin, u.c!.origin)])
  const r = await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: 'http://127.0.0.1:0' })
  t.equal(r.status, 400, `PUT answers 400 CANARYD_ERR_INVALID_UPSTREAM (got ${r.status})`)
  t.equal((await get(p.url, { 'x-user-id': 'k' })).upstream, 'a', 'nothing changed')
  let err: unknown
  try {
    testConfig([web('http://127.0.0.1:0', u.c!.origin)])
  } catch (e) {
    err = e
  }
  t.ok(err instanceof Error, 'the config is refused naming the key')
})

// ------------------------------------------------------------------ held

t.test('held: a refused endpoint is retried on another one (retries=1) and its streak ejects it', async (t) => {
  const dead = await refusedOrigin()
  const u = await startUpstreams(t, ['a', 'c'])
  const p = await inProc(t, [web([dead, u.a!.origin], u.c!.origin, {}, [100, 0], [{ balance: 'round-robin' }, {}])], { health: { consecutiveFailures: 3, ejectionMs: 60000 } })
  const res = []
  for (let i = 0; i < 10; i++) res.push(await get(p.url, { 'x-user-id': `r${i}` }))
  t.same(res.map((r) => `${r.status} ${r.upstream}`), Array(10).fill('200 a'), 'every request served by the live endpoint')
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 1, ejected: 1 }, 'the refusing endpoint is ejected')
})

t.test('held: a reload that changes only the balancing keeps the endpoints\' ejections', async (t) => {
  const dead = await refusedOrigin()
  const u = await startUpstreams(t, ['a', 'c'])
  const p = await fileProxy(t, [web([dead, u.a!.origin], u.c!.origin, {}, [100, 0], [{ balance: 'round-robin' }, {}])], { health: { consecutiveFailures: 2, ejectionMs: 60000 } })
  for (let i = 0; i < 6; i++) await get(p.url, { 'x-user-id': `r${i}` })
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 1, ejected: 1 })
  p.write([web([dead, u.a!.origin], u.c!.origin, {}, [100, 0], [{ balance: 'hash' }, {}])])
  t.equal((await postReload(p.adminUrl)).status, 200)
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 1, ejected: 1 }, 'still ejected after the reload')
})

t.test('held: a version whose endpoints are all ejected is back at once when a PUT replaces them', async (t) => {
  const d1 = await refusedOrigin()
  const d2 = await refusedOrigin()
  const u = await startUpstreams(t, ['a', 'b'])
  const p = await inProc(t, [web([d1, d2], u.a!.origin, {}, [50, 50])], { health: { consecutiveFailures: 1, ejectionMs: 60000 } })
  for (let i = 0; i < 10; i++) await get(p.url, { 'x-canary': 'stable', 'x-user-id': `e${i}` })
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 0, ejected: 2 })
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: u.b!.origin })).status, 200)
  t.same(await endpointGauge(p.adminUrl, 'web', 'stable'), { healthy: 1, ejected: 0 }, 'the gauge counts the new endpoints only')
  const res = []
  for (let i = 0; i < 40; i++) res.push(await get(p.url, { 'x-user-id': `e${i}` }))
  t.ok(res.every((r) => r.status === 200), 'every request served')
  t.ok(res.filter((r) => r.version === 'stable' && r.upstream === 'b').length > 5, 'stable users are back on stable, at b')
})

t.test('held: hash balancing keeps a user on one endpoint with or without the override header', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'x', 'c'])
  const p = await inProc(t, [web([u.a!.origin, u.b!.origin, u.x!.origin], u.c!.origin, {}, [100, 0], [{ balance: 'hash' }, {}])])
  const moved: string[] = []
  const spread = new Set<string>()
  for (let i = 0; i < 30; i++) {
    const plain = await get(p.url, { 'x-user-id': `h${i}` })
    const over = await get(p.url, { 'x-user-id': `h${i}`, 'x-canary': 'stable' })
    spread.add(plain.upstream)
    if (plain.upstream !== over.upstream) moved.push(`h${i}`)
  }
  t.same(moved, [], 'same endpoint per user')
  t.equal(spread.size, 3, 'users spread over the 3 endpoints')
})

t.test('held: concurrent PUT versions, PUT weights and reloads leave memory, state file and audit in step', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd'])
  const p = await fileProxy(t, [web(u.a!.origin, u.c!.origin, {}, [50, 50])])
  const origins = [u.a!.origin, u.b!.origin, u.c!.origin, u.d!.origin]
  const ops: Array<Promise<number>> = []
  for (let i = 0; i < 40; i++) {
    const k = i % 4
    if (k === 0) ops.push(adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/canary', { upstream: origins[i % 4] }).then((r) => r.status))
    else if (k === 1) ops.push(adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/weights', { weights: { stable: i, canary: 100 - i } }).then((r) => r.status))
    else if (k === 2) ops.push(postReload(p.adminUrl).then((r) => r.status))
    else ops.push(adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: [origins[(i + 1) % 4], origins[(i + 2) % 4]] }).then((r) => r.status))
  }
  t.same((await Promise.all(ops)).filter((s) => s !== 200), [], 'every change accepted')
  const view = (await adminCall(p.adminUrl, 'GET', '/api/v1/routes/web')).json<{ versions: Array<{ name: string, upstream: unknown, weight: number }> }>()
  const doc = JSON.parse(readFileSync(p.stateFile, 'utf8')) as StateDoc
  t.same(Object.fromEntries(view.versions.map((v) => [v.name, v.weight])), doc.routes.web!.weights, 'weights: memory = file')
  t.same(view.versions.map((v) => v.upstream), doc.routes.web!.versions.map((v) => v.upstream), 'upstreams: memory = file')
  const audit = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit?limit=1000')).json<{ entries: Array<{ generation: number }> }>().entries
  const gens = audit.map((e) => e.generation).reverse()
  t.ok(gens.every((g, i) => i === 0 || g > gens[i - 1]!), 'generations strictly increase')
  t.equal(audit.length, 30, 'one audit entry per weight or upstream change (reloads of an unchanged version set add none)')
})

t.test('held: a reload that removes a version drops its metric series and gauge', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const p = await fileProxy(t, [routeFile('web', [{ name: 'stable', upstream: u.a!.origin, weight: 50 }, { name: 'canary', upstream: u.b!.origin, weight: 50 }, { name: 'old', upstream: u.c!.origin, weight: 0 }])])
  t.equal((await get(p.url, { 'x-canary': 'old' })).upstream, 'c')
  p.write([web(u.a!.origin, u.b!.origin, {}, [50, 50])])
  t.equal((await postReload(p.adminUrl)).status, 200)
  const text = (await send(`${p.adminUrl}/metrics`)).body.toString()
  t.same(text.split('\n').filter((l) => l.includes('version="old"')), [], 'no series of the removed version')
})

t.test('held: the DNS watch of a version a reload removed stops querying', async (t) => {
  const dns = await startDnsServer()
  t.teardown(async () => { await dns.close() })
  const u = await startUpstreams(t, ['a', 'c'])
  const NAME = 'svc.attack.test'
  dns.set(NAME, ['127.0.0.1'])
  const dnsOpts = { upstream: { dnsServers: dns.server, dnsRefreshMs: 100 } }
  const p = await fileProxy(t, [web(`http://${NAME}:${new URL(u.a!.origin).port}`, u.c!.origin, {}, [50, 50], [{ discovery: 'dns' }, {}])], dnsOpts)
  t.ok(await until(() => dns.queries(NAME) > 3, 3000), 'the name is re-resolved')
  p.write([web(u.a!.origin, u.c!.origin, {}, [50, 50])], dnsOpts)
  t.equal((await postReload(p.adminUrl)).status, 200)
  await sleep(150)
  const q = dns.queries(NAME)
  await sleep(500)
  t.equal(dns.queries(NAME), q, 'no query once no version uses the name')
})

t.test('held: a reload naming a DNS server that never answers is bounded; the version\'s users fall back', async (t) => {
  const dns = await startDnsServer()
  t.teardown(async () => { await dns.close() })
  dns.fail('dead.attack.test', 'DROP')
  const u = await startUpstreams(t, ['a', 'c'])
  const dnsOpts = { upstream: { dnsServers: dns.server, dnsRefreshMs: 200 } }
  const p = await fileProxy(t, [web(u.a!.origin, u.c!.origin, {}, [50, 50])], dnsOpts)
  p.write([web(u.a!.origin, `http://dead.attack.test:${new URL(u.c!.origin).port}`, {}, [50, 50], [{}, { discovery: 'dns' }])], dnsOpts)
  const t0 = Date.now()
  const r = await postReload(p.adminUrl)
  const ms = Date.now() - t0
  t.equal(r.status, 200)
  t.ok(ms < 6000, `the reload answers within the resolver's bound (${ms} ms)`)
  const res = []
  for (let i = 0; i < 20; i++) res.push(await get(p.url, { 'x-user-id': `d${i}` }))
  t.same([...new Set(res.map((x) => `${x.status} ${x.version}`))], ['200 stable'], 'canary has no endpoint: its users are served by stable')
})

t.test('held: the sockets to an origin a PUT removed all close; pools stay bounded', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  let open = 0
  u.a!.server.on('connection', (s) => { open++; s.on('close', () => { open-- }) })
  const p = await inProc(t, [web(u.a!.origin, u.c!.origin)])
  await Promise.all(Array.from({ length: 10 }, async (_, i) => await get(p.url, { 'x-user-id': `s${i}` })))
  t.ok(open > 0, `keep-alive connections to a (${open})`)
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: u.b!.origin })).status, 200)
  t.ok(await until(() => open === 0, 3000), `every connection to the removed origin closed (${open} left)`)
  t.equal(p.app.upstreams.poolCount, 2, 'pools: b and c')
})

t.test('held: 150 PUT swaps under keep-alive load fail no request and leak no fd or pool', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const p = await inProc(t, [web(u.a!.origin, u.c!.origin, {}, [50, 50])])
  const agent = new Agent({ connections: 8 })
  t.teardown(async () => { await agent.close() })
  let stop = false
  const statuses: Record<string, number> = {}
  const count = (k: string): void => { statuses[k] = (statuses[k] ?? 0) + 1 }
  const load = Array.from({ length: 8 }, async (_, w) => {
    for (let i = 0; i < 5000 && !stop; i++) {
      try {
        const post = i % 3 === 0
        const r = await undiciRequest(`${p.url}/`, { dispatcher: agent, method: post ? 'POST' : 'GET', body: post ? 'x'.repeat(100) : undefined, headers: { 'x-user-id': `w${w}-${i}` } })
        await r.body.dump()
        count(String(r.statusCode))
      } catch (err) {
        count((err as Error).message)
      }
    }
  })
  await sleep(50)
  const fd0 = readdirSync('/proc/self/fd').length
  for (let i = 0; i < 150; i++) {
    const r = await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: i % 2 === 0 ? u.b!.origin : [u.a!.origin, u.b!.origin] })
    if (r.status !== 200) t.fail(`PUT ${i}: ${r.status}`)
  }
  stop = true
  await Promise.all(load)
  t.same(Object.keys(statuses), ['200'], `only 200s (${JSON.stringify(statuses)})`)
  await sleep(200)
  const fd1 = readdirSync('/proc/self/fd').length
  t.ok(fd1 - fd0 < 30, `fds ${fd0} → ${fd1}`)
  t.ok(p.app.upstreams.poolCount <= 3, `pools ${p.app.upstreams.poolCount}`)
})

t.test('held: hostile PUT versions bodies and paths are refused and change nothing', async (t) => {
  const u = await startUpstreams(t, ['a', 'c'])
  const p = await inProc(t, [web(u.a!.origin, u.c!.origin)])
  const bad: unknown[] = [
    Array.from({ length: 65 }, (_, i) => `http://127.0.0.1:${1000 + i}`),
    [u.a!.origin, u.a!.origin], [u.a!.origin, `${u.a!.origin}/`], [u.a!.origin, u.a!.origin.toUpperCase()],
    'ftp://127.0.0.1:21', 'http://user:pw@127.0.0.1:1', 'http://127.0.0.1:1/path', 'http://127.0.0.1:1?q', 'http://127.0.0.1:1#f',
    'javascript:alert(1)', 'file:///etc/passwd', '', [], [''], 42, null, { a: 1 }, 'http://[::1', 'http://127.0.0.1:99999'
  ]
  for (const b of bad) {
    const r = await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: b })
    t.equal(r.status, 400, `${JSON.stringify(b).slice(0, 50)} → 400 ${r.json<ErrorBody>().error.code}`)
  }
  const huge = await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: Array.from({ length: 100000 }, () => 'x') })
  t.equal(huge.status, 413, 'a huge body: 413')
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web%2Fx/versions/stable', { upstream: u.a!.origin })).status, 404, 'encoded slash in the route')
  t.equal((await adminCall(p.adminUrl, 'PUT', '/api/v1/routes/web/versions/stable%2F..', { upstream: u.a!.origin })).status, 404, 'encoded slash in the version')
  t.equal((await get(p.url, { 'x-user-id': 'k' })).upstream, 'a', 'nothing changed')
  const audit = (await adminCall(p.adminUrl, 'GET', '/api/v1/audit')).json<{ entries: unknown[] }>().entries
  t.equal(audit.length, 0, 'nothing audited')
})

t.test('held: a restart with a config that changed the overridden version drops the runtime upstream, in memory and then in the file', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c', 'd'])
  const d = configDir()
  const p1 = await startFileProxy(d.file, d.stateFile, rawConfig(d.stateFile, [web(u.a!.origin, u.c!.origin, {}, [50, 50])]))
  t.equal((await adminCall(p1.adminUrl, 'PUT', '/api/v1/routes/web/versions/canary', { upstream: u.b!.origin })).status, 200)
  await p1.close()
  const p2 = await startFileProxy(d.file, d.stateFile, rawConfig(d.stateFile, [web(u.a!.origin, u.d!.origin, {}, [50, 50])]))
  t.teardown(async () => { await p2.close() })
  const v = (await adminCall(p2.adminUrl, 'GET', '/api/v1/routes/web/versions/canary')).json<Record<string, unknown>>()
  t.equal(v.upstream, u.d!.origin, 'the file wins')
  t.notOk(v.runtimeUpstream, 'not marked as a runtime upstream')
  t.equal((await get(p2.url, { 'x-canary': 'canary' })).upstream, 'd', 'served by the file\'s upstream')
  t.equal((await adminCall(p2.adminUrl, 'PUT', '/api/v1/routes/web/weights', { weights: { stable: 40, canary: 60 } })).status, 200)
  t.equal((JSON.parse(readFileSync(d.stateFile, 'utf8')) as StateDoc).routes.web!.upstreams, undefined, 'the next write drops it from the file')
})

t.test('held: an unreadable TLS file on reload is a 400 that changes nothing; a CA rotated under a new path applies', { skip: opensslSkip }, async (t) => {
  const pki = makeTestPki()
  t.teardown(() => { pki.cleanup() })
  const server = createHttpsServer({ cert: pki.server.cert, key: pki.server.key }, (_req, res) => { res.setHeader('x-upstream', 'tls'); res.end('ok') })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  const origin = `https://localhost:${(server.address() as AddressInfo).port}`
  const u = await startUpstreams(t, ['c'])
  const wrong = `${pki.dir}/wrong.pem`
  copyFileSync(pki.clientCa.certPath, wrong) // does not sign the server's certificate
  const p = await fileProxy(t, [web(origin, u.c!.origin, {}, [100, 0], [{ tls: { ca: wrong } }, {}])], { health: { consecutiveFailures: 0 } })
  t.equal((await get(p.url, { 'x-canary': 'stable' })).status, 502, 'the wrong CA: 502')
  p.write([web(origin, u.c!.origin, {}, [100, 0], [{ tls: { ca: `${pki.dir}/missing.pem` } }, {}])])
  const bad = await postReload(p.adminUrl)
  t.equal(bad.status, 400)
  t.match(bad.json<ErrorBody>().error.message, /routes\[0\]\.versions\[0\]\.tls\.ca: cannot read/, 'names the key')
  const right = `${pki.dir}/rotated.pem`
  copyFileSync(pki.ca.certPath, right)
  p.write([web(origin, u.c!.origin, {}, [100, 0], [{ tls: { ca: right } }, {}])])
  t.equal((await postReload(p.adminUrl)).status, 200)
  t.equal((await get(p.url, { 'x-canary': 'stable' })).status, 200, 'the CA under its new path is used')
})

t.test('held: cluster: a versions PUT reaches every worker; SIGHUP to the whole process group reloads and kills no worker', async (t) => {
  const u = await startUpstreams(t, ['a', 'b', 'c'])
  const d = configDir()
  writeConfig(d.file, rawConfig(d.stateFile, [web(u.a!.origin, u.c!.origin)]))
  // its own process group, so the SIGHUP below reaches primary and workers, and not tap
  const child = spawn(process.execPath, [CLI, 'serve', '--config', d.file, '--workers', '2'], { detached: true, env: { ...process.env, LOG_LEVEL: 'info', CANARYD_ADMIN_TOKEN: '' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr!.on('data', (c: Buffer) => { out += c.toString() })
  let gone = false
  child.on('exit', () => { gone = true })
  t.teardown(() => { if (!gone) process.kill(-child.pid!, 'SIGKILL') })
  t.ok(await until(() => gone || out.includes('canaryd started'), 15000), 'started')
  const line = out.split('\n').find((l) => l.includes('canaryd started'))
  if (line === undefined) return t.fail(`did not start: ${out}`)
  const started = JSON.parse(line) as { proxy: string, admin: string, workers: number[] }
  const proxy = `http://${started.proxy}`
  const admin = `http://${started.admin}`
  const batch = async (): Promise<string> => {
    const all = await Promise.all(Array.from({ length: 40 }, async (_, i) => (await get(proxy, { 'x-user-id': `b${i}` })).upstream))
    return JSON.stringify([...new Set(all)])
  }
  t.equal(await batch(), '["a"]')
  t.equal((await adminCall(admin, 'PUT', '/api/v1/routes/web/versions/stable', { upstream: [u.b!.origin] })).status, 200)
  let last = ''
  t.ok(await until(async () => { last = await batch(); return last === '["b"]' }, 5000, 100), `every worker routes stable to b (${last})`)
  // the file now changes stable's upstream: the runtime one is dropped
  writeConfig(d.file, rawConfig(d.stateFile, [web(u.c!.origin, u.c!.origin)]))
  process.kill(-child.pid!, 'SIGHUP')
  t.ok(await until(async () => { last = await batch(); return last === '["c"]' }, 5000, 100), `SIGHUP to the group reloads every worker (${last})`)
  await sleep(200)
  t.notOk(gone, 'the primary is alive')
  for (const w of started.workers) {
    let alive = true
    try { process.kill(w, 0) } catch { alive = false }
    t.ok(alive, `worker ${w} is alive`)
  }
  process.kill(-child.pid!, 'SIGTERM')
  t.ok(await until(() => gone, 5000), 'stops on SIGTERM')
})
