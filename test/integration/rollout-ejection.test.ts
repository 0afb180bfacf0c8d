import t from 'tap'
import { request } from 'undici'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

const INTERVAL_MS = 300
const MAX_FAILED_CHECKS = 3
// minRequests 50: far more than the ~5 requests an ejected canary gets before it is taken out
const PLAN = {
  canary: 'canary',
  steps: [50, 100],
  intervalMs: INTERVAL_MS,
  analysis: { minRequests: 50, maxFailedChecks: MAX_FAILED_CHECKS, successRate: { min: 95 } },
  promotion: 'auto'
}

interface Check { verdict: string; reasons: string[]; canary: { requests: number; ejections: number } }

t.test('end to end: a canary failing every request is ejected, and the ejection rolls it back', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary', (_req, res) => {
    res.writeHead(500, { 'content-type': 'text/plain' })
    res.end('broken')
  })
  // default health settings: consecutiveFailures 5, ejectionMs 30 s (longer than this whole test)
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  t.equal(p.app.config.health.consecutiveFailures, 5)
  t.ok(p.app.config.health.ejectionMs >= 30_000)

  const started = Date.now()
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)).status, 201)
  // 4 clients with distinct users until the rollout ends; the budget is the rollback
  // time allowed (maxFailedChecks intervals) plus generous slack for a loaded machine
  const budgetMs = (MAX_FAILED_CHECKS + 2) * INTERVAL_MS + 3000
  let state = 'progressing'
  let user = 0
  const client = async (): Promise<void> => {
    while (state === 'progressing' && Date.now() - started < budgetMs) {
      await (await request(`${p.url}/x`, { headers: { 'x-user-id': `u${user++}` } })).body.dump()
    }
  }
  const watcher = async (): Promise<void> => {
    while (state === 'progressing' && Date.now() - started < budgetMs) {
      await new Promise((resolve) => setTimeout(resolve, 50))
      state = p.app.rollouts.controller('web')?.state ?? 'none'
    }
  }
  await Promise.all([watcher(), ...Array.from({ length: 4 }, client)])
  const elapsed = Date.now() - started

  t.equal(state, 'rolled-back', `rolled back (after ${elapsed} ms, budget ${budgetMs} ms)`)
  const r = await admin(p, 'GET', '/api/v1/routes/web/rollout')
  t.equal(r.json.weight, 0)
  t.same(p.app.state.weights('web'), { stable: 100, canary: 0 }, 'canary weight is 0 in the store')
  t.match(r.json.reason, /^3 failed checks .*ejected/)
  const checks = r.json.checks as Check[]
  t.equal(checks.filter((c) => c.verdict === 'fail').length, MAX_FAILED_CHECKS)
  t.ok(checks.filter((c) => c.verdict === 'inconclusive').length <= 1, 'at most the first check came before the ejection')
  t.ok(checks.filter((c) => c.verdict === 'fail').every((c) => c.reasons.some((x) => /ejected/.test(x))), 'each failed check names the ejection')
  t.ok(checks.every((c) => c.canary.requests < PLAN.analysis.minRequests), 'the canary never reached minRequests: the ejection alone decided')
  t.equal(p.app.metrics!.totals('web', 'canary')!.ejections, 1, 'one ejection, not several ejection cycles')
})
