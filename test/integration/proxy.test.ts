import { createHash, randomBytes } from 'node:crypto'
import { createServer as createNetServer } from 'node:net'
import { Readable } from 'node:stream'
import t from 'tap'
import { hashKey } from '../../src/routing/hash.js'
import { pickVersion } from '../../src/routing/pick.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { refusedOrigin, richResponse, startUpstream, type SeenRequest } from '../helpers/upstream.js'

t.test('every part of a request and response passes through; hop-by-hop headers do not', async (t) => {
  const stable = await startUpstream('stable', richResponse)
  const canary = await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })

  const body = 'the request body'
  const r = await send(`${proxy.url}/a/b%20c?x=1&y=two&x=3`, {
    method: 'PATCH',
    headers: [
      'Host', 'shop.example.com',
      'X-User-Id', 'u1',
      'X-Multi', 'one',
      'X-Multi', 'two',
      'Connection', 'keep-alive, X-Secret',
      'X-Secret', 'must not pass',
      'Keep-Alive', 'timeout=9',
      'TE', 'trailers',
      'Proxy-Connection', 'keep-alive',
      'X-Forwarded-For', '203.0.113.7',
      'X-Canaryd-Version', 'spoofed',
      'Content-Type', 'text/plain',
      'Content-Length', String(body.length)
    ],
    body
  })
  t.equal(r.status, 201, 'status passes')
  t.equal(r.body.toString(), 'hello world', 'response body passes')
  t.equal(r.headers['x-custom'], 'resp-value', 'response header passes')
  t.same(r.headers['set-cookie'], ['a=1; Path=/', 'b=2; Path=/'], 'repeated Set-Cookie kept apart')
  t.equal(r.headers['x-up-secret'], undefined, 'header named in upstream Connection removed')
  t.not(r.headers['keep-alive'], 'timeout=5', 'upstream Keep-Alive removed (Node adds its own for the client connection)')
  t.equal(r.headers['x-canaryd-version'], 'stable', 'x-canaryd-version on the response')

  const seen = stable.seen[0] as SeenRequest
  t.equal(stable.seen.length, 1)
  t.equal(seen.method, 'PATCH', 'method passes')
  t.equal(seen.url, '/a/b%20c?x=1&y=two&x=3', 'path and query pass byte for byte')
  t.equal(seen.headers.host, 'shop.example.com', 'Host preserved')
  t.equal(seen.headers['x-user-id'], 'u1')
  t.same(seen.rawHeaders.filter((_, i, a) => i % 2 === 1 && a[i - 1] === 'X-Multi'), ['one', 'two'], 'repeated request headers kept in order')
  t.equal(seen.headers['content-type'], 'text/plain')
  t.equal(seen.bodyBytes, body.length, 'body passes')
  t.equal(seen.bodySha256, createHash('sha256').update(body).digest('hex'))
  t.equal(seen.headers['x-secret'], undefined, 'header named in Connection is not forwarded')
  t.equal(seen.headers['keep-alive'], undefined, 'Keep-Alive not forwarded')
  t.equal(seen.headers.te, undefined, 'TE not forwarded')
  t.equal(seen.headers['proxy-connection'], undefined, 'Proxy-Connection not forwarded')
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For from an untrusted peer replaced by the peer (trustedProxies empty)')
  t.equal(seen.headers['x-forwarded-proto'], 'http', 'X-Forwarded-Proto set')
  t.equal(seen.headers['x-forwarded-host'], 'shop.example.com', 'X-Forwarded-Host set')
  t.equal(seen.headers['x-canaryd-version'], 'stable', 'x-canaryd-version set, client copy replaced')
})

t.test('10 MiB upload and download stream through with the same checksum', async (t) => {
  const big = randomBytes(10 * 1024 * 1024)
  const bigSha = createHash('sha256').update(big).digest('hex')
  const up = await startUpstream('stable', (req, res, _b) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-length': big.length })
      // stream in pieces so the proxy must relay, not buffer a single chunk
      Readable.from((function * () { for (let i = 0; i < big.length; i += 65536) yield big.subarray(i, i + 65536) })()).pipe(res)
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ ok: true }))
  })
  const proxy = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [50, 50])]))
  t.teardown(async () => { await proxy.close(); await up.close() })

  const withLength = await send(`${proxy.url}/upload`, { method: 'POST', headers: { 'content-length': String(big.length) }, body: big })
  t.equal(withLength.status, 200)
  t.equal(up.seen[0]!.bodyBytes, big.length, 'Content-Length upload: all bytes')
  t.equal(up.seen[0]!.bodySha256, bigSha, 'Content-Length upload: same checksum')

  const chunked = await send(`${proxy.url}/upload`, { method: 'PUT', body: Readable.from((function * () { for (let i = 0; i < big.length; i += 100_000) yield big.subarray(i, i + 100_000) })()) })
  t.equal(chunked.status, 200)
  t.equal(up.seen[1]!.headers['transfer-encoding'], 'chunked', 'chunked upload stays chunked')
  t.equal(up.seen[1]!.bodySha256, bigSha, 'chunked upload: same checksum')

  const down = await send(`${proxy.url}/download`)
  t.equal(down.status, 200)
  t.equal(down.body.length, big.length, 'download: all bytes')
  t.equal(down.sha256, bigSha, 'download: same checksum')
})

