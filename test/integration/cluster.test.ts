import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { hashKey } from '../../src/routing/hash.js'
import { pickVersion } from '../../src/routing/pick.js'
import { buildRoutingTable } from '../../src/routing/table.js'
import { configFromObject } from '../../src/config/load.js'
import { send } from '../helpers/http.js'
import { serve, type Served } from '../helpers/reload.js'
import { startUpstream } from '../helpers/upstream.js'

// `canaryd serve --workers 2` as users run it: the built CLI, real upstreams, real HTTP.
const CLI = join(process.cwd(), 'dist/cli.js')
t.before(() => { if (!existsSync(CLI)) throw new Error('run npm run build first (npm test does)') })

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

function cpuTicks (pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
    return Number(f[11]) + Number(f[12])
  } catch {
    return -1
  }
}

/** A `canaryd serve --workers 2` process. */
type Cluster = Served

async function startCluster (origins: { stable: string, canary: string }, weights: [number, number], extra: Record<string, unknown> = {}, route: Record<string, unknown> = {}): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-cluster-'))
  const raw = {
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    state: { file: join(dir, 'state.json') },
    routes: [{
      name: 'web',
      sticky: { keys: ['header:x-user-id'] },
      versions: [{ name: 'stable', upstream: origins.stable, weight: weights[0] }, { name: 'canary', upstream: origins.canary, weight: weights[1] }],
      ...route
    }],
    ...extra
  }
  const file = join(dir, 'canaryd.json')
  writeFileSync(file, JSON.stringify(raw))
  return await serve(file, ['--workers', '2'])
}

/** Sum of canaryd_requests_total per version from the admin /metrics (of one `source` when given). */
async function requestsByVersion (admin: string, source?: 'user' | 'synthetic'): Promise<Record<string, number>> {
  const text = (await send(`${admin}/metrics`)).body.toString()
  const out: Record<string, number> = {}
  for (const m of text.matchAll(/^canaryd_requests_total\{([^}]*)\} (\d+)/gm)) {
    if (source !== undefined && !m[1]!.includes(`source="${source}"`)) continue
    const version = /version="([^"]+)"/.exec(m[1]!)![1]!
    out[version] = (out[version] ?? 0) + Number(m[2])
  }
  return out
}

