import t from 'tap'
import { Pool } from 'undici'
import { percentile, poll, sleep, startFleet, weightsOf, type Fleet, type FleetInstance } from '../helpers/fleet.js'
import { redisTestOptions, startRedis } from '../helpers/redis.js'
import { routeFile } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 16, a fleet on Redis: three `canaryd serve` processes (the built CLI)
// share one real redis-server; traffic goes through all of them. Every
// instance must hold the same weights (so the same users get the same
// version everywhere), apply a change made through any of them within 500 ms
// p99, and lose no write when two instances write at once.

/** The version a keep-alive request through `pool` as user `user` was routed to. */
async function versionOf (pool: Pool, user: string, path = '/'): Promise<string> {
  const res = await pool.request({ path, method: 'GET', headers: { 'x-user-id': user }, headersTimeout: 10_000 })
  await res.body.dump()
  if (res.statusCode !== 200) throw new Error(`proxy answered ${res.statusCode} for ${user}`)
  return String(res.headers['x-canaryd-version'])
}

/** Every instance's own `generation` from its GET /api/v1/fleet. */
async function generations (fleet: Fleet): Promise<number[]> {
  return await Promise.all(fleet.instances.map(async (i) => (await i.get('/api/v1/fleet')).json.generation as number))
}

/** Waits (at most 5 s) until every instance shows `weights` for `route` in GET /api/v1/routes/{route}. */
async function converged (fleet: Fleet, route: string, weights: Record<string, number>): Promise<boolean> {
  return await poll(async () => {
    const all = await Promise.all(fleet.instances.map(async (i) => weightsOf((await i.get(`/api/v1/routes/${route}`)).json)))
    return all.every((w) => JSON.stringify(w) === JSON.stringify(weights))
  }, 5000, 20) === true
}

