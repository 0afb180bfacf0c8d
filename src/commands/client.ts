import { parseArgs } from 'node:util'

/** Default admin URL of the CLI client (the admin server's default address). */
export const DEFAULT_ADMIN_URL = 'http://127.0.0.1:9901'

const USAGE = `Usage:
  canaryd weights ROUTE VERSION=PERCENT... [--reason TEXT] [--admin URL] [--token TOKEN] [--json]
  canaryd status [ROUTE] [--admin URL] [--token TOKEN] [--json]
  canaryd versions set ROUTE VERSION --upstream URL[,URL...] [--reason TEXT] [--admin URL] [--token TOKEN] [--json]
  canaryd versions get ROUTE [VERSION] [--admin URL] [--token TOKEN] [--json]
  canaryd reload [--admin URL] [--token TOKEN] [--json]

  --admin URL    admin server (CANARYD_ADMIN_URL; default ${DEFAULT_ADMIN_URL})
  --token TOKEN  bearer token (CANARYD_ADMIN_TOKEN)
  --json         print the server's JSON answer instead of a table
`

/** A route as the admin API returns it. */
interface RouteJson {
  name: string
  versions: Array<{ name: string; upstream: string | string[]; weight: number }>
  /** Absent from servers older than segments. */
  segments?: Array<{ name: string; version?: string; weights?: Record<string, number> }>
  mirror?: { version: string; percent: number } | null
  rollout: unknown
}

/** The lines under a route's versions for its segments and mirror (what `canaryd segments ROUTE` shows in full). */
function extraLines (r: RouteJson): string[] {
  const out: string[] = []
  const segs = r.segments ?? []
  if (segs.length !== 0) {
    const cells = segs.map((s) => `${s.name}→${s.version ?? Object.entries(s.weights ?? {}).filter(([, w]) => w > 0).map(([n, w]) => `${n} ${w}%`).join('/')}`)
    out.push(`  segments: ${cells.join(', ')}`)
  }
  if (r.mirror !== undefined && r.mirror !== null) out.push(`  mirror: ${r.mirror.percent}% copied to ${r.mirror.version}`)
  return out
}

/** Origins as one cell: several joined by commas. */
function originsCell (u: string | string[]): string {
  return Array.isArray(u) ? u.join(',') : u
}

/**
 * A failed admin call: exit code 2 for a usage error, 1 otherwise. An error
 * answer of the API also carries its status, code, message and JSON body, so
 * each command can print it its own way.
 */
export class ClientError extends Error {
  constructor (message: string, readonly exitCode: number, readonly api?: { status: number; code?: string; message?: string; body: unknown }) {
    super(message)
  }
}

/** The admin server and token from --admin/--token, else CANARYD_ADMIN_URL/CANARYD_ADMIN_TOKEN, else the defaults. */
export function adminTarget (values: { admin?: string | undefined; token?: string | undefined }, env: NodeJS.ProcessEnv = process.env): { base: string; token: string } {
  return { base: values.admin ?? env.CANARYD_ADMIN_URL ?? DEFAULT_ADMIN_URL, token: values.token ?? env.CANARYD_ADMIN_TOKEN ?? '' }
}

/** Parses `stable=80 canary=20` into a weights object; throws a usage error naming the bad argument. */
export function parseWeightArgs (args: readonly string[]): Record<string, number> {
  if (args.length === 0) throw new ClientError('no weights given, e.g. stable=80 canary=20', 2)
  const out: Record<string, number> = {}
  for (const a of args) {
    const m = /^([^=]+)=(.*)$/.exec(a)
    if (m === null) throw new ClientError(`"${a}" is not VERSION=PERCENT`, 2)
    const [, name, value] = m as unknown as [string, string, string]
    if (!/^-?(\d+(\.\d*)?|\.\d+)$/.test(value)) throw new ClientError(`weight of ${name} is not a number: "${value}"`, 2)
    if (Object.hasOwn(out, name)) throw new ClientError(`version ${name} is given twice`, 2)
    out[name] = Number(value)
  }
  return out
}

/** Rollout states that no longer own the route's weights: the record stays, the weights may have moved on. */
const FINAL_STATES = new Set(['promoted', 'rolled-back', 'aborted'])

/**
 * Formats a route's rollout summary (`state, canary, step, steps, weight`)
 * for one table cell. An active rollout shows its step out of every step,
 * the promotion to 100 % included (`progressing (step 2/6)`). A finished
 * rollout's record says `promoted` forever, so the cell only says so while
 * the canary still has the weight the rollout left it; after a later weight
 * change it says `promoted earlier; weights changed since`.
 */
