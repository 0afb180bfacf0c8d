import t, { type Test } from 'tap'
import { hashKey } from '../../src/routing/hash.js'
import { pickVersion } from '../../src/routing/pick.js'
import type { RouteSpec } from '../../src/routing/spec.js'
import { buildRoutingTable } from '../../src/routing/table.js'
import type { Route } from '../../src/routing/types.js'
import { seededKeys } from '../helpers/keys.js'

function route (weights: Record<string, number>, name = 'web', salt?: string): Route {
  const spec: RouteSpec = {
    name,
    match: { pathPrefix: '/' },
    sticky: { keys: ['header:x-user-id'], cookie: { name: 'canaryd_id', maxAge: 60 } },
    override: {},
    versions: Object.entries(weights).map(([n, w], i) => ({ name: n, upstream: [`http://127.0.0.1:${1000 + i}`], weight: w }))
  }
  if (salt !== undefined) spec.sticky.salt = salt
  return buildRoutingTable([spec]).routes[0]!
}

/** The same keys every run (see test/helpers/keys.ts). */
function keys (n: number, seed = 12345): string[] {
  return seededKeys(n, seed)
}

function assign (r: Route, ks: readonly string[]): string[] {
  return ks.map((k) => pickVersion(r, hashKey(r.salt, k))!.name)
}

const KEYS = keys(100_000)

t.test('each version gets its weight within 0.5 percentage points over 100,000 keys', async (t) => {
  const cases: Array<Record<string, number>> = [
    { stable: 99.9, canary: 0.1 },
    { stable: 99, canary: 1 },
    { stable: 90, canary: 10 },
    { stable: 50, canary: 50 },
    { a: 33.3, b: 33.3, c: 33.4 },
    { stable: 75.5, canary: 24.5 },
    { a: 70, b: 20, c: 5, d: 5 }
  ]
  for (const weights of cases) {
    const r = route(weights)
    const counts = new Map<string, number>()
    for (const v of assign(r, KEYS)) counts.set(v, (counts.get(v) ?? 0) + 1)
    for (const [name, w] of Object.entries(weights)) {
      const share = 100 * (counts.get(name) ?? 0) / KEYS.length
      t.ok(Math.abs(share - w) <= 0.5, `${JSON.stringify(weights)}: ${name} got ${share.toFixed(3)}%, weight ${w}%`)
    }
  }
})

t.test('a key maps to the same version every time and in every table built from the same config', async (t) => {
  const a = route({ stable: 90, canary: 10 })
  const b = route({ stable: 90, canary: 10 }) // as another process or a restart would build it
  const first = assign(a, KEYS.slice(0, 20_000))
  t.same(assign(a, KEYS.slice(0, 20_000)), first, 'same table, asked again')
  t.same(assign(b, KEYS.slice(0, 20_000)), first, 'independently built table')
})

t.test('pinned picks: the algorithm does not drift between releases', async (t) => {
  // If this fails, every deployed user would be reshuffled on upgrade: do not update the
  // expectations without a migration note in the changelog.
  const r = route({ stable: 50, canary: 50 })
  const pinned = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi'].map((k) => `${k}:${pickVersion(r, hashKey(r.salt, k))!.name}`)
  t.matchSnapshot(pinned, 'pinned 50/50 picks')
  t.equal(hashKey(r.salt, 'alice'), hashKey(route({ stable: 1, canary: 99 }).salt, 'alice'), 'the key hash does not depend on weights')
})

t.test('0% gets no key, 100% gets every key', async (t) => {
  const zero = assign(route({ stable: 100, canary: 0 }), KEYS)
  t.equal(zero.filter((v) => v === 'canary').length, 0, 'canary at 0% gets nothing')
  const all = assign(route({ stable: 0, canary: 100 }), KEYS)
  t.equal(all.filter((v) => v === 'canary').length, KEYS.length, 'canary at 100% gets everything')
  const three = assign(route({ a: 0, b: 100, c: 0 }), KEYS)
  t.equal(three.filter((v) => v === 'b').length, KEYS.length, 'middle version at 100% of three')
})

/** Asserts that moving from weights `from` to `to` moves keys only from versions that fell to versions that rose. */
function checkMoves (t: Test, from: Record<string, number>, to: Record<string, number>, ks: readonly string[]): void {
  const before = assign(route(from), ks)
  const after = assign(route(to), ks)
  let moved = 0
  let bad = 0
  const examples: string[] = []
  for (let i = 0; i < ks.length; i++) {
    const a = before[i]!
    const b = after[i]!
    if (a === b) continue
    moved++
    if (!((to[a] ?? 0) < (from[a] ?? 0) && (to[b] ?? 0) > (from[b] ?? 0))) {
      bad++
      if (examples.length < 3) examples.push(`${ks[i]}: ${a}→${b}`)
    }
  }
  t.equal(bad, 0, `${JSON.stringify(from)} → ${JSON.stringify(to)}: ${moved} keys moved, all from a falling to a rising version ${examples.join(' ')}`)
}

