import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { configFromObject } from '../../src/config/load.js'
import { CanarydError, ConfigError } from '../../src/errors.js'
import type { RouteSpec } from '../../src/routing/spec.js'
import { RedisStore } from '../../src/store/redis.js'
import { configFingerprint, fleetSnapshotPath, RuntimeStore, type WeightChange } from '../../src/store/store.js'
import { captureLog, type LogLine } from '../helpers/log.js'
import { twoVersionRoute } from '../helpers/proxy.js'
import { redisTestOptions, startRedis, type TestRedis } from '../helpers/redis.js'
import { freePort } from '../helpers/upstream.js'
import { until as untilEvery } from '../helpers/until.js'

/** Polls every 5 ms (these windows move fast). */
const until = async (what: string, fn: () => boolean | Promise<boolean>, ms: number, step = 5): Promise<number> => await untilEvery(what, fn, ms, step)

// RuntimeStore in fleet mode against a real redis-server: several "instances"
// (RuntimeStores with their own RedisStore and instance id, one prefix) in
// this process. What one writes every other applies (pub/sub, within 500 ms);
// concurrent writers lose nothing; a state file seeds a new fleet; a flushed
// Redis is re-seeded; a stopped one refuses writes (503) and changes nothing;
// the local snapshot lets an instance start without Redis.

function webRoutes (w: [number, number] = [90, 10], canary = 'http://127.0.0.1:3002', extra: unknown[] = []): RouteSpec[] {
  return configFromObject({ routes: [twoVersionRoute('http://127.0.0.1:3001', canary, w), ...extra] }, '(test)', {}).routes
}

