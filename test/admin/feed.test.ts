/**
 * The dashboard's live feed, `GET /api/v1/events` (issue 18, src/admin/feed.ts),
 * against a real proxy with real traffic: what a client reads off the wire —
 * hello, one sample a second with the figures of each version, marks where
 * something happened — and the limits around it (token, 32 streams, the
 * sampler running only while someone watches, shutdown, long-lived streams).
 */
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import type { VersionSample } from '../../src/admin/feed.js'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream, startUpstreams } from '../helpers/upstream.js'
import { sleep, until } from '../helpers/until.js'

// the long-stream test alone takes ~36 s; the file's default 120 s would be tight on a busy machine
t.setTimeout(240_000)

interface Sample {
  t: number
  seconds: number
  routes: Record<string, { versions: Record<string, VersionSample>; rollout: null | Record<string, unknown> }>
}

interface Mark {
  t: number
  route: string
  kind: 'weights' | 'check' | 'rollout'
  [k: string]: unknown
}

interface Hello {
  intervalMs: number
  instance: string
  metrics: boolean
  history: Sample[]
  marks: Mark[]
}

interface SseEvent {
  event: string
  data: unknown
  /** performance.now() when it was parsed. */
  at: number
}

/** One open (or refused) event stream, read the way the dashboard reads it. */
interface Stream {
  status: number
  headers: IncomingHttpHeaders
  /** The body of a refused request (a JSON error). */
  body: string
  events: SseEvent[]
  readonly ended: boolean
  /** Resolves when the server ends the body or the connection closes. */
  end: Promise<void>
  hello: () => Hello
  samples: () => Sample[]
  marks: () => Mark[]
  /** Waits (bounded) for an event matching `pred`; returns the first one. */
  waitFor: (what: string, pred: (e: SseEvent) => boolean, ms?: number) => Promise<SseEvent>
  /** Waits for `n` more samples than there are now. */
  moreSamples: (n: number, ms?: number) => Promise<Sample[]>
  close: () => void
}

/** Opens `GET path` on the admin server and parses text/event-stream as it arrives. */
async function openStream (t: Test, p: TestProxy, path = '/api/v1/events', headers: Record<string, string> = {}): Promise<Stream> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest(`${p.adminUrl}${path}`, { headers, agent: false }, (res: IncomingMessage) => {
      let ended = false
      const events: SseEvent[] = []
      let body = ''
      let buf = ''
      const end = new Promise<void>((resolve) => {
        const done = (): void => { ended = true; resolve() }
        res.once('end', done)
        res.once('close', done)
        res.once('error', done)
      })
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        if (res.statusCode !== 200) {
          body += chunk
          return
        }
        buf += chunk
        let i: number
        while ((i = buf.indexOf('\n\n')) !== -1) {
          const block = buf.slice(0, i)
          buf = buf.slice(i + 2)
          let kind = 'message'
          const data: string[] = []
          for (const line of block.split('\n')) {
            // `:` lines are comments (keepalives): nothing to read
            if (line.startsWith(':')) continue
            if (line.startsWith('event:')) kind = line.slice(6).trim()
            else if (line.startsWith('data:')) data.push(line.slice(5).trimStart())
          }
          if (data.length > 0) events.push({ event: kind, data: JSON.parse(data.join('\n')) as unknown, at: performance.now() })
        }
        // a comment alone (no blank line after it) is a keepalive: dropped
        if (buf.startsWith(':') && buf.includes('\n') && !buf.includes('\n\n')) buf = buf.slice(buf.indexOf('\n') + 1)
      })
      const s: Stream = {
        status: res.statusCode ?? 0,
        headers: res.headers,
        get body () { return body },
        events,
        get ended () { return ended },
        end,
        hello: () => events.find((e) => e.event === 'hello')!.data as Hello,
        samples: () => events.filter((e) => e.event === 'sample').map((e) => e.data as Sample),
        marks: () => events.filter((e) => e.event === 'mark').map((e) => e.data as Mark),
        waitFor: async (what, pred, ms = 5000) => {
          await until(what, () => events.some(pred), ms, 20)
          return events.find(pred)!
        },
        moreSamples: async (n, ms = 1500 * n + 1500) => {
          const have = s.samples().length
          await until(`${n} more sample(s)`, () => s.samples().length >= have + n, ms, 20)
          return s.samples().slice(have)
        },
        close: () => { req.destroy() }
      }
      t.teardown(() => { req.destroy() })
      resolve(s)
    })
    req.on('error', reject)
    req.end()
  })
}

