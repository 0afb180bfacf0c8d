/**
 * `#/routes/<name>`: the live charts with their figures as text, the
 * weights, the rollout and its actions, starting a rollout, and the
 * timeline. Charts follow the feed each second; the route and its rollout
 * are re-read when the feed marks something on this route, and every 5 s as
 * a fallback (a check the feed missed while reconnecting still shows up).
 * The figures beside the charts are the latest sample's only while it is
 * at most 5 s old; otherwise they read "–".
 */
import { ApiError, call, routePath } from './api.js'
import { KINDS, LiveChart, VERDICT_COLORS, valueOf, versionColors, type ChartKind } from './charts.js'
import { clock, fill, h, num, own, pct } from './dom.js'
import type { Feed } from './feed.js'
import { readFailed, rolloutText, routeExtras, swatch } from './format.js'
import { pace } from './pace.js'
import { PlanPanel } from './plan.js'
import { ACTIVE, RolloutPanel } from './rollout.js'
import { Timeline } from './timeline.js'
import type { RolloutView, RouteView } from './types.js'
import { WeightsPanel } from './weights.js'

/** One chart with the figures table beside it. */
interface Panel { kind: ChartKind, chart: LiveChart | null, cells: Map<string, HTMLElement> }

/** What the marks on the charts mean (the canvas cannot say it). */
function marksLegend (): HTMLElement {
  const tick = (verdict: string): HTMLElement => {
    const s = h('span', { class: 'tick', 'aria-hidden': 'true' })
    s.style.background = VERDICT_COLORS[verdict] ?? ''
    return h('span', null, s, ` check ${verdict}`)
  }
  return h('p', { class: 'legend' },
    h('span', null, h('span', { class: 'line dashed', 'aria-hidden': 'true' }), ' weights changed'),
    h('span', null, h('span', { class: 'line', 'aria-hidden': 'true' }), ' rollout state changed'),
    tick('pass'), tick('fail'), tick('inconclusive'))
}

