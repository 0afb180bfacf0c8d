/**
 * `#/audit`: the audit log as `GET /api/v1/audit` keeps it, newest first,
 * with a route filter. Re-read when the feed marks a weight or rollout
 * change (those are what the log records), not on a timer.
 */
import { call } from './api.js'
import { fill, h, isObj, table, weightChange, when } from './dom.js'
import type { Feed } from './feed.js'
import { readFailed } from './overview.js'
import { pace } from './pace.js'
import type { AuditEntry, RouteView } from './types.js'

/** Origins as one string (a version's upstream is one origin or a list). */
function origins (v: unknown): string {
  return Array.isArray(v) ? v.join(', ') : String(v ?? '–')
}

/** What an entry changed beyond the weights: upstreams, segments, mirror. */
function extras (e: AuditEntry): string {
  const out: string[] = []
  if (e.version !== undefined && e.upstream !== undefined) out.push(`${e.version} upstream ${origins(e.upstream.previous)} → ${origins(e.upstream.next)}`)
  for (const [v, u] of Object.entries(e.upstreams ?? {})) out.push(`${v} upstream ${origins(u.previous)} → ${origins(u.next)}`)
  if (e.segments !== undefined) out.push('segments changed')
  if (e.mirror !== undefined) out.push(isObj(e.mirror) && e.mirror.next === null ? 'mirror removed' : 'mirror changed')
  return out.join('; ')
}

/** Mounts the audit page; `route` preselects the filter. */
export function mountAudit (main: HTMLElement, feed: Feed, route: string): () => void {
  const select = h('select', { id: 'audit-route' }, h('option', { value: '' }, 'all routes'))
  const out = h('div', null, h('p', { class: 'muted' }, 'Loading…'))
  fill(main, h('h1', null, 'Audit log'),
    h('p', { class: 'field inline' }, h('label', { for: 'audit-route' }, 'Route'), select),
    out)
  // the route list only fills the filter: a failure here leaves "all routes"
  void call<{ routes: RouteView[] }>('GET', '/api/v1/routes').then(({ data }) => {
    for (const r of data.routes) select.append(h('option', { value: r.name, selected: r.name === route }, r.name))
  }, () => {})
  const load = async (): Promise<void> => {
    const q = new URLSearchParams({ limit: '200' })
    if (select.value !== '' || route !== '') q.set('route', select.value === '' ? route : select.value)
    try {
      const { data } = await call<{ entries: AuditEntry[] }>('GET', `/api/v1/audit?${q.toString()}`)
      fill(out, table(['time', 'route', 'by', 'weights', 'reason', 'also'], data.entries.map((e) => [
        when(e.time), e.route, e.address === null ? e.source : `${e.source} (${e.address})`,
        weightChange(e.previous, e.weights), e.reason ?? '', extras(e)
      ]), { 'data-testid': 'audit-table' }), data.entries.length === 0 && h('p', { class: 'muted' }, 'No changes recorded.'))
    } catch (err) {
      fill(out, readFailed(err))
      throw err
    }
  }
  const pacer = pace(load)
  select.addEventListener('change', () => {
    route = ''
    history.replaceState(null, '', select.value === '' ? '#/audit' : `#/audit?route=${encodeURIComponent(select.value)}`)
    pacer.now()
  })
  const off = feed.on((ev) => {
    if (ev.type === 'mark' && ev.mark.kind !== 'check') pacer.now()
  })
  return () => {
    off()
    pacer.stop()
  }
}
