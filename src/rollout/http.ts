/**
 * The rollout endpoints of the admin API. Registered on the admin server
 * through its `addRoute` (typed structurally here, so rollout/ does not
 * import admin/): admin → rollout stays the only arrow.
 */
import type { RolloutManager } from './manager.js'
import { rolloutView } from './manager.js'

/** The part of the admin server this needs. */
export interface AdminRoutes {
  addRoute (method: 'GET' | 'POST', pattern: string, handler: (r: { params: Readonly<Record<string, string>>; json: () => Promise<unknown> }) => { status?: number; json: unknown } | Promise<{ status?: number; json: unknown }>): void
}

/**
 * Registers `POST /api/v1/routes/{route}/rollout` (201; 400 invalid plan,
 * 409 running), `GET …/rollout` (404 when none) and
 * `POST …/rollout/pause|resume|promote|abort` (409 when the state does not allow it).
 */
export function registerRolloutRoutes (admin: AdminRoutes, manager: RolloutManager): void {
  const base = '/api/v1/routes/{route}/rollout'
  admin.addRoute('POST', base, async (r) => ({ status: 201, json: rolloutView(await manager.start(r.params.route!, await r.json())) }))
  admin.addRoute('GET', base, (r) => ({ json: rolloutView(manager.get(r.params.route!)) }))
  admin.addRoute('POST', `${base}/pause`, async (r) => ({ json: rolloutView(await manager.pause(r.params.route!)) }))
  admin.addRoute('POST', `${base}/resume`, async (r) => ({ json: rolloutView(await manager.resume(r.params.route!)) }))
  admin.addRoute('POST', `${base}/abort`, async (r) => ({ json: rolloutView(await manager.abort(r.params.route!)) }))
  admin.addRoute('POST', `${base}/promote`, async (r) => {
    const { record, held } = await manager.promote(r.params.route!)
    // 202: the request was valid but the gate holds the promotion for now
    return { status: held ? 202 : 200, json: { ...rolloutView(record), held } }
  })
}
