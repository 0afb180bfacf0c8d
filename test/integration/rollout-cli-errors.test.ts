import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { PLAN, cli, planFile, setup } from '../rollout/cli-run.js'

// `canaryd rollout …` errors and admin tokens, spawned as `node dist/cli.js` against a real App.

t.test('errors: the server message and a non-zero exit', async (t) => {
  const p = await setup(t)
  const admin = ['--admin', p.adminUrl]
  const unknown = await cli(['status', 'nope', ...admin])
  t.equal(unknown.code, 1)
  t.match(unknown.stderr, /404 CANARYD_ERR_ROUTE_NOT_FOUND: no route named "nope"/)
  const none = await cli(['status', 'web', ...admin])
  t.equal(none.code, 1)
  t.match(none.stderr, /404 CANARYD_ERR_NO_ROLLOUT: route web has no rollout/)
  const bad = await cli(['start', 'web', '--plan', planFile('bad.json', JSON.stringify({ canary: 'canary', steps: [50, 10] })), ...admin])
  t.equal(bad.code, 1)
  t.match(bad.stderr, /400 CANARYD_ERR_INVALID_PLAN: .*steps\[1\]: must be greater than the step before \(50\), got 10/)
  t.same(p.app.state.weights('web'), { stable: 100, canary: 0 }, 'rejected calls changed nothing')

  const usage = await cli(['frobnicate', 'web', ...admin])
  t.equal(usage.code, 2)
  t.match(usage.stderr, /unknown rollout action "frobnicate"/)
  const noRoute = await cli(['status', ...admin])
  t.equal(noRoute.code, 2)
  t.match(noRoute.stderr, /a ROUTE is required/)

  const missing = await cli(['start', 'web', '--plan', join(tmpdir(), 'canaryd-no-such-plan.json'), ...admin])
  t.equal(missing.code, 2, 'an unreadable plan file is a usage error')
  t.match(missing.stderr, /^canaryd: cannot read plan .*canaryd-no-such-plan\.json/)
  t.notMatch(missing.stderr, /\n\s+at /, 'no stack trace')
  const garbled = await cli(['start', 'web', '--plan', planFile('p.json', '{"canary": '), ...admin])
  t.equal(garbled.code, 2)
  t.match(garbled.stderr, /^canaryd: cannot read plan .*p\.json/)
  t.notMatch(garbled.stderr, /\n\s+at /, 'no stack trace')

  const down = await cli(['status', 'web', '--admin', 'http://127.0.0.1:9'])
  t.equal(down.code, 1)
  t.match(down.stderr, /cannot reach the admin API at http:\/\/127\.0\.0\.1:9/)
  t.notMatch(down.stderr, /\n\s+at /, 'no stack trace')
})

t.test('--token and CANARYD_ADMIN_TOKEN with a token-protected admin', async (t) => {
  const token = 'rollout-cli-token-0123456789'
  const p = await setup(t, token)
  const admin = ['--admin', p.adminUrl]
  const file = planFile('plan.json', JSON.stringify(PLAN))

  const denied = await cli(['start', 'web', '--plan', file, ...admin])
  t.equal(denied.code, 1, 'no token → refused')
  t.match(denied.stderr, /401 CANARYD_ERR_UNAUTHORIZED/)
  const wrong = await cli(['status', 'web', ...admin, '--token', 'not-the-token'])
  t.equal(wrong.code, 1)
  t.match(wrong.stderr, /401 CANARYD_ERR_UNAUTHORIZED/)
  t.equal(p.app.rollouts.controller('web'), undefined, 'nothing started without the token')

  const start = await cli(['start', 'web', '--plan', file, ...admin, '--token', token])
  t.equal(start.code, 0, start.stderr)
  const status = await cli(['status', 'web', ...admin], { CANARYD_ADMIN_TOKEN: token })
  t.equal(status.code, 0, status.stderr)
  t.match(status.stdout, /route web: progressing/)
  const abort = await cli(['abort', 'web'], { CANARYD_ADMIN_URL: p.adminUrl, CANARYD_ADMIN_TOKEN: token })
  t.equal(abort.code, 0, abort.stderr)
  t.equal(p.app.rollouts.get('web').state, 'aborted')
})
