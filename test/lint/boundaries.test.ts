/**
 * The import directions of STYLE.md are lint rules (eslint.config.js): this
 * runs the project's own ESLint config on small sources placed in each folder
 * and checks that a wrong-direction import is an error and a right one is not.
 */
import { ESLint } from 'eslint'
import t from 'tap'

const eslint = new ESLint({ cwd: process.cwd() })
const RULE = '@typescript-eslint/no-restricted-imports'

/** The boundary errors ESLint reports for `code` as if it were the file `path`. */
async function violations (path: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: path })
  return (result?.messages ?? []).filter((m) => m.ruleId === RULE).map((m) => m.message)
}

/** [file, import line, allowed?]. */
const CASES: Array<[string, string, boolean]> = [
  ['src/proxy/x.ts', "import { AdminServer } from '../admin/server.js'", false],
  ['src/proxy/x.ts', "import { RolloutManager } from '../rollout/manager.js'", false],
  ['src/proxy/x.ts', "import { pickVersion } from '../routing/pick.js'", true],
  ['src/proxy/x.ts', "import { classifyUpstreamError } from '../upstream/classify.js'", true],
  ['src/routing/x.ts', "import { Upstreams } from '../upstream/pools.js'", false],
  ['src/routing/x.ts', "import type { Upstreams } from '../upstream/pools.js'", true],
  ['src/metrics/x.ts', "import { classifyUpstreamError } from '../upstream/classify.js'", false],
  ['src/metrics/x.ts', "import type { UpstreamFailure } from '../upstream/classify.js'", false],
  ['src/upstream/x.ts', "import { PrometheusMetrics } from '../metrics/prometheus.js'", false],
  ['src/upstream/x.ts', "import type { UpstreamErrorKind } from '../metrics/kinds.js'", true],
  ['src/config/x.ts', "import { RolloutManager } from '../rollout/manager.js'", false],
  ['src/rollout/x.ts', "import { AdminServer } from '../admin/server.js'", false],
  ['src/rollout/x.ts', "import { validatePlan } from '../config/plan.js'", true],
  ['src/admin/x.ts', "import { ProxyServer } from '../proxy/server.js'", false],
  ['src/admin/x.ts', "import { RolloutManager } from '../rollout/manager.js'", true]
]

t.test('wrong-direction imports are lint errors, allowed ones are not', async (t) => {
  for (const [path, line, allowed] of CASES) {
    const found = await violations(path, `${line}\nexport const x = 1\n`)
    if (allowed) t.same(found, [], `${path}: ${line} is allowed`)
    else t.match(found.join('\n'), /STYLE\.md/, `${path}: ${line} is refused, naming STYLE.md`)
  }
})

t.test('the code base itself has no boundary violation', async (t) => {
  const results = await eslint.lintFiles(['src/**/*.ts'])
  const found = results.flatMap((r) => r.messages.filter((m) => m.ruleId === RULE).map((m) => `${r.filePath}:${m.line} ${m.message}`))
  t.same(found, [], 'no wrong-direction import in src/')
})
