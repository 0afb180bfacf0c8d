import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import t from 'tap'
import { Pool } from 'undici'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

async function versionsOf (url: string, users: number): Promise<string[]> {
  const pool = new Pool(url, { connections: 8 })
  try {
    const out: string[] = []
    for (let i = 0; i < users; i += 50) {
      const batch = await Promise.all(Array.from({ length: Math.min(50, users - i) }, async (_, j) => {
        const r = await pool.request({ path: '/', method: 'GET', headers: { 'x-user-id': `user-${i + j}` } })
        await r.body.dump()
        if (r.statusCode !== 200) throw new Error(`status ${r.statusCode}`)
        return String(r.headers['x-upstream'])
      }))
      out.push(...batch)
    }
    return out
  } finally {
    await pool.close()
  }
}

async function weightsOf (adminUrl: string): Promise<number[]> {
  const r = await send(`${adminUrl}/api/v1/routes/web`)
  return r.json<{ versions: Array<{ weight: number }> }>().versions.map((v) => v.weight)
}

t.test('weights survive a restart, 75.5/24.5 included, and users keep their version', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const config = testConfig([twoVersionRoute(stable.origin, canary.origin)])
  const a = await startProxy(config)
  const put = await send(`${a.adminUrl}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ weights: { stable: 75.5, canary: 24.5 }, reason: 'before restart' }) })
  t.equal(put.status, 200)
  const before = await versionsOf(a.url, 2000)
  await a.close()

  const b = await startProxy(config)
  t.teardown(b.close)
  t.same(await weightsOf(b.adminUrl), [75.5, 24.5], 'weights restored')
  t.same(b.app.holder.current.routes[0]!.versions.map((v) => v.ppm), [755_000, 245_000], 'and in the routing table')
  const after = await versionsOf(b.url, 2000)
  t.equal(after.filter((v, i) => v !== before[i]).length, 0, 'every user is on the same version after the restart')
  const audit = (await send(`${b.adminUrl}/api/v1/audit`)).json<{ entries: Array<{ reason: string }> }>().entries
  t.equal(audit[0]?.reason, 'before restart', 'recent audit kept across the restart')
})

t.test('a corrupt state file: moved aside, config weights, the proxy keeps serving', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  t.teardown(async () => { await stable.close(); await canary.close() })
  const config = testConfig([twoVersionRoute(stable.origin, canary.origin, [60, 40])])
  const file = config.state.file
  writeFileSync(file, '{"version":1,"routes":{"web":')
  const p = await startProxy(config)
  t.teardown(p.close)
  t.same(await weightsOf(p.adminUrl), [60, 40], 'config weights')
  t.notOk(existsSync(file), 'the bad file is no longer in place')
  const aside = readdirSync(dirname(file)).filter((f) => f.startsWith('state.json.corrupt-'))
  t.equal(aside.length, 1, 'it was moved aside')
  t.equal(readFileSync(`${dirname(file)}/${aside[0]!}`, 'utf8'), '{"version":1,"routes":{"web":', 'with its content intact')
  const r = await send(`${p.url}/`, { headers: { 'x-user-id': 'u1' } })
  t.equal(r.status, 200, 'serving')
  t.equal((await send(`${p.adminUrl}/readyz`)).status, 200, 'ready')
  const put = await send(`${p.adminUrl}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"weights":{"stable":50,"canary":50}}' })
  t.equal(put.status, 200, 'changes work again and write a fresh file')
  t.same(JSON.parse(readFileSync(file, 'utf8')).routes.web.weights, { stable: 50, canary: 50 })
})

t.test('config that changed a route\'s versions wins over the state file', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const canary2 = await startUpstream('canary2')
  t.teardown(async () => { await stable.close(); await canary.close(); await canary2.close() })
  const config = testConfig([twoVersionRoute(stable.origin, canary.origin)])
  const a = await startProxy(config)
  await send(`${a.adminUrl}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"weights":{"stable":50,"canary":50}}' })
  await a.close()
  // a new upstream for the same version names keeps the runtime weights (the version set is the names)
  const moved = { ...config, routes: testConfig([twoVersionRoute(stable.origin, canary2.origin)]).routes }
  const b = await startProxy(moved)
  t.same(await weightsOf(b.adminUrl), [50, 50])
  await b.close()
  const renamed = testConfig([twoVersionRoute(stable.origin, canary2.origin)]).routes
  renamed[0]!.versions[1]!.name = 'canary2'
  const c = await startProxy({ ...config, routes: renamed })
  t.teardown(c.close)
  t.same(await weightsOf(c.adminUrl), [90, 10])
})
