import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import { mulberry32 } from '../../src/rollout/loadtest.js'

// The dashboard's two pieces of logic that need no browser, run on the very
// files the admin server serves (dist/ui, built by `npm test` before tap):
// the weights sliders' rebalancing, and the event-stream parser the live
// feed reads with (fetch streaming: EventSource cannot send the token).

type Rebalance = (base: Readonly<Record<string, number>>, changed: string, value: number) => Record<string, number>
interface Parser { push: (chunk: string) => void }
type ParserClass = new (onEvent: (event: string, data: string) => void) => Parser

const built = (name: string): string => pathToFileURL(join(process.cwd(), 'dist/ui', name)).href
const { rebalance } = await import(built('weights.js')) as { rebalance: Rebalance }
const { EventStreamParser } = await import(built('feed.js')) as { EventStreamParser: ParserClass }

const sum = (w: Record<string, number>): number => Object.values(w).reduce((a, b) => a + b, 0)

t.test('rebalance: two versions, the other is 100 minus the one moved', async (t) => {
  t.same(rebalance({ stable: 90, canary: 10 }, 'canary', 25), { stable: 75, canary: 25 })
  t.same(rebalance({ stable: 90, canary: 10 }, 'stable', 0), { stable: 0, canary: 100 })
  t.same(rebalance({ stable: 90, canary: 10 }, 'canary', 150), { stable: 0, canary: 100 }, 'clamped at 100')
  t.same(rebalance({ stable: 90, canary: 10 }, 'canary', -5), { stable: 100, canary: 0 }, 'clamped at 0')
  t.same(rebalance({ stable: 100, canary: 0 }, 'canary', 12.6), { stable: 87, canary: 13 }, 'whole percent')
})

t.test('rebalance: three versions, the others share the rest in proportion', async (t) => {
  t.same(rebalance({ a: 50, b: 30, c: 20 }, 'a', 0), { a: 0, b: 60, c: 40 })
  t.same(rebalance({ a: 50, b: 50, c: 0 }, 'c', 20), { a: 40, b: 40, c: 20 }, 'a version at 0 stays at 0 while others have weight')
  t.same(rebalance({ a: 100, b: 0, c: 0 }, 'a', 40), { a: 40, b: 30, c: 30 }, 'all others at 0: split evenly')
})

t.test('rebalance: always whole numbers summing to exactly 100 (seeded random cases)', async (t) => {
  const rnd = mulberry32(18)
  let bad = 0
  for (let i = 0; i < 5000; i++) {
    const n = 2 + Math.floor(rnd() * 4)
    const names = Array.from({ length: n }, (_, k) => `v${k}`)
    let left = 100
    const base: Record<string, number> = {}
    names.forEach((name, k) => {
      const w = k === n - 1 ? left : Math.floor(rnd() * (left + 1))
      base[name] = w
      left -= w
    })
    const changed = names[Math.floor(rnd() * n)]!
    const out = rebalance(base, changed, rnd() * 120 - 10)
    if (sum(out) !== 100 || Object.values(out).some((w) => !Number.isInteger(w) || w < 0 || w > 100) || Object.keys(out).length !== n) bad++
  }
  t.equal(bad, 0, '5,000 cases of 2–5 versions')
})

t.test('event stream parser: events, comments, CRLF, split anywhere', async (t) => {
  const text = ': keepalive\r\nevent: hello\r\ndata: {"a":1}\r\n\r\nevent: sample\ndata: {"b":\ndata: 2}\n\n: another\n\ndata: plain\n\n'
  const want = [['hello', '{"a":1}'], ['sample', '{"b":\n2}'], ['message', 'plain']]
  const whole: string[][] = []
  new EventStreamParser((e, d) => { whole.push([e, d]) }).push(text)
  t.same(whole, want, 'in one chunk')
  let differ = 0
  for (let cut = 1; cut < text.length; cut++) {
    const got: string[][] = []
    const p = new EventStreamParser((e, d) => { got.push([e, d]) })
    p.push(text.slice(0, cut))
    p.push(text.slice(cut))
    if (JSON.stringify(got) !== JSON.stringify(want)) differ++
  }
  t.equal(differ, 0, `split at each of the ${text.length - 1} positions`)
  const partial: string[][] = []
  new EventStreamParser((e, d) => { partial.push([e, d]) }).push('event: sample\ndata: {"c":3}\n')
  t.same(partial, [], 'an event without its blank line is not delivered yet')
})
