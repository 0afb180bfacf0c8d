/**
 * Issue 15, the next release: a rollout started while the canary already
 * has users starts at the first step at or above its weight (never moving
 * anyone back) unless --from-start; `canary` may be left out of a plan on a
 * stable/canary route; and the whole next-release flow twice in a row with
 * `canaryUpstream` and a finalized promotion: stable ends on the new build
 * at 100 %, the canary at 0 %, and no user sees the build go back or change
 * at the finalize. Builds are told apart by the `x-build` header their
 * upstreams set.
 */
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { App } from '../../src/app.js'
import { CLI, ensureBuilt, runCli } from '../helpers/cli.js'
import { captureLog } from '../helpers/log.js'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream, type TestUpstream } from '../helpers/upstream.js'

// before any server starts: a rebuild (src newer than dist) blocks this process for seconds
ensureBuilt()

const ANALYSIS = { minRequests: 15, maxFailedChecks: 3, successRate: { min: 95 }, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 20 } }

/** An upstream answering 200 with `x-build: NAME` and the name as body. */
async function build (t: Test, name: string): Promise<TestUpstream> {
  const u = await startUpstream(name, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'x-build': name })
    res.end(name)
  })
  t.teardown(async () => { await u.close() })
  return u
}

/** One answer: who, through which table generation (-1: straddled a swap), which version and build. */
interface Seen { user: string; gen: number; version: string; build: string; status: number }

/** Traffic over 400 sticky users until `stop()`. */
function traffic (t: Test, p: TestProxy, seen: Seen[]): { stop: () => Promise<void> } {
  const pool = new Pool(p.url, { connections: 8 })
  t.teardown(async () => { await pool.close() })
  let done = false
  let i = 0
  const deadline = Date.now() + 40_000
  const client = async (): Promise<void> => {
    while (!done && Date.now() < deadline) {
      const user = `u${i++ % 400}`
      const before = p.app.holder.current.generation
      const res = await pool.request({ path: '/x', method: 'GET', headers: { 'x-user-id': user }, headersTimeout: 10_000 }).catch(() => undefined)
      const after = p.app.holder.current.generation
      if (res === undefined) { seen.push({ user, gen: -1, version: 'error', build: 'error', status: 0 }); continue }
      await res.body.dump()
      seen.push({ user, gen: before === after ? before : -1, version: String(res.headers['x-canaryd-version']), build: String(res.headers['x-build']), status: res.statusCode })
    }
  }
  const clients = Array.from({ length: 8 }, client)
  return { stop: async () => { done = true; await Promise.all(clients) } }
}

/** Polls the rollout every 50 ms until it is no longer progressing (or `ms` pass). */
async function settle (p: TestProxy, ms = 15_000): Promise<Record<string, unknown>> {
  const end = Date.now() + ms
  for (;;) {
    const v = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json
    if (v.state !== 'progressing' || Date.now() > end) return v
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Each routing-table generation's canary weight and both versions' upstreams. */
function watchTables (p: TestProxy): Map<number, { canary: number; stableUp: string; canaryUp: string }> {
  const tables = new Map<number, { canary: number; stableUp: string; canaryUp: string }>()
  const snap = (gen: number): void => {
    const v = p.app.state.routeView('web')!
    const up = (name: string): string => String(v.versions.find((x) => x.name === name)!.upstream)
    tables.set(gen, { canary: p.app.state.weights('web')!.canary!, stableUp: up('stable'), canaryUp: up('canary') })
  }
  snap(p.app.holder.current.generation)
  p.app.holder.onSwap((table) => { snap(table.generation) })
  return tables
}

t.test('a rollout started while the canary has 23.5 % starts at the first step above it and never lowers it', async (t) => {
  const stable = await build(t, 'v1')
  const canary = await build(t, 'v2')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [76.5, 23.5])]))
  t.teardown(async () => { await p.close() })
  const tables = watchTables(p)
  const seen: Seen[] = []
  const load = traffic(t, p, seen)
  for (const end = Date.now() + 5000; seen.length < 800 && Date.now() < end;) await new Promise((resolve) => setTimeout(resolve, 10))
  const startGen = p.app.holder.current.generation

  const r = await admin(p, 'POST', '/api/v1/routes/web/rollout', { steps: [1, 10, 50], intervalMs: 300, analysis: ANALYSIS })
  t.equal(r.status, 201)
  t.equal(r.json.step, 3, 'starts at step 3 (50), the first step >= 23.5')
  t.equal(r.json.weight, 50)
  t.same(r.json.startedFrom, { weight: 23.5, fromStart: false })
  t.same(r.json.warnings, [], 'no warning: nobody moves back')
  const end = await settle(p)
  await load.stop()
  t.equal(end.state, 'promoted')
  const weights = [...tables.values()].map((x) => x.canary)
  t.same(weights.filter((w, i) => i === 0 || w !== weights[i - 1]), [23.5, 50, 100], `the canary's weight went 23.5 → 50 → 100, never lower (${JSON.stringify(weights)})`)
  const history = end.history as Array<{ event: string; weight: number }>
  t.notOk(history.some((h) => h.weight > 0 && h.weight < 23.5), 'no step below 23.5 in the history')

  // nobody moved back: every user on the canary before the start stays on it
  const before = new Map<string, string>()
  for (const s of seen) if (s.gen !== -1 && s.gen < startGen + 1) before.set(s.user, s.version)
  const onCanary = [...before].filter(([, v]) => v === 'canary').map(([u]) => u)
  t.ok(onCanary.length > 0.15 * before.size && onCanary.length < 0.32 * before.size, `about 23.5 % of users on the canary before (${onCanary.length}/${before.size})`)
  const back = seen.filter((s) => s.gen > startGen && onCanary.includes(s.user) && s.version !== 'canary')
  t.equal(back.length, 0, 'no user of the canary was moved back to stable')
  t.ok(seen.every((s) => s.status === 200), 'every answer a 200')
})

