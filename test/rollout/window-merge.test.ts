import t from 'tap'
import { DEFAULT_RESERVOIR, SampleWindow, type WindowSnapshot } from '../../src/rollout/window.js'

// SampleWindow.merge: the rollout leader adds every instance's window
// snapshot to its own. Counts add up; `sources` counts the instances; the
// latencies of an instance that subsampled (more successes than latencies
// sent) enter with the weight they stand for, so the merged sample stays a
// uniform sample of the whole fleet's successful requests, whatever the
// order the snapshots arrive in.

function snap (requests: number, failures: number, latenciesMs: number[], extra: Partial<WindowSnapshot> = {}): WindowSnapshot {
  return { requests, failures, ejections: 0, stillEjected: false, latenciesMs, ...extra }
}

const fill = (n: number, v: number): number[] => new Array<number>(n).fill(v)

/** The share of `v` in the window's latency sample. */
function share (w: SampleWindow, v: number): number {
  const l = w.peek().latenciesMs
  return l.filter((x) => x === v).length / l.length
}

t.test('counts add up; sources counts distinct instances; reset forgets them', async (t) => {
  const w = new SampleWindow(64, 1)
  w.record(200, 0.010, false)
  w.record(503, 0.020, false)
  w.merge(snap(10, 2, [1, 2, 3, 4, 5, 6, 7, 8], { ejections: 1 }), 'b')
  w.merge(snap(5, 5, []), 'c')
  w.merge(snap(3, 0, [9, 9, 9]), 'b')
  const s = w.peek()
  t.equal(s.requests, 2 + 10 + 5 + 3)
  t.equal(w.requests, 20)
  t.equal(s.failures, 1 + 2 + 5 + 0)
  t.equal(s.ejections, 1)
  t.equal(s.latenciesMs.length, 1 + 8 + 3, 'every latency kept while the reservoir has room')
  t.same([...w.sources].sort(), ['b', 'c'], 'two instances, b counted once')
  t.equal(w.sources.size, 2)
  const taken = w.take()
  t.equal(taken.requests, 20)
  t.equal(w.sources.size, 0, 'a new window starts with no sources')
  t.equal(w.requests, 0)
  w.merge(snap(1, 0, [1]), 'd')
  t.same([...w.sources], ['d'])
  w.reset()
  t.equal(w.sources.size, 0)
})

t.test('merging never grows the sample beyond the reservoir', async (t) => {
  const w = new SampleWindow(100, 7)
  for (let i = 0; i < 20; i++) w.merge(snap(1000, 10, fill(64, i)), `i${i % 3}`)
  t.equal(w.peek().latenciesMs.length, 100)
  t.equal(w.requests, 20_000)
  t.equal(w.sources.size, 3)
})

t.test('equal traffic, equal weight: two instances that each sent every latency share the sample by their requests', async (t) => {
  const w = new SampleWindow(DEFAULT_RESERVOIR, 42)
  w.merge(snap(3000, 0, fill(3000, 10)), 'a')
  w.merge(snap(1000, 0, fill(1000, 100)), 'b')
  const s = share(w, 100)
  t.ok(s > 0.15 && s < 0.35, `the quieter instance's share ≈ 1/4 (${s.toFixed(4)})`)
})

// The case the weighting exists for: instance A served 100,000 successes and
// sent 1024 latencies (10 ms each) standing for them; instance B served 1,000
// and sent all 1,000 (100 ms). Of the fleet's successful requests, 1,000 in
// 101,000 took 100 ms: the merged sample must say ≈ 1/101 ≈ 0.0099, not
// 1000/2024 ≈ 0.49 (what an unweighted merge gives). Bounds: with a 2048
// sample the expected count is ~20 (sd ~4.5); [0.002, 0.025] is ~3 sd wide on
// the high side and excludes every unweighted or half-weighted outcome.
const busy = (): WindowSnapshot => snap(100_000, 0, fill(1024, 10))
const quiet = (): WindowSnapshot => snap(1000, 0, fill(1000, 100))
const EXPECTED = 1000 / 101_000