function tmpDir (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-fleet-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

interface Member {
  store: RuntimeStore
  redis: RedisStore
  lines: LogLine[]
  dir: string
  snapshot: string
}

interface MemberOptions {
  id: string
  prefix: string
  routes?: RouteSpec[]
  /** Its state dir (state.json, state.fleet.json); a new temp dir by default. */
  dir?: string
  syncMs?: number
  connectTimeoutMs?: number
  /** Another URL than the test Redis's (an unreachable one). */
  url?: string
}

/** A RuntimeStore in fleet mode (not opened), closed in teardown. */
function makeMember (t: Test, redis: { url: string }, o: MemberOptions): Member {
  const dir = o.dir ?? tmpDir(t)
  const file = join(dir, 'state.json')
  const { logger, lines } = captureLog('info')
  const rs = new RedisStore({ url: o.url ?? redis.url, prefix: o.prefix, instanceId: o.id, logger })
  const store = new RuntimeStore({ routes: o.routes ?? webRoutes(), file, logger, fleet: rs, snapshot: fleetSnapshotPath(file), syncMs: o.syncMs ?? 1000 })
  t.teardown(async () => {
    await store.close()
    await rs.close()
  })
  return { store, redis: rs, lines, dir, snapshot: fleetSnapshotPath(file) }
}

/** A member, opened (seeds or adopts the fleet). */
async function member (t: Test, redis: { url: string }, o: MemberOptions): Promise<Member> {
  const m = makeMember(t, redis, o)
  await m.store.open(o.connectTimeoutMs ?? 3000)
  return m
}

function ppm (s: RuntimeStore, route = 'web'): number[] {
  return s.holder.current.routeByName.get(route)!.versions.map((v) => v.ppm)
}

async function fleetRoute (redis: TestRedis, prefix: string, route = 'web'): Promise<Record<string, any> | null> {
  const c = redis.client()
  const v = await c.hget(`${prefix}state`, `route:${route}`)
  return v === null ? null : JSON.parse(v) as Record<string, any>
}

async function fleetGen (redis: TestRedis, prefix: string): Promise<number | null> {
  const v = await redis.client().hget(`${prefix}state`, 'gen')
  return v === null ? null : Number(v)
}

t.test('fleet mode on one Redis', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)

  await t.test('the first instance seeds, the second adopts; B applies A\'s changes by pub/sub within 500 ms', async (t) => {
    const routes = webRoutes()
    // a sync period of a minute: only the notification can bring a change within the test's bound
    const a = await member(t, redis, { id: 'a', prefix: 'p1:', routes, syncMs: 60_000 })
    t.equal(await fleetGen(redis, 'p1:'), 1, 'seeded at generation 1')
    t.equal(await redis.client().hget('p1:state', 'config'), configFingerprint(routes), 'with this config\'s fingerprint')
    t.match(await fleetRoute(redis, 'p1:'), { weights: { stable: 90, canary: 10 }, rollout: null })
    t.equal(a.store.generation, 1)
    t.equal(a.store.configMismatch, false)
    t.ok(a.lines.some((l) => /seeded from this instance's config/.test(String(l.msg))), 'the seed is logged')

    await a.store.setWeights('web', { stable: 80, canary: 20 }, { source: 'api', reason: 'before b joined' })
    const b = await member(t, redis, { id: 'b', prefix: 'p1:', routes: webRoutes(), syncMs: 60_000 })
    t.same(b.store.weights('web'), { stable: 80, canary: 20 }, 'B adopted the fleet\'s weights, not its config\'s 90/10')
    t.same(ppm(b.store), [800_000, 200_000], 'and put them in its routing table')
    t.equal(b.store.generation, 2)
    t.match(b.store.audit(10), [{ id: 1, route: 'web', reason: 'before b joined', weights: { stable: 80, canary: 20 } }], 'and the fleet\'s audit history')
    t.equal(b.store.configMismatch, false)
    t.notOk(b.lines.some((l) => /seeded/.test(String(l.msg))), 'B did not seed')
    // RedisStore.listen does not wait for Redis to confirm the subscription: measure once it is in effect
    const c = redis.client()
    await until('A and B subscribed to p1:changes', async () => ((await c.call('PUBSUB', 'NUMSUB', 'p1:changes')) as [string, number])[1] >= 2, 2000)

    const took: number[] = []
    for (let i = 1; i <= 10; i++) {
      const before = b.store.holder.current
      const w = { stable: 70 - i, canary: 30 + i }
      await a.store.setWeights('web', w, { source: 'api' })
      took.push(await until(`change ${i} applied by B`, () => b.store.holder.current !== before && b.store.weights('web')!.canary === w.canary, 500, 2))
      t.same(b.store.weights('web'), w)
      t.same(ppm(b.store), [w.stable * 10_000, w.canary * 10_000])
    }
    took.sort((x, y) => x - y)
    t.comment(`B applied A's changes in p50 ${took[4]!.toFixed(1)} ms, max ${took[9]!.toFixed(1)} ms (pub/sub only)`)
    t.ok(took[9]! < 500, 'every change within 500 ms')
    t.equal(b.store.generation, a.store.generation, 'same generation')
    t.equal(a.store.generation, 12)
    t.same(b.store.audit(100), a.store.audit(100), 'same audit')
  })

  await t.test('concurrent writes through A and B: none lost, the audit is one history on both', async (t) => {
    const a = await member(t, redis, { id: 'a', prefix: 'p2:', syncMs: 200 })
    const b = await member(t, redis, { id: 'b', prefix: 'p2:', syncMs: 200 })
    const calls: Array<Promise<WeightChange>> = []
    const asked = new Map<string, Record<string, number>>()
    for (let i = 1; i <= 20; i++) {
      const wa = { stable: 100 - i, canary: i }
      const wb = { stable: 50 - i, canary: 50 + i }
      asked.set(`a${i}`, wa)
      asked.set(`b${i}`, wb)
      calls.push(a.store.setWeights('web', wa, { source: 'api', reason: `a${i}` }))
      calls.push(b.store.setWeights('web', wb, { source: 'api', reason: `b${i}` }))
    }
    const settled = await Promise.allSettled(calls)
    const ok = settled.filter((s): s is PromiseFulfilledResult<WeightChange> => s.status === 'fulfilled').map((s) => s.value)
    const failed = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected').map((s) => s.reason as unknown)
    t.comment(`${ok.length} written, ${failed.length} refused with 409`)
    for (const e of failed) t.match(e, { code: 'CANARYD_ERR_STORE_CONFLICT', status: 409 }, 'a refused write is a 409 conflict, nothing else')
    t.ok(ok.length >= 20, `most writes go through (each lost race is retried on the new generation): ${ok.length}`)

    const g = (await fleetGen(redis, 'p2:'))!
    t.equal(g, 1 + ok.length, 'the fleet generation moved once per successful write')
    await until('both at the fleet generation', () => a.store.generation === g && b.store.generation === g, 3000)
    const auditA = a.store.audit(1000)
    const auditB = b.store.audit(1000)
    t.same(auditA, auditB, 'A and B have the same audit')
    t.equal(auditA.length, ok.length, 'one entry per successful write')
    const ids = auditA.map((e) => e.id).reverse()
    t.same(ids, Array.from({ length: ok.length }, (_, i) => i + 1), 'ids unique and increasing, no gap')
    const redisAudit = (await redis.client().lrange('p2:audit', 0, -1)).map((s) => JSON.parse(s) as { id: number })
    t.same(redisAudit.map((e) => e.id), ids, 'the same in Redis')
    const byReason = new Map(auditA.map((e) => [e.reason, e]))
    for (const r of ok) {
      const e = byReason.get(r.entry.reason)
      t.ok(e !== undefined && e.id === r.entry.id && JSON.stringify(e.weights) === JSON.stringify(asked.get(r.entry.reason!)), `write ${r.entry.reason} is in the audit as answered`)
    }
    t.equal(byReason.size, ok.length, 'no refused write is in the audit')
    // no lost update: every change was made on the state the previous one left
    const chron = auditA.slice().reverse()
    for (let i = 1; i < chron.length; i++) {
      if (JSON.stringify(chron[i]!.previous) !== JSON.stringify(chron[i - 1]!.weights)) {
        t.fail(`entry ${chron[i]!.id} was made on ${JSON.stringify(chron[i]!.previous)}, but entry ${chron[i - 1]!.id} had left ${JSON.stringify(chron[i - 1]!.weights)}`)
      }
    }
    t.same(chron[0]!.previous, { stable: 90, canary: 10 }, 'the first change was made on the seed')
    const last = chron[chron.length - 1]!.weights
    t.same(a.store.weights('web'), last, 'A holds the last write')
    t.same(b.store.weights('web'), last, 'B too')
    t.same(ppm(a.store), ppm(b.store), 'and the same routing table')
    t.match(await fleetRoute(redis, 'p2:'), { weights: last })
  })

  await t.test('a single instance\'s state file seeds a new fleet; a later instance adopts the fleet, not its own file', async (t) => {
    const dir = tmpDir(t)
    const file = join(dir, 'state.json')
    const single = new RuntimeStore({ routes: webRoutes(), file, logger: captureLog().logger })
    await single.setWeights('web', { stable: 70, canary: 30 }, { source: 'api', reason: 'single instance' })
    t.ok(existsSync(file))

    t.equal(await fleetGen(redis, 'p3:'), null, 'the fleet is empty')
    const a = await member(t, redis, { id: 'a', prefix: 'p3:', dir })
    t.match(await fleetRoute(redis, 'p3:'), { weights: { stable: 70, canary: 30 } }, 'Redis holds the state file\'s 70/30')
    t.same(a.store.weights('web'), { stable: 70, canary: 30 })
    t.match(a.store.audit(10), [{ reason: 'single instance' }], 'the history came along')

    const dirB = tmpDir(t)
    const other = new RuntimeStore({ routes: webRoutes(), file: join(dirB, 'state.json'), logger: captureLog().logger })
    await other.setWeights('web', { stable: 10, canary: 90 }, { source: 'api' })
    const b = await member(t, redis, { id: 'b', prefix: 'p3:', dir: dirB })
    t.same(b.store.weights('web'), { stable: 70, canary: 30 }, 'B adopts the fleet\'s 70/30 over its own file\'s 10/90')
    t.match(await fleetRoute(redis, 'p3:'), { weights: { stable: 70, canary: 30 } }, 'and did not write its own into Redis')
  })

  await t.test('config mismatch: reported, and the fleet\'s state applies only to routes with the same version set', async (t) => {
    const api = (versions: string[]): Record<string, unknown> => ({
      name: 'api',
      match: { pathPrefix: '/api' },
      versions: versions.map((v, i) => ({ name: v, upstream: `http://127.0.0.1:${4001 + i}`, weight: i === 0 ? 100 : 0 }))
    })
    const routesA = webRoutes([90, 10], 'http://127.0.0.1:3002', [api(['v1', 'v2'])])
    // B: the same web versions (another canary origin), api with v3 instead of v2
    const routesB = webRoutes([90, 10], 'http://127.0.0.1:3999', [api(['v1', 'v3'])])
    const a = await member(t, redis, { id: 'a', prefix: 'p7:', routes: routesA, syncMs: 200 })
    await a.store.setWeights('web', { stable: 70, canary: 30 }, { source: 'api' })
    await a.store.setWeights('api', { v1: 60, v2: 40 }, { source: 'api' })

    const b = await member(t, redis, { id: 'b', prefix: 'p7:', routes: routesB, syncMs: 200 })
    t.equal(a.store.configMismatch, false, 'A seeded the fleet: no mismatch')
    t.equal(b.store.configMismatch, true, 'B\'s config differs from the fleet\'s')
    t.equal(b.store.fleetConfigHash, a.store.configHash)
    t.not(b.store.configHash, a.store.configHash)
    t.same(b.store.weights('web'), { stable: 70, canary: 30 }, 'web (same versions): the fleet\'s weights apply')
    t.same(b.store.weights('api'), { v1: 100, v3: 0 }, 'api (other versions): B keeps its config\'s weights')
    t.ok(b.lines.some((l) => l.level === 40 && /differ from the fleet's/.test(String(l.msg))), 'B says so in its log (warn)')

    // B's write of web does not touch the fleet's api state (nothing merged)
    await b.store.setWeights('web', { stable: 65, canary: 35 }, { source: 'api' })
    t.match(await fleetRoute(redis, 'p7:', 'api'), { versions: [{ name: 'v1' }, { name: 'v2' }], weights: { v1: 60, v2: 40 } }, 'api in Redis is still A\'s')
    await until('A applied B\'s web change', () => a.store.weights('web')!.canary === 35, 2000)
    t.same(a.store.weights('api'), { v1: 60, v2: 40 })

    await a.store.setWeights('api', { v1: 50, v2: 50 }, { source: 'api' })
    await until('B at A\'s generation', () => b.store.generation === a.store.generation, 2000)
    t.same(b.store.weights('api'), { v1: 100, v3: 0 }, 'a later api change of the fleet is still not applied to B\'s api')
    t.equal(b.store.configMismatch, true)
  })
})

t.test('Redis flushed: the instances seed it again from their applied state', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const a = await member(t, redis, { id: 'a', prefix: 'pf:', syncMs: 100 })
  const b = await member(t, redis, { id: 'b', prefix: 'pf:', syncMs: 100 })
  for (const c of [20, 30, 40]) await a.store.setWeights('web', { stable: 100 - c, canary: c }, { source: 'api', reason: `to ${c}` })
  await until('B at generation 4', () => b.store.generation === 4, 2000)

  t.equal(await redis.client().flushall(), 'OK')
  t.equal(await fleetGen(redis, 'pf:'), null, 'Redis is empty')
  await until('seeded again', async () => await fleetGen(redis, 'pf:') !== null, 3000, 20)
  const g = (await fleetGen(redis, 'pf:'))!
  t.ok(g >= 4, `the generation does not go back (${g})`)
  t.match(await fleetRoute(redis, 'pf:'), { weights: { stable: 60, canary: 40 } }, 'the last applied weights are in Redis again')
  t.ok(a.store.generation >= 4 && b.store.generation >= 4, 'neither instance went back')
  t.same(a.store.weights('web'), { stable: 60, canary: 40 })
  t.same(b.store.weights('web'), { stable: 60, canary: 40 })
  t.ok(a.lines.concat(b.lines).some((l) => /seeded it again/.test(String(l.msg))), 'the re-seed is logged')

  await b.store.setWeights('web', { stable: 55, canary: 45 }, { source: 'api', reason: 'after the flush' })
  await until('A applied the write made after the flush', () => a.store.weights('web')!.canary === 45, 2000)
  t.equal(a.store.generation, b.store.generation)
  t.equal(await fleetGen(redis, 'pf:'), g + 1)
  const ids = a.store.audit(100).map((e) => e.id)
  t.equal(new Set(ids).size, ids.length, 'audit ids stay unique after the re-seed')
  t.match(a.store.audit(1), [{ reason: 'after the flush' }])
})

t.test('Redis stopped: writes 503 within 1 s and change nothing; restarted: writes work, the other converges', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const a = await member(t, redis, { id: 'a', prefix: 'ps:', syncMs: 200 })
  const b = await member(t, redis, { id: 'b', prefix: 'ps:', syncMs: 200 })
  await a.store.setWeights('web', { stable: 60, canary: 40 }, { source: 'api' })
  await until('B applied 60/40', () => b.store.weights('web')!.canary === 40, 2000)

  const table = a.store.holder.current
  const gen = a.store.generation
  const audit = a.store.audit(100)
  const tableB = b.store.holder.current
  await redis.stop()
  const t0 = performance.now()
  const err = await a.store.setWeights('web', { stable: 50, canary: 50 }, { source: 'api' }).then(() => undefined, (e: unknown) => e)
  const took = performance.now() - t0
  t.ok(err instanceof CanarydError)
  t.match(err, { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 })
  t.ok(took < 1000, `rejected within 1 s (${took.toFixed(0)} ms)`)
  t.same(a.store.weights('web'), { stable: 60, canary: 40 }, 'weights unchanged')
  t.equal(a.store.holder.current, table, 'the routing table was not swapped')
  t.equal(a.store.generation, gen, 'generation unchanged')
  t.same(a.store.audit(100), audit, 'nothing audited')
  await until('A sees the store down', () => !a.store.up, 1000)

  const writes: Array<[string, () => Promise<unknown>]> = [
    ['setWeights through B', async () => await b.store.setWeights('web', { stable: 50, canary: 50 }, { source: 'api' })],
    ['setRolloutState', async () => { await a.store.setRolloutState('web', { step: 1 }) }],
    ['setSegments', async () => await a.store.setSegments('web', [], { source: 'api' })]
  ]
  for (const [what, fn] of writes) {
    const s0 = performance.now()
    await t.rejects(fn, { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 }, `${what}: 503`)
    t.ok(performance.now() - s0 < 1000, `${what}: within 1 s`)
  }
  t.equal(b.store.holder.current, tableB, 'B\'s table unchanged')
  t.equal(a.store.getRolloutState('web'), null)
  t.same(ppm(a.store), [600_000, 400_000], 'both keep serving the last applied state')
  t.same(ppm(b.store), [600_000, 400_000])

  await redis.start()
  await until('A and B reconnected', () => a.store.up && b.store.up, 5000, 20)
  const res = await a.store.setWeights('web', { stable: 50, canary: 50 }, { source: 'api', reason: 'after the restart' })
  t.same(res.previous, { stable: 60, canary: 40 })
  t.equal(a.store.generation, gen + 1, 'the next generation: the write made before the outage was kept')
  await until('B converged', () => b.store.weights('web')!.canary === 50 && b.store.generation === a.store.generation, 3000)
  t.same(ppm(b.store), [500_000, 500_000])
  t.same(b.store.audit(100), a.store.audit(100), 'same history on both')
})

t.test('local snapshot: written after changes; an instance that cannot reach Redis starts from it, or refuses to start without it', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const dir = tmpDir(t)
  const snapshot = join(dir, 'state.fleet.json')
  t.equal(fleetSnapshotPath(join(dir, 'state.json')), snapshot, 'state.json → state.fleet.json')
  {
    const a = makeMember(t, redis, { id: 'a', prefix: 'pl:', dir })
    await a.store.open(3000)
    await a.store.setWeights('web', { stable: 75, canary: 25 }, { source: 'api' })
    await a.store.setWeights('web', { stable: 70, canary: 30 }, { source: 'api', reason: 'last before the restart' })
    const gen = a.store.generation
    t.equal(gen, 3)
    await until('the snapshot has the applied generation', () => {
      try {
        return (JSON.parse(readFileSync(snapshot, 'utf8')) as { generation: number }).generation === gen
      } catch {
        return false
      }
    }, 2000, 10)
    const doc = JSON.parse(readFileSync(snapshot, 'utf8')) as Record<string, any>
    t.match(doc.routes.web, { weights: { stable: 70, canary: 30 } })
    t.match((doc.audit as unknown[]).at(-1), { reason: 'last before the restart' }, 'the snapshot holds the audit entry of the generation it was written for')
    t.notOk(existsSync(join(dir, 'state.json')), 'fleet mode does not write the single-instance state file')
    await a.store.close()
    await a.redis.close()
  }

  // the same instance restarted while Redis is down
  await redis.stop()
  const c = makeMember(t, redis, { id: 'a', prefix: 'pl:', dir, syncMs: 100 })
  const t0 = performance.now()
  await c.store.open(300)
  t.ok(performance.now() - t0 < 2000, 'open waited about connectTimeoutMs, not longer')
  t.same(c.store.weights('web'), { stable: 70, canary: 30 }, 'started from the snapshot\'s weights, not the config\'s 90/10')
  t.same(ppm(c.store), [700_000, 300_000])
  t.equal(c.store.generation, 3, 'at the snapshot\'s generation')
  t.match(c.store.audit(1), [{ reason: 'last before the restart' }], 'and its history up to that generation')
  t.ok(c.lines.some((l) => l.level === 40 && /starting from the local snapshot/.test(String(l.msg))), 'and says so in its log')
  t.equal(c.store.up, false)
  await t.rejects(c.store.setWeights('web', { stable: 0, canary: 100 }, { source: 'api' }), { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 }, 'writes 503 until Redis is back')
  t.same(c.store.weights('web'), { stable: 70, canary: 30 })

  // Redis back: the instance resyncs without a restart
  await redis.start()
  await until('C reconnected', () => c.store.up, 5000, 20)
  const d = await member(t, redis, { id: 'd', prefix: 'pl:' })
  t.same(d.store.weights('web'), { stable: 70, canary: 30 }, 'the fleet kept its state')
  await d.store.setWeights('web', { stable: 20, canary: 80 }, { source: 'api' })
  await until('C applied a change made through another instance', () => c.store.weights('web')!.canary === 80, 3000)
  t.equal(c.store.generation, d.store.generation)

  await t.test('no snapshot and no Redis: open() throws a ConfigError naming store.url', async (t) => {
    const port = await freePort()
    for (const [what, dir] of [['a state dir without a snapshot', tmpDir(t)], ['no state file at all', '']] as const) {
      const { logger } = captureLog('info')
      const rs = new RedisStore({ url: `redis://127.0.0.1:${port}/0`, prefix: 'pl:', instanceId: 'e', logger })
      t.teardown(async () => { await rs.close() })
      const file = dir === '' ? '' : join(dir, 'state.json')
      const s = new RuntimeStore({ routes: webRoutes(), file, logger, fleet: rs, snapshot: fleetSnapshotPath(file) })
      const err = await s.open(300).then(() => undefined, (e: unknown) => e)
      t.ok(err instanceof ConfigError, `${what}: a ConfigError`)
      t.equal((err as ConfigError).key, 'store.url', `${what}: its key is store.url`)
      t.match((err as Error).message, /store\.url/)
      t.match((err as Error).message, `127.0.0.1:${port}`, 'and it says where Redis was looked for')
      await s.close()
    }
  })
})

