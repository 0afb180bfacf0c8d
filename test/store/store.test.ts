import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { configFromObject } from '../../src/config/load.js'
import { CanarydError } from '../../src/errors.js'
import { RuntimeStore } from '../../src/store/store.js'
import { twoVersionRoute } from '../helpers/proxy.js'
import { captureLog } from '../helpers/log.js'

function routes (stable = 'http://127.0.0.1:3001', canary = 'http://127.0.0.1:3002', w: [number, number] = [90, 10]): ReturnType<typeof configFromObject>['routes'] {
  return configFromObject({ routes: [twoVersionRoute(stable, canary, w)] }, '(test)', {}).routes
}

function tmpFile (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-state-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return join(dir, 'state.json')
}

function store (file: string, r = routes()): { s: RuntimeStore; lines: Array<Record<string, unknown>> } {
  const { logger, lines } = captureLog()
  return { s: new RuntimeStore({ routes: r, file, logger }), lines }
}

t.test('validation: exact messages, nothing changes on a rejected set', async (t) => {
  const file = tmpFile(t)
  const { s } = store(file)
  const cases: Array<[unknown, RegExp]> = [
    [{ stable: 80 }, /every version must be named; missing "canary"/],
    [{ stable: 80, canary: 10, beta: 10 }, /weights\.beta: route web has no version "beta"/],
    [{ stable: 120, canary: -20 }, /weights\.stable: must be between 0 and 100, got 120/],
    [{ stable: 80.00001, canary: 19.99999 }, /weights\.stable: must have at most 4 decimals/],
    [{ stable: 80, canary: 10 }, /weights sum to 90, must be 100/],
    [{ stable: '80', canary: 20 }, /weights\.stable: must be a number, got "80"/],
    [[80, 20], /weights must be an object/],
    [null, /weights must be an object/]
  ]
  for (const [w, re] of cases) {
    await t.rejects(s.setWeights('web', w, { source: 'test' }), { code: 'CANARYD_ERR_INVALID_WEIGHTS', message: re }, JSON.stringify(w))
  }
  await t.rejects(s.setWeights('nope', { stable: 100, canary: 0 }, { source: 'test' }), { code: 'CANARYD_ERR_ROUTE_NOT_FOUND' })
  t.same(s.weights('web'), { stable: 90, canary: 10 })
  t.equal(s.holder.current.generation, 1, 'no table was swapped')
  t.notOk(existsSync(file), 'no state file was written')
  t.same(s.audit(10), [])
})

t.test('a change persists first, then swaps; the result has previous and new weights', async (t) => {
  const file = tmpFile(t)
  const { s, lines } = store(file)
  const res = await s.setWeights('web', { stable: 75.5, canary: 24.5 }, { source: 'api', reason: 'why not', address: '127.0.0.1' })
  t.same(res.previous, { stable: 90, canary: 10 })
  t.same(res.route.versions.map((v) => v.weight), [75.5, 24.5])
  t.equal(s.holder.current.generation, 2)
  t.same(s.holder.current.routeByName.get('web')!.versions.map((v) => v.ppm), [755_000, 245_000])
  const doc = JSON.parse(readFileSync(file, 'utf8'))
  t.equal(doc.version, 1)
  t.same(doc.routes.web.weights, { stable: 75.5, canary: 24.5 })
  t.same(doc.routes.web.versions, [{ name: 'stable', upstream: 'http://127.0.0.1:3001' }, { name: 'canary', upstream: 'http://127.0.0.1:3002' }])
  t.equal(doc.audit.length, 1)
  t.same(readdirSync(join(file, '..')).filter((f) => f.endsWith('.tmp')), [], 'no temp file left behind')
  const log = lines.find((l) => l.msg === 'weights changed')
  t.match(log, { level: 30, route: 'web', previous: { stable: 90, canary: 10 }, weights: { stable: 75.5, canary: 24.5 }, reason: 'why not', source: 'api', address: '127.0.0.1' })
  t.match(s.audit(10), [{ id: 1, route: 'web', source: 'api', reason: 'why not' }])
})

t.test('concurrent changes are serialised: none is lost, audit and file agree', async (t) => {
  const file = tmpFile(t)
  const { s } = store(file)
  const all = []
  for (let i = 0; i <= 20; i++) all.push(s.setWeights('web', { stable: 100 - i, canary: i }, { source: 'test' }))
  const results = await Promise.all(all)
  // each change saw exactly the one before it as `previous`
  results.forEach((r, i) => { t.same(r.previous, i === 0 ? { stable: 90, canary: 10 } : { stable: 100 - (i - 1), canary: i - 1 }) })
  t.same(s.weights('web'), { stable: 80, canary: 20 })
  t.equal(s.holder.current.generation, 22)
  t.same(JSON.parse(readFileSync(file, 'utf8')).routes.web.weights, { stable: 80, canary: 20 })
  t.same(s.audit(3).map((e) => e.id), [21, 20, 19], 'newest first')
})

