/**
 * Issue 15, "staff first, then one region, then everyone": a rollout whose
 * plan is [{staff: 100}, {kr: 10}, 1, 10, 50] under real traffic through the
 * proxy on 127.0.0.1. Each answer is classified by the routing table that
 * served it (its generation, read before the request and after the answer;
 * a request that straddles a swap is not classified), so the assertions are
 * exact: during the staff step every staff user and nobody else is on the
 * canary, during the kr step about 10 % of KR users and still nobody outside
 * the two segments, after the numeric steps everyone has at least the step,
 * and no user who reached the canary is ever sent back to stable.
 */
import t from 'tap'
import { Pool } from 'undici'
import { adminJson as admin, startProxy, testConfig, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

type Kind = 'staff' | 'kr' | 'other'

/** The canary's share, percent, of each kind of user in one routing table. */
interface Shares { staff: number; kr: number; other: number }

interface Seg { name: string; version?: string; weights?: Record<string, number> }

const SEGMENTS = [
  { name: 'staff', match: { header: { 'x-employee': 'true' } }, version: 'stable' },
  { name: 'kr', match: { header: { 'cf-ipcountry': ['KR'] } }, weights: { stable: 100 } }
]

function route (stable: string, canary: string): Record<string, unknown> {
  return {
    name: 'web',
    sticky: { keys: ['header:x-user-id'] },
    override: { header: 'x-canary', cookie: 'canary' },
    versions: [
      { name: 'stable', upstream: stable, weight: 100 },
      { name: 'canary', upstream: canary, weight: 0 }
    ],
    segments: SEGMENTS
  }
}

const PLAN = {
  canary: 'canary',
  steps: [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 10 }, 1, 10, 50],
  intervalMs: 600,
  analysis: { minRequests: 10, maxFailedChecks: 3, successRate: { min: 95 }, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 20 } },
  promotion: 'auto'
}

function segShare (segs: Seg[], name: string): number {
  const s = segs.find((x) => x.name === name)
  if (s === undefined) return -1
  if (s.version !== undefined) return s.version === 'canary' ? 100 : 0
  return s.weights?.canary ?? 0
}

/** One classified answer. */
interface Seen { user: string; kind: Kind; gen: number; version: string }

/** Users: 40 staff, 300 from KR, 600 neither; request i is staff for i%10 in {0,1}, KR for {2,3,4}, else neither. */
function userOf (i: number): { user: string; kind: Kind; headers: Record<string, string> } {
  const r = i % 10
  const n = Math.floor(i / 10)
  if (r < 2) {
    const u = `staff-${(2 * n + r) % 40}`
    return { user: u, kind: 'staff', headers: { 'x-user-id': u, 'x-employee': 'true' } }
  }
  if (r < 5) {
    const u = `kr-${(3 * n + r - 2) % 300}`
    return { user: u, kind: 'kr', headers: { 'x-user-id': u, 'cf-ipcountry': 'KR' } }
  }
  const u = `other-${(5 * n + r - 5) % 600}`
  // a few from another country: matching is exact, JP is not KR
  return { user: u, kind: 'other', headers: { 'x-user-id': u, ...(n % 4 === 0 ? { 'cf-ipcountry': 'JP' } : {}) } }
}

/**
 * Snapshots the canary share of each kind per routing-table generation (the
 * store's specs are assigned before the swap listeners run), so every
 * answer can be judged against the table that served it.
 */
function watchTables (p: TestProxy): Map<number, Shares> {
  const tables = new Map<number, Shares>()
  const snap = (gen: number): void => {
    const segs = p.app.state.segmentsView('web')!.segments as Seg[]
    tables.set(gen, { staff: segShare(segs, 'staff'), kr: segShare(segs, 'kr'), other: p.app.state.weights('web')!.canary! })
  }
  snap(p.app.holder.current.generation)
  p.app.holder.onSwap((table) => { snap(table.generation) })
  return tables
}

