import t from 'tap'
import { runDemo } from '../../src/demo.js'

// The demo's story (issue 18), in-process with its intervals shortened: real
// services, proxy and admin API on 127.0.0.1, real user traffic through the
// proxy, the real judge. A healthy build must be promoted through 1, 10 and
// 50 %, and a build that answers 500 to 8 % of requests rolled back for it.

t.test('the story: a healthy build promoted through 1 → 10 → 50, a failing one rolled back by the judge', async (t) => {
  const lines: string[] = []
  const start = performance.now()
  const story = await runDemo({
    once: true,
    usualPorts: false,
    out: (l) => { lines.push(l) },
    story: { intervalMs: 1000, rps: 800, minRequests: 40, timeoutMs: 25_000, judgeLatency: false }
  })
  const took = performance.now() - start
  const timeline = lines.join('\n')
  t.comment(`story took ${((story?.ms ?? 0) / 1000).toFixed(1)} s (the demo ${(took / 1000).toFixed(1)} s)`)
  t.ok(story !== undefined, 'the story ran')
  if (story === undefined) return
  t.ok(took < 60_000, `bounded: ${Math.round(took)} ms`)

  const { healthy, faulty } = story
  t.equal(healthy.state, 'promoted', `release 1 promoted (${healthy.reason ?? ''})`)
  t.equal(healthy.finalized, true, 'finalized: stable took the new build')
  const moved = healthy.history.filter((e) => e.event === 'started' || e.event === 'step').map((e) => e.weight)
  t.same(moved, [1, 10, 50], 'through 1, 10 and 50 % (history)')
  t.ok(healthy.checks.filter((c) => c.verdict === 'pass').length >= 3, 'a passed check at each step')

  t.equal(faulty.state, 'rolled-back', 'release 2 rolled back')
  t.match(faulty.reason, /failed checks \(maxFailedChecks 2\); last: .*(success rate|error rate)/, `the reason names the success/error rate: ${faulty.reason ?? ''}`)
  t.equal(faulty.weight, 0, 'canary back at 0 %')
  t.ok(faulty.checks.some((c) => c.verdict === 'fail' && c.canary.successRate < 99), 'a failed check with the canary below 99 % success')
  t.notOk(faulty.history.some((e) => e.event === 'promoted'), 'never promoted')
  t.equal(story.traffic.failed.stable ?? 0, 0, 'no user request failed on stable')
  t.ok((story.traffic.failed.canary ?? 0) > 0, 'the failing build\'s 500s reached some canary users')

  // the printed timeline: where to watch, each step, the checks' figures, both outcomes
  const dashboard = lines.findIndex((l) => /^dashboard: http:\/\/127\.0\.0\.1:\d+\/ui\/#\/routes\/web\b/.test(l))
  t.ok(dashboard !== -1 && dashboard < lines.findIndex((l) => l.startsWith('The story')), 'the dashboard\'s URL is printed at the start, before the story')
  t.match(timeline, /rollout status web --admin http:\/\/127\.0\.0\.1:\d+/, 'where to watch')
  t.match(timeline, /user traffic: 800 req\/s from 5,000 users/)
  t.match(timeline, /release 1: build 2 \(healthy\)/)
  t.match(timeline, /started: canary at 1% \(step 1\/4\)/)
  t.match(timeline, /step 2\/4: canary at 10%/)
  t.match(timeline, /step 3\/4: canary at 50%/)
  t.match(timeline, /check at 1%: canary \d+ req, [\d.]+% ok, p99 [\d.]+ ms \| stable [\d,]+ req, [\d.]+% ok, p99 [\d.]+ ms → pass/)
  t.match(timeline, /PROMOTED: all steps passed; finalized/)
  t.match(timeline, /release 2: build 3/)
  t.match(timeline, /→ FAIL \(1\/2\)\n +canary success rate [\d.]+% is below 99%/)
  t.match(timeline, /ROLLED BACK: 2 failed checks/)
  t.match(timeline, /Verdict: build 2 promoted \(finalized\), build 3 rolled-back/)
  const order = ['started: canary at 1%', 'step 2/4', 'step 3/4', 'PROMOTED', 'release 2', 'ROLLED BACK', 'Verdict'].map((s) => timeline.indexOf(s))
  t.same(order, [...order].sort((a, b) => a - b), 'in the order it happened')
})
