#!/usr/bin/env node
// Soak: N requests (default 1,000,000), each with a distinct user id, through a
// canaryd process (`node dist/cli.js serve`, run `npm run build` first) in
// front of two loopback upstreams. Samples the proxy process's RSS and open
// file descriptors (/proc/<pid>) every few seconds after a warm-up, and fails
// (exit 1) if RSS grew more than 50 MB or the fd count grew.
//
//   node bench/soak.js [--requests 1000000] [--concurrency 64]
import { spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Pool } from 'undici'

const { values } = parseArgs({ options: { requests: { type: 'string', default: '1000000' }, concurrency: { type: 'string', default: '64' }, warmup: { type: 'string', default: '20000' } } })
const TOTAL = Number(values.requests)
const CONCURRENCY = Number(values.concurrency)
const WARMUP = Number(values.warmup)
const RSS_LIMIT_MB = 50

async function upstream (name) {
  const body = Buffer.from(JSON.stringify({ version: name }))
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
      res.end(body)
    })
  })
  server.keepAliveTimeout = 60_000
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, origin: `http://127.0.0.1:${server.address().port}` }
}

function sample (pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)[1])
  return { rssMb: rssKb / 1024, fds: readdirSync(`/proc/${pid}/fd`).length }
}

const stable = await upstream('stable')
const canary = await upstream('canary')
const dir = mkdtempSync(join(tmpdir(), 'canaryd-soak-'))
const config = join(dir, 'config.json')
writeFileSync(config, JSON.stringify({
  listen: { host: '127.0.0.1', port: 0 },
  admin: { host: '127.0.0.1', port: 0 },
  state: { file: join(dir, 'state.json') },
  log: { level: 'warn' },
  routes: [{
    name: 'web',
    sticky: { keys: ['header:x-user-id'] },
    versions: [{ name: 'stable', upstream: stable.origin, weight: 90 }, { name: 'canary', upstream: canary.origin, weight: 10 }]
  }]
}))
const child = spawn(process.execPath, [new URL('../dist/cli.js', import.meta.url).pathname, 'serve', '--config', config], { env: { ...process.env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'inherit'] })
const proxyAddr = await new Promise((resolve, reject) => {
  let buf = ''
  child.stdout.on('data', (d) => {
    buf += d
    const line = buf.split('\n').find((l) => l.includes('canaryd started'))
    if (line !== undefined) resolve(JSON.parse(line).proxy)
  })
  child.on('exit', (code) => reject(new Error(`canaryd exited ${code}`)))
})

const pool = new Pool(`http://${proxyAddr}`, { connections: CONCURRENCY, pipelining: 1 })
let next = 0
let done = 0
let failed = 0
const statusCounts = new Map()
async function worker () {
  while (next < TOTAL) {
    const i = next++
    try {
      const r = await pool.request({ path: `/item/${i % 1000}`, method: 'GET', headers: { 'x-user-id': `user-${i}` } })
      await r.body.dump()
      statusCounts.set(r.statusCode, (statusCounts.get(r.statusCode) ?? 0) + 1)
    } catch {
      failed++
    }
    done++
  }
}

const samples = []
let baseline
const t0 = Date.now()
const timer = setInterval(() => {
  if (done < WARMUP) return
  const s = { at: done, ...sample(child.pid) }
  baseline ??= s
  samples.push(s)
  process.stderr.write(`  ${done.toLocaleString('en')} requests  rss ${s.rssMb.toFixed(1)} MB  fds ${s.fds}\n`)
}, 5000)
await Promise.all(Array.from({ length: CONCURRENCY }, worker))
clearInterval(timer)
const secs = (Date.now() - t0) / 1000
await pool.close()
await new Promise((resolve) => setTimeout(resolve, 1000))
const end = sample(child.pid)
baseline ??= end
const maxRss = Math.max(end.rssMb, ...samples.map((s) => s.rssMb))
const maxFds = Math.max(end.fds, ...samples.map((s) => s.fds))
child.kill('SIGTERM')
await new Promise((resolve) => child.on('exit', resolve))
stable.server.close()
canary.server.close()

const growth = end.rssMb - baseline.rssMb
const result = {
  requests: TOTAL,
  distinctUserIds: TOTAL,
  concurrency: CONCURRENCY,
  seconds: Math.round(secs),
  rps: Math.round(TOTAL / secs),
  statuses: Object.fromEntries(statusCounts),
  failed,
  rssMb: { afterWarmup: +baseline.rssMb.toFixed(1), max: +maxRss.toFixed(1), end: +end.rssMb.toFixed(1), growth: +growth.toFixed(1) },
  fds: { afterWarmup: baseline.fds, max: maxFds, end: end.fds },
  node: process.version
}
console.log(JSON.stringify(result, null, 2))
const ok = growth <= RSS_LIMIT_MB && end.fds <= baseline.fds && failed === 0
console.log(ok ? 'soak: PASS' : 'soak: FAIL')
process.exit(ok ? 0 : 1)
