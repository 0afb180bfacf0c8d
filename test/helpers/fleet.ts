import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { CLI, ensureBuilt } from './cli.js'
import type { TestRedis } from './redis.js'
import { metricSamples, sleep } from './reload.js'

export { sleep }

/** One parsed JSON log line of a canaryd process. */
export type LogLine = Record<string, unknown>

/** An admin answer: status and parsed JSON body (null when the body was not JSON). */
export interface AdminReply<T = Record<string, any>> {
  status: number
  json: T
}

/** A canaryd process of the fleet, started with `canaryd serve --config FILE`. */
export interface FleetInstance {
  /** The test's name for it ('a', 'b', …). */
  readonly name: string
  /** Its `store.instanceId` (what GET /api/v1/fleet calls it). */
  readonly id: string
  /** Its own dir: config.json and state.json (the local snapshot is state.fleet.json). */
  readonly dir: string
  readonly configFile: string
  readonly stateFile: string
  /** `http://127.0.0.1:PORT` of the proxy listener. */
  readonly proxyUrl: string
  /** `http://127.0.0.1:PORT` of the admin server. */
  readonly adminUrl: string
  readonly pid: number
  readonly child: ChildProcess
  /** True until the process exits. */
  readonly running: boolean
  /** Resolves with the exit code (null when killed by a signal) once the process is gone. */
  readonly exited: Promise<number | null>
  /** Its stdout lines that parsed as JSON, in order (at most 20,000). */
  lines: () => LogLine[]
  /** Everything it printed (stdout and stderr), last 256 KiB. */
  output: () => string
  /** Sends `signal` (default SIGKILL) and waits for the exit (at most 15 s; SIGKILL then). */
  kill: (signal?: NodeJS.Signals) => Promise<void>
  /** One admin API call with a JSON body (bounded: 10 s). */
  admin: (method: string, path: string, body?: unknown) => Promise<AdminReply>
  get: (path: string) => Promise<AdminReply>
  put: (path: string, body: unknown) => Promise<AdminReply>
  post: (path: string, body?: unknown) => Promise<AdminReply>
  /** The admin /metrics text. */
  metrics: () => Promise<string>
  /** Sum of the samples of `name` whose labels include `labels` (undefined: no such sample). */
  metric: (name: string, labels?: Record<string, string>) => Promise<number | undefined>
}

/** What a `canaryd serve` that was expected to fail did. */
export interface FailedStart {
  code: number | null
  signal: NodeJS.Signals | null
  /** stdout and stderr. */
  output: string
  /** True when it printed `canaryd started` (then it was killed). */
  started: boolean
  /** Milliseconds from spawn to exit. */
  ms: number
}

/** Options of a fleet. */
export interface FleetOptions {
  /** Routes of the shared config (every instance gets the same). */
  routes: unknown[]
  /** Instances started at once, in order (the first seeds Redis). Default 3: a, b, c. */
  n?: number
  /** Extra `store` keys (leaseTtlMs, syncMs, heartbeatMs, connectTimeoutMs, …). */
  store?: Record<string, unknown>
  /** Extra top-level config keys. */
  extra?: Record<string, unknown>
}

/** N canaryd processes sharing one Redis (one prefix) and one config, each with its own state dir. */
export interface Fleet {
  readonly redis: TestRedis
  /** This fleet's key prefix in Redis (unique per fleet). */
  readonly prefix: string
  /** The instances started so far (restarted ones replace their entry). */
  readonly instances: FleetInstance[]
  /** The config every instance gets, but for its own state file and id. */
  configFor: (name: string, dir: string) => Record<string, unknown>
  /** Starts one more instance named `name` in a fresh dir (no snapshot); throws with its output when it does not start within `timeoutMs` (default 20 s). */
  add: (name: string, timeoutMs?: number) => Promise<FleetInstance>
  /**
   * Starts `inst` again on its own config and state dir (its snapshot is
   * there); it must have exited. Throws with its output when it does not
   * start within `timeoutMs` (default 20 s).
   */
  restart: (inst: FleetInstance, timeoutMs?: number) => Promise<FleetInstance>
  /** Runs `serve` for `name` in a fresh dir (or `dir`), expecting it to fail; killed if still running after `ms`. */
  startExpectingFailure: (name: string, ms: number, dir?: string) => Promise<FailedStart>
  /** The instance with this store id. */
  byId: (id: string) => FleetInstance | undefined
}

