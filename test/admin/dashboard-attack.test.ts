/**
 * Attacks on the dashboard's server side (issue 18): the YAML plan body
 * (src/admin/http.ts readDocumentBody), the event feed (src/admin/feed.ts)
 * and the static handler (src/admin/ui.ts), against a real canaryd on
 * 127.0.0.1. Every loop is bounded in count and time.
 *
 * What holds is asserted plainly. What the attack found broken was fixed;
 * the assertions of the behaviour that should hold now guard it, each with
 * a comment saying what was found.
 */
import { connect, type Socket } from 'node:net'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import t, { type Test } from 'tap'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'
import { sleep, until } from '../helpers/until.js'
import { freeSlots, rawStream } from '../helpers/feed.js'

t.setTimeout(240_000)

const TOKEN = 'att4ck-t0ken'

/** A proxy in front of two upstreams, closed in teardown. */
async function setup (t: Test, extra: Record<string, unknown> = {}, routes?: (stable: string, canary: string) => unknown[]): Promise<TestProxy> {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig(routes === undefined ? [twoVersionRoute(stable.origin, canary.origin)] : routes(stable.origin, canary.origin), extra))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  return p
}

/** POST a plan (dry run) with a content type; status, parsed body (or raw text) and size of the answer. */
async function dryRun (p: TestProxy, body: string, type = 'application/yaml'): Promise<{ status: number, code: string, message: string, bytes: number }> {
  const r = await send(`${p.adminUrl}/api/v1/routes/web/rollout?dryRun=true`, { method: 'POST', headers: { 'content-type': type }, body })
  let code = ''
  let message = ''
  try {
    const j = r.json<{ error?: { code: string, message: string } }>()
    code = j.error?.code ?? ''
    message = j.error?.message ?? ''
  } catch {}
  return { status: r.status, code, message, bytes: r.body.length }
}

/** The HTTP status line of one raw request written as is on a fresh connection (bounded to 5 s). */
async function rawStatus (port: number, head: string): Promise<string> {
  return await new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    let data = ''
    const timer = setTimeout(() => { s.destroy(); resolve('timeout') }, 5000)
    s.setEncoding('latin1')
    s.on('data', (c: string) => {
      data += c
      const i = data.indexOf('\r\n')
      if (i !== -1) { clearTimeout(timer); s.destroy(); resolve(data.slice(0, i)) }
    })
    s.on('error', () => { clearTimeout(timer); resolve('error') })
    s.on('close', () => { clearTimeout(timer); resolve(data === '' ? 'closed' : data.split('\r\n')[0]!) })
    s.write(head)
  })
}

function adminPort (p: TestProxy): number {
  return Number(new URL(p.adminUrl).port)
}

