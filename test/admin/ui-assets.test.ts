/**
 * The dashboard's files on the admin server (issue 18, src/admin/ui.ts):
 * `/ui/` and what it loads, served without the token with a strict policy,
 * only from a fixed list (no request path reaches the file system), off with
 * `admin.ui: false`, and small: everything the page loads under 300 KB
 * gzipped, nothing from another origin.
 *
 * The scripts are dist/ui/*.js: run `npm run build` first.
 */
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { gzipSync } from 'node:zlib'
import t, { type Test } from 'tap'
import { UI_CSP } from '../../src/admin/ui.js'
import { configFromObject } from '../../src/config/load.js'
import { send, type Reply } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstreams } from '../helpers/upstream.js'

/** The policy as /tmp/ui-contract.md (issue 18) writes it. */
const CONTRACT_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

const DIST_UI = new URL('../../dist/ui/', import.meta.url)

async function setup (t: Test, admin: Record<string, unknown> = {}): Promise<TestProxy> {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const p = await startProxy(testConfig([twoVersionRoute(up.stable!.origin, up.canary!.origin)], { admin: { host: '127.0.0.1', port: 0, token: '', ...admin } }))
  t.teardown(async () => { await p.close() })
  return p
}

async function get (p: TestProxy, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Reply> {
  return await send(`${p.adminUrl}${path}`, { method, headers })
}

/** The URL paths index.html loads (`<script src>`, `<link href>`), data: URLs aside. */
function pageRefs (html: string): string[] {
  const refs: string[] = []
  for (const m of html.matchAll(/<script\b[^>]*\bsrc="([^"]+)"/g)) refs.push(m[1]!)
  for (const m of html.matchAll(/<link\b[^>]*\bhref="([^"]+)"/g)) refs.push(m[1]!)
  return refs.filter((r) => !r.startsWith('data:'))
}

/** Relative ES module imports of a script (`from './x.js'`, `import './x.js'`, `import('./x.js')`), as /ui/ paths. */
function moduleImports (js: string, base: string): string[] {
  const out: string[] = []
  for (const m of js.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*)['"](\.{1,2}\/[^'"]+)['"]/g)) out.push(new URL(m[1]!, `http://x${base}`).pathname)
  return out
}

/**
 * Everything the page loads: index.html, its styles and scripts, and the
 * modules those scripts import, transitively. Every one must answer 200.
 */
async function loadAll (t: Test, p: TestProxy): Promise<Map<string, Reply>> {
  const got = new Map<string, Reply>()
  const page = await get(p, '/ui/')
  t.equal(page.status, 200, '/ui/ answers')
  got.set('/ui/', page)
  const queue = pageRefs(page.body.toString())
  for (let i = 0; i < queue.length && i < 200; i++) {
    const path = queue[i]!
    if (got.has(path)) continue
    const r = await get(p, path)
    t.equal(r.status, 200, `${path} answers 200`)
    got.set(path, r)
    if (path.endsWith('.js') && !path.startsWith('/ui/vendor/')) {
      for (const dep of moduleImports(r.body.toString(), path)) if (!got.has(dep) && !queue.includes(dep)) queue.push(dep)
    }
  }
  return got
}

t.test('the contract\'s policy is the one ui.ts exports', async (t) => {
  t.equal(UI_CSP, CONTRACT_CSP)
})