t.test('serve --workers 2: every worker serves, picks like a single process, follows weight changes, aggregates metrics', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const c = await startCluster({ stable: stable.origin, canary: canary.origin }, [70, 30])
  t.teardown(async () => { c.child.kill('SIGKILL'); await stable.close(); await canary.close() })
  t.equal(c.workers.length, 2, 'two workers started')
  t.equal((await send(`${c.admin}/readyz`)).status, 200, 'ready once every worker listens')

  // the same hashing everywhere: compare every answer with the pure pick of a single-process table
  const cfg = configFromObject({ routes: [{ name: 'web', sticky: { keys: ['header:x-user-id'] }, versions: [{ name: 'stable', upstream: stable.origin, weight: 70 }, { name: 'canary', upstream: canary.origin, weight: 30 }] }] }, '', {})
  const route = buildRoutingTable(cfg.routes).routes[0]!
  const before = c.workers.map(cpuTicks)
  const metrics0 = await requestsByVersion(c.admin)
  let mismatch = 0
  const served: Record<string, number> = { stable: 0, canary: 0 }
  for (let start = 0; start < 1000; start += 50) {
    const batch = await Promise.all(Array.from({ length: 50 }, async (_, i) => {
      const id = `user-${start + i}`
      const r = await send(`${c.proxy}/`, { headers: { 'x-user-id': id } }) // agent: false → a new connection each: spread over workers
      return { want: pickVersion(route, hashKey(route.salt, id))!.name, got: String(r.headers['x-canaryd-version']) }
    }))
    for (const b of batch) {
      if (b.want !== b.got) mismatch++
      served[b.got] = (served[b.got] ?? 0) + 1
    }
  }
  t.equal(mismatch, 0, 'all 1,000 users land where the single-process pick says')
  const after = c.workers.map(cpuTicks)
  t.ok(after.every((a, i) => a > before[i]!), `both workers did work (CPU ticks ${before.join(',')} → ${after.join(',')})`)

  const metrics1 = await requestsByVersion(c.admin)
  t.equal((metrics1.stable ?? 0) - (metrics0.stable ?? 0), served.stable, '/metrics aggregates every worker exactly (stable)')
  t.equal((metrics1.canary ?? 0) - (metrics0.canary ?? 0), served.canary, '/metrics aggregates every worker exactly (canary)')
  const text = (await send(`${c.admin}/metrics`)).body.toString()
  t.match(text, /canaryd_route_weight\{route="web",version="canary"\} 30\n/, 'weights are not summed across workers')

  // a weight change reaches every worker within 100 ms
  const put = await send(`${c.admin}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ weights: { stable: 0, canary: 100 } }) })
  t.equal(put.status, 200)
  const putDone = Date.now()
  const immediate = await Promise.all(Array.from({ length: 20 }, async (_, i) => (await send(`${c.proxy}/`, { headers: { 'x-user-id': `late-${i}` } })).headers['x-canaryd-version']))
  const waited = Date.now() - putDone
  const later = immediate.filter((v) => v !== 'canary').length
  t.comment(`requests sent right after the PUT answered (${waited} ms for 20): ${later} still on the old weights`)
  await sleep(Math.max(0, 100 - (Date.now() - putDone)))
  const at100 = await Promise.all(Array.from({ length: 40 }, async (_, i) => (await send(`${c.proxy}/`, { headers: { 'x-user-id': `u-${i}` } })).headers['x-canaryd-version']))
  t.equal(at100.filter((v) => v === 'canary').length, 40, '100 ms after the change every worker routes by the new weights')
})

t.test('a crashed worker is replaced with the weights in force; SIGTERM drains every worker and exits 0', async (t) => {
  const answer = (name: string) => (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void => {
    const delay = req.url === '/slow' ? 800 : 0
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end(name)
    }, delay)
  }
  const stable = await startUpstream('stable', answer('stable'))
  const canary = await startUpstream('canary', answer('canary'))
  const c = await startCluster({ stable: stable.origin, canary: canary.origin }, [50, 50])
  t.teardown(async () => { c.child.kill('SIGKILL'); await stable.close(); await canary.close() })
  // the replacement must come up with the weights of the state, not the config's 50/50
  const put = await send(`${c.admin}/api/v1/routes/web/weights`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ weights: { stable: 0, canary: 100 } }) })
  t.equal(put.status, 200)
  const victim = c.workers[0]!
  process.kill(victim, 'SIGKILL')
  for (let i = 0; i < 100 && !c.log().includes('worker exited unexpectedly'); i++) await sleep(50)
  t.match(c.log(), /"signal":"SIGKILL".*worker exited unexpectedly; starting a replacement/, 'the crash is logged')
  let ready = 0
  for (let i = 0; i < 100 && ready !== 200; i++) {
    await sleep(50)
    ready = (await send(`${c.admin}/readyz`)).status
  }
  t.equal(ready, 200, 'ready again once the replacement listens')
  const versions = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const r = await send(`${c.proxy}/`, { headers: { 'x-user-id': `v${i}` } })
    return `${r.status} ${String(r.body)}`
  }))
  t.same([...new Set(versions)], ['200 canary'], 'every worker, the replacement included, serves with the weights in force (0/100)')

  const children = readFileSync(`/proc/${c.child.pid}/task/${c.child.pid}/children`, 'utf8').trim().split(/\s+/).map(Number).filter((n) => n > 0)
  t.equal(children.length, 2, 'two live workers (the replacement included)')
  t.notOk(children.includes(victim), 'the killed worker is gone')
  // a request in flight when SIGTERM arrives finishes
  const slow = send(`${c.proxy}/slow`, { headers: { 'x-user-id': 'slow-user' } })
  await sleep(200)
  c.child.kill('SIGTERM')
  const r = await slow
  t.equal(r.status, 200, 'the in-flight request finished during the drain')
  t.equal(String(r.body), 'canary')
  t.equal(await c.exited, 0, 'the primary exits 0 after draining')
  await sleep(200)
  const alive = children.filter((pid) => { try { process.kill(pid, 0); return true } catch { return false } })
  t.same(alive, [], 'no worker is left running')
  t.match(c.log(), /"msg":"draining"/)
})

t.test('a worker that cannot listen fails the start: exit 1, no restart loop', async (t) => {
  const { createServer } = await import('node:net')
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { taken.close() })
  const port = (taken.address() as { port: number }).port
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-cluster-'))
  const file = join(dir, 'c.json')
  writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port },
    admin: { host: '127.0.0.1', port: 0 },
    state: { file: '' },
    routes: [{ name: 'web', versions: [{ name: 'a', upstream: 'http://127.0.0.1:9', weight: 50 }, { name: 'b', upstream: 'http://127.0.0.1:9', weight: 50 }] }]
  }))
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file, '--workers', '2'], { env: { ...process.env, LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr.on('data', (c: Buffer) => { out += c.toString() })
  const started = Date.now()
  const code = await new Promise<number | null>((resolve) => {
    const killer = setTimeout(() => { child.kill('SIGKILL'); resolve(-1) }, 15_000)
    child.on('exit', (c) => { clearTimeout(killer); resolve(c) })
  })
  t.equal(code, 1, 'serve exits 1')
  t.match(out, /canaryd: cannot listen on 127\.0\.0\.1:\d+ \(proxy: listen\.port \/ CANARYD_LISTEN_PORT\): address already in use/, 'the worker\'s error names the listener, key and env var, as a single process does')
  t.match(out, /exited during start-up/)
  t.ok(Date.now() - started < 10_000, 'fails fast instead of restarting workers forever')
})

t.test('cluster mode: the rollout controller runs once, in the primary, on samples from every worker', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const c = await startCluster({ stable: stable.origin, canary: canary.origin }, [100, 0])
  t.teardown(async () => { c.child.kill('SIGKILL'); await stable.close(); await canary.close() })
  const plan = { canary: 'canary', steps: [50, 100], intervalMs: 400, analysis: { minRequests: 20, maxFailedChecks: 2 }, promotion: 'auto' }
  const started = await send(`${c.admin}/api/v1/routes/web/rollout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(plan) })
  t.equal(started.status, 201, String(started.body))
  let state = ''
  const deadline = Date.now() + 15_000
  let i = 0
  while (Date.now() < deadline && state !== 'promoted' && state !== 'rolled-back') {
    await Promise.all(Array.from({ length: 20 }, async () => await send(`${c.proxy}/`, { headers: { 'x-user-id': `r${i++}` } })))
    state = (await send(`${c.admin}/api/v1/routes/web/rollout`)).json<{ state: string }>().state
  }
  t.equal(state, 'promoted', 'a healthy canary is promoted from samples gathered in both workers')
  const view = (await send(`${c.admin}/api/v1/routes/web/rollout`)).json<{ checks: Array<{ canary: { requests: number } }> }>()
  t.ok(view.checks.some((ch) => ch.canary.requests >= 20), 'checks saw the workers\' canary requests')
  t.equal(canary.seen.length > 0, true)
})

