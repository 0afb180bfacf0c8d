import t from 'tap'
import { expandStepWeight, PlanError, validatePlan } from '../../src/config/plan.js'
import { configFromObject } from '../../src/config/load.js'

t.test('the issue example validates; 100 becomes the promotion', async (t) => {
  const p = validatePlan({ canary: 'canary', steps: [1, 5, 10, 25, 50, 100], intervalMs: 60000, analysis: { minRequests: 200, maxFailedChecks: 3, successRate: { min: 99 }, latencyP99Ms: { max: 500 }, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 1.5, judge: 'mann-whitney' } }, promotion: 'auto', webhooks: [{ url: 'http://hooks.example/x', events: ['started', 'step', 'paused', 'rolled-back', 'promoted'] }] }, ['stable', 'canary'])
  t.same(p.steps, [1, 5, 10, 25, 50])
  t.equal(p.analysis.baseline.confidence, 0.99)
  t.same(validatePlan(p), p, 'validating a normalised plan is idempotent')
})

t.test('stepWeight + maxWeight (Flagger style)', async (t) => {
  t.same(expandStepWeight(10, 50), [10, 20, 30, 40, 50])
  t.same(expandStepWeight(0.1, 0.3), [0.1, 0.2, 0.3])
  t.same(validatePlan({ canary: 'c', stepWeight: 20, maxWeight: 100 }).steps, [20, 40, 60, 80])
  t.same(validatePlan({ canary: 'c', stepWeight: 30, maxWeight: 50 }).steps, [30, 50])
})

t.test('invalid plans list every problem', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ canary: 'c', steps: [10, 5] }, /steps\[1\]: must be greater/],
    [{ canary: 'c', steps: [0, 5] }, /steps\[0\]: must be > 0/],
    [{ canary: 'c', steps: [100] }, /at least one step below 100/],
    [{ canary: 'c', steps: [10], stepWeight: 5 }, /not both/],
    [{ steps: [10], stable: 'c' }, /canary: is required/],
    [{ canary: 'x', steps: [10] }, /not a version of the route/],
    [{ canary: 'c', steps: [10], intervalMs: 5 }, /intervalMs: must be >= 100/],
    [{ canary: 'c', steps: [10], promotion: 'later' }, /promotion/],
    [{ canary: 'c', steps: [10], analysis: { baseline: { judge: 't-test' } } }, /judge/],
    [{ canary: 'c', steps: [10], webhooks: [{ url: 'ftp://x' }] }, /webhooks\[0\]\.url/],
    [{ canary: 'c', steps: [10], webhooks: [{ url: 'http://x', events: ['nope'] }] }, /unknown event/],
    [{ canary: 'c', steps: [10], bogus: 1 }, /bogus: unknown key/]
  ]
  for (const [raw, re] of cases) {
    t.throws(() => validatePlan(raw, ['stable', 'c']), re, JSON.stringify(raw))
  }
  try {
    validatePlan({ canary: 'c', steps: [10, 5], intervalMs: 1 }, ['stable', 'c'])
    t.fail('should throw')
  } catch (err) {
    t.ok(err instanceof PlanError)
    t.equal((err as PlanError).status, 400)
    t.equal((err as PlanError).problems.length, 2, 'both problems reported')
  }
})

/** The problems validatePlan reports for `raw` on a route with versions stable and c ([] when valid). */
function problemsOf (raw: unknown): string[] {
  try {
    validatePlan(raw, ['stable', 'c'])
    return []
  } catch (err) {
    if (!(err instanceof PlanError)) throw err
    return err.problems
  }
}

const OK = { canary: 'c', steps: [10] }

