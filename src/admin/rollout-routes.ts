/**
 * The rollout endpoints of the admin API. They live in admin/ (the control
 * plane's API) and call into rollout/, the one arrow STYLE.md draws between
 * the two: rollout/ knows nothing of HTTP.
 */
import { CanarydError } from '../errors.js'
import type { RolloutManager, StartRequest } from '../rollout/manager.js'
import { rolloutView } from '../rollout/manager.js'
import type { AdminServer } from './server.js'

/**
 * Registers `POST /api/v1/routes/{route}/rollout` (201; 400 invalid plan,
 * 409 running; query `fromStart=true` starts at step 1 whatever the canary's
 * weight, `canaryUpstream=URL[,URL]` points the canary at a new build in the
 * same change, 409 unless its weight is 0), `GET …/rollout` (404 when none) and
 * `POST …/rollout/pause|resume|promote|abort` (409 when the state does not allow it).
 * The plan is JSON or YAML (`Content-Type: application/yaml`); `dryRun=true`
 * answers 200 with the plan as it would run, or the error a start would get,
 * and starts nothing.
 */
export function registerRolloutRoutes (admin: Pick<AdminServer, 'addRoute'>, manager: RolloutManager): void {
  const base = '/api/v1/routes/{route}/rollout'
  admin.addRoute('POST', base, async (r) => {
    const req: StartRequest = {}
    const from = boolParam(r.query, 'fromStart')
    if (from !== undefined) req.fromStart = from
    const up = r.query.get('canaryUpstream')
    // one origin, or several separated by commas (origins contain none)
    if (up !== null) req.canaryUpstream = up.includes(',') ? up.split(',') : up
    const dry = boolParam(r.query, 'dryRun') === true
    const body = await r.document()
    if (dry) {
      // what a start would answer, without starting (kubectl's --dry-run=server): the dashboard's Validate
      const { plan, warnings } = manager.check(r.params.route!, body, req)
      return { json: { valid: true, route: r.params.route!, plan, warnings } }
    }
    const { record, warnings } = await manager.begin(r.params.route!, body, req)
    return { status: 201, json: { ...rolloutView(record), warnings } }
  })
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

/** A true/false query parameter: undefined when absent, 400 for anything else. */
function boolParam (q: URLSearchParams, name: string): boolean | undefined {
  const v = q.get(name)
  if (v === null) return undefined
  if (v !== 'true' && v !== 'false') throw new CanarydError('CANARYD_ERR_INVALID_QUERY', `${name} must be true or false, got ${JSON.stringify(v)}`)
  return v === 'true'
}
