// Focused A/B with wrk: a few targets, the same upstream, alternating run by run.
//
//   node bench/ab.js                                   # canaryd, undici-bare, http-proxy: 7 runs × 4 s (≈ 2 minutes)
//   node bench/ab.js --targets canaryd,canaryd-nometrics --runs 9
//   node bench/ab.js --post --targets canaryd,undici-bare,nginx
//   node bench/ab.js --json > ab.json                  # the JSON summary on stdout, progress on stderr
//
// Why this and not bench/run.js for small differences: autocannon runs inside
// the harness's Node process and takes most of a core, so on 2 shared cores the
// full run's figures swing by ±30%. wrk is a separate C process that needs far
// less CPU per request, so the proxy keeps more of the machine and the medians
// hold still between runs. Each target gets a 1 s warm-up; then each run drives
// every target once with wrk -t1 (bench/wrk-users.lua: 1,000 rotating x-user-id
// values), in an order that rotates by one each run so no target always goes
// first. CPU µs per request is the target's utime+stime from /proc over the wrk
// run ÷ wrk's request count. --post adds the same A/B for 1 MiB POST bodies
// (bench/wrk-post.lua, 8 connections). Medians per target and the ratios of the
// first target to each other one are printed; nothing is written to disk.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { cleanup, cpuSeconds, cpuUsPerReq, hasCommand, median, startTargets, TARGET_NAMES, targetPids, wrkRun } from './lib/targets.js'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const POST_CONNECTIONS = 8
const log = (s) => process.stderr.write(`${s}\n`)

/** Prints why and exits: these are the user's mistakes or missing tools, not bugs, so no stack. */
function fail (message, code = 1) {
  log(`bench/ab.js: ${message}`)
  process.exit(code)
}

function readArgs () {
  let values
  try {
    ({ values } = parseArgs({
      options: {
        targets: { type: 'string', default: 'canaryd,undici-bare,http-proxy' },
        runs: { type: 'string', default: '7' },
        duration: { type: 'string', default: '4' },
        connections: { type: 'string', default: '50' },
        post: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false }
      }
    }))
  } catch (err) {
    fail(err.message, 2)
  }
  const int = (name) => {
    const n = Number(values[name])
    if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer, got ${values[name]}`, 2)
    return n
  }
  const names = values.targets.split(',').map((s) => s.trim()).filter(Boolean)
  const unknown = names.filter((n) => !TARGET_NAMES.includes(n))
  if (unknown.length > 0) fail(`unknown target ${unknown.join(', ')}; known: ${TARGET_NAMES.join(', ')}`, 2)
  if (names.length < 2 || new Set(names).size !== names.length) fail('--targets needs at least two different targets', 2)
  return { names, runs: int('runs'), duration: int('duration'), connections: int('connections'), post: values.post, json: values.json }
}

/** One wrk run against t with its CPU read around it. */
async function measure (t, { connections, duration, script }) {
  const pids = targetPids(t)
  const c0 = cpuSeconds(pids)
  const w = await wrkRun(t.url, { connections, duration, script })
  const c1 = cpuSeconds(pids)
  return { ...w, cpuUsPerReq: cpuUsPerReq(pids, c0, c1, w.total) }
}

/**
 * runs × targets wrk runs, the order rotated by one each run: whoever goes
 * first meets a cooler machine and a fresher upstream, so that slot is shared.
 */
async function abPhase (targets, { label, runs, connections, duration, script }) {
  const raw = Object.fromEntries(targets.map((t) => [t.name, []]))
  for (const t of targets) await wrkRun(t.url, { connections, duration: 1, script }) // warm-up: JIT, keep-alive pools
  for (let r = 0; r < runs; r++) {
    for (let i = 0; i < targets.length; i++) {
      const t = targets[(i + r) % targets.length]
      const m = await measure(t, { connections, duration, script })
      raw[t.name].push(m)
      log(`run ${r + 1}/${runs} ${label} ${t.name}: ${Math.round(m.rps)} req/s p50 ${m.p50} ms p99 ${m.p99} ms cpu ${m.cpuUsPerReq} µs/req (${m.total} requests, ${m.errors} errors)`)
    }
  }
  const summary = targets.map(({ name }) => {
    const xs = raw[name]
    return {
      name,
      rps: median(xs.map((x) => x.rps)),
      p50: median(xs.map((x) => x.p50)),
      p99: median(xs.map((x) => x.p99)),
      cpuUsPerReq: median(xs.map((x) => x.cpuUsPerReq)),
      requests: xs.reduce((a, x) => a + x.total, 0),
      errors: xs.reduce((a, x) => a + x.errors, 0)
    }
  })
  return { summary, raw }
}

/** a / b to two decimals, or null when either side is missing. */
const ratio = (a, b) => (typeof a === 'number' && typeof b === 'number' && b !== 0) ? Math.round(100 * a / b) / 100 : null

/** The first target against each other one: req/s, CPU µs/req and, with --post, 1 MiB POST MiB/s. */
function ratiosOf (get, post) {
  const [first, ...others] = get.summary
  const out = {}
  for (const o of others) {
    out[`${first.name} / ${o.name} req/s`] = ratio(first.rps, o.rps)
    out[`${first.name} / ${o.name} CPU µs/req`] = ratio(first.cpuUsPerReq, o.cpuUsPerReq)
    if (post !== undefined) {
      const [pf, po] = [post.summary[0], post.summary.find((s) => s.name === o.name)]
      out[`${first.name} / ${o.name} 1 MiB POST MiB/s`] = ratio(pf.rps, po.rps)
      out[`${first.name} / ${o.name} 1 MiB POST CPU µs/req`] = ratio(pf.cpuUsPerReq, po.cpuUsPerReq)
    }
  }
  return out
}

function toMarkdown (result) {
  const fmt = (v, d = 0) => v === null || v === undefined ? '–' : v.toFixed(d)
  const { get, post, ratios } = result
  const postBy = Object.fromEntries((post?.summary ?? []).map((s) => [s.name, s]))
  const lines = [
    `Measured ${result.date} at commit \`${result.commit}\`, Node ${result.node}, ${result.cpus} cores shared by load generator, upstream and proxy; wrk -t1 -c${result.connections}, ${result.runs} alternating runs of ${result.durationS} s, medians; 1,000 rotating \`x-user-id\` values${post ? `; 1 MiB POST with ${POST_CONNECTIONS} connections` : ''}.`,
    '',
    `| target | req/s | p50 ms | p99 ms | CPU µs/req | errors |${post ? ' 1 MiB POST MiB/s | POST CPU µs/req | POST errors |' : ''}`,
    `|---|---:|---:|---:|---:|---:|${post ? '---:|---:|---:|' : ''}`,
    ...get.summary.map((s) => {
      const p = postBy[s.name]
      return `| ${s.name} | ${fmt(s.rps)} | ${fmt(s.p50, 2)} | ${fmt(s.p99, 2)} | ${fmt(s.cpuUsPerReq, 1)} | ${s.errors} |${p ? ` ${fmt(p.rps, 1)} | ${fmt(p.cpuUsPerReq, 1)} | ${p.errors} |` : ''}`
    }),
    '',
    '| ratio | value |',
    '|---|---:|',
    ...Object.entries(ratios).map(([k, v]) => `| ${k} | ${v ?? '–'} |`)
  ]
  return lines.join('\n')
}

