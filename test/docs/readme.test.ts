import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import t from 'tap'
import { schema } from '../../src/config/schema.js'
import { ERROR_CODES } from '../../src/errors.js'
import { DURATION_BUCKETS } from '../../src/metrics/prometheus.js'
import { refusedOrigin } from '../helpers/upstream.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { scrape } from '../metrics/scrape.js'

// README.md and docs/ are the contract users read: these tests fail when the code and
// the pages drift apart (a code, key or metric added without a row, a wrong status,
// default or env var, a link to a file or heading that is not there).

const ROOT = process.cwd()
const PAGES = ['README.md', ...readdirSync('docs').filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)]
const read = (file: string): string => readFileSync(file, 'utf8')

/** The page's lines outside fenced code blocks (a `# comment` in a shell block is not a heading). */
function proseLines (text: string): string[] {
  const out: string[] = []
  let fence: string | undefined
  for (const line of text.split('\n')) {
    const m = /^\s*(`{3,}|~{3,})/.exec(line)
    if (m !== null) {
      if (fence === undefined) fence = m[1]![0]!
      else if (m[1]![0] === fence) fence = undefined
      continue
    }
    if (fence === undefined) out.push(line)
  }
  return out
}

/** Table rows of a page (outside code blocks), split into trimmed cells. */
function tableRows (text: string): string[][] {
  return proseLines(text)
    .filter((l) => l.startsWith('|'))
    .map((l) => l.replaceAll('\\|', '\u0000').split('|').slice(1, -1).map((c) => c.replaceAll('\u0000', '|').trim()))
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchors (text: string): Set<string> {
  const seen = new Map<string, number>()
  const out = new Set<string>()
  for (const line of proseLines(text)) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)
    if (m === null) continue
    const base = m[1]!.toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-')
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    out.add(n === 0 ? base : `${base}-${n}`)
  }
  return out
}

t.test('the docs exist and the README links to every page', async (t) => {
  const readme = read('README.md')
  t.ok(PAGES.length >= 9, `README.md and the docs/ pages (${PAGES.join(', ')})`)
  for (const page of PAGES.slice(1)) t.match(readme, `](${page})`, `README.md links to ${page}`)
})

t.test('every error code is in docs/errors.md with its HTTP status', async (t) => {
  const rows = tableRows(read('docs/errors.md'))
  for (const [code, { status }] of Object.entries(ERROR_CODES)) {
    const row = rows.find((r) => r[0] === `\`${code}\``)
    t.ok(row !== undefined, `${code} has a row in the error table`)
    t.equal(row?.[1], String(status), `${code} is documented with status ${status}`)
  }
  // any row on any page that puts a status next to exactly one code must use the registry's status
  for (const page of PAGES) {
    for (const row of tableRows(read(page))) {
      const codes = [...new Set(row.join(' ').match(/CANARYD_ERR_[A-Z_]+/g) ?? [])]
      for (const code of codes) t.ok(code in ERROR_CODES, `${page}: ${code} exists in src/errors.ts`)
      if (codes.length !== 1 || !(codes[0]! in ERROR_CODES)) continue
      const statuses = row.map((c) => /^\**([1-5]\d\d)\**(?!\d)/.exec(c)?.[1]).filter((s) => s !== undefined)
      const want = String(ERROR_CODES[codes[0] as keyof typeof ERROR_CODES].status)
      for (const s of statuses) t.equal(s, want, `${page}: ${codes[0]} is written with status ${s}, the registry says ${want}`)
    }
  }
  for (const page of PAGES) {
    for (const m of read(page).matchAll(/CANARYD_ERR_[A-Z_]*[A-Z]/g)) t.ok(m[0] in ERROR_CODES, `${page}: ${m[0]} exists in src/errors.ts`)
  }
})

