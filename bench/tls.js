// HTTPS and HTTP/2 in front of the same upstream: canaryd against nginx with
// the same certificate, in one run, alternating (issue 14).
//
//   npm run build && node bench/tls.js                # 3 runs × 5 s per target (≈ 2 minutes)
//   node bench/tls.js --runs 5 --duration 4
//   node bench/tls.js --profile                       # then one --cpu-prof run of canaryd per protocol
//   node bench/tls.js --json                          # the JSON summary on stdout, progress on stderr
//
// What it starts, all on 127.0.0.1: bench/upstream.js; canaryd twice from
// dist/cli.js (`serve --config`, one route of two versions on the upstream's
// two ports, 90/10, sticky on x-user-id, metrics on, log level warn): once
// with listen.tls (h2 offered by ALPN, the default) and once plain HTTP, the
// baseline that shows TLS's cost; nginx (`-g 'daemon off;'`, one worker) with
// an https server (ssl_protocols TLSv1.2 TLSv1.3, h2) and a plain one, both
// to the same upstream over a keep-alive upstream block. The certificate is
// an EC P-256 one made by the openssl binary (SAN localhost, 127.0.0.1).
//
// Load: wrk -t1 -c50 (bench/wrk-users.lua: 1,000 rotating x-user-id values)
// for HTTP/1.1 over TLS and over plain TCP; h2load (Debian nghttp2-client)
// -c10 -m10 -n N for h2, when installed, N sized from a 3,000-request warm-up
// to last about --duration (count-based: a timed -D run ends by dropping its
// connections with 100 streams open). Every wrk target gets a 1 s warm-up;
// then each run drives every target once in an order rotated by one per run.
// CPU µs per request is the proxy's own utime+stime from /proc (nginx:
// master and worker) over the run ÷ the requests served. Medians are
// printed as a markdown table with the ratios, and the JSON is written to
// bench/results/<date>-<commit>-tls.json (--no-write: not). Any non-2xx
// response or socket error is counted and reported. Every process started
// here is killed on exit, on errors and on Ctrl-C, and the whole run has a
// time limit.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { cleanup, cpuSeconds, freePort, hasCommand, median, startTargets, withDescendants } from './lib/targets.js'
import { cleanupTls, getOnce, getOnceH2, h2load, makeCertificate, nginxVersion, startCanaryd, startNginx, stopGracefully, summarizeProfile, tempDir, tlsSession, wrk } from './lib/tls.js'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const USERS_SCRIPT = join(here, 'wrk-users.lua')
const log = (s) => process.stderr.write(`${s}\n`)

function fail (message, code = 1) {
  log(`bench/tls.js: ${message}`)
  cleanupAll()
  process.exit(code)
}

function cleanupAll () {
  cleanupTls()
  cleanup()
}

function readArgs () {
  let values
  try {
    ({ values } = parseArgs({
      options: {
        runs: { type: 'string', default: '3' },
        duration: { type: 'string', default: '5' },
        connections: { type: 'string', default: '50' },
        'h2-clients': { type: 'string', default: '10' },
        'h2-streams': { type: 'string', default: '10' },
        profile: { type: 'boolean', default: false },
        'profile-duration': { type: 'string', default: '5' },
        json: { type: 'boolean', default: false },
        'no-write': { type: 'boolean', default: false }
      }
    }))
  } catch (err) {
    fail(err.message, 2)
  }
  const int = (name) => {
    const n = Number(values[name])
    if (!Number.isInteger(n) || n < 1 || n > 3600) fail(`--${name} must be a positive integer, got ${values[name]}`, 2)
    return n
  }
  return {
    runs: int('runs'),
    duration: int('duration'),
    connections: int('connections'),
    h2Clients: int('h2-clients'),
    h2Streams: int('h2-streams'),
    profile: values.profile,
    profileDuration: int('profile-duration'),
    json: values.json,
    write: !values['no-write']
  }
}

/** Requests of the h2 warm-up, which also sizes the runs: h2load -n, duration × the warm-up's rate. */
const H2_WARMUP_REQUESTS = 3000

/**
 * One load run against t with the proxy's CPU read around it: wrk for
 * `duration` s, or h2load for t.h2Requests (sized from the warm-up to last
 * about `duration` s; a run is stopped at 4 × duration + 20 s).
 */
