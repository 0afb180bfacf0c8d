/**
 * Issue 14: "over HTTP/2 everything behaves as over HTTP/1.1 … rollouts".
 * A rollout judged on HTTP/2 traffic only: a canary answering 500 to a
 * quarter of its requests is rolled back, a healthy one promoted, exactly
 * as rollout-e2e.test.ts shows for HTTP/1.1.
 */
import { connect } from 'node:http2'
import t from 'tap'
import { adminJson as admin, QUICK_PLAN, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

const PLAN = QUICK_PLAN

/** h2 traffic only: 8 concurrent streams on one session, distinct user ids, until the rollout ends or 15 s pass. */
async function driveH2 (p: TestProxy): Promise<string> {
  const session = connect(`http://127.0.0.1:${p.app.proxyAddress!.port}`)
  session.on('error', () => {})
  const deadline = Date.now() + 15_000
  let user = 0
  let state = 'progressing'
  const one = async (): Promise<void> => {
    await new Promise<void>((resolve) => {
      const s = session.request({ ':path': '/x', 'x-user-id': `u${user++}` })
      s.on('error', () => { resolve() })
      s.resume()
      s.on('close', () => { resolve() })
    })
  }
  const client = async (): Promise<void> => {
    while (Date.now() < deadline && state === 'progressing') await one()
  }
  const watcher = async (): Promise<void> => {
    while (Date.now() < deadline && state === 'progressing') {
      await new Promise((resolve) => setTimeout(resolve, 100))
      state = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json.state as string
    }
  }
  await Promise.all([watcher(), ...Array.from({ length: 8 }, client)])
  session.close()
  return state
}

t.test('a rollout judged on HTTP/2 traffic: a failing canary is rolled back, a healthy one promoted', async (t) => {
  const stable = await startUpstream('stable')
  let n = 0
  let failing = true
  const canary = await startUpstream('canary', (_req, res) => {
    res.writeHead(failing && n++ % 4 === 0 ? 500 : 200, { 'content-type': 'text/plain' })
    res.end('canary')
  })
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, h2c: true } }))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })

  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)).status, 201)
  t.equal(await driveH2(p), 'rolled-back', 'the failing canary is rolled back on h2 traffic')
  const back = await admin(p, 'GET', '/api/v1/routes/web/rollout')
  t.equal(back.json.weight, 0)
  t.ok((back.json.checks as Array<{ verdict: string }>).some((c) => c.verdict === 'fail'), 'a check failed on the canary\'s h2 5xx')

  failing = false
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', PLAN)).status, 201)
  t.equal(await driveH2(p), 'promoted', 'the healthy canary is promoted on h2 traffic')
  t.same(p.app.state.weights('web'), { stable: 0, canary: 100 })
})