export function rolloutCell (r: unknown, versions: ReadonlyArray<{ name: string; weight: number }> = []): string {
  if (r === null || r === undefined) return '-'
  if (typeof r === 'string') return r
  if (typeof r === 'object') {
    const o = r as Record<string, unknown>
    const state = typeof o.state === 'string' ? o.state : typeof o.phase === 'string' ? o.phase : undefined
    if (state !== undefined && FINAL_STATES.has(state)) {
      const canary = versions.find((v) => v.name === o.canary)
      const unchanged = typeof o.weight !== 'number' || canary?.weight === o.weight
      return unchanged ? state : `${state} earlier; weights changed since`
    }
    if (state !== undefined) {
      if (typeof o.step !== 'number') return state
      // `steps` counts the analysed steps; the promotion to 100 % is one more
      return typeof o.steps === 'number' ? `${state} (step ${o.step}/${o.steps + 1})` : `${state} (step ${o.step})`
    }
  }
  const s = JSON.stringify(r)
  return s.length > 40 ? `${s.slice(0, 39)}…` : s
}

/** GET /api/v1/fleet as the CLI reads it. */
interface FleetJson {
  store: string
  self: string
  storeUp: boolean
  generation: number
  configMismatch: boolean
  error?: string
  instances: Array<{ id: string; admin: string; proxy: string; generation: number; leader: string[]; lastHeartbeat: string; configMismatch: boolean; self: boolean }>
}

/** The instances table of `canaryd status` in fleet mode. */
export function formatFleet (f: FleetJson, now: number = Date.now()): string {
  const lines = [`\nfleet: ${f.instances.length} instance${f.instances.length === 1 ? '' : 's'}, generation ${f.generation}${f.storeUp ? '' : ' (store unreachable from this instance: serving its last applied state)'}${f.configMismatch ? ' (this instance\'s routes config differs from the fleet\'s)' : ''}`]
  if (f.error !== undefined) lines.push(`  (${f.error})`)
  const rows = f.instances.map((i) => [
    `${i.self ? '*' : ' '} ${i.id}`,
    i.admin,
    String(i.generation),
    i.leader.length === 0 ? '-' : i.leader.join(','),
    `${Math.max(0, Math.round((now - Date.parse(i.lastHeartbeat)) / 1000))}s ago${i.configMismatch ? ', config differs' : ''}`
  ])
  const head = ['  instance', 'admin', 'generation', 'leads', 'heartbeat']
  const width = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)))
  for (const r of [head, ...rows]) lines.push(r.map((x, c) => x.padEnd(width[c]!)).join('  ').trimEnd())
  return `${lines.join('\n')}\n`
}

/** Renders routes as an aligned text table: route, version, weight, upstream, rollout. */
export function formatRoutes (routes: readonly RouteJson[]): string {
  const rows: string[][] = [['ROUTE', 'VERSION', 'WEIGHT', 'UPSTREAM', 'ROLLOUT']]
  for (const r of routes) {
    r.versions.forEach((v, i) => {
      rows.push([i === 0 ? r.name : '', v.name, `${v.weight}%`, originsCell(v.upstream), i === 0 ? rolloutCell(r.rollout, r.versions) : ''])
    })
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)))
  const table = rows.map((row) => row.map((cell, c) => c === row.length - 1 ? cell : cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n') + '\n'
  const extra = routes.flatMap((r) => { const l = extraLines(r); return l.length === 0 ? [] : [`${r.name}:`, ...l] })
  return extra.length === 0 ? table : `${table}${extra.join('\n')}\n`
}

/**
 * One JSON call of the admin API (`path` relative to `base`, so a base with a
 * path prefix keeps it): bearer token when set, 15 s timeout, the server's
 * error message in the thrown ClientError.
 */
export async function callAdmin (base: string, token: string, method: string, path: string, body?: unknown): Promise<unknown> {
  let url: URL
  try {
    url = new URL(path, base.endsWith('/') ? base : `${base}/`)
  } catch {
    throw new ClientError(`--admin ${JSON.stringify(base)} is not a URL`, 2)
  }
  const headers: Record<string, string> = { accept: 'application/json' }
  if (token !== '') headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  let res: Response
  try {
    res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(15_000) })
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause
    throw new ClientError(`cannot reach the admin API at ${url.origin}: ${cause?.code ?? cause?.message ?? (err as Error).message}`, 1)
  }
  const text = await res.text()
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new ClientError(`admin API answered ${res.status} with non-JSON: ${text.slice(0, 200)}`, 1)
  }
  if (!res.ok) {
    const e = (json as { error?: { code?: string; message?: string } }).error
    throw new ClientError(e?.message !== undefined ? `${e.message} (${e.code ?? res.status})` : `admin API answered ${res.status}`, 1, { status: res.status, code: e?.code, message: e?.message, body: json })
  }
  return json
}

