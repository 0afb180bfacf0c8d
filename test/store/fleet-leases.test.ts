import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { configFromObject } from '../../src/config/load.js'
import { CanarydError } from '../../src/errors.js'
import { FleetLink, type FleetCall } from '../../src/store/fleet.js'
import { RedisStore } from '../../src/store/redis.js'
import { fleetSnapshotPath, LeaseLostError, RuntimeStore } from '../../src/store/store.js'
import { testLogger, twoVersionRoute } from '../helpers/proxy.js'
import { redisTestOptions, startRedis, type TestRedis } from '../helpers/redis.js'
import { sleep, until } from '../helpers/until.js'

// Rollout leases with fencing tokens, heartbeats and actions forwarded to a
// rollout's leader, on a real redis-server. A lease is taken by one
// instance at a time; once it lapses another takes it with a higher token,
// and every write of the old holder (its old token) is refused and changes
// nothing in Redis.

function routes (): ReturnType<typeof configFromObject>['routes'] {
  return configFromObject({ routes: [twoVersionRoute('http://127.0.0.1:3001', 'http://127.0.0.1:3002', [90, 10])] }, '(test)', {}).routes
}

/** A connected RedisStore (closed in teardown). */
async function redisStore (t: Test, redis: TestRedis, prefix: string, id: string): Promise<RedisStore> {
  const s = new RedisStore({ url: redis.url, prefix, instanceId: id, logger: testLogger() })
  t.teardown(async () => { await s.close() })
  t.equal(await s.connect(3000), true)
  return s
}

/** An opened RuntimeStore in fleet mode (closed in teardown). */
async function member (t: Test, redis: TestRedis, prefix: string, id: string): Promise<RuntimeStore> {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-lease-'))
  const rs = new RedisStore({ url: redis.url, prefix, instanceId: id, logger: testLogger() })
  const file = join(dir, 'state.json')
  const s = new RuntimeStore({ routes: routes(), file, logger: testLogger(), fleet: rs, snapshot: fleetSnapshotPath(file), syncMs: 200 })
  t.teardown(async () => {
    await s.close()
    await rs.close()
    rmSync(dir, { recursive: true, force: true })
  })
  await s.open(3000)
  return s
}

/**
 * Waits until `n` connections subscribe to `channel`: RedisStore.listen
 * (and so FleetLink.start) returns before Redis confirms the subscription,
 * and a message published before that is not delivered.
 */
async function subscribed (redis: TestRedis, channel: string, n = 1): Promise<void> {
  const c = redis.client()
  await until(`${n} subscriber(s) on ${channel}`, async () => ((await c.call('PUBSUB', 'NUMSUB', channel)) as [string, number])[1] >= n, 2000)
}

function link (t: Test, redis: RedisStore, leaseTtlMs = 1000, heartbeatMs = 100): FleetLink {
  const l = new FleetLink({
    redis,
    logger: testLogger(),
    leaseTtlMs,
    heartbeatMs,
    describe: () => ({ admin: `127.0.0.1:${redis.instanceId === 'a' ? 9901 : 9902}`, proxy: '127.0.0.1:8080', generation: 7, leader: ['web'], config: 'cfg' })
  })
  t.teardown(async () => { await l.close() })
  return l
}

/** Instances a and b under `prefix`, each with its fleet link. */
async function twoLinks (t: Test, redis: TestRedis, prefix: string): Promise<{ ra: RedisStore; rb: RedisStore; a: FleetLink; b: FleetLink }> {
  const ra = await redisStore(t, redis, prefix, 'a')
  const rb = await redisStore(t, redis, prefix, 'b')
  return { ra, rb, a: link(t, ra), b: link(t, rb) }
}

