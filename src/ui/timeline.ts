/**
 * The rollout's timeline, newest first: each transition of its history and
 * each check with the figures it judged, its verdict and why — the same
 * record `canaryd rollout status` prints, as the server keeps it (the last
 * 100 transitions and 20 checks).
 */
import { fill, h, num, pct, table, when, type Child } from './dom.js'
import type { Check, CheckFigures, HistoryEntry, RolloutView } from './types.js'

/** A verdict as a coloured word (colour plus text: never colour alone). */
function verdictBadge (verdict: string): HTMLSpanElement {
  return h('span', { class: `badge v-${verdict}` }, verdict)
}

function figures (v: RolloutView, c: Check): Child {
  const sides: Array<[string, CheckFigures | undefined]> = [[v.stable, c.stable], [v.canary, c.canary]]
  const rows = sides.filter((s): s is [string, CheckFigures] => s[1] !== undefined).map(([name, f]) => [
    name, String(f.requests), String(f.failures), num(f.successRate, 3), num(f.p50Ms, 2), num(f.p99Ms, 2),
    f.ejections === undefined ? '–' : `${f.ejections}${f.stillEjected === true ? ' (still out)' : ''}`
  ])
  return rows.length === 0 ? null : table(['version', 'requests', 'failures', 'success %', 'p50 ms', 'p99 ms', 'ejections'], rows, { class: 'compact' })
}

/** A ratio of the judge: null is "infinitely worse" (the other side was 0; JSON has no Infinity), absent is none. */
function ratio (r: number | null | undefined): string {
  return r === null ? '∞' : num(r, 3)
}

/** `step 2 at 10%`, naming the segment when the plan's step moves one segment only. */
function stepText (v: RolloutView, step: number, weight: number): string {
  const s = v.steps[step - 1]
  return typeof s === 'object' ? `step ${step} (segment ${s.segment} to ${pct(s.weight)})` : `step ${step} at ${pct(weight)}`
}

function tests (c: Check): Child {
  const parts: string[] = []
  if (c.errorTest !== undefined) parts.push(`error test p=${num(c.errorTest.p, 4)}, ratio ${ratio(c.errorTest.ratio)}`)
  if (c.latencyTest !== undefined) parts.push(`latency test p=${num(c.latencyTest.p, 4)}, p99 ratio ${ratio(c.latencyTest.p99Ratio)}`)
  if (c.sequential?.decided !== undefined) parts.push(`sequential judge: ${c.sequential.decided}`)
  if (c.instances !== undefined) parts.push(`${c.instances} instance${c.instances === 1 ? '' : 's'} counted`)
  return parts.length === 0 ? null : h('p', { class: 'muted' }, parts.join(' · '))
}

function checkItem (v: RolloutView, c: Check): HTMLLIElement {
  const s = c.shadow
  return h('li', { class: `check c-${c.verdict}` },
    h('p', { class: 'head' }, when(c.at), ' ', verdictBadge(c.verdict), ` check · ${c.phase === undefined ? '' : `${c.phase} · `}${stepText(v, c.step, c.weight)} · ${c.failedChecks} failed so far`),
    c.reasons.length === 0 ? null : h('ul', { class: 'reasons' }, ...c.reasons.map((r) => h('li', null, r))),
    figures(v, c),
    tests(c),
    s === undefined ? null : h('p', null, `Shadow: ${s.pairs} pairs, ${s.mismatches} mismatches (${num(s.mismatchRate, 2)} %), latency ratio ${num(s.latencyRatio, 3)}`),
    c.metrics === undefined || c.metrics.length === 0
      ? null
      : table(['metric', 'verdict', 'canary', 'baseline', 'ratio', 'reason'], c.metrics.map((m) => [m.name, verdictBadge(m.verdict), num(m.canary, 4), num(m.baseline, 4), ratio(m.ratio), m.reason ?? '']), { class: 'compact' }),
    c.guidance?.note === undefined ? null : h('p', { class: 'muted' }, `Guidance: ${c.guidance.note}`))
}

function historyItem (v: RolloutView, e: HistoryEntry): HTMLLIElement {
  return h('li', { class: `event e-${e.event}` },
    h('p', { class: 'head' }, when(e.at), ' ', h('strong', null, e.event), ` · ${e.state} · ${stepText(v, e.step, e.weight)}`),
    e.reason === undefined ? null : h('p', null, e.reason))
}

/** The timeline list (data-testid `timeline`); rebuilt only when the record changed, so reading it is not disturbed. */
export class Timeline {
  readonly el = h('ol', { class: 'timeline', 'data-testid': 'timeline' })
  #key = ''

  update (v: RolloutView | null): void {
    const key = v === null ? '' : `${v.startedAt}|${v.updatedAt}|${v.checks.length}|${v.history.length}|${v.checks[v.checks.length - 1]?.at ?? ''}`
    if (key === this.#key && this.el.childElementCount !== 0) return
    this.#key = key
    if (v === null) {
      fill(this.el, h('li', { class: 'muted' }, 'No rollout yet.'))
      return
    }
    const items: Array<[number, HTMLLIElement]> = [
      ...v.history.map((e): [number, HTMLLIElement] => [Date.parse(e.at), historyItem(v, e)]),
      ...v.checks.map((c): [number, HTMLLIElement] => [Date.parse(c.at), checkItem(v, c)])
    ]
    // newest first (a stable sort: at the same millisecond the transition stays above the check that caused it)
    items.sort((a, b) => b[0] - a[0])
    fill(this.el, ...items.map((i) => i[1]))
  }
}