t.test('every section reports its own problems, with the key path', async (t) => {
  const cases: Record<string, Array<[unknown, string[]]>> = {
    plan: [
      [null, ['plan: must be an object (a JSON object or a YAML mapping)']],
      [[OK], ['plan: must be an object (a JSON object or a YAML mapping)']],
      [{ ...OK, bogus: 1 }, ['bogus: unknown key (allowed: canary, stable, strategy, steps, stepWeight, maxWeight, intervalMs, analysis, shadow, preview, rollbackWindowMs, promotion, finalize, webhooks)']]
    ],
    versions: [
      [{ ...OK, canary: '' }, ['canary: is required: the name of the version to roll out']],
      [{ ...OK, stable: 3 }, ['stable: must be a version name']],
      [{ ...OK, stable: 'x' }, ['stable: "x" is not a version of the route (stable, c)']],
      [{ ...OK, stable: 'c' }, ['stable: must differ from canary']]
    ],
    steps: [
      [{ canary: 'c' }, ['steps: is required (or stepWeight + maxWeight)']],
      [{ canary: 'c', steps: [] }, ['steps: must be a non-empty array of canary weights (percent)']],
      [{ canary: 'c', steps: Array.from({ length: 101 }, (_, i) => (i + 1) / 2) }, ['steps: at most 100 steps']],
      [{ canary: 'c', steps: [10, 101, 'x'] }, ['steps[1]: must be between 0 and 100, got 101', 'steps[2]: must be a number, got "x"']],
      [{ canary: 'c', steps: [10, 20, 20] }, ['steps[2]: must be greater than the step before (20), got 20']],
      [{ canary: 'c', stepWeight: 60, maxWeight: 50 }, ['stepWeight: must be <= maxWeight (50), got 60']],
      [{ canary: 'c', stepWeight: 0.5 }, ['stepWeight: gives more than 100 steps up to 100']],
      [{ canary: 'c', stepWeight: 0.00001 }, ['stepWeight: must have at most 4 decimals, got 0.00001']],
      [{ canary: 'c', stepWeight: 0 }, ['stepWeight: must be > 0, got 0']],
      [{ canary: 'c', maxWeight: 50 }, ['stepWeight: must be a number, got undefined']],
      [{ canary: '', steps: [100] }, ['canary: is required: the name of the version to roll out']]
    ],
    interval: [
      [{ ...OK, intervalMs: 1500.5 }, ['intervalMs: must be a whole number, got 1500.5']],
      [{ ...OK, intervalMs: 86_400_001 }, ['intervalMs: must be <= 86400000, got 86400001']],
      [{ ...OK, intervalMs: '1m' }, ['intervalMs: must be a number, got "1m"']]
    ],
    analysis: [
      [{ ...OK, analysis: [] }, ['analysis: must be an object']],
      [{ ...OK, analysis: { window: 5 } }, ['analysis.window: unknown key (allowed: minRequests, maxFailedChecks, successRate, latencyP99Ms, baseline, metrics, variables, loadTest)']],
      [{ ...OK, analysis: { minRequests: 0, maxFailedChecks: 1001 } }, ['analysis.minRequests: must be >= 1, got 0', 'analysis.maxFailedChecks: must be <= 1000, got 1001']],
      [{ ...OK, analysis: { successRate: 99 } }, ['analysis.successRate: must be an object like {"min": 99}']],
      [{ ...OK, analysis: { successRate: { min: 101, max: 1 } } }, ['analysis.successRate.max: unknown key (allowed: min)', 'analysis.successRate.min: must be <= 100, got 101']],
      [{ ...OK, analysis: { latencyP99Ms: 500 } }, ['analysis.latencyP99Ms: must be an object like {"max": 500}']],
      [{ ...OK, analysis: { latencyP99Ms: { max: 0 } } }, ['analysis.latencyP99Ms.max: must be > 0, got 0']],
      [{ ...OK, analysis: { baseline: 'strict' } }, ['analysis.baseline: must be an object']],
      [{ ...OK, analysis: { baseline: { maxErrorRateRatio: 0.5, maxLatencyP99Ratio: 'x', confidence: 1, judge: 't-test', k: 1 } } }, [
        'analysis.baseline.k: unknown key (allowed: maxErrorRateRatio, maxLatencyP99Ratio, judge, confidence)',
        'analysis.baseline.maxErrorRateRatio: must be >= 1, got 0.5',
        'analysis.baseline.maxLatencyP99Ratio: must be a number, got "x"',
        'analysis.baseline.confidence: must be < 1, got 1',
        'analysis.baseline.judge: must be one of mann-whitney, ratio, none, sequential, got "t-test"'
      ]]
    ],
    promotion: [
      [{ ...OK, promotion: 'later' }, ['promotion: must be "auto", "manual" or {"mode": "auto", "finalize": true}, got "later"']],
      [{ ...OK, promotion: true }, ['promotion: must be "auto", "manual" or {"mode": "auto", "finalize": true}, got true']]
    ],
    webhooks: [
      [{ ...OK, webhooks: { url: 'http://x' } }, ['webhooks: must be an array']],
      [{ ...OK, webhooks: Array(11).fill({ url: 'http://x' }) }, ['webhooks: at most 10']],
      [{ ...OK, webhooks: ['http://x'] }, ['webhooks[0]: must be an object with url']],
      [{ ...OK, webhooks: [{ type: 'slack', url: 'http://x' }] }, ['webhooks[0].type: must be "event" or "confirm-promotion", got "slack"']],
      [{ ...OK, webhooks: [{ type: 'confirm-promotion', url: 'http://a' }, { type: 'confirm-promotion', url: 'http://b' }] }, ['webhooks[1].type: only one confirm-promotion gate per plan']],
      [{ ...OK, webhooks: [{ type: 'confirm-promotion', url: 'http://a', events: ['step'] }] }, ['webhooks[0].events: a confirm-promotion gate has no events']],
      [{ ...OK, webhooks: [{ url: 'http://a', events: [] }] }, ['webhooks[0].events: must be a non-empty array of started, step, check-failed, paused, resumed, awaiting-promotion, promoted, rolled-back, aborted']],
      [{ ...OK, webhooks: [{ url: 'http://a', events: ['step', 3] }] }, ['webhooks[0].events[1]: unknown event 3 (known: started, step, check-failed, paused, resumed, awaiting-promotion, promoted, rolled-back, aborted)']],
      [{ ...OK, webhooks: [{ url: 42 }] }, ['webhooks[0].url: must be an http:// or https:// URL, got 42']],
      [{ ...OK, webhooks: [{ url: 'http://a', timeoutMs: 0, retries: 6, secret: 'x' }] }, [
        'webhooks[0].secret: unknown key (allowed: type, url, events, timeoutMs, retries)',
        'webhooks[0].timeoutMs: must be >= 1, got 0',
        'webhooks[0].retries: must be <= 5, got 6'
      ]]
    ]
  }
  for (const [section, rows] of Object.entries(cases)) {
    for (const [raw, want] of rows) t.same(problemsOf(raw), want, `${section}: ${JSON.stringify(raw)?.slice(0, 120)}`)
  }
  t.same(problemsOf({ canary: '', steps: [100], promotion: 'x', webhooks: 1 }), [
    'canary: is required: the name of the version to roll out',
    'promotion: must be "auto", "manual" or {"mode": "auto", "finalize": true}, got "x"',
    'webhooks: must be an array'
  ], 'sections report in key order, and "no step below 100" waits until nothing else is wrong')
})

