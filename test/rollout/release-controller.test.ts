import t, { type Test } from 'tap'
import { createLogger } from '../../src/logger.js'
import { validatePlan, type PlanContext, type RolloutEvent, type RolloutPlan } from '../../src/config/plan.js'
import type { ShadowListener, ShadowPair } from '../../src/metrics/observer.js'
import { ManualClock } from '../../src/rollout/clock.js'
import { RolloutController, startStep, type ControllerDeps, type RolloutHost, type RolloutRecord, type RouteExtras, type RouteNow, type StartOptions } from '../../src/rollout/controller.js'
import { RolloutManager, type RolloutStore } from '../../src/rollout/manager.js'
import type { MirrorSpec, RouteSpec, SegmentSpec } from '../../src/routing/spec.js'
import { feed, gaussian, memoryNotifier, rng, type VersionModel } from './sim.js'

// Issue 15, the controller's side of a release: segment steps, the shadow
// judge, blue/green, the next release (start step, canary upstream,
// finalize). A fake clock and an in-memory host that applies what the
// controller asks (weights and extras) to the route it shows through `view`.

// no errors at all on the good side: a seeded run must never fail a check by chance
const GOOD: VersionModel = { errorRate: 0, medianMs: 50, sigma: 0.3 }
const BAD: VersionModel = { errorRate: 0.2, medianMs: 50, sigma: 0.3 }
const INTERVAL = 1000
const VERSIONS = ['stable', 'canary']

interface Applied { weights: Record<string, number>; reason: string; record: RolloutRecord; extras: RouteExtras | undefined }

/** The host: records every apply, applies the extras to the route it shows, keeps every persisted record. */
interface MemHost {
  host: RolloutHost
  applied: Applied[]
  persisted: RolloutRecord[]
  route: RouteNow
}

function memHost (route: RouteNow): MemHost {
  const m: MemHost = {
    applied: [],
    persisted: [],
    route,
    host: {
      applyWeights (_route, weights, reason, record, extras) {
        m.applied.push({ weights: { ...weights }, reason, record: structuredClone(record), extras: extras === undefined ? undefined : structuredClone(extras) })
        m.persisted.push(structuredClone(record))
        if (extras?.segments !== undefined) m.route.segments = structuredClone(extras.segments)
        if (extras?.mirror !== undefined) m.route.mirror = structuredClone(extras.mirror)
        if (extras?.upstreams !== undefined) m.route.upstreams = { ...m.route.upstreams, ...structuredClone(extras.upstreams) }
      },
      view: () => structuredClone(m.route),
      persist (_route, record) { m.persisted.push(structuredClone(record)) }
    }
  }
  return m
}

/** Stands in for metrics.subscribeShadow: who listens, and a way to send them pairs. */
function shadowBus (): { subscribe: NonNullable<ControllerDeps['subscribeShadow']>; send: (pair: Partial<ShadowPair>, n?: number) => void; listening: () => number } {
  const listeners = new Set<{ route: string; l: ShadowListener }>()
  return {
    subscribe (route, l) {
      const e = { route, l }
      listeners.add(e)
      return () => { listeners.delete(e) }
    },
    send (pair, n = 1) {
      const p: ShadowPair = { route: 'web', primary: 'stable', mirror: 'canary', primaryStatus: 200, primarySeconds: 0.02, primaryFailed: false, mirrorStatus: 200, mirrorSeconds: 0.02, mirrorFailed: false, ...pair }
      for (let i = 0; i < n; i++) for (const e of [...listeners]) if (e.route === p.route) e.l(p)
    },
    listening: () => listeners.size
  }
}

/**
 * `n` pairs: stable answers 200; the copy answers `status(i)`; both
 * latencies drawn from the same log-normal (seeded), so only the status
 * differs between the sides.
 */
function sendPairs (bus: ReturnType<typeof shadowBus>, n: number, status: (i: number) => number, random: () => number): void {
  for (let i = 0; i < n; i++) {
    const lat = (): number => 0.02 * Math.exp(0.3 * gaussian(random))
    bus.send({ mirrorStatus: status(i), mirrorSeconds: lat(), primarySeconds: lat() })
  }
}

interface Rig {
  c: RolloutController
  m: MemHost
  clock: ManualClock
  bus: ReturnType<typeof shadowBus>
  events: RolloutEvent[]
  plan: RolloutPlan
  random: () => number
  /** One interval: windows fed (canary, stable models and counts), then the controller's own timer fires. */
  interval: (canary?: VersionModel, n?: { canary: number; stable: number }, stable?: VersionModel) => Promise<void>
}

const ROUTE_SEGMENTS = (): SegmentSpec[] => [
  { name: 'staff', match: { header: { 'x-employee': ['true'] } }, version: 'stable' },
  { name: 'kr', match: { header: { 'cf-ipcountry': ['KR'] } }, weights: { stable: 50, canary: 50 } },
  { name: 'office', match: { ip: ['10.20.0.0/16'] }, weights: { stable: 100, canary: 0 } },
  { name: 'beta', match: { cookie: { plan: { regex: '^beta-' } } }, version: 'canary' }
]

const UPSTREAMS = (): Record<string, string[]> => ({ stable: ['http://127.0.0.1:1001'], canary: ['http://127.0.0.1:1002', 'http://127.0.0.1:1003'] })

function routeNow (over: Partial<RouteNow> = {}): RouteNow {
  return { segments: ROUTE_SEGMENTS(), mirror: null, upstreams: UPSTREAMS(), ...over }
}