/** Background traffic through the proxy, bounded in time and count; `stop` waits for the last requests. */
function traffic (t: Test, url: string, opts: { ms?: number; clients?: number; pauseMs?: number; path?: string } = {}): { readonly total: number; statuses: Map<number | string, number>; stop: () => Promise<void> } {
  const { ms = 15_000, clients = 3, pauseMs = 2, path = '/' } = opts
  const pool = new Pool(url, { connections: clients })
  const statuses = new Map<number | string, number>()
  const deadline = Date.now() + ms
  let stopped = false
  let total = 0
  let id = 0
  const client = async (): Promise<void> => {
    for (let i = 0; i < 20_000 && !stopped && Date.now() < deadline; i++) {
      const n = id++
      const res = await pool.request({ path, method: 'GET', headers: { 'x-user-id': `u${n}` }, headersTimeout: 10_000 }).catch((err: Error) => err)
      if (res instanceof Error) statuses.set(`error ${res.message}`, (statuses.get(`error ${res.message}`) ?? 0) + 1)
      else {
        await res.body.dump()
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
      }
      total++
      if (pauseMs > 0) await sleep(pauseMs)
    }
  }
  const done = Promise.all(Array.from({ length: clients }, client)).then(async () => { await pool.close() })
  const stop = async (): Promise<void> => { stopped = true; await done }
  t.teardown(stop)
  return { get total () { return total }, statuses, stop }
}

/** A proxy in front of two upstreams (90/10 unless said), closed in teardown. */
async function setup (t: Test, opts: { weights?: [number, number]; extra?: Record<string, unknown>; metrics?: boolean; canary?: (req: IncomingMessage, res: ServerResponse) => void } = {}): Promise<TestProxy> {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary', opts.canary)
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, opts.weights ?? [90, 10])], opts.extra ?? {}), { metrics: opts.metrics ?? true })
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  return p
}

