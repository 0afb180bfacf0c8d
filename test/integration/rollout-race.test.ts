import t from 'tap'
import { request } from 'undici'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

const INTERVAL_MS = 150
// minRequests 1: any ghost controller left running would pass a check and step at the next interval
const PLAN = {
  canary: 'canary',
  steps: [10, 20, 30, 40, 50, 100],
  intervalMs: INTERVAL_MS,
  analysis: { minRequests: 1, maxFailedChecks: 3, baseline: { judge: 'none' } },
  promotion: 'auto'
}

interface AuditEntry { source: string; weights: Record<string, number>; reason: string | null }

async function audit (p: TestProxy): Promise<AuditEntry[]> {
  return (await admin(p, 'GET', '/api/v1/audit?route=web&limit=1000')).json.entries as AuditEntry[]
}

t.test('two concurrent rollout starts on one route: one 201, one 409, and a single controller', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })

  const answers = await Promise.all([
    admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN),
    admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)
  ])
  t.same(answers.map((a) => a.status).sort(), [201, 409], 'exactly one start wins')
  const lost = answers.find((a) => a.status === 409)
  t.equal((lost?.json.error as { code?: string } | undefined)?.code, 'CANARYD_ERR_ROLLOUT_CONFLICT')
  t.equal((await audit(p)).filter((e) => e.source === 'rollout').length, 1, 'one rollout applied its first step')

  const aborted = await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')
  t.equal(aborted.status, 200)
  t.equal(aborted.json.state, 'aborted')
  const afterAbort = (await audit(p)).length

  // traffic to both versions (the override reaches the canary at 0 %) over several
  // intervals: a ghost controller would see passing checks and move the weights
  const deadline = Date.now() + 5 * INTERVAL_MS
  let i = 0
  while (Date.now() < deadline) {
    const headers: Record<string, string> = { 'x-user-id': `u${i}` }
    if (i++ % 2 === 0) headers['x-canary'] = 'canary'
    await (await request(`${p.url}/x`, { headers })).body.dump()
  }
  t.ok(canary.seen.length > 0, 'the canary saw traffic after the abort')
  t.equal((await audit(p)).length, afterAbort, 'no weight change after the abort (no ghost controller)')
  t.same(p.app.state.weights('web'), { stable: 100, canary: 0 })
  t.equal((await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.state, 'aborted', 'the persisted rollout is the aborted one')
})
