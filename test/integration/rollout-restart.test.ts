import { readFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import { request } from 'undici'
import type { Config } from '../../src/config/load.js'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream, type TestUpstream } from '../helpers/upstream.js'

// A restart through the real store: one App writes the state file, a new App
// on the same config and state file picks the rollout up. The interval is an
// hour, so the timer never fires during the test; checks are run with
// `tick()` (what the timer calls) on windows filled by real traffic through the proxy.

/** Outlier ejection off: a canary answering 500s must keep getting traffic for the checks to judge it. */
const NO_EJECTION = { health: { consecutiveFailures: 0 } }

const PLAN = {
  canary: 'canary',
  steps: [10, 30, 60],
  intervalMs: 3_600_000,
  analysis: { minRequests: 5, maxFailedChecks: 3, successRate: { min: 90 }, baseline: { judge: 'none' } }
}

/** Upstreams where the canary answers 500 while `failing` is set. */
async function upstreams (t: Test): Promise<{ stable: TestUpstream; canary: TestUpstream; fail: (on: boolean) => void }> {
  let failing = false
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary', (_req, res) => {
    res.writeHead(failing ? 500 : 200, { 'content-type': 'text/plain' })
    res.end('canary')
  })
  t.teardown(async () => { await stable.close(); await canary.close() })
  return { stable, canary, fail: (on) => { failing = on } }
}

async function start (t: Test, config: Config): Promise<TestProxy> {
  const p = await startProxy(config)
  // closing is idempotent: a test that closes it mid-way is still covered on failure
  t.teardown(async () => { await p.close() })
  return p
}

let user = 0
/** Real traffic with fresh user ids until the canary upstream has seen `n` more requests (at most 2000 requests). */
async function traffic (p: TestProxy, canary: TestUpstream, n: number): Promise<void> {
  const goal = canary.seen.length + n
  for (let i = 0; i < 2000 && canary.seen.length < goal; i++) {
    await (await request(`${p.url}/x`, { headers: { 'x-user-id': `r${user++}` } })).body.dump()
  }
}

/** Runs one check now, as the controller's timer would. */
async function check (p: TestProxy): Promise<string | undefined> {
  return (await p.app.rollouts.controller('web')!.tick())?.verdict
}

t.test('a restart mid-rollout continues at the same step, weight and failed-check count', async (t) => {
  const u = await upstreams(t)
  const config = testConfig([twoVersionRoute(u.stable.origin, u.canary.origin, [100, 0])], NO_EJECTION)
  const p1 = await start(t, config)
  t.equal((await admin(p1, 'POST', '/api/v1/routes/web/rollout', PLAN)).status, 201)

  u.fail(true)
  await traffic(p1, u.canary, 10)
  t.equal(await check(p1), 'fail', 'a failing canary: one failed check')
  u.fail(false)
  await traffic(p1, u.canary, 10)
  t.equal(await check(p1), 'pass', 'then a healthy one: next step')
  const before = (await admin(p1, 'GET', '/api/v1/routes/web/rollout')).json
  t.match(before, { state: 'progressing', step: 2, weight: 30, failedChecks: 1 })
  const saved = JSON.parse(readFileSync(config.state.file, 'utf8')) as { routes: { web: { weights: unknown; rollout: { stepIndex: number } } } }
  t.same(saved.routes.web.weights, { stable: 70, canary: 30 }, 'weights in the state file')
  t.equal(saved.routes.web.rollout.stepIndex, 1, 'rollout record in the state file')

  await p1.close()
  const p2 = await start(t, config)
  const after = await admin(p2, 'GET', '/api/v1/routes/web/rollout')
  t.equal(after.status, 200, 'the new App knows the rollout')
  t.match(after.json, { state: 'progressing', step: 2, weight: 30, failedChecks: 1, startedAt: before.startedAt, reason: null })
  t.same(after.json.checks, before.checks, 'checks kept')
  t.same(after.json.history, before.history, 'history kept: no second `started`')
  t.same(p2.app.state.weights('web'), { stable: 70, canary: 30 }, 'the step\'s weights are live again')
  const routes = await admin(p2, 'GET', '/api/v1/routes')
  t.match((routes.json.routes as Array<Record<string, unknown>>).find((r) => r.name === 'web'), { rollout: { state: 'progressing', step: 2, weight: 30 } })
  t.match(await p2.app.metrics!.expose(), /canaryd_rollout_step\{route="web"\} 2\n/, 'rollout metrics restored')
  t.match(await p2.app.metrics!.expose(), /canaryd_rollout_state\{route="web",state="progressing"\} 1\n/)

  // the restored controller goes on from step 2, on traffic seen by the new process
  await traffic(p2, u.canary, 10)
  t.equal(await check(p2), 'pass')
  t.match((await admin(p2, 'GET', '/api/v1/routes/web/rollout')).json, { state: 'progressing', step: 3, weight: 60, failedChecks: 1 })
  t.same(p2.app.state.weights('web'), { stable: 40, canary: 60 })
  // …and keeps counting failed checks from where it was: 2 more reach maxFailedChecks 3
  u.fail(true)
  await traffic(p2, u.canary, 10)
  t.equal(await check(p2), 'fail')
  await traffic(p2, u.canary, 10)
  t.equal(await check(p2), 'fail')
  const end = (await admin(p2, 'GET', '/api/v1/routes/web/rollout')).json
  t.equal(end.state, 'rolled-back', 'the failed check from before the restart counted')
  t.match(end.reason, /^3 failed checks/)
})

