import t, { type Test } from 'tap'
import { configFromObject } from '../../src/config/load.js'
import { PlanError, validatePlan, type PlanContext, type RolloutPlan } from '../../src/config/plan.js'

// Issue 15, plans: segment steps, the shadow phase, blue/green, promotion
// with finalize and a plan that leaves `canary` out. Contract tests written
// from the issue and /tmp/c15/contract.md ("Plans").

const VERSIONS = ['stable', 'canary']
const CTX: PlanContext = { segments: ['staff', 'kr', 'office'] }

/** The problems validatePlan reports ([] when the plan is valid). */
function problemsOf (raw: unknown, versions: readonly string[] | undefined = VERSIONS, ctx: PlanContext = CTX): string[] {
  try {
    validatePlan(raw, versions, ctx)
    return []
  } catch (err) {
    if (!(err instanceof PlanError)) throw err
    return err.problems
  }
}

/** Validates, then validates the JSON form again (as the state file does on restart): both must be equal. */
function roundTrip (t: Test, raw: unknown, versions: readonly string[] | undefined = VERSIONS, ctx: PlanContext = CTX): RolloutPlan {
  const p = validatePlan(raw, versions, ctx)
  let again: RolloutPlan | string
  try {
    again = validatePlan(JSON.parse(JSON.stringify(p)) as unknown, versions, ctx)
  } catch (err) {
    again = (err as Error).message
  }
  t.same(again, p, `idempotent: ${JSON.stringify(raw).slice(0, 100)}`)
  return p
}

t.test('segment steps: accepted forms, normalised in order, the final 100 dropped', async (t) => {
  const issue = roundTrip(t, { canary: 'canary', steps: [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 10 }, 1, 10, 50] })
  t.same(issue.steps, [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 10 }, 1, 10, 50], 'the issue\'s staff-first plan, kept as written')
  const rows: Array<[unknown[], unknown[]]> = [
    [[{ segment: 'staff', weight: 100 }, 10, 100], [{ segment: 'staff', weight: 100 }, 10]],
    [[{ segment: 'kr', weight: 10 }, { segment: 'kr', weight: 20 }, 5, { segment: 'kr', weight: 100 }, 50], [{ segment: 'kr', weight: 10 }, { segment: 'kr', weight: 20 }, 5, { segment: 'kr', weight: 100 }, 50]],
    [[1, { segment: 'staff', weight: 0.5 }, 2], [1, { segment: 'staff', weight: 0.5 }, 2]],
    [[{ segment: 'staff', weight: 50 }, { segment: 'kr', weight: 50 }, 60], [{ segment: 'staff', weight: 50 }, { segment: 'kr', weight: 50 }, 60]]
  ]
  for (const [steps, want] of rows) t.same(roundTrip(t, { canary: 'canary', steps }).steps, want, JSON.stringify(steps))
  t.same(validatePlan({ canary: 'canary', steps: [{ segment: 'anything', weight: 10 }, 20] }, VERSIONS).steps, [{ segment: 'anything', weight: 10 }, 20], 'without the route\'s segments known, any name is accepted')
})