t.test('when the state file cannot be written nothing changes (CANARYD_ERR_STATE_PERSIST)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-state-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const blocker = join(dir, 'not-a-dir')
  writeFileSync(blocker, 'x')
  const { s } = store(join(blocker, 'state.json'))
  const err = await s.setWeights('web', { stable: 50, canary: 50 }, { source: 'test' }).catch((e: unknown) => e)
  t.ok(err instanceof CanarydError)
  t.equal((err as CanarydError).code, 'CANARYD_ERR_STATE_PERSIST')
  t.equal((err as CanarydError).status, 500)
  t.same(s.weights('web'), { stable: 90, canary: 10 })
  t.equal(s.holder.current.generation, 1)
  t.same(s.audit(10), [])
  // the queue is not stuck after a failure
  await t.rejects(s.setWeights('web', { stable: 50, canary: 50 }, { source: 'test' }), { code: 'CANARYD_ERR_STATE_PERSIST' })
})

t.test('state weights override config when the version set is unchanged; rollout state survives', async (t) => {
  const file = tmpFile(t)
  const a = store(file).s
  await a.setWeights('web', { stable: 75.5, canary: 24.5 }, { source: 'test', rollout: { state: 'progressing', step: 2 } })
  await a.setRolloutState('web', { state: 'paused', step: 2 })
  t.same(a.getRolloutState('web'), { state: 'paused', step: 2 })
  await t.rejects(a.setRolloutState('nope', {}), { code: 'CANARYD_ERR_ROUTE_NOT_FOUND' })

  // config lists the versions in another order: same set, state still applies
  const reordered = routes()
  reordered[0]!.versions.reverse()
  const { s: b, lines } = store(file, reordered)
  t.same(b.weights('web'), { canary: 24.5, stable: 75.5 })
  t.same(b.holder.current.routeByName.get('web')!.versionByName.get('stable')!.ppm, 755_000)
  t.same(b.getRolloutState('web'), { state: 'paused', step: 2 })
  t.equal(b.audit(10).length, 1, 'audit restored from the file')
  t.ok(lines.some((l) => l.msg === 'weights restored from state file'))
  b.setRolloutSummary((r) => ({ route: r, state: 'paused' }))
  t.same(b.routeView('web')!.rollout, { route: 'web', state: 'paused' })
  await b.setRolloutState('web', null)
  t.equal(b.getRolloutState('web'), null)
  t.equal(JSON.parse(readFileSync(file, 'utf8')).routes.web.rollout, null)
})

t.test('config that changed the version set (names) wins, and the log says so; a new upstream alone keeps the weights', async (t) => {
  const file = tmpFile(t)
  await store(file).s.setWeights('web', { stable: 50, canary: 50 }, { source: 'test' })
  const moved = store(file, routes('http://127.0.0.1:3001', 'http://127.0.0.1:3009'))
  t.same(moved.s.weights('web'), { stable: 50, canary: 50 }, 'same names, new upstream: the runtime weights stay')
  const renamed = routes()
  renamed[0]!.versions[1]!.name = 'canary2'
  const { s, lines } = store(file, renamed)
  t.same(s.weights('web'), { stable: 90, canary2: 10 })
  t.match(lines.find((l) => l.level === 40), { route: 'web', msg: /config changed the versions of this route: config weights win/ })
  t.ok(existsSync(file), 'the state file is kept (it is not corrupt)')
})

t.test('corrupt or invalid state file: moved aside (not deleted), config weights, error logged', async (t) => {
  const bad = ['{not json', JSON.stringify({ version: 99, routes: {} }), JSON.stringify({ version: 1, routes: { web: { versions: [{ name: 'stable', upstream: 'http://127.0.0.1:3001' }, { name: 'canary', upstream: 'http://127.0.0.1:3002' }], weights: { stable: 60, canary: 60 }, rollout: null } } })]
  for (const text of bad) {
    const file = tmpFile(t)
    writeFileSync(file, text)
    const { s, lines } = store(file)
    t.same(s.weights('web'), { stable: 90, canary: 10 }, text.slice(0, 20))
    t.notOk(existsSync(file))
    const aside = readdirSync(join(file, '..')).filter((f) => f.startsWith('state.json.corrupt-'))
    t.equal(aside.length, 1)
    t.equal(readFileSync(join(file, '..', aside[0]!), 'utf8'), text, 'content kept byte for byte')
    t.match(lines.find((l) => l.level === 50), { msg: /corrupt or unreadable/, movedTo: /state\.json\.corrupt-/ })
    // and the next change writes a fresh file
    await s.setWeights('web', { stable: 70, canary: 30 }, { source: 'test' })
    t.same(JSON.parse(readFileSync(file, 'utf8')).routes.web.weights, { stable: 70, canary: 30 })
  }
})

t.test('state.file "" keeps changes in memory only', async (t) => {
  const { s } = store('')
  await s.setWeights('web', { stable: 0, canary: 100 }, { source: 'test' })
  t.same(s.weights('web'), { stable: 0, canary: 100 })
  t.same(store('').s.weights('web'), { stable: 90, canary: 10 }, 'a new store starts from config')
})

t.test('route in the state file but not in config is ignored with a warning', async (t) => {
  const file = tmpFile(t)
  writeFileSync(file, JSON.stringify({ version: 1, savedAt: '', routes: { gone: { versions: [{ name: 'a', upstream: 'http://x' }], weights: { a: 100 }, rollout: null } }, audit: [] }))
  const { s, lines } = store(file)
  t.same(s.weights('web'), { stable: 90, canary: 10 })
  t.match(lines.find((l) => l.level === 40), { route: 'gone', msg: /not in the config/ })
  t.ok(existsSync(file))
})
