import t from 'tap'
import { poll, sleep, startFleet, weightsOf, type Fleet, type FleetInstance } from '../helpers/fleet.js'
import { startLoad, type Load } from '../helpers/load.js'
import { redisTestOptions, startRedis } from '../helpers/redis.js'
import { routeFile } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 16: a rollout across a fleet of 3 `canaryd serve` processes on one
// real redis-server. One instance leads it (a lease); its checks merge every
// instance's traffic; when the leader is SIGKILLed another takes over at the
// same step and finishes it.

/** The lease TTL of these fleets: a takeover must happen within 2 × it. */
const LEASE_TTL_MS = 2000

interface Side { requests: number; failures: number }
interface Check { at: string; step: number; verdict: string; instances?: number; canary: Side; stable: Side }
interface History { at: string; event: string; step: number; state: string }
interface Rollout { state: string; step: number; weight: number; checks: Check[]; history: History[] }

async function rolloutOf (inst: FleetInstance): Promise<Rollout> {
  const r = await inst.get('/api/v1/routes/web/rollout')
  if (r.status !== 200) throw new Error(`GET rollout on ${inst.name}: ${r.status} ${JSON.stringify(r.json)}`)
  return r.json as unknown as Rollout
}

/** canaryd_requests_total of route web on `inst`, by version (every status code). */
async function requestsByVersion (inst: FleetInstance): Promise<{ stable: number; canary: number }> {
  return {
    stable: await inst.metric('canaryd_requests_total', { route: 'web', version: 'stable' }) ?? 0,
    canary: await inst.metric('canaryd_requests_total', { route: 'web', version: 'canary' }) ?? 0
  }
}

/** Which instance ids GET /api/v1/fleet (asked on `inst`) shows leading route web. */
async function leadersOf (inst: FleetInstance): Promise<string[]> {
  const list = ((await inst.get('/api/v1/fleet')).json.instances ?? []) as Array<{ id: string; leader?: string[] }>
  return list.filter((x) => x.leader?.includes('web') === true).map((x) => x.id)
}

/** Traffic through every instance in `insts`: 4 keep-alive clients each, distinct user ids per instance. */
function loads (t: Parameters<typeof startLoad>[0], insts: FleetInstance[]): Map<FleetInstance, Load> {
  return new Map(insts.map((i) => [i, startLoad(t, i.proxyUrl, () => '/', 4)]))
}

function fails (l: Load): string[] {
  return [...l.statuses].filter(([k]) => k !== '200').map(([k, n]) => `${k} ×${n}`)
}

