/**
 * The admin endpoints that change what the routes point at: a config reload
 * and a version's upstream. Validation uses the config's own rules
 * (config/routes.ts), so the file and the API accept exactly the same thing.
 */
import { applyEndpoints } from '../config/routes.js'
import { CanarydError, ConfigError, createError, routeNotFound } from '../errors.js'
import type { VersionSpec } from '../routing/spec.js'
import type { ReloadSummary, RuntimeStore } from '../store/store.js'
import { isObj, parseReason, type AdminServer } from './server.js'

/** What a reload answers: the store's summary plus the static keys that changed (they need a restart). */
export type ReloadResult = ReloadSummary & { restartRequired: string[] }

/**
 * Registers `POST /api/v1/reload`: re-reads and validates the config file
 * and applies its routes (200 with what changed and which static keys need
 * a restart; 400 CANARYD_ERR_CONFIG_RELOAD naming the key; 409 without a file).
 */
export function registerReloadRoute (admin: Pick<AdminServer, 'addRoute'>, reload: (address: string | null) => Promise<ReloadResult>): void {
  admin.addRoute('POST', '/api/v1/reload', async (q) => {
    try {
      return { json: await reload(q.address) }
    } catch (err) {
      // the same line the log got, under the API's own code (a 400: the file is the caller's to fix)
      if (err instanceof ConfigError) throw new CanarydError('CANARYD_ERR_CONFIG_RELOAD', err.message, { cause: err })
      throw err
    }
  })
}

/**
 * Registers `GET /api/v1/routes/{route}/versions/{version}` and `PUT` of
 * the same path with `{"upstream": origin | [origins], "reason"?}`: points
 * the version at new endpoints at once (persisted, audited).
 */
export function registerVersionRoutes (admin: Pick<AdminServer, 'addRoute'>, store: RuntimeStore): void {
  const path = '/api/v1/routes/{route}/versions/{version}'
  /** The version's spec in force, or the 404 naming what exists. */
  const find = (route: string, version: string): VersionSpec => {
    const r = store.specs.find((s) => s.name === route)
    if (r === undefined) throw routeNotFound(route, store.routeNames)
    const spec = r.versions.find((v) => v.name === version)
    if (spec === undefined) throw createError('CANARYD_ERR_VERSION_NOT_FOUND', { route, version: JSON.stringify(version), versions: r.versions.map((v) => v.name).join(', ') })
    return spec
  }
  admin.addRoute('GET', path, (q) => {
    find(q.params.route!, q.params.version!)
    return { json: store.routeView(q.params.route!)!.versions.find((v) => v.name === q.params.version)! }
  })
  admin.addRoute('PUT', path, async (q) => {
    const route = q.params.route!
    const version = q.params.version!
    const spec = find(route, version)
    const body = await q.json()
    if (!isObj(body)) throw new CanarydError('CANARYD_ERR_INVALID_BODY', 'the body must be a JSON object like {"upstream":"http://10.0.0.9:8080","reason":"…"} or {"upstream":["http://…","http://…"]}')
    for (const k of Object.keys(body)) {
      if (k !== 'upstream' && k !== 'reason') throw new CanarydError('CANARYD_ERR_INVALID_BODY', `unknown key ${JSON.stringify(k)} (allowed: upstream, reason)`)
    }
    if (body.upstream === undefined) throw new CanarydError('CANARYD_ERR_INVALID_BODY', '"upstream" is required: an origin or an array of origins')
    const reason = parseReason(body.reason)
    // the version's other endpoint settings (discovery, balance, TLS) stay: the same rules check the new origins against them
    const next: VersionSpec = { ...spec }
    try {
      applyEndpoints(next, { upstream: body.upstream, balance: spec.balance, discovery: spec.discovery, tls: spec.tls }, 'body')
    } catch (err) {
      if (err instanceof ConfigError) throw new CanarydError('CANARYD_ERR_INVALID_UPSTREAM', err.message.replace(/^body\./, ''))
      throw err
    }
    const change = await store.setUpstream(route, version, next.upstream, { reason, source: 'api', address: q.address })
    return { json: { route: change.route, version: change.route.versions.find((v) => v.name === version), previous: change.previous, auditId: change.entry.id } }
  })
}
