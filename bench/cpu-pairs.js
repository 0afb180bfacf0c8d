// The proxy's own CPU time per request, canaryd against another build, in
// alternating pairs: the steadiest before/after figure on a shared 2-core
// machine, where req/s medians of bench/ab.js swing by ±30% between runs.
//
//   CANARYD_BASE=/tmp/canaryd-base node bench/cpu-pairs.js [--pairs 8] [--requests 20000]
//   node bench/cpu-pairs.js --against canaryd-redis   # the same build, its state in Redis
//
// Both targets serve the same config (bench/lib/targets.js); each pair sends
// `requests` GETs (autocannon -a, 20 connections, 1 user) to one then the
// other (the order flips every pair), reading the target's utime+stime from
// /proc before and after. The load generator's CPU is not counted, so its
// share of the machine matters far less than for req/s. Prints the medians,
// every run, and their ratio. Only 127.0.0.1 is targeted.
import { execFileSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { cleanup, cpuSeconds, median, startTargets, targetPids } from './lib/targets.js'

const here = dirname(fileURLToPath(import.meta.url))
const { values } = parseArgs({ options: { pairs: { type: 'string', default: '8' }, requests: { type: 'string', default: '20000' }, against: { type: 'string', default: 'canaryd-base' } } })
const pairs = Number(values.pairs)
const requests = Number(values.requests)
const autocannon = join(here, '../node_modules/.bin/autocannon')
const other = values.against
const names = ['canaryd', other]
const { targets, skipped } = await startTargets({ names })
if (skipped.length !== 0) {
  process.stderr.write(`bench/cpu-pairs.js: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}\n`)
  cleanup()
  process.exit(1)
}
const by = Object.fromEntries(targets.map((t) => [t.name, t]))
const runs = { canaryd: [], [other]: [] }
try {
  // warm-up: the JIT and the upstream pools
  for (const t of targets) execFileSync(autocannon, ['-a', '5000', '-c', '20', t.url], { stdio: 'ignore' })
  for (let i = 0; i < pairs; i++) {
    for (const n of i % 2 === 0 ? names : [...names].reverse()) {
      const pids = targetPids(by[n])
      const c0 = cpuSeconds(pids)
      execFileSync(autocannon, ['-a', String(requests), '-c', '20', by[n].url], { stdio: 'ignore' })
      runs[n].push(Math.round((cpuSeconds(pids) - c0) * 1e7 / requests) / 10)
    }
  }
} finally {
  cleanup()
}
const m = Object.fromEntries(names.map((n) => [n, median(runs[n])]))
process.stdout.write(`${JSON.stringify({ pairs, requests, cpuUsPerRequest: m, runs, against: other, ratio: Math.round(m.canaryd / m[other] * 100) / 100 })}\n`)
process.exit(0)
