import t from 'tap'
import { formatRoutes, rolloutCell } from '../../src/commands/client.js'
import { formatRollout } from '../../src/commands/rollout.js'
import { runCli } from '../helpers/cli.js'
import { cli, planFile, setup } from '../rollout/cli-run.js'

// `rollout status` counts the promotion to 100 % as a step (a six-step plan is
// step n/6), and `status` says `promoted` only while the weights are still the
// promoted ones: the rollout record says `promoted` forever.

const body = (extra: Record<string, unknown>): Record<string, unknown> => ({
  route: 'web', state: 'progressing', canary: 'canary', step: 1, steps: [1, 5, 10, 25, 50], weight: 1, failedChecks: 0, reason: null, checks: [], ...extra
})

t.test('formatRollout: the denominator is every step, the promotion included', async (t) => {
  t.match(formatRollout(body({})), /^route web: progressing {2}canary canary at 1% {2}step 1\/6 \(1 → 5 → 10 → 25 → 50 → 100\)\n/)
  t.match(formatRollout(body({ step: 5, weight: 50 })), /step 5\/6 /)
  t.match(formatRollout(body({ state: 'promoted', step: 2, weight: 100 })), /promoted {2}canary canary at 100% {2}step 6\/6 /, 'promoted (even early, by an operator) is the last step')
  t.match(formatRollout(body({ state: 'rolled-back', step: 3, weight: 0 })), /rolled-back {2}canary canary at 0% {2}step 3\/6 /, 'a rollback stays at the step it failed')
})

t.test('rolloutCell: a finished rollout is only named while its weights hold', async (t) => {
  const v = (stable: number, canary: number): Array<{ name: string; weight: number }> => [{ name: 'stable', weight: stable }, { name: 'canary', weight: canary }]
  const summary = (state: string, step: number, weight: number): Record<string, unknown> => ({ state, canary: 'canary', step, steps: 5, weight, failedChecks: 0 })
  const cases: Array<[unknown, Array<{ name: string; weight: number }>, string]> = [
    [null, v(90, 10), '-'],
    [summary('progressing', 2, 5), v(95, 5), 'progressing (step 2/6)'],
    [summary('paused', 2, 5), v(70, 30), 'paused (step 2/6)'],
    [summary('awaiting-promotion', 5, 50), v(50, 50), 'awaiting-promotion (step 5/6)'],
    [summary('promoted', 1, 100), v(0, 100), 'promoted'],
    [summary('promoted', 1, 100), v(70, 30), 'promoted earlier; weights changed since'],
    [summary('rolled-back', 3, 0), v(100, 0), 'rolled-back'],
    [summary('rolled-back', 3, 0), v(90, 10), 'rolled-back earlier; weights changed since'],
    [summary('aborted', 1, 0), v(80, 20), 'aborted earlier; weights changed since']
  ]
  for (const [r, versions, want] of cases) t.equal(rolloutCell(r, versions), want, want)
  const table = formatRoutes([{ name: 'web', versions: [{ name: 'stable', upstream: 'http://s', weight: 70 }, { name: 'canary', upstream: 'http://c', weight: 30 }], rollout: summary('promoted', 1, 100) }])
  t.match(table, /^web +stable +70% +http:\/\/s +promoted earlier; weights changed since$/m)
})

t.test('a six-step plan through the CLI: start, promote, then a manual weight change', async (t) => {
  const p = await setup(t)
  const admin = ['--admin', p.adminUrl]
  const file = planFile('six.yaml', 'steps: [1, 5, 10, 25, 50, 100]\nintervalMs: 3600000\n')
  const start = await cli(['start', 'web', '--plan', file, '--canary', 'canary', ...admin])
  t.equal(start.code, 0, start.stderr)
  t.match(start.stdout, /step 1\/6 \(1 → 5 → 10 → 25 → 50 → 100\)/)
  const progressing = await runCli(['status', ...admin])
  t.match(progressing.stdout, /^web\s+stable\s+99%.*progressing \(step 1\/6\)$/m)

  const promote = await cli(['promote', 'web', ...admin])
  t.equal(promote.code, 0, promote.stderr)
  t.match(promote.stdout, /route web: promoted {2}canary canary at 100% {2}step 6\/6 /)
  const promoted = await runCli(['status', ...admin])
  t.match(promoted.stdout, /^web\s+stable\s+0%\s+\S+\s+promoted$/m, 'promoted while the canary has 100 %')
  const fresh = await cli(['status', 'web', ...admin])
  t.notMatch(fresh.stdout, /weights changed/)

  const w = await runCli(['weights', 'web', 'stable=70', 'canary=30', ...admin])
  t.equal(w.code, 0, w.stderr)
  const after = await runCli(['status', ...admin])
  t.match(after.stdout, /^web\s+stable\s+70%\s+\S+\s+promoted earlier; weights changed since$/m, 'no longer claims promoted')
  t.notMatch(after.stdout, /promoted \(step/)
  const rs = await cli(['status', 'web', ...admin])
  t.equal(rs.code, 0, rs.stderr)
  t.match(rs.stdout, /route web: promoted .* step 6\/6 /)
  t.match(rs.stdout, /^weights changed since the rollout ended: now stable 70%, canary 30%$/m)
})
