// Metrics cost: the same canaryd with Prometheus metrics on and off, driven by
// autocannon in the same run, alternating, median of N runs. Run after `npm run build`:
//   node bench/metrics-cost.js [--runs 3] [--duration 5] [--connections 50]
// Prints req/s for each and the ratio on/off (target: ≥ 0.95, i.e. metrics cost ≤ 5 %).
import { createServer } from 'node:http'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { App } from '../dist/app.js'
import { configFromObject } from '../dist/config/load.js'
import { createLogger } from '../dist/logger.js'

const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' }, duration: { type: 'string', default: '5' }, connections: { type: 'string', default: '50' } } })
const runs = Number(values.runs)
const duration = Number(values.duration)
const connections = Number(values.connections)

const body = Buffer.from('{"ok":true}')
const upstream = createServer((req, res) => {
  req.resume()
  req.on('end', () => res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length }).end(body))
})
upstream.keepAliveTimeout = 30_000
await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve))
const origin = `http://127.0.0.1:${upstream.address().port}`

function config () {
  return configFromObject({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: '' },
    state: { file: join(mkdtempSync(join(tmpdir(), 'canaryd-bench-')), 'state.json') },
    routes: [{
      name: 'web',
      sticky: { keys: ['header:x-user-id'] },
      versions: [{ name: 'stable', upstream: origin, weight: 50 }, { name: 'canary', upstream: origin, weight: 50 }]
    }]
  }, '(bench)', {})
}

const logger = createLogger('silent')
const apps = { on: new App(config(), { logger, metrics: true }), off: new App(config(), { logger, metrics: false }) }
for (const app of Object.values(apps)) await app.start()

// 1,000 users: each request carries one of 1,000 rotating x-user-id values
const users = Array.from({ length: 1000 }, (_, i) => `user-${i}`)
async function once (app) {
  let n = 0
  const r = await autocannon({
    url: `http://127.0.0.1:${app.proxyAddress.port}/bench`,
    connections,
    duration,
    requests: [{ setupRequest: (req) => { req.headers = { ...req.headers, 'x-user-id': users[n++ % users.length] }; return req } }]
  })
  if (r.non2xx !== 0 || r.errors !== 0) throw new Error(`non-2xx ${r.non2xx}, errors ${r.errors}`)
  return r.requests.average
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const results = { on: [], off: [] }
await once(apps.on); await once(apps.off) // warm-up (JIT, pools), not counted
for (let i = 0; i < runs; i++) {
  // alternate the order so drift of the machine does not favour one side
  const order = i % 2 === 0 ? ['on', 'off'] : ['off', 'on']
  for (const k of order) results[k].push(await once(apps[k]))
  console.log(`run ${i + 1}: on ${results.on.at(-1).toFixed(0)} req/s, off ${results.off.at(-1).toFixed(0)} req/s`)
}
const on = median(results.on)
const off = median(results.off)
console.log(JSON.stringify({ node: process.version, runs, duration, connections, metricsOn: Math.round(on), metricsOff: Math.round(off), ratio: Number((on / off).toFixed(3)), costPercent: Number(((1 - on / off) * 100).toFixed(1)) }))

for (const app of Object.values(apps)) await app.close(1000)
upstream.closeAllConnections()
upstream.close()
