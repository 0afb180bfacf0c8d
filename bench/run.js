// canaryd benchmark: one run, same upstream, same load, alternating targets.
//
//   npm run bench                       # full run (≈ 6–8 minutes on 2 cores)
//   node bench/run.js --quick           # 1 run of 3 s per target, for a smoke check
//   node bench/run.js --only canaryd,direct --runs 5 --duration 8
//
// Targets: direct to upstream; canaryd (sticky hashing + metrics + override on);
// canaryd with metrics off; canaryd --workers 2 (when supported); a bare undici
// forwarder; a plain http-proxy forwarder; nginx (1 worker) when installed.
// Load: autocannon (50 connections, 1,000 rotating x-user-id values), wrk as a
// second generator when installed. Figures: req/s, p50/p99, proxy CPU µs per
// request (utime+stime from /proc/<pid>/stat), peak RSS (VmHWM), 1 MiB POST
// throughput, micro-benchmarks. Medians of the runs; every figure also as a
// ratio to the peers. Results go to bench/results/<date>-<commit>.json and the
// table into bench/README.md.
import { execFileSync, fork, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    duration: { type: 'string', default: '5' },
    connections: { type: 'string', default: '50' },
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    'no-post': { type: 'boolean', default: false },
    'no-wrk': { type: 'boolean', default: false },
    'no-write': { type: 'boolean', default: false }
  }
})
const RUNS = args.quick ? 1 : Number(args.runs)
const DURATION = args.quick ? 3 : Number(args.duration)
const CONNECTIONS = Number(args.connections)
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100
const tmp = mkdtempSync(join(tmpdir(), 'canaryd-bench-'))
const children = []
const log = (s) => process.stderr.write(`${s}\n`)

async function freePort () {
  const s = createServer()
  await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve))
  const { port } = s.address()
  await new Promise((resolve) => s.close(resolve))
  return port
}

/** Forks a Node script that sends {ready} when listening; returns its pid. */
async function forkReady (script, argv, env = {}) {
  const child = fork(script, argv, { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], env: { ...process.env, LOG_LEVEL: 'warn', ...env } })
  children.push(child)
  await new Promise((resolve, reject) => {
    child.once('message', resolve)
    child.once('exit', (code) => reject(new Error(`${script} exited ${code}`)))
  })
  return child.pid
}

/** Waits until something accepts TCP on the port. */
async function waitPort (port) {
  const { connect } = await import('node:net')
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

function cpuSeconds (pids) {
  let ticks = 0
  for (const pid of pids) {
    try {
      const s = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
      ticks += Number(f[11]) + Number(f[12])
    } catch {}
  }
  return ticks / CLK_TCK
}

function peakRssMb (pids) {
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
function withDescendants (pid) {
  const out = [pid]
  try {
    for (const line of execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)]).toString().split('\n')) {
      const p = Number(line.trim())
      if (p > 0) out.push(...withDescendants(p))
    }
  } catch {}
  return out
}

const USERS = Array.from({ length: 1000 }, (_, i) => `user-${i}`)

async function autocannonRun (url, { method = 'GET', body, connections = CONNECTIONS, duration = DURATION } = {}) {
  let n = 0
  const result = await autocannon({
    url,
    connections,
    duration,
    method,
    body,
    headers: body === undefined ? {} : { 'content-type': 'application/octet-stream' },
    requests: [{ setupRequest: (req) => { req.headers = { ...req.headers, 'x-user-id': USERS[n++ % 1000] }; return req } }]
  })
  const non2xx = result.non2xx + result.errors + result.timeouts
  return { rps: result.requests.average, total: result.requests.total, p50: result.latency.p50, p99: result.latency.p99, bytesPerSec: result.throughput.average, errors: non2xx }
}

function wrkRun (url) {
  try {
    const out = execFileSync('wrk', ['-t1', `-c${CONNECTIONS}`, `-d${DURATION}s`, '--latency', '-s', join(here, 'wrk-users.lua'), url], { encoding: 'utf8' })
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0)
    const unit = (v, u) => Number(v) * (u === 'us' ? 0.001 : u === 's' ? 1000 : 1)
    const p50 = /50%\s+([\d.]+)(us|ms|s)/.exec(out)
    const p99 = /99%\s+([\d.]+)(us|ms|s)/.exec(out)
    return { rps, p50: p50 ? unit(p50[1], p50[2]) : null, p99: p99 ? unit(p99[1], p99[2]) : null }
  } catch (err) {
    return { rps: 0, error: String(err.message).split('\n')[0] }
  }
}

const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b)
  if (s.length === 0) return null
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