t.test('a fleet of 3 on Redis', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  const versions = (c: number): Array<{ name: string; upstream: string; weight: number }> => [
    { name: 'stable', upstream: up.stable!.origin, weight: 100 - c },
    { name: 'canary', upstream: up.canary!.origin, weight: c }
  ]
  const fleet = await startFleet(t, redis, {
    routes: [routeFile('web', versions(0)), routeFile('api', versions(0), { match: { pathPrefix: '/api' } })],
    store: { heartbeatMs: 500 }
  })
  const [a, b, c] = fleet.instances as [FleetInstance, FleetInstance, FleetInstance]
  const pools = new Map(fleet.instances.map((i) => [i, new Pool(i.proxyUrl, { connections: 16 })]))
  t.teardown(async () => { for (const p of pools.values()) await p.close() })

  await t.test('2,000 users get the same version from every instance', async (t) => {
    const put = await a.put('/api/v1/routes/web/weights', { weights: { stable: 70, canary: 30 }, reason: 'consistency' })
    t.equal(put.status, 200, 'weights 70/30 through instance a')
    t.ok(await converged(fleet, 'web', { stable: 70, canary: 30 }), 'every instance shows 70/30')

    const users = Array.from({ length: 2000 }, (_, i) => `user-${i}`)
    const seen = new Map<string, string[]>()
    // 48 requests in flight: 16 users at a time, each asked on all 3 instances at once
    for (let i = 0; i < users.length; i += 16) {
      await Promise.all(users.slice(i, i + 16).map(async (u) => {
        seen.set(u, await Promise.all(fleet.instances.map(async (inst) => await versionOf(pools.get(inst)!, u))))
      }))
    }
    const differing = users.filter((u) => new Set(seen.get(u)).size !== 1)
    t.equal(differing.length, 0, `every user got one version from all 3 instances (differing: ${differing.slice(0, 5).map((u) => `${u}=${seen.get(u)!.join('/')}`).join(', ')})`)
    const onCanary = users.filter((u) => seen.get(u)![0] === 'canary').length
    t.comment(`${onCanary} of 2,000 users on the canary (weight 30 %)`)
    t.ok(onCanary > 500 && onCanary < 700, 'the canary share follows the 30 % weight (hashing on the fleet\'s weights, not the config\'s 0 %)')
  })

  await t.test('a weight change through a is applied by b and c within 500 ms p99 (50 changes)', async (t) => {
    // weights flip between 100/0 and 0/100, so one user's version through b or c shows
    // whether that instance applied the change: measured on the routed traffic itself
    const lags: number[] = []
    let late = 0
    for (let n = 0; n < 50; n++) {
      const want = n % 2 === 0 ? 'canary' : 'stable'
      const weights = want === 'canary' ? { stable: 0, canary: 100 } : { stable: 100, canary: 0 }
      const put = await a.put('/api/v1/routes/web/weights', { weights, reason: `propagation ${n}` })
      if (put.status !== 200) {
        t.fail(`PUT ${JSON.stringify(weights)} through a answered ${put.status} ${JSON.stringify(put.json)}`)
        break
      }
      const done = performance.now()
      await Promise.all([b, c].map(async (inst) => {
        // bounded: 3 s (then counted as late), a request every ~3 ms
        for (let i = 0; i < 1000; i++) {
          if (await versionOf(pools.get(inst)!, `probe-${n}`) === want) {
            lags.push(performance.now() - done)
            return
          }
          if (performance.now() - done > 3000) break
          await sleep(2)
        }
        late++
        lags.push(3000)
      }))
    }
    const p50 = percentile(lags, 50)
    const p99 = percentile(lags, 99)
    t.comment(`change through a → routed by b and c: ${lags.length} samples, p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${Math.max(...lags).toFixed(1)} ms`)
    t.equal(lags.length, 100, '50 changes × 2 instances measured')
    t.equal(late, 0, 'no instance needed more than 3 s')
    t.ok(p99 <= 500, `p99 ${p99.toFixed(1)} ms <= 500 ms`)
  })

  await t.test('concurrent writes through two instances lose nothing', async (t) => {
    const before = {
      web: weightsOf((await a.get('/api/v1/routes/web')).json),
      api: weightsOf((await a.get('/api/v1/routes/api')).json)
    }
    t.ok(await converged(fleet, 'web', before.web), 'start from a converged fleet')
    const gen0 = Math.max(...await generations(fleet))
    // 20 writes at once, a and b alternating, to both routes; each a distinct canary weight
    const writes = Array.from({ length: 20 }, (_, i) => ({
      inst: i % 2 === 0 ? a : b,
      route: Math.floor(i / 2) % 2 === 0 ? 'web' : 'api',
      weights: { stable: 100 - (i + 1), canary: i + 1 },
      reason: `concurrent ${i}`
    }))
    const answers = await Promise.all(writes.map(async (w) => await w.inst.put(`/api/v1/routes/${w.route}/weights`, { weights: w.weights, reason: w.reason })))
    const odd = answers.map((r, i) => ({ i, status: r.status, json: r.json })).filter((r) => r.status !== 200 && !(r.status === 409 && r.json.error?.code === 'CANARYD_ERR_STORE_CONFLICT'))
    t.same(odd, [], 'every write answered 200, or 409 CANARYD_ERR_STORE_CONFLICT')
    const ok = writes.filter((_, i) => answers[i]!.status === 200)
    t.comment(`${ok.length} of 20 concurrent writes answered 200, ${20 - ok.length} 409`)
    t.ok(ok.length >= 2, 'writes went through')

    const gens = await poll(async () => {
      const g = await generations(fleet)
      return new Set(g).size === 1 ? g : undefined
    }, 5000, 20)
    t.ok(gens, `every instance applied the same generation (${JSON.stringify(gens)})`)
    const gen1 = (gens as number[] | undefined)?.[0] ?? NaN
    t.comment(`generation ${gen0} → ${gen1} for ${ok.length} applied writes`)
    t.ok(gen1 - gen0 >= ok.length, 'each applied write made a new generation')
    const redisGen = Number(await redis.client().hget(`${fleet.prefix}state`, 'gen'))
    t.equal(redisGen, gen1, `the instances' generation is Redis's (${fleet.prefix}state gen)`)

    for (const inst of fleet.instances) {
      const audit = await inst.get('/api/v1/audit?limit=1000')
      t.equal(audit.status, 200)
      const entries = (audit.json.entries ?? []) as Array<{ route: string; reason?: string; previous: Record<string, number>; weights: Record<string, number> }>
      const reasons = new Set(entries.map((e) => e.reason))
      t.same(ok.map((w) => w.reason).filter((r) => !reasons.has(r)), [], `instance ${inst.name}: the audit has every write answered 200`)
      t.same(writes.filter((_, i) => answers[i]!.status !== 200).map((w) => w.reason).filter((r) => reasons.has(r)), [], `instance ${inst.name}: and none answered 409`)
      for (const route of ['web', 'api'] as const) {
        // newest first: in time order each write's `previous` is the write before it, so none was based on a stale state
        const chain = entries.filter((e) => e.route === route && e.reason?.startsWith('concurrent ') === true).reverse()
        const broken = chain.filter((e, k) => JSON.stringify(e.previous) !== JSON.stringify(k === 0 ? before[route] : chain[k - 1]!.weights))
        t.same(broken.map((e) => e.reason), [], `instance ${inst.name}, route ${route}: every audited write follows the one before it`)
        const last = chain.at(-1)
        const now = weightsOf((await inst.get(`/api/v1/routes/${route}`)).json)
        t.same(now, last?.weights ?? before[route], `instance ${inst.name}, route ${route}: the weights in force are the last audited write's`)
      }
    }
    const finals = await Promise.all(fleet.instances.map(async (i) => JSON.stringify([weightsOf((await i.get('/api/v1/routes/web')).json), weightsOf((await i.get('/api/v1/routes/api')).json)])))
    t.equal(new Set(finals).size, 1, `all instances end on the same weights (${finals[0]})`)
  })

  await t.test('GET /api/v1/fleet lists the 3 instances with generation and heartbeat', async (t) => {
    const gens = await generations(fleet)
    for (const inst of fleet.instances) {
      const r = await inst.get('/api/v1/fleet')
      t.equal(r.status, 200)
      t.match(r.json, { store: 'redis', self: inst.id, storeUp: true, generation: Number, configMismatch: false }, `instance ${inst.name}: its own view`)
      const list = (r.json.instances ?? []) as Array<Record<string, any>>
      t.same(list.map((x) => x.id).sort(), ['inst-a', 'inst-b', 'inst-c'], `instance ${inst.name}: lists the 3 instances`)
      for (const x of list) {
        const peer = fleet.byId(x.id)!
        t.match(x, { hostname: String, pid: peer.pid, admin: peer.adminUrl.replace('http://', ''), generation: Number, leader: Array, configMismatch: false, self: x.id === inst.id }, `instance ${inst.name} on ${x.id}`)
        t.ok(gens.includes(x.generation), `${x.id}: generation ${x.generation} is one the instances applied`)
        const age = Date.now() - Date.parse(x.lastHeartbeat)
        t.ok(age >= -1000 && age < 5000, `${x.id}: lastHeartbeat ${x.lastHeartbeat} is recent (${age} ms; heartbeatMs 500)`)
      }
    }
  })
})