t.test('cluster mode: a shadow phase is judged in the primary on pairs from every worker, and rolls a failing canary back', async (t) => {
  const stable = await startUpstream('stable')
  let n = 0
  // every fifth copy fails: a 20 % error rate the users never see
  const canary = await startUpstream('canary', (_req, res) => {
    res.writeHead(++n % 5 === 0 ? 500 : 200, { 'content-type': 'text/plain' })
    res.end('canary')
  })
  const c = await startCluster({ stable: stable.origin, canary: canary.origin }, [100, 0])
  t.teardown(async () => { c.child.kill('SIGKILL'); await stable.close(); await canary.close() })
  const plan = { canary: 'canary', shadow: { percent: 100, durationMs: 60_000 }, steps: [10, 50], intervalMs: 400, analysis: { minRequests: 20, maxFailedChecks: 2 } }
  const started = await send(`${c.admin}/api/v1/routes/web/rollout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(plan) })
  t.equal(started.status, 201, String(started.body))
  let view = { state: '', phase: '', reason: '', checks: [] as Array<{ shadow?: { pairs: number } }> }
  const deadline = Date.now() + 15_000
  let i = 0
  let users = 0
  while (Date.now() < deadline && view.state !== 'rolled-back' && view.state !== 'promoted') {
    const got = await Promise.all(Array.from({ length: 20 }, async () => await send(`${c.proxy}/`, { headers: { 'x-user-id': `s${i++}` } })))
    users += got.filter((r) => r.status === 200 && r.headers['x-canaryd-version'] === 'stable').length
    view = (await send(`${c.admin}/api/v1/routes/web/rollout`)).json()
  }
  t.equal(view.state, 'rolled-back', `the shadow judge ended it (${view.reason})`)
  t.match(view.reason, /shadow phase/)
  t.ok(view.checks.some((ch) => (ch.shadow?.pairs ?? 0) >= 20), 'checks saw pairs forwarded by the workers')
  t.equal(users, i, 'every user got 200 from stable')
  t.equal(canary.seen.filter((s) => s.headers['x-canaryd-mirror'] !== '1').length, 0, 'the canary saw copies only')
})

t.test('cluster mode: the primary\'s load test reaches both versions through the workers; its requests are counted apart and judged only when the plan says so', async (t) => {
  const stable = await startUpstream('stable')
  const canary = await startUpstream('canary')
  const c = await startCluster({ stable: stable.origin, canary: canary.origin }, [100, 0], {}, { override: { header: 'x-canaryd-version' } })
  t.teardown(async () => { c.child.kill('SIGKILL'); await stable.close(); await canary.close() })
  const synthetic = async (): Promise<number> => Object.values(await requestsByVersion(c.admin, 'synthetic')).reduce((a, b) => a + b, 0)
  const post = async (plan: unknown): Promise<number> => (await send(`${c.admin}/api/v1/routes/web/rollout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(plan) })).status
  const rollout = async (): Promise<{ state: string; checks: Array<{ verdict: string; canary: { requests: number } }> }> => (await send(`${c.admin}/api/v1/routes/web/rollout`)).json()

  // not judged: the checks see no canary request although the generator sends some
  const plan = { canary: 'canary', steps: [50], intervalMs: 400, analysis: { minRequests: 10, loadTest: { rps: 60 } } }
  t.equal(await post(plan), 201)
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline && ((await rollout()).checks.length < 2 || canary.seen.length < 10)) await sleep(100)
  const held = await rollout()
  t.equal(held.state, 'progressing', 'no decision on synthetic requests the plan does not judge')
  t.ok(held.checks.every((ch) => ch.verdict === 'inconclusive' && ch.canary.requests === 0), 'the workers told the primary these requests were synthetic')
  t.ok(canary.seen.length >= 10 && stable.seen.length >= 10, `both versions received synthetic requests (${canary.seen.length}/${stable.seen.length})`)
  t.ok(canary.seen.every((r) => r.headers['x-canaryd-synthetic'] === '1'), 'marked for the upstream')
  t.ok(await synthetic() >= 20, '/metrics counts them under source="synthetic", summed over the workers')
  t.equal((await send(`${c.admin}/api/v1/routes/web/rollout/abort`, { method: 'POST' })).status, 200)

  // judged: the same traffic decides the rollout
  t.equal(await post({ ...plan, analysis: { ...plan.analysis, loadTest: { rps: 60, includeInAnalysis: true } } }), 201)
  const until2 = Date.now() + 15_000
  let state = ''
  while (Date.now() < until2 && state !== 'promoted' && state !== 'rolled-back') {
    await sleep(100)
    state = (await rollout()).state
  }
  t.equal(state, 'promoted', 'decided on the load test\'s requests alone')
  const after = canary.seen.length
  await sleep(400)
  t.ok(canary.seen.length - after <= 5, 'the generator stopped with the rollout')
})
