import { parseArgs } from 'node:util'
import { parseExposition, type Exposition } from '../metrics/exposition.js'
import { summarize, type Frame } from '../metrics/summary.js'
import { adminTarget } from './client.js'

/** Settings of `canaryd top`, from flags and environment. */
export interface TopOptions {
  /** Admin server base URL, e.g. http://127.0.0.1:9901. */
  admin: string
  /** Bearer token ('' = none). */
  token: string
  intervalMs: number
  once: boolean
}

const USAGE = `Usage: canaryd top [--admin URL] [--token TOKEN] [--interval MS] [--once]
  --admin URL      admin server (CANARYD_ADMIN_URL; default http://127.0.0.1:9901)
  --token TOKEN    bearer token (CANARYD_ADMIN_TOKEN)
  --interval MS    refresh interval (default 2000, at least 100)
  --once           take two samples one interval apart, print one plain frame, exit
`

/** Reads flags, then environment, then defaults; throws TypeError on a bad value. */
export function parseTopOptions (argv: string[], env: NodeJS.ProcessEnv): TopOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      admin: { type: 'string' },
      token: { type: 'string' },
      interval: { type: 'string' },
      once: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' }
    },
    strict: true
  })
  if (values.help === true) return 'help'
  const target = adminTarget(values, env)
  const admin = target.base.replace(/\/+$/, '')
  if (!/^https?:\/\//.test(admin)) throw new TypeError(`--admin must be an http(s) URL, got "${admin}"`)
  const intervalMs = values.interval === undefined ? 2000 : Number(values.interval)
  if (!Number.isInteger(intervalMs) || intervalMs < 100) throw new TypeError(`--interval must be an integer number of milliseconds ≥ 100, got "${values.interval ?? ''}"`)
  return { admin, token: target.token, intervalMs, once: values.once ?? false }
}

/** Fetches and parses `GET {admin}/metrics`; the token goes as a Bearer header when set. */
export async function scrape (opts: Pick<TopOptions, 'admin' | 'token'>, timeoutMs: number): Promise<Exposition> {
  const headers: Record<string, string> = { accept: 'text/plain' }
  if (opts.token.length !== 0) headers.authorization = `Bearer ${opts.token}`
  const res = await fetch(`${opts.admin}/metrics`, { headers, signal: AbortSignal.timeout(timeoutMs) })
  const text = await res.text()
  if (res.status !== 200) throw new Error(`GET ${opts.admin}/metrics answered ${res.status}: ${text.slice(0, 200)}`)
  return parseExposition(text)
}

function fmtMs (s: number | undefined): string {
  if (s === undefined) return '-'
  const ms = s * 1000
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)
}

function fmtBytes (b: number | undefined): string {
  return b === undefined ? '-' : `${(b / 1048576).toFixed(1)} MiB`
}

/**
 * Renders a frame as plain text: one header line, a column header, one line
 * per route and version, one process line. Pure, so tests compare text.
 */
export function renderFrame (frame: Frame, meta: { admin: string; at: Date }): string {
  const head = ['ROUTE', 'VERSION', 'WEIGHT%', 'REQ/S', 'ERR%', 'P50ms', 'P99ms', 'INFLIGHT', 'UPERR']
  const body = frame.rows.map((r) => [
    r.route,
    r.version,
    r.weight === undefined ? '-' : String(r.weight),
    r.rps.toFixed(1),
    r.errorPct === undefined ? '-' : r.errorPct.toFixed(2),
    fmtMs(r.p50),
    fmtMs(r.p99),
    String(r.inFlight),
    String(r.upstreamErrors)
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)))
  // names left-aligned, numbers right-aligned, like top
  const line = (cells: string[]): string => cells.map((c, i) => i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join('  ').trimEnd()
  const p = frame.process
  const out = [
    `canaryd top — ${meta.admin} — ${meta.at.toISOString().slice(11, 19)} UTC — over ${frame.seconds.toFixed(1)} s`,
    '',
    line(head),
    ...body.map(line)
  ]
  if (body.length === 0) out.push('(no routes yet)')
  out.push('', `process: event-loop lag p99 ${fmtMs(p.eventLoopLagP99)} ms, heap used ${fmtBytes(p.heapUsedBytes)}, rss ${fmtBytes(p.residentBytes)}`)
  return out.join('\n') + '\n'
}

const CLEAR_HOME = '\x1b[H\x1b[2J'

/**
 * `canaryd top`: a live view of each route and version, redrawn every
 * interval like top(1) from two consecutive scrapes of the admin server's
 * /metrics. `--once` takes two samples one interval apart, prints one frame
 * without terminal codes and exits (for scripts and tests).
 */
export async function runTop (argv: string[]): Promise<void> {
  let opts: TopOptions | 'help'
  try {
    opts = parseTopOptions(argv, process.env)
  } catch (err) {
    process.stderr.write(`canaryd top: ${(err as Error).message}\n${USAGE}`)
    process.exitCode = 2
    return
  }
  if (opts === 'help') {
    process.stdout.write(USAGE)
    return
  }
  const o = opts
  const timeoutMs = Math.max(1000, o.intervalMs)
  const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

  if (o.once) {
    try {
      const first = await scrape(o, timeoutMs)
      const t0 = performance.now()
      await sleep(o.intervalMs)
      const second = await scrape(o, timeoutMs)
      process.stdout.write(renderFrame(summarize(first, second, (performance.now() - t0) / 1000), { admin: o.admin, at: new Date() }))
    } catch (err) {
      process.stderr.write(`canaryd top: ${(err as Error).message}\n`)
      process.exitCode = 1
    }
    return
  }

  // live: keep going through scrape failures (admin restarting), showing the error instead of a frame
  let prev: { e: Exposition; t: number } | undefined
  // Ctrl-C ends it the default way: nothing to flush or restore (the cursor is never hidden)
  for (;;) {
    try {
      const e = await scrape(o, timeoutMs)
      const t = performance.now()
      if (prev !== undefined) process.stdout.write(CLEAR_HOME + renderFrame(summarize(prev.e, e, (t - prev.t) / 1000), { admin: o.admin, at: new Date() }))
      else process.stdout.write(`${CLEAR_HOME}canaryd top — ${o.admin} — first sample taken, next in ${o.intervalMs} ms\n`)
      prev = { e, t }
    } catch (err) {
      process.stdout.write(`${CLEAR_HOME}canaryd top — ${o.admin} — ${(err as Error).message}; retrying every ${o.intervalMs} ms\n`)
      prev = undefined
    }
    await sleep(o.intervalMs)
  }
}
