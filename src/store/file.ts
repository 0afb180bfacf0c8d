import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { mkdir, open, rename, rm } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { ConfigError } from '../errors.js'
import type { MirrorSpec, SegmentSpec } from '../routing/spec.js'
import { checkWeight, checkWeightSum } from '../routing/weights.js'

/**
 * The state file: canaryd's runtime state (weights changed through the admin
 * API or by rollouts, rollout progress, recent audit entries), kept apart
 * from the startup config (STYLE.md 7). Format version 1:
 *
 * ```json
 * { "version": 1, "savedAt": "2025-01-01T00:00:00.000Z",
 *   "routes": { "web": { "versions": [{ "name": "stable", "upstream": "http://…" }, …],
 *                        "weights": { "stable": 80, "canary": 20 },
 *                        "rollout": null } },
 *   "audit": [ …newest last… ] }
 * ```
 *
 * Each route records the version set its weights were saved for (names; the
 * upstreams beside them are for a human reading the file), so a config that
 * renamed, added or removed versions is detected on start; and, under
 * `upstreams`, the version upstreams changed at runtime with the config
 * value each replaced (the config file changing that value again wins).
 */

/** The state file format version this build writes and reads. */
export const STATE_FORMAT_VERSION = 1

/** One version of a route as recorded in the state file (weights are kept apart). */
export interface StateVersion {
  name: string
  /** Its origins when saved: one as a string, several as an array (for a human reading the file). */
  upstream: string | string[]
}

/** A version's upstream changed at runtime, with the config file's value it replaced (the file changing it again wins). */
export interface UpstreamOverride {
  upstream: string[]
  config: string[]
}

/** One route's runtime state. */
export interface RouteState {
  /** The version set the weights were saved for. */
  versions: StateVersion[]
  /** Weight per version name, percent. */
  weights: Record<string, number>
  /** Opaque rollout state owned by the rollout controller, or null. */
  rollout: unknown
  /** Runtime upstreams by version name (PUT /api/v1/routes/{route}/versions/{version}); absent when none. */
  upstreams?: Record<string, UpstreamOverride>
  /** Runtime segments (PUT …/segments, rollout segment steps) with the config file's value they replaced; absent when none. */
  segments?: FieldOverride<SegmentSpec[]>
  /** Runtime mirror (a rollout's shadow phase) with the config file's value it replaced; absent when none. */
  mirror?: FieldOverride<MirrorSpec | null>
}

/**
 * A route field changed at runtime, with the config file's value it
 * replaced: the override holds until the file itself changes that field
 * (the file is newer then), as for version upstreams.
 */
export interface FieldOverride<T> {
  value: T
  config: T
}

/** The whole state file. */
export interface StateDoc {
  version: number
  savedAt: string
  routes: Record<string, RouteState>
  /** Recent audit entries, oldest first (bounded). */
  audit: unknown[]
}

/** Result of reading the state file at start. */
export type StateRead =
  | { kind: 'absent' }
  | { kind: 'ok'; doc: StateDoc }
  | { kind: 'corrupt'; reason: string; movedTo: string | undefined; moveError: string | undefined }

function isObj (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * True for an origin as canaryd writes them (`checkUpstream`'s output:
 * http(s), a host, a port other than 0, nothing after): a state file edited
 * by hand must not hand the pools something they cannot dial.
 */
export function isOrigin (s: string): boolean {
  try {
    const u = new URL(s)
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.origin === s && u.port !== '0'
  } catch {
    return false
  }
}

function isOrigins (v: unknown): boolean {
  if (typeof v === 'string') return true
  return Array.isArray(v) && v.length !== 0 && v.every((x) => typeof x === 'string')
}

/**
 * Checks a parsed state document and returns why it is unusable, or
 * undefined. Any problem makes the whole file corrupt: a half-valid file is
 * not trusted route by route, because the next write would silently drop the
 * parts that were skipped; moving it aside keeps them for a human.
 */
export function checkStateDoc (raw: unknown): string | undefined {
  if (!isObj(raw)) return 'not a JSON object'
  if (raw.version !== STATE_FORMAT_VERSION) return `unsupported format version ${JSON.stringify(raw.version) ?? 'undefined'} (this build reads ${STATE_FORMAT_VERSION})`
  if (!isObj(raw.routes)) return '"routes" must be an object'
  if (raw.audit !== undefined && !Array.isArray(raw.audit)) return '"audit" must be an array'
  for (const [name, r] of Object.entries(raw.routes)) {
    const at = `routes.${name}`
    if (!isObj(r)) return `${at} must be an object`
    if (!Array.isArray(r.versions) || r.versions.length === 0) return `${at}.versions must be a non-empty array`
    const names = new Set<string>()
    for (const v of r.versions as unknown[]) {
      if (!isObj(v) || typeof v.name !== 'string' || !isOrigins(v.upstream)) return `${at}.versions entries need a string name and upstream (a string or an array of strings)`
      names.add(v.name)
    }
    if (r.upstreams !== undefined) {
      if (!isObj(r.upstreams)) return `${at}.upstreams must be an object`
      for (const [n, o] of Object.entries(r.upstreams)) {
        if (!isObj(o) || !Array.isArray(o.upstream) || !isOrigins(o.upstream) || !Array.isArray(o.config) || !isOrigins(o.config)) return `${at}.upstreams.${n} needs upstream and config arrays of strings`
      }
    }
    for (const f of ['segments', 'mirror'] as const) {
      const o = r[f]
      // the values are validated against the route's versions when the file is applied (a bad one is dropped with a warning)
      if (o !== undefined && (!isObj(o) || !Object.hasOwn(o, 'value') || !Object.hasOwn(o, 'config'))) return `${at}.${f} needs value and config`
    }
    if (!isObj(r.weights)) return `${at}.weights must be an object`
    const ws: number[] = []
    for (const n of names) {
      const w = r.weights[n]
      const bad = checkWeight(w)
      if (bad !== undefined) return `${at}.weights.${n} ${bad}`
      ws.push(w as number)
    }
    for (const k of Object.keys(r.weights)) if (!names.has(k)) return `${at}.weights.${k} names no version`
    const sum = checkWeightSum(ws)
    if (sum !== undefined) return `${at}.weights: ${sum}`
  }
  return undefined
}

/**
 * Reads the state file synchronously (start-up only). A missing file is
 * 'absent'; an unreadable, unparsable or invalid one is 'corrupt' and is
 * renamed to `<file>.corrupt-<timestamp>` next to it — never deleted — so
 * the operator can inspect it while canaryd starts from config weights.
 */
export function readStateFile (path: string, now: Date = new Date()): StateRead {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    // mkdir -p of a path that is itself a regular file says EEXIST; a write there would say ENOTDIR
    const raw = (err as NodeJS.ErrnoException).code
    const code = raw === 'EEXIST' ? 'ENOTDIR' : raw
    if (code === 'ENOENT' || code === 'ENOTDIR') return { kind: 'absent' }
    return moveAside(path, `cannot read: ${code ?? (err as Error).message}`, now)
  }
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    return moveAside(path, `not valid JSON: ${(err as Error).message}`, now)
  }
  const bad = checkStateDoc(raw)
  if (bad !== undefined) return moveAside(path, bad, now)
  const doc = raw as StateDoc
  return { kind: 'ok', doc: { ...doc, audit: doc.audit ?? [] } }
}