t.test('?fromStart=true starts at step 1 and the server warns; the CLI --from-start does the same', async (t) => {
  const stable = await build(t, 'v1')
  const canary = await build(t, 'v2')
  const log = captureLog('warn')
  const app = new App(testConfig([twoVersionRoute(stable.origin, canary.origin, [76.5, 23.5])]), { logger: log.logger, metrics: true })
  await app.start()
  const p: TestProxy = { app, url: `http://127.0.0.1:${app.proxyAddress!.port}`, adminUrl: `http://127.0.0.1:${app.adminAddress!.port}`, close: async () => { await app.close(1000) } }
  t.teardown(async () => { await p.close() })
  const plan = { steps: [1, 10, 50], intervalMs: 60_000, analysis: ANALYSIS }

  const bad = await admin(p, 'POST', '/api/v1/routes/web/rollout?fromStart=yes', plan)
  t.equal(bad.status, 400, 'fromStart must be true or false')
  const r = await admin(p, 'POST', '/api/v1/routes/web/rollout?fromStart=true', plan)
  t.equal(r.status, 201)
  t.equal(r.json.step, 1, '--from-start: step 1')
  t.equal(r.json.weight, 1, 'at 1 %: users of the canary moved back, as asked')
  t.same(r.json.startedFrom, { weight: 23.5, fromStart: true })
  t.same(p.app.state.weights('web'), { stable: 99, canary: 1 })
  const warnings = r.json.warnings as string[]
  t.equal(warnings.length, 1, 'the answer carries one warning')
  t.match(warnings[0], /fromStart: canary had 23\.5%.*moves users back to stable/)
  const warned = log.lines.filter((l) => l.level === 40 && /fromStart/.test(String(l.msg)))
  t.equal(warned.length, 1, 'the server logs it as a warning')
  t.equal(warned[0]?.msg, warnings[0])
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')).status, 200)

  // the CLI, as users run it
  t.ok(CLI.endsWith('dist/cli.js'))
  t.equal((await admin(p, 'PUT', '/api/v1/routes/web/weights', { weights: { stable: 76.5, canary: 23.5 }, reason: 'back to 23.5' })).status, 200)
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-plan-'))
  const file = join(dir, 'plan.json')
  writeFileSync(file, JSON.stringify(plan))
  const before = log.lines.length
  const cli = await runCli(['rollout', 'start', 'web', '--from-start', '--plan', file, '--admin', p.adminUrl], {}, 20_000)
  t.equal(cli.code, 0, `canaryd rollout start --from-start exits 0 (${cli.stderr})`)
  t.match(cli.stdout, /canary canary at 1%\s+step 1\/4/, 'it prints the rollout at step 1 of 4, 1 %')
  t.match(cli.stderr, /warning: fromStart: canary had 23\.5%.*moves users back to stable/, 'and prints the warning')
  t.ok(log.lines.slice(before).some((l) => l.level === 40 && /fromStart/.test(String(l.msg))), 'and the server logged it again')
  const plain = await runCli(['rollout', 'start', 'web', '--plan', file, '--admin', p.adminUrl], {}, 20_000)
  t.equal(plain.code, 1, 'a second start while one runs: API error')
  t.match(plain.stderr, /409/)
})

