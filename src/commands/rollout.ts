/**
 * `canaryd rollout start|status|pause|resume|promote|abort ROUTE`: a thin
 * client of the admin API's rollout endpoints (same --admin / --token
 * conventions as `canaryd weights` and `canaryd status`).
 */
import { readFileSync } from 'node:fs'
import { extname } from 'node:path'
import { parseArgs } from 'node:util'
import { parse as parseYaml } from 'yaml'
import { adminTarget, callAdmin, ClientError, DEFAULT_ADMIN_URL } from './client.js'

/** Usage of the rollout command. */
export const ROLLOUT_USAGE = `Usage:
  canaryd rollout start ROUTE [--plan FILE] [--canary NAME] [--from-start] [--canary-upstream URL[,URL]]
                 start a rollout (plan: JSON or YAML file). A canary that already has weight w
                 starts at the first step >= w (nobody moves back) unless --from-start;
                 --canary-upstream points the canary at the new build in the same change
                 (refused unless the canary's weight is 0)
  canaryd rollout status|pause|resume|promote|abort ROUTE
Options:
  --admin URL    admin server (CANARYD_ADMIN_URL; default ${DEFAULT_ADMIN_URL})
  --token TOKEN  bearer token (CANARYD_ADMIN_TOKEN)
  --json         print the API's JSON instead of the summary
`

const ACTIONS = ['start', 'status', 'pause', 'resume', 'promote', 'abort'] as const

/**
 * One-screen summary of a rollout body. The plan's `steps` are the analysed
 * weights; the promotion to 100 % is the last step, so a plan of
 * 1, 5, 10, 25, 50 (and 100) reads `step 1/6 (1 → 5 → 10 → 25 → 50 → 100)`,
 * and a promoted rollout is at step 6/6.
 */
export function formatRollout (r: Record<string, unknown>): string {
  const steps = [...((r.steps as Array<number | { segment: string; weight: number }> | undefined) ?? []), 100].map((s) => typeof s === 'number' ? String(s) : `${s.segment}:${s.weight}`)
  const step = r.state === 'promoted' ? steps.length : r.step
  const phase = r.phase === undefined || r.phase === 'steps' || r.phase === 'done' ? '' : `  phase ${String(r.phase)}`
  const strategy = r.strategy === 'blue-green' ? ' (blue/green)' : ''
  const segs = Object.entries((r.segmentWeights as Record<string, number> | undefined) ?? {})
  const lines = [
    `route ${String(r.route)}: ${String(r.state)}${strategy}  canary ${String(r.canary)} at ${String(r.weight)}%  step ${String(step)}/${steps.length} (${steps.join(' → ')})${phase}`,
    ...(segs.length === 0 ? [] : [`segments: ${segs.map(([n, w]) => `${n} ${w}%`).join(', ')}`]),
    `failed checks ${String(r.failedChecks)}${r.reason === null || r.reason === undefined ? '' : `  reason: ${String(r.reason)}`}`
  ]
  const checks = (r.checks as Array<Record<string, unknown>> | undefined) ?? []
  for (const c of checks.slice(-5)) {
    const cn = c.canary as Record<string, unknown>
    const st = c.stable as Record<string, unknown>
    const sh = c.shadow as Record<string, unknown> | undefined
    const where = sh === undefined ? `step ${String(c.step)}` : `shadow (${String(sh.pairs)} copies, ${String(sh.mismatchRate)}% mismatched)`
    lines.push(`  ${String(c.at)} ${where} ${String(c.verdict).padEnd(12)} canary ${String(cn.requests)} req ${String(cn.successRate)}% p99 ${String(cn.p99Ms)} ms | stable ${String(st.requests)} req ${String(st.successRate)}% p99 ${String(st.p99Ms)} ms${typeof c.instances === 'number' ? ` | ${c.instances} instance${c.instances === 1 ? '' : 's'}` : ''}${(c.reasons as string[]).length > 0 ? `  (${(c.reasons as string[]).join('; ')})` : ''}`)
    for (const m of (c.metrics as Array<Record<string, unknown>> | undefined) ?? []) {
      const base = m.baseline === undefined ? '' : ` | baseline ${fmtValue(m.baseline)}${m.ratio === undefined ? '' : ` (ratio ${m.ratio === null ? 'inf' : String(m.ratio)})`}`
      lines.push(`      metric ${String(m.name)}: ${String(m.verdict)}  canary ${fmtValue(m.canary)}${base}${typeof m.reason === 'string' ? `  (${m.reason})` : ''}`)
    }
  }
  const last = checks[checks.length - 1]
  const g = last?.guidance as Record<string, unknown> | undefined
  if (g !== undefined && (r.state === 'progressing' || r.state === 'awaiting-promotion')) lines.push(`decision: ${formatGuidance(g)}`)
  return `${lines.join('\n')}\n`
}

function fmtValue (v: unknown): string {
  return typeof v === 'number' ? String(Math.round(v * 1e6) / 1e6) : 'no data'
}