function moveAside (path: string, reason: string, now: Date): StateRead {
  // ':' is not allowed in Windows file names and awkward in shells
  const target = `${path}.corrupt-${now.toISOString().replace(/[:.]/g, '-')}`
  try {
    renameSync(path, target)
    return { kind: 'corrupt', reason, movedTo: target, moveError: undefined }
  } catch (err) {
    return { kind: 'corrupt', reason, movedTo: undefined, moveError: (err as NodeJS.ErrnoException).code ?? (err as Error).message }
  }
}

/** Each errno a state write can fail with, in words: the bare code is cryptic to an operator. */
const WRITE_FAILURES: Readonly<Record<string, string>> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOTDIR: 'a file, not a directory, is in the path',
  EISDIR: 'the state file path is a directory',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded'
}

/**
 * Start-up check of `state.file`: creates its directory when missing
 * (mkdir -p) and proves a file can be created in it, the same operation the
 * atomic save does (temp file + rename). Without it a read-only or missing
 * volume is only found by the first weight change (500
 * CANARYD_ERR_STATE_PERSIST) while /readyz already says 200.
 *
 * A real write probe rather than access(W_OK): root passes access() on a
 * 0555 directory, and a read-only mount is only certain on an actual write.
 * `file` '' (runtime state in memory only) is not checked. Throws a
 * ConfigError for key `state.file` whose one-line message names the
 * directory, the errno and, when the path came from CANARYD_STATE_FILE in
 * `env`, that variable (it overrides the config file, which is easy to miss
 * in a container image that sets it).
 */
export function checkStateDir (file: string, env: NodeJS.ProcessEnv = process.env): void {
  if (file === '') return
  const target = resolve(file)
  const dir = dirname(target)
  try {
    mkdirSync(dir, { recursive: true })
    if (statSync(target, { throwIfNoEntry: false })?.isDirectory() === true) throw Object.assign(new Error(`${target} is a directory`), { code: 'EISDIR' })
    const probe = join(dir, `.${basename(target)}.${process.pid}.probe`)
    writeFileSync(probe, '', { mode: 0o600 })
    rmSync(probe, { force: true })
  } catch (err) {
    // mkdir -p of a path that is itself a regular file says EEXIST; a write there would say ENOTDIR
    const raw = (err as NodeJS.ErrnoException).code
    const code = raw === 'EEXIST' ? 'ENOTDIR' : raw
    const what = code === undefined ? (err as Error).message : `${code} (${WRITE_FAILURES[code] ?? (err as Error).message})`
    const source = env.CANARYD_STATE_FILE !== undefined && env.CANARYD_STATE_FILE === file
      ? `; the path is set by CANARYD_STATE_FILE=${file}, which overrides the config file`
      : ''
    throw new ConfigError('state.file', `cannot write to ${code === 'EISDIR' ? target : dir}: ${what}${source}. ` +
      'Mount a writable volume there, or set state.file (env CANARYD_STATE_FILE) to a writable path ("" keeps runtime state in memory only)')
  }
}

let tmpCounter = 0

/**
 * Writes `data` to `path` atomically: a temp file in the same directory
 * (same file system, so rename is atomic), fsync, rename over the target,
 * then fsync the directory so the rename itself survives a power cut.
 * A reader sees the old file or the new one, never a torn one. On failure
 * the temp file is removed and the old file is untouched.
 */
export async function writeFileAtomic (path: string, data: string): Promise<void> {
  const dir = dirname(path)
  await mkdir(dir, { recursive: true })
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${++tmpCounter}.tmp`)
  try {
    const fh = await open(tmp, 'w', 0o600)
    try {
      await fh.writeFile(data, 'utf8')
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {})
    throw err
  }
  try {
    const d = await open(dir, 'r')
    try {
      await d.sync()
    } finally {
      await d.close()
    }
  } catch {
    // some platforms cannot open or fsync a directory; the rename is done, only its durability is weaker
  }
}
