// Helpers of bench/tls.js (HTTPS and HTTP/2 against nginx): a throw-away
// certificate, canaryd and nginx as their own processes, wrk and h2load runs,
// and a summary of a --cpu-prof profile. Every process started here is
// remembered and killed by cleanupTls() (also on exit and on SIGINT/SIGTERM);
// every load-generator run has a hard time limit.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect as h2connect } from 'node:http2'
import { request as httpsRequest } from 'node:https'
import { request as httpRequest } from 'node:http'
import { connect as tlsConnect } from 'node:tls'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { waitPort, withDescendants } from './targets.js'

const here = join(dirname(fileURLToPath(import.meta.url)), '..')
const root = join(here, '..')

const children = new Set()
const dirs = []
let hooked = false

/** Kills every process this module started (with their children) and removes its temp directories. Synchronous. */
export function cleanupTls () {
  const pids = []
  for (const c of children) if (c.exitCode === null && c.signalCode === null) pids.push(...withDescendants(c.pid))
  for (const pid of pids.reverse()) { try { process.kill(pid, 'SIGKILL') } catch {} }
  children.clear()
  for (const d of dirs.splice(0)) { try { rmSync(d, { recursive: true, force: true }) } catch {} }
}

function track (child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  if (!hooked) {
    hooked = true
    process.once('exit', cleanupTls)
  }
  return child
}

/** A temp directory removed by cleanupTls(). */
export function tempDir (prefix = 'canaryd-tls-bench-') {
  const d = mkdtempSync(join(tmpdir(), prefix))
  dirs.push(d)
  return d
}

/**
 * An EC P-256 self-signed certificate for localhost and 127.0.0.1, made by
 * the openssl binary in `dir`. Returns the file paths and the PEM (the CA
 * the harness's own checks trust: nothing turns verification off).
 */