async function putWeights (p: TestProxy, route: string, weights: Record<string, number>, reason: string): Promise<number> {
  const r = await send(`${p.adminUrl}/api/v1/routes/${route}/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ weights, reason }) })
  return r.status
}

t.test('the feed is behind the token — as a Bearer header only, never in the query string — and streams with the dashboard\'s headers', async (t) => {
  const p = await setup(t, { extra: { admin: { host: '127.0.0.1', port: 0, token: 's3cret-token' } } })
  for (const [what, path, headers] of [
    ['no token', '/api/v1/events', {}],
    ['token in ?token=', '/api/v1/events?token=s3cret-token', {}],
    ['token in ?access_token=', '/api/v1/events?access_token=s3cret-token', {}],
    ['wrong token', '/api/v1/events', { authorization: 'Bearer nope' }],
    ['token without Bearer', '/api/v1/events', { authorization: 's3cret-token' }]
  ] as const) {
    const r = await send(`${p.adminUrl}${path}`, { headers })
    t.equal(r.status, 401, `${what}: 401`)
    t.match(r.headers['content-type'], /^application\/json/, `${what}: a JSON error`)
    t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UNAUTHORIZED', `${what}: code`)
    t.notMatch(r.body.toString(), /event: /, `${what}: no event in the answer`)
  }
  const s = await openStream(t, p, '/api/v1/events', { authorization: 'Bearer s3cret-token' })
  t.equal(s.status, 200)
  t.match(s.headers['content-type'], /^text\/event-stream/)
  t.equal(s.headers['cache-control'], 'no-store')
  t.match(s.headers['content-security-policy'], /^default-src 'none'/)
  t.equal(s.headers['x-frame-options'], 'DENY')
  t.equal(s.headers['x-content-type-options'], 'nosniff')
  t.equal(s.headers['content-length'], undefined, 'no length: the body lasts')
  const first = await s.waitFor('hello', () => true)
  t.equal(first.event, 'hello', 'the first event is hello')
})

t.test('hello, then one sample a second per version: rps and the 90/10 split, errorPct of a canary failing half its requests, p50/p99, endpoints; null figures without traffic', async (t) => {
  let n = 0
  const p = await setup(t, {
    // outlier detection off: the failing canary must keep its share of the traffic
    extra: { health: { consecutiveFailures: 0 } },
    canary: (_req, res) => {
      const status = n++ % 2 === 0 ? 500 : 200
      res.writeHead(status, { 'content-type': 'text/plain' })
      res.end(String(status))
    }
  })
  const s = await openStream(t, p)
  t.equal(s.status, 200)
  const hello = await s.waitFor('hello', () => true)
  t.equal(hello.event, 'hello', 'hello comes first')
  const h = s.hello()
  t.equal(h.intervalMs, 1000)
  t.equal(h.metrics, true)
  t.equal(h.instance, 'local')
  t.ok(Array.isArray(h.history), 'history is an array')
  t.ok(Array.isArray(h.marks), 'marks is an array')

  // the first sample needs two scrapes: wait for it, then start the traffic
  await s.moreSamples(1, 4000)
  const load = traffic(t, p.url, { ms: 15_000, clients: 3, pauseMs: 2 })
  const during = await s.moreSamples(5, 12_000)
  await load.stop()
  t.ok(load.total > 100, `traffic flowed (${load.total} requests)`)
  t.same([...load.statuses.keys()].filter((k) => k !== 200 && k !== 500), [], 'only 200 and 500 answers')

  const all = s.samples()
  for (let i = 1; i < all.length; i++) {
    const gap = all[i]!.t - all[i - 1]!.t
    t.ok(gap >= 700 && gap <= 2500, `samples about once a second (gap ${gap} ms)`)
  }
  for (const x of during) {
    t.ok(x.seconds >= 0.7 && x.seconds <= 2.5, `seconds ≈ 1 (${x.seconds})`)
    t.same(Object.keys(x.routes), ['web'])
    t.equal(x.routes.web!.versions.stable!.weight, 90)
    t.equal(x.routes.web!.versions.canary!.weight, 10)
    t.equal(x.routes.web!.rollout, null, 'no rollout')
  }
  // the first and last samples may straddle the start and the end of the traffic
  const busy = during.slice(1, -1)
  t.ok(busy.length >= 3, 'at least three samples inside the traffic')
  const sums = { stable: 0, canary: 0, canaryErrors: 0 }
  for (const x of busy) {
    const st = x.routes.web!.versions.stable!
    const ca = x.routes.web!.versions.canary!
    t.ok(st.rps > 0, `stable rps > 0 (${st.rps})`)
    t.ok(ca.rps > 0, `canary rps > 0 (${ca.rps})`)
    t.equal(st.errorPct, 0, 'stable answers no 5xx')
    t.type(st.p50Ms, 'number', 'stable p50 is a number')
    t.type(st.p99Ms, 'number', 'stable p99 is a number')
    t.ok(st.p50Ms! > 0 && st.p99Ms! >= st.p50Ms!, `stable 0 < p50 (${st.p50Ms}) ≤ p99 (${st.p99Ms})`)
    t.type(ca.p99Ms, 'number', 'canary p99 is a number')
    t.same(st.endpoints, { healthy: 1, ejected: 0 }, 'stable endpoints')
    t.same(ca.endpoints, { healthy: 1, ejected: 0 }, 'canary endpoints')
    sums.stable += st.rps * x.seconds
    sums.canary += ca.rps * x.seconds
    sums.canaryErrors += (ca.errorPct ?? 0) / 100 * ca.rps * x.seconds
  }
  const share = sums.canary / (sums.stable + sums.canary) * 100
  t.comment(`canary share over ${busy.length} samples: ${share.toFixed(1)} % of ${Math.round(sums.stable + sums.canary)} responses`)
  t.ok(share >= 5 && share <= 16, `the split follows 90/10 (canary ${share.toFixed(1)} %)`)
  const errorPct = sums.canaryErrors / sums.canary * 100
  t.comment(`canary errorPct over the traffic: ${errorPct.toFixed(1)} %`)
  t.ok(errorPct >= 30 && errorPct <= 70, `canary errorPct reflects its 50 % of 500s (${errorPct.toFixed(1)})`)

  // traffic over: a quiet second has no rate and no figures
  const quiet = await s.waitFor('a sample without traffic', (e) => e.event === 'sample' && Object.values((e.data as Sample).routes.web!.versions).every((v) => v.rps === 0), 5000)
  for (const [name, v] of Object.entries((quiet.data as Sample).routes.web!.versions)) {
    t.equal(v.errorPct, null, `${name}: errorPct null without responses`)
    t.equal(v.p50Ms, null, `${name}: p50Ms null without responses`)
    t.equal(v.p99Ms, null, `${name}: p99Ms null without responses`)
    t.equal(v.inFlight, 0, `${name}: nothing in flight`)
  }
})

t.test('a PUT weights is marked once, with source api and its reason (no second mark from the per-second diff)', async (t) => {
  const p = await setup(t)
  const s = await openStream(t, p)
  await s.moreSamples(1, 4000)
  const before = Date.now()
  t.equal(await putWeights(p, 'web', { stable: 80, canary: 20 }, 'feed test: more canary'), 200)
  const m = await s.waitFor('a weights mark', (e) => e.event === 'mark' && (e.data as Mark).kind === 'weights', 3000)
  t.match(m.data, { route: 'web', kind: 'weights', weights: { stable: 80, canary: 20 }, source: 'api', reason: 'feed test: more canary' })
  const at = (m.data as Mark).t
  t.ok(at >= before - 1000 && at <= Date.now() + 1000, 'the mark is at the time of the change')
  const after = await s.moreSamples(3)
  t.equal(s.marks().filter((x) => x.kind === 'weights').length, 1, 'exactly one weights mark')
  t.same(after.map((x) => x.routes.web!.versions.canary!.weight), [20, 20, 20], 'samples carry the new weights')
  // a dashboard opened now sees the change among the marks
  const late = await openStream(t, p)
  await late.waitFor('hello', () => true)
  t.match(late.hello().marks.filter((x) => x.kind === 'weights'), [{ weights: { stable: 80, canary: 20 }, source: 'api', reason: 'feed test: more canary' }], 'hello.marks holds it')
})

t.test('a PUT weights made right after the first dashboard connects (before its first sample) is marked too', async (t) => {
  const p = await setup(t)
  const s = await openStream(t, p)
  await s.waitFor('hello', () => true)
  // the sampler's first tick has run (no sample yet: a rate needs two scrapes)
  await sleep(100)
  t.equal(await putWeights(p, 'web', { stable: 70, canary: 30 }, 'early change'), 200)
  await s.moreSamples(2, 5000)
  t.match(s.marks().filter((x) => x.kind === 'weights'), [{ route: 'web', weights: { stable: 70, canary: 30 }, source: 'api', reason: 'early change' }],
    'the change shows as a mark (feed.ts drops it: #sample returns before recording the weights on the first tick, so onChange only records them)')
})

t.test('a rollout started through the API is marked: started, its weight changes (source rollout) and its checks with their verdict', async (t) => {
  const p = await setup(t, { weights: [100, 0] })
  const s = await openStream(t, p)
  await s.moreSamples(1, 4000)
  const load = traffic(t, p.url, { ms: 20_000, clients: 3, pauseMs: 2 })
  const plan = { canary: 'canary', steps: [10, 50], intervalMs: 1000, analysis: { minRequests: 5, maxFailedChecks: 3 }, promotion: 'auto' }
  const started = await send(`${p.adminUrl}/api/v1/routes/web/rollout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(plan) })
  t.equal(started.status, 201, 'started')
  const m = await s.waitFor('a rollout mark, event started', (e) => e.event === 'mark' && (e.data as Mark).kind === 'rollout' && (e.data as Mark).event === 'started', 4000)
  t.match(m.data, { route: 'web', kind: 'rollout', event: 'started', state: 'progressing', weight: 10 })
  const w = await s.waitFor('a weights mark from the rollout', (e) => e.event === 'mark' && (e.data as Mark).kind === 'weights' && (e.data as Mark).source === 'rollout', 4000)
  t.match(w.data, { route: 'web', weights: { stable: 90, canary: 10 } })
  const c = await s.waitFor('a check mark', (e) => e.event === 'mark' && (e.data as Mark).kind === 'check', 8000)
  const check = c.data as Mark
  t.ok(['pass', 'fail', 'inconclusive'].includes(check.verdict as string), `verdict ${String(check.verdict)}`)
  t.type(check.step, 'number')
  t.type(check.weight, 'number')
  t.ok(Array.isArray(check.reasons), 'reasons is an array')
  const x = await s.waitFor('a sample showing the rollout', (e) => e.event === 'sample' && (e.data as Sample).routes.web!.rollout !== null, 3000)
  t.match((x.data as Sample).routes.web!.rollout, { state: 'progressing', canary: 'canary' })
  await load.stop()
  t.equal((await send(`${p.adminUrl}/api/v1/routes/web/rollout/abort`, { method: 'POST' })).status, 200)
  await s.waitFor('a rollout mark, aborted', (e) => e.event === 'mark' && (e.data as Mark).kind === 'rollout' && (e.data as Mark).state === 'aborted', 3000)
  t.equal(s.marks().filter((x) => x.kind === 'rollout' && x.event === 'started').length, 1, 'started is marked once')
})

