import t, { type Test } from 'tap'
import { CanarydError } from '../../src/errors.js'
import type { AuditEntry } from '../../src/store/audit.js'
import { RedisStore } from '../../src/store/redis.js'
import { captureLog } from '../helpers/log.js'
import { testLogger } from '../helpers/proxy.js'
import { redisTestOptions, startRedis } from '../helpers/redis.js'
import { freePort } from '../helpers/upstream.js'
import { sleep, until } from '../helpers/until.js'

// The Redis side of a fleet, on a real redis-server: the compare-and-set
// commit (one Lua script), the seed of an empty fleet, the prefix every key
// lives under, the capped audit list, the change notifications, and what a
// caller sees while Redis is away (503, at once, nothing written).

/** listen() returns before Redis confirms the subscription: wait until it is in effect (bounded). */
async function subscribed (raw: { call: (...args: string[]) => Promise<unknown> }, channel: string, n = 1): Promise<void> {
  await until(`${n} subscriber(s) on ${channel}`, async () => ((await raw.call('PUBSUB', 'NUMSUB', channel)) as [string, number])[1] >= n, 2000)
}

/** Whether publish() says the message went out: true, or a receiver count (false / -1 when Redis is away). */
function sent (r: unknown): boolean {
  return r === true || (typeof r === 'number' && r >= 0)
}

function entry (id: number, weights: Record<string, number> = { stable: 50, canary: 50 }): AuditEntry {
  return { id, time: new Date(0).toISOString(), route: 'web', previous: { stable: 90, canary: 10 }, weights, reason: `change ${id}`, source: 'test', address: null, generation: id + 1 }
}

function routeJson (stable: number, canary: number): string {
  return JSON.stringify({ versions: [{ name: 'stable', upstream: 'http://127.0.0.1:3001' }, { name: 'canary', upstream: 'http://127.0.0.1:3002' }], weights: { stable, canary }, rollout: null })
}