t.test('segment steps: every problem named with its key path', async (t) => {
  const rows: Array<[unknown[], string[]]> = [
    [[{ segment: 'nope', weight: 10 }, 20], ['steps[0].segment: "nope" is not a segment of the route (staff, kr, office)']],
    [[{ segment: 'staff', weight: 0 }, 20], ['steps[0].weight: must be > 0']],
    [[{ segment: 'staff', weight: 101 }, 20], ['steps[0].weight: must be between 0 and 100, got 101']],
    [[{ segment: 'staff', weight: 'x' }, 20], ['steps[0].weight: must be a number, got "x"']],
    [[{ segment: 'staff', weight: 0.00001 }, 20], ['steps[0].weight: must have at most 4 decimals, got 0.00001']],
    [[{ segment: 'staff', weight: 50 }, 20, { segment: 'staff', weight: 50 }], ['steps[2].weight: must be greater than segment staff\'s step before (50), got 50']],
    [[{ segment: 'staff', weight: 50 }, { segment: 'staff', weight: 20 }, 30], ['steps[1].weight: must be greater than segment staff\'s step before (50), got 20']],
    [[{ segment: '', weight: 10 }, 20], ['steps[0].segment: must be the name of a segment of the route']],
    [[{ weight: 10 }, 20], ['steps[0].segment: must be the name of a segment of the route']],
    [[{ segment: 'staff', weight: 10, name: 'x' }, 20], ['steps[0].name: unknown key (allowed: segment, weight)']],
    [[10, { segment: 'staff', weight: 100 }, 5], ['steps[2]: must be greater than the step before (10), got 5']],
    [[10, { segment: 'staff', weight: 100 }, 10], ['steps[2]: must be greater than the step before (10), got 10']],
    [[100, { segment: 'staff', weight: 50 }], ['steps: only the last step may be 100 (the promotion)']],
    [[10, 100, { segment: 'kr', weight: 50 }], ['steps: only the last step may be 100 (the promotion)']]
  ]
  for (const [steps, want] of rows) t.same(problemsOf({ canary: 'canary', steps }), want, JSON.stringify(steps))
  t.same(problemsOf({ canary: 'canary', steps: [{ segment: 'staff', weight: 10 }, 20] }, VERSIONS, { segments: [] }), ['steps[0].segment: "staff" is not a segment of the route (it has none)'], 'a route without segments says so')
  t.same(problemsOf({ canary: 'canary', steps: [{ segment: 'nope', weight: 10 }, { segment: 'staff', weight: 0 }, 5, 3] }), [
    'steps[0].segment: "nope" is not a segment of the route (staff, kr, office)',
    'steps[1].weight: must be > 0',
    'steps[3]: must be greater than the step before (5), got 3'
  ], 'every bad step is listed at once')
  try {
    validatePlan({ canary: 'canary', steps: [{ segment: 'nope', weight: 10 }] }, VERSIONS, CTX)
    t.fail('should throw')
  } catch (err) {
    t.ok(err instanceof PlanError)
    t.equal((err as PlanError).status, 400)
    t.equal((err as PlanError).code, 'CANARYD_ERR_INVALID_PLAN')
  }
})

t.test('shadow: required keys, defaults, methods normalised', async (t) => {
  const p = roundTrip(t, { canary: 'canary', steps: [5, 50], shadow: { percent: 20, durationMs: 600_000 } })
  t.same(p.shadow, { percent: 20, durationMs: 600_000, methods: ['GET', 'HEAD'], maxBodyBytes: 65_536, maxMismatchRate: 5 }, 'defaults filled')
  const q = roundTrip(t, { canary: 'canary', steps: [5], shadow: { percent: 0.5, durationMs: 100, methods: ['get', 'Post', 'GET'], maxBodyBytes: 0, maxMismatchRate: 0 } })
  t.same(q.shadow, { percent: 0.5, durationMs: 100, methods: ['GET', 'POST'], maxBodyBytes: 0, maxMismatchRate: 0 }, 'methods upper-cased without repeats; 0 is a valid body limit and mismatch rate')
  t.same(roundTrip(t, { canary: 'canary', steps: [5], shadow: { percent: 100, durationMs: 604_800_000, maxBodyBytes: 16_777_216, maxMismatchRate: 100 } }).shadow?.percent, 100, 'upper bounds accepted')
  t.notOk('shadow' in validatePlan({ canary: 'canary', steps: [5] }, VERSIONS), 'no shadow key when not asked for')
})

