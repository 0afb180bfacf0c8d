import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { ManualClock } from '../../src/rollout/clock.js'
import { RolloutController, type RolloutRecord } from '../../src/rollout/controller.js'
import { validatePlan, type WebhookSpec } from '../../src/config/plan.js'
import { WebhookNotifier, type WebhookPayload } from '../../src/rollout/webhooks.js'
import { memoryHost } from './sim.js'

/** What a receiver got: one entry per POST (answered or not). */
interface Hit { method: string; path: string; contentType: string | undefined; body: WebhookPayload }

/**
 * A real webhook receiver on 127.0.0.1, port 0. `answer` returns a status to
 * answer with, or 'hang' to never answer (the request stays open until the
 * sender gives up or the server closes).
 */
async function receiver (t: Test, answer: (hit: Hit, n: number) => number | 'hang'): Promise<{ url: string; hits: Hit[]; open: () => number }> {
  const hits: Hit[] = []
  const pending = new Set<ServerResponse>()
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const hit: Hit = { method: req.method ?? '', path: req.url ?? '', contentType: req.headers['content-type'], body: JSON.parse(Buffer.concat(chunks).toString()) as WebhookPayload }
      hits.push(hit)
      const a = answer(hit, hits.length)
      if (a === 'hang') {
        pending.add(res)
        res.on('close', () => pending.delete(res))
        return
      }
      res.writeHead(a, { 'content-type': 'text/plain' })
      res.end('ok')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, hits, open: () => pending.size }
}

function hook (url: string, extra: Partial<WebhookSpec> = {}): WebhookSpec {
  return { type: 'event', url, events: ['started', 'step', 'rolled-back'], timeoutMs: 2000, retries: 2, ...extra }
}

/** A record as the controller would hand it over, at step 2 of 3 with one check. */
function record (): RolloutRecord {
  const plan = validatePlan({ canary: 'canary', steps: [10, 50, 90] }, ['stable', 'canary'])
  const figures = { requests: 120, failures: 1, successRate: 99.1667, p50Ms: 3, p99Ms: 9, sampled: 119, ejections: 0, stillEjected: false }
  return {
    v: 1,
    route: 'web',
    plan,
    stable: 'stable',
    versions: ['stable', 'canary'],
    state: 'progressing',
    stepIndex: 1,
    weight: 50,
    failedChecks: 1,
    startedAt: '2026-01-01T00:00:00.000Z',
    updatedAt: '2026-01-01T00:01:00.000Z',
    checks: [{ at: '2026-01-01T00:01:00.000Z', step: 1, weight: 10, failedChecks: 1, verdict: 'fail', reasons: ['canary success rate 99.1667% is below 99.5%'], canary: figures, stable: figures }],
    history: []
  }
}

t.test('the POST body is Slack-compatible text plus structured fields', async (t) => {
  const r = await receiver(t, () => 200)
  const n = new WebhookNotifier({ backoffMs: 10 })
  n.notify([hook(r.url)], 'step', record(), 'rollout of canary on web: step 2/3, 50%')
  await n.idle()
  t.equal(r.hits.length, 1, 'one POST, no retry after a 2xx')
  const h = r.hits[0]!
  t.equal(h.method, 'POST')
  t.equal(h.path, '/hook')
  t.match(h.contentType, /^application\/json/)
  t.equal(h.body.text, 'rollout of canary on web: step 2/3, 50%', 'Slack reads `text`')
  t.match(h.body, { event: 'step', route: 'web', canary: 'canary', stable: 'stable', state: 'progressing', step: 2, steps: 3, weight: 50, failedChecks: 1, reason: null, startedAt: '2026-01-01T00:00:00.000Z' })
  t.ok(!Number.isNaN(Date.parse(h.body.at)), '`at` is a timestamp')
  t.equal(h.body.lastCheck?.verdict, 'fail', 'the latest check travels with the event')
  t.equal(h.body.lastCheck?.canary.requests, 120)

  const rolled = { ...record(), state: 'rolled-back' as const, weight: 0, reason: '3 failed checks' }
  n.notify([hook(r.url)], 'rolled-back', rolled, 'rolled back')
  await n.idle()
  t.match(r.hits[1]?.body, { event: 'rolled-back', state: 'rolled-back', weight: 0, reason: '3 failed checks' })
})

t.test('only subscribed events are sent, and confirm-promotion gates get no events', async (t) => {
  const a = await receiver(t, () => 204)
  const b = await receiver(t, () => 204)
  const g = await receiver(t, () => 204)
  const n = new WebhookNotifier({ backoffMs: 10 })
  const hooks = [hook(a.url, { events: ['rolled-back'] }), hook(b.url, { events: ['started', 'step'] }), { ...hook(g.url), type: 'confirm-promotion' as const, events: [] }]
  for (const e of ['started', 'step', 'check-failed', 'paused', 'rolled-back'] as const) n.notify(hooks, e, record(), e)
  await n.idle()
  t.same(a.hits.map((h) => h.body.event), ['rolled-back'])
  t.same(b.hits.map((h) => h.body.event).sort(), ['started', 'step'])
  t.equal(g.hits.length, 0, 'the gate is asked only before a promotion')
})

