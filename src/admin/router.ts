import type { IncomingMessage } from 'node:http'
import { CanarydError } from '../errors.js'

/** What a handler gets for one admin request. */
export interface AdminRequest {
  readonly req: IncomingMessage
  /** Path parameters by name, URL-decoded (`{route}` → `params.route`). */
  readonly params: Readonly<Record<string, string>>
  readonly query: URLSearchParams
  /** Remote address of the client (for the audit). */
  readonly address: string | null
  /**
   * Reads and parses the JSON body: 415 unless `Content-Type: application/json`,
   * 413 past 64 KiB (reading stops), 400 on invalid JSON.
   */
  readonly json: () => Promise<unknown>
  /** Like `json`, but YAML too (`Content-Type: application/yaml`): for documents users write, like a rollout plan. */
  readonly document: () => Promise<unknown>
}

/** What a handler answers: JSON by default, raw text (e.g. /metrics), bytes (the dashboard's files), or a stream it writes itself (the event feed). */
export type AdminReply =
  | { status?: number; json: unknown; headers?: Record<string, string> }
  | { status?: number; text: string; contentType: string; headers?: Record<string, string> }
  | { status?: number; body: Buffer; contentType: string; headers?: Record<string, string> }
  | {
    status?: number
    contentType: string
    headers?: Record<string, string>
    /** Called once the head is written (with the security headers); writes and ends the body when it will. */
    stream: (res: import('node:http').ServerResponse) => void
  }

/** An admin endpoint; throw a CanarydError to answer with its status and JSON error. */
export type AdminHandler = (r: AdminRequest) => AdminReply | Promise<AdminReply>

/** HTTP methods an admin route can be registered for. */
export type AdminMethod = 'GET' | 'PUT' | 'POST' | 'DELETE' | 'PATCH'

interface Entry {
  method: AdminMethod
  pattern: string
  segments: string[]
  handler: AdminHandler
}

/** The result of matching a path. */
export type RouteMatch =
  | { kind: 'found'; handler: AdminHandler; params: Record<string, string> }
  | { kind: 'method'; allow: string[] }
  | { kind: 'none' }

function splitPath (path: string): string[] {
  return path.split('/').slice(1)
}

/**
 * A tiny router for the admin server: patterns are literal segments and
 * `{name}` placeholders matching one non-empty segment (`/api/v1/routes/{route}/weights`).
 * Literal segments win over placeholders, so `/api/v1/routes/{route}/rollout`
 * registered later never shadows a literal path. A path known for other
 * methods gives 405 with the Allow list; HEAD is answered by GET handlers.
 */
export class AdminRouter {
  readonly #entries: Entry[] = []

  /**
   * Registers an endpoint. Other modules (the rollout controller) add theirs
   * here through `AdminServer.addRoute`; every path under `/api/` is then
   * behind the admin token. Also add the endpoint to src/admin/openapi.json:
   * test/admin/openapi.test.ts fails when the document and the router differ.
   */
  add (method: AdminMethod, pattern: string, handler: AdminHandler): void {
    if (!pattern.startsWith('/')) throw new TypeError(`admin route pattern must start with "/": ${pattern}`)
    if (this.#entries.some((e) => e.method === method && e.pattern === pattern)) throw new TypeError(`admin route ${method} ${pattern} is already registered`)
    this.#entries.push({ method, pattern, segments: splitPath(pattern), handler })
  }

  /** Every registered (method, pattern), e.g. to compare with the OpenAPI document. */
  list (): Array<{ method: AdminMethod; pattern: string }> {
    return this.#entries.map((e) => ({ method: e.method, pattern: e.pattern }))
  }

  /** Matches a method and a path (without query). */
  match (method: string, path: string): RouteMatch {
    const segs = splitPath(path)
    let best: { entry: Entry; params: Record<string, string>; literals: number }[] = []
    for (const e of this.#entries) {
      const params = matchSegments(e.segments, segs)
      if (params === undefined) continue
      best.push({ entry: e, params, literals: e.segments.filter((s) => !s.startsWith('{')).length })
    }
    if (best.length === 0) return { kind: 'none' }
    const top = Math.max(...best.map((b) => b.literals))
    best = best.filter((b) => b.literals === top)
    const want = method === 'HEAD' ? 'GET' : method
    const hit = best.find((b) => b.entry.method === want)
    if (hit !== undefined) return { kind: 'found', handler: hit.entry.handler, params: hit.params }
    const allow = new Set<string>()
    for (const b of best) {
      allow.add(b.entry.method)
      if (b.entry.method === 'GET') allow.add('HEAD')
    }
    return { kind: 'method', allow: [...allow] }
  }
}

function matchSegments (pattern: string[], path: string[]): Record<string, string> | undefined {
  if (pattern.length !== path.length) return undefined
  const params: Record<string, string> = {}
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]!
    const s = path[i]!
    if (p.startsWith('{') && p.endsWith('}')) {
      if (s.length === 0) return undefined
      let v: string
      try {
        v = decodeURIComponent(s)
      } catch {
        throw new CanarydError('CANARYD_ERR_NOT_FOUND', `bad percent-encoding in path segment ${JSON.stringify(s)}`)
      }
      params[p.slice(1, -1)] = v
    } else if (p !== s) {
      return undefined
    }
  }
  return params
}
