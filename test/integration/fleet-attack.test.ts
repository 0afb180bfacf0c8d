import { spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { CLI } from '../helpers/cli.js'
import { adminCall, poll, sleep, startFleet, weightsOf, type Fleet, type FleetInstance } from '../helpers/fleet.js'
import { startLoad, type Load } from '../helpers/load.js'
import { redisTestOptions, startRedis, type TestRedis } from '../helpers/redis.js'
import { routeFile } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 16, adversarial: fleets of `canaryd serve` processes on a real
// redis-server, pushed where a shared store is thinnest. A frozen Redis
// (SIGSTOP: the connection stays open, commands already sent run when it
// continues), a rollout leader paused past its lease, Redis restarted
// empty or flushed, writes of every kind racing through every instance,
// hostile data in the state hash, restarts from a corrupt or older
// snapshot, an instance that lagged behind reseeding an empty Redis.
// Every loop is bounded in count and time; every process is ours.
//
// Bugs this file found in the first fleet build (1920680), all fixed since:
// a write answered 503 while Redis was frozen ran when it continued (now a
// script past the client's deadline refuses itself); canaryd_store_up
// stayed 1 and queued writes waited 2 s each while Redis was frozen (now a
// watchdog treats it as unreachable); a write answered as failed but
// applied made the leader repeat a step or undo a pause (record revisions);
// an ACQUIRE run after its client gave up left a lease nobody used; an
// unreadable route state reset the route to config weights silently; a
// non-numeric generation was taken as NaN; audit entries with null weights
// were accepted; two processes with one instance id answered each other's
// forwarded actions (now refused at start, and only the leader answers);
// an empty Redis reseeded by a lagging instance lost a write answered 200
// (now the newest applied state wins the reseed).

interface Rollout {
  state: string
  step: number
  weight: number
  checks: Array<{ at: string; step: number; verdict: string; instances?: number; canary: { requests: number }; stable: { requests: number } }>
  history: Array<{ at: string; event: string; step: number; state: string; weight: number }>
}

/** One generation of route web as Redis stored it (read by a client of the test's own). */
interface Traced { gen: number; state: string; step: number; weights: Record<string, number>; history: number }

const web = (up: Record<string, { origin: string }>, name = 'web', extra: Record<string, unknown> = {}): Record<string, unknown> =>
  routeFile(name, [{ name: 'stable', upstream: up.stable!.origin, weight: 100 }, { name: 'canary', upstream: up.canary!.origin, weight: 0 }], extra)

/** A manual-promotion plan of many small steps, checked every `intervalMs` with a low bar (any traffic passes). */
const planOf = (intervalMs: number, steps = Array.from({ length: 30 }, (_, i) => i + 1)): Record<string, unknown> => ({
  canary: 'canary', steps, intervalMs, promotion: 'manual', analysis: { minRequests: 5, maxFailedChecks: 3, successRate: { min: 90 }, baseline: { judge: 'none' } }
})

async function weights (inst: FleetInstance, route = 'web'): Promise<Record<string, number>> {
  return weightsOf((await inst.get(`/api/v1/routes/${route}`)).json)
}

async function rolloutOf (inst: FleetInstance): Promise<Rollout> {
  return (await inst.get('/api/v1/routes/web/rollout')).json as unknown as Rollout
}

function brief (r: Rollout): string {
  return `${r.state} step ${r.step}; history ${r.history.map((h) => `${h.event}@${h.step}`).join(',')}`
}

function show (trace: readonly Traced[]): string {
  return trace.map((x) => `g${x.gen}:${x.state}@${x.step}/${x.weights.canary}`).join(' ')
}

function failed (l: Load): string[] {
  return [...l.statuses].filter(([k]) => k !== '200').map(([k, n]) => `${k} ×${n}`)
}

/** SIGSTOP the redis-server for `ms` (running `during` meanwhile), then SIGCONT, whatever happens. */
async function freeze (redis: TestRedis, ms: number, during?: () => Promise<void>): Promise<void> {
  const pid = redis.pid!
  process.kill(pid, 'SIGSTOP')
  try {
    const started = Date.now()
    if (during !== undefined) await during()
    const left = ms - (Date.now() - started)
    if (left > 0) await sleep(left)
  } finally {
    process.kill(pid, 'SIGCONT')
  }
}

/** Sends SIGCONT to every pid in teardown (a failed assertion must not leave a stopped process behind). */
function contOnTeardown (t: { teardown: (fn: () => void) => void }, pids: () => Array<number | undefined>): void {
  t.teardown(() => {
    for (const pid of pids()) {
      try { if (pid !== undefined) process.kill(pid, 'SIGCONT') } catch {}
    }
  })
}

/** Deletes Redis's data files (the next start is empty, as a Redis without persistence after a crash). */
function wipe (redis: TestRedis): void {
  for (const f of readdirSync(redis.dir)) rmSync(join(redis.dir, f), { recursive: true, force: true })
}

/**
 * Every generation's route web as Redis stored it, read as each change is
 * announced: what the fleet really wrote, not what an instance shows. A
 * subscriber of the test's own (no retries: it stops at the first Redis restart).
 */
function traceRoute (t: { teardown: (fn: () => Promise<void>) => void }, redis: TestRedis, prefix: string): Traced[] {
  const out: Traced[] = []
  const sub = redis.client()
  const rd = redis.client()
  sub.on('message', () => {
    rd.multi().hget(`${prefix}state`, 'gen').hget(`${prefix}state`, 'route:web').exec().then((res) => {
      const route = JSON.parse(String(res?.[1]?.[1] ?? 'null')) as { weights: Record<string, number>; rollout: { state: string; stepIndex: number; history: unknown[] } | null } | null
      if (route === null || typeof route !== 'object') return
      const r = route.rollout
      out.push({ gen: Number(res?.[0]?.[1]), state: r?.state ?? 'none', step: (r?.stepIndex ?? -1) + 1, weights: route.weights, history: r?.history.length ?? 0 })
    }, () => {})
  })
  sub.subscribe(`${prefix}changes`).catch(() => {})
  t.teardown(async () => { sub.disconnect(); rd.disconnect() })
  return out
}

/** Where a traced rollout went backwards (a write based on an older record). */
function regressions (trace: readonly Traced[]): string[] {
  const out: string[] = []
  for (let i = 1; i < trace.length; i++) {
    const p = trace[i - 1]!
    const x = trace[i]!
    if (x.state === 'none' || p.state === 'none' || x.gen <= p.gen) continue
    if (x.step < p.step) out.push(`g${x.gen}: step ${p.step} → ${x.step}`)
    if (x.history < p.history && x.history < 50) out.push(`g${x.gen}: history ${p.history} → ${x.history} entries`)
  }
  return out
}

/** The step numbers of a record's history, in order ('started' counts as its first step). */
function stepsOf (r: Rollout): number[] {
  return r.history.filter((h) => h.event === 'step' || h.event === 'started').map((h) => h.step)
}

/** The routes' leaders as GET /api/v1/fleet on `inst` lists them. */
async function leadersOf (inst: FleetInstance): Promise<string[]> {
  return ((await inst.get('/api/v1/fleet')).json.instances as Array<{ id: string; leader?: string[] }>).filter((i) => i.leader?.includes('web') === true).map((i) => i.id)
}

t.test('Redis frozen (SIGSTOP): connection open, commands pile up', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  contOnTeardown(t, () => [redis.pid])
  const fleet: Fleet = await startFleet(t, redis, { routes: [web(up)], store: { heartbeatMs: 500, syncMs: 500 }, extra: { health: { consecutiveFailures: 0 } } })
  const [a, b, c] = fleet.instances as [FleetInstance, FleetInstance, FleetInstance]
  const loads = fleet.instances.map((i) => startLoad(t, i.proxyUrl, () => '/', 2))
  t.teardown(async () => { for (const l of loads) await l.stop() })
  await loads[1]!.between(50)

  await t.test('admin writes, probes and gauges while Redis is frozen', async (t) => {
    let answer: { status: number; json: Record<string, any> } | undefined
    let took = 0
    let storeUp: Array<number | undefined> = []
    let ready: number[] = []
    let queued: Array<{ status: number; ms: number }> = []
    await freeze(redis, 4500, async () => {
      await sleep(200)
      const t0 = Date.now()
      const more = Promise.all([0, 1].map(async (k) => {
        const r = await c.put('/api/v1/routes/web/weights', { weights: { stable: 90 - k, canary: 10 + k }, reason: `queued ${k}` })
        return { status: r.status, ms: Date.now() - t0 }
      }))
      answer = await a.put('/api/v1/routes/web/weights', { weights: { stable: 70, canary: 30 }, reason: 'while frozen' })
      took = Date.now() - t0
      storeUp = await Promise.all(fleet.instances.map(async (i) => await i.metric('canaryd_store_up')))
      ready = await Promise.all(fleet.instances.map(async (i) => (await i.get('/readyz')).status))
      queued = await more
    })
    t.comment(`PUT through a while frozen: ${answer?.status} after ${took} ms: ${String(answer?.json.error?.message)}`)
    t.comment(`2 PUTs at once through c while frozen: ${queued.map((q) => `${q.status} after ${q.ms} ms`).join(', ')}`)
    t.equal(answer?.status, 503, 'a write while Redis is frozen answers 503')
    t.ok(took < 5000, `within 5 s (${took} ms)`)
    t.same(ready, [200, 200, 200], '/readyz stays 200 everywhere')
    t.ok(queued.every((q) => q.status === 503 && q.ms < 3000), 'two writes at once through one instance both answer 503 within 3 s (not one store timeout after the other)')
    t.same(storeUp, [0, 0, 0], 'canaryd_store_up is 0 while Redis does not answer')
    await sleep(1500)
    const after = await Promise.all(fleet.instances.map(async (i) => await weights(i)))
    t.equal(new Set(after.map((w) => JSON.stringify(w))).size, 1, `every instance converged once Redis continued (${JSON.stringify(after[0])})`)
    // the contract: a write refused with 503 while the store is away changes nothing anywhere
    const claimsNothing = /nothing was changed/.test(String(answer?.json.error?.message))
    if (claimsNothing) t.same(after[0], { stable: 100, canary: 0 }, 'a write answered 503 "nothing was changed" changed nothing once Redis continued')
    else {
      t.same(after[0], { stable: 100, canary: 0 }, 'a write answered 503 is not applied once Redis continues (contract: a refused write changes nothing anywhere)')
    }
  })

  await t.test('a rollout whose writes time out: no step twice, a recorded pause holds', async (t) => {
    t.equal((await b.put('/api/v1/routes/web/weights', { weights: { stable: 100, canary: 0 }, reason: 'reset' })).status, 200, 'reset to 100/0')
    const trace = traceRoute(t, redis, fleet.prefix)
    t.equal((await a.post('/api/v1/routes/web/rollout', planOf(700)).then((r) => r.status)), 201, 'rollout started on a (a leads)')
    await sleep(1600)
    const from = trace.length
    // the leader's next step write times out; Redis runs it when it continues
    await freeze(redis, 2600)
    await sleep(2000)
    t.comment(`trace of a freeze with no action: ${show(trace.slice(from))}`)
    const from2 = trace.length
    let res: { status: number; json: Record<string, any> } | undefined
    // a pause sent to the leader as Redis freezes: its write times out, and runs first when Redis continues
    await freeze(redis, 2600, async () => {
      await sleep(20)
      res = await a.post('/api/v1/routes/web/rollout/pause')
    })
    await sleep(3000)
    const after = trace.slice(from2)
    t.comment(`pause on the leader while frozen: ${res?.status} ${String(res?.json.error?.message ?? res?.json.state)}`)
    t.comment(`trace of a freeze with a pause: ${show(after)}`)
    const audit = ((await c.get('/api/v1/audit?limit=200')).json.entries as Array<{ source: string; reason: string | null }>)
      .filter((e) => e.source === 'rollout').map((e) => /^rollout step (\d+)/.exec(e.reason ?? '')?.[1]).filter((x): x is string => x !== undefined)
    t.same(audit, [...new Set(audit)], `each rollout step audited once (${[...audit].reverse().join(',')})`)
    const rec = await rolloutOf(b)
    t.same(stepsOf(rec), [...new Set(stepsOf(rec))], `each step once in the history (${stepsOf(rec).join(',')})`)
    t.same(regressions(trace), [], 'the rollout never went backwards')
    if (/nothing was changed/.test(String(res?.json.error?.message))) t.notOk(after.some((x) => x.state === 'paused'), 'a pause answered 503 "nothing was changed" never shows in the fleet state')
    // once the fleet records the rollout paused, nobody resumed it: it stays paused
    const pausedAt = after.findIndex((x) => x.state === 'paused')
    const moved = pausedAt === -1 ? [] : after.slice(pausedAt + 1).filter((x) => x.state !== 'paused')
    t.same(show(moved), '', `a rollout the fleet records as paused does not move on by itself (${pausedAt === -1 ? 'never paused' : 'paused'})`)
    const states = await Promise.all(fleet.instances.map(async (i) => `${(await rolloutOf(i)).state}@${(await rolloutOf(i)).step}`))
    t.equal(new Set(states).size, 1, `every instance shows the same record (${states.join(', ')})`)
  })

  for (const [k, l] of loads.entries()) {
    await l.stop()
    t.same(failed(l), [], `instance ${fleet.instances[k]!.name}: ${l.total} proxy requests, all 200`)
  }
})