async function rig (t: Test, raw: Record<string, unknown>, opts: { route?: RouteNow; start?: StartOptions; ctx?: PlanContext; seed?: number } = {}): Promise<Rig> {
  const route = opts.route ?? routeNow()
  const m = memHost(route)
  const clock = new ManualClock()
  const bus = shadowBus()
  const events: RolloutEvent[] = []
  const plan = validatePlan({ canary: 'canary', intervalMs: INTERVAL, analysis: { minRequests: 100, maxFailedChecks: 2 }, ...raw }, VERSIONS, opts.ctx ?? { segments: route.segments.map((s) => s.name) })
  const deps: ControllerDeps = { host: m.host, clock, notifier: memoryNotifier(events), reservoir: 1024, subscribeShadow: bus.subscribe }
  const c = await RolloutController.start('web', plan, 'stable', VERSIONS, deps, opts.start)
  t.teardown(() => { c.close() })
  const random = rng(opts.seed ?? 7)
  return {
    c,
    m,
    clock,
    bus,
    events,
    plan,
    random,
    interval: async (canary = GOOD, n = { canary: 400, stable: 4000 }, stable = GOOD) => {
      feed(c.windows.canary, n.canary, canary, random)
      feed(c.windows.stable, n.stable, stable, random)
      await clock.advance(INTERVAL)
    }
  }
}

/** The segment named `name` of an applied change (undefined when the change carried no segments). */
function seg (a: Applied | undefined, name: string): SegmentSpec | undefined {
  return a?.extras?.segments?.find((s) => s.name === name)
}

const canaryAt = (w: number): Record<string, number> => ({ stable: Math.round((100 - w) * 10_000) / 10_000, canary: w })

t.test('startStep: the first numeric step >= the canary\'s weight; segment steps skipped', async (t) => {
  const steps = [1, 5, 10, 25, 50]
  const rows: Array<[number, { index: number; weight: number }]> = [
    [0, { index: 0, weight: 1 }],
    [0.5, { index: 0, weight: 1 }],
    [1, { index: 0, weight: 1 }],
    [3, { index: 1, weight: 5 }],
    [5, { index: 1, weight: 5 }],
    [23.5, { index: 3, weight: 25 }],
    [25, { index: 3, weight: 25 }],
    [50, { index: 4, weight: 50 }],
    [60, { index: 4, weight: 60 }],
    [100, { index: 4, weight: 100 }]
  ]
  for (const [w, want] of rows) t.same(startStep(steps, w), want, `plain plan, canary at ${w}`)
  const issue = [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 10 }, 1, 10, 50]
  const segRows: Array<[number, { index: number; weight: number }]> = [
    [0, { index: 0, weight: 0 }],
    [1, { index: 2, weight: 1 }],
    [5, { index: 3, weight: 10 }],
    [10, { index: 3, weight: 10 }],
    [70, { index: 4, weight: 70 }]
  ]
  for (const [w, want] of segRows) t.same(startStep(issue, w), want, `staff-first plan, canary at ${w}`)
  t.same(startStep([10, { segment: 'kr', weight: 20 }, 30], 15), { index: 2, weight: 30 }, 'a segment step between numbers is skipped too')
})

t.test('the next release starts at the first step >= the canary\'s weight; --from-start at step 1', async (t) => {
  const a = await rig(t, { steps: [1, 5, 10, 25, 50] }, { start: { currentWeight: 23.5 } })
  t.same(a.m.applied[0]!.weights, canaryAt(25), 'nobody moves back to stable: 23.5 → 25')
  t.equal(a.c.record.stepIndex, 3)
  t.same(a.c.record.startedFrom, { weight: 23.5, fromStart: false })
  const b = await rig(t, { steps: [1, 5, 10, 25, 50] }, { start: { currentWeight: 23.5, fromStart: true } })
  t.same(b.m.applied[0]!.weights, canaryAt(1), '--from-start: step 1')
  t.equal(b.c.record.stepIndex, 0)
  t.same(b.c.record.startedFrom, { weight: 23.5, fromStart: true })
  const c = await rig(t, { steps: [1, 5, 10, 25, 50] })
  t.notOk('startedFrom' in c.c.record, 'a canary at 0 records no startedFrom')
  const d = await rig(t, { steps: [5, 50], shadow: { percent: 20, durationMs: 3000 } }, { start: { currentWeight: 10 } })
  t.equal(d.c.record.phase, 'steps', 'a canary already serving users skips the shadow phase')
  t.same(d.m.applied[0]!.weights, canaryAt(50))
  t.equal(d.m.applied[0]!.extras?.mirror, undefined, 'and no mirror is set')
  t.equal(d.bus.listening(), 0)
})

t.test('canaryUpstream is set in the same change as the first step', async (t) => {
  const r = await rig(t, { steps: [5, 50] }, { start: { canaryUpstream: ['http://127.0.0.1:2001', 'http://127.0.0.1:2002'] } })
  t.equal(r.m.applied.length, 1, 'one change')
  t.same(r.m.applied[0]!.weights, canaryAt(5))
  t.same(r.m.applied[0]!.extras?.upstreams, { canary: ['http://127.0.0.1:2001', 'http://127.0.0.1:2002'] })
  t.equal(r.m.applied[0]!.record.state, 'progressing', 'with the record, in the same write')
})