async function measure (t, opts, duration, h2Requests = t.h2Requests) {
  const pids = withDescendants(t.pid)
  const c0 = cpuSeconds(pids)
  const r = t.protocol === 'h2'
    ? await h2load(t.url, { clients: opts.h2Clients, streams: opts.h2Streams, requests: h2Requests, headers: ['x-user-id: user-1'], limitS: 4 * duration + 20 })
    : await wrk(t.url, { connections: opts.connections, duration, script: USERS_SCRIPT })
  const c1 = cpuSeconds(pids)
  const cpuUsPerReq = r.total > 0 ? Math.round(1e7 * (c1 - c0) / r.total) / 10 : null
  return { ...r, cpuUsPerReq }
}

/** 1 s of wrk, or H2_WARMUP_REQUESTS over h2, which sets t.h2Requests for the runs. */
async function warmUp (t, opts, duration = opts.duration) {
  const w = await measure(t, opts, 1, H2_WARMUP_REQUESTS)
  if (t.protocol === 'h2') {
    t.h2Requests = Math.min(5_000_000, Math.max(H2_WARMUP_REQUESTS, Math.round(w.rps * duration / 1000) * 1000))
    log(`warm-up ${t.key}: ${Math.round(w.rps)} req/s, so ${t.h2Requests} requests per run`)
  }
  return w
}

/** Warm-up (wrk 1 s, h2load 3,000 requests each), then runs × targets, rotating the order by one per run. */
async function phase (targets, opts) {
  const raw = Object.fromEntries(targets.map((t) => [t.key, []]))
  for (const t of targets) {
    const w = await warmUp(t, opts)
    if (w.non2xx + w.socketErrors > 0) log(`warm-up ${t.key}: ${w.non2xx} non-2xx, ${w.socketErrors} socket errors`)
  }
  for (let r = 0; r < opts.runs; r++) {
    for (let i = 0; i < targets.length; i++) {
      const t = targets[(i + r) % targets.length]
      const m = await measure(t, opts, opts.duration)
      raw[t.key].push(m)
      const lat = m.p99 !== null ? `p99 ${m.p99} ms` : `mean ${m.mean} ms`
      log(`run ${r + 1}/${opts.runs} ${t.key}: ${Math.round(m.rps)} req/s ${lat} cpu ${m.cpuUsPerReq} µs/req (${m.total} requests, ${m.non2xx} non-2xx, ${m.socketErrors} errors${t.protocol === 'h2' && !m.h2 ? ', NOT h2' : ''})`)
    }
  }
  return targets.map((t) => {
    const xs = raw[t.key]
    return {
      target: t.name,
      protocol: t.protocol,
      rps: median(xs.map((x) => x.rps)),
      mean: median(xs.map((x) => x.mean)),
      p99: median(xs.map((x) => x.p99)),
      cpuUsPerReq: median(xs.map((x) => x.cpuUsPerReq)),
      requests: xs.reduce((a, x) => a + x.total, 0),
      non2xx: xs.reduce((a, x) => a + x.non2xx, 0),
      socketErrors: xs.reduce((a, x) => a + x.socketErrors, 0),
      runs: xs.map(({ raw: _, ...x }) => x)
    }
  })
}

const ratio = (a, b) => (typeof a === 'number' && typeof b === 'number' && b !== 0) ? Math.round(100 * a / b) / 100 : null

function ratiosOf (rows) {
  const get = (target, protocol) => rows.find((r) => r.target === target && r.protocol === protocol)
  const out = {}
  const pair = (label, a, b) => {
    out[`${label} req/s`] = ratio(a?.rps, b?.rps)
    out[`${label} CPU µs/req`] = ratio(a?.cpuUsPerReq, b?.cpuUsPerReq)
  }
  pair('canaryd / nginx, https/1.1', get('canaryd', 'https/1.1'), get('nginx', 'https/1.1'))
  pair('canaryd / nginx, h2', get('canaryd', 'h2'), get('nginx', 'h2'))
  pair('canaryd https/1.1 / canaryd http/1.1', get('canaryd', 'https/1.1'), get('canaryd', 'http/1.1'))
  pair('nginx https/1.1 / nginx http/1.1', get('nginx', 'https/1.1'), get('nginx', 'http/1.1'))
  pair('canaryd / nginx, http/1.1', get('canaryd', 'http/1.1'), get('nginx', 'http/1.1'))
  pair('canaryd h2 / canaryd https/1.1', get('canaryd', 'h2'), get('canaryd', 'https/1.1'))
  out['canaryd / nginx, https/1.1 p99'] = ratio(get('canaryd', 'https/1.1')?.p99, get('nginx', 'https/1.1')?.p99)
  return out
}

