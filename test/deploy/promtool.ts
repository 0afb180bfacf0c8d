import { spawnSync } from 'node:child_process'

/** Why promtool checks cannot run here, or undefined when promtool is on PATH. */
export function promtoolMissing (): string | undefined {
  const r = spawnSync('promtool', ['--version'], { encoding: 'utf8' })
  if (r.error !== undefined) return `promtool not installed (Debian package "prometheus"; .ci/run installs it): ${r.error.message}`
  return undefined
}

/** Runs promtool with `args` (and `input` on stdin); returns its exit status and output. */
export function promtool (args: string[], input?: string, cwd?: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', args, { input, cwd, encoding: 'utf8', timeout: 30_000 })
  return { status: r.status, output: `${r.stdout}${r.stderr}` }
}

/**
 * Every sample name an exposition can answer a query for: each family name
 * and, for histograms, its _bucket/_sum/_count series.
 */
export function exposedNames (types: ReadonlyMap<string, string>, sampleNames: Iterable<string>): Set<string> {
  const names = new Set<string>(sampleNames)
  for (const [name, type] of types) {
    names.add(name)
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s)
  }
  return names
}

/** The canaryd_* metric names a PromQL expression uses (recording-rule names like canaryd:x:y excluded). */
export function metricNamesIn (expr: string): string[] {
  return [...new Set(expr.match(/\bcanaryd_[a-zA-Z0-9_]+/g) ?? [])]
}
