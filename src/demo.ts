import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { App } from './app.js'
import { configFromObject } from './config/load.js'
import { createLogger } from './logger.js'

/** Starts a tiny demo service that answers with its version name. */
async function startService (name: string): Promise<Server> {
  const server = createServer((req, res) => {
    const body = JSON.stringify({ version: name, path: req.url, user: req.headers['x-user-id'] ?? null })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server
}

async function listenApp (raw: Record<string, unknown>): Promise<App> {
  const logger = createLogger('warn')
  // the usual ports when free (so the printed curl lines are the documented ones), any free ports otherwise
  for (const [port, adminPort] of [[8080, 9901], [0, 0]] as const) {
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

/**
 * `canaryd demo`: a stable and a canary service on loopback, the proxy in
 * front at 90/10, 1,000 simulated users, and a report of the split and of
 * stickiness; then it keeps serving and prints curl lines to try.
 */
export async function runDemo (opts: { once: boolean }): Promise<void> {
  const stable = await startService('stable')
  const canary = await startService('canary')
  const origin = (s: Server): string => `http://127.0.0.1:${(s.address() as AddressInfo).port}`
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
  })
  const proxy = `http://127.0.0.1:${app.proxyAddress!.port}`
  const out = (s: string): void => { process.stdout.write(`${s}\n`) }
  out(`canaryd demo: stable at ${origin(stable)}, canary at ${origin(canary)}, proxy at ${proxy} (weights 90/10)`)

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

  if (opts.once) {
    await app.close(1000)
    stable.close()
    canary.close()
    return
  }
  out('')
  out('The proxy keeps serving; try (Ctrl-C to stop):')
  out(`  curl -si -H 'x-user-id: alice' ${proxy}/ | grep -i x-canaryd-version      # sticky by header: same answer every time`)
  out(`  curl -si -H 'x-canary: canary' ${proxy}/ | grep -i x-canaryd-version      # override header: forces the canary`)
  out(`  curl -si --cookie 'canary=canary' ${proxy}/ | grep -i x-canaryd-version   # override cookie`)
  out(`  curl -si ${proxy}/ | grep -iE 'set-cookie|x-canaryd-version'             # anonymous: gets a canaryd_id cookie`)
  out(`  curl -si --cookie 'canaryd_id=<id from above>' ${proxy}/                  # ...and stays on its version with it`)
  const admin = `http://127.0.0.1:${app.adminAddress!.port}`
  out('')
  out(`Admin API at ${admin} (no token: loopback only). Change the weights live, watch the split:`)
  out(`  curl -s -X PUT -H 'content-type: application/json' -d '{"weights":{"stable":50,"canary":50},"reason":"demo"}' ${admin}/api/v1/routes/web/weights`)
  out(`  node dist/cli.js status --admin ${admin}`)
  out(`  node dist/cli.js top --admin ${admin}                                      # live req/s, errors, p50/p99 per version`)
  out(`  curl -s ${admin}/metrics | grep canaryd_requests_total`)
  const stop = (): void => {
    void app.close(1000).finally(() => process.exit(0))
  }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
}