t.test('leases and fencing', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const raw = redis.client()

  await t.test('one holder at a time; a lapsed lease goes to another with a higher token; the old token is dead', async (t) => {
    const a = await member(t, redis, 'l1:', 'a')
    const b = await member(t, redis, 'l1:', 'b')
    const ra = a.redis!
    const rb = b.redis!
    const TTL = 400

    const t1 = await ra.acquire('web', TTL)
    t.ok(t1 > 0, `A acquired with token ${t1}`)
    t.equal(await rb.acquire('web', TTL), 0, 'B gets 0 while A holds it')
    t.equal(await ra.acquire('web', TTL), 0, 'A too: a held lease is not taken again')
    t.same(await rb.holder('web'), { token: t1, instance: 'a' })
    t.equal(await raw.get('l1:lease:web'), `${t1} a`)
    const pttl = await raw.pttl('l1:lease:web')
    t.ok(pttl > 0 && pttl <= TTL, `the lease key has the TTL (${pttl} ms)`)

    // renewed at a third of the TTL, it outlives the TTL several times
    for (let i = 0; i < 6; i++) {
      await sleep(TTL / 3)
      t.equal(await ra.renew('web', t1, TTL), true, `renewal ${i + 1}`)
      t.equal(await rb.acquire('web', TTL), 0)
    }

    // A stops renewing (paused, partitioned): B takes it once it lapses
    const t0 = performance.now()
    let t2 = 0
    await until('B acquires after the TTL', async () => (t2 = await rb.acquire('web', TTL)) > 0, 3 * TTL, 20)
    const waited = performance.now() - t0
    t.ok(waited >= TTL - 200, `not before the TTL ran out (${waited.toFixed(0)} ms)`)
    t.ok(t2 > t1, `B's token ${t2} is higher than A's ${t1}`)
    t.same(await ra.holder('web'), { token: t2, instance: 'b' })
    t.equal(await ra.renew('web', t1, TTL), false, 'A\'s renew with its old token: false')
    t.equal(await raw.get('l1:lease:web'), `${t2} b`, 'and it did not touch B\'s lease')
    await ra.release('web', t1)
    t.same(await rb.holder('web'), { token: t2, instance: 'b' }, 'A\'s release with its old token does not free B\'s lease')

    // the old leader's writes are refused and change nothing in Redis
    const before = { state: await raw.hgetall('l1:state'), audit: await raw.lrange('l1:audit', 0, -1) }
    const weights = a.weights('web')
    const gen = a.generation
    const table = a.holder.current
    const oldFence = { route: 'web', token: t1, instance: 'a' }
    const e1 = await a.update('web', { weights: { stable: 0, canary: 100 } }, { source: 'rollout', fence: oldFence, rollout: { step: 9 } }).then(() => undefined, (e: unknown) => e)
    t.ok(e1 instanceof LeaseLostError, 'update with the old fence: LeaseLostError')
    t.match(e1, { code: 'CANARYD_ERR_ROLLOUT_CONFLICT', status: 409 })
    const e2 = await a.setRolloutState('web', { step: 9 }, oldFence).then(() => undefined, (e: unknown) => e)
    t.ok(e2 instanceof LeaseLostError, 'setRolloutState with the old fence: LeaseLostError')
    const e3 = await a.update('web', { weights: { stable: 0, canary: 100 } }, { source: 'rollout', fence: { route: 'web', token: t2, instance: 'a' } }).then(() => undefined, (e: unknown) => e)
    t.ok(e3 instanceof LeaseLostError, 'B\'s token under A\'s name: refused too')
    t.same({ state: await raw.hgetall('l1:state'), audit: await raw.lrange('l1:audit', 0, -1) }, before, 'Redis unchanged')
    t.same(a.weights('web'), weights, 'A\'s weights unchanged')
    t.equal(a.holder.current, table, 'A\'s table not swapped')
    t.equal(a.generation, gen)
    t.equal(a.getRolloutState('web'), null, 'A\'s rollout state unchanged')
    t.same(a.audit(10), [], 'nothing audited')

    // the new leader writes with its fence; A follows
    await b.update('web', { weights: { stable: 80, canary: 20 } }, { source: 'rollout', fence: { route: 'web', token: t2, instance: 'b' }, rollout: { step: 1 } })
    await b.setRolloutState('web', { step: 2 }, { route: 'web', token: t2, instance: 'b' })
    await until('A applied the leader\'s writes', () => JSON.stringify(a.getRolloutState('web')) === '{"step":2}', 2000)
    t.same(a.weights('web'), { stable: 80, canary: 20 })

    // A is behind the fleet and fenced: the lost CAS race is retried, then the fence refuses it
    const e4 = await a.setRolloutState('web', { step: 99 }, oldFence).then(() => undefined, (e: unknown) => e)
    t.ok(e4 instanceof LeaseLostError, 'still refused')
    t.same(a.getRolloutState('web'), { step: 2 })
    t.match(JSON.parse((await raw.hget('l1:state', 'route:web'))!), { rollout: { step: 2 } })

    // released: the next acquire is immediate, with a higher token again
    await rb.release('web', t2)
    t.equal(await raw.get('l1:lease:web'), null, 'released')
    const t3 = await ra.acquire('web', TTL)
    t.ok(t3 > t2, `A again, token ${t3} > ${t2}`)
    t.equal(await rb.renew('web', t2, TTL), false)
  })

  await t.test('leases of two routes are independent; a write fenced on one route does not need the other\'s lease', async (t) => {
    const ra = await redisStore(t, redis, 'l2:', 'a')
    const rb = await redisStore(t, redis, 'l2:', 'b')
    const ta = await ra.acquire('web', 5000)
    const tb = await rb.acquire('api', 5000)
    t.ok(ta > 0 && tb > 0)
    t.same(await ra.holder('api'), { token: tb, instance: 'b' })
    t.same(await rb.holder('web'), { token: ta, instance: 'a' })
    t.equal(await ra.holder('other'), undefined)
  })
})