t.test('a rolled-back rollout stays rolled back after a restart, even with a rollout block in the config', async (t) => {
  const u = await upstreams(t)
  const plan = { ...PLAN, analysis: { ...PLAN.analysis, maxFailedChecks: 1 } }
  const config = testConfig([twoVersionRoute(u.stable.origin, u.canary.origin, [100, 0], { rollout: plan })], NO_EJECTION)
  const p1 = await start(t, config)
  t.match((await admin(p1, 'GET', '/api/v1/routes/web/rollout')).json, { state: 'progressing', step: 1, weight: 10 }, 'started from the config')

  u.fail(true)
  await traffic(p1, u.canary, 10)
  t.equal(await check(p1), 'fail')
  const before = (await admin(p1, 'GET', '/api/v1/routes/web/rollout')).json
  t.match(before, { state: 'rolled-back', weight: 0 })
  t.same(p1.app.state.weights('web'), { stable: 100, canary: 0 })

  await p1.close()
  u.fail(false)
  const p2 = await start(t, config)
  const after = (await admin(p2, 'GET', '/api/v1/routes/web/rollout')).json
  t.match(after, { state: 'rolled-back', weight: 0, reason: before.reason, startedAt: before.startedAt })
  t.same(after.history, before.history, 'the config\'s rollout block was not started again')
  t.same(p2.app.state.weights('web'), { stable: 100, canary: 0 })
  const seen = u.canary.seen.length
  for (let i = 0; i < 30; i++) await (await request(`${p2.url}/x`, { headers: { 'x-user-id': `after${i}` } })).body.dump()
  t.equal(u.canary.seen.length, seen, 'no request reaches the canary')
  t.equal((await admin(p2, 'POST', '/api/v1/routes/web/rollout/resume')).status, 409, 'it cannot be resumed')
  t.match(await p2.app.metrics!.expose(), /canaryd_rollout_state\{route="web",state="rolled-back"\} 1\n/)
})

t.test('a paused rollout stays paused after a restart, then resumes at its step', async (t) => {
  const u = await upstreams(t)
  const config = testConfig([twoVersionRoute(u.stable.origin, u.canary.origin, [100, 0])], NO_EJECTION)
  const p1 = await start(t, config)
  t.equal((await admin(p1, 'POST', '/api/v1/routes/web/rollout', PLAN)).status, 201)
  await traffic(p1, u.canary, 10)
  t.equal(await check(p1), 'pass')
  t.equal((await admin(p1, 'POST', '/api/v1/routes/web/rollout/pause')).status, 200)

  await p1.close()
  const p2 = await start(t, config)
  t.match((await admin(p2, 'GET', '/api/v1/routes/web/rollout')).json, { state: 'paused', step: 2, weight: 30 })
  await traffic(p2, u.canary, 10)
  t.equal(await check(p2), undefined, 'no check while paused')
  const resumed = await admin(p2, 'POST', '/api/v1/routes/web/rollout/resume')
  t.equal(resumed.status, 200)
  t.match(resumed.json, { state: 'progressing', step: 2, weight: 30 })
  await traffic(p2, u.canary, 10)
  t.equal(await check(p2), 'pass')
  t.match((await admin(p2, 'GET', '/api/v1/routes/web/rollout')).json, { state: 'progressing', step: 3, weight: 60 })
})
