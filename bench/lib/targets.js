// Benchmark targets and the /proc readings shared by bench/run.js (the full
// run) and bench/ab.js (the focused wrk A/B): one upstream process, each target
// in its own process so its CPU time and memory can be read from /proc/<pid>,
// and wrk driven as a separate process.
import { execFile, execFileSync, fork, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = join(dirname(fileURLToPath(import.meta.url)), '..')
const root = join(here, '..')
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100

/** Every target startTargets knows, in the order it starts them. */
export const TARGET_NAMES = ['direct', 'canaryd', 'canaryd-watched', 'canaryd-base', 'canaryd-nometrics', 'canaryd-workers2', 'canaryd-segments', 'canaryd-mirror', 'canaryd-redis', 'undici-bare', 'http-bare', 'http-proxy', 'nginx']
/** Started only when asked for by name (not part of the full run). */
export const OPT_IN = ['http-bare', 'canaryd-watched', 'canaryd-base', 'canaryd-segments', 'canaryd-mirror', 'canaryd-redis']

const children = new Set()
const tmpDirs = []
let hooked = false

/**
 * Kills every child this module started (cluster workers included) and removes
 * the temp directories. Synchronous, so it also works from an 'exit' handler.
 */
export function cleanup () {
  const pids = []
  for (const c of children) {
    // A cluster primary killed with SIGKILL cannot take its workers down, so
    // they are collected first and killed by pid.
    if (c.exitCode === null && c.signalCode === null) pids.push(...withDescendants(c.pid))
  }
  for (const pid of pids.reverse()) { try { process.kill(pid, 'SIGKILL') } catch {} }
  children.clear()
  for (const dir of tmpDirs.splice(0)) { try { rmSync(dir, { recursive: true, force: true }) } catch {} }
}

/**
 * Remembers a child so cleanup() kills it. The first call also hooks process
 * exit and SIGINT/SIGTERM: a benchmark stopped half-way must not leave an
 * upstream, a proxy or nginx holding ports and CPU.
 */
function track (child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  if (hooked) return child
  hooked = true
  process.once('exit', cleanup)
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping the benchmark processes\n`)
      process.exit(code)
    })
  }
  return child
}

/** A TCP port free on 127.0.0.1 right now (the OS picks it). */
export async function freePort () {
  const s = createServer()
  await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve))
  const { port } = s.address()
  await new Promise((resolve) => s.close(resolve))
  return port
}

/** Forks a Node script that sends {ready} when listening; returns its pid. */
export async function forkReady (script, argv, env = {}) {
  const child = track(fork(script, argv, { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], env: { ...process.env, LOG_LEVEL: 'warn', ...env } }))
  await new Promise((resolve, reject) => {
    child.once('message', resolve)
    child.once('exit', (code) => reject(new Error(`${script} exited ${code}`)))
  })
  return child.pid
}

/** Waits until something accepts TCP on the port. */
export async function waitPort (port) {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((resolve) => {
      const s = connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`nothing listens on ${port}`)
}

/** utime + stime of the pids in seconds, from /proc/<pid>/stat; gone pids count 0. */
export function cpuSeconds (pids) {
  let ticks = 0
  for (const pid of pids) {
    try {
      const s = readFileSync(`/proc/${pid}/stat`, 'utf8')
      // comm (field 2) may hold spaces: count fields from the last ')'
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
      ticks += Number(f[11]) + Number(f[12])
    } catch {}
  }
  return ticks / CLK_TCK
}

/** Sum of the pids' peak resident set (VmHWM) in MB. */
export function peakRssMb (pids) {
  let kb = 0
  for (const pid of pids) {
    try {
      const m = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
      kb += Number(m?.[1] ?? 0)
    } catch {}
  }
  return Math.round(kb / 1024)
}

/** All descendant pids of a pid (cluster workers), itself included. */
export function withDescendants (pid) {
  const out = [pid]
  try {
    for (const line of execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)]).toString().split('\n')) {
      const p = Number(line.trim())
      if (p > 0) out.push(...withDescendants(p))
    }
  } catch {}
  return out
}

/** The pids whose CPU counts as the target's, read now: cluster workers can be replaced. */
export function targetPids (target) {
  return target.descendantsOf !== undefined ? withDescendants(target.descendantsOf) : target.pids
}

/** Median of the numbers in xs (nulls and NaN ignored); null when there are none. */
export function median (xs) {
  const s = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b)
  if (s.length === 0) return null
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** Whether a command is on PATH. */
export function hasCommand (name) {
  try { execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }); return true } catch { return false }
}

/**
 * Runs wrk once (as a child, so cleanup() stops it too) and parses its report:
 * req/s, total requests, p50/p99 in ms and errors (socket errors + non-2xx/3xx).
 * Rejects when wrk exits non-zero.
 */
export async function wrkRun (url, { connections, duration, script = join(here, 'wrk-users.lua'), threads = 1 }) {
  const out = await new Promise((resolve, reject) => {
    track(execFile('wrk', [`-t${threads}`, `-c${connections}`, `-d${duration}s`, '--latency', '-s', script, url], { encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`wrk ${url}: ${String(stderr || err.message).trim().split('\n')[0]}`))
      else resolve(stdout)
    }))
  })
  const unit = (v, u) => Number(v) * (u === 'us' ? 0.001 : u === 's' ? 1000 : 1)
  const p50 = /50%\s+([\d.]+)(us|ms|s)/.exec(out)
  const p99 = /99%\s+([\d.]+)(us|ms|s)/.exec(out)
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0)
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0),
    total: Number(/(\d+) requests in /.exec(out)?.[1] ?? 0),
    p50: p50 ? unit(p50[1], p50[2]) : null,
    p99: p99 ? unit(p99[1], p99[2]) : null,
    errors: non2xx + (socket ? socket.slice(1).reduce((a, n) => a + Number(n), 0) : 0)
  }
}

/**
 * CPU µs per request: the CPU seconds the pids spent between two readings over
 * the requests served in between, one decimal. null when there is no process to
 * read (direct) or no request was served.
 */
export function cpuUsPerReq (pids, c0, c1, total) {
  if (pids.length === 0 || !(total > 0)) return null
  return Math.round(1e6 * (c1 - c0) / total * 10) / 10
}

/**
 * Starts the upstream (bench/upstream.js on two ports, "stable" and "canary")
 * and the requested targets, each in its own process, in TARGET_NAMES order.
 * A target that cannot start (nginx not installed, no --workers in this build)
 * is logged and listed in `skipped`; the others go on.
 *
 * @param {{ names?: string[], log?: (line: string) => void }} options
 *   names: targets to start (all when undefined); log: one line per target.
 * @returns {Promise<{ targets: { name: string, url: string, pids: number[], descendantsOf?: number }[],
 *   skipped: { name: string, reason: string }[], upstream: { pid: number, stable: string, canary: string },
 *   cleanup: () => void }>}
 */
export async function startTargets ({ names, log = () => {} } = {}) {
  const tmp = mkdtempSync(join(tmpdir(), 'canaryd-bench-'))
  tmpDirs.push(tmp)
  const [portA, portB] = [await freePort(), await freePort()]
  const upstreamPid = await forkReady(join(here, 'upstream.js'), [String(portA), String(portB)])
  const stable = `http://127.0.0.1:${portA}`
  const canary = `http://127.0.0.1:${portB}`

  const config = (extra = {}, route = {}) => {
    const file = join(tmp, `canaryd-${Math.random().toString(36).slice(2)}.json`)
    writeFileSync(file, JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
      state: { file: join(tmp, `state-${Math.random().toString(36).slice(2)}.json`) },
      log: { level: 'warn' },
      routes: [{
        name: 'web',
        sticky: { keys: ['header:x-user-id', 'cookie:session'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
        override: { header: 'x-canary', cookie: 'canary' },
        versions: [{ name: 'stable', upstream: stable, weight: 90 }, { name: 'canary', upstream: canary, weight: 10 }],
        ...route
      }],
      ...extra
    }))
    return file
  }

  const starters = {
    direct: async () => ({ url: `${stable}/`, pids: [] }),
    canaryd: async () => {
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port } })
      const pid = await forkReady(join(here, 'peers/canaryd.js'), [file])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    // canaryd with a dashboard open: one event stream (GET /api/v1/events) read for
    // the whole run, so the sampler reads the exposition once a second beside the traffic
    'canaryd-watched': async () => {
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port } })
      const pid = await forkReady(join(here, 'peers/canaryd.js'), [file, 'watched'])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    // an earlier build of canaryd for a same-run before/after A/B: CANARYD_BASE is
    // another checkout (e.g. `git worktree add /tmp/base main && cd /tmp/base &&
    // npm ci && npm run build`), run with its own bench/peers/canaryd.js and dist/
    'canaryd-base': async () => {
      const base = process.env.CANARYD_BASE
      if (base === undefined || base === '') throw new Error('set CANARYD_BASE to a built checkout of the canaryd to compare with')
      const peer = join(base, 'bench/peers/canaryd.js')
      if (!existsSync(peer) || !existsSync(join(base, 'dist/app.js'))) throw new Error(`${base} has no bench/peers/canaryd.js or no dist/ (npm ci && npm run build there)`)
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port } })
      const pid = await forkReady(peer, [file])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    // issue 15: the same route with the four segments, none of which the bench's
    // requests match (every matcher runs on every request: the worst plain case)
    'canaryd-segments': async () => {
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port } }, {
        segments: [
          { name: 'staff', match: { header: { 'x-employee': 'true' } }, version: 'canary' },
          { name: 'kr', match: { header: { 'cf-ipcountry': ['KR'] } }, weights: { stable: 50, canary: 50 } },
          { name: 'office', match: { ip: ['10.20.0.0/16'] }, version: 'canary' },
          { name: 'beta', match: { cookie: { plan: { regex: '^beta-' } } }, weights: { stable: 0, canary: 100 } }
        ]
      })
      const pid = await forkReady(join(here, 'peers/canaryd.js'), [file])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    // issue 15: 10 % of GETs copied to the canary (a healthy target): the copies' cost
    'canaryd-mirror': async () => {
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port } }, { mirror: { version: 'canary', percent: 10 } })
      const pid = await forkReady(join(here, 'peers/canaryd.js'), [file])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    // issue 16: the same canaryd with its runtime state in Redis (a redis-server of its own on a
    // free port, data in the bench's temp dir): the store is never on the request path
    'canaryd-redis': async () => {
      if (!hasCommand('redis-server')) throw new Error('redis-server is not installed (Debian package redis-server)')
      const redisPort = await freePort()
      track(spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--dir', tmp, '--save', '', '--appendonly', 'no', '--daemonize', 'no'], { stdio: 'ignore' }))
      await waitPort(redisPort)
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port }, store: { type: 'redis', url: `redis://127.0.0.1:${redisPort}/0`, prefix: 'bench:' } })
      const pid = await forkReady(join(here, 'peers/canaryd.js'), [file])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    'canaryd-nometrics': async () => {
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port } })
      const pid = await forkReady(join(here, 'peers/canaryd.js'), [file, 'nometrics'])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    'canaryd-workers2': async () => {
      const help = execFileSync(process.execPath, [join(root, 'dist/cli.js'), '--help']).toString()
      if (!help.includes('--workers')) throw new Error('this build has no --workers')
      const port = await freePort()
      const file = config({ listen: { host: '127.0.0.1', port } })
      const child = track(spawn(process.execPath, [join(root, 'dist/cli.js'), 'serve', '--config', file, '--workers', '2'], { stdio: 'ignore', env: { ...process.env, LOG_LEVEL: 'warn' } }))
      await waitPort(port)
      // the primary listens before every worker is up; let them all join
      await new Promise((resolve) => setTimeout(resolve, 500))
      return { url: `http://127.0.0.1:${port}/`, pids: withDescendants(child.pid), descendantsOf: child.pid }
    },
    'undici-bare': async () => {
      const port = await freePort()
      const pid = await forkReady(join(here, 'peers/undici-bare.js'), [String(port), stable])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    'http-bare': async () => {
      const port = await freePort()
      const pid = await forkReady(join(here, 'peers/http-bare.js'), [String(port), stable])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    'http-proxy': async () => {
      const port = await freePort()
      const pid = await forkReady(join(here, 'peers/http-proxy.js'), [String(port), stable])
      return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
    },
    nginx: async () => {
      if (!hasCommand('nginx')) throw new Error('nginx is not installed')
      const port = await freePort()
      const conf = join(tmp, 'nginx.conf')
      writeFileSync(conf, `
daemon off; master_process off; worker_processes 1; error_log ${tmp}/nginx-error.log warn; pid ${tmp}/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${tmp}/nginx-body; proxy_temp_path ${tmp}/nginx-proxy;
  client_max_body_size 16m; proxy_request_buffering off; proxy_buffering on;
  upstream stable { server 127.0.0.1:${portA}; keepalive 128; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://stable; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
}`)
      const child = track(spawn('nginx', ['-c', conf], { stdio: 'ignore' }))
      await waitPort(port)
      return { url: `http://127.0.0.1:${port}/`, pids: [child.pid] }
    }
  }

  const targets = []
  const skipped = []
  for (const name of TARGET_NAMES) {
    if (names === undefined ? OPT_IN.includes(name) : !names.includes(name)) continue
    try {
      const t = await starters[name]()
      targets.push({ name, ...t })
      log(`target ${name}: ${t.url}`)
    } catch (err) {
      skipped.push({ name, reason: err.message })
      log(`target ${name}: skipped (${err.message})`)
    }
  }
  return { targets, skipped, upstream: { pid: upstreamPid, stable, canary }, cleanup }
}