t.test('two versions: raising one moves keys only onto it, lowering only off it', async (t) => {
  const ks = KEYS.slice(0, 30_000)
  const steps = [0, 0.1, 1, 5, 10, 25, 33.3333, 50, 75.5, 99, 99.9999, 100]
  for (let i = 0; i + 1 < steps.length; i++) {
    const lo = steps[i]!
    const hi = steps[i + 1]!
    checkMoves(t, { stable: 100 - lo, canary: lo }, { stable: 100 - hi, canary: hi }, ks)
    checkMoves(t, { stable: 100 - hi, canary: hi }, { stable: 100 - lo, canary: lo }, ks)
  }
  // and across a jump, then back, each step a freshly built table (as the admin API
  // builds one per change): the users' journey, not a re-run of one table
  const at = (w: number): Route => route({ stable: 100 - w, canary: w })
  const t10 = at(10)
  const r10 = assign(t10, ks)
  const onCanary10 = r10.filter((v) => v === 'canary').length
  t.ok(onCanary10 > 0 && onCanary10 < ks.length, 'the start has users on both versions')
  for (const path of [[10, 30, 10], [10, 20, 30, 15, 10]]) {
    const tables = path.map(at)
    t.ok(tables.every((tb) => tb !== t10), `${path.join(' → ')}: every step is a distinct table build`)
    // follow each user step by step, as a long-lived client would be routed
    const where = r10.slice()
    const moves = new Array<number>(ks.length).fill(0)
    const lo = Math.min(...path)
    const hi = Math.max(...path)
    const atHi = assign(at(hi), ks)
    let leftEarly = 0
    let joinedEarly = 0
    for (const tb of tables.slice(1)) {
      const next = assign(tb, ks)
      for (let i = 0; i < ks.length; i++) {
        if (next[i] !== where[i]) moves[i]!++
        // never below 10 % on the way: a 10 % canary user never leaves; never above 30 %: a stable user there never joins
        if (r10[i] === 'canary' && next[i] !== 'canary') leftEarly++
        if (atHi[i] === 'stable' && next[i] !== 'stable') joinedEarly++
        where[i] = next[i]!
      }
    }
    t.equal(leftEarly, 0, `${path.join(' → ')}: no 10 % canary user left the canary on the way (lowest weight ${lo})`)
    t.equal(joinedEarly, 0, `${path.join(' → ')}: no user on stable at ${hi} % was on the canary on the way`)
    t.same(where, r10, `${path.join(' → ')}: back at 10 %, every user is where they started`)
    const roundTrips = moves.filter((m) => m > 0).length
    t.ok(roundTrips > 0, `${path.join(' → ')}: ${roundTrips} users went to the canary and back (the path did move people)`)
    t.ok(moves.every((m) => m % 2 === 0), `${path.join(' → ')}: every user who moved moved back`)
  }
})

t.test('three or more versions: one version changes, the others keep their ratios', async (t) => {
  const ks = KEYS.slice(0, 30_000)
  // raise c from 20 to 40 while a:b stays 3:1
  checkMoves(t, { a: 60, b: 20, c: 20 }, { a: 45, b: 15, c: 40 }, ks)
  // lower it back
  checkMoves(t, { a: 45, b: 15, c: 40 }, { a: 60, b: 20, c: 20 }, ks)
  // four versions, canary from 0 to 10 while the rest keep 5:3:2
  checkMoves(t, { a: 50, b: 30, c: 20, canary: 0 }, { a: 45, b: 27, c: 18, canary: 10 }, ks)
  // the middle version is the one that moves
  checkMoves(t, { a: 40, b: 20, c: 40 }, { a: 30, b: 40, c: 30 }, ks)
  checkMoves(t, { a: 30, b: 40, c: 30 }, { a: 50, b: 0, c: 50 }, ks)
})

t.test('version order in the config and an added 0% version move nobody', async (t) => {
  const ks = KEYS.slice(0, 20_000)
  const ab = assign(route({ stable: 80, canary: 20 }), ks)
  t.same(assign(route({ canary: 20, stable: 80 }), ks), ab, 'reordered versions')
  t.same(assign(route({ stable: 80, canary: 20, next: 0 }), ks), ab, 'a third version at 0%')
})

t.test('salt: different routes (or salts) shuffle users independently', async (t) => {
  const ks = KEYS.slice(0, 20_000)
  const web = assign(route({ stable: 50, canary: 50 }, 'web'), ks)
  const api = assign(route({ stable: 50, canary: 50 }, 'api'), ks)
  const same = web.filter((v, i) => v === api[i]).length / ks.length
  t.ok(same > 0.47 && same < 0.53, `routes agree on ${(100 * same).toFixed(1)}% of users, as independent coins would`)
  t.same(assign(route({ stable: 50, canary: 50 }, 'api', 'web'), ks), web, 'a route salted with "web" picks like route web')
})

t.test('excluded versions: their keys spread over the rest by weight, nobody else moves', async (t) => {
  const ks = KEYS.slice(0, 30_000)
  const r = route({ a: 50, b: 30, c: 20 })
  const normal = ks.map((k) => pickVersion(r, hashKey(r.salt, k))!.name)
  const noB = ks.map((k) => pickVersion(r, hashKey(r.salt, k), 1 << 1)!.name)
  t.equal(noB.filter((v) => v === 'b').length, 0, 'excluded b gets nothing')
  t.equal(normal.filter((v, i) => v !== 'b' && noB[i] !== v).length, 0, 'users of a and c stay')
  const fromB = noB.filter((_, i) => normal[i] === 'b')
  const toA = fromB.filter((v) => v === 'a').length / fromB.length
  t.ok(Math.abs(toA - 50 / 70) < 0.03, `b's users go to a in proportion 50:20 (${toA.toFixed(3)})`)
  t.equal(pickVersion(r, 1, 0b111), undefined, 'all excluded → undefined')
})