t.test('a 5xx is retried up to `retries` times, then given up; a 4xx is not retried', async (t) => {
  const r = await receiver(t, (_h, i) => i < 3 ? 503 : 200)
  const n = new WebhookNotifier({ backoffMs: 10 })
  n.notify([hook(r.url, { retries: 3 })], 'step', record(), 'x')
  await n.idle()
  t.equal(r.hits.length, 3, '503, 503, then 200: stops at the first 2xx')

  const down = await receiver(t, () => 502)
  n.notify([hook(down.url, { retries: 2 })], 'step', record(), 'x')
  await n.idle()
  t.equal(down.hits.length, 3, 'one attempt + 2 retries, then given up')

  const refused = await receiver(t, () => 404)
  n.notify([hook(refused.url, { retries: 2 })], 'step', record(), 'x')
  await n.idle()
  t.equal(refused.hits.length, 1, 'a 404 will not get better by retrying')

  const limited = await receiver(t, (_h, i) => i === 1 ? 429 : 200)
  n.notify([hook(limited.url, { retries: 2 })], 'step', record(), 'x')
  await n.idle()
  t.equal(limited.hits.length, 2, 'a 429 is retried')
})

t.test('a webhook that never answers is abandoned after its timeout and retried', async (t) => {
  const r = await receiver(t, () => 'hang')
  const n = new WebhookNotifier({ backoffMs: 10 })
  n.notify([hook(r.url, { timeoutMs: 150, retries: 2 })], 'step', record(), 'x')
  // idle() resolving at all proves each attempt was abandoned: the receiver never answers
  await n.idle()
  t.equal(r.hits.length, 3, 'first attempt + 2 retries, each cut at its timeout')
  // the sender closed its side of every abandoned attempt
  for (let i = 0; i < 50 && r.open() > 0; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(r.open(), 0, 'no connection left open by abandoned attempts')
})

t.test('confirm(): 2xx says yes; non-2xx, a timeout or a dead receiver say no', async (t) => {
  const n = new WebhookNotifier({ backoffMs: 10 })
  const gate = (url: string, timeoutMs = 2000): WebhookSpec => ({ type: 'confirm-promotion', url, events: [], timeoutMs, retries: 2 })
  const yes = await receiver(t, () => 204)
  const ok = await n.confirm(gate(yes.url), record())
  t.same(ok, { ok: true, detail: 'HTTP 204' })
  t.equal(yes.hits[0]?.body.event, 'confirm-promotion')
  t.match(yes.hits[0]?.body.text, /asking to promote/)
  t.equal(yes.hits.length, 1, 'asked once')

  const no = await receiver(t, () => 503)
  t.same(await n.confirm(gate(no.url), record()), { ok: false, detail: 'HTTP 503' })
  t.equal(no.hits.length, 1, 'the gate is not retried within one check (asked again next interval)')
  const redirect = await receiver(t, () => 302)
  t.equal((await n.confirm(gate(redirect.url), record())).ok, false, 'a 3xx is not a yes')

  const slow = await receiver(t, () => 'hang')
  const timedOut = await n.confirm(gate(slow.url, 150), record())
  t.equal(timedOut.ok, false, 'no answer within the timeout holds')
  t.not(timedOut.detail, '', 'with a reason')

  const dead = await n.confirm(gate('http://127.0.0.1:9/gate'), record())
  t.equal(dead.ok, false, 'connection refused holds')
})

t.test('a hanging webhook never blocks the controller: steps and rollback go on', async (t) => {
  const r = await receiver(t, () => 'hang')
  const clock = new ManualClock()
  const applied: Array<{ weights: Record<string, number>; reason: string }> = []
  const persisted: RolloutRecord[] = []
  const n = new WebhookNotifier({ backoffMs: 10 })
  const plan = validatePlan({
    canary: 'canary',
    steps: [10, 50],
    intervalMs: 1000,
    analysis: { minRequests: 10, maxFailedChecks: 1, successRate: { min: 99 }, baseline: { judge: 'none' } },
    // a long timeout: the hook is still hanging on every event while the test runs
    webhooks: [{ url: r.url, timeoutMs: 60_000, retries: 0 }]
  }, ['stable', 'canary'])
  const c = await RolloutController.start('web', plan, 'stable', ['stable', 'canary'], { host: memoryHost(applied, persisted), clock, notifier: n })
  t.teardown(() => c.close())
  const traffic = (status: number): void => {
    for (let i = 0; i < 20; i++) { c.windows.canary.record(status, 0.005, false); c.windows.stable.record(200, 0.005, false) }
  }
  traffic(200)
  await clock.advance(1000)
  t.equal(c.record.stepIndex, 1, 'step 2 reached while the `started` webhook still hangs')
  traffic(500)
  await clock.advance(1000)
  t.equal(c.state, 'rolled-back', 'rolled back while webhooks still hang')
  t.same(applied.at(-1)?.weights, { stable: 100, canary: 0 })
  // the receiver got every event, and answered none of them
  for (let i = 0; i < 100 && r.hits.length < 3; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(r.hits.map((h) => h.body.event), ['started', 'step', 'rolled-back'])
  t.equal(r.open(), 3, 'all three deliveries are still waiting for an answer')
})