t.test('YAML and JSON plans: __proto__ keys, merge keys (<<) and YAML 1.1 tags pollute no prototype', async (t) => {
  const p = await setup(t)
  const docs: Array<[string, string, string]> = [
    ['yaml __proto__', '__proto__: {polluted: 1}\ncanary: canary\nsteps: [10]\n', 'application/yaml'],
    ['yaml nested __proto__', 'canary: canary\nsteps: [10]\nanalysis: {__proto__: {polluted: 2}}\n', 'application/yaml'],
    ['yaml ? __proto__', '? __proto__\n: {polluted: 3}\ncanary: canary\nsteps: [10]\n', 'application/yaml'],
    ['yaml 1.1 merge of __proto__', '%YAML 1.1\n---\nbase: &b {__proto__: {polluted: 4}}\n<<: *b\ncanary: canary\nsteps: [10]\n', 'application/yaml'],
    ['yaml 1.1 merge into analysis', '%YAML 1.1\n---\nx: &x {__proto__: {polluted: 5}}\ncanary: canary\nsteps: [10]\nanalysis: {<<: *x}\n', 'application/yaml'],
    ['yaml !!map', '!!map {__proto__: {polluted: 6}, canary: canary, steps: [10]}\n', 'application/yaml'],
    ['yaml unknown tag', 'canary: !!js/function "function () { globalThis.polluted = 7 }"\nsteps: [10]\n', 'application/yaml'],
    ['json __proto__', '{"__proto__":{"polluted":8},"canary":"canary","steps":[10]}', 'application/json'],
    ['json constructor.prototype', '{"constructor":{"prototype":{"polluted":9}},"canary":"canary","steps":[10]}', 'application/json'],
    ['json in variables', '{"canary":"canary","steps":[10],"analysis":{"variables":{"__proto__":{"polluted":10}}}}', 'application/json']
  ]
  for (const [what, body, type] of docs) {
    const r = await dryRun(p, body, type)
    t.equal(r.status, 400, `${what}: 400 (${r.code}: ${r.message.slice(0, 120)})`)
  }
  const weights = await send(`${p.adminUrl}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"weights":{"stable":50,"canary":50,"__proto__":{"polluted":11}}}' })
  t.equal(weights.status, 400, 'PUT weights with a __proto__ version: 400')
  t.equal(({} as Record<string, unknown>).polluted, undefined, '({}).polluted is still undefined')
  t.equal((globalThis as Record<string, unknown>).polluted, undefined, 'no global set by a tag')
  t.same(Object.keys(Object.prototype), [], 'Object.prototype has no enumerable key')
})

t.test('YAML plans: an alias bomb, 10,000 nested [ and a body over 64 KiB are 4xx, never 500', async (t) => {
  const p = await setup(t)
  const bomb = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
  for (let i = 1; i < 10; i++) bomb.push(`a${i}: &a${i} [${Array.from({ length: 10 }, () => `*a${i - 1}`).join(', ')}]`)
  const cases: Array<[string, string, number]> = [
    ['billion laughs', `${bomb.join('\n')}\ncanary: canary\nsteps: [10]\n`, 400],
    ['10,000 nested flow sequences', `canary: canary\nsteps: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`, 400],
    ['10,000 nested flow mappings', `canary: canary\nsteps: [10]\nanalysis: ${'{a: '.repeat(10_000)}1${'}'.repeat(10_000)}\n`, 400],
    ['huge numbers', 'canary: canary\nsteps: [1e400, -1e400, .nan, .inf, 0x7fffffffffffffffffff]\nintervalMs: 1e400\n', 400],
    ['65 KiB of comments', `# ${'x'.repeat(66 * 1024)}\ncanary: canary\nsteps: [10]\n`, 413]
  ]
  for (const [what, body, want] of cases) {
    const start = performance.now()
    const r = await dryRun(p, body)
    t.equal(r.status, want, `${what}: ${want} (${r.code}, ${Math.round(performance.now() - start)} ms)`)
  }
})

// found and fixed (issue 18 review): readDocumentBody lets yaml build a cyclic object; checkWeight (src/routing/weights.ts) and other plan validators JSON.stringify the raw value into their message and throw TypeError → 500 CANARYD_ERR_INTERNAL, an error-level stack in the log

t.test('a YAML plan whose alias contains itself is a 400 naming the key, not a 500', async (t) => {
  const p = await setup(t)
  for (const [what, body] of [
    ['steps: &a [10, *a]', 'canary: canary\nsteps: &a [10, *a]\n'],
    ['intervalMs: &m {a: *m}', 'canary: canary\nsteps: [10]\nintervalMs: &m {a: *m}\n'],
    ['strategy: &c [*c]', 'canary: canary\nsteps: [10]\nstrategy: &c [*c]\n'],
    ['analysis.variables.x: &c [*c]', 'canary: canary\nsteps: [10]\nanalysis: {variables: {x: &c [*c]}}\n']
  ]) {
    const r = await dryRun(p, body!)
    t.equal(r.status, 400, `${what}: ${r.status} ${r.code}`)
  }
})

// found and fixed (issue 18 review): 99 aliases to one ~56 KB anchor under steps: a 57 KB body gets a 5.8 MB 400 answer (every steps[i] message JSON.stringifies the whole value)

