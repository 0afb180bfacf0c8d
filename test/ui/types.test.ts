import t from 'tap'
import type { Mark as ServerMark, Sample as ServerSample, VersionSample as ServerVersionSample } from '../../src/admin/feed.js'
import type { RolloutSummary as ServerRolloutSummary } from '../../src/rollout/manager.js'
import type { Mark, RolloutSummary, Sample, VersionSample } from '../../src/ui/types.js'

// The page keeps its own copies of the shapes the server sends (src/ui may not
// import the server's code: the linter's import rules). These assignments are
// checked by `npm run lint` (tsc over test/): a field the server renames, drops
// or retypes breaks the build here, not the dashboard in a browser.
const assign = <T>(_x: T): true => true

t.test('the page reads every feed and summary shape the server sends', async (t) => {
  const sample = (s: ServerSample): Sample => ({ ...s, routes: Object.fromEntries(Object.entries(s.routes).map(([k, r]) => [k, { versions: r.versions, rollout: r.rollout as RolloutSummary | null }])) })
  const version = (v: ServerVersionSample): VersionSample => v
  const mark = (m: ServerMark): Mark => m
  const summary = (s: ServerRolloutSummary): RolloutSummary => s
  t.ok(assign(sample) && assign(version) && assign(mark) && assign(summary), 'server shapes assign to the page\'s (compile-time)')
})