t.test('shadow: bad values with exact key paths', async (t) => {
  const base = { canary: 'canary', steps: [5] }
  const rows: Array<[unknown, string[]]> = [
    [{}, ['shadow.percent: must be a number, got undefined', 'shadow.durationMs: must be a number, got undefined']],
    [{ percent: 20 }, ['shadow.durationMs: must be a number, got undefined']],
    [{ durationMs: 1000 }, ['shadow.percent: must be a number, got undefined']],
    ['20%', ['shadow: must be an object like {"percent": 20, "durationMs": 600000}']],
    [[20, 1000], ['shadow: must be an object like {"percent": 20, "durationMs": 600000}']],
    [{ percent: 0, durationMs: 1000 }, ['shadow.percent: must be > 0, got 0']],
    [{ percent: 101, durationMs: 1000 }, ['shadow.percent: must be <= 100, got 101']],
    [{ percent: 0.00001, durationMs: 1000 }, ['shadow.percent: must have at most 4 decimals, got 0.00001']],
    [{ percent: '20', durationMs: 1000 }, ['shadow.percent: must be a number, got "20"']],
    [{ percent: 20, durationMs: 99 }, ['shadow.durationMs: must be >= 100, got 99']],
    [{ percent: 20, durationMs: 1000.5 }, ['shadow.durationMs: must be a whole number, got 1000.5']],
    [{ percent: 20, durationMs: 604_800_001 }, ['shadow.durationMs: must be <= 604800000, got 604800001']],
    [{ percent: 20, durationMs: 1000, methods: [] }, ['shadow.methods: must be a non-empty array of method names, e.g. ["GET","HEAD"]']],
    [{ percent: 20, durationMs: 1000, methods: 'GET' }, ['shadow.methods: must be a non-empty array of method names, e.g. ["GET","HEAD"]']],
    [{ percent: 20, durationMs: 1000, methods: ['GET', 3] }, ['shadow.methods: must be a non-empty array of method names, e.g. ["GET","HEAD"]']],
    [{ percent: 20, durationMs: 1000, methods: ['GE T'] }, ['shadow.methods: must be a non-empty array of method names, e.g. ["GET","HEAD"]']],
    [{ percent: 20, durationMs: 1000, maxBodyBytes: -1 }, ['shadow.maxBodyBytes: must be >= 0, got -1']],
    [{ percent: 20, durationMs: 1000, maxBodyBytes: 16_777_217 }, ['shadow.maxBodyBytes: must be <= 16777216, got 16777217']],
    [{ percent: 20, durationMs: 1000, maxBodyBytes: 1.5 }, ['shadow.maxBodyBytes: must be a whole number, got 1.5']],
    [{ percent: 20, durationMs: 1000, maxMismatchRate: -1 }, ['shadow.maxMismatchRate: must be >= 0, got -1']],
    [{ percent: 20, durationMs: 1000, maxMismatchRate: 101 }, ['shadow.maxMismatchRate: must be <= 100, got 101']],
    [{ percent: 20, durationMs: 1000, version: 'canary' }, ['shadow.version: unknown key (allowed: percent, durationMs, methods, maxBodyBytes, maxMismatchRate)']]
  ]
  for (const [shadow, want] of rows) t.same(problemsOf({ ...base, shadow }), want, JSON.stringify(shadow))
})

t.test('strategy blue-green: no steps, preview, rollbackWindowMs defaulting to 3 intervals', async (t) => {
  const bg = roundTrip(t, { canary: 'canary', strategy: 'blue-green', intervalMs: 1000 })
  t.equal(bg.strategy, 'blue-green')
  t.same(bg.steps, [], 'no steps')
  t.equal(bg.rollbackWindowMs, 3000, 'rollbackWindowMs = 3 × intervalMs')
  t.notOk('preview' in bg, 'no preview unless asked')
  t.equal(validatePlan({ canary: 'canary', strategy: 'blue-green' }, VERSIONS).rollbackWindowMs, 180_000, 'default interval 60 s → 3 min window')
  const full = roundTrip(t, { canary: 'canary', strategy: 'blue-green', intervalMs: 2000, preview: { durationMs: 300_000 }, rollbackWindowMs: 0, promotion: 'manual' })
  t.same({ preview: full.preview, rollbackWindowMs: full.rollbackWindowMs, promotion: full.promotion }, { preview: { durationMs: 300_000 }, rollbackWindowMs: 0, promotion: 'manual' })
  t.notOk('strategy' in validatePlan({ canary: 'canary', strategy: 'canary', steps: [10] }, VERSIONS), '"canary" is the default: not written')

  const rows: Array<[Record<string, unknown>, string[]]> = [
    [{ strategy: 'blue-green', steps: [10, 50] }, ['steps: a blue-green plan has no steps: it switches 0 → 100 once (use preview and rollbackWindowMs)']],
    [{ strategy: 'blue-green', stepWeight: 10 }, ['steps: a blue-green plan has no steps: it switches 0 → 100 once (use preview and rollbackWindowMs)']],
    [{ strategy: 'blue-green', shadow: { percent: 10, durationMs: 1000 } }, ['shadow: is for canary plans; a blue-green plan analyses its preview instead']],
    [{ strategy: 'blue-green', preview: 300 }, ['preview: must be an object like {"durationMs": 300000}']],
    [{ strategy: 'blue-green', preview: { durationMs: -1 } }, ['preview.durationMs: must be >= 0, got -1']],
    [{ strategy: 'blue-green', preview: { durationMs: 1000, percent: 5 } }, ['preview.percent: unknown key (allowed: durationMs)']],
    [{ strategy: 'blue-green', rollbackWindowMs: 1.5 }, ['rollbackWindowMs: must be a whole number, got 1.5']],
    [{ strategy: 'blue-green', rollbackWindowMs: 604_800_001 }, ['rollbackWindowMs: must be <= 604800000, got 604800001']],
    [{ strategy: 'red-black', steps: [10] }, ['strategy: must be "canary" or "blue-green", got "red-black"']],
    [{ steps: [10], preview: { durationMs: 1000 } }, ['preview: is for blue-green plans ("strategy": "blue-green")']],
    [{ steps: [10], rollbackWindowMs: 1000 }, ['rollbackWindowMs: is for blue-green plans ("strategy": "blue-green")']],
    [{ strategy: 'canary', steps: [10], preview: { durationMs: 1000 }, rollbackWindowMs: 1000 }, ['preview: is for blue-green plans ("strategy": "blue-green")', 'rollbackWindowMs: is for blue-green plans ("strategy": "blue-green")']]
  ]
  for (const [raw, want] of rows) t.same(problemsOf({ canary: 'canary', ...raw }), want, JSON.stringify(raw))
})