t.test('a rollout through a leader paused past its lease, an empty Redis and a FLUSHALL', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  const fleet: Fleet = await startFleet(t, redis, {
    routes: [web(up), web(up, 'api', { match: { pathPrefix: '/api' } })],
    store: { heartbeatMs: 250, syncMs: 250, leaseTtlMs: 1500 },
    extra: { health: { consecutiveFailures: 0 } }
  })
  const [a, b, c] = fleet.instances as [FleetInstance, FleetInstance, FleetInstance]
  contOnTeardown(t, () => fleet.instances.map((i) => i.pid))
  // traffic through b and c only: a stopped process would hold its clients' requests
  const loads = [b, c].map((i) => startLoad(t, i.proxyUrl, () => '/', 2))
  t.teardown(async () => { for (const l of loads) await l.stop() })
  t.equal((await b.put('/api/v1/routes/api/weights', { weights: { stable: 65, canary: 35 }, reason: 'api before it all' })).status, 200, 'api at 65/35')
  const trace = traceRoute(t, redis, fleet.prefix)
  t.equal((await a.post('/api/v1/routes/web/rollout', planOf(500, Array.from({ length: 40 }, (_, i) => i + 1)))).status, 201, 'rollout started on a (a leads)')
  await sleep(1200)

  await t.test('split brain: a is SIGSTOPped past its lease, another takes over, a is continued', async (t) => {
    process.kill(a.pid, 'SIGSTOP')
    const stoppedAt = Date.now()
    const probe = redis.client()
    const took = await poll(async () => {
      const h = await probe.get(`${fleet.prefix}lease:web`).catch(() => null)
      return h !== null && !h.endsWith(' inst-a') ? h : undefined
    }, 5000, 50)
    t.ok(took, `another instance took the lease (${String(took)}) ${Date.now() - stoppedAt} ms after a stopped`)
    await sleep(1200)
    process.kill(a.pid, 'SIGCONT')
    await sleep(1800)
    t.comment(`trace: ${show(trace)}`)
    t.same(regressions(trace), [], 'the rollout never went backwards (no write from the old leader)')
    const r = await rolloutOf(b)
    t.same(stepsOf(r), [...new Set(stepsOf(r))].sort((x, y) => x - y), `every step once, in order (${stepsOf(r).join(',')})`)
    t.equal(r.state, 'progressing', 'still progressing')
    t.ok(a.lines().some((l) => typeof l.msg === 'string' && l.msg.includes('no longer leads')), 'a says it no longer leads')
    const leaders = await leadersOf(c)
    t.equal(leaders.length, 1, `one leader listed (${leaders.join(', ')})`)
    t.notSame(leaders, ['inst-a'], 'and it is not a')
  })

  await t.test('Redis killed and restarted empty mid-rollout', async (t) => {
    const genBefore = (await b.get('/api/v1/fleet')).json.generation as number
    await redis.kill()
    wipe(redis)
    await sleep(300)
    // a step committed just before the kill may have reached the leader only (its notification died with Redis): no instance may move on while Redis is away
    const heldAll = await Promise.all(fleet.instances.map(rolloutOf))
    const held = heldAll[fleet.instances.indexOf(b)]!
    await sleep(1200)
    const during = await Promise.all(fleet.instances.map(rolloutOf))
    t.same(during.map((r) => r.step), heldAll.map((r) => r.step), `the rollout holds while Redis is away (steps ${heldAll.map((r) => r.step).join(', ')})`)
    await redis.start()
    const t0 = Date.now()
    const conv = await poll(async () => {
      const v = await Promise.all(fleet.instances.map(async (i) => (await i.get('/api/v1/fleet')).json as { generation: number; storeUp: boolean }))
      return v.every((x) => x.storeUp) && new Set(v.map((x) => x.generation)).size === 1 ? v[0]!.generation : undefined
    }, 5000, 50)
    t.ok(conv, `every instance up and at one generation (${String(conv)}) ${Date.now() - t0} ms after Redis came back empty`)
    const gen = Number(await redis.client().hget(`${fleet.prefix}state`, 'gen'))
    t.ok(gen >= genBefore, `Redis reseeded at generation ${gen} (was ${genBefore})`)
    t.same(await Promise.all(fleet.instances.map(async (i) => await weights(i, 'api'))), [{ stable: 65, canary: 35 }, { stable: 65, canary: 35 }, { stable: 65, canary: 35 }], 'api keeps 65/35 everywhere')
    await sleep(2500)
    // the rollout keeps stepping: three reads in flight may straddle a step that has reached some
    // instances only (propagation takes milliseconds); read again until one snapshot agrees (bounded)
    let after = await Promise.all(fleet.instances.map(rolloutOf))
    for (let i = 0; i < 40 && new Set(after.map((r) => `${r.state}@${r.step}`)).size !== 1; i++) {
      await sleep(50)
      after = await Promise.all(fleet.instances.map(rolloutOf))
    }
    t.comment(`before: ${brief(held)}`)
    t.comment(`after:  ${brief(after[0]!)}`)
    t.ok(after[0]!.step > held.step, `the rollout moved on after the outage (step ${held.step} → ${after[0]!.step})`)
    t.same(stepsOf(after[0]!), Array.from({ length: stepsOf(after[0]!).length }, (_, i) => i + 1), 'every step once, none skipped')
    t.equal(new Set(after.map((r) => `${r.state}@${r.step}`)).size, 1, 'every instance shows the same step')
    t.equal((await leadersOf(b)).length, 1, 'one leader')
  })

  await t.test('FLUSHALL while everything runs', async (t) => {
    const before = await rolloutOf(b)
    const genBefore = (await b.get('/api/v1/fleet')).json.generation as number
    await redis.client().flushall()
    const conv = await poll(async () => {
      const v = await Promise.all(fleet.instances.map(async (i) => (await i.get('/api/v1/fleet')).json.generation as number))
      const g = Number(await redis.client().hget(`${fleet.prefix}state`, 'gen'))
      return g >= genBefore && v.every((x) => x === v[0]) ? v[0] : undefined
    }, 4000, 50)
    t.ok(conv, `reseeded; every instance at generation ${String(conv)} (was ${genBefore})`)
    await sleep(2000)
    const after = await Promise.all(fleet.instances.map(rolloutOf))
    t.comment(`before: ${brief(before)}`)
    t.comment(`after:  ${brief(after[0]!)}`)
    t.ok(after[0]!.step >= before.step, 'the rollout did not go back')
    t.same(stepsOf(after[0]!), Array.from({ length: stepsOf(after[0]!).length }, (_, i) => i + 1), 'every step once, none skipped')
    t.equal((await leadersOf(b)).length, 1, 'one leader')
    t.same(await weights(c, 'api'), { stable: 65, canary: 35 }, 'api keeps 65/35')
  })

  await t.test('Redis frozen for twice the lease TTL mid-rollout', async (t) => {
    contOnTeardown(t, () => [redis.pid])
    const before = await rolloutOf(b)
    await freeze(redis, 3000)
    const t0 = Date.now()
    const probe = redis.client()
    // who holds the lease in Redis, and who says it leads (heartbeats), until they agree on one instance
    let agreed: string | undefined
    const seen: string[] = []
    let phantomMs = 0
    let last = Date.now()
    for (let i = 0; i < 60 && agreed === undefined; i++) {
      const lease = await probe.get(`${fleet.prefix}lease:web`).catch(() => null)
      const leaders = (await Promise.all(fleet.instances.map(async (x) => (await x.get('/api/v1/fleet')).json as { self: string; instances: Array<{ id: string; leader: string[] }> })))
        .map((v) => v.instances.find((x) => x.id === v.self)!).filter((x) => x.leader.includes('web')).map((x) => x.id)
      const holder = lease === null ? 'none' : lease.split(' ')[1]!
      const s = `${holder}/${leaders.join('+') || 'nobody'}`
      if (seen.at(-1)?.startsWith(`${s}@`) !== true) seen.push(`${s}@${Date.now() - t0}`)
      // a lease held in Redis by an instance that does not run the rollout: forwarded actions get 409 meanwhile
      if (holder !== 'none' && !leaders.includes(holder)) phantomMs += Date.now() - last
      last = Date.now()
      if (leaders.length === 1 && leaders[0] === holder) agreed = holder
      else await sleep(100)
    }
    t.comment(`lease holder in Redis / instances that say they lead, after Redis continued: ${seen.join(' → ')}`)
    t.ok(agreed, `the lease holder leads the rollout ${Date.now() - t0} ms after Redis continued (within 2 × leaseTtlMs: ${Date.now() - t0 < 3000})`)
    t.ok(phantomMs < 700, `no lease held by an instance that does not lead it for more than two lease ticks (${phantomMs} ms)`)
    await sleep(1500)
    const after = await rolloutOf(c)
    t.comment(`before: step ${before.step}; after: ${brief(after)}`)
    t.same(stepsOf(after), Array.from({ length: stepsOf(after).length }, (_, i) => i + 1), 'every step once, none skipped')
  })

  for (const [k, l] of loads.entries()) {
    await l.stop()
    t.same(failed(l), [], `instance ${[b, c][k]!.name}: ${l.total} proxy requests, all 200`)
  }

  await t.test('a pause sent to a follower just after the leader is SIGKILLed', async (t) => {
    const holder = await redis.client().get(`${fleet.prefix}lease:web`)
    const leader = fleet.byId(String(holder).split(' ')[1] ?? '')
    t.ok(leader, `the leader is ${String(holder)}`)
    if (leader === undefined) return
    const follower = fleet.instances.find((i) => i !== leader)!
    await leader.kill('SIGKILL')
    const t0 = Date.now()
    const first = await follower.post('/api/v1/routes/web/rollout/pause')
    const firstMs = Date.now() - t0
    t.comment(`first pause through ${follower.name}: ${first.status} after ${firstMs} ms: ${String(first.json.error?.message ?? first.json.state)}`)
    t.ok(first.status === 200 || (first.status === 503 && firstMs < 1000), 'answered at once: 200, or 503 (the leader is gone)')
    let last = first
    for (let i = 0; i < 12 && last.status !== 200; i++) {
      await sleep(300)
      last = await follower.post('/api/v1/routes/web/rollout/pause')
    }
    t.equal(last.status, 200, `paused after ${Date.now() - t0} ms (lease TTL 1500 ms)`)
    await sleep(1500)
    const alive = fleet.instances.filter((i) => i.running)
    const records = await Promise.all(alive.map(rolloutOf))
    t.same(records.map((r) => r.state), alive.map(() => 'paused'), 'paused on every live instance, and it stays paused')
    t.equal(records[0]!.history.filter((h) => h.event === 'paused').length, 1, 'one pause in the history')
  })
})