/** Mounts the route page; returns its unmount. */
export function mountRoute (main: HTMLElement, feed: Feed, name: string): () => void {
  const summary = h('p', { class: 'muted' }, 'Loading…')
  const problem = h('div')
  const versionsLegend = h('p', { class: 'legend' })
  const lastSample = h('span', { class: 'muted' })
  const metricsOff = h('p', { class: 'muted', hidden: true }, 'This instance runs with metrics off: there are no figures to chart, and every check is inconclusive.')
  const grid = h('div', { class: 'charts' })
  const announce = h('input', { type: 'checkbox', id: 'announce' })
  // the pacer starts after the panels that call it exist
  const pacer = { now: () => {}, stop: () => {} }
  const weights = new WeightsPanel(() => pacer.now())
  const rollout = new RolloutPanel(() => pacer.now())
  const plan = new PlanPanel(() => pacer.now())
  const timeline = new Timeline()
  const body = h('div', { hidden: true },
    h('section', { 'aria-labelledby': 'live-title' },
      h('h2', { id: 'live-title' }, 'Live, last 5 minutes ', lastSample),
      versionsLegend, marksLegend(), metricsOff, grid,
      h('p', { class: 'field inline' }, announce, h('label', { for: 'announce' }, 'Announce the figures as they change (screen readers)'))),
    h('div', { class: 'panels' }, weights.el, rollout.el),
    // what is happening before what could be started: during a rollout the timeline is what one reads
    h('section', { 'aria-labelledby': 'timeline-title' }, h('h2', { id: 'timeline-title' }, 'Timeline (newest first)'), timeline.el),
    plan.el)
  fill(main, h('p', null, h('a', { href: '#/' }, '← Routes')), h('h1', null, `Route ${name}`), summary, problem, body)

  let panels: Panel[] = []
  let chartKey = ''
  let colors = new Map<string, string>()
  let versions: string[] = []
  /** set by unmount: a load that resolves later must not build charts nobody would destroy */
  let gone = false

  const buildCharts = (): void => {
    if (gone) return
    for (const p of panels) p.chart?.destroy()
    fill(versionsLegend, ...versions.map((v) => h('span', null, swatch(colors.get(v)), ` ${v}`)))
    grid.replaceChildren()
    panels = KINDS.map((kind) => {
      const box = h('div', { class: 'chart', 'data-testid': `chart-${kind.kind}`, role: 'img', 'aria-label': `${kind.title} per version over the last 5 minutes; the current figures are in the table beside it` })
      const cells = new Map<string, HTMLElement>()
      const rows = versions.map((v) => {
        const td = h('td', { 'data-version': v, class: 'n' }, '–')
        cells.set(v, td)
        return h('tr', null, h('th', { scope: 'row' }, swatch(colors.get(v)), v), td)
      })
      const figs = h('table', { class: 'figures', 'data-testid': `figures-${kind.kind}`, 'aria-live': announce.checked ? 'polite' : 'off' },
        h('caption', null, `now, ${kind.unit}`), h('tbody', null, ...rows))
      grid.append(h('div', { class: 'chart-panel' }, h('h3', null, kind.title), h('div', { class: 'chart-row' }, box, figs)))
      let chart: LiveChart | null = null
      try {
        chart = new LiveChart(box, kind, versions, colors)
      } catch (err) {
        // uPlot did not load (a blocked or missing vendor file): the figures beside still tell the story
        box.textContent = `Chart unavailable: ${String(err)}`
      }
      return { kind, chart, cells }
    })
    draw()
  }

  const draw = (): void => {
    metricsOff.hidden = feed.metrics
    const marks = feed.marks.filter((m) => m.route === name)
    const last = feed.last
    // the lines show what was; the figures only what is (a sample from before a gap is not "now")
    const now = feed.current
    lastSample.textContent = last === undefined ? '(waiting for the feed)' : `(last sample ${clock(last.t)})`
    for (const p of panels) {
      p.chart?.update(feed.samples, name, marks)
      for (const [v, td] of p.cells) td.textContent = num(valueOf(own(own(now?.routes, name)?.versions, v), p.kind.field), p.kind.digits)
    }
  }

  announce.addEventListener('change', () => {
    for (const t of grid.querySelectorAll('table.figures')) t.setAttribute('aria-live', announce.checked ? 'polite' : 'off')
  })

  const load = async (): Promise<void> => {
    let route: RouteView
    let view: RolloutView | null = null
    try {
      route = (await call<RouteView>('GET', routePath(name))).data
      if (gone) return
      // the route's summary says whether there is a rollout to read: a route that never had one is
      // not asked (its 404 would be an error line in the browser's console at every refresh)
      view = route.rollout === null
        ? null
        : await call<RolloutView>('GET', `${routePath(name)}/rollout`).then((x) => x.data, (err: unknown) => {
          // it may end and be gone between the two reads (a reload removed the route's versions)
          if (err instanceof ApiError && err.status === 404 && err.code !== 'CANARYD_ERR_ROUTE_NOT_FOUND') return null
          throw err
        })
      if (gone) return
    } catch (err) {
      if (gone) return
      fill(problem, readFailed(err))
      // a route that does not exist will not appear by asking again every 5 s
      if (err instanceof ApiError && err.code === 'CANARYD_ERR_ROUTE_NOT_FOUND') pacer.stop()
      throw err
    }
    fill(problem)
    body.hidden = false
    summary.textContent = [route.versions.map((v) => `${v.name} ${pct(v.weight)}`).join(', '), `rollout: ${rolloutText(route.rollout)}`, routeExtras(route)].filter((x) => x !== '').join(' · ')
    versions = route.versions.map((v) => v.name)
    colors = versionColors(versions, view?.stable, view?.canary ?? route.rollout?.canary)
    const key = [...colors].join('|')
    if (key !== chartKey) {
      chartKey = key
      buildCharts()
    }
    weights.update(route)
    rollout.update(name, view)
    plan.update(name, view !== null && ACTIVE.has(view.state))
    timeline.update(view)
  }

  const p = pace(load, 5000)
  pacer.now = p.now
  pacer.stop = p.stop
  const off = feed.on((ev) => {
    if (ev.type === 'sample' || ev.type === 'stale') draw()
    else if (ev.type === 'hello' || (ev.type === 'mark' && ev.mark.route === name)) {
      draw()
      p.now()
    }
  })
  // the canvas takes its colours from the style sheet once: a switch to dark mode redraws the charts
  const scheme = matchMedia('(prefers-color-scheme: dark)')
  const rebuild = (): void => { if (panels.length !== 0) buildCharts() }
  scheme.addEventListener('change', rebuild)
  return () => {
    gone = true
    off()
    p.stop()
    scheme.removeEventListener('change', rebuild)
    for (const x of panels) x.chart?.destroy()
  }
}
