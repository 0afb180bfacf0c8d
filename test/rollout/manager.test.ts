import t from 'tap'
import { createLogger } from '../../src/logger.js'
import { ManualClock } from '../../src/rollout/clock.js'
import { RolloutManager, type RolloutStore } from '../../src/rollout/manager.js'

const PLAN = { canary: 'canary', steps: [10, 50, 100], intervalMs: 1000, analysis: { minRequests: 1 } }

/** An in-memory store whose weight writes wait for `release()` (or fail once with `failNext`). */
function slowStore (): RolloutStore & { writes: Array<Record<string, number>>; release: () => void; failNext: boolean } {
  let weights: Record<string, number> = { stable: 100, canary: 0 }
  let waiting: Array<() => void> = []
  const store = {
    writes: [] as Array<Record<string, number>>,
    failNext: false,
    release () { const w = waiting; waiting = []; for (const f of w) f() },
    async setWeights (_route: string, w: unknown): Promise<unknown> {
      await new Promise<void>((resolve) => waiting.push(resolve))
      if (store.failNext) {
        store.failNext = false
        throw new Error('disk full')
      }
      weights = w as Record<string, number>
      store.writes.push(weights)
      return undefined
    },
    async setRolloutState (): Promise<void> {},
    getRolloutState: () => undefined,
    weights: (route: string) => route === 'web' ? weights : undefined,
    routeNames: ['web'],
    setRolloutSummary () {},
    onChange () {}
  }
  return store
}

t.test('concurrent starts on one route: the second is refused while the first is still writing', async (t) => {
  const store = slowStore()
  const clock = new ManualClock()
  const m = new RolloutManager({ store, logger: createLogger('silent'), clock })
  const first = m.start('web', PLAN)
  await t.rejects(m.start('web', PLAN), { code: 'CANARYD_ERR_ROLLOUT_CONFLICT', message: /already has a rollout starting/ })
  store.release()
  t.equal((await first).state, 'progressing')
  t.equal(store.writes.length, 1, 'one controller applied its first step')
  t.equal(clock.pending, 1, 'one timer armed')
  await t.rejects(m.start('web', PLAN), { code: 'CANARYD_ERR_ROLLOUT_CONFLICT', message: /already has a rollout progressing/ })
  m.close()
})

t.test('a failed start releases the route', async (t) => {
  const store = slowStore()
  const clock = new ManualClock()
  const m = new RolloutManager({ store, logger: createLogger('silent'), clock })
  store.failNext = true
  const failing = m.start('web', PLAN)
  store.release()
  await t.rejects(failing, /disk full/)
  t.equal(m.controller('web'), undefined, 'no controller kept')
  t.equal(clock.pending, 0, 'no timer left behind')
  const again = m.start('web', PLAN)
  store.release()
  t.equal((await again).state, 'progressing', 'the route can be started again')
  m.close()
})