t.test('?route= keeps one route in samples, marks and history; an unknown route is a JSON 404', async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary', 'api-stable', 'api-canary'])
  const p = await startProxy(testConfig([
    twoVersionRoute(up['api-stable']!.origin, up['api-canary']!.origin, [50, 50], { name: 'api', match: { pathPrefix: '/api' } }),
    twoVersionRoute(up.stable!.origin, up.canary!.origin)
  ]))
  t.teardown(async () => { await p.close() })
  const bad = await send(`${p.adminUrl}/api/v1/events?route=nope`)
  t.equal(bad.status, 404)
  t.match(bad.headers['content-type'], /^application\/json/)
  t.equal(bad.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_ROUTE_NOT_FOUND')
  const all = await openStream(t, p)
  const api = await openStream(t, p, '/api/v1/events?route=api')
  t.equal(api.status, 200)
  await api.moreSamples(1, 4000)
  await all.moreSamples(1, 4000)
  const load = traffic(t, p.url, { ms: 10_000, clients: 2, pauseMs: 5, path: '/api/x' })
  t.equal(await putWeights(p, 'web', { stable: 60, canary: 40 }, 'web change'), 200)
  t.equal(await putWeights(p, 'api', { stable: 70, canary: 30 }, 'api change'), 200)
  await api.moreSamples(3)
  await load.stop()
  for (const x of api.samples()) t.same(Object.keys(x.routes), ['api'], 'only route api in a sample')
  t.ok(api.samples().some((x) => x.routes.api!.versions.stable!.rps > 0), 'with its traffic')
  t.same(api.marks().map((m) => m.route), ['api'], 'only the api weight change is marked')
  t.match(api.marks()[0], { kind: 'weights', reason: 'api change' })
  await all.waitFor('both marks on the unfiltered stream', () => all.marks().length >= 2, 2000)
  t.same(all.marks().map((m) => m.route).sort(), ['api', 'web'], 'the unfiltered stream marks both')
  t.same(Object.keys(all.samples().at(-1)!.routes).sort(), ['api', 'web'], 'and samples both')
  const late = await openStream(t, p, '/api/v1/events?route=web')
  await late.waitFor('hello', () => true)
  const h = late.hello()
  t.ok(h.history.length >= 3, 'history')
  for (const x of h.history) t.same(Object.keys(x.routes), ['web'], 'history holds only route web')
  t.same(h.marks.map((m) => m.route), ['web'], 'hello.marks only route web')
  // the route's history part is built once and shared; a new sample must still reach the next hello
  const live = (await late.moreSamples(1))[0]!
  const later = await openStream(t, p, '/api/v1/events?route=web')
  await later.waitFor('hello', () => true)
  const lh = later.hello().history
  t.same(lh.find((x) => x.t === live.t), live, 'a route stream opening after a sample has it in its history, as it was sent live')
  t.same(lh.filter((x) => h.history.some((y) => y.t === x.t)), h.history, 'and the earlier samples, unchanged')
})