t.test('one fleet, many writers: races, hostile data, a mismatched and a late instance', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary', 'alt1', 'alt2', 'alt3', 'beta'])
  const redis = await startRedis(t)
  const routes = ['web', 'api', 'img']
  const fleet: Fleet = await startFleet(t, redis, {
    routes: routes.map((r, i) => web(up, r, i === 0 ? {} : { match: { pathPrefix: `/${r}` } })),
    store: { heartbeatMs: 250, syncMs: 250, leaseTtlMs: 1500 },
    extra: { health: { consecutiveFailures: 0 } }
  })
  const insts = fleet.instances
  const [a, b, c] = insts as [FleetInstance, FleetInstance, FleetInstance]
  const r = redis.client()
  const key = `${fleet.prefix}state`

  await t.test('weights, segments and upstreams written at once through 3 instances', async (t) => {
    const alts = [up.alt1!.origin, up.alt2!.origin, up.alt3!.origin]
    const statuses = new Map<string, number>()
    const lost: string[] = []
    for (let round = 0; round < 3; round++) {
      const want: Record<string, { weights?: Record<string, number>; segment?: string; upstream?: string }> = {}
      const writes: Array<Promise<void>> = []
      const count = (what: string, s: number): void => { statuses.set(`${what} ${s}`, (statuses.get(`${what} ${s}`) ?? 0) + 1) }
      routes.forEach((route, i) => {
        const w = { stable: 90 - round * 10 - i, canary: 10 + round * 10 + i }
        const seg = `seg-${round}-${i}`
        const upstream = alts[(round + i) % 3]!
        want[route] = { weights: w, segment: seg, upstream }
        writes.push(insts[i % 3]!.put(`/api/v1/routes/${route}/weights`, { weights: w, reason: `round ${round}` })
          .then((x) => { count('weights', x.status); if (x.status !== 200) delete want[route]!.weights }))
        writes.push(insts[(i + 1) % 3]!.put(`/api/v1/routes/${route}/segments`, { segments: [{ name: seg, match: { header: { 'x-seg': seg } }, version: 'canary' }], reason: `round ${round}` })
          .then((x) => { count('segments', x.status); if (x.status !== 200) delete want[route]!.segment }))
        writes.push(insts[(i + 2) % 3]!.put(`/api/v1/routes/${route}/versions/canary`, { upstream, reason: `round ${round}` })
          .then((x) => { count('versions', x.status); if (x.status !== 200) delete want[route]!.upstream }))
      })
      await Promise.all(writes)
      await sleep(300)
      for (const inst of insts) {
        for (const route of routes) {
          const v = (await inst.get(`/api/v1/routes/${route}`)).json as { versions: Array<{ name: string; weight: number; upstream: string }>; segments: Array<{ name: string }> }
          const w = want[route]!
          const got = { weights: weightsOf(v), segment: v.segments[0]?.name, upstream: v.versions.find((x) => x.name === 'canary')?.upstream }
          const expected = { weights: w.weights ?? got.weights, segment: w.segment ?? got.segment, upstream: w.upstream ?? got.upstream }
          if (JSON.stringify(got) !== JSON.stringify(expected)) lost.push(`round ${round} ${inst.name} ${route}: ${JSON.stringify(got)} ≠ ${JSON.stringify(expected)}`)
        }
      }
      const gens = await Promise.all(insts.map(async (i) => (await i.get('/api/v1/fleet')).json.generation as number))
      t.equal(new Set(gens).size, 1, `round ${round}: every instance at the same generation (${gens.join(', ')})`)
    }
    t.comment(`answers: ${[...statuses].map(([k, n]) => `${k} ×${n}`).join(', ')}`)
    t.same(lost, [], 'every write answered 200 is in force on every instance, after 3 rounds of 9 writes at once')
    t.same([...statuses.keys()].filter((k) => !k.endsWith(' 200') && !k.endsWith(' 409')), [], 'every write answered 200 or 409')
    const audits = await Promise.all(insts.map(async (i) => ((await i.get('/api/v1/audit?limit=1000')).json.entries as Array<{ id: number }>).map((e) => e.id)))
    t.equal(new Set(audits[0]).size, audits[0]!.length, `audit ids unique (${audits[0]!.length})`)
    t.same(audits[1], audits[0], 'b has a\'s audit')
    t.same(audits[2], audits[0], 'c has a\'s audit')
  })

  await t.test('rollout actions raced through different instances', async (t) => {
    t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 100, canary: 0 }, reason: 'reset' })).status, 200, 'web reset to 100/0')
    await sleep(300)
    const trace = traceRoute(t, redis, fleet.prefix)
    const plan = planOf(60_000, [10, 20, 30])
    const starts = await Promise.all(insts.map(async (i) => await i.post('/api/v1/routes/web/rollout', plan)))
    t.same(starts.map((s) => s.status).sort(), [201, 409, 409], `three starts at once: one 201 (${starts.map((s) => s.status).join(', ')})`)
    await sleep(300)
    const pauses = await Promise.all([b, c].map(async (i) => await i.post('/api/v1/routes/web/rollout/pause')))
    t.same(pauses.map((s) => s.status).sort(), [200, 409], `two pauses at once through followers: one 200, one 409 (${pauses.map((s) => `${s.status} ${s.json.error?.code ?? s.json.state}`).join('; ')})`)
    await sleep(300)
    const mixed = await Promise.all([a.post('/api/v1/routes/web/rollout/resume'), c.post('/api/v1/routes/web/rollout/resume'), b.put('/api/v1/routes/web/weights', { weights: { stable: 50, canary: 50 }, reason: 'operator' })])
    t.comment(`resume via a, resume via c, weights via b: ${mixed.map((s) => `${s.status} ${s.json.error?.code ?? s.json.state ?? ''}`).join('; ')}`)
    t.equal(mixed.filter((m, i) => i < 2 && m.status === 200).length, 1, 'one of two resumes at once went through')
    await sleep(400)
    const promotes = await Promise.all([b, c].map(async (i) => await i.post('/api/v1/routes/web/rollout/promote')))
    t.same(promotes.map((p) => p.status).sort(), [200, 409], `two promotes at once through followers: one 200, one 409 (${promotes.map((p) => `${p.status} ${p.json.error?.code ?? p.json.state}`).join('; ')})`)
    await sleep(400)
    const finals = await Promise.all(insts.map(rolloutOf))
    t.comment(`final: ${brief(finals[0]!)}; trace ${show(trace)}`)
    t.equal(finals[0]!.history.filter((h) => h.event === 'promoted').length, 1, 'one promotion in the history')
    t.same(regressions(trace), [], 'no regression')
    t.equal(new Set(finals.map((f) => JSON.stringify(f))).size, 1, 'every instance shows the same record')
    t.same(await Promise.all(insts.map(async (i) => await weights(i))), insts.map(() => ({ stable: 0, canary: 100 })), 'canary 100 % everywhere')
  })

  await t.test('hostile data in the state hash and the audit list', async (t) => {
    const load = startLoad(t, b.proxyUrl, () => '/', 2)
    const poke = async (): Promise<void> => {
      await r.hincrby(key, 'gen', 1)
      await r.publish(`${fleet.prefix}changes`, String(await r.hget(key, 'gen')))
    }
    t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 60, canary: 40 }, reason: 'before' })).status, 200, 'web at 60/40')
    await sleep(300)

    for (const [what, junk] of [['not JSON', '{not json'], ['JSON of the wrong shape', JSON.stringify({ weights: 'all of them', versions: 3 })]] as const) {
      const mark = a.lines().length
      await r.hset(key, 'route:web', junk)
      await poke()
      await sleep(700)
      t.ok(a.running && b.running && c.running, `route:web ${what}: every instance still runs`)
      const w = await Promise.all(insts.map(async (i) => await weights(i)))
      t.same(w, insts.map(() => ({ stable: 60, canary: 40 })), `route:web ${what}: the weights last applied stay in force (${JSON.stringify(w[0])})`)
      const said = a.lines().slice(mark).filter((l) => (l.level as number) >= 40 && JSON.stringify(l).includes('web'))
      t.ok(said.length > 0, `route:web ${what}: a warns about it (${said.map((l) => l.msg).join(' | ')})`)
      t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 60, canary: 40 }, reason: 'repair' })).status, 200, `route:web ${what}: a write repairs it`)
      // the same weights as the state kept: the route is written all the same, so Redis's copy is readable again
      t.match(JSON.parse(await r.hget(key, 'route:web') ?? 'null'), { weights: { stable: 60, canary: 40 } }, `route:web ${what}: Redis holds a readable state again`)
      await sleep(300)
    }

    const mark = b.lines().length
    await r.hset(key, 'gen', 'abc')
    await r.publish(`${fleet.prefix}changes`, 'abc')
    await sleep(900)
    t.ok(a.running && b.running, 'gen "abc": every instance still runs')
    const gens = await Promise.all([a, b].map(async (i) => await i.metric('canaryd_store_generation')))
    const put = await a.put('/api/v1/routes/web/weights', { weights: { stable: 80, canary: 20 }, reason: 'with a bad gen' })
    t.comment(`gen "abc": canaryd_store_generation ${gens.join(', ')}; GET /api/v1/fleet generation ${JSON.stringify((await b.get('/api/v1/fleet')).json.generation)}; PUT ${put.status} ${String(put.json.error?.code)}: ${String(put.json.error?.message)}`)
    t.not(put.status, 200, 'gen "abc": no write on top of it')
    t.same(await weights(b), { stable: 60, canary: 40 }, 'gen "abc": the weights in force did not move')
    const said = b.lines().slice(mark).filter((l) => (l.level as number) >= 40)
    t.ok(said.length > 0 && said.length < 20, `gen "abc": b warns, once (${said.length} lines)`)
    const snap = JSON.parse(readFileSync(b.stateFile.replace(/\.json$/, '.fleet.json'), 'utf8')) as { generation: unknown }
    t.equal(typeof snap.generation, 'number', `gen "abc": b's local snapshot keeps a numeric generation (${JSON.stringify(snap.generation)}; readSnapshot refuses anything else)`)
    await r.hset(key, 'gen', '500')
    await r.publish(`${fleet.prefix}changes`, '500')
    await sleep(600)
    t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 85, canary: 15 }, reason: 'gen repaired' })).status, 200, 'gen repaired by hand: writes work')
    await sleep(300)
    t.same(await Promise.all(insts.map(async (i) => await weights(i))), insts.map(() => ({ stable: 85, canary: 15 })), '85/15 everywhere')

    await r.rpush(`${fleet.prefix}audit`, 'junk', '{"id":"x"}', '[1,2,3]', 'null', JSON.stringify({ id: 10_000_000, time: 'x', route: 'nope', previous: null, weights: null, source: 'hostile' }))
    await poke()
    await sleep(500)
    t.ok(a.running && b.running && c.running, 'junk audit entries: every instance still runs')
    for (const i of insts) t.equal((await i.get('/api/v1/audit?limit=1000')).status, 200, `GET audit on ${i.name}`)
    t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 90, canary: 10 }, reason: 'after junk' })).status, 200, 'writes still work')
    const entries = (await b.get('/api/v1/audit?limit=3')).json.entries as Array<{ id: number; reason: string | null; source: string }>
    t.comment(`newest audit entries after the junk: ${entries.map((e) => `${e.id}:${e.source}:${e.reason}`).join(', ')}`)
    t.notOk(entries.some((e) => e.source === 'hostile'), 'an entry with null weights is not taken as a change')
    await load.stop()
    t.same(failed(load), [], `${load.total} proxy requests through b, all 200`)
  })

  await t.test('a write through an instance whose routes differ from the fleet\'s', async (t) => {
    const before = await weights(a)
    const dir = mkdtempSync(join(tmpdir(), 'canaryd-fleet-x-'))
    t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
    const cfg = fleet.configFor('x', dir)
    cfg.routes = [routeFile('web', [{ name: 'stable', upstream: up.stable!.origin, weight: 100 }, { name: 'canary', upstream: up.canary!.origin, weight: 0 }, { name: 'beta', upstream: up.beta!.origin, weight: 0 }])]
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg))
    const env: NodeJS.ProcessEnv = {}
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CANARYD_')) env[k] = v
    const child = spawn(process.execPath, [CLI, 'serve', '--config', join(dir, 'config.json')], { env: { ...env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'ignore'] })
    const gone = new Promise((resolve) => child.on('exit', resolve))
    t.teardown(async () => { child.kill('SIGKILL'); await gone })
    let out = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString() })
    const line = await poll(() => out.split('\n').find((l) => l.includes('"canaryd started"')), 15_000, 50)
    t.ok(line, 'x started (web has a third version in its config)')
    if (typeof line !== 'string') return
    const adminUrl = `http://${String((JSON.parse(line) as { admin: string }).admin)}`
    t.equal((await adminCall(adminUrl, 'GET', '/api/v1/fleet')).json.configMismatch, true, 'x reports the mismatch')
    const put = await adminCall(adminUrl, 'PUT', '/api/v1/routes/web/weights', { weights: { stable: 50, canary: 30, beta: 20 }, reason: 'through x' })
    t.comment(`PUT through x: ${put.status} ${String(put.json.error?.code ?? '')}`)
    await sleep(500)
    t.same(await Promise.all(insts.map(async (i) => await weights(i))), insts.map(() => before), 'a write through x does not reset the fleet\'s instances to their config weights')
  })

  await t.test('an instance that joins mid-rollout: its traffic is counted, once', async (t) => {
    t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 100, canary: 0 }, reason: 'reset' })).status, 200, 'web reset to 100/0')
    await sleep(300)
    t.equal((await a.post('/api/v1/routes/web/rollout', planOf(700, [50]))).status, 201, 'rollout started on a')
    const d = await fleet.add('d')
    await sleep(700)
    const count = async (): Promise<{ stable: number; canary: number }> => ({
      stable: await d.metric('canaryd_requests_total', { route: 'web', version: 'stable' }) ?? 0,
      canary: await d.metric('canaryd_requests_total', { route: 'web', version: 'canary' }) ?? 0
    })
    const before = await count()
    const from = Date.now()
    const load = startLoad(t, d.proxyUrl, () => '/', 4)
    await sleep(2200)
    await load.stop()
    const stoppedAt = Date.now()
    t.same(failed(load), [], `${load.total} requests through d (only), all 200`)
    const rec = await poll(async () => {
      const x = await rolloutOf(b)
      return x.checks.some((k) => Date.parse(k.at) > stoppedAt + 1200) ? x : undefined
    }, 5000, 100)
    t.ok(rec, 'a check after the traffic stopped')
    if (rec === undefined || rec === false) return
    const after = await count()
    const checks = rec.checks.filter((k) => Date.parse(k.at) > from)
    const tail = checks.at(-1)
    const counted = { stable: 0, canary: 0 }
    for (const k of checks) {
      if (k.verdict === 'inconclusive' && k !== tail) continue
      counted.stable += k.stable.requests
      counted.canary += k.canary.requests
    }
    const delta = { stable: after.stable - before.stable, canary: after.canary - before.canary }
    t.comment(`checks: ${checks.map((k) => `${k.verdict} instances=${String(k.instances)} ${k.canary.requests}/${k.stable.requests}`).join('; ')}`)
    t.ok(delta.canary > 0, `d sent ${delta.canary} requests to the canary`)
    t.same(counted, delta, 'the checks counted exactly the requests d\'s /metrics counted (none twice, none lost)')
    t.ok(checks.filter((k) => k.verdict !== 'inconclusive').every((k) => k.instances === 1), 'each conclusive check counted one instance (d)')
  })

  await t.test('every subscriber connection killed (CLIENT KILL TYPE pubsub)', async (t) => {
    const killed = await r.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
    const t0 = Date.now()
    const put = await b.put('/api/v1/routes/api/weights', { weights: { stable: 55, canary: 45 }, reason: 'right after the pubsub kill' })
    t.comment(`${String(killed)} subscriber connections killed; PUT through b at once: ${put.status} ${String(put.json.error?.message ?? '')}`)
    let ok = put.status === 200
    for (let i = 0; i < 20 && !ok; i++) {
      await sleep(100)
      ok = (await b.put('/api/v1/routes/api/weights', { weights: { stable: 55, canary: 45 }, reason: 'retried after the pubsub kill' })).status === 200
    }
    t.ok(ok, `a write goes through ${Date.now() - t0} ms after the kill`)
    const conv = await poll(async () => (await Promise.all(fleet.instances.map(async (i) => JSON.stringify(await weights(i, 'api'))))).every((w) => w === JSON.stringify({ stable: 55, canary: 45 })), 3000, 25)
    t.ok(conv, `every instance applied it ${Date.now() - t0} ms after the kill`)
    // forwarded actions need the rpc channels back: promote the rollout a leads, through c
    const promoted = await c.post('/api/v1/routes/web/rollout/promote')
    t.equal(promoted.status, 200, `a promote forwarded through c after the kill: ${String(promoted.json.error?.message ?? promoted.json.state)}`)
  })

  await t.test('a second process with the same instance id (CANARYD_INSTANCE_ID set once for every replica)', async (t) => {
    t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 100, canary: 0 }, reason: 'reset' })).status, 200, 'web reset to 100/0')
    await sleep(300)
    t.equal((await a.post('/api/v1/routes/web/rollout', planOf(60_000, [10, 20]))).status, 201, 'rollout started on a')
    const dir = mkdtempSync(join(tmpdir(), 'canaryd-fleet-twin-'))
    t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
    const cfg = fleet.configFor('a', dir) // the same store.instanceId as a: inst-a
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg))
    const env: NodeJS.ProcessEnv = {}
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CANARYD_')) env[k] = v
    const child = spawn(process.execPath, [CLI, 'serve', '--config', join(dir, 'config.json')], { env: { ...env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] })
    const gone = new Promise<number | null>((resolve) => child.on('exit', resolve))
    t.teardown(async () => { child.kill('SIGKILL'); await gone })
    let out = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString() })
    child.stderr.on('data', (d: Buffer) => { out += d.toString() })
    const line = await poll(() => out.split('\n').find((l) => l.includes('"canaryd started"')) ?? (child.exitCode !== null ? 'exited' : undefined), 15_000, 50)
    t.comment(`the twin: ${line === 'exited' ? `refused: ${out.split('\n').filter((l) => /instance|id/i.test(l)).slice(0, 2).join(' ')}` : 'started'}`)
    const warned = /same (instance )?id|already|another (process|instance)/i.test(out)
    t.ok(line === 'exited' || warned, 'a second live process with the same instance id is refused or at least warned about')
    if (line === 'exited') return
    await sleep(500)
    const answers: string[] = []
    let disagree = 0
    for (let i = 0; i < 4; i++) {
      const op = i % 2 === 0 ? 'pause' : 'resume'
      const res = await c.post(`/api/v1/routes/web/rollout/${op}`)
      await sleep(150)
      const state = (await rolloutOf(b)).state
      answers.push(`${op}: ${res.status} → ${state}`)
      const applied = op === 'pause' ? state === 'paused' : state === 'progressing'
      if ((res.status === 200) !== applied) disagree++
    }
    t.comment(`forwarded through c with two inst-a listening: ${answers.join('; ')}`)
    t.equal(disagree, 0, 'each forwarded action\'s answer says what happened')
  })
})