/** `canaryd versions set|get`: a version's upstream, through `…/routes/{route}/versions/{version}`. */
async function runVersions (base: string, token: string, positionals: string[], values: { upstream?: string; reason?: string; json?: boolean }, out: (s: string) => void): Promise<void> {
  const [sub, route, version, ...extra] = positionals
  if (route === undefined || extra.length !== 0 || (sub !== 'set' && sub !== 'get')) throw new ClientError('versions needs "set ROUTE VERSION --upstream URL[,URL]" or "get ROUTE [VERSION]"', 2)
  const path = (v: string): string => `api/v1/routes/${encodeURIComponent(route)}/versions/${encodeURIComponent(v)}`
  if (sub === 'get') {
    const res = version === undefined
      ? await callAdmin(base, token, 'GET', `api/v1/routes/${encodeURIComponent(route)}`) as RouteJson
      : await callAdmin(base, token, 'GET', path(version))
    if (values.json === true || version !== undefined) out(`${JSON.stringify(version === undefined ? (res as RouteJson).versions : res, null, 2)}\n`)
    else out(formatRoutes([res as RouteJson]))
    return
  }
  if (version === undefined) throw new ClientError('versions set needs ROUTE and VERSION', 2)
  if (values.upstream === undefined || values.upstream.trim() === '') throw new ClientError('versions set needs --upstream URL[,URL...]', 2)
  const list = values.upstream.split(',').map((u) => u.trim()).filter((u) => u.length !== 0)
  const body: Record<string, unknown> = { upstream: list.length === 1 ? list[0] : list }
  if (values.reason !== undefined) body.reason = values.reason
  const res = await callAdmin(base, token, 'PUT', path(version), body) as { route: RouteJson; previous: string | string[] }
  if (values.json === true) {
    out(`${JSON.stringify(res, null, 2)}\n`)
    return
  }
  const now = res.route.versions.find((v) => v.name === version)
  out(`${res.route.name}/${version}: ${originsCell(res.previous)} → ${now === undefined ? '?' : originsCell(now.upstream)}\n`)
  out(formatRoutes([res.route]))
}

/**
 * `canaryd weights` and `canaryd status`: a thin client of the admin API.
 * The server does all validation, so the CLI prints its message verbatim
 * and exits 1 on an API error, 2 on a usage error.
 */
export async function runClient (cmd: string, argv: string[]): Promise<void> {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        admin: { type: 'string' },
        token: { type: 'string' },
        reason: { type: 'string' },
        upstream: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      }
    })
    if (values.help === true) {
      process.stdout.write(USAGE)
      return
    }
    const { base, token } = adminTarget(values)
    const out = (s: string): void => { process.stdout.write(s) }
    if (cmd === 'weights') {
      const [route, ...rest] = positionals
      if (route === undefined) throw new ClientError('weights needs a ROUTE and VERSION=PERCENT pairs', 2)
      const weights = parseWeightArgs(rest)
      const body: Record<string, unknown> = { weights }
      if (values.reason !== undefined) body.reason = values.reason
      const res = await callAdmin(base, token, 'PUT', `api/v1/routes/${encodeURIComponent(route)}/weights`, body) as { route: RouteJson; previous: Record<string, number> }
      if (values.json === true) {
        out(`${JSON.stringify(res, null, 2)}\n`)
        return
      }
      const changes = res.route.versions.map((v) => `${v.name} ${res.previous[v.name] ?? '?'}% → ${v.weight}%`).join(', ')
      out(`${res.route.name}: ${changes}\n`)
      out(formatRoutes([res.route]))
      return
    }
    if (cmd === 'versions') {
      await runVersions(base, token, positionals, values, out)
      return
    }
    if (cmd === 'reload') {
      if (positionals.length !== 0) throw new ClientError('reload takes no arguments', 2)
      const res = await callAdmin(base, token, 'POST', 'api/v1/reload') as { generation: number; added: string[]; removed: string[]; changed: string[]; restartRequired: string[] }
      if (values.json === true) {
        out(`${JSON.stringify(res, null, 2)}\n`)
        return
      }
      const list = (xs: string[]): string => xs.length === 0 ? '-' : xs.join(', ')
      out(`reloaded (generation ${res.generation}): added ${list(res.added)}; removed ${list(res.removed)}; changed ${list(res.changed)}\n`)
      if (res.restartRequired.length !== 0) out(`needs a restart to apply: ${res.restartRequired.join(', ')}\n`)
      return
    }
    if (positionals.length > 1) throw new ClientError('status takes at most one ROUTE', 2)
    const route = positionals[0]
    const res = route === undefined
      ? await callAdmin(base, token, 'GET', 'api/v1/routes') as { routes: RouteJson[] }
      : { routes: [await callAdmin(base, token, 'GET', `api/v1/routes/${encodeURIComponent(route)}`) as RouteJson] }
    // fleet mode: the instances under the table (an older server without /api/v1/fleet just has none)
    const fleet = route === undefined ? await callAdmin(base, token, 'GET', 'api/v1/fleet').catch(() => undefined) as FleetJson | undefined : undefined
    const inFleet = fleet?.store === 'redis' ? fleet : undefined
    if (values.json === true) out(`${JSON.stringify(route === undefined ? { ...res, ...(inFleet === undefined ? {} : { fleet: inFleet }) } : res.routes[0], null, 2)}\n`)
    else out(formatRoutes(res.routes) + (inFleet === undefined ? '' : formatFleet(inFleet)))
  } catch (err) {
    if (err instanceof ClientError) {
      process.stderr.write(`canaryd ${cmd}: ${err.message}\n`)
      if (err.exitCode === 2) process.stderr.write(USAGE)
      process.exitCode = err.exitCode
      return
    }
    if ((err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS') === true) {
      process.stderr.write(`canaryd ${cmd}: ${(err as Error).message}\n${USAGE}`)
      process.exitCode = 2
      return
    }
    throw err
  }
}
