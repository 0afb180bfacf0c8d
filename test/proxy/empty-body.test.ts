/**
 * A chunked request whose body is empty (`0\r\n\r\n`, or `000\r\n\r\n`)
 * arrives whole with its head: its stream has ended before anything reads
 * it. Found by the differential corpus: it used to hang until the body
 * timeout. It must be forwarded at once with an empty body, on its own and
 * with a request pipelined behind it.
 */
import t from 'tap'
import { rawRequest } from '../hardening/raw.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startWireUpstream } from '../helpers/wire.js'

t.test('empty chunked bodies are forwarded at once, empty', async (t) => {
  const up = await startWireUpstream()
  t.teardown(up.close)
  const p = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])]))
  t.teardown(p.close)
  const port = Number(new URL(p.url).port)
  for (const last of ['0', '000']) {
    const before = up.requests.length
    const head = `POST /empty-${last} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n${last}\r\n\r\n`
    const r = await rawRequest(port, [head + 'GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n'], { waitMs: 3000 })
    const statuses = [...r.text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1])
    t.same(statuses, ['200', '200'], `${last}: both answered 200`)
    const got = up.requests.slice(before)
    t.same(got.map((q) => `${q.method} ${q.url} ${q.body.length}`), [`POST /empty-${last} 0`, 'GET /after 0'], `${last}: the upstream got the empty POST, then the GET`)
  }
})