t.test('canary may be left out on a stable/canary route; elsewhere 400 saying what to add', async (t) => {
  const a = await build(t, 'v1')
  const two = twoVersionRoute(a.origin, a.origin, [100, 0])
  const three = { ...twoVersionRoute(a.origin, a.origin, [100, 0]), name: 'three', match: { pathPrefix: '/three' }, versions: [{ name: 'stable', upstream: a.origin, weight: 100 }, { name: 'canary', upstream: a.origin, weight: 0 }, { name: 'beta', upstream: a.origin, weight: 0 }] }
  const bg = { ...twoVersionRoute(a.origin, a.origin, [100, 0]), name: 'bg', match: { pathPrefix: '/bg' }, versions: [{ name: 'blue', upstream: a.origin, weight: 100 }, { name: 'green', upstream: a.origin, weight: 0 }] }
  const p = await startProxy(testConfig([three, bg, two]))
  t.teardown(async () => { await p.close() })
  const plan = { steps: [10], intervalMs: 60_000 }

  const ok = await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)
  t.equal(ok.status, 201, 'stable/canary: the plan without canary starts')
  t.equal(ok.json.canary, 'canary')
  t.equal(ok.json.stable, 'stable')
  t.same(p.app.state.weights('web'), { stable: 90, canary: 10 })

  const no3 = await admin(p, 'POST', '/api/v1/routes/three/rollout', plan)
  t.equal(no3.status, 400, 'three versions: 400')
  const e3 = no3.json.error as { code: string; message: string }
  t.equal(e3.code, 'CANARYD_ERR_INVALID_PLAN')
  t.match(e3.message, /canary: is required: route has stable, canary, beta; name the version to roll out/, 'the message says what to add')
  const noStable = await admin(p, 'POST', '/api/v1/routes/bg/rollout', plan)
  t.equal(noStable.status, 400, 'two versions, none named stable: 400')
  t.match((noStable.json.error as { message: string }).message, /canary: is required: route has blue, green/)
  const named = await admin(p, 'POST', '/api/v1/routes/three/rollout', { ...plan, canary: 'beta' })
  t.equal(named.status, 201, 'naming the canary on the three-version route works')
  t.same(p.app.state.weights('three'), { stable: 90, canary: 0, beta: 10 })
})

