/**
 * `#/audit`: the audit log as `GET /api/v1/audit` keeps it, newest first,
 * with a route filter. The log records every change of a route's runtime
 * state (weights, by hand or by a rollout; upstreams, segments, mirror),
 * but the feed marks only weight and rollout changes: the page re-reads on
 * those marks and, for the rest, every 10 s while it is shown (the pacer
 * coalesces both, and waits while a token is needed).
 */
import { ApiError, call } from './api.js'
import { fill, h, isObj, table, weightChange, when } from './dom.js'
import type { Feed } from './feed.js'
import { origins, readFailed } from './format.js'
import { pace } from './pace.js'
import type { AuditEntry, RouteView } from './types.js'

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
  /** set by unmount: a read that resolves later leaves the page alone */
  let gone = false
  let listed = false
  /** The filter's routes, read once (with the first read that gets through). */
  const list = async (): Promise<void> => {
    if (listed) return
    const { data } = await call<{ routes: RouteView[] }>('GET', '/api/v1/routes')
    if (gone || listed) return
    listed = true
    for (const r of data.routes) select.append(h('option', { value: r.name, selected: r.name === route }, r.name))
  }
  const load = async (): Promise<void> => {
    try {
      // the route list only fills the filter: a failure leaves "all routes" (tried again at the next read),
      // but a refused token stops this read here (the next request would be refused too)
      await list().catch((err: unknown) => { if (err instanceof ApiError && err.status === 401) throw err })
      if (gone) return
      const q = new URLSearchParams({ limit: '200' })
      if (select.value !== '' || route !== '') q.set('route', select.value === '' ? route : select.value)
      const { data } = await call<{ entries: AuditEntry[] }>('GET', `/api/v1/audit?${q.toString()}`)
      if (gone) return
      fill(out, table(['time', 'route', 'by', 'weights', 'reason', 'also'], data.entries.map((e) => [
        when(e.time), e.route, e.address === null ? e.source : `${e.source} (${e.address})`,
        weightChange(e.previous, e.weights), e.reason ?? '', extras(e)
      ]), { 'data-testid': 'audit-table' }), data.entries.length === 0 && h('p', { class: 'muted' }, 'No changes recorded.'))
    } catch (err) {
      if (gone) return
      fill(out, readFailed(err))
      throw err
    }
  }
  const pacer = pace(load, 10_000)
  select.addEventListener('change', () => {
    route = ''
    history.replaceState(null, '', select.value === '' ? '#/audit' : `#/audit?route=${encodeURIComponent(select.value)}`)
    pacer.now()
  })
  const off = feed.on((ev) => {
    if (ev.type === 'mark' && ev.mark.kind !== 'check') pacer.now()
  })
  return () => {
    gone = true
    off()
    pacer.stop()
  }
}