t.test('an instance restarted on an empty Redis seeds it from its local snapshot, not its config', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const dir = tmpDir(t)
  const snapshot = join(dir, 'state.fleet.json')
  const a = makeMember(t, redis, { id: 'a', prefix: 'pe:', dir })
  await a.store.open(3000)
  await a.store.setWeights('web', { stable: 70, canary: 30 }, { source: 'api', reason: 'kept' })
  const gen = a.store.generation
  await until('snapshot written', () => existsSync(snapshot) && (JSON.parse(readFileSync(snapshot, 'utf8')) as { generation: number }).generation === gen, 2000, 10)
  await a.store.close()
  await a.redis.close()

  // Redis lost its data while the instance was down (no persistence, a new Redis)
  await redis.client().flushall()
  const b = await member(t, redis, { id: 'a', prefix: 'pe:', dir })
  t.same(b.store.weights('web'), { stable: 70, canary: 30 }, 'the instance keeps the snapshot\'s weights')
  t.match(await fleetRoute(redis, 'pe:'), { weights: { stable: 70, canary: 30 } }, 'and seeds Redis with them, not with the config\'s 90/10')
  t.ok((await fleetGen(redis, 'pe:'))! >= gen, 'at the snapshot\'s generation or later')
  t.ok(b.store.generation >= gen)
})

t.test('a change whose notification was lost is applied by the periodic generation check', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const b = await member(t, redis, { id: 'b', prefix: 'pn:', syncMs: 200 })
  const c = redis.client()
  const route = await fleetRoute(redis, 'pn:')
  // another writer's change, written without a PUBLISH (as if the message were lost)
  await c.multi().hset('pn:state', 'route:web', JSON.stringify({ ...route, weights: { stable: 33, canary: 67 } })).hincrby('pn:state', 'gen', 1).exec()
  const took = await until('B applied the silent change', () => b.store.weights('web')!.canary === 67, 2000)
  t.ok(took < 1000, `within a sync period or two (${took.toFixed(0)} ms)`)
  t.equal(b.store.generation, 2)
  t.same(ppm(b.store), [330_000, 670_000])
})
