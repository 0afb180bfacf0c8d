import { existsSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { poll, sleep, startFleet, weightsOf, type Fleet, type FleetInstance } from '../helpers/fleet.js'
import { startLoad, type Load } from '../helpers/load.js'
import { redisTestOptions, startRedis } from '../helpers/redis.js'
import { routeFile } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 16, faults: the data plane never depends on Redis. A fleet of 3
// `canaryd serve` processes under load while its redis-server is stopped
// for 5 s: no failed request, admin writes refused with 503, then every
// instance resyncs when Redis is back. Then restarts while Redis is down:
// from the local snapshot, or (without one) a refusal naming store.url.

const OUTAGE_MS = 5000
const CONNECT_TIMEOUT_MS = 1000

/** Every instance's own `generation` and `storeUp` from its GET /api/v1/fleet. */
async function fleetViews (insts: FleetInstance[]): Promise<Array<{ generation: number; storeUp: boolean }>> {
  return await Promise.all(insts.map(async (i) => (await i.get('/api/v1/fleet')).json as { generation: number; storeUp: boolean }))
}

async function weights (inst: FleetInstance): Promise<Record<string, number>> {
  return weightsOf((await inst.get('/api/v1/routes/web')).json)
}

async function status (url: string): Promise<number> {
  const res = await request(url, { headersTimeout: 10_000 })
  await res.body.dump()
  return res.statusCode
}

function fails (l: Load): string[] {
  return [...l.statuses].filter(([k]) => k !== '200').map(([k, n]) => `${k} ×${n}`)
}

t.test('Redis down and back under load', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  const fleet: Fleet = await startFleet(t, redis, {
    routes: [routeFile('web', [{ name: 'stable', upstream: up.stable!.origin, weight: 100 }, { name: 'canary', upstream: up.canary!.origin, weight: 0 }])],
    store: { heartbeatMs: 500, syncMs: 500, connectTimeoutMs: CONNECT_TIMEOUT_MS }
  })
  const [a, b, c] = fleet.instances as [FleetInstance, FleetInstance, FleetInstance]
  const traffic = new Map(fleet.instances.map((i) => [i, startLoad(t, i.proxyUrl, () => '/', 4)]))
  t.teardown(async () => { for (const l of traffic.values()) await l.stop() })
  for (const l of traffic.values()) await l.between(50)

  // a change, then Redis stopped at once: b and c may not even have applied it yet
  const last = await a.put('/api/v1/routes/web/weights', { weights: { stable: 80, canary: 20 }, reason: 'just before the outage' })
  t.equal(last.status, 200, 'a write just before the outage')
  await redis.stop()
  const downAt = Date.now()
  const totals = [...traffic.values()].map((l) => l.total)

  await t.test('while Redis is down', async (t) => {
    const down = await poll(async () => {
      const v = await Promise.all(fleet.instances.map(async (i) => await i.metric('canaryd_store_up')))
      return v.every((x) => x === 0) ? v : undefined
    }, 3000, 25)
    t.ok(down, `canaryd_store_up is 0 on every instance (${JSON.stringify(down)}, ${Date.now() - downAt} ms after the stop)`)
    for (const i of fleet.instances) {
      const t0 = Date.now()
      const put = await i.put('/api/v1/routes/web/weights', { weights: { stable: 50, canary: 50 }, reason: 'during the outage' })
      t.equal(put.status, 503, `instance ${i.name}: a weight change answers 503 (${Date.now() - t0} ms)`)
      t.equal(put.json.error?.code, 'CANARYD_ERR_STORE_UNAVAILABLE', `instance ${i.name}: ${put.json.error?.message}`)
      t.equal(await status(`${i.adminUrl}/readyz`), 200, `instance ${i.name}: /readyz 200`)
      t.match((await i.get('/api/v1/fleet')).json, { storeUp: false }, `instance ${i.name}: GET /api/v1/fleet says storeUp false`)
    }
    const rollout = await b.post('/api/v1/routes/web/rollout', { canary: 'canary', steps: [10, 50], intervalMs: 500 })
    t.equal(rollout.status, 503, 'a rollout start answers 503 too')
    t.equal(rollout.json.error?.code, 'CANARYD_ERR_STORE_UNAVAILABLE')
    const version = await c.put('/api/v1/routes/web/versions/canary', { upstream: up.stable!.origin })
    t.equal(version.status, 503, 'and a version upstream change')
    t.equal(version.json.error?.code, 'CANARYD_ERR_STORE_UNAVAILABLE')
    for (const i of fleet.instances) t.not(JSON.stringify(await weights(i)), JSON.stringify({ stable: 50, canary: 50 }), `instance ${i.name}: the refused change changed nothing`)
    t.equal((await a.get('/api/v1/routes/web/rollout')).status, 404, 'no rollout was started')

    await sleep(Math.max(0, downAt + OUTAGE_MS - Date.now()))
    const served = [...traffic.values()].map((l, k) => l.total - totals[k]!)
    t.comment(`requests served during the ${Date.now() - downAt} ms outage: ${served.join(', ')}`)
    t.ok(served.every((n) => n > 100), 'every instance kept serving')
    for (const [i, l] of traffic) t.same(fails(l), [], `instance ${i.name}: 0 failed proxy requests so far (${l.total})`)
  })

  await t.test('Redis back: every instance converges, the last write is kept, a new write works', async (t) => {
    await redis.start()
    const backAt = Date.now()
    t.equal(await redis.client().hget(`${fleet.prefix}state`, 'gen') !== null, true, 'Redis kept the fleet state (AOF)')
    const same = await poll(async () => {
      const v = await fleetViews(fleet.instances)
      const ups = await Promise.all(fleet.instances.map(async (i) => await i.metric('canaryd_store_up')))
      return ups.every((x) => x === 1) && v.every((x) => x.storeUp) && new Set(v.map((x) => x.generation)).size === 1 ? v : undefined
    }, 10_000, 50)
    t.ok(same, `every instance: canaryd_store_up 1 and the same generation (${JSON.stringify(same)}), ${Date.now() - backAt} ms after the restart`)
    const gen = Number(await redis.client().hget(`${fleet.prefix}state`, 'gen'))
    t.equal((same as Array<{ generation: number }> | undefined)?.[0]?.generation, gen, `the generation in Redis (${gen})`)
    for (const i of fleet.instances) {
      t.same(await weights(i), { stable: 80, canary: 20 }, `instance ${i.name}: the write made just before the outage is in force`)
      t.equal(await i.metric('canaryd_store_generation'), gen, `instance ${i.name}: canaryd_store_generation`)
    }
    const entries = ((await b.get('/api/v1/audit?limit=10')).json.entries ?? []) as Array<{ reason?: string }>
    t.ok(entries.some((e) => e.reason === 'just before the outage'), 'its audit entry is kept')
    t.notOk(entries.some((e) => e.reason === 'during the outage'), 'the refused ones were not audited')

    const next = await c.put('/api/v1/routes/web/weights', { weights: { stable: 60, canary: 40 }, reason: 'after the outage' })
    t.equal(next.status, 200, `a new write through c works (${JSON.stringify(next.json.error ?? '')})`)
    const applied = await poll(async () => (await Promise.all(fleet.instances.map(weights))).every((w) => w.canary === 40), 2000, 20)
    t.ok(applied, 'and every instance applies it')

    for (const [i, l] of traffic) {
      await l.stop()
      t.same(fails(l), [], `instance ${i.name}: 0 failed proxy requests through the outage (${l.total} requests)`)
    }
  })

  await t.test('restarted while Redis is down: from the local snapshot; without one: refused', async (t) => {
    await redis.stop()
    t.ok(await poll(async () => await c.metric('canaryd_store_up') === 0, 3000, 25), 'c saw Redis go')
    t.ok(existsSync(join(c.dir, 'state.fleet.json')), 'c has its local snapshot (state.fleet.json)')
    await c.kill('SIGKILL')
    // start-up waits connectTimeoutMs for Redis, then uses the snapshot: 8 s more is plenty
    const c2 = await fleet.restart(c, CONNECT_TIMEOUT_MS + 8000).catch((err: Error) => err)
    if (c2 instanceof Error) {
      t.fail(`restarted with its snapshot while Redis is down, it must start within ${CONNECT_TIMEOUT_MS} ms (store.connectTimeoutMs) + 8 s: ${c2.message}`)
    } else {
      t.ok(c2.lines().some((l) => /starting from the local snapshot/.test(String(l.msg))), `its log says it starts from the local snapshot (${c2.lines().map((l) => l.msg).filter((m) => /snapshot|redis|store/i.test(String(m))).join(' | ')})`)
      t.same(await weights(c2), { stable: 60, canary: 40 }, 'with the last weights it applied')
      const res = await request(`${c2.proxyUrl}/`, { headers: { 'x-user-id': 'after-restart' }, headersTimeout: 10_000 })
      await res.body.dump()
      t.equal(res.statusCode, 200, 'and it serves')
      t.equal(await c2.metric('canaryd_store_up'), 0, 'canaryd_store_up 0')
      t.equal(await status(`${c2.adminUrl}/readyz`), 200, '/readyz 200')
    }

    const fresh = await fleet.startExpectingFailure('d', CONNECT_TIMEOUT_MS + 8000)
    t.notOk(fresh.started, 'an instance with no snapshot does not start')
    t.ok(fresh.code !== null && fresh.code !== 0, `it exits non-zero within ${CONNECT_TIMEOUT_MS} ms (store.connectTimeoutMs) + 8 s (code ${fresh.code}, signal ${fresh.signal}, after ${fresh.ms} ms)`)
    t.match(fresh.output, /store\.url/, `its message names store.url: ${fresh.output.trim().split('\n').slice(-2).join(' | ')}`)

    await redis.start()
    const live = [a, b, ...(c2 instanceof Error ? [] : [c2])]
    const back = await poll(async () => {
      const v = await fleetViews(live)
      return v.every((x) => x.storeUp) && new Set(v.map((x) => x.generation)).size === 1 ? v : undefined
    }, 10_000, 50)
    t.ok(back, `Redis back: every instance, the one started from its snapshot too, resyncs without a restart (${JSON.stringify(back)})`)
    if (!(c2 instanceof Error)) {
      t.equal(await c2.metric('canaryd_store_up'), 1)
      const listed = await poll(async () => ((await a.get('/api/v1/fleet')).json.instances as Array<{ id: string }>).some((x) => x.id === c2.id), 3000, 50)
      t.ok(listed, 'and is listed in the fleet again')
    }
  })
})
