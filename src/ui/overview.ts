/**
 * `#/`: every route, its versions with weight and endpoints, the live
 * requests/s and error % from the feed, and where its rollout stands. The
 * structure comes from `GET /api/v1/routes` (so the page works while the
 * feed is down); the feed's samples fill in the live cells each second
 * (while the latest is at most 5 s old: otherwise the API's weights and
 * "–"), and its marks ask for a re-read.
 */
import { call } from './api.js'
import { versionColors } from './charts.js'
import { fill, h, num, own, pct } from './dom.js'
import type { Feed } from './feed.js'
import { origins, readFailed, rolloutText, routeExtras, swatch } from './format.js'
import { pace } from './pace.js'
import type { RolloutSummary, RouteView, Sample } from './types.js'

/** The live cells of one version, and its weight as the API last said (shown when the feed has nothing current). */
interface Cells { weight: HTMLElement, endpoints: HTMLElement, rps: HTMLElement, errors: HTMLElement, p99: HTMLElement, base: number }

/** A route's rollout link, and its rollout as the API last said. */
interface RolloutCell { el: HTMLElement, base: RolloutSummary | null }

/** Mounts the overview in `main`; returns its unmount. */
export function mountOverview (main: HTMLElement, feed: Feed): () => void {
  const list = h('div', { class: 'cards' }, h('p', { class: 'muted' }, 'Loading routes…'))
  const note = h('p', { class: 'muted', hidden: true }, 'This instance runs with metrics off: no live figures.')
  const problem = h('div')
  fill(main, h('h1', null, 'Routes'), note, problem, list)
  const cells = new Map<string, Map<string, Cells>>()
  const rollouts = new Map<string, RolloutCell>()
  /** set by unmount: a read that resolves later leaves the page alone */
  let gone = false

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
      rollouts.set(r.name, { el: rollout, base: r.rollout })
      const rows = r.versions.map((v) => {
        const c: Cells = { weight: h('td', { class: 'n' }, pct(v.weight)), endpoints: h('td', { class: 'n' }, '–'), rps: h('td', { class: 'n' }, '–'), errors: h('td', { class: 'n' }, '–'), p99: h('td', { class: 'n' }, '–'), base: v.weight }
        byVersion.set(v.name, c)
        return h('tr', null, h('th', { scope: 'row' }, swatch(colors.get(v.name)), v.name), c.weight, c.rps, c.errors, c.p99, c.endpoints, h('td', { class: 'upstream' }, origins(v.upstream)))
      })
      const extras = routeExtras(r)
      return h('section', { class: 'card', 'data-testid': `route-row-${r.name}`, 'aria-labelledby': `route-${r.name}` },
        h('h2', { id: `route-${r.name}` }, h('a', { href, 'data-testid': `route-link-${r.name}` }, r.name)),
        h('p', null, 'Rollout: ', rollout),
        extras !== '' && h('p', { class: 'muted' }, extras),
        h('div', { class: 'scroll' }, h('table', null,
          h('thead', null, h('tr', null, ...['version', 'weight', 'req/s', 'error %', 'p99 ms', 'healthy / ejected', 'upstream'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, ...rows))))
    }))
    live(feed.current)
  }

  /** Fills the live cells from a current sample; with none (the latest is too old), back to the API's answer and "–". */
  const live = (s: Sample | undefined): void => {
    note.hidden = feed.metrics
    for (const [route, byVersion] of cells) {
      const rs = own(s?.routes, route)
      // a current sample without this route (just added by a reload) leaves its row as it is
      if (s !== undefined && rs === undefined) continue
      for (const [name, c] of byVersion) {
        const v = own(rs?.versions, name)
        if (rs !== undefined && v === undefined) continue
        c.weight.textContent = pct(v?.weight ?? c.base)
        c.endpoints.textContent = v?.endpoints === undefined || v.endpoints === null ? '–' : `${v.endpoints.healthy} / ${v.endpoints.ejected}`
        c.rps.textContent = num(v?.rps, 1)
        c.errors.textContent = num(v?.errorPct, 2)
        c.p99.textContent = num(v?.p99Ms, 1)
      }
      const ro = rollouts.get(route)
      const summary = rs === undefined ? ro?.base : rs.rollout
      if (ro !== undefined && summary !== undefined) {
        ro.el.textContent = rolloutText(summary)
        ro.el.className = `state state-${summary?.state ?? 'none'}`
      }
    }
  }

  // the feed announces changes with marks; while it is down, re-read every 5 s instead
  const pacer = pace(async () => {
    try {
      const { data } = await call<{ routes: RouteView[] }>('GET', '/api/v1/routes')
      if (gone) return
      fill(problem)
      render(data.routes)
    } catch (err) {
      if (gone) return
      // what was read before stays up, with what went wrong above it
      fill(problem, readFailed(err))
      if (cells.size === 0) fill(list)
      throw err
    }
  }, 5000, () => feed.status !== 'live')
  const off = feed.on((ev) => {
    if (ev.type === 'sample' || ev.type === 'stale') live(feed.current)
    else if (ev.type === 'mark' || ev.type === 'hello') pacer.now()
  })
  return () => {
    gone = true
    off()
    pacer.stop()
  }
}