t.test('heartbeats: the instance list', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const { rb, a, b } = await twoLinks(t, redis, 'hb:')
  await a.start()
  await b.start()
  await until('both listed', async () => (await a.instances()).length === 2, 2000)
  const list = (await b.instances()).sort((x, y) => x.id.localeCompare(y.id))
  t.match(list, [
    { id: 'a', admin: '127.0.0.1:9901', proxy: '127.0.0.1:8080', generation: 7, leader: ['web'], pid: process.pid },
    { id: 'b', admin: '127.0.0.1:9902' }
  ])
  for (const h of list) t.ok(Date.now() - Date.parse(h.lastHeartbeat) < 2000, `${h.id}: a recent lastHeartbeat`)
  const pttl = await redis.client().pttl('hb:instance:a')
  t.ok(pttl > 0 && pttl <= 300, `the heartbeat key lives 3 heartbeats (${pttl} ms)`)
  const first = list[0]!.lastHeartbeat
  await until('A beats again', async () => (await b.instances()).find((h) => h.id === 'a')?.lastHeartbeat !== first, 1000)

  await a.close()
  t.same((await b.instances()).map((h) => h.id), ['b'], 'a clean close leaves the list at once')

  // an instance that stops beating without leaving (SIGKILL): gone once its key expires
  await rb.heartbeat({ id: 'ghost', hostname: 'h', pid: 1, admin: '', proxy: '', generation: 0, leader: [], config: '', startedAt: '', lastHeartbeat: new Date().toISOString() }, 200)
  t.ok((await b.instances()).some((h) => h.id === 'ghost'))
  await until('the ghost is gone', async () => !(await b.instances()).some((h) => h.id === 'ghost'), 1500, 50)
  t.equal(await redis.client().zscore('hb:instances', 'ghost'), null, 'and forgotten in the zset')
})

