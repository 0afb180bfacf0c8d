// What the dashboard's event feed costs the process it watches: CPU per second
// with no stream open and with one open, for N routes of two versions each (the
// sampler reads the metric families once a second, only while a stream is open;
// nothing on the request path). Run after `npm run build`:
//   node bench/feed-cost.js [--routes 1,20,100] [--seconds 10]
// Prints, per route count, the CPU ms per second idle and watched, their
// difference (the sampler's cost per second) and the bytes of one sample event.
import { parseArgs } from 'node:util'
import { App } from '../dist/app.js'
import { configFromObject } from '../dist/config/load.js'
import { createLogger } from '../dist/logger.js'

const { values } = parseArgs({ options: { routes: { type: 'string', default: '1,20,100' }, seconds: { type: 'string', default: '10' } } })
const seconds = Number(values.seconds)
const cpuMs = async (ms) => {
  const c0 = process.cpuUsage()
  await new Promise((resolve) => setTimeout(resolve, ms))
  const c = process.cpuUsage(c0)
  return (c.user + c.system) / 1000
}

console.log('| routes | idle CPU ms/s | watched CPU ms/s | sampler ms/s | bytes/sample |')
console.log('|---:|---:|---:|---:|---:|')
for (const n of values.routes.split(',').map(Number)) {
  const routes = Array.from({ length: n }, (_, i) => ({
    name: `r${i}`,
    match: { pathPrefix: `/r${i}/` },
    versions: [{ name: 'stable', upstream: 'http://127.0.0.1:9', weight: 90 }, { name: 'canary', upstream: 'http://127.0.0.1:9', weight: 10 }]
  }))
  const config = configFromObject({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, state: { file: '' }, routes }, '(bench)', {})
  const app = new App(config, { logger: createLogger('warn'), metrics: true })
  await app.start()
  await cpuMs(1000)
  const idle = await cpuMs(seconds * 1000)
  const res = await fetch(`http://127.0.0.1:${app.adminAddress.port}/api/v1/events`)
  const reader = res.body.getReader()
  let bytes = 0
  void (async () => { for (;;) { const r = await reader.read(); if (r.done) break; bytes += r.value.length } })().catch(() => {})
  await new Promise((resolve) => setTimeout(resolve, 2000))
  const from = bytes
  const watched = await cpuMs(seconds * 1000)
  const perSample = Math.round((bytes - from) / seconds)
  console.log(`| ${n} | ${(idle / seconds).toFixed(1)} | ${(watched / seconds).toFixed(1)} | ${((watched - idle) / seconds).toFixed(1)} | ${perSample} |`)
  await reader.cancel().catch(() => {})
  await app.close(500)
}
process.exit(0)