t.test('segment steps move only their segment, never below its share at start; numeric steps raise them', async (t) => {
  const r = await rig(t, { steps: [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 10 }, { segment: 'office', weight: 5 }, 1, 10, 50] })
  const before = ROUTE_SEGMENTS()
  const a0 = r.m.applied[0]!
  t.same(a0.weights, canaryAt(0), 'step 1 moves nobody outside the segment')
  t.same(a0.extras?.segments?.map((s) => s.name), ['staff', 'kr', 'office', 'beta'], 'every segment kept, in order')
  t.same(seg(a0, 'staff'), { name: 'staff', match: before[0]!.match, weights: { stable: 0, canary: 100 } }, 'staff: canary 100 %, its match kept')
  t.notOk('version' in seg(a0, 'staff')!, 'the pin is replaced by weights')
  t.same(seg(a0, 'kr'), before[1], 'kr untouched')
  t.same(seg(a0, 'office'), before[2], 'office untouched')
  t.same(seg(a0, 'beta'), before[3], 'beta (not in the plan) untouched')
  t.same(r.c.record.segmentWeights, { staff: 100 })
  t.same(r.c.record.segmentsBefore, [before[0], before[1], before[2]], 'the targeted segments as they were at start')

  await r.interval()
  const a1 = r.m.applied[1]!
  t.same(a1.weights, canaryAt(0))
  t.same(seg(a1, 'kr'), { name: 'kr', match: before[1]!.match, weights: { stable: 50, canary: 50 } }, 'a 50/50 segment stepped to 10 stays at 50: nobody moves back')
  t.same(seg(a1, 'staff')?.weights, { stable: 0, canary: 100 }, 'staff stays at 100')
  t.same(r.c.record.segmentWeights, { staff: 100, kr: 50 })

  await r.interval()
  t.same(seg(r.m.applied[2], 'office')?.weights, { stable: 95, canary: 5 }, 'office: 5 %')
  t.same(r.m.applied[2]!.weights, canaryAt(0))

  await r.interval()
  t.same(r.m.applied[3]!.weights, canaryAt(1), 'numeric step: everyone at 1 %')
  t.same(seg(r.m.applied[3], 'office')?.weights, { stable: 95, canary: 5 }, 'office above 1 % stays')

  await r.interval()
  t.same(r.m.applied[4]!.weights, canaryAt(10))
  t.same(seg(r.m.applied[4], 'office')?.weights, { stable: 90, canary: 10 }, 'office raised to 10 % with everyone')
  t.same(seg(r.m.applied[4], 'kr')?.weights, { stable: 50, canary: 50 })

  await r.interval()
  t.same(r.m.applied[5]!.weights, canaryAt(50))
  t.same(r.c.record.segmentWeights, { staff: 100, kr: 50, office: 50 })
  t.same(seg(r.m.applied[5], 'beta'), before[3], 'beta still untouched')

  await r.interval()
  t.equal(r.c.state, 'promoted')
  const last = r.m.applied.at(-1)!
  t.same(last.weights, canaryAt(100))
  for (const n of ['staff', 'kr', 'office']) t.same(seg(last, n)?.weights, { stable: 0, canary: 100 }, `promotion without finalize: ${n} at canary 100 %`)
  t.same(seg(last, 'beta'), before[3], 'the operator\'s other segment is never touched')
  t.notOk(r.c.record.finalized, 'not finalized')
  t.equal(last.extras?.upstreams, undefined, 'no upstream change without finalize')
})

t.test('abort restores the targeted segments\' definitions and keeps the operator\'s match', async (t) => {
  const r = await rig(t, { steps: [{ segment: 'staff', weight: 100 }, { segment: 'office', weight: 20 }, 10, 50] })
  await r.interval()
  t.same(seg(r.m.applied.at(-1), 'office')?.weights, { stable: 80, canary: 20 })
  // the operator narrows staff's match meanwhile (a PUT …/segments; the store would apply it)
  const newMatch = { header: { 'x-employee': ['true'] }, ip: ['10.0.0.0/8'] }
  r.m.route.segments = r.m.route.segments.map((s) => s.name === 'staff' ? { ...s, match: newMatch } : s)
  await r.c.abort('enough')
  t.equal(r.c.state, 'aborted')
  const last = r.m.applied.at(-1)!
  t.same(last.weights, canaryAt(0))
  const staff = seg(last, 'staff')!
  t.same(staff, { name: 'staff', match: newMatch, version: 'stable' }, 'staff pinned to stable again, with the operator\'s new match')
  t.notOk('weights' in staff, 'no weights left on a pinned segment')
  t.same(seg(last, 'office'), ROUTE_SEGMENTS()[2], 'office back to its own weights')
  t.same(seg(last, 'kr'), ROUTE_SEGMENTS()[1], 'kr (never stepped) unchanged')
  t.same(seg(last, 'beta'), ROUTE_SEGMENTS()[3])
})

t.test('a rollback restores the targeted segments too', async (t) => {
  const r = await rig(t, { steps: [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 80 }, 10, 50] })
  await r.interval()
  t.same(seg(r.m.applied.at(-1), 'kr')?.weights, { stable: 20, canary: 80 })
  await r.interval(BAD)
  t.equal(r.c.state, 'progressing', 'one failed check')
  await r.interval(BAD)
  t.equal(r.c.state, 'rolled-back')
  const last = r.m.applied.at(-1)!
  t.same(last.weights, canaryAt(0))
  t.same(last.extras?.segments, ROUTE_SEGMENTS(), 'every segment as it was at start')
})