/**
 * One fresh canaryd under --cpu-prof per protocol (https/1.1, the plain
 * http/1.1 baseline, h2): self time per layer and per function of the
 * measured run only (start-up and warm-up samples left out), per request.
 */
async function profileRuns (ctx, opts) {
  const out = []
  const kinds = [{ protocol: 'https/1.1', tls: true }, { protocol: 'http/1.1', tls: false }, ...(ctx.h2load ? [{ protocol: 'h2', tls: true }] : [])]
  for (const k of kinds) {
    const tag = k.protocol.replace(/\W/g, '')
    const profDir = join(ctx.dir, `prof-${tag}`)
    mkdirSync(profDir)
    const port = await freePort()
    const c = await startCanaryd({ dir: ctx.dir, name: `canaryd-prof-${tag}`, port, stable: ctx.upstream.stable, canary: ctx.upstream.canary, tls: k.tls ? ctx.cert : undefined, nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] })
    const t = { key: `canaryd ${k.protocol} (profiled)`, pid: c.pid, url: `${k.tls ? 'https' : 'http'}://127.0.0.1:${port}/`, protocol: k.protocol }
    try {
      const w = await warmUp(t, opts, opts.profileDuration)
      const from = process.hrtime.bigint() / 1000n
      const m = await measure(t, opts, opts.profileDuration)
      const to = process.hrtime.bigint() / 1000n
      await stopGracefully(c.child, 15_000)
      const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'))
      if (file === undefined) throw new Error(`canaryd (${k.protocol}) wrote no .cpuprofile: it did not exit within 15 s of SIGTERM`)
      const s = summarizeProfile(join(profDir, file), 15, [Number(from), Number(to)])
      const requests = m.total
      for (const f of [...s.functions, ...s.categories]) f.usPerReq = Math.round(10 * f.selfMs * 1000 / requests) / 10
      out.push({ protocol: k.protocol, rps: Math.round(m.rps), requests, cpuUsPerReq: m.cpuUsPerReq, non2xx: w.non2xx + m.non2xx, socketErrors: w.socketErrors + m.socketErrors, ...s })
      log(`profile ${k.protocol}: ${requests} requests, ${s.busyMs} ms busy of ${s.totalMs} ms sampled`)
    } finally {
      await stopGracefully(c.child, 3000)
    }
  }
  return out
}

