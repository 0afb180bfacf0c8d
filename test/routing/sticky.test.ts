import t from 'tap'
import { findCookie, findQuery } from '../../src/routing/cookie.js'
import { readOverride, readStickyKey, stickyCookieHeader } from '../../src/routing/sticky.js'
import { buildRoutingTable, matchPath, normalizeHost, routesForHost } from '../../src/routing/table.js'

const table = buildRoutingTable([{
  name: 'web',
  match: { pathPrefix: '/' },
  sticky: { keys: ['header:x-user-id', 'cookie:session', 'query:uid', 'ip'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
  override: { header: 'x-canary', cookie: 'canary' },
  versions: [{ name: 'stable', upstream: ['http://127.0.0.1:1'], weight: 100 }, { name: 'canary', upstream: ['http://127.0.0.1:2'], weight: 0 }]
}])
const web = table.routes[0]!

t.test('findCookie', async (t) => {
  const cases: Array<[string | undefined, string, string]> = [
    [undefined, 'a', ''],
    ['', 'a', ''],
    ['a=1', 'a', '1'],
    ['a=1; b=2', 'b', '2'],
    ['ab=1; a=2', 'a', '2'],
    ['xa=1;a=3', 'a', '3'],
    ['a=; b=2', 'a', ''],
    ['a="quoted"', 'a', 'quoted'],
    ['session=abc ; other=x', 'session', 'abc'],
    ['b=2', 'a', ''],
    ['a', 'a', ''],
    ['a=1=2', 'a', '1=2']
  ]
  for (const [h, n, want] of cases) t.equal(findCookie(h, n), want, `${JSON.stringify(h)} ${n}`)
})

t.test('findQuery', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['/', 'uid', ''],
    ['/?uid=7', 'uid', '7'],
    ['/p?a=1&uid=8&b=2', 'uid', '8'],
    ['/p?xuid=1&uid=9', 'uid', '9'],
    ['/p?uid=1#frag', 'uid', '1'],
    ['/p?a=1#uid=2', 'uid', ''],
    ['/p?uid', 'uid', '']
  ]
  for (const [u, n, want] of cases) t.equal(findQuery(u, n), want, `${u} ${n}`)
})

t.test('sticky key sources: first present wins, the sticky cookie is last', async (t) => {
  t.equal(readStickyKey(web, { 'x-user-id': 'u1', cookie: 'session=s1' }, '/?uid=q1', '10.0.0.9'), 'u1', 'header first')
  t.equal(readStickyKey(web, { cookie: 'session=s1; canaryd_id=c1' }, '/?uid=q1', '10.0.0.9'), 's1', 'then cookie')
  t.equal(readStickyKey(web, { cookie: 'canaryd_id=c1' }, '/?uid=q1', '10.0.0.9'), 'q1', 'then query')
  t.equal(readStickyKey(web, {}, '/', '10.0.0.9'), '10.0.0.9', 'then ip')
  t.equal(readStickyKey(web, { 'x-user-id': '' }, '/', ''), '', 'empty values count as absent')
  const noIp = buildRoutingTable([{ name: 'x', match: { pathPrefix: '/' }, sticky: { keys: ['header:x-user-id'], cookie: { name: 'cid', maxAge: 1 } }, override: {}, versions: [{ name: 'a', upstream: ['http://127.0.0.1:1'], weight: 50 }, { name: 'b', upstream: ['http://127.0.0.1:2'], weight: 50 }] }]).routes[0]!
  t.equal(readStickyKey(noIp, { cookie: 'cid=c9' }, '/', '1.2.3.4'), 'c9', 'the sticky cookie is always the last source')
  t.equal(readStickyKey(noIp, {}, '/', '1.2.3.4'), '', 'nothing present → empty (the proxy mints an id)')
})

t.test('override: header beats cookie beats hash; unknown names are ignored', async (t) => {
  t.equal(readOverride(web, { 'x-canary': 'canary' })?.name, 'canary', 'header forces a 0% version')
  t.equal(readOverride(web, { cookie: 'canary=canary' })?.name, 'canary', 'cookie')
  t.equal(readOverride(web, { 'x-canary': 'stable', cookie: 'canary=canary' })?.name, 'stable', 'header over cookie')
  t.equal(readOverride(web, { 'x-canary': 'nope', cookie: 'canary=canary' })?.name, 'canary', 'unknown header value ignored, cookie used')
  t.equal(readOverride(web, { 'x-canary': 'nope' }), undefined, 'unknown value → sticky hash')
})

t.test('sticky cookie string', async (t) => {
  t.equal(stickyCookieHeader(web, 'id1', false), 'canaryd_id=id1; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax')
  t.equal(stickyCookieHeader(web, 'id1', true), 'canaryd_id=id1; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax; Secure')
})

t.test('route matching: host, then longest pathPrefix', async (t) => {
  const v = [{ name: 'a', upstream: ['http://127.0.0.1:1'], weight: 50 }, { name: 'b', upstream: ['http://127.0.0.1:2'], weight: 50 }]
  const base = { sticky: { keys: [], cookie: { name: 'c', maxAge: 1 } }, override: {}, versions: v }
  const tbl = buildRoutingTable([
    { name: 'any', match: { pathPrefix: '/' }, ...base },
    { name: 'any-api', match: { pathPrefix: '/api' }, ...base },
    { name: 'shop', match: { host: 'shop.example.com', pathPrefix: '/' }, ...base },
    { name: 'shop-api', match: { host: 'shop.example.com', pathPrefix: '/api/' }, ...base },
    { name: 'wild', match: { host: '*.example.com', pathPrefix: '/' }, ...base }
  ])
  const m = (host: string, path: string): string | undefined => matchPath(routesForHost(tbl, normalizeHost(host)), path)?.name
  t.equal(m('shop.example.com', '/api/x'), 'shop-api')
  t.equal(m('SHOP.example.com:8080', '/x'), 'shop', 'host is case-insensitive, port ignored')
  t.equal(m('shop.example.com.', '/x'), 'shop', 'trailing dot ignored')
  t.equal(m('shop.example.com', '/apix'), 'shop', 'host match beats a longer host-less prefix')
  t.equal(m('blog.example.com', '/api'), 'wild', 'wildcard host beats any-host')
  t.equal(m('example.com', '/api/v1'), 'any-api', 'bare domain does not match *.example.com')
  t.equal(m('other.org', '/'), 'any')
  const only = buildRoutingTable([{ name: 'only', match: { host: 'a.test', pathPrefix: '/v1' }, ...base }])
  t.equal(matchPath(routesForHost(only, 'a.test'), '/v2'), undefined, 'no match → undefined (404)')
  t.equal(matchPath(routesForHost(only, 'b.test'), '/v1'), undefined)
})