t.test('promotion with finalize: stable takes the canary\'s upstream, 100/0, segments restored, in one change', async (t) => {
  const r = await rig(t, { steps: [{ segment: 'staff', weight: 100 }, 10], promotion: { mode: 'auto', finalize: true } })
  await r.interval()
  t.same(r.m.applied.at(-1)!.weights, canaryAt(10))
  const n = r.m.applied.length
  await r.interval()
  t.equal(r.c.state, 'promoted')
  t.equal(r.m.applied.length, n + 1, 'one change')
  const last = r.m.applied.at(-1)!
  t.same(last.weights, { stable: 100, canary: 0 }, 'stable back at 100, canary at 0')
  t.same(last.extras?.upstreams, { stable: UPSTREAMS().canary }, 'stable now serves the canary\'s build')
  t.same(last.extras?.segments, ROUTE_SEGMENTS(), 'targeted segments back to their definitions')
  t.equal(last.record.finalized, true, 'the record in the same write says finalized')
  t.equal(r.c.record.finalized, true)
  t.equal(r.c.record.weight, 0, 'a finalized record says where the canary is: back at 0 %')
  t.match(r.c.record.reason, /finalized/)

  const manual = await rig(t, { steps: [10], promotion: { mode: 'manual', finalize: true } })
  await manual.interval()
  t.equal(manual.c.state, 'awaiting-promotion')
  const { held } = await manual.c.promote()
  t.equal(held, false)
  t.same(manual.m.applied.at(-1)!.weights, { stable: 100, canary: 0 }, 'manual promote finalizes too')
  t.same(manual.m.applied.at(-1)!.extras?.upstreams, { stable: UPSTREAMS().canary })
})

t.test('two releases in a row with finalize and a new canary upstream each time', async (t) => {
  const route = routeNow({ segments: [] })
  const m = memHost(route)
  const clock = new ManualClock()
  const random = rng(11)
  const plan = validatePlan({ steps: [10], intervalMs: INTERVAL, analysis: { minRequests: 100 }, promotion: { mode: 'auto', finalize: true } }, VERSIONS)
  t.equal(plan.canary, 'canary', 'canary left out: the route is stable + canary')
  for (const build of ['http://127.0.0.1:3001', 'http://127.0.0.1:3002']) {
    const c = await RolloutController.start('web', plan, 'stable', VERSIONS, { host: m.host, clock }, { currentWeight: 0, canaryUpstream: [build] })
    t.same(m.route.upstreams.canary, [build], `canary points at ${build} from the first step`)
    t.same(m.applied.at(-1)!.weights, canaryAt(10))
    for (let i = 0; i < 5 && c.active; i++) {
      feed(c.windows.canary, 400, GOOD, random)
      feed(c.windows.stable, 4000, GOOD, random)
      await clock.advance(INTERVAL)
    }
    t.equal(c.state, 'promoted')
    t.same(m.applied.at(-1)!.weights, { stable: 100, canary: 0 }, 'ready for the next release')
    t.same(m.route.upstreams.stable, [build], 'stable serves the build that was just promoted')
    c.close()
  }
})

const MIRROR_BEFORE: MirrorSpec = { version: 'canary', percent: 1, methods: ['GET'], maxBodyBytes: 1024, maxInFlight: 8, timeoutMs: 1000 }
const SHADOW_PLAN = { steps: [5, 50], shadow: { percent: 20, durationMs: 3000, methods: ['get', 'post'] } }

t.test('shadow phase: the start applies the mirror to the canary at 0 % user exposure', async (t) => {
  const r = await rig(t, SHADOW_PLAN, { route: routeNow({ mirror: MIRROR_BEFORE }) })
  t.equal(r.c.record.phase, 'shadow')
  t.equal(r.m.applied.length, 1)
  t.same(r.m.applied[0]!.weights, canaryAt(0), 'no user on the canary')
  t.match(r.m.applied[0]!.extras?.mirror, { version: 'canary', percent: 20, methods: ['GET', 'POST'], maxBodyBytes: 65_536 }, 'the plan\'s share and methods, to the canary')
  t.same(r.c.record.mirrorBefore, MIRROR_BEFORE, 'the route\'s own mirror remembered')
  t.equal(r.bus.listening(), 1, 'subscribed to the route\'s shadow pairs')
})

t.test('shadow judge: a canary answering 500 to 20 % of copies is rolled back with no user on it', async (t) => {
  const r = await rig(t, SHADOW_PLAN, { route: routeNow({ mirror: MIRROR_BEFORE }) })
  sendPairs(r.bus, 500, (i) => i % 5 === 0 ? 500 : 200, r.random)
  await r.clock.advance(INTERVAL)
  const first = r.c.record.checks.at(-1)!
  t.equal(first.verdict, 'fail')
  t.equal(first.phase, 'shadow', 'the check says which phase it judged')
  t.same(first.shadow, { pairs: 500, mismatches: 100, mismatchRate: 20, latencyRatio: first.shadow?.latencyRatio }, 'paired figures')
  t.ok(first.shadow?.latencyRatio !== null && Math.abs(first.shadow!.latencyRatio - 1) < 0.1, `latency ratio about 1 (${first.shadow?.latencyRatio})`)
  t.equal(first.canary.requests, 500, 'the canary side is the copies')
  t.equal(first.canary.failures, 100)
  t.equal(first.stable.failures, 0)
  t.match(first.reasons[0], /20% of mirrored copies got a different status class/)
  t.equal(r.c.state, 'progressing', 'one failed check of 2')
  sendPairs(r.bus, 500, (i) => i % 5 === 0 ? 500 : 200, r.random)
  await r.clock.advance(INTERVAL)
  t.equal(r.c.state, 'rolled-back')
  t.match(r.c.record.reason, /shadow phase \(no user reached the canary\)/)
  t.same(r.m.applied.map((a) => a.weights.canary), [0, 0], 'canary weight 0 throughout')
  t.same(r.m.applied.at(-1)!.extras?.mirror, MIRROR_BEFORE, 'the route\'s own mirror is back')
  t.same(r.m.route.mirror, MIRROR_BEFORE)
  t.same(r.events, ['started', 'check-failed', 'rolled-back'])
  t.equal(r.bus.listening(), 0, 'no longer listening')
  t.equal(r.clock.pending, 0)
})

