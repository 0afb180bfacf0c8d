// canaryd as a benchmark target, built from dist/: the same App `canaryd serve`
// runs, with metrics on or off (argv[3] = "nometrics") so their cost is measured
// in the same run.
import { App } from '../../dist/app.js'
import { loadConfig } from '../../dist/config/load.js'
import { createLogger } from '../../dist/logger.js'

const config = loadConfig(process.argv[2], {})
const app = new App(config, { logger: createLogger('warn'), metrics: process.argv[3] !== 'nometrics' })
await app.start()
process.send?.({ ready: app.proxyAddress.port })
process.on('SIGTERM', () => { void app.close(1000).then(() => process.exit(0)) })