export function makeCertificate (dir) {
  const certFile = join(dir, 'cert.pem')
  const keyFile = join(dir, 'key.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: ['ignore', 'ignore', 'pipe'] })
  return { certFile, keyFile, pem: readFileSync(certFile) }
}

/** nginx's version as [major, minor, patch] (`nginx -v` prints it on stderr), or null when nginx is missing. */
export function nginxVersion () {
  try {
    const out = execFileSync('sh', ['-c', 'nginx -v 2>&1'], { encoding: 'utf8' })
    const m = /nginx\/(\d+)\.(\d+)\.(\d+)/.exec(out)
    return m ? m.slice(1).map(Number) : null
  } catch {
    return null
  }
}

/**
 * Starts nginx (`nginx -c conf -p dir -g 'daemon off;'`, one worker) with
 * an https server (http/1.1 and h2 by ALPN) on `tlsPort` and a plain one on
 * `httpPort`, both proxying to 127.0.0.1:`upstreamPort` over a keep-alive
 * upstream block. `listen … ssl http2` before nginx 1.25.1, `http2 on;` from it.
 * Client keep-alive is not capped (keepalive_requests), as canaryd's is not:
 * nginx's default of 1,000 would add a TLS handshake every 1,000 requests.
 */
export async function startNginx ({ dir, tlsPort, httpPort, upstreamPort, certFile, keyFile }) {
  const v = nginxVersion()
  if (v === null) throw new Error('nginx is not installed')
  const newH2 = v[0] > 1 || (v[0] === 1 && (v[1] > 25 || (v[1] === 25 && v[2] >= 1)))
  const conf = join(dir, 'nginx.conf')
  writeFileSync(conf, `
worker_processes 1;
error_log ${dir}/nginx-error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/nginx-body; proxy_temp_path ${dir}/nginx-proxy;
  fastcgi_temp_path ${dir}/nginx-fastcgi; uwsgi_temp_path ${dir}/nginx-uwsgi; scgi_temp_path ${dir}/nginx-scgi;
  keepalive_requests 100000000; keepalive_timeout 65s;
  upstream stable { server 127.0.0.1:${upstreamPort}; keepalive 128; keepalive_requests 100000000; }
  ssl_certificate ${certFile}; ssl_certificate_key ${keyFile};
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:1m;
  server {
    listen 127.0.0.1:${tlsPort} ssl${newH2 ? '' : ' http2'};
    ${newH2 ? 'http2 on;' : ''}
    location / {
      proxy_pass http://stable; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }
  }
  server {
    listen 127.0.0.1:${httpPort};
    location / {
      proxy_pass http://stable; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
}`)
  const child = track(spawn('nginx', ['-c', conf, '-p', dir, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', openSync(join(dir, 'nginx-stderr.log'), 'a')] }))
  await Promise.race([
    Promise.all([waitPort(tlsPort), waitPort(httpPort)]),
    new Promise((resolve, reject) => child.once('exit', (code) => reject(new Error(`nginx exited ${code}: ${tail(join(dir, 'nginx-stderr.log'))} ${tail(join(dir, 'nginx-error.log'))}`))))
  ])
  return { pid: child.pid, child, version: v.join('.'), http2Directive: newH2 ? 'http2 on;' : 'listen … ssl http2' }
}

function tail (file) {
  try { return readFileSync(file, 'utf8').trim().split('\n').slice(-3).join(' | ') } catch { return '' }
}

/**
 * Starts `node [nodeArgs] dist/cli.js serve --config <file>` with one route
 * of two versions (stable/canary, 90/10, sticky on x-user-id) on the
 * upstream's two ports; TLS on when `tls` is given. Log level warn, metrics
 * on (the default), admin on a free port. Resolves once the port accepts.
 */
export async function startCanaryd ({ dir, name, port, stable, canary, tls, nodeArgs = [] }) {
  const file = join(dir, `${name}.json`)
  writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port, ...(tls ? { tls: { certFile: tls.certFile, keyFile: tls.keyFile } } : {}) },
    admin: { host: '127.0.0.1', port: 0 },
    state: { file: join(dir, `${name}-state.json`) },
    log: { level: 'warn' },
    timeouts: { drainTimeoutMs: 2000 },
    routes: [{
      name: 'web',
      sticky: { keys: ['header:x-user-id', 'cookie:session'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
      override: { header: 'x-canary', cookie: 'canary' },
      versions: [{ name: 'stable', upstream: stable, weight: 90 }, { name: 'canary', upstream: canary, weight: 10 }]
    }]
  }))
  const out = join(dir, `${name}.log`)
  const fd = openSync(out, 'a')
  const child = track(spawn(process.execPath, [...nodeArgs, join(root, 'dist/cli.js'), 'serve', '--config', file], {
    cwd: dir,
    stdio: ['ignore', fd, fd],
    // LOG_LEVEL wins over the config's level; nothing here touches TLS verification
    env: { ...process.env, LOG_LEVEL: 'warn' }
  }))
  await Promise.race([
    waitPort(port),
    new Promise((resolve, reject) => child.once('exit', (code) => reject(new Error(`canaryd ${name} exited ${code}: ${tail(out)}`))))
  ])
  return { pid: child.pid, child, log: out }
}

/** Sends SIGTERM and waits (at most `ms`) for the process to exit; SIGKILL after. */
export async function stopGracefully (child, ms = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const t = setTimeout(() => { try { child.kill('SIGKILL') } catch {} }, ms)
  await exited
  clearTimeout(t)
}

/** Runs a command with a hard time limit; resolves with stdout (rejects on a non-zero exit or the limit). */
function runBounded (cmd, args, limitMs) {
  return new Promise((resolve, reject) => {
    const child = track(execFile(cmd, args, { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      clearTimeout(timer)
      if (err) reject(new Error(`${cmd} ${args.at(-1)}: ${String(stderr || err.message).trim().split('\n').slice(-2).join(' ')}`))
      else resolve(stdout)
    }))
    const timer = setTimeout(() => { try { child.kill('SIGKILL') } catch {} }, limitMs)
  })
}

const toMs = (v, u) => Number(v) * (u === 'us' ? 0.001 : u === 's' ? 1000 : u === 'm' ? 60000 : 1)

/**
 * One wrk run (-t1, keep-alive) with `script`; https URLs work the same
 * (wrk does not verify certificates: it is the load generator, not canaryd).
 * Returns req/s, total, mean/p50/p99 ms, non-2xx/3xx and socket errors apart.
 */
export async function wrk (url, { connections, duration, script }) {
  const out = await runBounded('wrk', ['-t1', `-c${connections}`, `-d${duration}s`, '--latency', ...(script ? ['-s', script] : []), url], (duration + 20) * 1000)
  const lat = /Latency\s+([\d.]+)(us|ms|s)/.exec(out)
  const p50 = /50%\s+([\d.]+)(us|ms|s)/.exec(out)
  const p99 = /99%\s+([\d.]+)(us|ms|s)/.exec(out)
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0),
    total: Number(/(\d+) requests in /.exec(out)?.[1] ?? 0),
    mean: lat ? toMs(lat[1], lat[2]) : null,
    p50: p50 ? toMs(p50[1], p50[2]) : null,
    p99: p99 ? toMs(p99[1], p99[2]) : null,
    non2xx: Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0),
    socketErrors: socket ? socket.slice(1).reduce((a, n) => a + Number(n), 0) : 0
  }
}

