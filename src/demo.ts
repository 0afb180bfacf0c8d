import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Agent, request } from 'undici'
import { App } from './app.js'
import { configFromObject } from './config/load.js'
import { createLogger } from './logger.js'
import type { CheckRecord, HistoryEntry } from './rollout/controller.js'

/** Where the demo writes its report and the story's timeline: one line at a time. */
export type Print = (line: string) => void

const stdoutLine: Print = (s) => { process.stdout.write(`${s}\n`) }

/**
 * Starts a tiny demo service that answers with its version name after 2 to
 * 8 ms, as a real service takes a few: without it the latency the judge
 * compares is mostly the proxy's own, where a canary that just got more
 * users opens new connections and looks slower than stable for that alone.
 * With `errorRate` it answers 500 to that share of its requests, spread
 * evenly (at 0.08: one in every 12 or 13) rather than at random: every
 * window of a check sees the same rate, and failures never come five in a
 * row, which would make outlier detection eject the version and the check
 * report the ejection instead of the error rate.
 */
async function startService (name: string, errorRate = 0): Promise<Server> {
  let served = 0
  const server = createServer((req, res) => {
    served++
    const fail = Math.floor(served * errorRate) > Math.floor((served - 1) * errorRate)
    const body = JSON.stringify({ version: name, path: req.url, user: req.headers['x-user-id'] ?? null, ...(fail ? { error: 'injected failure' } : {}) })
    setTimeout(() => {
      res.writeHead(fail ? 500 : 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    }, 2 + Math.random() * 6)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server
}

const origin = (s: Server): string => `http://127.0.0.1:${(s.address() as AddressInfo).port}`

function stopService (s: Server): void {
  s.close()
  s.closeAllConnections()
}

async function listenApp (raw: Record<string, unknown>, usualPorts: boolean): Promise<App> {
  const logger = createLogger('warn')
  // the usual ports when free (so the printed curl lines are the documented ones), any free ports otherwise
  const tries = usualPorts ? [[8080, 9901], [0, 0]] as const : [[0, 0]] as const
  for (const [port, adminPort] of tries) {
    const app = new App(configFromObject({ ...raw, listen: { host: '127.0.0.1', port }, admin: { host: '127.0.0.1', port: adminPort } }, '(demo)', {}), { logger })
    try {
      await app.start()
      return app
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port === 0) throw err
      await app.close(0)
    }
  }
  throw new Error('unreachable')
}

/** Settings of the story; the defaults make it last about a minute. */
export interface StoryOptions {
  /** The admin API's origin (no token: the demo's admin listens on loopback only). */
  admin: string
  /** The proxy's origin: the story's user traffic goes there. */
  proxy: string
  /** Default `web`. */
  route?: string
  /** The plans' `intervalMs`: one check per interval. Default 3000. */
  intervalMs?: number
  /** User requests per second through the proxy while the story runs. Default 500. */
  rps?: number
  /** Distinct users (`x-user-id`) the traffic is spread over, each sticky to its version. Default 5000. */
  users?: number
  /** The plans' `analysis.minRequests`. Default 50. */
  minRequests?: number
  /**
   * Whether the plans judge latency too (p99 under 500 ms and within 1.5× of
   * stable's). Default true. The story's test turns it off: on a machine
   * shared with other suites a version's connections can stall for seconds,
   * and the story it checks is the error rate's.
   */
  judgeLatency?: boolean
  /** Longest one rollout may take before the story aborts it and fails. Default 40 intervals. */
  timeoutMs?: number
  /** Where the timeline goes. Default stdout. */
  out?: Print
}

/** The rollout view (GET /api/v1/routes/{route}/rollout), the parts the story reads. */
export interface RolloutView {
  state: string
  step: number
  steps: Array<number | { segment: string; weight: number }>
  weight: number
  failedChecks: number
  finalized: boolean
  reason: string | null
  checks: CheckRecord[]
  history: HistoryEntry[]
}

/** How the story went. */
export interface StoryResult {
  /** The healthy build's rollout at its end (`promoted`, finalized). */
  healthy: RolloutView
  /** The faulty build's rollout at its end (`rolled-back`). */
  faulty: RolloutView
  /** How long the story took, ms. */
  ms: number
  /** User requests sent during the story, and those answered 5xx (or not at all), per version. */
  traffic: { sent: number; failed: Record<string, number> }
  /** The two builds' services; the route's versions point at them after the story. */
  builds: { healthy: string; faulty: string }
  /** Stops the builds' services (after the proxy stopped using them). */
  close: () => void
}

/**
 * Bounded user traffic: about `rps` requests a second through the proxy, each
 * from one of `users` users picked at random (sent as `x-user-id`, so each
 * user stays on its version), at most `maxInFlight` at once (a request that
 * would exceed it is skipped: the demo never piles up work on a slow machine).
 */
class UserTraffic {
  sent = 0
  readonly failed: Record<string, number> = {}
  readonly #agent = new Agent({ keepAliveTimeout: 10_000 })
  readonly #inFlight = new Set<Promise<void>>()
  #timer: NodeJS.Timeout | undefined

  constructor (private readonly proxy: string, private readonly rps: number, private readonly users: number, private readonly maxInFlight = 256) {}

  start (): void {
    const start = performance.now()
    let due = 0
    this.#timer = setInterval(() => {
      const target = Math.floor(this.rps * (performance.now() - start) / 1000)
      for (; due < target; due++) {
        if (this.#inFlight.size >= this.maxInFlight) continue
        const p = this.#one().finally(() => this.#inFlight.delete(p))
        this.#inFlight.add(p)
      }
    }, 20)
  }

  async #one (): Promise<void> {
    this.sent++
    const user = `user-${Math.floor(Math.random() * this.users)}`
    try {
      const r = await request(`${this.proxy}/`, { dispatcher: this.#agent, headers: { 'x-user-id': user }, headersTimeout: 10_000, bodyTimeout: 10_000 })
      await r.body.dump()
      if (r.statusCode >= 500) this.#fail(String(r.headers['x-canaryd-version'] ?? 'none'))
    } catch {
      this.#fail('none')
    }
  }

  #fail (version: string): void {
    this.failed[version] = (this.failed[version] ?? 0) + 1
  }

  async stop (): Promise<void> {
    clearInterval(this.#timer)
    await Promise.all(this.#inFlight)
    await this.#agent.close()
  }
}

/** A JSON call to the admin API; throws with the answer's body unless the status is `want`. */
async function callAdmin (method: 'GET' | 'POST' | 'PUT', url: string, want: number, body?: unknown): Promise<unknown> {
  const r = await request(url, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    // the story's deadline is checked between calls: no call may outlast it by minutes
    headersTimeout: 10_000,
    bodyTimeout: 10_000
  })
  const text = await r.body.text()
  if (r.statusCode !== want) throw new Error(`${method} ${url}: ${r.statusCode} ${text}`)
  return JSON.parse(text)
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

const num = (n: number): string => n.toLocaleString('en-US')
const ms = (v: number | null): string => v === null ? '-' : `${v} ms`

/** One check as a timeline line (and its reasons on the next). */
function formatCheck (c: CheckRecord, maxFailed: number): string[] {
  const side = (name: string, f: CheckRecord['canary']): string => `${name} ${num(f.requests)} req, ${f.successRate}% ok, p99 ${ms(f.p99Ms)}`
  const verdict = c.verdict === 'fail' ? `FAIL (${c.failedChecks}/${maxFailed})` : c.verdict
  const lines = [`check at ${c.weight}%: ${side('canary', c.canary)} | ${side('stable', c.stable)} → ${verdict}`]
  if (c.reasons.length > 0) lines.push(`    ${c.reasons.join('; ')}`)
  return lines
}

/** One history entry as a timeline line, or nothing when the check line above already said it. */
function formatEvent (e: HistoryEntry, steps: number): string | undefined {
  const reason = e.reason === undefined ? '' : `: ${e.reason}`
  switch (e.event) {
    case 'started': return `started: canary at ${e.weight}% (step ${e.step}/${steps})`
    case 'step': return `step ${e.step}/${steps}: canary at ${e.weight}%`
    case 'check-failed': return undefined // the check's line has the figures, reasons and count
    case 'promoted': return `PROMOTED${reason}`
    case 'rolled-back': return `ROLLED BACK${reason}`
    default: return `${e.event}${reason}`
  }
}

/**
 * The demo's story, on a running demo route (`stable` and `canary`, no
 * rollout running): two releases judged by canaryd while simulated users
 * browse. First a healthy build is rolled out 1 → 10 → 50 → 100 % and
 * promoted with `finalize` (stable takes the new build, the canary is back
 * at 0 % and ready for the next release); then a build that answers 500 to
 * 8 % of its requests is started as the next release and rolled back by the
 * judge. Prints a timeline as it happens, read from the admin API (what a
 * user would see), and returns both rollouts as they ended.
 */
export async function runStory (opts: StoryOptions): Promise<StoryResult> {
  const route = opts.route ?? 'web'
  const intervalMs = opts.intervalMs ?? 3000
  const rps = opts.rps ?? 500
  const users = opts.users ?? 5000
  const minRequests = opts.minRequests ?? 50
  const timeoutMs = opts.timeoutMs ?? 40 * intervalMs
  const out = opts.out ?? stdoutLine
  const api = `${opts.admin}/api/v1/routes/${encodeURIComponent(route)}`
  const maxFailedChecks = 2
  const plan = {
    canary: 'canary',
    stable: 'stable',
    steps: [1, 10, 50, 100],
    intervalMs,
    analysis: {
      minRequests,
      maxFailedChecks,
      successRate: { min: 99 },
      ...(opts.judgeLatency === false ? {} : { latencyP99Ms: { max: 500 } }),
      baseline: { maxErrorRateRatio: 2, maxLatencyP99Ratio: opts.judgeLatency === false ? 1000 : 1.5, judge: 'mann-whitney' }
    },
    promotion: { mode: 'auto', finalize: true }
  }
  const good = await startService('build 2')
  const bad = await startService('build 3', 0.08)
  const traffic = new UserTraffic(opts.proxy, rps, users)
  const t0 = Date.now()
  const stamp = (at: number): string => `+${((at - t0) / 1000).toFixed(1)}s`.padStart(7)
  const say = (line: string, at = Date.now()): void => { out(`  ${stamp(at)}  ${line}`) }

  /** Polls the rollout and prints each new check and event in time order until it is final. */
  const follow = async (): Promise<RolloutView> => {
    const seen = new Set<string>()
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const view = await callAdmin('GET', `${api}/rollout`, 200) as RolloutView
      const total = view.steps.length + 1
      const fresh: Array<{ at: number; order: number; lines: string[] }> = []
      for (const c of view.checks) {
        const key = `c|${c.at}|${c.step}|${c.verdict}|${c.canary.requests}`
        if (seen.has(key)) continue
        seen.add(key)
        fresh.push({ at: Date.parse(c.at), order: 0, lines: formatCheck(c, maxFailedChecks) })
      }
      for (const e of view.history) {
        const key = `h|${e.at}|${e.event}|${e.step}`
        if (seen.has(key)) continue
        seen.add(key)
        const line = formatEvent(e, total)
        if (line !== undefined) fresh.push({ at: Date.parse(e.at), order: 1, lines: [line] })
      }
      // a check and the step it caused share a timestamp: the check first
      fresh.sort((a, b) => a.at - b.at || a.order - b.order)
      for (const f of fresh) {
        say(f.lines[0]!, f.at)
        for (const l of f.lines.slice(1)) out(`${' '.repeat(11)}${l}`)
      }
      if (view.state !== 'progressing' && view.state !== 'paused' && view.state !== 'awaiting-promotion') return view
      if (Date.now() > deadline) {
        await callAdmin('POST', `${api}/rollout/abort`, 200).catch(() => undefined)
        throw new Error(`the story's rollout did not finish within ${timeoutMs} ms (state ${view.state}, step ${view.step}); aborted`)
      }
      await sleep(Math.min(250, intervalMs / 4))
    }
  }

  try {
    out('')
    out(`The story: two releases on the live demo, each judged by canaryd against stable (checks every ${intervalMs / 1000} s; about a minute at the defaults).`)
    out(`  healthy build 2 at ${origin(good)}; build 3 at ${origin(bad)} answers 500 to 8% of requests`)
    out(`  plan: steps 1 → 10 → 50 → 100, minRequests ${minRequests}, successRate >= 99%, p99 <= 500 ms, baseline mann-whitney, maxFailedChecks ${maxFailedChecks}, finalize`)
    out('Watch it as it happens:')
    out(`  ${opts.admin}/ui/#/routes/${encodeURIComponent(route)}   (the dashboard: live charts, each check, pause/abort buttons)`)
    out(`  curl -s ${api}/rollout`)
    out(`  node dist/cli.js rollout status ${route} --admin ${opts.admin}`)
    out(`  node dist/cli.js top --admin ${opts.admin}`)
    out('')
    await callAdmin('PUT', `${api}/weights`, 200, { weights: { stable: 100, canary: 0 }, reason: 'demo story: start from stable alone' })
    say('weights stable 100 / canary 0: a new build is pointed at only while the canary has no users')
    traffic.start()
    say(`user traffic: ${num(rps)} req/s from ${num(users)} users (x-user-id), each sticky to its version`)

    say(`release 1: build 2 (healthy) as canary, canaryUpstream=${origin(good)}`)
    await callAdmin('POST', `${api}/rollout?canaryUpstream=${encodeURIComponent(origin(good))}`, 201, plan)
    const healthy = await follow()
    if (healthy.state === 'promoted' && healthy.finalized) say('stable now serves build 2 at 100%; canary at 0%, ready for the next release')
    // the next release needs the route as a finalized promotion leaves it (canary at 0 %): say so rather than a raw 409
    else throw new Error(`release 1 ended ${healthy.state}${healthy.finalized ? '' : ' without finalizing'}, not promoted and finalized: the story stops here (a machine this busy can make a healthy build look slow; run it again)`)

    say(`release 2: build 3 (500 to 8% of requests) as canary, canaryUpstream=${origin(bad)}`)
    await callAdmin('POST', `${api}/rollout?canaryUpstream=${encodeURIComponent(origin(bad))}`, 201, plan)
    const faulty = await follow()
    if (faulty.state === 'rolled-back') say('canary back on build 2 at 0%; stable never stopped serving build 2')
    await traffic.stop()

    const msTotal = Date.now() - t0
    const failed = Object.entries(traffic.failed).map(([v, n]) => `${num(n)} by ${v}`).join(', ')
    out('')
    out(`Verdict: build 2 ${healthy.state}${healthy.finalized ? ' (finalized)' : ''}, build 3 ${faulty.state}; the story took ${(msTotal / 1000).toFixed(1)} s.`)
    out(`  ${num(traffic.sent)} user requests; ${failed === '' ? 'none failed' : `answered 5xx: ${failed}`}`)
    return {
      healthy,
      faulty,
      ms: msTotal,
      traffic: { sent: traffic.sent, failed: { ...traffic.failed } },
      builds: { healthy: origin(good), faulty: origin(bad) },
      close: () => { stopService(good); stopService(bad) }
    }
  } catch (err) {
    await traffic.stop()
    stopService(good)
    stopService(bad)
    throw err
  }
}

/** Options of `canaryd demo`. */
export interface DemoOptions {
  /** Exit after the report (and the story) instead of serving on. */
  once: boolean
  /** Run the story after the report (default true); an object shortens it (tests). */
  story?: boolean | Omit<StoryOptions, 'admin' | 'proxy' | 'out'>
  /** Where the report goes. Default stdout. */
  out?: Print
  /** Try ports 8080 and 9901 first (default true); false: any free ports. */
  usualPorts?: boolean
}

/**
 * `canaryd demo`: a stable and a canary service on loopback, the proxy in
 * front at 90/10, 1,000 simulated users, and a report of the split and of
 * stickiness; then the story (`runStory`: a healthy build promoted, a faulty
 * one rolled back); then it keeps serving and prints curl lines to try.
 * Returns the story's outcome (undefined without the story).
 */
export async function runDemo (opts: DemoOptions): Promise<StoryResult | undefined> {
  const out = opts.out ?? stdoutLine
  const stable = await startService('stable')
  const canary = await startService('canary')
  const app = await listenApp({
    admin: { host: '127.0.0.1', port: 0 },
    state: { file: '' },
    routes: [{
      name: 'web',
      sticky: { keys: ['header:x-user-id'], cookie: { name: 'canaryd_id', maxAge: 86400 } },
      override: { header: 'x-canary', cookie: 'canary' },
      versions: [
        { name: 'stable', upstream: origin(stable), weight: 90 },
        { name: 'canary', upstream: origin(canary), weight: 10 }
      ]
    }]
  }, opts.usualPorts ?? true)
  const proxy = `http://127.0.0.1:${app.proxyAddress!.port}`
  const admin = `http://127.0.0.1:${app.adminAddress!.port}`
  out(`canaryd demo: stable at ${origin(stable)}, canary at ${origin(canary)}, proxy at ${proxy} (weights 90/10)`)
  // first, so a newcomer has the page open before the story starts
  out(`dashboard: ${admin}/ui/#/routes/web   (open it in a browser${opts.story === false ? ': live charts per version, the weights, rollouts)' : ' now: the releases below play there live)'}`)

  const USERS = 1000
  const ROUNDS = 3
  const seen = new Map<string, Set<string>>()
  const counts = new Map<string, number>([['stable', 0], ['canary', 0]])
  let requests = 0
  for (let round = 0; round < ROUNDS; round++) {
    for (let batch = 0; batch < USERS; batch += 50) {
      await Promise.all(Array.from({ length: 50 }, async (_, i) => {
        const user = `user-${batch + i}`
        const r = await request(`${proxy}/hello`, { headers: { 'x-user-id': user } })
        await r.body.dump()
        const v = String(r.headers['x-canaryd-version'])
        requests++
        let set = seen.get(user)
        if (set === undefined) seen.set(user, set = new Set())
        set.add(v)
        if (round === 0) counts.set(v, (counts.get(v) ?? 0) + 1)
      }))
    }
  }
  const flipped = [...seen.values()].filter((s) => s.size > 1).length
  const pct = (n: number): string => `${(100 * n / USERS).toFixed(1)}%`
  out(`sent ${requests} requests from ${USERS} users (${ROUNDS} each, header x-user-id)`)
  out(`  users on stable: ${counts.get('stable')} (${pct(counts.get('stable') ?? 0)})   users on canary: ${counts.get('canary')} (${pct(counts.get('canary') ?? 0)})   target 90/10`)
  out(flipped === 0
    ? `  sticky: every one of the ${USERS} users stayed on one version for all ${ROUNDS} requests`
    : `  sticky: ${flipped} users saw more than one version (this should not happen)`)

  // anonymous browsers: the first response sets a cookie, later ones follow it
  let anonSticky = 0
  for (let i = 0; i < 100; i++) {
    const first = await request(`${proxy}/`)
    await first.body.dump()
    const cookie = String(first.headers['set-cookie']).split(';')[0]!
    const again = await request(`${proxy}/`, { headers: { cookie } })
    await again.body.dump()
    if (again.headers['x-canaryd-version'] === first.headers['x-canaryd-version'] && again.headers['set-cookie'] === undefined) anonSticky++
  }
  out(`  anonymous: ${anonSticky}/100 cookie-less clients got a canaryd_id cookie and stayed on their version`)

  let story: StoryResult | undefined
  try {
    if (opts.story !== false) story = await runStory({ ...(typeof opts.story === 'object' ? opts.story : {}), admin, proxy, out })
  } catch (err) {
    await app.close(0)
    stopService(stable)
    stopService(canary)
    throw err
  }

  if (opts.once) {
    await app.close(1000)
    stopService(stable)
    stopService(canary)
    story?.close()
    return story
  }
  out('')
  if (story?.healthy.finalized === true && story.faulty.state === 'rolled-back') out(`After the story: stable (100%) and canary (0%) both serve build 2 at ${story.builds.healthy}.`)
  out('The proxy keeps serving; try (Ctrl-C to stop):')
  out(`  curl -si -H 'x-user-id: alice' ${proxy}/ | grep -i x-canaryd-version      # sticky by header: same answer every time`)
  out(`  curl -si -H 'x-canary: canary' ${proxy}/ | grep -i x-canaryd-version      # override header: forces the canary`)
  out(`  curl -si --cookie 'canary=canary' ${proxy}/ | grep -i x-canaryd-version   # override cookie`)
  out(`  curl -si ${proxy}/ | grep -iE 'set-cookie|x-canaryd-version'             # anonymous: gets a canaryd_id cookie`)
  out(`  curl -si --cookie 'canaryd_id=<id from above>' ${proxy}/                  # ...and stays on its version with it`)
  out('')
  out(`Dashboard at ${admin}/ui/ (charts per version, the rollout timeline, weights and rollout actions).`)
  out(`Admin API at ${admin} (no token: loopback only). Change the weights live, watch the split:`)
  out(`  curl -s -X PUT -H 'content-type: application/json' -d '{"weights":{"stable":50,"canary":50},"reason":"demo"}' ${admin}/api/v1/routes/web/weights`)
  out(`  node dist/cli.js status --admin ${admin}`)
  out(`  node dist/cli.js top --admin ${admin}                                      # live req/s, errors, p50/p99 per version`)
  if (story !== undefined) out(`  node dist/cli.js rollout status web --admin ${admin}                       # the story's last rollout, with its checks`)
  out(`  curl -s ${admin}/metrics | grep canaryd_requests_total`)
  const stop = (): void => {
    void app.close(1000).finally(() => process.exit(0))
  }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  return story
}
