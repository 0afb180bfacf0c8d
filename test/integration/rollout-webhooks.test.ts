import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { adminJson as admin, startProxy, testConfig, twoVersionRoute, type TestProxy } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

// Webhooks through a real App: real upstreams, real traffic through the
// proxy, real receivers. Checks pass on traffic alone (judge `none`, small
// minRequests), so short intervals move the rollout in a second or two.

interface Receiver { url: string; events: string[]; open: () => number }

/** A webhook receiver on 127.0.0.1:0; `answer` gives the status, or 'hang' to never answer. */
async function receiver (t: Test, answer: (event: string) => number | 'hang'): Promise<Receiver> {
  const events: string[] = []
  const pending = new Set<ServerResponse>()
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const event = (JSON.parse(Buffer.concat(chunks).toString()) as { event: string }).event
      events.push(event)
      const a = answer(event)
      if (a === 'hang') {
        pending.add(res)
        res.on('close', () => pending.delete(res))
        return
      }
      res.writeHead(a).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, events, open: () => pending.size }
}

/**
 * Sends real traffic (4 clients, distinct user ids) until `until` says so
 * (checked on the rollout's GET body every 100 ms) or 15 s pass; returns the last body.
 */
async function driveUntil (p: TestProxy, until: (r: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 15_000
  let done = false
  let last: Record<string, unknown> = {}
  let user = 0
  const client = async (): Promise<void> => {
    while (!done && Date.now() < deadline) await (await request(`${p.url}/x`, { headers: { 'x-user-id': `u${user++}` } })).body.dump()
  }
  const watcher = async (): Promise<void> => {
    while (!done && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      last = (await admin(p, 'GET', '/api/v1/routes/web/rollout')).json
      if (until(last)) done = true
    }
    done = true
  }
  await Promise.all([watcher(), ...Array.from({ length: 4 }, client)])
  return last
}

const ANALYSIS = { minRequests: 5, maxFailedChecks: 1, baseline: { judge: 'none' } }

async function setup (t: Test): Promise<TestProxy> {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const p = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [100, 0])]))
  t.teardown(async () => { await p.close(); await stable.close(); await canary.close() })
  return p
}

t.test('a webhook that never answers blocks neither the steps nor the admin API', async (t) => {
  const hook = await receiver(t, () => 'hang')
  const p = await setup(t)
  const plan = {
    canary: 'canary',
    steps: [10, 50],
    intervalMs: 200,
    analysis: ANALYSIS,
    promotion: 'manual',
    // longer than the test: every delivery is still hanging when the next event happens
    webhooks: [{ url: hook.url, timeoutMs: 60_000, retries: 0 }]
  }
  const started = await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)
  t.equal(started.status, 201, 'start answers while the `started` webhook hangs')

  const r = await driveUntil(p, (b) => b.state === 'awaiting-promotion')
  t.equal(r.state, 'awaiting-promotion', 'every step passed while webhooks hang')
  t.equal(r.weight, 50)
  t.ok(hook.open() >= 2, `deliveries are still waiting for an answer (${hook.open()})`)
  t.same(hook.events.slice(0, 2), ['started', 'step'], 'the hanging receiver got each event')

  const aborted = await admin(p, 'POST', '/api/v1/routes/web/rollout/abort')
  t.equal(aborted.status, 200, 'abort answers while webhooks hang')
  t.equal(aborted.json.state, 'aborted')
  t.same(p.app.state.weights('web'), { stable: 100, canary: 0 }, 'canary back to 0 without waiting for webhooks')
  const health = await request(`${p.adminUrl}/healthz`)
  await health.body.dump()
  t.equal(health.statusCode, 200)
  for (let i = 0; i < 100 && !hook.events.includes('aborted'); i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.ok(hook.events.includes('aborted'), 'the abort was sent too')
  t.ok(hook.open() >= 3, 'and all of them are still unanswered')
})

t.test('confirm-promotion gate: non-2xx holds the rollout, 2xx lets it promote', async (t) => {
  let allow = false
  const gate = await receiver(t, () => allow ? 200 : 503)
  const events = await receiver(t, () => 204)
  const p = await setup(t)
  const plan = {
    canary: 'canary',
    steps: [50],
    intervalMs: 200,
    analysis: ANALYSIS,
    webhooks: [{ type: 'confirm-promotion', url: gate.url, timeoutMs: 5000 }, { url: events.url, events: ['promoted'] }]
  }
  t.equal((await admin(p, 'POST', '/api/v1/routes/web/rollout', plan)).status, 201)

  const held = await driveUntil(p, (b) => typeof b.reason === 'string' && b.reason.includes('confirm-promotion'))
  t.equal(held.state, 'progressing', 'held, not promoted')
  t.equal(held.weight, 50, 'at the last step')
  t.match(held.reason, /held by confirm-promotion gate: HTTP 503/)
  t.ok(gate.events.length >= 1 && gate.events.every((e) => e === 'confirm-promotion'), 'the gate was asked')
  t.same(p.app.state.weights('web'), { stable: 50, canary: 50 })

  const manual = await admin(p, 'POST', '/api/v1/routes/web/rollout/promote')
  t.equal(manual.status, 202, 'an operator promote is held by the gate too')
  t.equal(manual.json.held, true)
  t.equal(manual.json.state, 'progressing')
  t.equal(events.events.length, 0, 'no `promoted` event while held')

  allow = true
  const done = await driveUntil(p, (b) => b.state !== 'progressing')
  t.equal(done.state, 'promoted', 'the gate said yes: promoted')
  t.equal(done.weight, 100)
  t.same(p.app.state.weights('web'), { stable: 0, canary: 100 })
  for (let i = 0; i < 100 && events.events.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(events.events, ['promoted'])
})