let fleets = 0

/** Environment of a fleet process: info logs (for the start-up line), nothing of the test runner's CANARYD_* settings. */
function processEnv (): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CANARYD_') && k !== 'LOG_LEVEL') env[k] = v
  return { ...env, LOG_LEVEL: 'info' }
}

/** At most this much output is kept per process. */
const OUTPUT_LIMIT = 256 * 1024
const LINES_LIMIT = 20_000

interface Spawned {
  child: ChildProcess
  exited: Promise<number | null>
  gone: () => boolean
  lines: LogLine[]
  output: () => string
}

function spawnServe (configFile: string): Spawned {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', configFile], { env: processEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let partial = ''
  const lines: LogLine[] = []
  let gone = false
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { gone = true; resolve(code) }))
  const keep = (s: string): void => {
    out += s
    if (out.length > OUTPUT_LIMIT) out = out.slice(-OUTPUT_LIMIT)
  }
  child.stdout!.on('data', (d: Buffer) => {
    const s = d.toString()
    keep(s)
    partial += s
    const parts = partial.split('\n')
    partial = parts.pop() ?? ''
    for (const l of parts) {
      if (l.trim() === '' || lines.length >= LINES_LIMIT) continue
      try { lines.push(JSON.parse(l) as LogLine) } catch {}
    }
  })
  child.stderr!.on('data', (d: Buffer) => keep(d.toString()))
  return { child, exited, gone: () => gone, lines, output: () => out }
}

