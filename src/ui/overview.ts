/**
 * `#/`: every route, its versions with weight and endpoints, the live
 * requests/s and error % from the feed, and where its rollout stands. The
 * structure comes from `GET /api/v1/routes` (so the page works while the
 * feed is down); the feed's samples fill in the live cells each second, and
 * its marks ask for a re-read.
 */
import { ApiError, call } from './api.js'
import { versionColors } from './charts.js'
import { fill, h, isObj, num, pct } from './dom.js'
import type { Feed } from './feed.js'
import { pace } from './pace.js'
import type { RolloutSummary, RouteView, Sample } from './types.js'

/**
 * `progressing · steps · step 2/4 · canary at 10% · 0 failed checks`, or
 * `no rollout`. The promotion to 100 % counts as the last step, as
 * `canaryd status` and the audit log count it.
 */
export function rolloutText (r: RolloutSummary | null | undefined): string {
  if (r === null || r === undefined) return 'no rollout'
  const step = r.state === 'promoted' ? r.steps + 1 : r.step
  return `${r.state} · ${r.phase} · step ${step}/${r.steps + 1} · ${r.canary} at ${pct(r.weight)} · ${r.failedChecks} failed check${r.failedChecks === 1 ? '' : 's'}`
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

/** A small coloured square beside a version's name, the colour of its lines on the charts. */
export function swatch (color: string | undefined): HTMLSpanElement {
  const s = h('span', { class: 'swatch', 'aria-hidden': 'true' })
  if (color !== undefined) s.style.background = color
  return s
}

/** The live cells of one version. */
interface Cells { weight: HTMLElement, endpoints: HTMLElement, rps: HTMLElement, errors: HTMLElement, p99: HTMLElement }

/** A message for a failed read: a 401 waits for the token form, anything else says what the server said. */
export function readFailed (err: unknown): HTMLElement {
  if (err instanceof ApiError && err.status === 401) return h('p', { class: 'muted' }, 'Waiting for the admin token.')
  return h('p', { class: 'error' }, `Could not read from the admin API: ${err instanceof ApiError ? `${err.message}${err.code === '' ? '' : ` (${err.code})`}` : String(err)}`)
}

/** Mounts the overview in `main`; returns its unmount. */
export function mountOverview (main: HTMLElement, feed: Feed): () => void {
  const list = h('div', { class: 'cards' }, h('p', { class: 'muted' }, 'Loading routes…'))
  const note = h('p', { class: 'muted', hidden: true }, 'This instance runs with metrics off: no live figures.')
  const problem = h('div')
  fill(main, h('h1', null, 'Routes'), note, problem, list)
  const cells = new Map<string, Map<string, Cells>>()
  const rollouts = new Map<string, HTMLElement>()

  let shown = ''
  const render = (routes: RouteView[]): void => {
    // the same answer as last time leaves the page alone (keyboard focus stays where it was)
    const key = JSON.stringify(routes)
    if (key === shown) return
    shown = key
    cells.clear()
    rollouts.clear()
    if (routes.length === 0) {
      fill(list, h('p', { class: 'muted' }, 'No routes.'))
      return
    }
    fill(list, ...routes.map((r) => {
      const colors = versionColors(r.versions.map((v) => v.name), undefined, r.rollout?.canary)
      const byVersion = new Map<string, Cells>()
      cells.set(r.name, byVersion)
      const href = `#/routes/${encodeURIComponent(r.name)}`
      const rollout = h('a', { href, class: `state state-${r.rollout?.state ?? 'none'}` }, rolloutText(r.rollout))
      rollouts.set(r.name, rollout)
      const rows = r.versions.map((v) => {
        const c: Cells = { weight: h('td', { class: 'n' }, pct(v.weight)), endpoints: h('td', { class: 'n' }, '–'), rps: h('td', { class: 'n' }, '–'), errors: h('td', { class: 'n' }, '–'), p99: h('td', { class: 'n' }, '–') }
        byVersion.set(v.name, c)
        const upstream = Array.isArray(v.upstream) ? v.upstream.join(', ') : v.upstream
        return h('tr', null, h('th', { scope: 'row' }, swatch(colors.get(v.name)), v.name), c.weight, c.rps, c.errors, c.p99, c.endpoints, h('td', { class: 'upstream' }, upstream))
      })
      return h('section', { class: 'card', 'data-testid': `route-row-${r.name}`, 'aria-labelledby': `route-${r.name}` },
        h('h2', { id: `route-${r.name}` }, h('a', { href, 'data-testid': `route-link-${r.name}` }, r.name)),
        h('p', null, 'Rollout: ', rollout),
        routeExtras(r) !== '' && h('p', { class: 'muted' }, routeExtras(r)),
        h('div', { class: 'scroll' }, h('table', null,
          h('thead', null, h('tr', null, ...['version', 'weight', 'req/s', 'error %', 'p99 ms', 'healthy / ejected', 'upstream'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, ...rows))))
    }))
    const last = feed.last
    if (last !== undefined) live(last)
  }

  const live = (s: Sample): void => {
    note.hidden = feed.metrics
    for (const [route, byVersion] of cells) {
      const rs = s.routes[route]
      if (rs === undefined) continue
      for (const [name, c] of byVersion) {
        const v = rs.versions[name]
        if (v === undefined) continue
        c.weight.textContent = pct(v.weight)
        c.endpoints.textContent = v.endpoints === undefined || v.endpoints === null ? '–' : `${v.endpoints.healthy} / ${v.endpoints.ejected}`
        c.rps.textContent = num(v.rps, 1)
        c.errors.textContent = num(v.errorPct, 2)
        c.p99.textContent = num(v.p99Ms, 1)
      }
      const ro = rollouts.get(route)
      if (ro !== undefined && rs.rollout !== undefined) {
        ro.textContent = rolloutText(rs.rollout)
        ro.className = `state state-${rs.rollout?.state ?? 'none'}`
      }
    }
  }

  // the feed announces changes with marks; while it is down, re-read every 5 s instead
  const pacer = pace(async () => {
    try {
      const { data } = await call<{ routes: RouteView[] }>('GET', '/api/v1/routes')
      fill(problem)
      render(data.routes)
    } catch (err) {
      // what was read before stays up, with what went wrong above it
      fill(problem, readFailed(err))
      if (cells.size === 0) fill(list)
      throw err
    }
  }, 5000, () => feed.status !== 'live')
  const off = feed.on((ev) => {
    if (ev.type === 'sample') live(ev.sample)
    else if (ev.type === 'mark' || ev.type === 'hello') pacer.now()
  })
  return () => {
    off()
    pacer.stop()
  }
}
