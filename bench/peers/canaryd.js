// canaryd as a benchmark target, built from dist/: the same App `canaryd serve`
// runs, with metrics on or off (argv[3] = "nometrics") so their cost is measured
// in the same run; argv[3] = "watched" also keeps the dashboard's event stream
// open (read and dropped here: a browser elsewhere would parse it).
import { App } from '../../dist/app.js'
import { loadConfig } from '../../dist/config/load.js'
import { createLogger } from '../../dist/logger.js'

const config = loadConfig(process.argv[2], {})
const app = new App(config, { logger: createLogger('warn'), metrics: process.argv[3] !== 'nometrics' })
await app.start()
if (process.argv[3] === 'watched') {
  const res = await fetch(`http://127.0.0.1:${app.adminAddress.port}/api/v1/events`)
  if (res.status !== 200) throw new Error(`GET /api/v1/events answered ${res.status}`)
  const reader = res.body.getReader()
  void (async () => { for (;;) if ((await reader.read()).done) break })().catch(() => {})
}
process.send?.({ ready: app.proxyAddress.port })
process.on('SIGTERM', () => { void app.close(1000).then(() => process.exit(0)) })
