import t from 'tap'
import { request } from 'undici'
import { adminJson as admin, QUICK_PLAN, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

const PLAN = QUICK_PLAN

/** Real traffic: 8 concurrent clients with distinct user ids until the rollout ends or 15 s pass. */
async function drive (p: TestProxy): Promise<string> {
  const deadline = Date.now() + 15_000
  let user = 0
  let state = 'progressing'
  const client = async (): Promise<void> => {
    while (Date.now() < deadline && (state === 'progressing')) {
      const res = await request(`${p.url}/x`, { headers: { 'x-user-id': `u${user++}` } })
      await res.body.dump()
    }
  }
  const watcher = async (): Promise<void> => {
    while (Date.now() < deadline && state === 'progressing') {
      await new Promise((resolve) => setTimeout(resolve, 100))
      state = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.state as string
    }
  }
  await Promise.all([watcher(), ...Array.from({ length: 8 }, client)])
  return state
}

t.test('end to end: a healthy canary is promoted to 100 %', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })

  const bad = await admin(p, 'POST', '/api/v1/routes/web/rollout', { ...PLAN, steps: [50, 10] })
  t.equal(bad.status, 400, 'invalid plan → 400')
  t.match((bad.json.error as { message: string }).message, /steps\[1\]/)
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)
  t.equal(started.status, 201)
  t.equal(started.json.weight, 10)
  const again = await admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)
  t.equal(again.status, 409, 'second rollout while one runs → 409')

  const state = await drive(p)
  t.equal(state, 'promoted')
  const r = await admin(p, 'GET', '/api/v1/routes/web/rollout')
  t.equal(r.json.weight, 100)
  t.ok((r.json.checks as Array<{ verdict: string }>).some((c) => c.verdict === 'pass'))
  const routes = await admin(p, 'GET', '/api/v1/routes')
  t.match(JSON.stringify(routes.json), /"rollout":\{"state":"promoted"/, 'route list carries the rollout summary')
  t.same(p.app.state.weights('web'), { stable: 0, canary: 100 })
  const metrics = await p.app.metrics!.expose()
  t.match(metrics, /canaryd_rollout_state\{route="web",state="promoted"\} 1/)
  t.match(metrics, /canaryd_rollout_checks_total\{route="web",result="pass"\} [1-9]/)
  const before = canary.seen.length
  await (await request(`${p.url}/x`, { headers: { 'x-user-id': 'after' } })).body.dump()
  t.equal(canary.seen.length, before + 1, 'after promotion every request goes to the canary')
})

t.test('end to end: a canary answering 500 to a quarter of its requests is rolled back to 0 %', async (t) => {
  const stable = await startUpstream('stable')
  let n = 0
  const canary = await startUpstream('canary', (_req, res) => {
    res.writeHead(n++ % 4 === 0 ? 500 : 200, { 'content-type': 'text/plain' })
    res.end('canary')
  })
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })

  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)).status, 201)
  const state = await drive(p)
  t.equal(state, 'rolled-back')
  const r = await admin(p, 'GET', '/api/v1/routes/web/rollout')
  t.equal(r.json.weight, 0)
  t.match(r.json.reason, /failed checks/)
  t.same(p.app.state.weights('web'), { stable: 100, canary: 0 }, 'canary weight is 0 in the store')
  const before = canary.seen.length
  for (let i = 0; i < 20; i++) await (await request(`${p.url}/x`, { headers: { 'x-user-id': `z${i}` } })).body.dump()
  t.equal(canary.seen.length, before, 'no request reaches the canary after the rollback')
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout/resume')).status, 409, 'a rolled-back rollout cannot resume')
})
