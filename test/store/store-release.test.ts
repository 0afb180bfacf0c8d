import t from 'tap'
import { configFromObject } from '../../src/config/load.js'
import { RUNTIME_CHECKS } from '../../src/config/segments.js'
import { CanarydError } from '../../src/errors.js'
import { RolloutManager } from '../../src/rollout/manager.js'
import type { SegmentSpec } from '../../src/routing/spec.js'
import { RuntimeStore } from '../../src/store/store.js'
import { twoVersionRoute } from '../helpers/proxy.js'
import { captureLog } from '../helpers/log.js'

// Issue 15 review findings on the store and the manager's route checks:
// a rollout step computed from segments an operator changed meanwhile is
// refused (never overwrites the operator), and plans that cannot do what they
// say on this route are refused at start.

const STAFF: SegmentSpec = { name: 'staff', match: { header: { 'x-employee': ['true'] } }, version: 'stable' }

function make (extra: Record<string, unknown> = {}, versions?: unknown[]): { s: RuntimeStore; m: RolloutManager } {
  const route: Record<string, unknown> = { ...twoVersionRoute('http://127.0.0.1:3001', 'http://127.0.0.1:3002', [100, 0]), segments: [STAFF], ...extra }
  if (versions !== undefined) route.versions = versions
  const routes = configFromObject({ routes: [route] }, '(test)', {}).routes
  const { logger } = captureLog()
  const s = new RuntimeStore({ routes, file: '', logger, ...RUNTIME_CHECKS })
  const m = new RolloutManager({ store: s, logger })
  t.teardown(() => { m.close() })
  return { s, m }
}

t.test('update with expectSegments: refused (409, nothing changed) when the segments changed meanwhile', async (t) => {
  const { s } = make()
  const seen = structuredClone(s.specs[0]!.segments!)
  await s.setSegments('web', [{ ...STAFF, version: 'canary' }], { source: 'api' })
  const gen = s.holder.current.generation
  const { version: _pinned, ...match } = STAFF
  const err = await s.update('web', { weights: { stable: 90, canary: 10 }, segments: [{ ...match, weights: { stable: 0, canary: 100 } }], expectSegments: seen }, { source: 'rollout' }).catch((e: unknown) => e)
  t.ok(err instanceof CanarydError && err.code === 'CANARYD_ERR_ROLLOUT_CONFLICT', String(err))
  t.equal(s.holder.current.generation, gen, 'no table swap')
  t.same(s.weights('web'), { stable: 100, canary: 0 }, 'weights untouched')
  t.equal(s.specs[0]!.segments![0]!.version, 'canary', "the operator's segments stand")
  const ok = await s.update('web', { segments: [{ ...match, weights: { stable: 0, canary: 100 } }], expectSegments: s.specs[0]!.segments! }, { source: 'rollout' })
  t.same(ok.route.segments[0]!.weights, { stable: 0, canary: 100 }, 'the same change from the segments in force applies')
})

t.test('a segment step on a segment that sends users to a third version is refused at start', async (t) => {
  const versions = [
    { name: 'stable', upstream: 'http://127.0.0.1:3001', weight: 100 },
    { name: 'canary', upstream: 'http://127.0.0.1:3002', weight: 0 },
    { name: 'beta', upstream: 'http://127.0.0.1:3003', weight: 0 }
  ]
  const { m } = make({ segments: [{ ...STAFF, version: 'beta' }] }, versions)
  const err = await m.start('web', { canary: 'canary', stable: 'stable', steps: [{ segment: 'staff', weight: 100 }, 10] }).catch((e: unknown) => e)
  t.ok(err instanceof CanarydError && err.code === 'CANARYD_ERR_INVALID_PLAN', String(err))
  t.match((err as Error).message, /segment staff sends users to beta/)
})

t.test('finalize between versions whose TLS, discovery or balance differ is refused at start', async (t) => {
  const versions = [
    { name: 'stable', upstream: 'http://127.0.0.1:3001', weight: 100 },
    { name: 'canary', upstream: 'http://127.0.0.1:3002', weight: 0, balance: 'round-robin' }
  ]
  const { m } = make({}, versions)
  const err = await m.start('web', { steps: [10], promotion: { mode: 'auto', finalize: true } }).catch((e: unknown) => e)
  t.ok(err instanceof CanarydError && err.code === 'CANARYD_ERR_INVALID_PLAN', String(err))
  t.match((err as Error).message, /finalize: canary and stable differ/)
  const fine = await m.start('web', { steps: [10] })
  t.equal(fine.state, 'progressing', 'the same plan without finalize starts')
})