t.test('promotion: an object with finalize normalises to the string plus finalize: true, idempotently', async (t) => {
  const auto = roundTrip(t, { canary: 'canary', steps: [10], promotion: { mode: 'auto', finalize: true } })
  t.equal(auto.promotion, 'auto')
  t.equal(auto.finalize, true)
  const manual = roundTrip(t, { canary: 'canary', steps: [10], promotion: { mode: 'manual', finalize: true } })
  t.same({ promotion: manual.promotion, finalize: manual.finalize }, { promotion: 'manual', finalize: true })
  const noMode = roundTrip(t, { canary: 'canary', steps: [10], promotion: { finalize: true } })
  t.same({ promotion: noMode.promotion, finalize: noMode.finalize }, { promotion: 'auto', finalize: true }, 'mode defaults to auto')
  const off = roundTrip(t, { canary: 'canary', steps: [10], promotion: { mode: 'manual', finalize: false } })
  t.equal(off.promotion, 'manual')
  t.notOk('finalize' in off, 'finalize false is not written')
  t.notOk('finalize' in validatePlan({ canary: 'canary', steps: [10], promotion: 'auto' }, VERSIONS))
  t.same(validatePlan({ canary: 'canary', steps: [10], promotion: 'manual', finalize: true }, VERSIONS).finalize, true, 'the normalised (top-level) form is accepted as input')
  t.same(validatePlan(auto), auto, 'validating the normalised plan again (no route context) gives an equal plan')
  const bg = roundTrip(t, { canary: 'canary', strategy: 'blue-green', promotion: { mode: 'auto', finalize: true } })
  t.equal(bg.finalize, true, 'blue-green plans may finalize too')

  const rows: Array<[Record<string, unknown>, string[]]> = [
    [{ promotion: { mode: 'later' } }, ['promotion.mode: must be "auto" or "manual", got "later"']],
    [{ promotion: { mode: 'auto', finalize: 'yes' } }, ['promotion.finalize: must be true or false, got "yes"']],
    [{ promotion: { mode: 'auto', gate: true } }, ['promotion.gate: unknown key (allowed: mode, finalize)']],
    [{ finalize: 1 }, ['finalize: must be true or false, got 1']],
    [{ promotion: ['auto'] }, ['promotion: must be "auto", "manual" or {"mode": "auto", "finalize": true}, got ["auto"]']]
  ]
  for (const [raw, want] of rows) t.same(problemsOf({ canary: 'canary', steps: [10], ...raw }), want, JSON.stringify(raw))
})

t.test('a whole release plan (segments, shadow, finalize) validates again unchanged', async (t) => {
  const p = roundTrip(t, {
    canary: 'canary',
    steps: [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 10 }, 1, 10, 50, 100],
    intervalMs: 1000,
    shadow: { percent: 20, durationMs: 5000, methods: ['get'] },
    promotion: { mode: 'auto', finalize: true },
    webhooks: [{ url: 'http://127.0.0.1:9/hook' }]
  })
  t.same(p.steps, [{ segment: 'staff', weight: 100 }, { segment: 'kr', weight: 10 }, 1, 10, 50])
  t.same(p.shadow?.methods, ['GET'])
})

