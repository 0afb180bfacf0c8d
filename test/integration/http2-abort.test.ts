/**
 * An HTTP/2 client that leaves with requests in flight (its session torn
 * down, or one stream reset) must abort those upstream requests at once, as
 * an HTTP/1.1 client closing its connection does. Found by bench/tls.js:
 * h2load -D drops its connections with streams open, and the upstream
 * requests stayed paused until the upstream's keep-alive closed them, which
 * outlier detection then counted as upstream failures and ejected a version.
 */
import { connect, constants } from 'node:http2'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { sleep, until } from '../helpers/reload.js'

/** An upstream that holds every request until told, and records when each one's client side closed. */
async function holdingUpstream (): Promise<{ origin: string, arrived: number, closedEarly: number, release: () => void, close: () => Promise<void> }> {
  const held: ServerResponse[] = []
  const state = { origin: '', arrived: 0, closedEarly: 0, release: () => {}, close: async () => {} }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    state.arrived++
    held.push(res)
    res.on('close', () => { if (!res.writableEnded) state.closedEarly++ })
    req.resume()
  })
  // a long keep-alive, as bench/upstream.js has: a stuck connection would not be cut by the upstream soon
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  state.origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  state.release = () => { for (const r of held.splice(0)) if (!r.destroyed) r.end('late') }
  state.close = async () => {
    state.release()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  return state
}

t.test('h2 session torn down with streams open: every upstream request is aborted, no ejection', async (t) => {
  const up = await holdingUpstream()
  const proxy = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])], { listen: { host: '127.0.0.1', port: 0, h2c: true } }))
  t.teardown(async () => { await proxy.close(); await up.close() })
  const session = connect(`http://127.0.0.1:${proxy.app.proxyAddress!.port}`)
  session.on('error', () => {})
  for (let i = 0; i < 10; i++) {
    const s = session.request({ ':path': `/held/${i}` })
    s.on('error', () => {})
  }
  t.ok(await until(() => up.arrived === 10, 3000), '10 requests reached the upstream')
  t.equal(proxy.app.proxy.inFlight, 10)
  session.destroy()
  t.ok(await until(() => up.closedEarly === 10, 2000), 'every upstream request was closed by canaryd once the client left')
  t.ok(await until(() => proxy.app.proxy.inFlight === 0, 2000), 'nothing left in flight')
  const states = proxy.app.proxy.endpointStates()
  t.ok(states.every((e) => e.ejected === 0), 'no endpoint ejected: a client leaving is not an upstream failure')

  // one stream reset (RST_STREAM CANCEL) aborts that request only
  const s2 = connect(`http://127.0.0.1:${proxy.app.proxyAddress!.port}`)
  s2.on('error', () => {})
  t.teardown(() => { s2.destroy() })
  const a = s2.request({ ':path': '/a' })
  const b = s2.request({ ':path': '/b' })
  a.on('error', () => {})
  let bStatus = 0
  b.on('response', (h) => { bStatus = Number(h[':status']) })
  b.resume()
  t.ok(await until(() => up.arrived === 12, 3000), 'both reached the upstream')
  a.close(constants.NGHTTP2_CANCEL)
  t.ok(await until(() => up.closedEarly === 11, 2000), 'the reset stream\'s upstream request is aborted')
  await sleep(100)
  t.equal(up.closedEarly, 11, 'the other stream\'s request is untouched')
  up.release()
  t.ok(await until(() => bStatus === 200, 2000), 'the other stream is answered')
})
