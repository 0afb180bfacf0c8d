import t, { type Test } from 'tap'
import type { SubscribeEjection, SubscribeFinish } from '../../src/rollout/controller.js'
import { FleetStats, type StatsTransport } from '../../src/rollout/fleet.js'
import { SampleWindow, type WindowSnapshot } from '../../src/rollout/window.js'
import { FleetLink } from '../../src/store/fleet.js'
import { RedisStore } from '../../src/store/redis.js'
import { testLogger } from '../helpers/proxy.js'
import { redisTestOptions, startRedis } from '../helpers/redis.js'
import { sleep, until as untilEvery } from '../helpers/until.js'

/** Polls every 5 ms (these windows move fast). */
const until = async (what: string, fn: () => boolean | Promise<boolean>, ms: number, step = 5): Promise<number> => await untilEvery(what, fn, ms, step)

// FleetStats: every instance counts the requests of the versions under
// rollout from its own finish/ejection listeners and publishes its windows;
// the leader's subscribeSnapshots listener receives every instance's
// snapshots, and what it merges equals what was recorded across the fleet.

type Finish = Parameters<SubscribeFinish>[2]

/** An instance's metrics observer, as FleetStats sees it: listeners per (route, version), fed by the test. */
class Feed {
  readonly finish = new Map<string, Set<Finish>>()
  readonly ejection = new Map<string, Set<() => void>>()

  readonly subscribe: SubscribeFinish = (route, version, l) => {
    const k = `${route}/${version}`
    const set = this.finish.get(k) ?? new Set()
    this.finish.set(k, set)
    set.add(l)
    return () => { set.delete(l) }
  }

  readonly subscribeEjection: SubscribeEjection = (route, version, l) => {
    const k = `${route}/${version}`
    const set = this.ejection.get(k) ?? new Set()
    this.ejection.set(k, set)
    set.add(l)
    return () => { set.delete(l) }
  }

  /** Listeners currently attached to (route, version). */
  listeners (route: string, version: string): number {
    const k = `${route}/${version}`
    return (this.finish.get(k)?.size ?? 0) + (this.ejection.get(k)?.size ?? 0)
  }

  request (route: string, version: string, status: number, seconds: number, failed = false, synthetic = false): void {
    for (const l of this.finish.get(`${route}/${version}`) ?? []) l(status, seconds, failed, synthetic)
  }

  eject (route: string, version: string): void {
    for (const l of this.ejection.get(`${route}/${version}`) ?? []) l()
  }
}

/** An in-process pub/sub bus: every message goes to every listener (the sender's included), asynchronously, like Redis. */
class Bus {
  readonly sent: string[] = []
  readonly #listeners: Array<(m: string) => void> = []