async function main () {
  if (!existsSync(join(root, 'dist/app.js'))) throw new Error('run `npm run build` first (npm run bench does)')
  const [portA, portB] = [await freePort(), await freePort()]
  const upstreamPid = await forkReady(join(here, 'upstream.js'), [String(portA), String(portB)])
  const stable = `http://127.0.0.1:${portA}`
  const canary = `http://127.0.0.1:${portB}`

  const config = (extra = {}) => {
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
        versions: [{ name: 'stable', upstream: stable, weight: 90 }, { name: 'canary', upstream: canary, weight: 10 }]
      }],
      ...extra
    }))
    return file
  }

  const targets = []
  const add = async (name, start) => {
    if (args.only !== undefined && !args.only.split(',').includes(name)) return
    try {
      const t = await start()
      targets.push({ name, ...t, runs: [], post: [], wrk: [] })
      log(`target ${name}: ${t.url}`)
    } catch (err) {
      log(`target ${name}: skipped (${err.message})`)
    }
  }
  await add('direct', async () => ({ url: `${stable}/`, pids: [] }))
  await add('canaryd', async () => {
    const port = await freePort()
    const file = config({ listen: { host: '127.0.0.1', port } })
    const pid = await forkReady(join(here, 'peers/canaryd.js'), [file])
    return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
  })
  await add('canaryd-nometrics', async () => {
    const port = await freePort()
    const file = config({ listen: { host: '127.0.0.1', port } })
    const pid = await forkReady(join(here, 'peers/canaryd.js'), [file, 'nometrics'])
    return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
  })
  await add('canaryd-workers2', async () => {
    const help = execFileSync(process.execPath, [join(root, 'dist/cli.js'), '--help']).toString()
    if (!help.includes('--workers')) throw new Error('this build has no --workers')
    const port = await freePort()
    const file = config({ listen: { host: '127.0.0.1', port } })
    const child = spawn(process.execPath, [join(root, 'dist/cli.js'), 'serve', '--config', file, '--workers', '2'], { stdio: 'ignore', env: { ...process.env, LOG_LEVEL: 'warn' } })
    children.push(child)
    await waitPort(port)
    await new Promise((resolve) => setTimeout(resolve, 500))
    return { url: `http://127.0.0.1:${port}/`, pids: withDescendants(child.pid), descendantsOf: child.pid }
  })
  await add('undici-bare', async () => {
    const port = await freePort()
    const pid = await forkReady(join(here, 'peers/undici-bare.js'), [String(port), stable])
    return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
  })
  await add('http-proxy', async () => {
    const port = await freePort()
    const pid = await forkReady(join(here, 'peers/http-proxy.js'), [String(port), stable])
    return { url: `http://127.0.0.1:${port}/`, pids: [pid] }
  })
  await add('nginx', async () => {
    execFileSync('sh', ['-c', 'command -v nginx'])
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
    const child = spawn('nginx', ['-c', conf], { stdio: 'ignore' })
    children.push(child)
    await waitPort(port)
    return { url: `http://127.0.0.1:${port}/`, pids: [child.pid] }
  })

  // warm-up: JIT, keep-alive pools
  for (const t of targets) await autocannonRun(t.url, { duration: 1 })

  const useWrk = !args['no-wrk'] && (() => { try { execFileSync('sh', ['-c', 'command -v wrk']); return true } catch { return false } })()
  const MiB = Buffer.alloc(1024 * 1024, 120)
  for (let r = 0; r < RUNS; r++) {
    for (const t of targets) {
      const pids = t.descendantsOf !== undefined ? withDescendants(t.descendantsOf) : t.pids
      const c0 = cpuSeconds(pids)
      const res = await autocannonRun(t.url)
      const c1 = cpuSeconds(pids)
      res.cpuUsPerReq = pids.length === 0 ? null : Math.round(1e6 * (c1 - c0) / Math.max(1, res.total) * 10) / 10
      t.runs.push(res)
      log(`run ${r + 1}/${RUNS} ${t.name}: ${Math.round(res.rps)} req/s p50 ${res.p50} ms p99 ${res.p99} ms cpu ${res.cpuUsPerReq} µs/req errors ${res.errors}`)
      if (useWrk) {
        const w = wrkRun(t.url)
        t.wrk.push(w)
        log(`       wrk ${t.name}: ${Math.round(w.rps)} req/s p99 ${w.p99} ms`)
      }
      if (!args['no-post']) {
        const p = await autocannonRun(t.url, { method: 'POST', body: MiB, connections: 8 })
        p.mibPerSec = Math.round(p.rps * 10) / 10 // one MiB per request
        t.post.push(p)
        log(`       1 MiB POST ${t.name}: ${p.mibPerSec} MiB/s errors ${p.errors}`)
      }
    }
  }
  for (const t of targets) t.peakRssMb = t.pids.length === 0 && t.descendantsOf === undefined ? null : peakRssMb(t.descendantsOf !== undefined ? withDescendants(t.descendantsOf) : t.pids)

  const micro = JSON.parse(execFileSync(process.execPath, [join(here, 'micro.js')]).toString())
  const summary = targets.map((t) => ({
    name: t.name,
    rps: Math.round(median(t.runs.map((x) => x.rps))),
    p50: median(t.runs.map((x) => x.p50)),
    p99: median(t.runs.map((x) => x.p99)),
    cpuUsPerReq: median(t.runs.map((x) => x.cpuUsPerReq)),
    peakRssMb: t.peakRssMb,
    errors: t.runs.reduce((a, x) => a + x.errors, 0),
    wrkRps: t.wrk.length === 0 ? null : Math.round(median(t.wrk.map((x) => x.rps))),
    wrkP99: t.wrk.length === 0 ? null : median(t.wrk.map((x) => x.p99)),
    postMibPerSec: t.post.length === 0 ? null : median(t.post.map((x) => x.mibPerSec))
  }))
  const by = Object.fromEntries(summary.map((s) => [s.name, s]))
  const ratio = (a, b, k) => (by[a]?.[k] && by[b]?.[k]) ? Math.round(100 * by[a][k] / by[b][k]) / 100 : null
  const ratios = {
    'canaryd / http-proxy req/s (target ≥ 1.5)': ratio('canaryd', 'http-proxy', 'rps'),
    'canaryd / undici-bare req/s (target ≥ 0.95)': ratio('canaryd', 'undici-bare', 'rps'),
    'canaryd / nginx req/s': ratio('canaryd', 'nginx', 'rps'),
    'canaryd / direct req/s': ratio('canaryd', 'direct', 'rps'),
    'canaryd p99 / nginx p99 (target ≤ 1.5)': ratio('canaryd', 'nginx', 'p99'),
    'canaryd 1 MiB POST / nginx (target ≥ 1)': ratio('canaryd', 'nginx', 'postMibPerSec'),
    'canaryd metrics on / off req/s (target ≥ 0.95)': ratio('canaryd', 'canaryd-nometrics', 'rps'),
    'canaryd --workers 2 / single process req/s': ratio('canaryd-workers2', 'canaryd', 'rps'),
    'canaryd (wrk) / http-proxy (wrk)': ratio('canaryd', 'http-proxy', 'wrkRps'),
    'canaryd (wrk) / undici-bare (wrk)': ratio('canaryd', 'undici-bare', 'wrkRps'),
    'canaryd (wrk) / nginx (wrk)': ratio('canaryd', 'nginx', 'wrkRps')
  }
  let commit = 'unknown'
  try { commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim() } catch {}
  const date = new Date().toISOString().slice(0, 10)
  const result = { date, commit, node: process.version, cpus: (await import('node:os')).cpus().length, runs: RUNS, durationS: DURATION, connections: CONNECTIONS, summary, ratios, micro, raw: targets.map(({ name, runs, post, wrk }) => ({ name, runs, post, wrk })) }

  const fmt = (v, d = 0) => v === null || v === undefined ? '–' : typeof v === 'number' ? v.toFixed(d) : String(v)
  const lines = [
    `Measured ${date} at commit \`${commit}\`, Node ${process.version}, ${result.cpus} cores shared by load generator, upstream and proxy; autocannon ${CONNECTIONS} connections, ${DURATION} s per run, median of ${RUNS} runs, targets alternating; 1,000 rotating \`x-user-id\` values.`,
    '',
    '| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | peak RSS MB | wrk req/s | wrk p99 ms | 1 MiB POST MiB/s | errors |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...summary.map((s) => `| ${s.name} | ${fmt(s.rps)} | ${fmt(s.p50)} | ${fmt(s.p99)} | ${fmt(s.cpuUsPerReq, 1)} | ${fmt(s.peakRssMb)} | ${fmt(s.wrkRps)} | ${fmt(s.wrkP99, 2)} | ${fmt(s.postMibPerSec, 1)} | ${s.errors} |`),
    '',
    '| ratio | value |',
    '|---|---:|',
    ...Object.entries(ratios).filter(([, v]) => v !== null).map(([k, v]) => `| ${k} | ${v} |`),
    '',
    '| micro-benchmark | ns/op |',
    '|---|---:|',
    ...Object.entries(micro).map(([k, v]) => `| ${k} | ${v} |`)
  ]
  const table = lines.join('\n')
  process.stdout.write(`${table}\n`)
  if (!args['no-write'] && !args.quick) {
    writeFileSync(join(here, 'results', `${date}-${commit}.json`), JSON.stringify(result, null, 2))
    const readmePath = join(here, 'README.md')
    const readme = existsSync(readmePath) ? readFileSync(readmePath, 'utf8') : '# Benchmarks\n'
    const block = `<!-- bench:latest -->\n${table}\n<!-- /bench:latest -->`
    const next = readme.includes('<!-- bench:latest -->')
      ? readme.replace(/<!-- bench:latest -->[\s\S]*<!-- \/bench:latest -->/, block)
      : `${readme.trimEnd()}\n\n## Latest results\n\n${block}\n`
    writeFileSync(readmePath, next)
    log(`wrote bench/results/${date}-${commit}.json and bench/README.md`)
  }
}

try {
  await main()
} finally {
  for (const c of children) { try { c.kill('SIGKILL') } catch {} }
}
process.exit(0)