/**
 * One h2load run of `requests` requests (-n), `clients` connections ×
 * `streams` concurrent streams, over TLS with ALPN h2. Count-based on
 * purpose: a timed run (-D) ends by closing its connections with up to
 * clients × streams streams still open. h2load reports no percentiles:
 * mean (and max) time per request. Non-2xx and failed/errored/timed-out
 * requests are returned apart; `h2` is false when ALPN did not pick h2.
 * `limitS` bounds the run's wall time.
 */
export async function h2load (url, { clients, streams, requests, headers = [], limitS = 60 }) {
  const out = await runBounded('h2load', ['-c', String(clients), '-m', String(streams), '-t', '1', '-n', String(requests),
    ...headers.flatMap((h) => ['-H', h]), url], limitS * 1000)
  const req = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(out)
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out)
  const t = /time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)/.exec(out)
  const done = req ? Number(req[3]) : 0
  return {
    rps: Number(/finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(out)?.[1] ?? 0),
    total: done,
    mean: t ? toMs(t[5], t[6]) : null,
    max: t ? toMs(t[3], t[4]) : null,
    p50: null,
    p99: null,
    non2xx: codes ? Number(codes[2]) + Number(codes[3]) + Number(codes[4]) : 0,
    socketErrors: req ? Number(req[5]) + Number(req[6]) + Number(req[7]) : 0,
    h2: /Application protocol: h2/.test(out),
    raw: req ? undefined : out.slice(-500)
  }
}

/**
 * The TLS session a client gets (protocol, cipher, ALPN pick), verifying
 * the certificate against `ca`: the same settings check for every target.
 */
export function tlsSession (port, ca, alpn) {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca, ALPNProtocols: alpn, servername: 'localhost' }, () => {
      const r = { protocol: s.getProtocol(), cipher: s.getCipher()?.name, alpn: s.alpnProtocol || null, group: s.getEphemeralKeyInfo?.()?.name ?? null }
      s.destroy()
      resolve(r)
    })
    s.setTimeout(5000, () => { s.destroy(); reject(new Error(`TLS to ${port}: timeout`)) })
    s.on('error', reject)
  })
}

/** One GET over https/1.1 (certificate verified against `ca`) or plain http: status and body. */
export function getOnce (url, ca) {
  const u = new URL(url)
  const req = u.protocol === 'https:' ? httpsRequest : httpRequest
  return new Promise((resolve, reject) => {
    const r = req(u, { ca, servername: 'localhost', headers: { 'x-user-id': 'check-1' }, agent: false, timeout: 5000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode, body, httpVersion: res.httpVersion }))
    })
    r.on('timeout', () => r.destroy(new Error(`GET ${url}: timeout`)))
    r.on('error', reject)
    r.end()
  })
}

/** One GET over h2 (certificate verified against `ca`): status, body and whether ALPN picked h2. */
export function getOnceH2 (url, ca) {
  return new Promise((resolve, reject) => {
    const session = h2connect(url, { ca, servername: 'localhost' })
    const timer = setTimeout(() => { session.destroy(new Error(`h2 GET ${url}: timeout`)) }, 5000)
    session.on('error', (err) => { clearTimeout(timer); reject(err) })
    const req = session.request({ ':path': '/', 'x-user-id': 'check-1' })
    let status = 0
    let body = ''
    req.setEncoding('utf8')
    req.on('response', (h) => { status = h[':status'] })
    req.on('data', (c) => { body += c })
    req.on('end', () => {
      clearTimeout(timer)
      const alpn = session.alpnProtocol
      session.close()
      resolve({ status, body, alpn })
    })
    req.on('error', (err) => { clearTimeout(timer); session.destroy(); reject(err) })
    req.end()
  })
}