t.test('restarts while Redis is down, and an empty Redis reseeded by a laggard', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  const fleet: Fleet = await startFleet(t, redis, { routes: [web(up)], store: { heartbeatMs: 250, syncMs: 250, connectTimeoutMs: 800 } })
  const [a, b, c] = fleet.instances as [FleetInstance, FleetInstance, FleetInstance]
  contOnTeardown(t, () => fleet.instances.map((i) => i.pid))
  const snapOf = (i: FleetInstance): string => i.stateFile.replace(/\.json$/, '.fleet.json')
  t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 90, canary: 10 }, reason: 'old' })).status, 200, '90/10')
  await sleep(400)
  await b.kill('SIGKILL') // b's snapshot: 90/10
  t.equal((await a.put('/api/v1/routes/web/weights', { weights: { stable: 50, canary: 50 }, reason: 'new' })).status, 200, '50/50 while b is gone')
  await sleep(400)
  await c.kill('SIGKILL')
  writeFileSync(snapOf(c), '{"version": 1, "generation": "garbage", "routes": ')
  await redis.stop()

  await t.test('a corrupt snapshot: refused, naming store.url', async (t) => {
    const f = await fleet.startExpectingFailure('c', 5000, c.dir)
    t.notOk(f.started, 'not started')
    t.not(f.code, 0, `exit code ${String(f.code)}`)
    t.match(f.output, /store\.url/, 'names store.url')
    t.comment(f.output.split('\n').find((l) => /store\.url/.test(l)) ?? '')
    t.match(f.output, /corrupt|unreadable|unusable|cannot be read|not valid|invalid/i, 'says the snapshot is there but unusable (not "there is no local snapshot")')
  })

  let b2 = b
  await t.test('an older snapshot, then Redis comes back with the newer state', async (t) => {
    b2 = await fleet.restart(b)
    t.same(await weights(b2), { stable: 90, canary: 10 }, 'b starts from its older snapshot: 90/10')
    await redis.start()
    t.ok(await poll(async () => JSON.stringify(await weights(b2)) === JSON.stringify({ stable: 50, canary: 50 }), 5000, 50), 'b moves to the fleet\'s 50/50')
    t.same(await weights(a), { stable: 50, canary: 50 }, 'a still at 50/50 (b did not push its older state)')
    const gens = await poll(async () => {
      const g = await Promise.all([a, b2].map(async (i) => (await i.get('/api/v1/fleet')).json.generation as number))
      return g[0] === g[1] ? g : undefined
    }, 3000, 50)
    t.ok(gens, `a and b at one generation (${JSON.stringify(gens)})`)
  })

  await t.test('Redis restarted empty while an instance lags behind: the laggard reseeds it first', async (t) => {
    t.ok(await poll(async () => (await Promise.all([a, b2].map(async (i) => (await i.get('/api/v1/fleet')).json.storeUp === true))).every(Boolean), 5000, 50), 'a and b see the store up')
    // b misses the next change (stopped: a long GC pause, a partition)
    process.kill(b2.pid, 'SIGSTOP')
    const put = await a.put('/api/v1/routes/web/weights', { weights: { stable: 70, canary: 30 }, reason: 'answered 200 before the outage' })
    t.equal(put.status, 200, `70/30 through a (${String(put.json.error?.message ?? 'ok')})`)
    await sleep(300)
    await redis.kill()
    wipe(redis)
    // b is the first to see the empty Redis
    process.kill(a.pid, 'SIGSTOP')
    await redis.start()
    process.kill(b2.pid, 'SIGCONT')
    await sleep(1200)
    process.kill(a.pid, 'SIGCONT')
    await sleep(1200)
    const w = await Promise.all([a, b2].map(async (i) => await weights(i)))
    t.comment(`after: a ${JSON.stringify(w[0])}, b ${JSON.stringify(w[1])}; Redis gen ${String(await redis.client().hget(`${fleet.prefix}state`, 'gen'))}; a said: ${a.lines().filter((l) => typeof l.msg === 'string' && l.msg.includes('older')).map((l) => l.msg).join(' | ')}`)
    t.same(w, [{ stable: 70, canary: 30 }, { stable: 70, canary: 30 }], 'the last write answered 200 survives the reseed')
  })
})