t.test('shadow judge: a status-class mismatch rate over maxMismatchRate fails even with no 5xx', async (t) => {
  const r = await rig(t, SHADOW_PLAN)
  sendPairs(r.bus, 400, (i) => i % 10 === 0 ? 404 : 200, r.random)
  await r.clock.advance(INTERVAL)
  const c = r.c.record.checks.at(-1)!
  t.equal(c.verdict, 'fail', '10 % 404 where stable said 200')
  t.equal(c.canary.failures, 0, 'no 5xx: only the mismatch rule can fail it')
  t.match(c.shadow, { pairs: 400, mismatches: 40, mismatchRate: 10 })
  t.match(c.reasons[0], /maxMismatchRate 5%/)

  const ok = await rig(t, SHADOW_PLAN)
  sendPairs(ok.bus, 400, (i) => i % 25 === 0 ? 404 : 200, ok.random)
  await ok.clock.advance(INTERVAL)
  t.equal(ok.c.record.checks.at(-1)!.verdict, 'pass', '4 % mismatches is within 5 %')
  t.match(ok.c.record.checks.at(-1)!.shadow, { mismatches: 16, mismatchRate: 4 })

  const strict = await rig(t, { ...SHADOW_PLAN, shadow: { ...SHADOW_PLAN.shadow, maxMismatchRate: 1 } })
  sendPairs(strict.bus, 400, (i) => i % 25 === 0 ? 404 : 200, strict.random)
  await strict.clock.advance(INTERVAL)
  t.equal(strict.c.record.checks.at(-1)!.verdict, 'fail', 'the same 4 % fails a 1 % limit')

  const noAnswer = await rig(t, SHADOW_PLAN)
  for (let i = 0; i < 300; i++) noAnswer.bus.send({ mirrorStatus: i % 10 === 0 ? 0 : 200, mirrorFailed: i % 10 === 0 })
  await noAnswer.clock.advance(INTERVAL)
  const na = noAnswer.c.record.checks.at(-1)!
  t.equal(na.verdict, 'fail', 'copies that got no answer count against the canary')
  t.match(na.shadow, { pairs: 300, mismatches: 30 })

  const others = await rig(t, SHADOW_PLAN)
  others.bus.send({ primary: 'canary', mirror: 'stable', mirrorStatus: 500 }, 300)
  others.bus.send({ route: 'api', mirrorStatus: 500 }, 300)
  await others.clock.advance(INTERVAL)
  t.equal(others.c.record.checks.at(-1)!.verdict, 'inconclusive', 'pairs of other versions or routes are not this shadow\'s evidence')
  t.equal(others.c.record.checks.at(-1)!.shadow?.pairs, 0)
})

t.test('a passing shadow phase moves to the steps only after durationMs', async (t) => {
  const r = await rig(t, SHADOW_PLAN, { route: routeNow({ mirror: MIRROR_BEFORE }) })
  for (let i = 1; i <= 2; i++) {
    sendPairs(r.bus, 300, () => 200, r.random)
    await r.clock.advance(INTERVAL)
    t.equal(r.c.record.checks.at(-1)!.verdict, 'pass', `check ${i} passes`)
    t.equal(r.c.record.phase, 'shadow', `still shadow after ${i * INTERVAL} ms of ${SHADOW_PLAN.shadow.durationMs}`)
    t.equal(r.m.applied.length, 1, 'nothing applied yet')
  }
  sendPairs(r.bus, 300, () => 200, r.random)
  await r.clock.advance(INTERVAL)
  t.equal(r.c.record.phase, 'steps')
  t.equal(r.m.applied.length, 2)
  t.same(r.m.applied[1]!.weights, canaryAt(5), 'the first step')
  t.same(r.m.applied[1]!.extras?.mirror, MIRROR_BEFORE, 'the route\'s own mirror back in the same change')
  t.equal(r.bus.listening(), 0, 'shadow pairs no longer needed')
  t.same(r.events, ['started', 'step'])
  // the steps are judged on the user windows again
  await r.interval()
  t.same(r.m.applied.at(-1)!.weights, canaryAt(50))
  t.equal(r.c.record.checks.at(-1)!.phase, undefined, 'a steps check has no phase mark')
  t.equal(r.c.record.checks.at(-1)!.shadow, undefined)
})

t.test('a route without a mirror of its own gets none back after the shadow phase', async (t) => {
  const r = await rig(t, SHADOW_PLAN)
  t.equal(r.c.record.mirrorBefore, null)
  await r.c.abort()
  t.equal(r.m.applied.at(-1)!.extras?.mirror, null, 'abort in the shadow phase removes the shadow mirror')
  t.same(r.m.applied.at(-1)!.weights, canaryAt(0))
  t.equal(r.bus.listening(), 0)
})

t.test('promote during the shadow phase skips it and puts the route\'s mirror back', async (t) => {
  const r = await rig(t, SHADOW_PLAN, { route: routeNow({ mirror: MIRROR_BEFORE }) })
  const { record } = await r.c.promote()
  t.equal(record.state, 'promoted')
  t.same(r.m.applied.at(-1)!.weights, canaryAt(100))
  t.same(r.m.applied.at(-1)!.extras?.mirror, MIRROR_BEFORE)
})