t.test('GET /ui is a 308 to /ui/; /ui/ is the page, with the dashboard\'s policy and headers', async (t) => {
  const p = await setup(t)
  const r = await get(p, '/ui')
  t.equal(r.status, 308)
  t.equal(r.headers.location, '/ui/')
  const page = await get(p, '/ui/')
  t.equal(page.status, 200)
  t.match(page.headers['content-type'], /^text\/html/)
  t.equal(page.headers['content-security-policy'], UI_CSP, 'the exact policy')
  t.equal(page.rawHeaders.filter((h) => h.toLowerCase() === 'content-security-policy').length, 1, 'one policy, not two')
  t.equal(page.headers['x-frame-options'], 'DENY')
  t.equal(page.headers['x-content-type-options'], 'nosniff')
  t.equal(page.headers['cross-origin-opener-policy'], 'same-origin')
  t.equal(page.headers['cross-origin-resource-policy'], 'same-origin')
  t.equal(page.headers['referrer-policy'], 'no-referrer')
  t.equal(page.headers['cache-control'], 'no-cache', 'revalidated each load')
  t.match(page.headers.etag, /^"[^"]+"$/, 'a strong ETag')
  t.match(page.body.toString(), /^<!doctype html>/i)
  t.match(page.body.toString(), /<script type="module" src="\/ui\/main\.js"><\/script>/, 'loads main.js as a module')
  t.notMatch(page.body.toString(), /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script')
  t.notMatch(page.body.toString(), /<style\b|\sstyle="/, 'no inline style')
  const head = await get(p, '/ui/', {}, 'HEAD')
  t.equal(head.status, 200, 'HEAD')
  t.equal(head.body.length, 0, 'HEAD has no body')
})

t.test('the files are served without the token even when admin.token is set; /api/ still needs it', async (t) => {
  const p = await setup(t, { token: 'ui-test-token' })
  for (const path of ['/ui/', '/ui/main.js', '/ui/style.css', '/ui/vendor/uPlot.iife.min.js', '/ui/vendor/uPlot.min.css']) {
    t.equal((await get(p, path)).status, 200, `${path} without a token`)
  }
  t.equal((await get(p, '/ui')).status, 308, '/ui without a token')
  const api = await get(p, '/api/v1/routes')
  t.equal(api.status, 401, '/api/ without the token')
  t.equal(api.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UNAUTHORIZED')
  t.equal((await get(p, '/api/v1/routes', { authorization: 'Bearer ui-test-token' })).status, 200, '/api/ with it')
  t.equal((await get(p, '/api/v1/events?x=/ui/')).status, 401, 'the feed too')
})

t.test('ETag + If-None-Match → 304 without a body; another ETag → 200', async (t) => {
  const p = await setup(t)
  for (const path of ['/ui/', '/ui/main.js', '/ui/vendor/uPlot.iife.min.js']) {
    const first = await get(p, path)
    t.equal(first.status, 200)
    const etag = first.headers.etag!
    t.ok(etag, `${path}: ETag`)
    t.equal((await get(p, path)).headers.etag, etag, `${path}: the same ETag each time`)
    const again = await get(p, path, { 'if-none-match': etag })
    t.equal(again.status, 304, `${path}: 304`)
    t.equal(again.body.length, 0, `${path}: no body`)
    t.equal(again.headers.etag, etag, `${path}: 304 carries the ETag`)
    t.equal(again.headers['content-security-policy'], UI_CSP, `${path}: 304 keeps the policy`)
    const other = await get(p, path, { 'if-none-match': '"something-else"' })
    t.equal(other.status, 200, `${path}: another ETag → 200`)
    t.equal(other.sha256, first.sha256, `${path}: the same bytes`)
  }
  const a = (await get(p, '/ui/main.js')).headers.etag
  const b = (await get(p, '/ui/api.js')).headers.etag
  t.not(a, b, 'files have different ETags')
})

t.test('uPlot is served from its package: /ui/vendor/uPlot.iife.min.js and uPlot.min.css', async (t) => {
  const p = await setup(t)
  const req = createRequire(import.meta.url)
  for (const [path, file, type] of [
    ['/ui/vendor/uPlot.iife.min.js', 'uplot/dist/uPlot.iife.min.js', /^text\/javascript/],
    ['/ui/vendor/uPlot.min.css', 'uplot/dist/uPlot.min.css', /^text\/css/]
  ] as const) {
    const r = await get(p, path)
    t.equal(r.status, 200, path)
    t.match(r.headers['content-type'], type, `${path}: type`)
    t.equal(r.headers['content-security-policy'], UI_CSP, `${path}: policy`)
    t.equal(r.sha256, createHash('sha256').update(readFileSync(req.resolve(file))).digest('hex'), `${path}: the package's file`)
  }
})

t.test('every file the page loads answers 200 with its type — and every built script is served as built', async (t) => {
  const p = await setup(t)
  const got = await loadAll(t, p)
  t.ok(got.has('/ui/main.js') && got.has('/ui/style.css') && got.has('/ui/vendor/uPlot.iife.min.js') && got.has('/ui/vendor/uPlot.min.css'), 'page, style, main.js and uPlot')
  t.ok([...got.keys()].filter((k) => k.endsWith('.js')).length >= 3, `main.js imports modules (${[...got.keys()].join(', ')})`)
  for (const [path, r] of got) {
    if (path.endsWith('.js')) t.match(r.headers['content-type'], /^text\/javascript/, `${path}: JavaScript`)
    if (path.endsWith('.css')) t.match(r.headers['content-type'], /^text\/css/, `${path}: CSS`)
    t.equal(r.headers['x-content-type-options'], 'nosniff', `${path}: nosniff`)
  }
  const built = readdirSync(DIST_UI).filter((n) => n.endsWith('.js'))
  for (const n of built) {
    const r = await get(p, `/ui/${n}`)
    t.equal(r.status, 200, `dist/ui/${n} served`)
    t.equal(r.sha256, createHash('sha256').update(readFileSync(new URL(n, DIST_UI))).digest('hex'), `/ui/${n} is dist/ui/${n}`)
  }
})

t.test('unknown files and traversal attempts are JSON 404s and never a file\'s content', async (t) => {
  const p = await setup(t)
  const pkg = readFileSync(new URL('../../package.json', import.meta.url), 'utf8')
  const secrets = [pkg.slice(0, 40), '"devDependencies"', 'compilerOptions', '<!doctype', 'import ']
  for (const path of [
    '/ui/nope.js',
    '/ui/main.ts',
    '/ui/index.html',
    '/ui/types.d.ts',
    '/ui/vendor/uPlot.esm.js',
    '/ui/vendor/nope.css',
    '/ui/..%2F..%2Fpackage.json',
    '/ui/..%2f..%2fpackage.json',
    '/ui/%2e%2e/package.json',
    '/ui/%2e%2e%2f%2e%2e%2fpackage.json',
    '/ui/vendor/..%2Fpackage.json',
    '/ui/vendor/..%2F..%2F..%2Fpackage.json',
    '/ui/vendor/..%2F..%2Fnode_modules%2Fuplot%2Fpackage.json',
    '/ui/..%5C..%5Cpackage.json',
    '/ui/../package.json',
    '/ui/vendor/../../package.json',
    '/ui/main.js%00',
    '/ui/main.js%00.png',
    '/ui/%00',
    '/ui/%E0%A4%A',
    '/ui/main.js/',
    '/ui/vendor/',
    '/ui//main.js',
    '/ui/vendor/uPlot.iife.min.js/..%2F..%2F..%2Fpackage.json',
    '/ui/%2Fetc%2Fpasswd',
    '/ui/..%2F..%2Fsrc%2Fadmin%2Fui.ts',
    '/ui/..%2F..%2Ftsconfig.json'
  ]) {
    const r = await get(p, path)
    t.equal(r.status, 404, `${path}: 404`)
    t.match(r.headers['content-type'], /^application\/json/, `${path}: JSON`)
    let code: string | undefined
    try {
      code = r.json<{ error: { code: string } }>().error.code
    } catch {}
    t.equal(code, 'CANARYD_ERR_NOT_FOUND', `${path}: code`)
    const text = r.body.toString()
    for (const s of secrets) t.notOk(text.includes(s), `${path}: no file content (${JSON.stringify(s)})`)
  }
})

t.test('POST /ui/ is 405; other methods on the files too', async (t) => {
  const p = await setup(t)
  for (const [method, path] of [['POST', '/ui/'], ['PUT', '/ui/main.js'], ['DELETE', '/ui/vendor/uPlot.min.css'], ['POST', '/ui']] as const) {
    const r = await get(p, path, { 'content-type': 'application/json' }, method)
    t.equal(r.status, 405, `${method} ${path}: 405`)
    t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_METHOD_NOT_ALLOWED')
    t.match(r.headers.allow, /GET/, `${method} ${path}: Allow`)
  }
})

t.test('admin.ui false: every /ui path is 404 and the API is unaffected', async (t) => {
  const p = await setup(t, { ui: false })
  for (const path of ['/ui', '/ui/', '/ui/main.js', '/ui/style.css', '/ui/vendor/uPlot.iife.min.js', '/ui/vendor/uPlot.min.css']) {
    const r = await get(p, path)
    t.equal(r.status, 404, `${path}: 404`)
    t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_NOT_FOUND', `${path}: code`)
    t.equal(r.headers.location, undefined, `${path}: no redirect`)
  }
  t.equal((await get(p, '/api/v1/routes')).status, 200, '/api/v1/routes still 200')
  const feed = await fetch(`${p.adminUrl}/api/v1/events`)
  t.equal(feed.status, 200, 'the event stream stays')
  t.match(feed.headers.get('content-type'), /^text\/event-stream/)
  await feed.body?.cancel()
})

t.test('admin.ui: on by default, CANARYD_ADMIN_UI=false turns it off, anything but a boolean is a config error', async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const base = testConfig([twoVersionRoute(up.stable!.origin, up.canary!.origin)])
  t.equal(base.admin.ui, true, 'default true')
  const raw = { listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, state: base.state, routes: [twoVersionRoute(up.stable!.origin, up.canary!.origin)] }
  const off = configFromObject(raw, '(test)', { CANARYD_ADMIN_UI: 'false' })
  t.equal(off.admin.ui, false, 'the env var turns it off')
  t.equal(configFromObject({ ...raw, admin: { ...raw.admin, ui: false } }, '(test)', {}).admin.ui, false, 'the file key too')
  t.throws(() => configFromObject({ ...raw, admin: { ...raw.admin, ui: 'maybe' } }, '(test)', {}), /admin\.ui/, 'a non-boolean is refused, naming the key')
  const p = await startProxy(off)
  t.teardown(async () => { await p.close() })
  t.equal((await get(p, '/ui/')).status, 404, 'off by env: /ui/ is 404')
  t.equal((await get(p, '/api/v1/routes')).status, 200, 'the API answers')
})

t.test('everything the page loads is under 300 KB gzipped', async (t) => {
  const p = await setup(t)
  const got = await loadAll(t, p)
  let raw = 0
  let gz = 0
  const rows: string[] = []
  for (const [path, r] of got) {
    const z = gzipSync(r.body).length
    raw += r.body.length
    gz += z
    rows.push(`${path} ${r.body.length} B → ${z} B`)
  }
  t.comment(rows.join('\n'))
  t.comment(`total: ${got.size} files, ${(raw / 1024).toFixed(1)} KB raw, ${(gz / 1024).toFixed(1)} KB gzipped (each file gzipped on its own)`)
  t.ok(got.size >= 5, 'the page loads several files')
  t.ok(gz < 300 * 1024, `under 300 KB gzipped (${(gz / 1024).toFixed(1)} KB)`)
})

/** Every http(s) URL in `text`, its line, and whether it sits in a comment (/* … *\/, // …, <!-- … -->) or an input's placeholder. */
function urlsOutsideComments (text: string, html: boolean): Array<{ line: number; url: string; inComment: boolean; placeholder: boolean }> {
  const ranges: Array<[number, number]> = []
  for (const m of text.matchAll(html ? /<!--[\s\S]*?-->/g : /\/\*[\s\S]*?\*\//g)) ranges.push([m.index, m.index + m[0].length])
  if (!html) {
    // a // comment: at a line's start or after whitespace, not inside a string such as 'http://…'
    for (const m of text.matchAll(/(^|[\s;{}])\/\/[^\n]*/gm)) ranges.push([m.index, m.index + m[0].length])
  }
  // an input's example text (`placeholder: 'http://…'`, `placeholder="http://…"`) is shown, never fetched
  const shown: Array<[number, number]> = []
  for (const m of text.matchAll(/\bplaceholder['"]?\s*[:=]\s*(['"])[^'"\n]*\1/g)) shown.push([m.index, m.index + m[0].length])
  const out: Array<{ line: number; url: string; inComment: boolean; placeholder: boolean }> = []
  for (const m of text.matchAll(/https?:\/\/[^\s'"`)<>]*/g)) {
    const inComment = ranges.some(([a, b]) => m.index >= a && m.index < b)
    const placeholder = shown.some(([a, b]) => m.index >= a && m.index < b)
    out.push({ line: text.slice(0, m.index).split('\n').length, url: m[0], inComment, placeholder })
  }
  return out
}

t.test('no absolute http(s) URL to another origin in our page, style sheet or scripts (comments aside)', async (t) => {
  const p = await setup(t)
  const got = await loadAll(t, p)
  let scanned = 0
  for (const [path, r] of got) {
    if (path.startsWith('/ui/vendor/')) continue
    scanned++
    const found = urlsOutsideComments(r.body.toString(), path === '/ui/')
    for (const f of found) t.comment(`${path}:${f.line} ${f.url}${f.inComment ? ' (in a comment)' : ''}${f.placeholder ? ' (an input placeholder)' : ''}`)
    // XML namespace names (createElementNS) are identifiers, never fetched
    const live = found.filter((f) => !f.inComment && !f.placeholder && !/^http:\/\/www\.w3\.org\//.test(f.url))
    t.same(live, [], `${path}: no other origin outside comments`)
  }
  t.ok(scanned >= 3, `scanned ${scanned} of our files`)
})