t.test('staff first, then one region, then everyone, under real traffic', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([route(stable.origin, canary.origin)]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  const tables = watchTables(p)
  const pool = new Pool(p.url, { connections: 12 })
  t.teardown(async () => { await pool.close() })

  const seen: Seen[] = []
  const statuses = new Map<string, number>()
  let straddled = 0
  let next = 0
  let stop = false
  let extraAfterEnd = -1
  const client = async (): Promise<void> => {
    const deadline = Date.now() + 30_000
    while (!stop && Date.now() < deadline && extraAfterEnd !== 0) {
      if (extraAfterEnd > 0) extraAfterEnd--
      const u = userOf(next++)
      const before = p.app.holder.current.generation
      const res = await pool.request({ path: '/x', method: 'GET', headers: u.headers, headersTimeout: 10_000 }).catch((err: Error) => err)
      const after = p.app.holder.current.generation
      if (res instanceof Error) {
        statuses.set(`error ${res.message}`, (statuses.get(`error ${res.message}`) ?? 0) + 1)
        continue
      }
      await res.body.dump()
      statuses.set(String(res.statusCode), (statuses.get(String(res.statusCode)) ?? 0) + 1)
      if (before !== after) { straddled++; continue }
      seen.push({ user: u.user, kind: u.kind, gen: before, version: String(res.headers['x-canaryd-version']) })
    }
  }
  // the rollout GET as it progresses: its segmentWeights at each step
  const views: Array<Record<string, unknown>> = []
  let final = 'progressing'
  const watcher = async (): Promise<void> => {
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline) {
      const v = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json
      views.push(v)
      if (v.state !== 'progressing') { final = String(v.state); break }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    // some traffic on the promoted route too, then the clients stop
    extraAfterEnd = 400
  }

  // traffic first, on the route as configured; the rollout starts under it
  const clients = Array.from({ length: 12 }, client)
  for (const end = Date.now() + 5000; seen.length < 300 && Date.now() < end;) await new Promise((resolve) => setTimeout(resolve, 5))
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)
  t.equal(started.status, 201, 'the segment plan starts')
  t.equal(started.json.step, 1)
  t.equal(started.json.weight, 0, 'the first step moves nobody outside staff')
  t.same(started.json.segmentWeights, { staff: 100 }, 'the first step puts staff at 100 %')
  await Promise.all([watcher(), ...clients])
  stop = true
  t.equal(final, 'promoted', 'the rollout is promoted')
  t.same([...statuses.keys()], ['200'], `every user got a 200 (${JSON.stringify([...statuses])})`)

  // the tables the rollout went through, in order: staff, then kr, then everyone
  const gens = [...tables.keys()].sort((a, b) => a - b)
  const sequence = gens.map((g) => tables.get(g)!).map((s) => [s.staff, s.kr, s.other])
  t.same(sequence, [[0, 0, 0], [100, 0, 0], [100, 10, 0], [100, 10, 1], [100, 10, 10], [100, 50, 50], [100, 100, 100]],
    'tables: staff 100, then kr 10, then 1, 10, 50 for everyone, then 100 (never below an earlier share)')

  const at = (staff: number, kr: number, other: number): Seen[] => {
    const g = gens.filter((x) => { const s = tables.get(x)!; return s.staff === staff && s.kr === kr && s.other === other })
    return seen.filter((s) => g.includes(s.gen))
  }
  const canaryShare = (list: Seen[]): { users: number; canary: number } => {
    const last = new Map<string, string>()
    for (const s of list) last.set(s.user, s.version)
    return { users: last.size, canary: [...last.values()].filter((v) => v === 'canary').length }
  }
  const startPhase = at(0, 0, 0)
  t.ok(startPhase.length >= 100, `traffic before the rollout (${startPhase.length} answers)`)
  t.ok(startPhase.every((s) => s.version === 'stable'), 'before the first step everyone is on stable')

  const staffStep = at(100, 0, 0)
  const staffIn = staffStep.filter((s) => s.kind === 'staff')
  const othersIn = staffStep.filter((s) => s.kind !== 'staff')
  t.ok(staffIn.length >= 20 && othersIn.length >= 50, `traffic during the staff step (${staffIn.length} staff, ${othersIn.length} others)`)
  t.equal(staffIn.filter((s) => s.version !== 'canary').length, 0, 'staff step: every staff request is on the canary')
  t.equal(othersIn.filter((s) => s.version !== 'stable').length, 0, 'staff step: nobody else is')

  const krStep = at(100, 10, 0)
  t.equal(krStep.filter((s) => s.kind === 'staff' && s.version !== 'canary').length, 0, 'kr step: staff still all on the canary')
  t.equal(krStep.filter((s) => s.kind === 'other' && s.version !== 'stable').length, 0, 'kr step: nobody outside staff and KR is on the canary')
  // KR users have 10 % from the kr step until step 50 (steps 1 and 10 are below it): their share over those tables
  const krTen = [...at(100, 10, 0), ...at(100, 10, 1), ...at(100, 10, 10)]
  const kr = canaryShare(krTen.filter((s) => s.kind === 'kr'))
  // binomial(n, 0.1), n >= 100: [2 %, 22 %] is more than 2.6 sd either side
  t.ok(kr.users >= 100, `enough distinct KR users while kr is at 10 % (${kr.users}; ${canaryShare(krStep.filter((s) => s.kind === 'kr')).users} in the kr step itself)`)
  t.ok(kr.canary >= 0.02 * kr.users && kr.canary <= 0.22 * kr.users, `about 10 % of KR users on the canary (${kr.canary}/${kr.users})`)

  for (const [w, list] of [[1, at(100, 10, 1)], [10, at(100, 10, 10)], [50, at(100, 50, 50)]] as const) {
    t.ok(list.length > 0, `traffic at step ${w}`)
    t.equal(list.filter((s) => s.kind === 'staff' && s.version !== 'canary').length, 0, `step ${w}: staff still on the canary`)
    const krw = canaryShare(list.filter((s) => s.kind === 'kr'))
    const other = canaryShare(list.filter((s) => s.kind === 'other'))
    t.ok(krw.canary >= Math.min(w, 10) / 100 * krw.users * 0.3, `step ${w}: KR users keep at least their share (${krw.canary}/${krw.users})`)
    if (w === 50) t.ok(other.canary > 0.3 * other.users && other.canary < 0.7 * other.users, `step 50: about half of everyone else on the canary (${other.canary}/${other.users})`)
  }
  const promoted = at(100, 100, 100)
  t.ok(promoted.length >= 50, `traffic after promotion (${promoted.length})`)
  t.equal(promoted.filter((s) => s.version !== 'canary').length, 0, 'promoted: staff, KR and everyone else on the canary')

  // monotone: by table generation, no user is on stable after having been on the canary
  const firstCanary = new Map<string, number>()
  for (const s of seen) if (s.version === 'canary' && (firstCanary.get(s.user) ?? Infinity) > s.gen) firstCanary.set(s.user, s.gen)
  const back = seen.filter((s) => s.version === 'stable' && s.gen > (firstCanary.get(s.user) ?? Infinity))
  t.equal(back.length, 0, `no user who reached the canary went back to stable (${firstCanary.size} users reached it; ${straddled} answers straddled a swap and were not classified)`)
  t.ok(firstCanary.size > 100, 'many users reached the canary along the way')

  // the record as the API shows it
  const krView = views.find((v) => (v.segmentWeights as Record<string, number>).kr === 10 && v.weight === 0)
  t.ok(krView !== undefined, 'the GET showed the kr step: segmentWeights {staff: 100, kr: 10} at weight 0')
  t.same(krView?.segmentWeights, { staff: 100, kr: 10 })
  t.equal(krView?.phase, 'steps')
  const end = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json
  t.equal(end.state, 'promoted')
  t.equal(end.weight, 100)
  t.ok(views.some((v) => v.weight === 50 && (v.segmentWeights as Record<string, number>).kr === 50), 'at step 50 the GET showed kr raised with everyone to 50')
  t.same(end.segmentWeights, { staff: 100, kr: 100 }, 'promoted: segmentWeights staff 100, kr 100')
  const r = (await admin(p, 'GET', '/api/v1/routes/web')).json as { versions: Array<{ name: string; weight: number }>; segments: Seg[] }
  t.same(r.versions.map((v) => [v.name, v.weight]), [['stable', 0], ['canary', 100]])
  t.same(r.segments.map((s) => [s.name, s.version ?? null, s.weights ?? null]), [['staff', null, { stable: 0, canary: 100 }], ['kr', null, { stable: 0, canary: 100 }]],
    'the promoted route puts staff and kr on the canary at 100 %')

  // audited: every step that moved a segment carries the segments before and after
  const audit = (await admin(p, 'GET', '/api/v1/audit?route=web&limit=50')).json.entries as Array<{ source: string; segments?: { previous: Seg[]; next: Seg[] } }>
  const segEntries = audit.filter((e) => e.source === 'rollout' && e.segments !== undefined)
  t.ok(segEntries.length >= 2, `the rollout's segment changes are audited (${segEntries.length})`)
  t.ok(segEntries.some((e) => segShare(e.segments!.previous, 'staff') === 0 && segShare(e.segments!.next, 'staff') === 100), 'audit: staff 0 → 100')
  t.ok(segEntries.some((e) => segShare(e.segments!.previous, 'kr') === 0 && segShare(e.segments!.next, 'kr') === 10), 'audit: kr 0 → 10')
})