t.test('a client connecting later gets the earlier samples in hello.history, oldest first', async (t) => {
  const p = await setup(t)
  const a = await openStream(t, p)
  await a.moreSamples(3, 6000)
  const seen = a.samples()
  const b = await openStream(t, p)
  await b.waitFor('hello', () => true)
  const h = b.hello()
  t.ok(h.history.length >= 3, `history has the earlier samples (${h.history.length})`)
  const ts = h.history.map((x) => x.t)
  t.same([...ts].sort((x, y) => x - y), ts, 'oldest first')
  for (const x of seen) t.ok(ts.includes(x.t), `sample t=${x.t} is in the later client's history`)
  t.same(h.history.find((x) => x.t === seen[0]!.t), seen[0], 'the same sample, figure for figure')
  const next = (await b.moreSamples(1))[0]!
  t.ok(next.t > ts.at(-1)!, 'then live samples follow the history')
  // the history part of a hello is built once per second and shared; it must not go stale
  const c = await openStream(t, p)
  await c.waitFor('hello', () => true)
  const hc = c.hello().history
  t.same(hc.find((x) => x.t === next.t), next, 'a stream opening after a new sample has it in its history')
  t.same(hc.filter((x) => ts.includes(x.t)), h.history, 'and the earlier samples, unchanged')
})