t.test('the next release twice in a row: canaryUpstream, promotion with finalize, no user sees a build change at the finalize', async (t) => {
  const v1 = await build(t, 'v1')
  const v2 = await build(t, 'v2')
  const v3 = await build(t, 'v3')
  const v4 = await build(t, 'v4')
  const p = await startProxy(testConfig([twoVersionRoute(v1.origin, v1.origin, [100, 0])]))
  t.teardown(async () => { await p.close() })
  const tables = watchTables(p)
  const plan = { steps: [10, 50], intervalMs: 300, analysis: ANALYSIS, promotion: { mode: 'auto', finalize: true } }
  const order = ['v1', 'v2', 'v3']

  for (const [prev, next] of [[v1, v2], [v2, v3]] as const) {
    await t.test(`release ${next.name} over ${prev.name}`, async (t) => {
      const seen: Seen[] = []
      const load = traffic(t, p, seen)
      for (const end = Date.now() + 5000; seen.length < 400 && Date.now() < end;) await new Promise((resolve) => setTimeout(resolve, 10))
      t.ok(seen.length > 0 && seen.every((s) => s.build === prev.name && s.version === 'stable'), `before: everyone on stable, build ${prev.name}`)
      const startGen = p.app.holder.current.generation
      const r = await admin(p, 'POST', `/api/v1/routes/web/rollout?canaryUpstream=${encodeURIComponent(next.origin)}`, plan)
      t.equal(r.status, 201, 'started with canaryUpstream')
      t.equal(r.json.step, 1)
      t.equal(r.json.weight, 10)
      t.same(tables.get(startGen + 1), { canary: 10, stableUp: prev.origin, canaryUp: next.origin }, 'the first step and the canary\'s new upstream in one change')
      const end = await settle(p)
      // traffic on the finalized route for a moment
      const mark = seen.length
      for (const stop = Date.now() + 3000; seen.length < mark + 300 && Date.now() < stop;) await new Promise((resolve) => setTimeout(resolve, 10))
      await load.stop()

      t.equal(end.state, 'promoted', 'promoted')
      t.equal(end.finalized, true, 'and finalized')
      t.match(end.reason, /finalized: stable now serves canary's upstream at 100%/)
      const route = (await admin(p, 'GET', '/api/v1/routes/web')).json as { versions: Array<{ name: string; upstream: string; weight: number }> }
      t.same(route.versions.map((v) => [v.name, v.upstream, v.weight]), [['stable', next.origin, 100], ['canary', next.origin, 0]], `GET routes: both versions on ${next.name}, stable 100, canary 0`)

      const gens = [...tables.keys()].filter((g) => g >= startGen).sort((a, b) => a - b)
      t.same(gens.map((g) => tables.get(g)), [
        { canary: 0, stableUp: prev.origin, canaryUp: prev.origin },
        { canary: 10, stableUp: prev.origin, canaryUp: next.origin },
        { canary: 50, stableUp: prev.origin, canaryUp: next.origin },
        { canary: 0, stableUp: next.origin, canaryUp: next.origin }
      ], 'tables: 10 %, 50 %, then in one change stable on the new build at 100 % and canary at 0 %')
      const finalGen = gens[gens.length - 1]!
      const stepGen = gens[gens.length - 2]!

      // nobody sees the build go back, and nobody on the new build sees a change at the finalize
      const rank = (b: string): number => order.indexOf(b)
      const last = new Map<string, number>()
      let backwards = 0
      for (const s of seen.filter((x) => x.gen !== -1).sort((a, b) => a.gen - b.gen)) {
        const k = rank(s.build)
        if (k < (last.get(s.user) ?? -1)) backwards++
        last.set(s.user, Math.max(k, last.get(s.user) ?? -1))
      }
      t.equal(backwards, 0, 'no user ever went back to an older build')
      const at = (g: number): Map<string, Seen> => new Map(seen.filter((s) => s.gen === g).map((s) => [s.user, s]))
      const atStep = at(stepGen)
      const atFinal = at(finalGen)
      const movedVersion = [...atFinal.keys()].filter((u) => atStep.get(u)?.version === 'canary')
      t.ok(movedVersion.length >= 20, `users served by canary at 50 % and by stable after the finalize (${movedVersion.length})`)
      t.same(movedVersion.filter((u) => atFinal.get(u)!.build !== next.name), [], `they kept build ${next.name}: no change at the finalize`)
      t.ok(atFinal.size > 0 && [...atFinal.values()].every((s) => s.version === 'stable' && s.build === next.name), `after the finalize: everyone on stable, build ${next.name}`)
      t.ok(seen.every((s) => s.status === 200), 'every answer a 200')

      const audit = (await admin(p, 'GET', '/api/v1/audit?route=web&limit=50')).json.entries as Array<{ source: string; generation: number; upstreams?: Record<string, { previous: string; next: string }>; weights: Record<string, number> }>
      const mine = audit.filter((a) => a.generation > startGen)
      t.ok(mine.length >= 3 && mine.every((a) => a.source === 'rollout'), 'every change of this release is audited as the rollout\'s')
      t.ok(mine.some((a) => a.upstreams?.canary?.next === next.origin && a.weights.canary === 10), 'audit: the canary pointed at the new build with the first step')
      t.ok(mine.some((a) => a.upstreams?.stable?.previous === prev.origin && a.upstreams.stable.next === next.origin && a.weights.stable === 100 && a.weights.canary === 0), 'audit: the finalize')
    })
  }

  // a new build is pointed at only while the canary has no users
  t.equal((await admin(p, 'PUT', '/api/v1/routes/web/weights', { weights: { stable: 90, canary: 10 }, reason: 'manual canary' })).status, 200)
  const refused = await admin(p, 'POST', `/api/v1/routes/web/rollout?canaryUpstream=${encodeURIComponent(v4.origin)}`, plan)
  t.equal(refused.status, 409, 'canaryUpstream while the canary has 10 % → 409')
  t.equal((refused.json.error as { code: string }).code, 'CANARYD_ERR_ROLLOUT_CONFLICT')
  t.match((refused.json.error as { message: string }).message, /canaryUpstream: canary serves 10%/)
  const route = (await admin(p, 'GET', '/api/v1/routes/web')).json as { versions: Array<{ name: string; upstream: string }> }
  t.equal(route.versions.find((v) => v.name === 'canary')!.upstream, v3.origin, 'the canary still points at v3')
  t.equal(v4.seen.length, 0, 'v4 never got a request')
  t.same(p.app.state.weights('web'), { stable: 90, canary: 10 })
})
