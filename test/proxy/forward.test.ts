/**
 * White-box: what undici refuses to send (here a header value with a line
 * feed, which Node's parser never lets through, so only a direct call can
 * produce it) becomes a 400 answer, never an exception. undici 7 reports this
 * one through onError (UND_ERR_INVALID_ARG); `dispatch` also catches a
 * synchronous throw, the form older undici versions used.
 */
import { createServer } from 'node:http'
import { performance } from 'node:perf_hooks'
import t from 'tap'
import { createLogger } from '../../src/logger.js'
import { NOOP_OBSERVERS } from '../../src/metrics/observer.js'
import { ForwardHandler, type VersionRuntime } from '../../src/proxy/forward.js'
import { RouteHealth } from '../../src/upstream/health.js'
import { Upstreams } from '../../src/upstream/pools.js'
import { send } from '../helpers/http.js'
import { startUpstream } from '../helpers/upstream.js'

t.test('undici refusing a header → 400, no exception, upstream untouched', async (t) => {
  const up = await startUpstream('stable')
  const upstreams = new Upstreams({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, bodyTimeoutMs: 1000, connections: 1, keepAliveMs: 1000 })
  const group = upstreams.group('web', 'stable', { upstream: [up.origin] }, 'k')
  upstreams.commit()
  const health = new RouteHealth([group], [0], { consecutiveFailures: 5, ejectionMs: 1000 }, Date.now)
  const rt: VersionRuntime = { route: 'web', version: 'stable', index: 0, group, health, observer: NOOP_OBSERVERS.bind('web', 'stable') }
  let threw: unknown
  const server = createServer((req, res) => {
    const handler = new ForwardHandler(req, res, rt, group.all[0]!, 0, '', performance.now(), { log: createLogger('silent'), retries: 1, clientSendMs: 0, clientBodyMs: 0, largeBodyBytes: 0, done: () => {}, draining: false })
    try {
      handler.forward('/', ['x-bad', 'a\nb'], undefined, false)
    } catch (err) {
      threw = err
      res.end()
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.close(); await upstreams.close(); await up.close() })
  const r = await send(`http://127.0.0.1:${(server.address() as { port: number }).port}/`)
  t.equal(threw, undefined, 'dispatch did not throw')
  t.equal(r.status, 400)
  t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_BAD_REQUEST')
  t.equal(up.seen.length, 0, 'nothing reached the upstream')
})