/** "needs 2,300 more canary requests (of 2,400); at 1.5 req/s about 26 min" for the last inconclusive check. */
export function formatGuidance (g: Record<string, unknown>): string {
  const more = Number(g.moreRequests)
  const needed = Number(g.neededRequests)
  const rps = typeof g.canaryRps === 'number' ? g.canaryRps : null
  const ms = typeof g.expectedMs === 'number' ? g.expectedMs : null
  let text = more <= 0 ? `enough canary requests (${needed.toLocaleString('en-US')}) for a decision at the next check` : `needs ${more.toLocaleString('en-US')} more canary requests (of ${needed.toLocaleString('en-US')})`
  if (more > 0) text += rps === null || ms === null ? '; the canary gets no traffic now, so no decision is in sight' : `; at ${Math.round(rps * 100) / 100} req/s expected in ${formatDuration(ms)}`
  const min = g.minRequests as { more: number; expectedMs: number | null } | undefined
  if (min !== undefined && min.more > 0) text += `; a check decides at minRequests, ${min.more.toLocaleString('en-US')} more${min.expectedMs === null ? '' : ` (${formatDuration(min.expectedMs)})`}, with less power`
  if (typeof g.note === 'string') text += ` — ${g.note}`
  return text
}

function formatDuration (ms: number): string {
  const s = Math.ceil(ms / 1000)
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.round(s / 60)} min`
  return `${Math.round(s / 360) / 10} h`
}

function usageError (message: string): void {
  process.stderr.write(`canaryd: ${message}\n`)
  process.exitCode = 2
}

function apiError (message: string): void {
  process.stderr.write(`canaryd: ${message}\n`)
  process.exitCode = 1
}

/** Runs `canaryd rollout …`; exit code 1 on an API error, 2 on a usage error. */
export async function runRollout (argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { plan: { type: 'string' }, canary: { type: 'string' }, 'from-start': { type: 'boolean' }, 'canary-upstream': { type: 'string' }, admin: { type: 'string' }, token: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    strict: true
  })
  const [action, route] = positionals
  if (values.help === true || action === undefined) {
    process.stdout.write(ROLLOUT_USAGE)
    return
  }
  if (!(ACTIONS as readonly string[]).includes(action) || route === undefined || positionals.length > 2) {
    process.stderr.write(`canaryd: ${route === undefined ? 'a ROUTE is required' : `unknown rollout action "${action}"`}\n${ROLLOUT_USAGE}`)
    process.exitCode = 2
    return
  }
  const { base, token } = adminTarget(values)
  let path = `api/v1/routes/${encodeURIComponent(route)}/rollout${action === 'start' || action === 'status' ? '' : `/${action}`}`
  if (action !== 'start' && (values['from-start'] !== undefined || values['canary-upstream'] !== undefined)) return usageError('--from-start and --canary-upstream go with rollout start')
  const query = new URLSearchParams()
  if (values['from-start'] === true) query.set('fromStart', 'true')
  if (values['canary-upstream'] !== undefined) query.set('canaryUpstream', values['canary-upstream'].split(',').map((u) => u.trim()).filter((u) => u !== '').join(','))
  if (query.size !== 0) path += `?${query.toString()}`
  let body: unknown
  if (action === 'start') {
    let plan: unknown = {}
    if (values.plan !== undefined) {
      // a missing or garbled plan file is the user's typo: a one-line usage error, not a stack trace
      try {
        const text = readFileSync(values.plan, 'utf8')
        const ext = extname(values.plan).toLowerCase()
        plan = ext === '.yaml' || ext === '.yml' ? parseYaml(text) : JSON.parse(text)
      } catch (err) {
        return usageError(`cannot read plan ${values.plan}: ${(err as Error).message}`)
      }
    }
    // the server validates the plan (400 lists every problem); only --canary is merged here
    if (values.canary !== undefined && typeof plan === 'object' && plan !== null && !Array.isArray(plan)) (plan as Record<string, unknown>).canary = values.canary
    body = plan
  }
  let json: Record<string, unknown>
  try {
    json = await callAdmin(base, token, action === 'status' ? 'GET' : 'POST', path, body) as Record<string, unknown>
  } catch (err) {
    if (!(err instanceof ClientError)) throw err
    const api = err.api
    if (api !== undefined) return apiError(`${api.status} ${api.code ?? ''}: ${api.message ?? JSON.stringify(api.body)}`)
    return err.exitCode === 2 ? usageError(err.message) : apiError(err.message)
  }
  // what the server warned about (moving users back, a new build reaching pinned segments at once) goes to stderr
  for (const w of (json.warnings as string[] | undefined) ?? []) process.stderr.write(`canaryd: warning: ${w}\n`)
  if (values.json === true) {
    process.stdout.write(`${JSON.stringify(json, null, 2)}\n`)
    return
  }
  const since = action === 'status' ? await weightsSince(base, token, route, json) : ''
  process.stdout.write(formatRollout(json) + since + (json.held === true ? 'promotion held by the confirm-promotion gate\n' : ''))
}

/**
 * For a finished rollout, a line saying the route's weights moved on since
 * it ended (the record keeps saying `promoted` or `rolled-back`), else ''.
 * Best effort: the rollout answer is printed even when this call fails.
 */
async function weightsSince (base: string, token: string, route: string, r: Record<string, unknown>): Promise<string> {
  if (r.state !== 'promoted' && r.state !== 'rolled-back' && r.state !== 'aborted') return ''
  try {
    const cur = await callAdmin(base, token, 'GET', `api/v1/routes/${encodeURIComponent(route)}`) as { versions: Array<{ name: string; weight: number }> }
    if (cur.versions.find((v) => v.name === r.canary)?.weight === r.weight) return ''
    return `weights changed since the rollout ended: now ${cur.versions.map((v) => `${v.name} ${v.weight}%`).join(', ')}\n`
  } catch {
    return ''
  }
}