t.test('defaults fill every section, and what is given is normalised', async (t) => {
  const p = validatePlan({ canary: 'c', steps: [10, 50], webhooks: [{ url: 'http://hooks.example', events: ['step', 'step', 'promoted'] }] })
  t.same(p, {
    canary: 'c',
    steps: [10, 50],
    intervalMs: 60_000,
    analysis: { minRequests: 100, maxFailedChecks: 3, baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: 1.5, judge: 'mann-whitney', confidence: 0.99 } },
    promotion: 'auto',
    webhooks: [{ type: 'event', url: 'http://hooks.example/', events: ['step', 'promoted'], timeoutMs: 5000, retries: 2 }]
  })
  t.same(validatePlan({ ...OK, webhooks: [{ url: 'http://a' }] }).webhooks[0]!.events.length, 9, 'an event webhook without events gets them all')
})

t.test('a plan with a confirm-promotion gate validates again unchanged (as on restart from the state file)', async (t) => {
  const p = validatePlan({ ...OK, webhooks: [{ type: 'confirm-promotion', url: 'http://gate.example/ok' }] })
  t.same(p.webhooks, [{ type: 'confirm-promotion', url: 'http://gate.example/ok', events: [], timeoutMs: 5000, retries: 2 }])
  t.same(validatePlan(JSON.parse(JSON.stringify(p))), p, 'the persisted form is accepted: events [] means none')
})

t.test('a rollout block on a route in config is validated with the plan validator', async (t) => {
  const route = (rollout: unknown): unknown => ({ name: 'web', versions: [{ name: 'stable', upstream: 'http://127.0.0.1:1', weight: 100 }, { name: 'canary', upstream: 'http://127.0.0.1:2', weight: 0 }], rollout })
  const c = configFromObject({ routes: [route({ canary: 'canary', stepWeight: 25, maxWeight: 100 })] }, '', {})
  t.same((c.routes[0]!.rollout as { steps: number[] }).steps, [25, 50, 75])
  t.throws(() => configFromObject({ routes: [route({ canary: 'nope', steps: [10] })] }, '', {}), /routes\[0\]\.rollout: canary/)
})