t.test('a plan\'s error answer stays about the size of the plan (aliases must not amplify it)', async (t) => {
  const p = await setup(t)
  const anchor = `[${Array.from({ length: 900 }, () => `"${'x'.repeat(60)}"`).join(',')}]`
  const body = `canary: canary\nb: &b ${anchor}\nsteps: [${Array.from({ length: 99 }, () => '*b').join(',')}]\n`
  t.ok(body.length < 64 * 1024, `the body is ${body.length} bytes`)
  const r = await dryRun(p, body)
  t.equal(r.status, 400, 'refused')
  t.ok(r.bytes < 4 * body.length, `the answer is ${r.bytes} bytes for a ${body.length}-byte body`)
})

t.test('the event stream keeps its framing whatever a reason holds: CR, LF, "\\n\\ndata:", U+2028, a lone surrogate', async (t) => {
  const p = await setup(t)
  const reason = 'a\r\nevent: hello\r\ndata: {"forged":1}\r\n\r\n\ndata: x\n\n\u2028\u2029\u0085<img src=x onerror=alert(1)>\ud800'
  let text = ''
  const req = httpRequest(`${p.adminUrl}/api/v1/events`, { agent: false }, (res: IncomingMessage) => {
    res.setEncoding('utf8')
    res.on('data', (c: string) => { text += c })
  })
  req.on('error', () => {})
  req.end()
  t.teardown(() => { req.destroy() })
  await until('hello', () => text.includes('event: hello'), 5000, 20)
  const put = await send(`${p.adminUrl}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ weights: { stable: 70, canary: 30 }, reason }) })
  t.equal(put.status, 200, 'the reason is accepted')
  await until('the mark', () => text.includes('"kind":"weights"'), 5000, 20)
  await sleep(100)
  req.destroy()
  // the server-sent-events line rules: a line ends at CR, LF or CRLF (WHATWG HTML 9.2.6)
  const events: Array<{ event: string, data: string }> = []
  let ev = ''
  let data: string[] = []
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (data.length > 0) events.push({ event: ev === '' ? 'message' : ev, data: data.join('\n') })
      ev = ''
      data = []
    } else if (line.startsWith('event:')) ev = line.slice(6).trim()
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
  }
  t.same(events.filter((e) => !['hello', 'sample', 'mark'].includes(e.event)).map((e) => e.event), [], 'only hello, sample and mark events')
  t.equal(events.filter((e) => e.event === 'hello').length, 1, 'one hello: none forged')
  for (const e of events) t.doesNotThrow(() => JSON.parse(e.data), `${e.event}: one JSON document per event`)
  const mark = events.filter((e) => e.event === 'mark').map((e) => JSON.parse(e.data) as { reason?: string }).find((m) => m.reason !== undefined && m.reason !== null)
  t.equal(mark?.reason, reason, 'the reason arrives whole, as data (JSON escapes CR, LF and the lone surrogate)')
})

t.test('refused requests take no stream slot: 60 without or with a wrong token, then 32 streams still open', async (t) => {
  const p = await setup(t, { admin: { host: '127.0.0.1', port: 0, token: TOKEN } })
  const port = adminPort(p)
  const held: Socket[] = []
  for (let i = 0; i < 60; i++) {
    const s = await rawStream(t, port, i % 2 === 0 ? '' : 'Authorization: Bearer wrong\r\n')
    t.equal(s.status, 401, `refused request ${i} is 401`)
    held.push(s.socket)
    if (s.status !== 401) break
  }
  t.equal(await freeSlots(t, port, `Authorization: Bearer ${TOKEN}\r\n`), 32, 'all 32 streams are still free while 60 refused connections stay open')
  for (const s of held) s.destroy()
})

t.test('200 streams dropped every way (close, half-close, reset) free their slots and the sampler stops', async (t) => {
  const p = await setup(t)
  const port = adminPort(p)
  const metrics = p.app.metrics!
  let exposes = 0
  const expose = metrics.expose.bind(metrics)
  metrics.expose = async () => { exposes++; return await expose() }
  const timeouts = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
  const before = timeouts()
  const deadline = Date.now() + 60_000
  for (let i = 0; i < 200 && Date.now() < deadline; i++) {
    const s = connect(port, '127.0.0.1')
    s.on('error', () => {})
    await new Promise<void>((resolve) => s.once('connect', () => resolve()))
    s.write(`GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
    if (i % 4 === 1) await new Promise((resolve) => s.once('data', resolve))
    if (i % 4 === 2) s.end() // half-close: the server ends its side
    else if (i % 4 === 3) s.resetAndDestroy()
    else s.destroy()
    if (i % 20 === 19) await sleep(50)
  }
  await sleep(1500)
  t.equal(await freeSlots(t, port), 32, 'all 32 slots are free again')
  await sleep(1500)
  const count = exposes
  await sleep(2500)
  t.equal(exposes, count, 'no exposition read once nobody watches: the sampler stopped')
  t.ok(timeouts() <= before, `no timer left behind (${before} before, ${timeouts()} after)`)
})

