/**
 * The metric runner of a check: renders each metric's templates for the
 * canary (and, for `compare`, the baseline version), asks its provider, and
 * judges the numbers against `thresholdRange` and `compare`. Pure except for
 * the provider calls (provider-prometheus.ts, provider-http.ts hold the
 * sockets). A provider that cannot give a number makes its metric
 * inconclusive, never failed, unless the metric says `failOnNoData`: a
 * Prometheus outage must not roll canaries back.
 */
import { promDuration, renderTemplate, type MetricCompare } from '../config/analysis.js'
import type { MetricSpec } from '../config/plan.js'
import { ratio, type CheckResult } from './judge.js'
import { queryHttp, type ProviderAnswer } from './provider-http.js'
import { prometheusLabel, queryPrometheus } from './provider-prometheus.js'

// the template functions live beside the plan validation (config/ may not import rollout/)
export { promDuration, renderTemplate, templateNames } from '../config/analysis.js'
export type { ProviderAnswer } from './provider-http.js'

/** What a check's templates are rendered from. */
export interface MetricContext {
  route: string
  /** The canary version's name. */
  canary: string
  /** The stable version's name. */
  stable: string
  /** The plan's check interval ({{interval}}, as a PromQL duration). */
  intervalMs: number
  /** 1-based step number. */
  step: number
  /** The canary's current weight. */
  weight: number
  /** The plan's `analysis.variables`. */
  variables: Readonly<Record<string, string>>
}

/** One metric's outcome in a check record. */
export interface MetricResult {
  name: string
  verdict: 'pass' | 'fail' | 'inconclusive'
  /** The canary's value; null when there was no number. */
  canary: number | null
  /** Compare only: the baseline version's value. */
  baseline?: number | null
  /** Compare only: the "worse" ratio (lower-is-worse: baseline/canary; higher-is-worse: canary/baseline), 4 digits; null = infinitely worse. */
  ratio?: number | null
  /** Why fail or inconclusive, one line. */
  reason?: string
  /** The rendered queries (prometheus) or URLs (http). */
  queries: { canary: string; baseline?: string }
  durationMs: number
}

/** The judged part of a MetricResult. */
export type MetricJudgement = Pick<MetricResult, 'verdict' | 'canary' | 'baseline' | 'ratio' | 'reason'>

/** A number in a reason: integers as they are, others to 6 significant digits (0.8799999999 → 0.88). */
function fmt (x: number): string {
  return Number.isInteger(x) ? String(x) : String(Number(x.toPrecision(6)))
}

function why (a: ProviderAnswer): string {
  return 'noData' in a ? a.noData : 'error' in a ? a.error : ''
}

/** The version a compare's baseline names: "stable" is the role (the plan's stable version, whatever its name). */
export function baselineVersion (c: MetricCompare, stable: string): string {
  return c.baseline === 'stable' ? stable : c.baseline
}

/**
 * Judges one metric's numbers (pure).
 *
 * - No canary number → inconclusive with the provider's reason.
 * - `thresholdRange`: the canary fails below `min` or above `max`.
 * - `compare`: the "worse" ratio (lower-is-worse: baseline / canary,
 *   higher-is-worse: canary / baseline) fails above `maxRatio`; a zero
 *   denominator with a positive numerator is infinitely worse (ratio null),
 *   both zero is a ratio of 1. No baseline number → inconclusive; negative
 *   values have no meaningful ratio → inconclusive.
 * - Any fail → fail; else a missing number fails when `failOnNoData`, and is
 *   otherwise inconclusive. The reason joins every finding with "; ".
 */
export function judgeMetric (m: MetricSpec, canary: ProviderAnswer, baseline?: ProviderAnswer): MetricJudgement {
  const fails: string[] = []
  const missing: string[] = []
  const unsure: string[] = []
  const c = 'value' in canary ? canary.value : null
  const out: MetricJudgement = { verdict: 'pass', canary: c }
  if (c === null) missing.push(why(canary))
  else if (m.thresholdRange !== undefined) {
    const { min, max } = m.thresholdRange
    if (min !== undefined && c < min) fails.push(`canary ${fmt(c)} is below min ${min}`)
    if (max !== undefined && c > max) fails.push(`canary ${fmt(c)} is above max ${max}`)
  }
  if (m.compare !== undefined) {
    const { baseline: name, maxRatio, direction } = m.compare
    const b = baseline !== undefined && 'value' in baseline ? baseline.value : null
    out.baseline = b
    if (b === null) missing.push(`baseline ${name}: ${baseline === undefined ? 'not queried' : why(baseline)}`)
    else if (c !== null) {
      if (b < 0 || c < 0) unsure.push(`canary ${fmt(c)} vs ${name} ${fmt(b)}: a ratio of negative values means nothing`)
      else {
        const [num, den] = direction === 'lower-is-worse' ? [b, c] : [c, b]
        const r = den > 0 ? num / den : num > 0 ? null : 1
        out.ratio = ratio(num, den)
        if (r === null || r > maxRatio) {
          fails.push(`canary ${fmt(c)} vs ${name} ${fmt(b)} (ratio ${r === null ? 'infinite' : fmt(out.ratio!)} > ${maxRatio}, ${direction === 'lower-is-worse' ? 'lower' : 'higher'} is worse)`)
        }
      }
    }
  }
  if (fails.length > 0) out.verdict = 'fail'
  else if (missing.length > 0) out.verdict = m.failOnNoData ? 'fail' : 'inconclusive'
  else if (unsure.length > 0) out.verdict = 'inconclusive'
  const reasons = [...fails, ...missing, ...unsure]
  if (reasons.length > 0) out.reason = reasons.join('; ')
  return out
}

