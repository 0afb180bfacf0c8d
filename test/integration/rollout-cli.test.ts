import t from 'tap'
import { PLAN, cli, planFile, setup } from '../rollout/cli-run.js'

// `canaryd rollout …` spawned as `node dist/cli.js` against a real App (helpers: test/rollout/cli-run.ts).

t.test('start --plan, status, pause, resume, abort', async (t) => {
  const p = await setup(t)
  const admin = ['--admin', p.adminUrl]
  const file = planFile('plan.json', JSON.stringify(PLAN))

  const start = await cli(['start', 'web', '--plan', file, ...admin])
  t.equal(start.code, 0, start.stderr)
  t.match(start.stdout, /route web: progressing {2}canary canary at 5% {2}step 1\/4 \(5 → 25 → 50 → 100\)/)
  t.same(p.app.state.weights('web'), { stable: 95, canary: 5 }, 'the first step is live')
  t.equal(p.app.rollouts.get('web').plan.intervalMs, 3_600_000, 'the plan file was used')

  const again = await cli(['start', 'web', '--plan', file, ...admin])
  t.equal(again.code, 1, 'second start → non-zero exit')
  t.match(again.stderr, /409 CANARYD_ERR_ROLLOUT_CONFLICT: route web already has a rollout progressing/, 'prints the server message')
  t.equal(again.stdout, '')

  const status = await cli(['status', 'web'], { CANARYD_ADMIN_URL: p.adminUrl })
  t.equal(status.code, 0, status.stderr)
  t.match(status.stdout, /^route web: progressing {2}canary canary at 5% {2}step 1\/4/)
  t.match(status.stdout, /failed checks 0/)

  const json = await cli(['status', 'web', '--json', ...admin])
  t.equal(json.code, 0, json.stderr)
  t.match(JSON.parse(json.stdout), { route: 'web', state: 'progressing', step: 1, weight: 5, steps: [5, 25, 50] })

  const pause = await cli(['pause', 'web', ...admin])
  t.equal(pause.code, 0, pause.stderr)
  t.match(pause.stdout, /route web: paused {2}canary canary at 5%/)
  t.equal(p.app.rollouts.get('web').state, 'paused')
  const pause2 = await cli(['pause', 'web', ...admin])
  t.equal(pause2.code, 1)
  t.match(pause2.stderr, /409 CANARYD_ERR_ROLLOUT_CONFLICT: cannot pause the rollout of route web: it is paused/)

  const resume = await cli(['resume', 'web', ...admin])
  t.equal(resume.code, 0, resume.stderr)
  t.match(resume.stdout, /route web: progressing/)
  t.same(p.app.state.weights('web'), { stable: 95, canary: 5 }, 'pause and resume hold the weight')

  const abort = await cli(['abort', 'web', ...admin])
  t.equal(abort.code, 0, abort.stderr)
  t.match(abort.stdout, /route web: aborted {2}canary canary at 0%/)
  t.match(abort.stdout, /reason: aborted by operator/)
  t.same(p.app.state.weights('web'), { stable: 100, canary: 0 }, 'abort puts the canary at 0')
  const after = await cli(['resume', 'web', ...admin])
  t.equal(after.code, 1, 'an aborted rollout cannot resume')
  t.match(after.stderr, /it is aborted/)
})

t.test('start with a YAML plan and --canary, then promote', async (t) => {
  const p = await setup(t)
  const admin = ['--admin', p.adminUrl]
  const file = planFile('plan.yaml', 'steps: [10, 40]\nintervalMs: 3600000\npromotion: manual\n')
  const start = await cli(['start', 'web', '--plan', file, '--canary', 'canary', ...admin])
  t.equal(start.code, 0, start.stderr)
  t.match(start.stdout, /canary canary at 10% {2}step 1\/3/)
  const promote = await cli(['promote', 'web', ...admin])
  t.equal(promote.code, 0, promote.stderr)
  t.match(promote.stdout, /route web: promoted {2}canary canary at 100%/)
  t.notMatch(promote.stdout, /held/)
  t.same(p.app.state.weights('web'), { stable: 0, canary: 100 })
})
