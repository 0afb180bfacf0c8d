/**
 * What the pages say the same way: a rollout in one line, a route's
 * segments and mirror, a plan step, a version's colour swatch, a failed
 * read. One place, so the overview, the route, audit and fleet pages agree.
 */
import { ApiError, errorText } from './api.js'
import { h, isObj, pct } from './dom.js'
import type { RolloutSummary, RolloutView, RouteView } from './types.js'

/**
 * `progressing · steps · step 2/4 · canary at 10% · 0 failed checks`, or
 * `no rollout`. The promotion to 100 % counts as the last step, as
 * `canaryd status` and the audit log count it.
 */
export function rolloutText (r: RolloutSummary | null | undefined): string {
  if (r === null || r === undefined) return 'no rollout'
  return `${r.state} · ${r.phase} · step ${stepOf(r.state, r.step, r.steps)} · ${r.canary} at ${pct(r.weight)} · ${r.failedChecks} failed check${r.failedChecks === 1 ? '' : 's'}`
}

/** `2/4`: the step of `steps` plan steps, the promotion to 100 % counted as the last (reached once promoted). */
export function stepOf (state: string, step: number, steps: number): string {
  return `${state === 'promoted' ? steps + 1 : step}/${steps + 1}`
}

/** Origins as one string (a version's upstream is one origin or a list). */
export function origins (v: unknown): string {
  return Array.isArray(v) ? v.join(', ') : String(v ?? '–')
}

/** The route's segments and mirror in one line ('' when it has neither): who gets what before the weights apply. */
export function routeExtras (r: RouteView): string {
  const parts: string[] = []
  const segs = r.segments.map((g) => {
    const to = typeof g.version === 'string' ? g.version : isObj(g.weights) ? Object.entries(g.weights).map(([v, w]) => `${v} ${String(w)}%`).join('/') : '?'
    return `${String(g.name)} → ${to}`
  })
  if (segs.length !== 0) parts.push(`segments (first match wins): ${segs.join(', ')}`)
  const m = r.mirror
  if (m !== null) parts.push(`mirror: ${String(m.percent)}% of requests copied to ${String(m.version)}`)
  return parts.join(' · ')
}

/** A plan step as text: `10`, or `staff:100` for a step that moves one segment. */
export function planStep (s: RolloutView['steps'][number]): string {
  return typeof s === 'number' ? String(s) : `${s.segment}:${s.weight}`
}

/** A small coloured square beside a version's name, the colour of its lines on the charts. */
export function swatch (color: string | undefined): HTMLSpanElement {
  const s = h('span', { class: 'swatch', 'aria-hidden': 'true' })
  if (color !== undefined) s.style.background = color
  return s
}

/** A message for a failed read: a 401 waits for the token form, anything else says what the server said. */
export function readFailed (err: unknown): HTMLElement {
  if (err instanceof ApiError && err.status === 401) return h('p', { class: 'muted' }, 'Waiting for the admin token.')
  return h('p', { class: 'error' }, `Could not read from the admin API: ${errorText(err)}`)
}