t.test('pause and resume in the shadow phase: nothing judged while paused, fresh figures after', async (t) => {
  const r = await rig(t, SHADOW_PLAN)
  sendPairs(r.bus, 200, () => 500, r.random)
  await r.c.pause()
  t.equal(r.c.state, 'paused')
  t.equal(r.clock.pending, 0, 'no check while paused')
  sendPairs(r.bus, 200, () => 500, r.random)
  await r.clock.advance(INTERVAL)
  t.equal(r.c.record.checks.length, 0, 'no check ran')
  await r.c.resume()
  t.equal(r.c.state, 'progressing')
  t.equal(r.c.record.phase, 'shadow', 'still in the shadow phase')
  t.equal(r.clock.pending, 1, 're-armed')
  t.equal(r.c.shadow.pairs, 0, 'pairs seen before or while paused are dropped')
  sendPairs(r.bus, 150, () => 200, r.random)
  await r.clock.advance(INTERVAL)
  const c = r.c.record.checks.at(-1)!
  t.equal(c.verdict, 'pass', 'judged on the fresh pairs only')
  t.equal(c.shadow?.pairs, 150)
  t.equal(r.m.applied.length, 1, 'still no user on the canary')
})

t.test('restore() of a record in the shadow phase re-arms and subscribes again', async (t) => {
  const r = await rig(t, SHADOW_PLAN, { route: routeNow({ mirror: MIRROR_BEFORE }) })
  sendPairs(r.bus, 400, (i) => i % 5 === 0 ? 500 : 200, r.random)
  await r.clock.advance(INTERVAL)
  t.equal(r.c.record.failedChecks, 1)
  r.c.close()
  t.equal(r.bus.listening(), 0)
  const saved = r.m.persisted.at(-1)!
  t.equal(saved.phase, 'shadow')
  const m = memHost(r.m.route)
  const clock = new ManualClock()
  const bus = shadowBus()
  const c = RolloutController.restore(saved, { host: m.host, clock, subscribeShadow: bus.subscribe })
  t.teardown(() => { c.close() })
  t.equal(clock.pending, 1, 'timer armed')
  t.equal(bus.listening(), 1, 'listening to the shadow pairs again')
  sendPairs(bus, 400, (i) => i % 5 === 0 ? 500 : 200, r.random)
  await clock.advance(INTERVAL)
  t.equal(c.state, 'rolled-back', 'the failed check before the restart still counts')
  t.same(m.applied.at(-1)!.weights, canaryAt(0))
  t.same(m.applied.at(-1)!.extras?.mirror, MIRROR_BEFORE, 'and the route\'s mirror is put back')
})

const BG = { strategy: 'blue-green', preview: { durationMs: 2000 }, rollbackWindowMs: 3000, analysis: { minRequests: 100, maxFailedChecks: 3, successRate: { min: 99 } } }

t.test('blue/green: preview at 0 %, then one switch to 100 % with switchedFrom recorded', async (t) => {
  const r = await rig(t, BG)
  t.equal(r.c.record.phase, 'preview')
  t.same(r.m.applied[0]!.weights, canaryAt(0), 'preview: no user by weight')
  await r.interval()
  t.equal(r.c.record.phase, 'preview', 'preview lasts its duration')
  t.equal(r.m.applied.length, 1)
  await r.interval()
  t.equal(r.c.record.phase, 'rollback-window')
  t.equal(r.m.applied.length, 2)
  t.same(r.m.applied[1]!.weights, canaryAt(100), 'one switch 0 → 100')
  t.same(r.c.record.switchedFrom, { stable: 100, canary: 0 })
  t.equal(r.c.state, 'progressing')
  // the window: stable has no users now; the canary is judged by the absolute thresholds
  await r.interval(GOOD, { canary: 400, stable: 0 })
  await r.interval(GOOD, { canary: 400, stable: 0 })
  t.equal(r.c.state, 'progressing', `window not over after ${2 * INTERVAL} ms of 3000`)
  await r.interval(GOOD, { canary: 400, stable: 0 })
  t.equal(r.c.state, 'promoted', 'the window elapsed without a failure')
  t.same(r.m.applied.at(-1)!.weights, canaryAt(100))
  t.equal(r.clock.pending, 0)
})

t.test('blue/green: one failed check in the rollback window switches back to exactly the weights before', async (t) => {
  const r = await rig(t, BG, { start: { currentWeight: 5 } })
  t.same(r.m.applied[0]!.weights, canaryAt(5), 'preview starts where the canary was')
  await r.interval()
  await r.interval()
  t.same(r.c.record.switchedFrom, { stable: 95, canary: 5 })
  t.same(r.m.applied.at(-1)!.weights, canaryAt(100))
  await r.interval(BAD, { canary: 400, stable: 0 })
  t.equal(r.c.state, 'rolled-back', 'one failed check is enough (maxFailedChecks 3)')
  t.equal(r.c.record.failedChecks, 1)
  t.same(r.m.applied.at(-1)!.weights, { stable: 95, canary: 5 }, 'users return to exactly where they were')
  t.match(r.c.record.reason, /rollback window/)
})