/** The profiles as markdown: µs/req per layer side by side, then each protocol's top functions. */
function profileMarkdown (profiles) {
  const lines = ['', `canaryd under \`--cpu-prof\` (a fresh process per protocol, one run of the measured length; CPU µs/req from /proc under the profiler: ${profiles.map((p) => `${p.protocol} ${p.cpuUsPerReq}`).join(', ')}). Self time of the main thread per request, by layer. A native function's time includes the C++ and the syscalls under it (\`writev\` on a TLS socket: encryption and the send); "(program)" is native work under no JS frame (e.g. nghttp2 and TLS reads before a JS callback):`, '']
  const layers = []
  for (const p of profiles) for (const c of p.categories) if (!layers.includes(c.name)) layers.push(c.name)
  const us = (p, name) => p.categories.find((c) => c.name === name)?.usPerReq
  const shown = layers.filter((name) => profiles.some((p) => (us(p, name) ?? 0) >= 1))
  lines.push(`| layer | ${profiles.map((p) => `${p.protocol} µs/req`).join(' | ')} |`, `|---|${profiles.map(() => '---:').join('|')}|`,
    ...shown.map((name) => `| ${name} | ${profiles.map((p) => us(p, name) ?? '–').join(' | ')} |`),
    `| all sampled busy time | ${profiles.map((p) => Math.round(10 * p.busyMs * 1000 / p.requests) / 10).join(' | ')} |`)
  for (const p of profiles) {
    lines.push('', `Top self time, ${p.protocol}:`, '',
      '| function | main caller | % of busy | µs/req |', '|---|---|---:|---:|',
      ...p.functions.map((f) => `| \`${f.name}\` | ${f.caller ? `\`${f.caller}\`` : ''} | ${f.busyPercent} | ${f.usPerReq} |`))
  }
  return lines
}

function toMarkdown (result) {
  const fmt = (v, d = 0) => v === null || v === undefined ? '–' : Number(v).toFixed(d)
  const s = result.tlsSessions
  const lines = [
    `Measured ${result.date} at commit \`${result.commit}\`, Node ${result.node}, nginx ${result.nginx ?? '–'} (1 worker), ${result.cpus} cores shared by load generator, upstream and proxy; ${result.runs} alternating runs of ${result.durationS} s per target, medians. HTTP/1.1: wrk -t1 -c${result.connections} keep-alive, 1,000 rotating \`x-user-id\` values; h2: ${result.h2load ? `h2load -c${result.h2Clients} -m${result.h2Streams} -n sized from a warm-up to last about ${result.durationS} s (one \`x-user-id\`)` : 'h2load not installed, skipped'}. Certificate EC P-256, self-signed.`,
    '',
    `TLS negotiated (canaryd / nginx): ${s.canaryd?.protocol ?? '–'} ${s.canaryd?.cipher ?? ''} ${s.canaryd?.group ?? ''} / ${s.nginx?.protocol ?? '–'} ${s.nginx?.cipher ?? ''} ${s.nginx?.group ?? ''}.`,
    '',
    '| target | protocol | req/s | mean ms | p99 ms | CPU µs/req | requests | non-2xx | socket errors |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ...result.rows.map((r) => `| ${r.target} | ${r.protocol} | ${fmt(r.rps)} | ${fmt(r.mean, 2)} | ${fmt(r.p99, 2)} | ${fmt(r.cpuUsPerReq, 1)} | ${r.requests} | ${r.non2xx} | ${r.socketErrors} |`),
    '',
    '| ratio | value |',
    '|---|---:|',
    ...Object.entries(result.ratios).map(([k, v]) => `| ${k} | ${v ?? '–'} |`)
  ]
  if (result.profiles?.length > 0) lines.push(...profileMarkdown(result.profiles))
  return lines.join('\n')
}

async function main () {
  const opts = readArgs()
  for (const [cmd, how] of [['wrk', 'apt-get install -y wrk'], ['openssl', 'apt-get install -y openssl']]) {
    if (!hasCommand(cmd)) fail(`${cmd} is not installed (${how})`)
  }
  if (!existsSync(join(root, 'dist/cli.js'))) fail('dist/cli.js is missing: run `npm run build` first')
  const withNginx = hasCommand('nginx')
  if (!withNginx) log('nginx not installed (apt-get install nginx-light, or nginx): the nginx rows are skipped')
  const withH2load = hasCommand('h2load')
  if (!withH2load) log('h2load not installed (apt-get install nghttp2-client): h2 skipped')

  // a time limit for the whole run: a hung child must not hold the machine
  const perTarget = opts.runs * opts.duration + 1
  // (h2 runs are sized by request count from a warm-up: allowed twice their nominal time)
  const budgetS = 60 + 1.5 * (4 * perTarget + 2 * 2 * perTarget + (opts.profile ? 3 * (2 * opts.profileDuration + 20) : 0))
  setTimeout(() => fail(`stopped after the ${Math.round(budgetS)} s time limit`), budgetS * 1000).unref()

  const dir = tempDir()
  const cert = makeCertificate(dir)
  const { upstream } = await startTargets({ names: [] })
  log(`upstream: ${upstream.stable} ${upstream.canary}`)

  const [cTls, cHttp] = [await freePort(), await freePort()]
  const canTls = await startCanaryd({ dir, name: 'canaryd-https', port: cTls, stable: upstream.stable, canary: upstream.canary, tls: cert })
  const canHttp = await startCanaryd({ dir, name: 'canaryd-http', port: cHttp, stable: upstream.stable, canary: upstream.canary })
  log(`canaryd: https://127.0.0.1:${cTls}/ (pid ${canTls.pid}), http://127.0.0.1:${cHttp}/ (pid ${canHttp.pid})`)
  let ngx
  if (withNginx) {
    const [nTls, nHttp] = [await freePort(), await freePort()]
    const n = await startNginx({ dir, tlsPort: nTls, httpPort: nHttp, upstreamPort: Number(new URL(upstream.stable).port), certFile: cert.certFile, keyFile: cert.keyFile })
    ngx = { ...n, tlsPort: nTls, httpPort: nHttp }
    log(`nginx ${n.version} (${n.http2Directive}): https://127.0.0.1:${nTls}/ http://127.0.0.1:${nHttp}/ (pid ${n.pid})`)
  }

  const h1 = [
    { key: 'canaryd https/1.1', name: 'canaryd', protocol: 'https/1.1', url: `https://127.0.0.1:${cTls}/`, pid: canTls.pid },
    ...(ngx ? [{ key: 'nginx https/1.1', name: 'nginx', protocol: 'https/1.1', url: `https://127.0.0.1:${ngx.tlsPort}/`, pid: ngx.pid }] : []),
    { key: 'canaryd http/1.1', name: 'canaryd', protocol: 'http/1.1', url: `http://127.0.0.1:${cHttp}/`, pid: canHttp.pid },
    ...(ngx ? [{ key: 'nginx http/1.1', name: 'nginx', protocol: 'http/1.1', url: `http://127.0.0.1:${ngx.httpPort}/`, pid: ngx.pid }] : [])
  ]
  const h2 = withH2load
    ? [
        { key: 'canaryd h2', name: 'canaryd', protocol: 'h2', url: `https://127.0.0.1:${cTls}/`, pid: canTls.pid },
        ...(ngx ? [{ key: 'nginx h2', name: 'nginx', protocol: 'h2', url: `https://127.0.0.1:${ngx.tlsPort}/`, pid: ngx.pid }] : [])
      ]
    : []

  // the same answer from every target and protocol before any load: a 502 measured fast is no result
  const tlsSessions = {}
  for (const t of h1) {
    const r = await getOnce(t.url, cert.pem)
    if (r.status !== 200 || r.body !== '{"ok":true}') fail(`check ${t.key}: status ${r.status}, body ${JSON.stringify(r.body.slice(0, 200))}`)
    if (t.protocol === 'https/1.1') {
      tlsSessions[t.name] = await tlsSession(Number(new URL(t.url).port), cert.pem, ['h2', 'http/1.1'])
      log(`check ${t.key}: 200; TLS ${JSON.stringify(tlsSessions[t.name])}`)
    }
  }
  for (const t of h2) {
    const r = await getOnceH2(t.url, cert.pem)
    if (r.status !== 200 || r.body !== '{"ok":true}' || r.alpn !== 'h2') fail(`check ${t.key}: status ${r.status}, ALPN ${r.alpn}, body ${JSON.stringify(r.body.slice(0, 200))}`)
    log(`check ${t.key}: 200 over ${r.alpn}`)
  }

  const rows = [...await phase(h1, opts), ...(h2.length > 0 ? await phase(h2, opts) : [])]
  for (const r of rows) if (r.non2xx + r.socketErrors > 0) log(`WARNING ${r.target} ${r.protocol}: ${r.non2xx} non-2xx responses, ${r.socketErrors} socket errors`)

  const profiles = opts.profile ? await profileRuns({ dir, cert, upstream, h2load: withH2load }, opts) : undefined

  let commit = 'unknown'
  try { commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() } catch {}
  const v = nginxVersion()
  const result = {
    date: new Date().toISOString().slice(0, 10),
    commit,
    node: process.version,
    nginx: v ? v.join('.') : null,
    cpus: cpus().length,
    runs: opts.runs,
    durationS: opts.duration,
    connections: opts.connections,
    h2load: withH2load,
    h2Clients: opts.h2Clients,
    h2Streams: opts.h2Streams,
    tlsSessions,
    rows,
    ratios: ratiosOf(rows),
    profiles
  }
  if (opts.write) {
    const file = join(here, 'results', `${result.date}-${commit}-tls.json`)
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`)
    log(`wrote ${file.slice(root.length + 1)}`)
  }
  process.stdout.write(opts.json ? `${JSON.stringify(result, null, 2)}\n` : `${toMarkdown(result)}\n`)
}

for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
  process.once(signal, () => {
    log(`${signal}: stopping the benchmark processes`)
    cleanupAll()
    process.exit(code)
  })
}
try {
  await main()
} catch (err) {
  log(`bench/tls.js: ${err.stack ?? err}`)
  process.exitCode = 1
} finally {
  cleanupAll()
}
process.exit()
