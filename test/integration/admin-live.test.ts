import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

async function setup (t: Test): Promise<{ p: TestProxy; pool: Pool }> {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin)]))
  const pool = new Pool(p.url, { connections: 16 })
  t.teardown(async () => { await pool.close(); await p.close(); await stable.close(); await canary.close() })
  return { p, pool }
}

async function putWeights (p: TestProxy, stable: number, canary: number): Promise<number> {
  const r = await send(`${p.adminUrl}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ weights: { stable, canary } }) })
  return r.status
}

/** The version each user lands on (x-upstream of the answer), `concurrency` requests at a time. */
async function versionsOf (pool: Pool, users: number, concurrency = 32): Promise<string[]> {
  const out = new Array<string>(users)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < users) {
      const i = next++
      const r = await pool.request({ path: '/', method: 'GET', headers: { 'x-user-id': `user-${i}` } })
      await r.body.dump()
      if (r.statusCode !== 200) throw new Error(`user ${i}: status ${r.statusCode}`)
      out[i] = String(r.headers['x-upstream'])
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return out
}

t.test('40 weight changes while 16 clients send requests: zero non-200', async (t) => {
  const { p, pool } = await setup(t)
  let done = false
  const statuses = new Map<number, number>()
  const seen = new Set<string>()
  let total = 0
  let id = 0
  const client = async (): Promise<void> => {
    while (!done) {
      const r = await pool.request({ path: `/item/${id}`, method: 'GET', headers: { 'x-user-id': `u${id++}` } }).catch(() => undefined)
      const code = r?.statusCode ?? -1
      statuses.set(code, (statuses.get(code) ?? 0) + 1)
      if (r !== undefined) {
        seen.add(String(r.headers['x-upstream']))
        await r.body.dump()
      }
      total++
    }
  }
  const clients = Array.from({ length: 16 }, client)
  const changes: number[] = []
  for (let i = 0; i < 40; i++) {
    const canary = [0, 10, 25, 50, 75, 100, 33.3333, 5.5][i % 8]!
    changes.push(await putWeights(p, Number((100 - canary).toFixed(4)), canary))
    // let some traffic through between changes without depending on timing
    const until = total + 20
    while (total < until) await new Promise((resolve) => setImmediate(resolve))
  }
  done = true
  await Promise.all(clients)
  t.same(changes, new Array(40).fill(200), 'every change was applied')
  t.equal(p.app.holder.current.generation, 41)
  t.same([...statuses.keys()], [200], `all ${total} responses were 200: ${JSON.stringify([...statuses])}`)
  t.ok(total >= 800, `traffic flowed during the changes (${total} requests)`)
  t.same([...seen].sort(), ['canary', 'stable'], 'both versions served')
})

t.test('monotone stickiness across changes: 5,000 users 10% → 30% → 10%', async (t) => {
  const { p, pool } = await setup(t)
  const USERS = 5000
  const at10 = await versionsOf(pool, USERS)
  const canary10 = at10.filter((v) => v === 'canary').length
  t.ok(canary10 > 400 && canary10 < 600, `about 10% on canary (${canary10})`)
  t.equal(await putWeights(p, 70, 30), 200)
  const at30 = await versionsOf(pool, USERS)
  const movedOff = at10.filter((v, i) => v === 'canary' && at30[i] !== 'canary').length
  t.equal(movedOff, 0, 'every user on canary at 10% is still on canary at 30%')
  const canary30 = at30.filter((v) => v === 'canary').length
  t.ok(canary30 > 1300 && canary30 < 1700, `about 30% on canary (${canary30})`)
  t.equal(await putWeights(p, 90, 10), 200)
  const back = await versionsOf(pool, USERS)
  const differ = back.filter((v, i) => v !== at10[i]).length
  t.equal(differ, 0, 'back at 10%, every user is where they started')
})