t.test('blue/green with the default analysis: a canary failing 30 % of requests in the rollback window is switched back', async (t) => {
  // no preview and no absolute thresholds: the baseline interval before the switch is what the window compares with
  const r = await rig(t, { strategy: 'blue-green', rollbackWindowMs: 3000, analysis: { minRequests: 100 } })
  t.equal(r.c.record.phase, 'preview', 'one baseline interval before the switch')
  t.same(r.m.applied[0]!.weights, canaryAt(0), 'nobody switched at start')
  await r.interval(GOOD, { canary: 0, stable: 4000 })
  t.equal(r.c.record.phase, 'rollback-window', 'switched after the baseline interval')
  t.same(r.m.applied.at(-1)!.weights, canaryAt(100))
  for (let i = 0; i < 3 && r.c.active; i++) await r.interval({ errorRate: 0.3, medianMs: 50, sigma: 0.3 }, { canary: 400, stable: 0 })
  t.equal(r.c.state, 'rolled-back', `state ${r.c.state}; verdicts ${r.c.record.checks.map((c) => c.verdict).join(', ')}`)
  t.same(r.m.applied.at(-1)!.weights, canaryAt(0))
})

t.test('blue/green: failed checks during the preview count up to maxFailedChecks', async (t) => {
  const r = await rig(t, BG)
  await r.interval(BAD)
  await r.interval(BAD)
  t.equal(r.c.state, 'progressing', 'two of three')
  t.equal(r.c.record.phase, 'preview', 'a failing preview never switches')
  await r.interval(BAD)
  t.equal(r.c.state, 'rolled-back')
  t.same(r.m.applied.map((a) => a.weights.canary), [0, 0], 'no user was ever switched')
})

t.test('blue/green with manual promotion: awaiting-promotion after the preview, promote() switches', async (t) => {
  const r = await rig(t, { ...BG, preview: { durationMs: 1000 }, promotion: 'manual' })
  await r.interval()
  t.equal(r.c.state, 'awaiting-promotion')
  t.same(r.m.applied.at(-1)!.weights, canaryAt(0), 'no switch without the operator')
  await r.interval()
  t.equal(r.c.state, 'awaiting-promotion', 'checks go on while waiting')
  const { record, held } = await r.c.promote()
  t.equal(held, false)
  t.equal(record.state, 'progressing')
  t.equal(record.phase, 'rollback-window')
  t.same(r.m.applied.at(-1)!.weights, canaryAt(100))
  t.same(record.switchedFrom, { stable: 100, canary: 0 })
  for (let i = 0; i < 3; i++) await r.interval(GOOD, { canary: 400, stable: 0 })
  t.equal(r.c.state, 'promoted')
})

t.test('blue/green: abort after the switch puts switchedFrom back; without a preview the switch follows one baseline interval', async (t) => {
  const r = await rig(t, { strategy: 'blue-green', rollbackWindowMs: 3000 }, { start: { currentWeight: 10 } })
  t.equal(r.c.record.phase, 'preview', 'no preview: one baseline interval, then the switch')
  t.same(r.m.applied[0]!.weights, canaryAt(10), 'the start moves nobody')
  await r.interval()
  t.equal(r.c.record.phase, 'rollback-window')
  t.same(r.m.applied.at(-1)!.weights, canaryAt(100))
  t.same(r.c.record.switchedFrom, { stable: 90, canary: 10 })
  await r.c.abort()
  t.equal(r.c.state, 'aborted')
  t.same(r.m.applied.at(-1)!.weights, { stable: 90, canary: 10 })

  const p = await rig(t, BG)
  await p.c.abort()
  t.same(p.m.applied.at(-1)!.weights, canaryAt(0), 'abort in the preview: canary 0 %')
})

t.test('blue/green with finalize: after the window, stable takes the canary\'s upstream at 100 %', async (t) => {
  const r = await rig(t, { ...BG, preview: undefined, promotion: { mode: 'auto', finalize: true } }, { route: routeNow({ segments: [] }) })
  await r.interval(GOOD, { canary: 0, stable: 4000 }) // the baseline interval, then the switch
  for (let i = 0; i < 6 && r.c.active; i++) await r.interval(GOOD, { canary: 400, stable: 0 })
  t.equal(r.c.state, 'promoted')
  t.same(r.m.applied.at(-1)!.weights, { stable: 100, canary: 0 })
  t.same(r.m.applied.at(-1)!.extras?.upstreams, { stable: UPSTREAMS().canary })
})

t.test('restore() of a record in the rollback window re-arms; a failure still switches back', async (t) => {
  const r = await rig(t, BG, { start: { currentWeight: 5 } })
  await r.interval()
  await r.interval()
  t.equal(r.c.record.phase, 'rollback-window')
  r.c.close()
  const saved = r.m.persisted.at(-1)!
  const m = memHost(r.m.route)
  const clock = new ManualClock(r.clock.now())
  const c = RolloutController.restore(saved, { host: m.host, clock })
  t.teardown(() => { c.close() })
  t.equal(clock.pending, 1)
  feed(c.windows.canary, 400, BAD, r.random)
  await clock.advance(INTERVAL)
  t.equal(c.state, 'rolled-back')
  t.same(m.applied.at(-1)!.weights, { stable: 95, canary: 5 })
})