/** Waits (at most `ms`) for a `canaryd started` line or the exit; the line, or undefined. */
async function waitStarted (s: Spawned, ms: number): Promise<LogLine | undefined> {
  const deadline = Date.now() + ms
  for (let i = 0; i < Math.ceil(ms / 25) + 1 && Date.now() < deadline; i++) {
    const line = s.lines.find((l) => l.msg === 'canaryd started')
    if (line !== undefined) return line
    if (s.gone()) return undefined
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  return s.lines.find((l) => l.msg === 'canaryd started')
}

/** One JSON admin call (bounded: 10 s for headers and body), with the Bearer token when given. */
export async function adminCall (adminUrl: string, method: string, path: string, body?: unknown, token?: string): Promise<AdminReply> {
  const headers: Record<string, string> = {}
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await request(`${adminUrl}${path}`, {
    method: method as 'GET',
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    headersTimeout: 10_000,
    bodyTimeout: 10_000
  })
  const text = await res.body.text()
  let json: Record<string, any>
  try { json = JSON.parse(text) as Record<string, any> } catch { json = { text } }
  return { status: res.statusCode, json }
}

/**
 * Starts a fleet on `redis`: `n` `canaryd serve` processes (the built CLI,
 * `ensureBuilt()` first), one after the other, each with its own dir (config
 * and state file), the same routes, `store: {type: redis, url, prefix,
 * instanceId}` and loopback ports 0. Their addresses come from the JSON
 * `canaryd started` line (LOG_LEVEL=info). Each start waits at most 20 s.
 * Teardown SIGKILLs what still runs and removes the dirs.
 */
export async function startFleet (t: { teardown: (fn: () => Promise<void>) => void }, redis: TestRedis, opts: FleetOptions): Promise<Fleet> {
  ensureBuilt()
  const prefix = `canaryd-test-${process.pid}-${++fleets}-${randomBytes(3).toString('hex')}:`
  const instances: FleetInstance[] = []
  const everything: FleetInstance[] = []
  const dirs: string[] = []

  const configFor = (name: string, dir: string): Record<string, unknown> => ({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: '' },
    state: { file: join(dir, 'state.json') },
    store: { type: 'redis', url: redis.url, prefix, instanceId: `inst-${name}`, ...opts.store },
    routes: opts.routes,
    ...opts.extra
  })

  const newDir = (name: string): string => {
    const dir = mkdtempSync(join(tmpdir(), `canaryd-fleet-${name}-`))
    dirs.push(dir)
    writeFileSync(join(dir, 'config.json'), JSON.stringify(configFor(name, dir), null, 2))
    return dir
  }

  const launch = async (name: string, dir: string, timeoutMs = 20_000): Promise<FleetInstance> => {
    const configFile = join(dir, 'config.json')
    const t0 = Date.now()
    const s = spawnServe(configFile)
    const started = await waitStarted(s, timeoutMs)
    if (started === undefined) {
      const stillRunning = !s.gone()
      if (stillRunning) s.child.kill('SIGKILL')
      await s.exited
      const how = stillRunning ? `still not started after ${Date.now() - t0} ms (killed)` : `exited with ${s.child.exitCode}`
      throw new Error(`canaryd instance ${name} did not start: ${how}; its output:\n${s.output()}`)
    }
    const adminUrl = `http://${String(started.admin)}`
    const inst: FleetInstance = {
      name,
      id: `inst-${name}`,
      dir,
      configFile,
      stateFile: join(dir, 'state.json'),
      proxyUrl: `http://${String(started.proxy)}`,
      adminUrl,
      pid: s.child.pid!,
      child: s.child,
      get running () { return !s.gone() },
      exited: s.exited,
      lines: () => s.lines,
      output: s.output,
      kill: async (signal: NodeJS.Signals = 'SIGKILL') => {
        if (s.gone()) return
        s.child.kill(signal)
        const timer = setTimeout(() => { if (!s.gone()) s.child.kill('SIGKILL') }, 15_000)
        await s.exited
        clearTimeout(timer)
      },
      admin: async (method, path, body) => await adminCall(adminUrl, method, path, body),
      get: async (path) => await adminCall(adminUrl, 'GET', path),
      put: async (path, body) => await adminCall(adminUrl, 'PUT', path, body),
      post: async (path, body) => await adminCall(adminUrl, 'POST', path, body),
      metrics: async () => {
        const res = await request(`${adminUrl}/metrics`, { headersTimeout: 10_000, bodyTimeout: 10_000 })
        return await res.body.text()
      },
      metric: async (metric, labels = {}) => {
        const text = await inst.metrics()
        const s = metricSamples(text, metric).filter((x) => Object.entries(labels).every(([k, v]) => x.labels[k] === v))
        return s.length === 0 ? undefined : s.reduce((a, x) => a + x.value, 0)
      }
    }
    everything.push(inst)
    return inst
  }

  t.teardown(async () => {
    await Promise.all(everything.map(async (i) => { await i.kill('SIGKILL') }))
    for (const d of dirs) rmSync(d, { recursive: true, force: true })
  })

  const names = 'abcdefghij'.slice(0, opts.n ?? 3).split('')
  for (const name of names) instances.push(await launch(name, newDir(name)))

  return {
    redis,
    prefix,
    instances,
    configFor,
    add: async (name, timeoutMs) => {
      const inst = await launch(name, newDir(name), timeoutMs)
      instances.push(inst)
      return inst
    },
    restart: async (old, timeoutMs) => {
      if (old.running) throw new Error(`instance ${old.name} still runs; kill it first`)
      const inst = await launch(old.name, old.dir, timeoutMs)
      const i = instances.indexOf(old)
      if (i === -1) instances.push(inst)
      else instances[i] = inst
      return inst
    },
    startExpectingFailure: async (name, ms, dir) => {
      const d = dir ?? newDir(name)
      const t0 = Date.now()
      const s = spawnServe(join(d, 'config.json'))
      const started = await waitStarted(s, ms)
      if (!s.gone()) s.child.kill('SIGKILL')
      const code = await s.exited
      return { code, signal: s.child.signalCode, output: s.output(), started: started !== undefined, ms: Date.now() - t0 }
    },
    byId: (id) => instances.find((i) => i.id === id)
  }
}

/**
 * Polls `check` every `everyMs` until it returns a value other than
 * undefined/false, at most `timeoutMs` (bounded in time and count); the last
 * result.
 */
export async function poll<T> (check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, everyMs = 50): Promise<T | undefined | false> {
  const deadline = Date.now() + timeoutMs
  let last: T | undefined | false
  for (let i = 0; i < Math.ceil(timeoutMs / everyMs) + 2; i++) {
    last = await check()
    if (last !== undefined && last !== false) return last
    if (Date.now() >= deadline) break
    await sleep(everyMs)
  }
  return last
}

/** Percentile `p` (0..100) of `xs` by nearest rank. */
export function percentile (xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return NaN
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p / 100 * s.length) - 1))]!
}

/** Weights of a route in the route view: version name → weight. */
export function weightsOf (route: { versions?: Array<{ name: string; weight: number }> }): Record<string, number> {
  return Object.fromEntries((route.versions ?? []).map((v) => [v.name, v.weight]))
}