t.test('the static handler: traversal, double and overlong encodings, odd methods and long paths reach no file', async (t) => {
  const p = await setup(t)
  const port = adminPort(p)
  const paths = [
    '/ui/../package.json', '/ui/..%2fpackage.json', '/ui/%2e%2e/package.json', '/ui/%2e%2e%2fpackage.json', '/ui/%252e%252e%252fpackage.json',
    '/ui/%c0%ae%c0%ae%c0%afpackage.json', '/ui/%e0%80%ae%e0%80%ae/package.json', '/ui/vendor/..%2f..%2fpackage.json', '/ui/vendor/%2e%2e%5c%2e%2e%5cpackage.json',
    '/ui/..\\package.json', '/ui//etc/passwd', '/ui/%2fetc%2fpasswd', '/ui/main.js%00.html', '/ui/main.js/', '/ui/./main.js', '/ui/index.html', '/ui/style.css.map',
    '/ui/constructor', '/ui/__proto__', '/ui/vendor/__proto__', '/ui/vendor/constructor', '/ui/%', '/ui/%zz', '/UI/', '/ui/MAIN.JS', '/ui/../../../../../../etc/passwd'
  ]
  for (const path of paths) {
    const status = await rawStatus(port, `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`)
    t.match(status, /^HTTP\/1\.1 (400|404) /, `${path}: ${status}`)
  }
  t.match(await rawStatus(port, `GET /ui/${'a'.repeat(20_000)} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 (414|431|404) /, 'a 20,000-character path: refused')
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'PROPFIND']) {
    const r = await send(`${p.adminUrl}/ui/main.js`, { method })
    t.equal(r.status, 405, `${method} /ui/main.js: 405`)
    t.equal(r.headers['content-type'], 'application/json; charset=utf-8', `${method}: a JSON error, not the file`)
  }
  const ok = await send(`${p.adminUrl}/ui/main.js`)
  t.equal(ok.status, 200)
  const etag = String(ok.headers.etag)
  for (const [inm, want] of [[etag, 304], [`W/${etag}`, 200], ['*', 200], [`"x", ${etag}`, 200], [`${etag}${etag}`, 200]] as const) {
    const r = await send(`${p.adminUrl}/ui/main.js`, { headers: { 'if-none-match': inm } })
    t.equal(r.status, want, `If-None-Match ${inm}: ${want}`)
    t.equal(r.headers['content-security-policy']?.includes("script-src 'self'"), true, 'with the dashboard\'s CSP')
  }
})

/** 150 routes of three versions with long names: one sample is about 80 KB of JSON. */
function manyRoutes (stable: string, canary: string): unknown[] {
  const pad = (s: string): string => `${s}-${'x'.repeat(60 - s.length)}`
  return Array.from({ length: 150 }, (_, i) => ({
    name: pad(`r${i}`),
    match: { host: `h${i}.example.com` },
    versions: [
      { name: pad('stable'), upstream: stable, weight: 80 },
      { name: pad('canary'), upstream: canary, weight: 10 },
      { name: pad('third'), upstream: canary, weight: 10 }
    ]
  }))
}

// found and fixed (issue 18 review): every new stream gets the whole kept history (≤300 samples, ~80 KB each with this config) serialized anew in one JSON.stringify and written in one piece (src/admin/feed.ts #open): 31 clients connecting at once, or a few reconnecting in a loop, stall the event loop the proxy shares for hundreds of ms each round and hold the hello in memory per stream

t.test('a larger config: 31 streams opening at once do not stall the event loop (the proxy shares it)', async (t) => {
  const p = await setup(t, {}, manyRoutes)
  const port = adminPort(p)
  // one watcher fills the history, as an open dashboard does
  const watcher = httpRequest(`${p.adminUrl}/api/v1/events`, { agent: false }, (res) => { res.resume() })
  watcher.on('error', () => {})
  watcher.end()
  t.teardown(() => { watcher.destroy() })
  const helloSize = async (): Promise<number> => await new Promise<number>((resolve) => {
    let n = 0
    const req = httpRequest(`${p.adminUrl}/api/v1/events`, { agent: false }, (res) => {
      res.on('data', (c: Buffer) => {
        n += c.length
        if (c.includes('\n\n')) { req.destroy(); resolve(n) }
      })
    })
    req.on('error', () => resolve(n))
    req.end()
  })
  let hello = 0
  // bounded: at most 15 looks, 3 s apart
  for (let i = 0; i < 15 && hello < 3 * 1024 * 1024; i++) {
    await sleep(3000)
    hello = await helloSize()
  }
  t.comment(`hello is ${(hello / 1024 / 1024).toFixed(1)} MiB after the history filled for a while`)
  // the event loop's stalls while 31 streams open: a 1 ms ticker, every gap past 5 ms counted.
  // With the history chunk shared by the streams a round costs 35-55 ms here; serialising
  // the samples per stream (the defect, even with the 2 MiB budget) costs 350-450 ms, and
  // copying and encoding the 2 MiB text per stream (as first fixed) 120-230 ms. A busy
  // machine adds its own stalls (one round measured 526 ms with two CPU hogs beside the
  // suite), so: the best of at most 3 rounds under 200 ms; noise from other processes
  // seldom hits every round, the defect does.
  const round = async (): Promise<{ blocked: number, longest: number, grew: number, opened: number, cpuMs: number }> => {
    const rss = process.memoryUsage().rss
    const cpu0 = process.cpuUsage()
    let last = performance.now()
    let blocked = 0
    let longest = 0
    let ticking = true
    const tick = (): void => {
      const now = performance.now()
      const gap = now - last
      if (gap > 5) { blocked += gap; longest = Math.max(longest, gap) }
      last = now
      if (ticking) setTimeout(tick, 1)
    }
    setTimeout(tick, 1)
    const streams = await Promise.all(Array.from({ length: 31 }, async () => await rawStream(t, port)))
    await sleep(1500)
    ticking = false
    const cpu = process.cpuUsage(cpu0)
    const grew = process.memoryUsage().rss - rss
    for (const s of streams) s.socket.destroy()
    return { blocked, longest, grew, opened: streams.filter((s) => s.status === 200).length, cpuMs: (cpu.user + cpu.system) / 1000 }
  }
  const BOUND_MS = 200
  const rounds: Array<Awaited<ReturnType<typeof round>>> = []
  for (let i = 0; i < 3 && !rounds.some((r) => r.blocked < BOUND_MS); i++) {
    // the last round's streams free their slots once the server sees them close (loopback: at once)
    if (i > 0) await sleep(500)
    rounds.push(await round())
  }
  for (const r of rounds) {
    t.comment(`event loop: blocked ${r.blocked.toFixed(0)} ms in all (longest ${r.longest.toFixed(0)} ms), CPU ${r.cpuMs.toFixed(0)} ms while 31 streams opened; RSS ${r.grew >= 0 ? '+' : ''}${(r.grew / 1024 / 1024).toFixed(0)} MiB`)
  }
  // every round must have opened all 31 (a round refused with 429s would build no hello and measure nothing)
  t.same(rounds.map((r) => r.opened), rounds.map(() => 31), '31 streams opened beside the watcher, in every round')
  const best = Math.min(...rounds.map((r) => r.blocked))
  t.ok(best < BOUND_MS, `the event loop was blocked ${best.toFixed(0)} ms in all (the best of ${rounds.length} round(s))`)
})
