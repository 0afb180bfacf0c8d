import t from 'tap'
import { expandStepWeight, PlanError, validatePlan } from '../../src/rollout/plan.js'
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
    [{ steps: [10] }, /canary: is required/],
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

t.test('a rollout block on a route in config is validated with the plan validator', async (t) => {
  const route = (rollout: unknown): unknown => ({ name: 'web', versions: [{ name: 'stable', upstream: 'http://127.0.0.1:1', weight: 100 }, { name: 'canary', upstream: 'http://127.0.0.1:2', weight: 0 }], rollout })
  const c = configFromObject({ routes: [route({ canary: 'canary', stepWeight: 25, maxWeight: 100 })] }, '', {})
  t.same((c.routes[0]!.rollout as { steps: number[] }).steps, [25, 50, 75])
  t.throws(() => configFromObject({ routes: [route({ canary: 'nope', steps: [10] })] }, '', {}), /routes\[0\]\.rollout: canary/)
})
