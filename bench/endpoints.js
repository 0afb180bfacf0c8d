// How evenly a version's balancer spreads load over its endpoints.
//
//   node bench/endpoints.js                       # round-robin and least-request, 3 endpoints, 5 runs × 4 s
//   node bench/endpoints.js --runs 3 --duration 3 --balance round-robin
//
// One upstream process listens on three ports (bench/upstream.js, counting the
// requests each port answers); canaryd (dist/, the same App `canaryd serve`
// runs) serves one route whose 100% version lists the three as endpoints with
// the given `balance`. wrk drives 1,000 rotating users for each run; the
// answered counts per endpoint give each endpoint's share and its deviation
// from an equal third. Medians over the runs are printed (and the JSON on
// --json). Only 127.0.0.1 is targeted.
import { fork } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { cleanup, forkReady, freePort, hasCommand, median, wrkRun } from './lib/targets.js'

const here = dirname(fileURLToPath(import.meta.url))
const log = (s) => process.stderr.write(`${s}\n`)
const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    duration: { type: 'string', default: '4' },
    connections: { type: 'string', default: '50' },
    balance: { type: 'string', default: 'round-robin,least-request' },
    json: { type: 'boolean', default: false }
  }
})
if (!hasCommand('wrk')) {
  log('bench/endpoints.js: wrk is not installed (apt-get install -y wrk)')
  process.exit(1)
}
const runs = Number(values.runs)
const duration = Number(values.duration)
const ports = [await freePort(), await freePort(), await freePort(), await freePort()]
const upstream = fork(join(here, 'upstream.js'), ports.map(String), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
// one `ready` message per port
await new Promise((resolve) => {
  let left = ports.length
  const onReady = () => { if (--left === 0) { upstream.off('message', onReady); resolve() } }
  upstream.on('message', onReady)
})
const counts = async () => await new Promise((resolve) => {
  const onCounts = (m) => {
    if (m?.counts === undefined) return
    upstream.off('message', onCounts)
    resolve(m.counts)
  }
  upstream.on('message', onCounts)
  upstream.send('counts')
})
const endpoints = ports.slice(0, 3).map((p) => `http://127.0.0.1:${p}`)
const tmp = mkdtempSync(join(tmpdir(), 'canaryd-bench-endpoints-'))
const results = {}
try {
  for (const balance of values.balance.split(',')) {
    const port = await freePort()
    const file = join(tmp, `${balance}.json`)
    writeFileSync(file, JSON.stringify({
      listen: { host: '127.0.0.1', port },
      admin: { host: '127.0.0.1', port: 0 },
      state: { file: '' },
      log: { level: 'warn' },
      routes: [{
        name: 'web',
        sticky: { keys: ['header:x-user-id'] },
        versions: [
          { name: 'stable', upstream: endpoints, balance, weight: 100 },
          { name: 'canary', upstream: `http://127.0.0.1:${ports[3]}`, weight: 0 }
        ]
      }]
    }))
    const pid = await forkReady(join(here, 'peers/canaryd.js'), [file])
    const deviations = []
    const shares = [[], [], []]
    let errors = 0
    await wrkRun(`http://127.0.0.1:${port}/`, { connections: Number(values.connections), duration: 1 }) // warm-up
    for (let r = 0; r < runs; r++) {
      const before = await counts()
      const w = await wrkRun(`http://127.0.0.1:${port}/`, { connections: Number(values.connections), duration })
      const after = await counts()
      errors += w.errors
      const got = ports.slice(0, 3).map((p) => after[p] - before[p])
      const total = got.reduce((a, n) => a + n, 0)
      got.forEach((n, i) => shares[i].push(n / total))
      deviations.push(Math.max(...got.map((n) => Math.abs(n / (total / 3) - 1))))
      log(`${balance} run ${r + 1}/${runs}: ${got.join(' / ')} (${Math.round(w.rps)} req/s), largest deviation from equal ${(deviations.at(-1) * 100).toFixed(1)}%`)
    }
    process.kill(pid, 'SIGTERM')
    results[balance] = {
      shares: shares.map((s) => Math.round(median(s) * 1000) / 10),
      maxDeviationPct: Math.round(median(deviations) * 1000) / 10,
      worstRunDeviationPct: Math.round(Math.max(...deviations) * 1000) / 10,
      errors
    }
  }
} finally {
  upstream.kill()
  cleanup()
}
if (values.json) process.stdout.write(`${JSON.stringify({ runs, duration, results }, null, 2)}\n`)
else for (const [b, r] of Object.entries(results)) log(`${b}: median shares ${r.shares.join('% / ')}%; median largest deviation ${r.maxDeviationPct}% (worst run ${r.worstRunDeviationPct}%); errors ${r.errors}`)