/**
 * Self time per function of a .cpuprofile (V8's format: nodes, samples,
 * timeDeltas), merged by function name + script + line, largest first, with
 * the caller that accounts for most of it. `window` ([from, to] in µs of
 * CLOCK_MONOTONIC, as process.hrtime.bigint() / 1000n in any process of the
 * machine, and V8's sample clock) keeps only the samples of the measured run:
 * no start-up, no warm-up. Shares are of the busy (non-idle) time.
 */
export function summarizeProfile (file, top = 15, window = undefined) {
  const p = JSON.parse(readFileSync(file, 'utf8'))
  const byId = new Map(p.nodes.map((n) => [n.id, n]))
  const parent = new Map()
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const self = new Map()
  let total = 0
  let t = p.startTime
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i]
    const dt = p.timeDeltas[i + 1] ?? 0
    if (window !== undefined && (t < window[0] || t > window[1])) continue
    total += dt
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt)
  }
  const keyOf = (cf) => {
    const script = cf.url.replace(/^file:\/\//, '').replace(root + '/', '')
    return `${cf.functionName || '(anonymous)'}${script ? ` ${script}:${cf.lineNumber + 1}` : ''}`
  }
  const fns = new Map()
  const callers = new Map()
  const cats = new Map()
  for (const [id, us] of self) {
    const cf = byId.get(id).callFrame
    const key = keyOf(cf)
    fns.set(key, (fns.get(key) ?? 0) + us)
    const pid = parent.get(id)
    const ck = `${key}\u0000${pid === undefined ? '' : keyOf(byId.get(pid).callFrame)}`
    callers.set(ck, (callers.get(ck) ?? 0) + us)
    const cat = category(cf)
    cats.set(cat, (cats.get(cat) ?? 0) + us)
  }
  const topCaller = (key) => {
    let best = ''
    let bestUs = -1
    for (const [ck, us] of callers) {
      const [k, c] = ck.split('\u0000')
      if (k === key && us > bestUs) { best = c; bestUs = us }
    }
    return best
  }
  const idle = cats.get('(idle)') ?? 0
  const busy = total - idle
  const rows = (m) => [...m].sort((a, b) => b[1] - a[1])
  return {
    totalMs: Math.round(total / 1000),
    busyMs: Math.round(busy / 1000),
    functions: rows(fns).filter(([k]) => k !== '(idle)').slice(0, top).map(([name, us]) => ({ name, caller: topCaller(name), selfMs: Math.round(us / 1000), busyPercent: Math.round(1000 * us / busy) / 10 })),
    categories: rows(cats).filter(([k]) => k !== '(idle)').map(([name, us]) => ({ name, selfMs: Math.round(us / 1000), busyPercent: Math.round(1000 * us / busy) / 10 }))
  }
}

/** A coarse owner for a profile frame: which layer spent the time. */
function category (cf) {
  const u = cf.url
  const f = cf.functionName
  if (f === '(idle)' || f === '(program)' || f === '(garbage collector)') return f
  if (u === '') return `native: ${f || '(anonymous)'}`
  if (u.startsWith('wasm://')) return 'undici (llhttp, wasm)'
  if (/internal\/modules\//.test(u)) return 'module loading'
  if (u.includes('/dist/')) return 'canaryd (dist/)'
  if (u.includes('node_modules/undici') || u.includes('internal/deps/undici')) return 'undici'
  if (u.includes('node_modules/')) return `dependency: ${u.split('node_modules/')[1].split('/')[0]}`
  if (/internal\/http2\//.test(u) || /^node:http2$/.test(u)) return 'node: http2'
  if (/_tls_|internal\/tls|node:tls/.test(u)) return 'node: tls'
  if (/_http_|node:http$|internal\/http/.test(u)) return 'node: http/1.1'
  if (/internal\/streams|node:stream/.test(u)) return 'node: streams'
  if (/node:net|internal\/net|stream_base_commons/.test(u)) return 'node: net'
  if (/internal\/timers|node:timers/.test(u)) return 'node: timers'
  if (/node:buffer|internal\/buffer/.test(u)) return 'node: buffer'
  if (/internal\/process\/task_queues|internal\/async_hooks|node:events|internal\/events/.test(u)) return 'node: events/ticks'
  return 'node: other'
}