t.test('every config key is in docs/configuration.md with its default and env var', async (t) => {
  const text = read('docs/configuration.md')
  const table = text.slice(text.indexOf('<!-- config-table -->'), text.indexOf('<!-- /config-table -->'))
  t.ok(table.length > 0, 'the config table is marked with <!-- config-table -->')
  const rows = tableRows(table)
  const keys: string[] = []
  const walk = (node: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(node)) {
      const spec = v as { env?: string; default?: unknown }
      if (k === 'routes') continue
      if (typeof spec === 'object' && spec !== null && 'default' in spec) {
        const key = `${prefix}${k}`
        keys.push(key)
        const row = rows.find((r) => r[0] === `\`${key}\``)
        t.ok(row !== undefined, `${key} has a row in the config table`)
        t.equal(row?.[1], `\`${JSON.stringify(spec.default)}\``, `${key}: default ${JSON.stringify(spec.default)}`)
        t.equal(row?.[2], spec.env === undefined ? '' : `\`${spec.env}\``, `${key}: env var ${spec.env ?? '(none)'}`)
        t.ok((row?.[3] ?? '').length > 0, `${key}: has a meaning`)
      } else if (typeof spec === 'object' && spec !== null) {
        walk(spec as Record<string, unknown>, `${prefix}${k}.`)
      }
    }
  }
  walk(schema as unknown as Record<string, unknown>, '')
  t.ok(keys.length >= 30, `walked the schema (${keys.length} keys)`)
  for (const r of rows.slice(2)) t.ok(keys.includes(r[0]!.replace(/`/g, '')), `documented key ${r[0]} exists in the schema`)
})

t.test('every metric on /metrics is in docs/metrics.md, and every documented metric is on /metrics', async (t) => {
  const text = read('docs/metrics.md')
  const reference = new Set(tableRows(text).map((r) => /^`(canaryd_[a-z_]+[a-z])`$/.exec(r[0] ?? '')?.[1]).filter((n) => n !== undefined))
  t.ok(reference.size >= 10, `found the reference table (${reference.size} rows)`)

  // the names written in the code (including families that only appear once a rollout runs)
  const src = ['src/metrics/names.ts', 'src/rollout/metrics.ts'].map(read).join('\n')
  const named = new Set([...src.matchAll(/'(canaryd_[a-z_]+[a-z])'/g)].map((m) => m[1]!))
  t.ok(named.size >= 5, `found the metric definitions (${named.size})`)
  for (const n of named) t.ok(reference.has(n), `${n} (in src/) has a row in the metrics reference`)

  // and what a running canaryd really exposes; prom-client's defaults are documented as canaryd_process_*, canaryd_nodejs_*
  const p = await startProxy(testConfig([twoVersionRoute(await refusedOrigin(), await refusedOrigin())]))
  t.teardown(p.close)
  const exposed = await scrape(p)
  const families = [...exposed.types.keys()].filter((n) => n.startsWith('canaryd_') && !/^canaryd_(process|nodejs)_/.test(n))
  t.ok(families.length >= 8, `scraped canaryd's own families (${families.length})`)
  t.ok(exposed.types.has('canaryd_process_cpu_seconds_total') && exposed.types.has('canaryd_nodejs_eventloop_lag_p99_seconds'), 'the default metrics carry the canaryd_ prefix')
  for (const n of families) t.ok(reference.has(n), `${n} (on /metrics) has a row in the metrics reference`)
  for (const n of reference) t.ok(exposed.types.has(n), `documented ${n} is on /metrics`)
})

t.test('docs/metrics.md gives the histogram buckets and the series count a scrape shows', async (t) => {
  const text = read('docs/metrics.md')
  const series = DURATION_BUCKETS.length + 3 // one _bucket per bound, +Inf, _sum, _count
  t.match(text, `Buckets (s): ${DURATION_BUCKETS.join(', ')}, +Inf.`, 'the bucket bounds')
  t.match(text, `${series} histogram series`, `${series} histogram series per (route, version)`)
  t.match(text, `: ${series} per (route, version)`, 'the reference row says the same')

  const p = await startProxy(testConfig([twoVersionRoute(await refusedOrigin(), await refusedOrigin())]))
  t.teardown(p.close)
  const exposed = await scrape(p)
  const mine = exposed.samples.filter((s) => s.name.startsWith('canaryd_request_duration_seconds') && s.labels.route === 'web' && s.labels.version === 'canary')
  t.equal(mine.length, series, `a 0 % canary already has ${series} histogram series at start-up`)
})

t.test('every relative link in README.md and docs/ points at a file (and heading) that exists', async (t) => {
  let links = 0
  for (const page of PAGES) {
    // code spans are not links: blank them so `[x](y)` inside backticks is ignored
    const prose = proseLines(read(page)).join('\n').replace(/`[^`\n]*`/g, 'code')
    for (const m of prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1]!
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue // http:, https:, mailto: — not a repository file
      links++
      const [path = '', anchor] = target.split('#')
      const file = path === '' ? resolve(page) : resolve(dirname(page), decodeURIComponent(path))
      const inRepo = !relative(ROOT, file).startsWith('..')
      t.ok(inRepo, `${page}: ${target} stays inside the repository`)
      t.ok(existsSync(file), `${page}: ${target} exists`)
      if (anchor !== undefined && anchor !== '' && existsSync(file) && statSync(file).isFile() && file.endsWith('.md')) {
        t.ok(anchors(read(file)).has(anchor), `${page}: ${target} names a heading of ${relative(ROOT, file)}`)
      }
    }
  }
  t.ok(links >= 30, `checked the relative links (${links})`)
})

t.test('every repository path the pages name in backticks exists', async (t) => {
  let paths = 0
  for (const page of PAGES) {
    for (const line of proseLines(read(page))) {
      for (const m of line.matchAll(/`((?:\.\.\/)+[^`\s]*|(?:src|test|bench|deploy|config|docs|\.ci)\/[^`\s]*)`/g)) {
        const path = m[1]!
        if (/[*{}<>…]/.test(path)) continue // a pattern or placeholder, not a file
        paths++
        t.notOk(path.startsWith('../'), `${page}: \`${path}\` is not outside the repository`)
        t.ok(existsSync(join(ROOT, path)), `${page}: \`${path}\` exists`)
      }
    }
  }
  t.ok(paths >= 20, `checked the named paths (${paths})`)
})