t.test('sticky by header and by cookie: users stay put, and land where the pure pick says', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [70, 30])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const route = proxy.app.holder.current.routes[0]!
  let mismatches = 0
  let flips = 0
  const onCanary = { header: 0, cookie: 0 }
  for (let u = 0; u < 300; u++) {
    const id = `user-${u}`
    const expected = pickVersion(route, hashKey(route.salt, id))!.name
    const versions = new Set<string>()
    for (let i = 0; i < 2; i++) {
      const h = await send(`${proxy.url}/x`, { headers: { 'x-user-id': id } })
      const c = await send(`${proxy.url}/x`, { headers: { cookie: `other=1; session=${id}` } })
      versions.add(String(h.headers['x-canaryd-version']))
      versions.add(String(c.headers['x-canaryd-version']))
      if (h.headers['x-canaryd-version'] !== expected || c.headers['x-canaryd-version'] !== expected) mismatches++
      if (h.headers['set-cookie'] !== undefined || c.headers['set-cookie'] !== undefined) t.fail('no sticky cookie is set when a key is present')
      if (i === 0 && expected === 'canary') { onCanary.header++; onCanary.cookie++ }
    }
    if (versions.size !== 1) flips++
  }
  t.equal(flips, 0, 'no user saw two versions')
  t.equal(mismatches, 0, 'header key and session cookie with the same id pick the version the routing core computes')
  t.ok(onCanary.header > 60 && onCanary.header < 120, `about 30% of 300 users on canary (${onCanary.header})`)
})

t.test('anonymous clients get a sticky cookie and keep their version with it', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const seenVersions = new Set<string>()
  for (let i = 0; i < 40; i++) {
    const first = await send(`${proxy.url}/`)
    const setCookie = first.headers['set-cookie']?.[0] ?? ''
    t.match(setCookie, /^canaryd_id=[0-9a-f-]{36}; Max-Age=86400; Path=\/; HttpOnly; SameSite=Lax$/, 'cookie with HttpOnly, SameSite=Lax, Path, Max-Age; no Secure over http')
    const cookie = setCookie.split(';')[0]!
    for (let j = 0; j < 3; j++) {
      const again = await send(`${proxy.url}/`, { headers: { cookie } })
      t.equal(again.headers['x-canaryd-version'], first.headers['x-canaryd-version'], 'same version with the cookie')
      t.equal(again.headers['set-cookie'], undefined, 'no new cookie once it has one')
    }
    seenVersions.add(String(first.headers['x-canaryd-version']))
  }
  t.same([...seenVersions].sort(), ['canary', 'stable'], 'anonymous clients are spread over both versions')
  // a peer outside trustedProxies (none configured here) cannot claim https
  const forged = await send(`${proxy.url}/`, { headers: { 'x-forwarded-proto': 'https' } })
  t.notMatch(forged.headers['set-cookie']?.[0] ?? '', /Secure/, 'no Secure when an untrusted peer says https')
  t.equal([...stable.seen, ...canary.seen].filter((s) => s.headers['x-forwarded-proto'] === 'https').length, 0, 'an untrusted X-Forwarded-Proto is replaced')
  const trusted = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50])], { trustedProxies: ['127.0.0.1/32'] }))
  t.teardown(trusted.close)
  const secure = await send(`${trusted.url}/`, { headers: { 'x-forwarded-proto': 'https' } })
  t.match(secure.headers['set-cookie']?.[0] ?? '', /; Secure$/, 'Secure when a trusted proxy\'s X-Forwarded-Proto says https')
  const https = [...stable.seen, ...canary.seen].filter((s) => s.headers['x-forwarded-proto'] === 'https')
  t.equal(https.length, 1, 'a trusted outer proxy\'s X-Forwarded-Proto is kept (exactly the one request that sent it)')
})

t.test('override header and cookie force a version, even at 0%; unknown values are ignored', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const v = async (headers: Record<string, string>): Promise<unknown> => (await send(`${proxy.url}/`, { headers })).headers['x-canaryd-version']
  t.equal(await v({ 'x-user-id': 'u1' }), 'stable', 'canary at 0%: sticky users go to stable')
  t.equal(await v({ 'x-user-id': 'u1', 'x-canary': 'canary' }), 'canary', 'override header forces the 0% canary')
  t.equal(await v({ 'x-user-id': 'u1', cookie: 'canary=canary' }), 'canary', 'override cookie')
  t.equal(await v({ 'x-canary': 'stable', cookie: 'canary=canary' }), 'stable', 'header beats cookie')
  t.equal(await v({ 'x-canary': 'v9', 'x-user-id': 'u1' }), 'stable', 'unknown version ignored')
  t.equal(canary.seen.length, 2, 'the canary saw exactly the two cookie/header-forced requests')
  t.equal(canary.seen[0]!.headers['x-canaryd-version'], 'canary')
})