t.test('an operator changing the segments during the rollout pauses it', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([route(stable.origin, canary.origin)]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })

  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', { ...PLAN, intervalMs: 400 })
  t.equal(started.status, 201)
  // staff stays on the canary as the first step put it (so staff traffic could pass the next check); JP joins kr
  const next = [{ ...SEGMENTS[0], version: 'canary' }, { ...SEGMENTS[1], match: { header: { 'cf-ipcountry': ['KR', 'JP'] } } }]
  const put = await admin(p, 'PUT', '/api/v1/routes/web/segments', { segments: next, reason: 'JP joins the region' })
  t.equal(put.status, 200, 'the segments PUT is accepted')
  // the manager pauses on the store's change event (asynchronously): within one interval at most
  let state = ''
  for (const end = Date.now() + 2000; Date.now() < end && state !== 'paused';) {
    state = String((await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.state)
    if (state !== 'paused') await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.equal(state, 'paused', 'the rollout is paused by the outside change')
  const weightsThen = p.app.state.weights('web')
  const segmentsThen = JSON.stringify(p.app.state.segmentsView('web')!.segments)
  // held: a few intervals of staff traffic (on the canary, enough to pass a check) move nothing
  const codes = new Set<string>()
  for (let i = 0; i < 60; i++) {
    codes.add(await once(p, i))
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.same([...codes], ['200 canary'], 'staff traffic while paused is served by the canary')
  const still = await admin(p, 'GET', '/api/v1/routes/web/rollout')
  t.equal(still.json.state, 'paused', 'still paused after several intervals')
  t.equal(still.json.step, 1)
  t.same(p.app.state.weights('web'), weightsThen, 'weights held')
  t.equal(JSON.stringify(p.app.state.segmentsView('web')!.segments), segmentsThen, 'the operator\'s segments stay as put')
  t.same(p.app.state.segmentsView('web')!.segments[1]!.match.header, { 'cf-ipcountry': ['KR', 'JP'] }, 'JP is in the kr segment')
  const history = still.json.history as Array<{ event: string }>
  t.ok(history.some((h) => h.event === 'paused'), 'the history records the pause')
  const audit = (await admin(p, 'GET', '/api/v1/audit?route=web&limit=10')).json.entries as Array<{ source: string; reason: string | null; segments?: unknown }>
  t.ok(audit.some((e) => e.source === 'api' && e.reason === 'JP joins the region' && e.segments !== undefined), 'the operator\'s change is audited with its segments')

  // the same traffic moves it on once resumed: the pause, not a lack of traffic, held it
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout/resume')).status, 200)
  let step = 1
  for (let i = 0; i < 150 && step === 1; i++) {
    await once(p, i)
    if (i % 10 === 9) step = Number((await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.step)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.equal(step, 2, 'resumed, it goes on to the kr step')
  t.same(p.app.state.segmentsView('web')!.segments[1]!.match.header, { 'cf-ipcountry': ['KR', 'JP'] }, 'with the operator\'s kr definition')
})

/** One staff request through the proxy: "status version". */
async function once (p: TestProxy, i: number): Promise<string> {
  const res = await fetch(`${p.url}/x`, { headers: { 'x-user-id': `p${i}`, 'x-employee': 'true' } })
  await res.arrayBuffer()
  return `${res.status} ${res.headers.get('x-canaryd-version') ?? ''}`
}