t.test('RedisStore on a real redis-server', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const raw = redis.client()
  let n = 0
  /** A connected RedisStore with its own prefix (closed in teardown). */
  const open = async (t: Test, prefix: string, id = `i${++n}`, auditSize?: number): Promise<RedisStore> => {
    const s = new RedisStore({ url: redis.url, prefix, instanceId: id, logger: testLogger(), ...(auditSize === undefined ? {} : { auditSize }) })
    t.teardown(async () => { await s.close() })
    t.equal(await s.connect(3000), true, `${id} connected`)
    t.equal(s.up, true)
    return s
  }

  await t.test('an empty fleet reads as undefined, generation 0', async (t) => {
    const s = await open(t, 'empty:')
    t.equal(await s.read(10), undefined)
    t.equal(await s.generation(), 0)
  })

  await t.test('seed: the first one wins, a second seed changes nothing', async (t) => {
    const s = await open(t, 'seed:')
    const other = await open(t, 'seed:')
    t.equal(await s.seed(1, 'cfg-a', 'L1', new Map([['web', routeJson(70, 30)]]), [entry(1)]), true, 'the first seed')
    t.equal(await other.seed(1, 'cfg-b', 'L1', new Map([['web', routeJson(10, 90)]]), [entry(7)]), false, 'the second seed is refused')
    const r = await other.read(100)
    t.ok(r !== undefined)
    t.equal(r!.generation, 1)
    t.equal(r!.config, 'cfg-a', 'the first seed\'s config fingerprint')
    t.same([...r!.routes], [['web', routeJson(70, 30)]])
    t.same(r!.audit, [entry(1)])
    t.equal(await raw.hget('seed:state', 'gen'), '1')
    t.equal(await other.seed(9, 'cfg-b', 'L2', new Map([['web', routeJson(10, 90)]]), [entry(7)]), false, 'a newer state of another history (lineage) is refused too: it never overwrites a fleet started afresh')
    t.equal(await other.seed(9, 'cfg-b', 'L1', new Map([['web', routeJson(10, 90)]]), [entry(7)]), true, 'a newer state of the same history goes back in')
    t.equal((await other.read(100))!.generation, 9, 'the newer state is in force')
    t.same((await other.read(100))!.audit, [entry(7)], 'with its audit')
  })

  await t.test('commit is a compare-and-set on the generation', async (t) => {
    const a = await open(t, 'cas:')
    const b = await open(t, 'cas:')
    t.equal(await a.seed(1, 'cfg', 'L1', new Map([['web', routeJson(90, 10)]]), []), true)
    const heard: string[] = []
    await b.listen('changes', (m) => heard.push(m))
    await subscribed(raw, 'cas:changes')

    t.same(await a.commit(1, new Map([['web', routeJson(80, 20)]]), [entry(1)]), { ok: true, generation: 2 })
    const before = await raw.hgetall('cas:state')
    const auditBefore = await raw.lrange('cas:audit', 0, -1)
    // b still thinks the fleet is at 1: it lost the race
    t.same(await b.commit(1, new Map([['web', routeJson(10, 90)]]), [entry(99)]), { ok: false, reason: 'conflict', generation: 2 })
    t.same(await raw.hgetall('cas:state'), before, 'the losing write changed no field')
    t.same(await raw.lrange('cas:audit', 0, -1), auditBefore, 'and added no audit entry')
    t.same(await b.commit(2, new Map([['web', routeJson(10, 90)]]), [entry(2)]), { ok: true, generation: 3 }, 'made again on the new generation, it wins')
    const r = await a.read(10)
    t.equal(r!.generation, 3)
    t.equal(r!.routes.get('web'), routeJson(10, 90))
    t.same(r!.audit.map((e) => (e as AuditEntry).id), [1, 2], 'audit: newest last')
    t.equal(r!.config, 'cfg', 'config \'\' keeps the fleet\'s fingerprint')
    t.same(await a.commit(3, new Map(), [], { config: 'cfg-2' }), { ok: true, generation: 4 })
    t.equal((await a.read(1))!.config, 'cfg-2', 'a reload writes its fingerprint')
    await until('both notifications heard', () => heard.length >= 3, 2000)
    t.same(heard, ['2', '3', '4'], 'every write is announced with its generation on P changes, the lost one is not')
  })

  await t.test('20 writers on the same base: exactly one wins', async (t) => {
    const stores = [await open(t, 'race:'), await open(t, 'race:')]
    t.equal(await stores[0]!.seed(5, 'cfg', 'L1', new Map([['web', routeJson(90, 10)]]), []), true)
    const results = await Promise.all(Array.from({ length: 20 }, async (_, i) => await stores[i % 2]!.commit(5, new Map([['web', routeJson(100 - i, i)]]), [entry(i + 1)])))
    const won = results.filter((r) => r.ok)
    t.equal(won.length, 1, 'one winner')
    t.same(won[0], { ok: true, generation: 6 })
    t.ok(results.filter((r) => !r.ok).every((r) => !r.ok && r.reason === 'conflict' && r.generation === 6), 'every other one is told the fleet is at 6')
    t.equal(await raw.llen('race:audit'), 1, 'one audit entry')
  })

  await t.test('a write with a fencing token that does not hold the lease is refused', async (t) => {
    const s = await open(t, 'fence:', 'a')
    t.equal(await s.seed(1, 'cfg', 'L1', new Map([['web', routeJson(90, 10)]]), []), true)
    const before = await raw.hgetall('fence:state')
    t.same(await s.commit(1, new Map([['web', routeJson(0, 100)]]), [entry(1)], { fence: { route: 'web', value: '1 a' } }), { ok: false, reason: 'fenced', generation: 1 }, 'no lease at all')
    const token = await s.acquire('web', 5000)
    t.ok(token > 0)
    t.same(await s.commit(1, new Map([['web', routeJson(0, 100)]]), [entry(1)], { fence: { route: 'web', value: `${token + 1} a` } }), { ok: false, reason: 'fenced', generation: 1 }, 'another token')
    t.same(await s.commit(1, new Map([['web', routeJson(0, 100)]]), [entry(1)], { fence: { route: 'web', value: `${token} b` } }), { ok: false, reason: 'fenced', generation: 1 }, 'the token with another instance')
    t.same(await raw.hgetall('fence:state'), before, 'nothing written')
    t.equal(await raw.llen('fence:audit'), 0)
    t.same(await s.commit(1, new Map([['web', routeJson(0, 100)]]), [entry(1)], { fence: { route: 'web', value: `${token} a` } }), { ok: true, generation: 2 }, 'the holder writes')
  })

  await t.test('every key is under the prefix; two prefixes on one Redis do not see each other', async (t) => {
    const a = await open(t, 'fleet-a:', 'a')
    const b = await open(t, 'fleet-b:', 'b')
    t.equal(await a.seed(1, 'cfg', 'L1', new Map([['web', routeJson(70, 30)]]), [entry(1)]), true)
    t.equal(await b.read(10), undefined, 'the other fleet is still empty')
    const heardB: string[] = []
    await b.listen('changes', (m) => heardB.push(m))
    await subscribed(raw, 'fleet-b:changes')
    t.same(await a.commit(1, new Map([['web', routeJson(60, 40)]]), [entry(2)]), { ok: true, generation: 2 })
    t.ok(await a.acquire('web', 5000) > 0)
    await a.heartbeat({ id: 'a', hostname: 'h', pid: 1, admin: '', proxy: '', generation: 2, leader: [], config: 'cfg', startedAt: '', lastHeartbeat: '' }, 5000)
    const keys = await raw.keys('*')
    const mine = keys.filter((k) => !/^(empty|seed|cas|race|fence):/.test(k))
    t.ok(mine.length >= 5, `keys written: ${mine.join(', ')}`)
    t.ok(mine.every((k) => k.startsWith('fleet-a:')), 'all of them start with the prefix')
    t.same(mine.sort(), ['fleet-a:audit', 'fleet-a:fence:web', 'fleet-a:instance:a', 'fleet-a:instances', 'fleet-a:lease:web', 'fleet-a:state'])
    t.equal(b.prefix, 'fleet-b:')
    t.equal(await b.acquire('web', 5000), 1, 'the other fleet\'s lease is its own (its first token)')
    t.same(await b.instances(), [], 'and so are its instances')
    await sleep(100)
    t.same(heardB, [], 'a change in one fleet is not announced to the other')
  })

  await t.test('the audit list is capped, newest last', async (t) => {
    const s = await open(t, 'cap:', 'a', 5)
    t.equal(await s.seed(1, 'cfg', 'L1', new Map([['web', routeJson(90, 10)]]), [entry(1), entry(2), entry(3), entry(4), entry(5), entry(6), entry(7)]), true)
    t.same((await s.read(100))!.audit.map((e) => (e as AuditEntry).id), [3, 4, 5, 6, 7], 'a seed keeps the newest')
    for (let i = 8; i <= 10; i++) t.same(await s.commit(i - 7, new Map(), [entry(i)]), { ok: true, generation: i - 6 })
    t.equal(await raw.llen('cap:audit'), 5)
    t.same((await s.read(100))!.audit.map((e) => (e as AuditEntry).id), [6, 7, 8, 9, 10])
    t.same((await s.read(2))!.audit.map((e) => (e as AuditEntry).id), [9, 10], 'read(n) gives the newest n')
  })

  await t.test('publish/listen on a channel under the prefix', async (t) => {
    const a = await open(t, 'pub:')
    const b = await open(t, 'pub:')
    const got: string[] = []
    await b.listen('stats', (m) => got.push(m))
    await subscribed(raw, 'pub:stats')
    t.ok(sent(await a.publish('stats', 'hello')), 'publish reports it was sent')
    await until('message received', () => got.length === 1, 2000)
    t.same(got, ['hello'])
    t.same(await raw.call('PUBSUB', 'NUMSUB', 'pub:stats'), ['pub:stats', 1], 'the channel is named with the prefix')
    t.ok(sent(await a.publish('stats', 'again')))
    await until('second message received', () => got.length === 2, 2000)
    t.same(got, ['hello', 'again'])
  })
})