t.test('forwarded calls: carried out by the instance named, its errors come back with their code', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const { a, b } = await twoLinks(t, redis, 'rpc:')
  const served: FleetCall[] = []
  b.serve(async (c) => {
    served.push(c)
    if (c.op === 'conflict') throw new CanarydError('CANARYD_ERR_ROLLOUT_CONFLICT', `route ${c.route}: the rollout is paused, it cannot be paused again`)
    if (c.op === 'crash') throw new Error('secret internal detail')
    if (c.op === 'slow') await sleep(200)
    if (c.op === 'not-mine') return undefined
    return { result: { by: 'b', op: c.op, route: c.route, state: 'paused' } }
  })
  a.serve(async () => { throw new Error('A must not serve a call addressed to B') })
  await a.start()
  await b.start()
  await subscribed(redis, 'rpc:rpc:a')
  await subscribed(redis, 'rpc:rpc:b')

  t.same(await a.call('b', { op: 'pause', route: 'web' }), { by: 'b', op: 'pause', route: 'web', state: 'paused' }, 'B\'s result')
  t.same(served, [{ op: 'pause', route: 'web' }], 'B carried it out once')

  const e = await a.call('b', { op: 'conflict', route: 'web' }).then(() => undefined, (x: unknown) => x)
  t.ok(e instanceof CanarydError, 'a CanarydError')
  t.match(e, { code: 'CANARYD_ERR_ROLLOUT_CONFLICT', status: 409, message: 'route web: the rollout is paused, it cannot be paused again' }, 'with B\'s code and message')

  const e2 = await a.call('b', { op: 'crash', route: 'web' }).then(() => undefined, (x: unknown) => x) as CanarydError
  t.match(e2, { code: 'CANARYD_ERR_INTERNAL' }, 'a plain error is an internal error')
  t.notMatch(e2.message, /secret/, 'without its details')

  // answers go to the right caller: several calls at once, out of order
  const ops = ['slow', 'resume', 'promote', 'abort', 'slow', 'pause']
  const results = await Promise.all(ops.map(async (op, i) => await a.call('b', { op, route: `r${i}` })))
  results.forEach((r, i) => { t.match(r, { op: ops[i], route: `r${i}` }, `call ${i} got its own answer`) })

  // a call from B to A and from A to itself work the same way
  a.serve(async (c) => ({ result: { by: 'a', op: c.op } }))
  t.same(await b.call('a', { op: 'pause', route: 'web' }), { by: 'a', op: 'pause' })

  const t0 = performance.now()
  const e3 = await a.call('nobody', { op: 'pause', route: 'web' }).then(() => undefined, (x: unknown) => x) as CanarydError
  const took = performance.now() - t0
  t.ok(e3 instanceof CanarydError)
  t.match(e3, { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 }, 'an instance that does not exist: 503 store unavailable')
  t.ok(took < 6000, `no later than the 5 s call timeout (${took.toFixed(0)} ms)`)
  t.match(e3.message, /nobody/)

  // an instance that is not the one to answer (it does not lead that rollout) stays silent: the caller times out (503), it never hears a wrong answer
  const tn = performance.now()
  const e5 = await a.call('b', { op: 'not-mine', route: 'web' }).then(() => undefined, (x: unknown) => x) as CanarydError
  t.match(e5, { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 }, 'not answered: 503 after the call timeout')
  t.ok(performance.now() - tn >= 4500, 'no answer was sent')

  // an instance that is connected but never answers (no handler): 503 after the 5 s call timeout
  const rc = await redisStore(t, redis, 'rpc:', 'c')
  const c = link(t, rc)
  await c.start()
  await subscribed(redis, 'rpc:rpc:c')
  const t2 = performance.now()
  const e4 = await a.call('c', { op: 'pause', route: 'web' }).then(() => undefined, (x: unknown) => x) as CanarydError
  const took2 = performance.now() - t2
  t.match(e4, { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 }, 'a silent instance: 503 store unavailable')
  t.ok(took2 >= 4500 && took2 < 7000, `after about 5 s (${took2.toFixed(0)} ms)`)

  await redis.stop()
  const t1 = performance.now()
  await t.rejects(a.call('b', { op: 'pause', route: 'web' }), { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 }, 'Redis down: 503')
  t.ok(performance.now() - t1 < 1000, 'at once, not after the call timeout')
})