t.test('canary omitted: chosen on a stable/other pair, else a 400 saying what to add', async (t) => {
  t.equal(validatePlan({ steps: [10] }, ['stable', 'canary']).canary, 'canary', 'stable + canary → canary')
  t.equal(validatePlan({ steps: [10] }, ['canary', 'stable']).canary, 'canary', 'order does not matter')
  t.equal(validatePlan({ steps: [10] }, ['stable', 'green']).canary, 'green', 'the other version, whatever its name')
  t.equal(validatePlan({ steps: [10], stable: 'stable' }, ['stable', 'green']).canary, 'green', 'naming stable explicitly is fine')
  t.equal(validatePlan({ strategy: 'blue-green' }, ['stable', 'canary']).canary, 'canary', 'blue-green too')
  const chosen = validatePlan({ steps: [10] }, ['stable', 'canary'])
  t.same(validatePlan(JSON.parse(JSON.stringify(chosen))), chosen, 'the normalised plan names the canary and validates again')

  const three = problemsOf({ steps: [10] }, ['stable', 'canary', 'beta'])
  t.equal(three.length, 1, three.join('; '))
  t.match(three[0], /^canary: is required/)
  t.match(three[0], /stable, canary, beta/, 'lists the route\'s versions')
  t.match(three[0], /name the version to roll out/, 'says what to add')
  const noStable = problemsOf({ steps: [10] }, ['blue', 'green'])
  t.equal(noStable.length, 1, noStable.join('; '))
  t.match(noStable[0], /^canary: is required.*blue, green.*name the version to roll out/)
  t.match(noStable[0], /"stable"/, 'says which name would let it be left out')
  let bare: unknown
  try {
    validatePlan({ steps: [10] })
  } catch (err) {
    bare = err
  }
  t.same((bare as PlanError | undefined)?.problems, ['canary: is required: the name of the version to roll out'], 'without the route\'s versions it is simply required')
  try {
    validatePlan({ steps: [10] }, ['a', 'b', 'c'])
    t.fail('should throw')
  } catch (err) {
    t.ok(err instanceof PlanError)
    t.equal((err as PlanError).status, 400, 'a 400')
    t.match((err as PlanError).message, /canary: is required.*a, b, c/)
  }
})

t.test('a route\'s rollout block in config: the normalised plan is accepted again when the rollout starts', async (t) => {
  const route = (rollout: unknown, segments?: unknown[]): unknown => ({
    name: 'web',
    versions: [{ name: 'stable', upstream: 'http://127.0.0.1:1', weight: 100 }, { name: 'canary', upstream: 'http://127.0.0.1:2', weight: 0 }],
    ...(segments === undefined ? {} : { segments }),
    rollout
  })
  const staff = { name: 'staff', match: { header: { 'x-employee': 'true' } }, version: 'stable' }
  const blocks: Array<[string, unknown, unknown[] | undefined]> = [
    ['segment steps, canary left out', { steps: [{ segment: 'staff', weight: 100 }, 10, 50] }, [staff]],
    ['shadow + finalize', { steps: [10], shadow: { percent: 10, durationMs: 60_000 }, promotion: { mode: 'auto', finalize: true } }, undefined],
    ['blue-green', { strategy: 'blue-green', preview: { durationMs: 60_000 } }, undefined]
  ]
  for (const [what, block, segments] of blocks) {
    const c = configFromObject({ routes: [route(block, segments)] }, '', {})
    const plan = c.routes[0]!.rollout
    t.equal((plan as RolloutPlan).canary, 'canary', `${what}: canary chosen at config time`)
    // the manager validates the block once more when it starts it (startFromConfig → start)
    let again: unknown
    try {
      again = validatePlan(plan, VERSIONS, { segments: (c.routes[0]!.segments ?? []).map((s) => s.name) })
    } catch (err) {
      again = (err as Error).message
    }
    t.same(again, plan, `${what}: accepted again unchanged`)
  }
  t.throws(() => configFromObject({ routes: [route({ steps: [{ segment: 'nope', weight: 10 }, 20] }, [staff])] }, '', {}), /routes\[0\]\.rollout: .*steps\[0\]\.segment: "nope" is not a segment of the route \(staff\)/, 'segment steps are checked against the route\'s segments')
})