t.test('Redis away: 503 at once, nothing written; back: the same store works again', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const { logger, lines } = captureLog('info')
  const s = new RedisStore({ url: redis.url, prefix: 'out:', instanceId: 'a', logger })
  t.teardown(async () => { await s.close() })
  const ups: boolean[] = []
  s.onUp((u) => ups.push(u))
  t.equal(await s.connect(3000), true)
  t.equal(await s.seed(1, 'cfg', 'L1', new Map([['web', routeJson(90, 10)]]), []), true)

  await redis.stop()
  // the very next command, without waiting for the client to notice: it must not hang
  const t0 = performance.now()
  const err = await s.commit(1, new Map([['web', routeJson(0, 100)]]), [entry(1)]).then(() => undefined, (e: unknown) => e)
  const took = performance.now() - t0
  t.ok(err instanceof CanarydError, 'a CanarydError')
  t.match(err, { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 })
  t.ok(took < 1000, `rejected within 1 s (${took.toFixed(0)} ms)`)
  await until('up false', () => !s.up, 1000)
  t.same(ups, [true, false], 'onUp heard the loss')
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['read', async () => await s.read(1)], ['generation', async () => await s.generation()], ['seed', async () => await s.seed(1, 'x', 'L1', new Map(), [])],
    ['acquire', async () => await s.acquire('web', 1000)], ['renew', async () => await s.renew('web', 1, 1000)], ['holder', async () => await s.holder('web')],
    ['instances', async () => await s.instances()], ['heartbeat', async () => { await s.heartbeat({ id: 'a', hostname: '', pid: 1, admin: '', proxy: '', generation: 0, leader: [], config: '', startedAt: '', lastHeartbeat: '' }, 1000) }]
  ]
  for (const [what, fn] of calls) {
    await t.rejects(fn, { code: 'CANARYD_ERR_STORE_UNAVAILABLE' }, `${what} rejects with 503`)
  }
  t.notOk(sent(await s.publish('stats', 'x')), 'publish says it could not send (and does not throw)')
  t.ok(lines.some((l) => l.level === 40 && /Redis unreachable/.test(String(l.msg))), 'the loss is logged at warn')

  await redis.start()
  await until('up again', () => s.up, 5000)
  t.same(ups, [true, false, true])
  // Redis restarted: its script cache is empty; the commit must still work (EVALSHA falls back to EVAL)
  t.same(await s.commit(1, new Map([['web', routeJson(0, 100)]]), [entry(1)]), { ok: true, generation: 2 }, 'the first write after the restart works, on the kept data (AOF)')
  t.equal(await redis.client().hget('out:state', 'gen'), '2')
  t.ok(lines.some((l) => /Redis reachable again/.test(String(l.msg))), 'and the recovery is logged')
})

t.test('a Redis that is not there: connect resolves false after the timeout; the password never shows', async (t) => {
  const port = await freePort()
  const s = new RedisStore({ url: `redis://:sekret-pw@127.0.0.1:${port}/0`, prefix: 'x:', instanceId: 'a', logger: testLogger() })
  t.teardown(async () => { await s.close() })
  const t0 = performance.now()
  t.equal(await s.connect(300), false)
  const took = performance.now() - t0
  t.ok(took >= 250 && took < 2000, `waited about the timeout (${took.toFixed(0)} ms)`)
  t.equal(s.up, false)
  t.equal(s.where, `redis://127.0.0.1:${port}/0`, 'where: no password')
  const err = await s.read(1).then(() => undefined, (e: unknown) => e) as CanarydError
  t.match(err, { code: 'CANARYD_ERR_STORE_UNAVAILABLE', status: 503 })
  t.notMatch(err.message, /sekret/, 'the message does not carry the password')
  t.match(err.message, `127.0.0.1:${port}`)
})