  transport (self: string): StatsTransport {
    return {
      self,
      publish: async (m) => {
        this.sent.push(m)
        setImmediate(() => { for (const l of this.#listeners) l(m) })
        return true
      },
      listen: async (fn) => { this.#listeners.push(fn) }
    }
  }
}

interface Received {
  snapshots: Array<{ s: WindowSnapshot; instance: string }>
  window: SampleWindow
}

/** The leader's side: merges what subscribeSnapshots delivers, as the controller does. */
function lead (t: Test, stats: FleetStats, route: string, version: string): Received {
  const r: Received = { snapshots: [], window: new SampleWindow() }
  const off = stats.subscribeSnapshots(route, version, (s, instance) => {
    r.snapshots.push({ s, instance })
    r.window.merge(s, instance)
  })
  t.teardown(off)
  return r
}

function fleetStats (t: Test, transport: StatsTransport, feed: Feed, periodMs = 60_000): FleetStats {
  const s = new FleetStats({ transport, subscribe: feed.subscribe, subscribeEjection: feed.subscribeEjection, periodMs })
  t.teardown(() => { s.close() })
  return s
}

/** Two instances on one bus, `a` leading route web: both windows subscribed. */
async function twoInstances (t: Test): Promise<{ bus: Bus; fa: Feed; fb: Feed; a: FleetStats; b: FleetStats; canary: Received; stable: Received }> {
  const bus = new Bus()
  const fa = new Feed()
  const fb = new Feed()
  const a = fleetStats(t, bus.transport('a'), fa)
  const b = fleetStats(t, bus.transport('b'), fb)
  const canary = lead(t, a, 'web', 'canary')
  const stable = lead(t, a, 'web', 'stable')
  await sleep(5)
  return { bus, fa, fb, a, b, canary, stable }
}

const PAIRS = [['web', 'canary'], ['web', 'stable']] as const

/** Records on two instances; returns what each recorded (requests, failures, success latencies in ms). */
function traffic (fa: Feed, fb: Feed): { canary: { requests: number; failures: number; latencies: number[] }; stable: { requests: number; failures: number } } {
  const latencies: number[] = []
  let requests = 0
  let failures = 0
  // instance a: 30 canary requests, 5 of them 5xx, 2 upstream failures; 1 client abort (499, not counted)
  for (let i = 0; i < 30; i++) {
    const ms = 10 + i
    if (i < 5) fa.request('web', 'canary', 503, ms / 1000)
    else if (i < 7) fa.request('web', 'canary', 502, ms / 1000, true)
    else {
      fa.request('web', 'canary', 200, ms / 1000)
      latencies.push(ms)
    }
    requests++
    if (i < 7) failures++
  }
  fa.request('web', 'canary', 499, 9)
  // instance b: 70 canary requests, 10 failures
  for (let i = 0; i < 70; i++) {
    const ms = 100 + i + 0.25
    if (i % 7 === 0) {
      fb.request('web', 'canary', 500, ms / 1000)
      failures++
    } else {
      fb.request('web', 'canary', 200, ms / 1000)
      latencies.push(ms)
    }
    requests++
  }
  // stable: 40 on a, 60 on b, no failures
  for (let i = 0; i < 40; i++) fa.request('web', 'stable', 200, 0.005)
  for (let i = 0; i < 60; i++) fb.request('web', 'stable', 200, 0.006)
  return { canary: { requests, failures, latencies }, stable: { requests: 100, failures: 0 } }
}

t.test('in-process transport: the leader receives every instance\'s windows, merged counts equal what was recorded', async (t) => {
  const { bus, fa, fb, a, b, canary, stable } = await twoInstances(t)

  t.equal(fa.listeners('web', 'canary'), 0, 'nothing counted before follow')
  a.follow(PAIRS)
  b.follow(PAIRS)
  t.equal(fa.listeners('web', 'canary'), 2, 'follow subscribes finish and ejection listeners')
  t.equal(fb.listeners('web', 'stable'), 2)
  a.follow(PAIRS)
  t.equal(fa.listeners('web', 'canary'), 2, 'following the same pairs again subscribes nothing twice')

  const want = traffic(fa, fb)
  a.flush()
  b.flush()
  await until('both canary windows received', () => canary.window.requests === want.canary.requests, 2000)
  await until('both stable windows received', () => stable.window.requests === want.stable.requests, 2000)
  const got = canary.window.peek()
  t.equal(got.requests, 100, 'requests: 30 + 70 (the 499 is not counted)')
  t.equal(got.failures, want.canary.failures, 'failures: 7 + 10')
  t.same(got.latenciesMs.slice().sort((x, y) => x - y), want.canary.latencies.slice().sort((x, y) => x - y), 'every success latency, in ms, from both instances')
  t.same([...canary.window.sources].sort(), ['a', 'b'], 'two instances counted')
  t.same(canary.snapshots.map((x) => x.instance).sort(), ['a', 'b'], 'one snapshot from each')
  t.equal(stable.window.peek().failures, 0)
  t.same([...stable.window.sources].sort(), ['a', 'b'])

  // published windows are emptied: a second flush with no new traffic sends nothing
  const sent = bus.sent.length
  a.flush()
  b.flush()
  await sleep(10)
  t.equal(bus.sent.length, sent, 'nothing new, nothing published')
  t.equal(canary.window.requests, 100, 'and nothing counted twice')

  // ejections travel too
  fb.eject('web', 'canary')
  b.flush()
  await until('ejection received', () => canary.window.peek().ejections === 1, 2000)
  t.equal(canary.window.peek().stillEjected, true, 'b says the canary is still out')
  fb.request('web', 'canary', 200, 0.05)
  b.flush()
  await until('the good answer received', () => canary.window.requests === 101, 2000)
  t.equal(canary.window.peek().stillEjected, false, 'a good answer since: back')
})

t.test('pairs no longer followed are flushed one last time and unsubscribed', async (t) => {
  const { bus, fa, fb, a, b, canary, stable } = await twoInstances(t)
  a.follow(PAIRS)
  b.follow(PAIRS)
  for (let i = 0; i < 5; i++) fb.request('web', 'canary', 200, 0.02)
  for (let i = 0; i < 3; i++) fb.request('web', 'stable', 200, 0.02)

  // the rollout ended: b follows nothing now (no flush called)
  b.follow([])
  await until('the last canary window received', () => canary.window.requests === 5, 2000)
  await until('the last stable window received', () => stable.window.requests === 3, 2000)
  t.equal(fb.listeners('web', 'canary'), 0, 'finish and ejection listeners removed')
  t.equal(fb.listeners('web', 'stable'), 0)
  const sent = bus.sent.length
  fb.request('web', 'canary', 200, 0.02)
  b.flush()
  await sleep(10)
  t.equal(bus.sent.length, sent, 'nothing published for a pair no longer followed')
  t.equal(canary.window.requests, 5)

  // only one pair dropped: the other keeps counting
  a.follow([['web', 'stable']])
  t.equal(fa.listeners('web', 'canary'), 0)
  t.equal(fa.listeners('web', 'stable'), 2)
  fa.request('web', 'stable', 200, 0.01)
  a.flush()
  await until('a\'s stable window received', () => stable.window.requests === 4, 2000)

  // followed again: a fresh window
  b.follow([['web', 'canary']])
  fb.request('web', 'canary', 200, 0.02)
  b.flush()
  await until('new window', () => canary.window.requests === 6, 2000)
  t.equal(canary.snapshots.at(-1)!.s.requests, 1, 'the new window counts from the follow, not before')

  // close publishes what is counted and stops
  fb.request('web', 'canary', 500, 0.02)
  b.close()
  await until('close flushed', () => canary.window.requests === 7, 2000)
  t.equal(canary.window.peek().failures, 1)
  t.equal(fb.listeners('web', 'canary'), 0, 'close unsubscribes')
})

t.test('the leader\'s listener, once unsubscribed, hears nothing; other routes never reach it', async (t) => {
  const bus = new Bus()
  const fa = new Feed()
  const a = fleetStats(t, bus.transport('a'), fa)
  const heard: string[] = []
  const off = a.subscribeSnapshots('web', 'canary', (_s, i) => heard.push(i))
  await sleep(5)
  a.follow([['web', 'canary'], ['api', 'canary']])
  fa.request('api', 'canary', 200, 0.01)
  a.flush()
  await sleep(10)
  t.same(heard, [], 'another route\'s window is not delivered to web/canary')
  fa.request('web', 'canary', 200, 0.01)
  a.flush()
  await until('heard', () => heard.length === 1, 2000)
  off()
  fa.request('web', 'canary', 200, 0.01)
  a.flush()
  await sleep(10)
  t.same(heard, ['a'], 'nothing after unsubscribing')
})

t.test('a load test\'s synthetic requests are counted only where the plan includes them, and the log sums travel', async (t) => {
  for (const include of [false, true]) {
    const bus = new Bus()
    const fa = new Feed()
    const a = fleetStats(t, bus.transport('a'), fa)
    const canary = lead(t, a, 'web', 'canary')
    await sleep(5)
    a.follow([['web', 'canary', include]])
    for (let i = 0; i < 4; i++) fa.request('web', 'canary', 200, 0.02, false, true)
    for (let i = 0; i < 6; i++) fa.request('web', 'canary', 200, 0.01)
    a.flush()
    const want = include ? 10 : 6
    await until(`${want} merged`, () => canary.window.requests === want, 1000)
    t.equal(canary.window.requests, want, `includeInAnalysis ${include}`)
    const snap = canary.window.peek()
    t.equal(snap.logCount, want, 'the exact log-latency count arrived with the snapshot')
    t.ok(Math.abs((snap.logSum ?? 0) - (6 * Math.log(10) + (include ? 4 * Math.log(20) : 0))) < 1e-6, 'and its sum')
  }
})

t.test('the period: windows are published every periodMs without a flush', async (t) => {
  const bus = new Bus()
  const fa = new Feed()
  const a = fleetStats(t, bus.transport('a'), fa, 50)
  const canary = lead(t, a, 'web', 'canary')
  await sleep(5)
  a.follow([['web', 'canary']])
  for (let i = 0; i < 10; i++) fa.request('web', 'canary', 200, 0.01)
  const took = await until('published by the timer', () => canary.window.requests === 10, 1000)
  t.ok(took < 500, `within a few periods (${took.toFixed(0)} ms)`)
})

t.test('over a real Redis channel (FleetLink.stats): two instances, the leader merges both', redisTestOptions(), async (t) => {
  const redis = await startRedis(t)
  const stores = ['a', 'b'].map((id) => new RedisStore({ url: redis.url, prefix: 'fs:', instanceId: id, logger: testLogger() }))
  t.teardown(async () => { for (const s of stores) await s.close() })
  for (const s of stores) t.equal(await s.connect(3000), true)
  const links = stores.map((redis) => new FleetLink({ redis, logger: testLogger(), leaseTtlMs: 1000, heartbeatMs: 1000, describe: () => ({ admin: '', proxy: '', generation: 0, leader: [], config: '' }) }))
  const fa = new Feed()
  const fb = new Feed()
  const a = fleetStats(t, links[0]!.stats, fa)
  const b = fleetStats(t, links[1]!.stats, fb)
  t.equal(links[0]!.stats.self, 'a')
  const canary = lead(t, a, 'web', 'canary')
  const stable = lead(t, a, 'web', 'stable')
  // the leader's subscription is sent without waiting for Redis: wait until it is in effect (bounded)
  const raw = redis.client()
  await until('leader subscribed to fs:stats', async () => ((await raw.call('PUBSUB', 'NUMSUB', 'fs:stats')) as [string, number])[1] >= 1, 2000)

  a.follow(PAIRS)
  b.follow(PAIRS)
  const want = traffic(fa, fb)
  a.flush()
  b.flush()
  await until('both instances\' windows received over Redis', () => canary.window.requests === want.canary.requests && stable.window.requests === 100, 3000)
  const got = canary.window.peek()
  t.equal(got.failures, want.canary.failures)
  t.same(got.latenciesMs.slice().sort((x, y) => x - y), want.canary.latencies.slice().sort((x, y) => x - y), 'latencies survive the wire (µs precision)')
  t.same([...canary.window.sources].sort(), ['a', 'b'])

  // the pair dropped on b: flushed one last time through Redis
  for (let i = 0; i < 4; i++) fb.request('web', 'canary', 200, 0.03)
  b.follow([])
  await until('the last window received', () => canary.window.requests === want.canary.requests + 4, 3000)
  t.equal(fb.listeners('web', 'canary'), 0)

  // Redis down: publishing fails quietly (the controller holds its checks then), nothing throws
  await redis.stop()
  fa.request('web', 'canary', 200, 0.01)
  t.doesNotThrow(() => { a.flush() })
  await sleep(50)
  t.equal(canary.window.requests, want.canary.requests + 4, 'nothing arrives while Redis is down')
})