for (const capacity of [DEFAULT_RESERVOIR, 1024]) {
  for (const order of ['busy first', 'quiet first'] as const) {
    t.test(`weighted merge, reservoir ${capacity}, ${order}: the 100 ms share is ≈ 1/101`, async (t) => {
      for (const seed of [1, 0x2545f491, 0x9e3779b9]) {
        const w = new SampleWindow(capacity, seed)
        if (order === 'busy first') {
          w.merge(busy(), 'a')
          w.merge(quiet(), 'b')
        } else {
          w.merge(quiet(), 'b')
          w.merge(busy(), 'a')
        }
        t.equal(w.requests, 101_000)
        t.equal(w.sources.size, 2)
        const s = share(w, 100)
        t.ok(s >= 0.002 && s <= 0.025, `seed ${seed}: share of 100 ms samples ${s.toFixed(4)} (sample of ${w.peek().latenciesMs.length}), expected ≈ ${EXPECTED.toFixed(4)}`)
      }
    })
  }
}

t.test('weighted merge over many periods (the leader merges each instance every 500 ms): the 100 ms share is ≈ 1/101', async (t) => {
  // 10 periods of the same traffic, the two instances' messages interleaved as they arrive
  for (const seed of [1, 0x2545f491]) {
    const w = new SampleWindow(DEFAULT_RESERVOIR, seed)
    for (let i = 0; i < 10; i++) {
      w.merge(busy(), 'a')
      w.merge(quiet(), 'b')
    }
    t.equal(w.requests, 1_010_000)
    const s = share(w, 100)
    t.ok(s >= 0.002 && s <= 0.025, `seed ${seed}: share ${s.toFixed(4)}, expected ≈ ${EXPECTED.toFixed(4)}`)
  }
})

t.test('stillEjected: out while an instance says so; an instance that saw a good answer since says it is back', async (t) => {
  const w = new SampleWindow(16, 1)
  t.equal(w.peek().stillEjected, false)
  w.merge(snap(0, 0, [], { ejections: 1, stillEjected: true }), 'a')
  t.equal(w.peek().stillEjected, true, 'ejected by a')
  t.equal(w.peek().ejections, 1)
  w.merge(snap(4, 4, [], { stillEjected: false }), 'b')
  t.equal(w.peek().stillEjected, true, 'failures only (no success) do not end it')
  w.merge(snap(0, 0, []), 'c')
  t.equal(w.peek().stillEjected, true, 'an empty snapshot does not end it')
  w.merge(snap(3, 1, [5, 5], { stillEjected: false }), 'b')
  t.equal(w.peek().stillEjected, false, 'successes since: back')
  w.merge(snap(2, 0, [5, 5], { ejections: 1, stillEjected: true }), 'c')
  t.equal(w.peek().stillEjected, true, 'ejected again by c')
  t.equal(w.peek().ejections, 2, 'ejections add up')
  w.reset()
  t.equal(w.peek().stillEjected, true, 'reset keeps it: it is the version\'s state, not the window\'s count')
  t.equal(w.peek().ejections, 0)

  const local = new SampleWindow(16, 1)
  local.recordEjection()
  t.equal(local.peek().stillEjected, true)
  local.merge(snap(10, 0, [1]), 'b')
  t.equal(local.peek().stillEjected, false, 'a locally ejected version is back once another instance saw it answer well')
})

t.test('failed requests bring no latency and no weight', async (t) => {
  const w = new SampleWindow(10, 1)
  w.merge(snap(100, 100, []), 'a')
  t.same(w.peek().latenciesMs, [])
  t.equal(w.peek().failures, 100)
  w.merge(snap(10, 5, [1, 1, 1, 1, 1]), 'b')
  t.equal(w.peek().latenciesMs.length, 5)
})