t.test('a second whose scrape fails publishes no sample (no figures is not zero traffic); the next one covers both seconds', async (t) => {
  const p = await setup(t)
  const m = p.app.metrics!
  const families = m.families.bind(m)
  let failing = false
  let failed = 0
  // the instance's own metric families, failing for a while as a cluster worker's answer might
  m.families = async (names) => {
    if (failing) {
      failed++
      throw new Error('metrics unavailable')
    }
    return await families(names)
  }
  t.teardown(() => { m.families = families })
  const load = traffic(t, p.url, { clients: 2 })
  const s = await openStream(t, p)
  const before = await s.moreSamples(2, 6000)
  t.ok(before.every((x) => (x.routes.web?.versions.stable?.rps ?? 0) > 0), 'traffic shows before')
  failing = true
  const startedFailing = Date.now()
  await until('two failed scrapes', () => failed >= 2, 5000, 20)
  failing = false
  const after = await s.moreSamples(2, 6000)
  await load.stop()
  const during = s.samples().filter((x) => x.t >= startedFailing && x.t < after[0]!.t)
  t.same(during, [], `no sample for the seconds whose scrape failed (${failed} failed)`)
  t.ok((after[0]!.routes.web?.versions.stable?.rps ?? 0) > 0, `the first sample after: traffic, not a drop to 0 (rps ${after[0]!.routes.web?.versions.stable?.rps})`)
  t.ok(after[0]!.seconds >= 1.9, `it covers the failed seconds too (${after[0]!.seconds} s)`)
})

t.test('32 streams at most: the 33rd is 429 CANARYD_ERR_TOO_MANY_STREAMS, and closing one lets a new one in', async (t) => {
  const p = await setup(t)
  const open: Stream[] = []
  for (let i = 0; i < 32; i++) {
    const s = await openStream(t, p)
    t.equal(s.status, 200, `stream ${i + 1} accepted`)
    open.push(s)
  }
  const extra = await openStream(t, p)
  t.equal(extra.status, 429, 'the 33rd is refused')
  await extra.end
  t.equal(JSON.parse(extra.body).error.code, 'CANARYD_ERR_TOO_MANY_STREAMS')
  open[0]!.close()
  let again: Stream | undefined
  // the server sees the close a moment later
  await until('a new stream accepted after one closed', async () => {
    const s = await openStream(t, p)
    if (s.status === 200) { again = s; return true }
    t.equal(s.status, 429, 'refused only for the limit')
    return false
  }, 3000, 100)
  await again!.waitFor('hello on the new stream', () => true)
  t.equal(again!.events[0]!.event, 'hello')
  const one = await openStream(t, p)
  t.equal(one.status, 429, 'full again')
  await one.end
})

/** The status of a HEAD request, or -1 when no answer came within `ms`; `keep` leaves the request open (destroyed in teardown). */
async function head (t: Test, url: string, ms: number, keep = false): Promise<number> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'HEAD', agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
    req.on('error', (e) => { if (keep) resolve(-1); else reject(e) })
    const timer = setTimeout(() => { if (!keep) req.destroy(); resolve(-1) }, ms)
    req.on('close', () => { clearTimeout(timer) })
    t.teardown(() => { clearTimeout(timer); req.destroy() })
    req.end()
  })
}

t.test('HEAD /api/v1/events answers at once and takes none of the 32 stream slots', async (t) => {
  const p = await setup(t)
  // HEAD is answered by the GET handler: the head is written but node sends it only with
  // the first body byte, which a HEAD response never has — so nothing is ever sent
  const st = await head(t, `${p.adminUrl}/api/v1/events`, 2000)
  t.ok(st === 200 || st === 405, `HEAD answered within 2 s (got ${st === -1 ? 'no answer' : st})`)
  // clients that send HEAD and wait (curl -I): do they hold stream slots?
  const heads = Array.from({ length: 32 }, async () => await head(t, `${p.adminUrl}/api/v1/events`, 1500, true))
  await Promise.all(heads)
  const s = await openStream(t, p)
  t.equal(s.status, 200, 'a dashboard still gets a stream while 32 HEAD requests are open')
})