/** Template values for one version; a null-prototype map, so {{constructor}} is never "found". */
function templateValues (ctx: MetricContext, version: string): Record<string, string> {
  const v: Record<string, string> = Object.create(null) as Record<string, string>
  for (const [k, x] of Object.entries(ctx.variables)) v[k] = x
  // built-ins last: validation keeps variables from shadowing them, this keeps it true regardless
  v.route = ctx.route
  v.version = version
  v.interval = promDuration(ctx.intervalMs)
  v.step = String(ctx.step)
  v.weight = String(ctx.weight)
  return v
}

/** One rendered query of a metric: what is shown in the result, and how to run it. */
interface Rendered { shown: string; run: (signal: AbortSignal, env: NodeJS.ProcessEnv) => Promise<ProviderAnswer> }

function render (m: MetricSpec, ctx: MetricContext, version: string): Rendered {
  const values = templateValues(ctx, version)
  const p = m.provider
  if (p.type === 'prometheus') {
    const q = renderTemplate(m.query ?? '', values)
    return { shown: q, run: async (signal, env) => await queryPrometheus(p, q, signal, env) }
  }
  const url = renderTemplate(p.url, values, encodeURIComponent)
  const body = p.body === undefined ? undefined : renderTemplate(p.body, values)
  return { shown: url, run: async (signal, env) => await queryHttp(p, url, body, signal, env) }
}

/**
 * Runs one query, bounded by the signal whatever the provider does: the
 * providers honour the signal themselves, this race is the guarantee that a
 * check never waits past `timeoutMs` (a token file on a stuck mount, say).
 */
async function ask (m: MetricSpec, q: Rendered, signal: AbortSignal, timedOut: () => boolean, env: NodeJS.ProcessEnv): Promise<ProviderAnswer> {
  const what = m.provider.type === 'prometheus' ? prometheusLabel(m.provider) : q.shown
  let onAbort = (): void => {}
  const aborted = new Promise<ProviderAnswer>((resolve) => {
    onAbort = () => resolve({ error: timedOut() ? `${what} timed out after ${m.provider.timeoutMs} ms` : `${what}: the query was aborted` })
  })
  if (signal.aborted) onAbort()
  else signal.addEventListener('abort', onAbort, { once: true })
  try {
    return await Promise.race([q.run(signal, env).catch((err: unknown) => ({ error: `${what} failed: ${(err as Error).message}` })), aborted])
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

async function runMetric (m: MetricSpec, ctx: MetricContext, outer: AbortSignal | undefined, env: NodeJS.ProcessEnv): Promise<MetricResult> {
  const start = performance.now()
  const timeout = AbortSignal.timeout(m.provider.timeoutMs)
  const signal = outer === undefined ? timeout : AbortSignal.any([outer, timeout])
  const canaryQ = render(m, ctx, ctx.canary)
  const baselineQ = m.compare === undefined ? undefined : render(m, ctx, baselineVersion(m.compare, ctx.stable))
  const timedOut = (): boolean => timeout.aborted
  const [c, b] = await Promise.all([
    ask(m, canaryQ, signal, timedOut, env),
    baselineQ === undefined ? undefined : ask(m, baselineQ, signal, timedOut, env)
  ])
  const result: MetricResult = { name: m.name, ...judgeMetric(m, c, b), queries: { canary: canaryQ.shown }, durationMs: Math.round(performance.now() - start) }
  if (baselineQ !== undefined) result.queries.baseline = baselineQ.shown
  return result
}

/**
 * Runs every metric of a check, in parallel, each bounded by its provider's
 * `timeoutMs` and by `opts.signal` (a paused or aborted rollout). Never
 * rejects: a failed query is an inconclusive metric (or a failed one with
 * `failOnNoData`). Secrets are read at query time from `opts.env`
 * (default process.env) or their files.
 */
export async function runMetrics (metrics: readonly MetricSpec[], ctx: MetricContext, opts: { signal?: AbortSignal; env?: NodeJS.ProcessEnv } = {}): Promise<MetricResult[]> {
  const env = opts.env ?? process.env
  return await Promise.all(metrics.map(async (m) => await runMetric(m, ctx, opts.signal, env)))
}

/**
 * Folds metric results into a check result (in place): any failed metric
 * makes the check fail, its reasons ("metric <name>: <reason>") first; an
 * inconclusive metric turns a passing check inconclusive, its reason after
 * the others. `result.metrics` becomes `metrics`.
 */
export function combineMetrics (result: CheckResult, metrics: readonly MetricResult[]): void {
  const failed = metrics.filter((m) => m.verdict === 'fail').map((m) => `metric ${m.name}: ${m.reason ?? 'failed'}`)
  const unsure = metrics.filter((m) => m.verdict === 'inconclusive').map((m) => `metric ${m.name}: ${m.reason ?? 'inconclusive'}`)
  if (failed.length > 0) result.verdict = 'fail'
  else if (unsure.length > 0 && result.verdict === 'pass') result.verdict = 'inconclusive'
  result.reasons = [...failed, ...result.reasons, ...unsure]
  result.metrics = [...metrics]
}
