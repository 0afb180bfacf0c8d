import { readFileSync } from 'node:fs'
import t from 'tap'
import { schema } from '../../src/config/schema.js'
import { ERROR_CODES } from '../../src/errors.js'

// The README is the contract users read: these tests fail when code and README drift apart.
const readme = readFileSync('README.md', 'utf8')

t.test('every error code is in the README with its HTTP status', async (t) => {
  for (const [code, { status }] of Object.entries(ERROR_CODES)) {
    const rows = readme.split('\n').filter((l) => l.startsWith('|') && l.includes(`\`${code}\``))
    t.ok(rows.length > 0, `${code} has a row in a README table`)
    const withStatus = new RegExp(`\\|\\s*${status}\\s*\\|`)
    t.ok(rows.some((r) => withStatus.test(r)), `${code} is documented with status ${status}`)
  }
  const documented = [...readme.matchAll(/`(CANARYD_ERR_[A-Z_]+)`/g)].map((m) => m[1]!)
  for (const code of new Set(documented)) t.ok(code in ERROR_CODES, `README's ${code} exists in src/errors.ts`)
})

t.test('every config key is in the README with its default and env var', async (t) => {
  const walk = (node: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(node)) {
      const spec = v as { env?: string; default?: unknown; doc?: string }
      if (k === 'routes') continue
      if (typeof spec === 'object' && spec !== null && 'default' in spec) {
        const key = `${prefix}${k}`
        const row = readme.split('\n').find((l) => l.startsWith(`| \`${key}\``))
        t.ok(row !== undefined, `${key} has a row in the config table`)
        if (spec.env !== undefined) t.match(row ?? '', `\`${spec.env}\``, `${key}: env var ${spec.env}`)
        t.match(row ?? '', `\`${JSON.stringify(spec.default)}\``, `${key}: default ${JSON.stringify(spec.default)}`)
      } else if (typeof spec === 'object' && spec !== null) {
        walk(spec as Record<string, unknown>, `${prefix}${k}.`)
      }
    }
  }
  walk(schema as unknown as Record<string, unknown>, '')
})

t.test('every canaryd_ metric the code registers is in the README', async (t) => {
  const src = ['src/metrics/names.ts', 'src/rollout/metrics.ts'].map((f) => readFileSync(f, 'utf8')).join('\n')
  const names = new Set([...src.matchAll(/'(canaryd_[a-z_]+[a-z])'/g)].map((m) => m[1]!))
  t.ok(names.size >= 5, `found the metric definitions (${names.size})`)
  for (const n of names) t.match(readme, `\`${n}\``, `${n} documented`)
})
