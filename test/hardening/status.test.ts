import { createServer, type Socket } from 'node:net'
import t from 'tap'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'

// Status lines undici parses but an HTTP/1.1 client must never see: a clean 502, never a hang.
const cases: Array<[string, string, number]> = [
  ['status below 100', 'HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok', 502],
  ['status 000', 'HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok', 502],
  ['103 Early Hints then 200', 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 200]
]

for (const [name, reply, status] of cases) {
  t.test(name, async (t) => {
    const sockets = new Set<Socket>()
    const up = createServer((s) => {
      sockets.add(s)
      s.on('error', () => {})
      s.once('data', () => s.write(reply))
    })
    await new Promise<void>((resolve) => up.listen(0, '127.0.0.1', resolve))
    const origin = `http://127.0.0.1:${(up.address() as { port: number }).port}`
    const proxy = await startProxy(testConfig([twoVersionRoute(origin, origin, [50, 50])], { timeouts: { upstreamResponseMs: 2000 } }))
    t.teardown(async () => { await proxy.close(); for (const s of sockets) s.destroy(); up.close() })
    const started = Date.now()
    const r = await send(`${proxy.url}/`)
    t.equal(r.status, status)
    if (status === 502) t.equal(r.json<{ error: { code: string } }>().error.code, 'CANARYD_ERR_UPSTREAM_PROTOCOL')
    else t.equal(r.body.toString(), 'ok')
    t.ok(Date.now() - started < 1500, 'answered without waiting for a timeout')
  })
}
