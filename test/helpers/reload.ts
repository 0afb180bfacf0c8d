import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { App } from '../../src/app.js'
import { loadConfig } from '../../src/config/load.js'
import { createLogger } from '../../src/logger.js'
import { CLI } from './cli.js'
import { send, type Reply } from './http.js'
import type { TestProxy } from './proxy.js'

/** Waits `ms` milliseconds. */
export async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * Polls `check` every `everyMs` until it returns true or `timeoutMs` passed
 * (bounded in time and in count); resolves to the last result.
 */
export async function until (check: () => boolean | Promise<boolean>, timeoutMs = 5000, everyMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (let i = 0; i < Math.ceil(timeoutMs / everyMs) + 1; i++) {
    if (await check()) return true
    if (Date.now() >= deadline) break
    await sleep(everyMs)
  }
  return await check()
}

/** One version of a route in a config file: `upstream` is one origin or a list of origins. */
export interface VersionFile {
  name: string
  upstream: string | string[]
  weight: number
  balance?: 'least-request' | 'round-robin' | 'hash'
  discovery?: 'dns'
}

/** A route for a config file, sticky on `x-user-id`, override header `x-canary`. */
export function routeFile (name: string, versions: VersionFile[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name,
    sticky: { keys: ['header:x-user-id'] },
    override: { header: 'x-canary' },
    versions,
    ...extra
  }
}

/** A fresh temp dir holding `config.json` and `state.json`. */
export function configDir (): { dir: string; file: string; stateFile: string } {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-reload-'))
  return { dir, file: join(dir, 'config.json'), stateFile: join(dir, 'state.json') }
}

/** The full raw config: loopback, ports 0, the dir's state file, then `extra` (top-level keys, replaced whole). */
export function rawConfig (stateFile: string, routes: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: '' },
    state: { file: stateFile },
    routes,
    ...extra
  }
}

/** Writes `raw` as JSON in place (same inode, as `echo > file` does). */
export function writeConfig (file: string, raw: unknown): void {
  writeFileSync(file, typeof raw === 'string' ? raw : JSON.stringify(raw, null, 2))
}

/** Writes `raw` as JSON to a temp file next to `file`, then renames it over `file` (as editors and config managers do). */
export function replaceConfig (file: string, raw: unknown): void {
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`
  writeFileSync(tmp, JSON.stringify(raw, null, 2))
  renameSync(tmp, file)
}

/** A test proxy started from a config file, with its log lines kept. */
export interface FileProxy extends TestProxy {
  file: string
  stateFile: string
  /** Log lines written so far (JSON strings). */
  logs: () => string[]
}

/**
 * Writes `raw` to `file` and starts an App from `loadConfig(file)` (so it
 * knows its file and can reload it), logging at info into memory.
 */
export async function startFileProxy (file: string, stateFile: string, raw: unknown): Promise<FileProxy> {
  writeConfig(file, raw)
  const lines: string[] = []
  let partial = ''
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      partial += chunk.toString()
      const parts = partial.split('\n')
      partial = parts.pop() ?? ''
      if (lines.length < 100_000) lines.push(...parts.filter((l) => l !== ''))
      cb()
    }
  })
  const app = new App(loadConfig(file), { logger: createLogger('info', sink), metrics: true })
  await app.start()
  return {
    app,
    file,
    stateFile,
    url: `http://127.0.0.1:${app.proxyAddress!.port}`,
    adminUrl: `http://127.0.0.1:${app.adminAddress!.port}`,
    close: async () => { await app.close(1000) },
    logs: () => [...lines, ...(partial === '' ? [] : [partial])]
  }
}

/** `POST /api/v1/reload` (with a Bearer token when given). */
/** A file-started proxy (closed in teardown) whose `write` replaces its config's routes (then reload it). */
export type ReloadableProxy = FileProxy & { dir: string, write: (routes: unknown[], extra?: Record<string, unknown>) => void }

/** Starts an App from a config file in a temp dir holding `routes` (and top-level `extra`); closed in teardown. */
export async function fileProxy (t: { teardown: (fn: () => Promise<void>) => void }, routes: unknown[], extra: Record<string, unknown> = {}): Promise<ReloadableProxy> {
  const d = configDir()
  const p = await startFileProxy(d.file, d.stateFile, rawConfig(d.stateFile, routes, extra))
  t.teardown(async () => { await p.close() })
  return { ...p, dir: d.dir, write: (r, e = extra) => { writeConfig(d.file, rawConfig(d.stateFile, r, e)) } }
}

export async function postReload (adminUrl: string, token?: string): Promise<Reply> {
  const headers: Record<string, string> = {}
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  return await send(`${adminUrl}/api/v1/reload`, { method: 'POST', headers })
}

/** One JSON admin call, with an optional token. */
export async function adminCall (adminUrl: string, method: string, path: string, body?: unknown, token?: string): Promise<Reply> {
  const headers: Record<string, string> = {}
  if (body !== undefined) headers['content-type'] = 'application/json'
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  return await send(`${adminUrl}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
}

/** One sample of a Prometheus text exposition. */
export interface Sample { labels: Record<string, string>; value: number }

/** Every sample of metric `name` in a Prometheus text exposition, labels parsed in any order. */
export function metricSamples (text: string, name: string): Sample[] {
  const out: Sample[] = []
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue
    const m = /^[^{\s]+(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (m === null) continue
    const labels: Record<string, string> = {}
    for (const l of (m[1] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!
    out.push({ labels, value: Number(m[2]) })
  }
  return out
}

/** `canaryd_upstream_endpoints{route,version,state}` of one version, from the admin /metrics (undefined: no such series). */
export async function endpointGauge (adminUrl: string, route: string, version: string): Promise<{ healthy: number | undefined; ejected: number | undefined }> {
  const text = (await send(`${adminUrl}/metrics`)).body.toString()
  const s = metricSamples(text, 'canaryd_upstream_endpoints').filter((x) => x.labels.route === route && x.labels.version === version)
  return {
    healthy: s.find((x) => x.labels.state === 'healthy')?.value,
    ejected: s.find((x) => x.labels.state === 'ejected')?.value
  }
}

/** Open file descriptors of this process. */
export function fdCount (): number {
  return readdirSync('/proc/self/fd').length
}

/** A `canaryd serve` process started from the built CLI. */
export interface Served {
  child: ChildProcess
  proxy: string
  admin: string
  workers: number[]
  /** Everything it printed so far (stdout and stderr). */
  log: () => string
  exited: Promise<number | null>
  /** SIGKILL (idempotent). */
  kill: () => void
}

/**
 * Runs `canaryd serve --config FILE ...args` and waits (at most 15 s) for its
 * `canaryd started` line; throws with its output when it does not start.
 */
export async function serve (file: string, args: string[] = []): Promise<Served> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file, ...args], { env: { ...process.env, LOG_LEVEL: 'info', CANARYD_ADMIN_TOKEN: '' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr!.on('data', (c: Buffer) => { out += c.toString() })
  let gone = false
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { gone = true; resolve(code) }))
  await until(() => gone || out.includes('canaryd started'), 15_000)
  const line = out.split('\n').find((l) => l.includes('canaryd started'))
  if (line === undefined) {
    child.kill('SIGKILL')
    throw new Error(`canaryd serve did not start: ${out}`)
  }
  const started = JSON.parse(line) as { proxy: string; admin: string; workers?: number[] }
  return {
    child,
    proxy: `http://${started.proxy}`,
    admin: `http://${started.admin}`,
    workers: started.workers ?? [],
    log: () => out,
    exited,
    kill: () => { if (!gone) child.kill('SIGKILL') }
  }
}
