import t from 'tap'
import { poll, startFleet } from '../helpers/fleet.js'
import { startLoad } from '../helpers/load.js'
import { redisTestOptions, startRedis } from '../helpers/redis.js'
import { routeFile } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 16: no Redis call on the request path. Counted where it cannot be
// mistaken: Redis's own count of the commands it processed, while an
// instance serves thousands of requests, with and without a rollout under
// way. The store's background work (a generation check per syncMs, a
// heartbeat per heartbeatMs, lease renewals and one window message per
// version per 500 ms during a rollout) is a few commands a second whatever
// the traffic; a per-request call would be thousands.

/** Redis's total_commands_processed. */
async function commands (client: ReturnType<Awaited<ReturnType<typeof startRedis>>['client']>): Promise<number> {
  const info = await client.info('stats')
  const m = /total_commands_processed:(\d+)/.exec(info)
  if (m === null) throw new Error('no total_commands_processed in INFO stats')
  return Number(m[1])
}

t.test('thousands of proxied requests cost Redis a few background commands, never one per request', redisTestOptions(), async (t) => {
  const up = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  const fleet = await startFleet(t, redis, {
    n: 1,
    routes: [routeFile('web', [{ name: 'stable', upstream: up.stable!.origin, weight: 90 }, { name: 'canary', upstream: up.canary!.origin, weight: 10 }])]
  })
  const a = fleet.instances[0]!
  const client = redis.client()

  const measure = async (label: string): Promise<{ requests: number; commands: number; ms: number }> => {
    const load = startLoad(t, a.proxyUrl, () => '/', 16)
    await load.between(200, 10_000)
    const c0 = await commands(client)
    const n0 = load.total
    const t0 = Date.now()
    await load.between(3000, 30_000)
    const c1 = await commands(client)
    const n1 = load.total
    const ms = Date.now() - t0
    await load.stop()
    t.same([...load.statuses.keys()], ['200'], `${label}: every request answered 200`)
    const r = { requests: n1 - n0, commands: c1 - c0 - 1, ms }
    t.comment(`${label}: ${r.requests} requests in ${r.ms} ms, Redis processed ${r.commands} commands`)
    return r
  }

  const quiet = await measure('no rollout')
  t.ok(quiet.requests >= 3000, 'at least 3,000 requests measured')
  // a generation check a second and a heartbeat (3 commands) every 2 s: a handful a second
  t.ok(quiet.commands <= 10 + 10 * quiet.ms / 1000, `Redis commands follow time, not traffic (${quiet.commands} for ${quiet.requests} requests in ${quiet.ms} ms)`)

  const st = await a.post('/api/v1/routes/web/rollout', { canary: 'canary', steps: [10, 20], intervalMs: 60_000, analysis: { minRequests: 100000 } })
  t.equal(st.status, 201, 'a rollout starts (its checks never come in this test)')
  await poll(async () => (await a.get('/api/v1/fleet')).json.instances?.[0]?.leader?.includes('web') === true, 5000)
  const busy = await measure('rollout under way')
  // plus per 500 ms one window message per version and, every third of the lease TTL, a renewal
  t.ok(busy.commands <= 10 + 20 * busy.ms / 1000, `during a rollout too (${busy.commands} for ${busy.requests} requests in ${busy.ms} ms)`)
  t.ok(busy.commands < busy.requests / 20, 'far fewer commands than requests')
})
