/**
 * `#/fleet`: the instances sharing this one's runtime state, from
 * `GET /api/v1/fleet`. Heartbeats are not in the feed, so the page re-reads
 * every 5 s while it is open (and a token is not needed); the "x s ago"
 * ages tick each second between.
 */
import { call, tokenNeeded } from './api.js'
import { ago, fill, h, table } from './dom.js'
import { readFailed } from './format.js'
import { pace } from './pace.js'
import type { FleetView } from './types.js'

/** Mounts the fleet page. */
export function mountFleet (main: HTMLElement): () => void {
  const facts = h('p', { class: 'muted' }, 'Loading…')
  const out = h('div')
  fill(main, h('h1', null, 'Fleet'), facts, out)
  const ages: Array<[HTMLElement, string]> = []
  /** set by unmount: a read that resolves later leaves the page alone */
  let gone = false
  const tick = (): void => {
    // while the token form is shown the table says "waiting for the token": nothing to tick
    if (tokenNeeded()) return
    const now = Date.now()
    for (const [el, t] of ages) el.textContent = ago(t, now)
  }
  const load = async (): Promise<void> => {
    try {
      const { data } = await call<FleetView>('GET', '/api/v1/fleet')
      if (gone) return
      fill(facts, data.store === 'redis'
        ? `Fleet store: Redis (${data.storeUp ? 'reachable' : 'NOT reachable from this instance'}) · generation ${data.generation} · this instance: ${data.self}${data.configMismatch ? ' · its config differs from the fleet\'s' : ''}`
        : `Single instance (store: ${data.store}): no fleet to show beyond this one.`)
      ages.length = 0
      fill(out, table(['instance', 'host', 'pid', 'admin', 'proxy', 'generation', 'heartbeat', 'leads rollouts of', 'config'], data.instances.map((i) => {
        const age = h('span', { title: new Date(i.lastHeartbeat).toLocaleString() }, ago(i.lastHeartbeat))
        ages.push([age, i.lastHeartbeat])
        return [
          i.self ? h('strong', null, `${i.id} (this one)`) : i.id, i.hostname, String(i.pid), i.admin, i.proxy, String(i.generation),
          age, !Array.isArray(i.leader) || i.leader.length === 0 ? '–' : i.leader.map(String).join(', '),
          i.configMismatch ? h('strong', { class: 'error' }, 'mismatch') : 'same'
        ]
      }), { 'data-testid': 'fleet-table' }))
    } catch (err) {
      if (gone) return
      fill(out, readFailed(err))
      throw err
    }
  }
  const pacer = pace(load, 5000)
  const timer = setInterval(tick, 1000)
  return () => {
    gone = true
    pacer.stop()
    clearInterval(timer)
  }
}
