/**
 * The local snapshot of a fleet's state: what an instance last applied
 * from Redis, kept next to the state file so that a restart while Redis is
 * down still serves the fleet's weights (and a Redis found empty is seeded
 * with them). Written atomically after every applied generation; read at
 * start only.
 */
import { readFileSync } from 'node:fs'
import { checkStateDoc, STATE_FORMAT_VERSION } from './file.js'
import type { FleetRead } from './redis.js'

/** The snapshot's path: `state.file` with `.json` replaced by `.fleet.json` ('' without a state file). */
export function fleetSnapshotPath (stateFile: string): string {
  if (stateFile === '') return ''
  return stateFile.endsWith('.json') ? `${stateFile.slice(0, -5)}.fleet.json` : `${stateFile}.fleet.json`
}

/** A snapshot as read at start. */
export type SnapshotRead =
  | { kind: 'absent' }
  | { kind: 'ok'; read: FleetRead & { savedAt: string } }
  /** Present but not usable (not JSON, not a snapshot, an invalid route state): never half-trusted. */
  | { kind: 'unusable'; reason: string }

/** Reads the snapshot at `path` (start-up only, synchronously). */
export function readSnapshot (path: string): SnapshotRead {
  if (path === '') return { kind: 'absent' }
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code === 'ENOENT' || code === 'ENOTDIR' ? { kind: 'absent' } : { kind: 'unusable', reason: `cannot read it: ${code ?? (err as Error).message}` }
  }
  let raw: Record<string, unknown>
  try {
    raw = JSON.parse(text) as Record<string, unknown>
  } catch (err) {
    return { kind: 'unusable', reason: `not valid JSON: ${(err as Error).message}` }
  }
  if (typeof raw !== 'object' || raw === null || typeof raw.generation !== 'number') return { kind: 'unusable', reason: 'not a fleet snapshot (no generation)' }
  const bad = checkStateDoc({ version: raw.version, routes: raw.routes, audit: raw.audit })
  if (bad !== undefined) return { kind: 'unusable', reason: bad }
  const routes = new Map(Object.entries(raw.routes as Record<string, unknown>).map(([k, v]) => [k, JSON.stringify(v)]))
  return { kind: 'ok', read: { generation: raw.generation, config: typeof raw.config === 'string' ? raw.config : '', lineage: typeof raw.lineage === 'string' ? raw.lineage : '', routes, audit: Array.isArray(raw.audit) ? raw.audit : [], savedAt: String(raw.savedAt) } }
}

/** The snapshot's text for an applied fleet state (route states as stored in Redis). */
export function snapshotText (generation: number, config: string, lineage: string, routes: ReadonlyMap<string, string>, audit: readonly unknown[], now: Date): string {
  return `${JSON.stringify({
    version: STATE_FORMAT_VERSION,
    kind: 'canaryd fleet snapshot',
    generation,
    config,
    lineage,
    savedAt: now.toISOString(),
    routes: Object.fromEntries([...routes].map(([k, v]) => [k, JSON.parse(v) as unknown])),
    audit
  })}\n`
}
