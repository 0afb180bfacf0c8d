/**
 * `canaryd segments ROUTE [--set FILE|-]`: a thin client of
 * `GET/PUT /api/v1/routes/{route}/segments` (same --admin / --token
 * conventions as the other commands). The server validates; the CLI prints
 * its message and exits 1 on an API error, 2 on a usage error.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { parse as parseYaml } from 'yaml'
import { adminTarget, callAdmin, ClientError, DEFAULT_ADMIN_URL } from './client.js'

/** Usage of the segments command. */
export const SEGMENTS_USAGE = `Usage:
  canaryd segments ROUTE                      print the route's segments
  canaryd segments ROUTE --set FILE|-         replace them (JSON or YAML: an array, or {"segments": [...]}; [] removes them)
Options:
  --reason TEXT  recorded in the audit (with --set)
  --admin URL    admin server (CANARYD_ADMIN_URL; default ${DEFAULT_ADMIN_URL})
  --token TOKEN  bearer token (CANARYD_ADMIN_TOKEN)
  --json         print the API's JSON instead of the summary
`

interface SegmentJson { name: string; match: Record<string, unknown>; version?: string; weights?: Record<string, number> }

/** One line per segment: name, what it matches, what it gets. */
export function formatSegments (route: string, segments: readonly SegmentJson[], runtime: boolean): string {
  if (segments.length === 0) return `route ${route}: no segments (everyone gets the route's weights)\n`
  const lines = [`route ${route}: ${segments.length} segment${segments.length === 1 ? '' : 's'}${runtime ? ' (changed at runtime)' : ''}, first match wins`]
  for (const s of segments) {
    const match = Object.entries(s.match).map(([k, v]) => `${k} ${JSON.stringify(v)}`).join(' and ')
    const gets = s.version !== undefined ? `→ ${s.version}` : `→ ${Object.entries(s.weights ?? {}).filter(([, w]) => w > 0).map(([n, w]) => `${n} ${w}%`).join(', ')}`
    lines.push(`  ${s.name.padEnd(12)} ${gets.padEnd(28)} when ${match}`)
  }
  return `${lines.join('\n')}\n`
}

function fail (message: string, code: 1 | 2): void {
  process.stderr.write(`canaryd: ${message}\n`)
  process.exitCode = code
}

/** Reads a segments file (or stdin for "-"): JSON or YAML, an array or {"segments": [...]}. */
function readSegments (file: string): unknown {
  const text = readFileSync(file === '-' ? 0 : file, 'utf8')
  // YAML is a superset of JSON: one parser takes both, flow-style YAML included
  const doc: unknown = parseYaml(text)
  if (typeof doc === 'object' && doc !== null && !Array.isArray(doc) && 'segments' in doc) return (doc as { segments: unknown }).segments
  return doc
}

/** Runs `canaryd segments …`. */
export async function runSegments (argv: string[]): Promise<void> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { set: { type: 'string' }, reason: { type: 'string' }, admin: { type: 'string' }, token: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      strict: true
    })
  } catch (err) {
    return fail(`${(err as Error).message}\n${SEGMENTS_USAGE}`, 2)
  }
  const { values, positionals } = parsed
  if (values.help === true) {
    process.stdout.write(SEGMENTS_USAGE)
    return
  }
  const [route, ...extra] = positionals
  if (route === undefined || extra.length !== 0) return fail(`segments needs one ROUTE\n${SEGMENTS_USAGE}`, 2)
  if (values.reason !== undefined && values.set === undefined) return fail('--reason goes with --set', 2)
  const { base, token } = adminTarget(values)
  const path = `api/v1/routes/${encodeURIComponent(route)}/segments`
  let body: Record<string, unknown> | undefined
  if (values.set !== undefined) {
    try {
      body = { segments: readSegments(values.set) }
    } catch (err) {
      return fail(`cannot read segments ${values.set}: ${(err as Error).message}`, 2)
    }
    if (values.reason !== undefined) body.reason = values.reason
  }
  let res: { route: string; segments: SegmentJson[]; runtime: boolean }
  try {
    res = await callAdmin(base, token, body === undefined ? 'GET' : 'PUT', path, body) as typeof res
  } catch (err) {
    if (!(err instanceof ClientError)) throw err
    return fail(err.message, err.exitCode === 2 ? 2 : 1)
  }
  process.stdout.write(values.json === true ? `${JSON.stringify(res, null, 2)}\n` : formatSegments(res.route, res.segments, res.runtime))
}