t.test('nobody watching: the sampler stops — no exposition read and no sample kept for the gap', async (t) => {
  const p = await setup(t)
  const metrics = p.app.metrics!
  let exposes = 0
  // the feed reads the families it needs (not the whole exposition): count those reads
  const families = metrics.families.bind(metrics)
  metrics.families = async (names) => { exposes++; return await families(names) }
  const a = await openStream(t, p)
  await a.moreSamples(2, 5000)
  t.ok(exposes >= 3, `the sampler reads the exposition while watched (${exposes})`)
  const lastSeen = a.samples().at(-1)!.t
  a.close()
  await a.end
  // the server's close event follows ours; give it the rest of a tick
  await sleep(300)
  const closedAt = Date.now()
  const count = exposes
  await sleep(2500)
  t.equal(exposes, count, 'no exposition read while nobody watches')
  const b = await openStream(t, p)
  await b.waitFor('hello', () => true)
  const history = b.hello().history
  t.ok(history.length >= 2, 'the earlier samples are kept')
  const gap = history.filter((x) => x.t > closedAt)
  t.same(gap, [], 'no sample taken during the gap')
  t.ok(history.at(-1)!.t <= lastSeen + 1500, 'history ends about where the first client left')
  const next = (await b.moreSamples(1, 4000))[0]!
  t.ok(next.t - history.at(-1)!.t >= 2500, `the next sample comes after the gap (${next.t - history.at(-1)!.t} ms later)`)
  t.ok(next.seconds <= 2, `and measures its own second, not the gap (${next.seconds} s)`)
})

t.test('metrics off: hello says so; samples carry the weights, rps 0 and no figures', async (t) => {
  const p = await setup(t, { metrics: false })
  const s = await openStream(t, p)
  t.equal(s.status, 200)
  await s.waitFor('hello', () => true)
  t.equal(s.hello().metrics, false)
  const load = traffic(t, p.url, { ms: 8000, clients: 2, pauseMs: 5 })
  const samples = await s.moreSamples(3, 6000)
  await load.stop()
  t.ok(load.total > 20, 'traffic flowed')
  for (const x of samples) {
    t.same(x.routes.web!.versions, {
      stable: { weight: 90, rps: 0, errorPct: null, p50Ms: null, p99Ms: null, inFlight: 0, endpoints: null },
      canary: { weight: 10, rps: 0, errorPct: null, p50Ms: null, p99Ms: null, inFlight: 0, endpoints: null }
    }, 'weights, no figures')
  }
})

t.test('closing the app ends open streams (the reader is done, nothing hangs)', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin)]))
  const s1 = await openStream(t, p)
  const s2 = await openStream(t, p, '/api/v1/events?route=web')
  await s1.moreSamples(1, 4000)
  const start = performance.now()
  let timer: NodeJS.Timeout | undefined
  const closed = await Promise.race([
    p.close().then(() => true),
    new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), 8000) })
  ])
  clearTimeout(timer)
  t.ok(closed, 'app.close returns with streams open')
  await Promise.race([Promise.all([s1.end, s2.end]), sleep(3000)])
  t.ok(s1.ended && s2.ended, 'both streams ended')
  t.ok(performance.now() - start < 6000, `within ${Math.round(performance.now() - start)} ms`)
})

// The admin server has requestTimeout 30 s (src/admin/server.ts): a stream must outlive it.
// This test therefore keeps one stream open for ~36 s on purpose — the one slow test of this file.
t.test('a stream open for more than 35 s is not cut by the admin server\'s 30 s requestTimeout', async (t) => {
  const p = await setup(t)
  const s = await openStream(t, p)
  await s.waitFor('hello', () => true)
  const start = performance.now()
  await until('36 s of stream', () => s.ended || performance.now() - start >= 36_000, 40_000, 250)
  t.notOk(s.ended, 'still open after 36 s')
  const n = s.samples().length
  t.ok(n >= 30, `samples kept coming (${n})`)
  t.ok(performance.now() - s.events.at(-1)!.at < 2500, 'the last sample is fresh')
  await s.moreSamples(1, 3000)
})