t.test('two proxy instances agree on 3,000 users', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const cfg = (): ReturnType<typeof testConfig> => testConfig([twoVersionRoute(stable.origin, canary.origin, [80, 20])])
  const a = await startProxy(cfg())
  const b = await startProxy(cfg())
  t.teardown(async () => { await a.close(); await b.close(); await stable.close(); await canary.close() })
  let disagree = 0
  let canaryUsers = 0
  for (let start = 0; start < 3000; start += 100) {
    const batch = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
      const id = `u-${start + i}`
      const [x, y] = await Promise.all([send(`${a.url}/`, { headers: { 'x-user-id': id } }), send(`${b.url}/`, { headers: { 'x-user-id': id } })])
      return [x.headers['x-canaryd-version'], y.headers['x-canaryd-version']]
    }))
    for (const [x, y] of batch) {
      if (x !== y) disagree++
      if (x === 'canary') canaryUsers++
    }
  }
  t.equal(disagree, 0, 'both instances put every user on the same version')
  t.ok(canaryUsers > 500 && canaryUsers < 700, `about 20% of 3,000 on canary (${canaryUsers})`)
})

t.test('no matching route → 404 with a JSON body', async (t) => {
  const up = await startUpstream('stable')
  const proxy = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [50, 50], { match: { host: 'shop.example.com', pathPrefix: '/shop' } })]))
  t.teardown(async () => { await proxy.close(); await up.close() })
  const r = await send(`${proxy.url}/shop/x`, { headers: { host: 'other.example.com' } })
  t.equal(r.status, 404)
  t.equal(r.headers['content-type'], 'application/json')
  t.same(r.json(), { error: { code: 'CANARYD_ERR_NO_ROUTE', message: 'no route matches this host and path' } })
  t.equal((await send(`${proxy.url}/other`, { headers: { host: 'shop.example.com' } })).status, 404, 'path outside the prefix')
  t.equal((await send(`${proxy.url}/shop/x`, { headers: { host: 'SHOP.example.com:80' } })).status, 200, 'matching host and prefix')
  t.equal(up.seen.length, 1, 'only the matching request reached the upstream')
})

t.test('upstream refuses → 502; no headers in time → 504; the proxy keeps serving', async (t) => {
  const dead = await refusedOrigin()
  const sockets = new Set<import('node:net').Socket>()
  const silent = createNetServer((s) => { sockets.add(s); s.on('error', () => {}) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  const silentPort = (silent.address() as { port: number }).port
  const ok = await startUpstream('ok')
  const proxy = await startProxy(testConfig([
    twoVersionRoute(dead, ok.origin, [100, 0], { name: 'dead', match: { pathPrefix: '/dead' } }),
    twoVersionRoute(`http://127.0.0.1:${silentPort}`, ok.origin, [100, 0], { name: 'silent', match: { pathPrefix: '/silent' } }),
    twoVersionRoute(ok.origin, ok.origin, [100, 0], { name: 'ok', match: { pathPrefix: '/' } })
  ], { timeouts: { upstreamResponseMs: 300 } }))
  t.teardown(async () => { await proxy.close(); for (const s of sockets) s.destroy(); silent.close(); await ok.close() })

  const refused = await send(`${proxy.url}/dead`)
  t.equal(refused.status, 502)
  t.equal(refused.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_CONNECT')
  t.equal(refused.headers['x-canaryd-version'], 'stable', 'the error says which version failed')
  const started = Date.now()
  const slow = await send(`${proxy.url}/silent`)
  t.equal(slow.status, 504)
  t.equal(slow.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_TIMEOUT')
  t.ok(Date.now() - started >= 250, 'not before upstreamResponseMs')
  t.equal((await send(`${proxy.url}/fine`)).status, 200, 'still serving')
})

t.test('a client that goes away aborts the upstream request', async (t) => {
  let upstreamClosed: () => void = () => {}
  const closed = new Promise<void>((resolve) => { upstreamClosed = resolve })
  let arrived: () => void = () => {}
  const arrivedP = new Promise<void>((resolve) => { arrived = resolve })
  const { createServer } = await import('node:http')
  const hang = createServer((_req, res) => {
    arrived()
    res.on('close', () => upstreamClosed()) // never answers; only closes when the proxy aborts
  })
  await new Promise<void>((resolve) => hang.listen(0, '127.0.0.1', resolve))
  const origin = `http://127.0.0.1:${(hang.address() as { port: number }).port}`
  const proxy = await startProxy(testConfig([twoVersionRoute(origin, origin, [50, 50])]))
  t.teardown(async () => { await proxy.close(); hang.closeAllConnections(); hang.close() })
  const { request } = await import('node:http')
  const req = request(`${proxy.url}/wait`, { agent: false })
  req.on('error', () => {})
  req.end()
  await arrivedP
  t.equal(proxy.app.proxy.inFlight, 1, 'one request in flight')
  req.destroy()
  await closed
  t.pass('upstream saw its request closed')
  for (let i = 0; i < 50 && proxy.app.proxy.inFlight !== 0; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(proxy.app.proxy.inFlight, 0, 'nothing left in flight')
})