/** A RolloutStore in memory holding one route (what the manager reads and writes of RuntimeStore). */
function memStore (): RolloutStore & { rollout: unknown } {
  const spec = {
    name: 'web',
    match: { pathPrefix: '/' },
    sticky: { keys: [], cookie: { name: 'c', maxAge: 1 } },
    override: {},
    versions: [{ name: 'stable', upstream: ['http://127.0.0.1:1001'], weight: 100 }, { name: 'canary', upstream: ['http://127.0.0.1:1002'], weight: 0 }]
  } satisfies RouteSpec
  const store = {
    rollout: null as unknown,
    specs: [spec] as RouteSpec[],
    setWeights: async (_r: string, w: unknown, o: { rollout?: unknown }) => {
      for (const v of spec.versions) v.weight = (w as Record<string, number>)[v.name]!
      if (o.rollout !== undefined) store.rollout = structuredClone(o.rollout)
    },
    update: async (_r: string, patch: { weights?: unknown }, o: { rollout?: unknown }) => {
      if (patch.weights !== undefined) for (const v of spec.versions) v.weight = (patch.weights as Record<string, number>)[v.name]!
      if (o.rollout !== undefined) store.rollout = structuredClone(o.rollout)
    },
    setRolloutState: async (_r: string, d: unknown) => { store.rollout = structuredClone(d) },
    getRolloutState: () => store.rollout,
    weights: (r: string) => r === 'web' ? Object.fromEntries(spec.versions.map((v) => [v.name, v.weight])) : undefined,
    routeNames: ['web'],
    setRolloutSummary () {},
    onChange () {}
  }
  return store
}

t.test('the manager restores blue/green and shadow rollouts from the state file', async (t) => {
  for (const plan of [{ canary: 'canary', strategy: 'blue-green', preview: { durationMs: 5000 }, intervalMs: 1000 }, { canary: 'canary', steps: [10], shadow: { percent: 10, durationMs: 5000 }, intervalMs: 1000 }]) {
    const store = memStore()
    const first = new RolloutManager({ store, logger: createLogger('silent'), clock: new ManualClock() })
    await first.start('web', plan)
    first.close()
    t.equal((store.rollout as RolloutRecord).state, 'progressing', 'the record was saved')
    const clock = new ManualClock()
    const second = new RolloutManager({ store, logger: createLogger('silent'), clock })
    second.restore()
    const c = second.controller('web')
    t.ok(c !== undefined, `${plan.strategy ?? 'shadow'} rollout restored after a restart`)
    t.equal(c?.record.phase, (store.rollout as RolloutRecord).phase, 'in the same phase')
    t.equal(clock.pending, c === undefined ? -1 : 1, 'and its timer armed')
    second.close()
  }
})

t.test('review: a next release found past the numeric steps, with a segment step last, holds everyone at the weight it found', async (t) => {
  for (const steps of [[10, { segment: 'staff', weight: 100 }], [{ segment: 'staff', weight: 100 }]]) {
    const r = await rig(t, { steps }, { start: { currentWeight: 30 } })
    t.equal(r.c.record.weight, 30, `${JSON.stringify(steps)}: the record holds 30`)
    t.same(r.m.applied[0]!.weights, canaryAt(30), 'nobody moved back to stable')
    t.equal(r.c.record.segmentWeights?.staff, 100, 'the segment step still applies')
  }
})

t.test('review: shadow pairs of users who left (499) are not judged; 304 agrees with 2xx', async (t) => {
  const r = await rig(t, { ...SHADOW_PLAN, shadow: { ...SHADOW_PLAN.shadow, maxMismatchRate: 1 } })
  // 300 conditional GETs: stable 304, the new build 200 (new ETags); 100 users gone before stable answered
  r.bus.send({ primaryStatus: 304, mirrorStatus: 200 }, 300)
  r.bus.send({ primaryStatus: 499, mirrorStatus: 200 }, 100)
  t.equal(r.c.shadow.pairs, 300, 'the 499 pairs were not counted')
  await r.clock.advance(INTERVAL)
  const check = r.c.record.checks.at(-1)!
  t.equal(check.shadow?.mismatches, 0, '304 vs 200 is agreement')
  t.equal(check.verdict, 'pass')
})

t.test('review: a failed save leaving the shadow phase keeps the phase listening', async (t) => {
  const r = await rig(t, { ...SHADOW_PLAN, shadow: { ...SHADOW_PLAN.shadow, durationMs: 1000 } })
  const apply = r.m.host.applyWeights.bind(r.m.host)
  let fail = true
  r.m.host.applyWeights = async (...args) => { if (fail) throw new Error('disk full'); await apply(...args) }
  sendPairs(r.bus, 300, () => 200, r.random)
  await r.clock.advance(INTERVAL)
  t.equal(r.c.record.phase, 'shadow', 'the step after the shadow phase was not saved')
  t.equal(r.bus.listening(), 1, 'still listening for pairs')
  fail = false
  sendPairs(r.bus, 300, () => 200, r.random)
  await r.clock.advance(INTERVAL)
  t.equal(r.c.record.phase, 'steps')
  t.equal(r.bus.listening(), 0, 'the listener goes once the change is saved')
})

t.test('review: a rollback or abort puts the canary\'s previous origins back (canaryUpstream undone)', async (t) => {
  for (const end of ['abort', 'rollback'] as const) {
    const r = await rig(t, { steps: [10, 50] }, { start: { canaryUpstream: ['http://127.0.0.1:2002'] } })
    t.same(r.m.route.upstreams.canary, ['http://127.0.0.1:2002'], 'the new build is in place')
    if (end === 'abort') await r.c.abort()
    else for (let i = 0; i < 3 && r.c.active; i++) await r.interval(BAD)
    t.equal(r.c.state, end === 'abort' ? 'aborted' : 'rolled-back')
    t.same(r.m.applied.at(-1)!.extras?.upstreams, { canary: UPSTREAMS().canary }, `${end}: the previous origins in the same change`)
    t.same(r.m.route.upstreams.canary, UPSTREAMS().canary)
  }
})