t.test('rollouts across a fleet of 3', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  const fleet: Fleet = await startFleet(t, redis, {
    routes: [routeFile('web', [{ name: 'stable', upstream: up.stable!.origin, weight: 100 }, { name: 'canary', upstream: up.canary!.origin, weight: 0 }])],
    // heartbeats every 250 ms: GET /api/v1/fleet shows a new leader soon after it takes over
    store: { leaseTtlMs: LEASE_TTL_MS, heartbeatMs: 250 },
    // a canary failing a few requests must not be ejected and skew the counts
    extra: { health: { consecutiveFailures: 0 } }
  })
  const [a, b, c] = fleet.instances as [FleetInstance, FleetInstance, FleetInstance]

  await t.test('a rollout is promoted with checks counting every instance\'s traffic', async (t) => {
    const before = await Promise.all(fleet.instances.map(requestsByVersion))
    const plan = {
      canary: 'canary',
      steps: [10, 50],
      intervalMs: 800,
      analysis: { minRequests: 20, maxFailedChecks: 2, successRate: { min: 95 }, baseline: { judge: 'none' } },
      // manual: the rollout waits at its last step and keeps checking, so the traffic can be
      // stopped before the check that closes the books (an auto promotion ends the windows
      // while requests still flow, and those after the last check are in /metrics only)
      promotion: 'manual'
    }
    const started = await a.post('/api/v1/routes/web/rollout', plan)
    t.equal(started.status, 201, `rollout started through a (${JSON.stringify(started.json.error ?? '')})`)
    // the windows of b and c count only once they know the rollout: no traffic until every instance shows it
    const known = await poll(async () => (await Promise.all(fleet.instances.map(async (i) => (await i.get('/api/v1/routes/web/rollout')).json.state))).every((s) => s === 'progressing'), 3000, 20)
    t.ok(known, 'every instance shows the rollout progressing')
    await sleep(600)

    const traffic = loads(t, fleet.instances)
    const waiting = await poll(async () => (await rolloutOf(b)).state === 'awaiting-promotion', 20_000, 100)
    t.ok(waiting, 'both steps passed with traffic through all 3 instances (awaiting-promotion)')
    for (const l of traffic.values()) await l.stop()
    const stoppedAt = Date.now()
    for (const [i, l] of traffic) t.same(fails(l), [], `instance ${i.name}: ${l.total} requests, all 200`)

    // every instance publishes its counts every 500 ms: a check taken > 1 s after the last
    // request finished has every instance's last requests in its window
    const last = await poll(async () => {
      const r = await rolloutOf(c)
      return r.checks.some((k) => Date.parse(k.at) > stoppedAt + 1100) ? r : undefined
    }, 10_000, 100)
    t.ok(last, 'a check after the traffic stopped')
    const after = await Promise.all(fleet.instances.map(requestsByVersion))
    const record = last as Rollout
    t.ok(record.checks.length < 20, `all ${record.checks.length} checks kept (the record keeps 20)`)
    // `instances` is how many instances' traffic a check counted: an inconclusive check right
    // after the traffic began may count fewer (the others had not published yet; it decides
    // nothing and its counts carry into the next check), and one after the traffic stopped
    // counts none. Every check that decided something must have counted all 3.
    const decided = record.checks.filter((k) => k.verdict !== 'inconclusive')
    t.ok(decided.length >= 2, `${decided.length} conclusive checks`)
    t.same(decided.filter((k) => k.instances !== 3).map((k) => ({ at: k.at, verdict: k.verdict, instances: k.instances })), [], 'every conclusive check counted the traffic of all 3 instances')
    t.comment(`checks: ${record.checks.map((k) => `${k.verdict}@${k.step} instances=${k.instances} canary=${k.canary.requests} stable=${k.stable.requests}`).join('; ')}`)

    // A window holds everything since the last conclusive check: a conclusive check's figures
    // are its own, an inconclusive one's are carried into the next check. So the requests the
    // rollout counted are the conclusive checks plus a trailing inconclusive one.
    // Tolerance: none. No request was in flight at a check's cut-off that /metrics and the
    // window would see differently (both are counted when the response finishes, by the same
    // listener), no client left early (no 499s, which windows skip), traffic started only
    // after every instance knew the rollout and stopped > 2 publish periods before the last
    // check; the windows are contiguous (a window's end is the next one's start), so every
    // request between the first and last check is in exactly one window.
    const counted = { stable: 0, canary: 0 }
    const tail = record.checks.at(-1)!
    for (const k of record.checks) {
      if (k.verdict === 'inconclusive' && k !== tail) continue
      counted.stable += k.stable.requests
      counted.canary += k.canary.requests
    }
    const delta = { stable: 0, canary: 0 }
    for (let i = 0; i < fleet.instances.length; i++) {
      delta.stable += after[i]!.stable - before[i]!.stable
      delta.canary += after[i]!.canary - before[i]!.canary
    }
    t.comment(`checks counted ${JSON.stringify(counted)}; the 3 instances' /metrics deltas ${JSON.stringify(delta)} (per instance: ${after.map((x, i) => `${fleet.instances[i]!.name} +${x.stable - before[i]!.stable}/+${x.canary - before[i]!.canary}`).join(', ')})`)
    t.ok(fleet.instances.every((_, i) => after[i]!.canary > before[i]!.canary), 'every instance sent traffic to the canary')
    t.same(counted, delta, 'the checks counted exactly the requests the 3 instances\' /metrics counted')

    const promoted = await c.post('/api/v1/routes/web/rollout/promote')
    t.equal(promoted.status, 200, `promote through c (forwarded to the leader): ${JSON.stringify(promoted.json.error ?? promoted.json.state)}`)
    const done = await poll(async () => (await Promise.all(fleet.instances.map(rolloutOf))).every((r) => r.state === 'promoted'), 3000, 20)
    t.ok(done, 'every instance shows it promoted')
    for (const i of fleet.instances) t.same(weightsOf((await i.get('/api/v1/routes/web')).json), { stable: 0, canary: 100 }, `instance ${i.name}: canary 100 %`)
  })

  await t.test('the leader is SIGKILLed mid-rollout: another takes over within 2 × leaseTtlMs and finishes it', async (t) => {
    const reset = await a.put('/api/v1/routes/web/weights', { weights: { stable: 100, canary: 0 }, reason: 'next rollout' })
    t.equal(reset.status, 200, 'canary back to 0 %')
    const plan = {
      canary: 'canary',
      steps: [10, 20, 30, 40, 50, 60],
      intervalMs: 500,
      analysis: { minRequests: 10, maxFailedChecks: 2, successRate: { min: 95 }, baseline: { judge: 'none' } },
      promotion: 'auto'
    }
    const traffic = loads(t, fleet.instances)
    t.teardown(async () => { for (const l of traffic.values()) await l.stop() })
    const started = await b.post('/api/v1/routes/web/rollout', plan)
    t.equal(started.status, 201, `rollout started through b (${JSON.stringify(started.json.error ?? '')})`)

    const mid = await poll(async () => (await rolloutOf(a)).step >= 3, 10_000, 50)
    t.ok(mid, 'the rollout reached step 3')
    const leaders = await leadersOf(a)
    t.equal(leaders.length, 1, `one leader of web (${leaders.join(', ')})`)
    const lease = await redis.client().get(`${fleet.prefix}lease:web`)
    t.match(lease, new RegExp(` ${leaders[0]}$`), `the lease in Redis names it (${lease})`)
    const leader = fleet.byId(leaders[0] ?? '')
    if (leader === undefined) {
      t.fail('no leader to kill')
      return
    }
    const survivors = fleet.instances.filter((i) => i !== leader)

    await leader.kill('SIGKILL')
    const killedAt = Date.now()
    await traffic.get(leader)!.stop()
    const atKill = await rolloutOf(survivors[0]!)
    t.comment(`killed ${leader.id} at step ${atKill.step} (${atKill.state})`)

    const takeover = await poll(async () => {
      const ids = await leadersOf(survivors[0]!)
      return ids.some((id) => id !== leader.id) ? ids : undefined
    }, 4 * LEASE_TTL_MS, 25)
    const tookMs = Date.now() - killedAt
    t.ok(takeover, `a survivor leads web (${JSON.stringify(takeover)})`)
    t.comment(`takeover seen in GET /api/v1/fleet ${tookMs} ms after the SIGKILL (lease TTL ${LEASE_TTL_MS} ms); lease now ${await redis.client().get(`${fleet.prefix}lease:web`)}`)
    t.ok(tookMs <= 2 * LEASE_TTL_MS, `took over within 2 × leaseTtlMs (${tookMs} ms <= ${2 * LEASE_TTL_MS})`)

    const end = await poll(async () => {
      const r = await rolloutOf(survivors[1]!)
      return r.state !== 'progressing' ? r : undefined
    }, 20_000, 100)
    t.equal((end as Rollout | undefined)?.state, 'promoted', 'the new leader finished the rollout')
    // a finished rollout's lease is given up as soon as its last write is done (not a lease tick later)
    const rc = redis.client()
    const endedAt = Date.now()
    const released = await poll(async () => await rc.get(`${fleet.prefix}lease:web`) === null, 2000, 10)
    const releaseMs = Date.now() - endedAt
    t.ok(released, 'the lease of the finished rollout is given up')
    t.ok(releaseMs < 400, `within 400 ms of the promotion being seen (${releaseMs} ms; a lease tick is every ${Math.round(LEASE_TTL_MS / 3)} ms)`)
    for (const i of survivors) {
      const l = traffic.get(i)!
      await l.stop()
      t.same(fails(l), [], `instance ${i.name}: ${l.total} requests through the kill and takeover, all 200`)
    }
    const r = await rolloutOf(survivors[0]!)
    const steps = r.history.filter((h) => h.event === 'started' || h.event === 'step').map((h) => h.step)
    t.same(steps, [1, 2, 3, 4, 5, 6], `history: started at 1, then every step once, none repeated or skipped (${steps.join(',')})`)
    t.equal(r.history.filter((h) => h.event === 'promoted').length, 1, 'promoted once')
    t.equal(r.history.filter((h) => h.event === 'started').length, 1, 'started once')
    const passes = r.checks.filter((k) => k.verdict === 'pass').map((k) => k.step)
    t.same(passes, [1, 2, 3, 4, 5, 6], `one passing check per step, in order (${passes.join(',')})`)
    const times = r.checks.map((k) => Date.parse(k.at))
    t.ok(times.every((x, i) => i === 0 || x >= times[i - 1]!), 'checks in time order: never two at once')
    t.ok(r.checks.every((k, i) => i === 0 || k.step >= r.checks[i - 1]!.step), 'check steps never go back')
    const firstAfter = r.checks.find((k) => Date.parse(k.at) > killedAt)
    t.ok(firstAfter !== undefined && firstAfter.step === atKill.step, `the first check after the kill is at the step of the kill (${firstAfter?.step} vs ${atKill.step})`)
    t.ok(r.checks.filter((k) => Date.parse(k.at) > killedAt + 2 * LEASE_TTL_MS).every((k) => k.instances === 2), 'checks after the takeover counted the 2 live instances')
    for (const i of survivors) t.same(weightsOf((await i.get('/api/v1/routes/web')).json), { stable: 0, canary: 100 }, `instance ${i.name}: canary 100 %`)
  })
})
