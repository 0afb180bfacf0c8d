/**
 * The segments endpoints of the admin API: who gets which version before
 * the weights apply. Validation is the config's own (config/segments.ts), so
 * the file and the API accept exactly the same segments.
 */
import { validateSegments } from '../config/segments.js'
import { CanarydError, ConfigError, routeNotFound } from '../errors.js'
import type { RuntimeStore } from '../store/store.js'
import { isObj, parseReason, type AdminServer } from './server.js'

/**
 * Registers `GET /api/v1/routes/{route}/segments` and `PUT` of the same path
 * with `{"segments": [...], "reason"?}` (400 CANARYD_ERR_INVALID_SEGMENTS
 * naming the key; `[]` removes them): persisted as a runtime override that
 * holds until the config file changes the route's segments, audited,
 * effective at once.
 */
export function registerSegmentRoutes (admin: Pick<AdminServer, 'addRoute'>, store: RuntimeStore): void {
  const path = '/api/v1/routes/{route}/segments'
  const view = (route: string): NonNullable<ReturnType<RuntimeStore['segmentsView']>> => {
    const v = store.segmentsView(route)
    if (v === undefined) throw routeNotFound(route, store.routeNames)
    return v
  }
  admin.addRoute('GET', path, (q) => ({ json: view(q.params.route!) }))
  admin.addRoute('PUT', path, async (q) => {
    const route = q.params.route!
    const before = view(route)
    const body = await q.json()
    const example = '{"segments":[{"name":"staff","match":{"header":{"x-employee":"true"}},"version":"canary"}],"reason":"…"}'
    if (!isObj(body)) throw new CanarydError('CANARYD_ERR_INVALID_BODY', `the body must be a JSON object like ${example}`)
    for (const k of Object.keys(body)) {
      if (k !== 'segments' && k !== 'reason') throw new CanarydError('CANARYD_ERR_INVALID_BODY', `unknown key ${JSON.stringify(k)} (allowed: segments, reason)`)
    }
    if (body.segments === undefined) throw new CanarydError('CANARYD_ERR_INVALID_BODY', `"segments" is required (an array; [] removes them), e.g. ${example}`)
    const reason = parseReason(body.reason)
    const versions = store.specs.find((s) => s.name === route)!.versions.map((v) => v.name)
    let segments
    try {
      segments = validateSegments(body.segments, versions, 'segments')
    } catch (err) {
      if (err instanceof ConfigError) throw new CanarydError('CANARYD_ERR_INVALID_SEGMENTS', err.message, { cause: err })
      throw err
    }
    const change = await store.setSegments(route, segments, { reason, source: 'api', address: q.address })
    return { json: { ...view(route), previous: before.segments, auditId: change.entry.id } }
  })
}
