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
// request under autocannon and under wrk (utime+stime from /proc/<pid>/stat
// over the run ÷ requests), peak RSS (VmHWM), 1 MiB POST
// throughput, micro-benchmarks. Medians of the runs; every figure also as a
// ratio to the peers. Results go to bench/results/<date>-<commit>.json and the
// table into bench/README.md.
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { cleanup, cpuSeconds, cpuUsPerReq, hasCommand, median, peakRssMb, startTargets, targetPids, wrkRun } from './lib/targets.js'

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
const log = (s) => process.stderr.write(`${s}\n`)

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

/** One wrk run with the target's CPU over it; a failed run is recorded, not fatal. */
async function wrkWithCpu (t) {
  const pids = targetPids(t)
  const c0 = cpuSeconds(pids)
  try {
    const w = await wrkRun(t.url, { connections: CONNECTIONS, duration: DURATION })
    const c1 = cpuSeconds(pids)
    return { rps: w.rps, p50: w.p50, p99: w.p99, total: w.total, errors: w.errors, cpuUsPerReq: cpuUsPerReq(pids, c0, c1, w.total) }
  } catch (err) {
    return { rps: 0, error: String(err.message).split('\n')[0], cpuUsPerReq: null }
  }
}

async function main () {
  if (!existsSync(join(root, 'dist/app.js'))) throw new Error('run `npm run build` first (npm run bench does)')
  const started = await startTargets({ names: args.only?.split(','), log })
  const targets = started.targets.map((t) => ({ ...t, runs: [], post: [], wrk: [] }))

  // warm-up: JIT, keep-alive pools
  for (const t of targets) await autocannonRun(t.url, { duration: 1 })

  const useWrk = !args['no-wrk'] && hasCommand('wrk')
  const MiB = Buffer.alloc(1024 * 1024, 120)
  for (let r = 0; r < RUNS; r++) {
    for (const t of targets) {
      const pids = targetPids(t)
      const c0 = cpuSeconds(pids)
      const res = await autocannonRun(t.url)
      const c1 = cpuSeconds(pids)
      res.cpuUsPerReq = pids.length === 0 ? null : Math.round(1e6 * (c1 - c0) / Math.max(1, res.total) * 10) / 10
      t.runs.push(res)
      log(`run ${r + 1}/${RUNS} ${t.name}: ${Math.round(res.rps)} req/s p50 ${res.p50} ms p99 ${res.p99} ms cpu ${res.cpuUsPerReq} µs/req errors ${res.errors}`)
      if (useWrk) {
        const w = await wrkWithCpu(t)
        t.wrk.push(w)
        log(`       wrk ${t.name}: ${Math.round(w.rps)} req/s p99 ${w.p99} ms cpu ${w.cpuUsPerReq} µs/req${w.error ? ` (${w.error})` : ''}`)
      }
      if (!args['no-post']) {
        const p = await autocannonRun(t.url, { method: 'POST', body: MiB, connections: 8 })
        p.mibPerSec = Math.round(p.rps * 10) / 10 // one MiB per request
        t.post.push(p)
        log(`       1 MiB POST ${t.name}: ${p.mibPerSec} MiB/s errors ${p.errors}`)
      }
    }
  }
  for (const t of targets) t.peakRssMb = t.pids.length === 0 && t.descendantsOf === undefined ? null : peakRssMb(targetPids(t))

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
    wrkCpuUsPerReq: t.wrk.length === 0 ? null : median(t.wrk.map((x) => x.cpuUsPerReq)),
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
    'canaryd (wrk) / nginx (wrk)': ratio('canaryd', 'nginx', 'wrkRps'),
    'canaryd (wrk) CPU µs/req / undici-bare (wrk)': ratio('canaryd', 'undici-bare', 'wrkCpuUsPerReq')
  }
  let commit = 'unknown'
  try { commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim() } catch {}
  const date = new Date().toISOString().slice(0, 10)
  const result = { date, commit, node: process.version, cpus: (await import('node:os')).cpus().length, runs: RUNS, durationS: DURATION, connections: CONNECTIONS, summary, ratios, micro, raw: targets.map(({ name, runs, post, wrk }) => ({ name, runs, post, wrk })) }

  const fmt = (v, d = 0) => v === null || v === undefined ? '–' : typeof v === 'number' ? v.toFixed(d) : String(v)
  const lines = [
    `Measured ${date} at commit \`${commit}\`, Node ${process.version}, ${result.cpus} cores shared by load generator, upstream and proxy; autocannon ${CONNECTIONS} connections, ${DURATION} s per run, median of ${RUNS} runs, targets alternating; 1,000 rotating \`x-user-id\` values.`,
    '',
    '| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | peak RSS MB | wrk req/s | wrk p99 ms | wrk CPU µs/req | 1 MiB POST MiB/s | errors |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...summary.map((s) => `| ${s.name} | ${fmt(s.rps)} | ${fmt(s.p50)} | ${fmt(s.p99)} | ${fmt(s.cpuUsPerReq, 1)} | ${fmt(s.peakRssMb)} | ${fmt(s.wrkRps)} | ${fmt(s.wrkP99, 2)} | ${fmt(s.wrkCpuUsPerReq, 1)} | ${fmt(s.postMibPerSec, 1)} | ${s.errors} |`),
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
  cleanup()
}
process.exit(0)