async function main () {
  const opts = readArgs()
  if (!hasCommand('wrk')) fail('wrk is not installed (e.g. `sudo apt-get install -y wrk`); this A/B uses it as the load generator')
  if (!existsSync(join(root, 'dist/app.js'))) fail('dist/app.js is missing: run `npm run build` first')

  const { targets: started, skipped } = await startTargets({ names: opts.names, log })
  if (skipped.length > 0) fail(`could not start ${skipped.map((s) => `${s.name} (${s.reason})`).join(', ')}`)
  // startTargets starts in its own order; the A/B compares the first named target to the others
  const targets = opts.names.map((n) => started.find((t) => t.name === n))

  const get = await abPhase(targets, { label: 'GET', runs: opts.runs, connections: opts.connections, duration: opts.duration, script: join(here, 'wrk-users.lua') })
  const post = opts.post
    ? await abPhase(targets, { label: 'POST 1 MiB', runs: opts.runs, connections: POST_CONNECTIONS, duration: opts.duration, script: join(here, 'wrk-post.lua') })
    : undefined
  // one request carries one MiB, so requests/s is MiB/s
  if (post !== undefined) for (const s of post.summary) s.mibPerSec = s.rps

  let commit = 'unknown'
  try { commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() } catch {}
  const result = {
    date: new Date().toISOString().slice(0, 10),
    commit,
    node: process.version,
    cpus: cpus().length,
    runs: opts.runs,
    durationS: opts.duration,
    connections: opts.connections,
    targets: opts.names,
    get,
    post,
    ratios: ratiosOf(get, post)
  }
  process.stdout.write(opts.json ? `${JSON.stringify(result, null, 2)}\n` : `${toMarkdown(result)}\n`)
}

try {
  await main()
} catch (err) {
  log(`bench/ab.js: ${err.stack ?? err}`)
  process.exitCode = 1
} finally {
  cleanup()
}
process.exit()
