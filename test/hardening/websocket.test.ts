/**
 * WebSocket through the proxy: same sticky pick as plain requests, bytes both
 * ways, a close on either side closes the other, no 101 unless the upstream
 * really switched protocols.
 */
import { createHash } from 'node:crypto'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { connect, type Socket } from 'node:net'
import t from 'tap'
import { WebSocket } from 'undici'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { rawRequest, sleep, waitFor } from './raw.js'

/** A minimal WebSocket echo server (text frames under 126 bytes), written on node:http's upgrade event. */
async function wsUpstream (name: string, opts: { refuse?: boolean } = {}): Promise<{ origin: string; seen: IncomingHttpHeaders[]; sockets: Set<Socket>; close: () => Promise<void> }> {
  const seen: IncomingHttpHeaders[] = []
  const sockets = new Set<Socket>()
  const server = createServer((_req, res) => { res.end('plain') })
  server.on('upgrade', (req, socket: Socket) => {
    seen.push(req.headers)
    if (opts.refuse === true) {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno')
      return
    }
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    const accept = createHash('sha1').update(`${String(req.headers['sec-websocket-key'])}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
    socket.on('data', (d: Buffer) => {
      const op = d[0]! & 0x0f
      const len = d[1]! & 0x7f
      const mask = d.subarray(2, 6)
      const payload = Buffer.from(d.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]!))
      if (op === 8) { socket.end(Buffer.from([0x88, 0])); return }
      const text = `${name}:${payload.toString()}`
      socket.write(Buffer.concat([Buffer.from([0x81, Buffer.byteLength(text)]), Buffer.from(text)]))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    origin: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    seen,
    sockets,
    close: async () => {
      for (const s of sockets) s.destroy()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

async function open (url: string, headers: Record<string, string>): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers } as unknown as string[])
  await new Promise<void>((resolve, reject) => {
    ws.addEventListener('open', () => resolve())
    ws.addEventListener('error', () => reject(new Error('websocket error')))
  })
  return ws
}

async function next (ws: WebSocket): Promise<string> {
  return await new Promise((resolve) => ws.addEventListener('message', (e) => resolve(String(e.data)), { once: true }))
}

t.test('WebSocket follows the sticky pick, echoes both ways, closes both ways', async (t) => {
  const stable = await wsUpstream('stable')
  const canary = await wsUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute(stable.origin, canary.origin, [50, 50])]))
  t.teardown(async () => { await proxy.close(); await stable.close(); await canary.close() })
  const wsUrl = proxy.url.replace('http:', 'ws:')

  for (const user of ['alice', 'bob', 'carol', 'dave']) {
    const plain = await send(`${proxy.url}/`, { headers: { 'x-user-id': user } })
    const want = String(plain.headers['x-canaryd-version'])
    const ws = await open(`${wsUrl}/chat`, { 'x-user-id': user })
    ws.send(`hi ${user}`)
    t.equal(await next(ws), `${want}:hi ${user}`, `${user}: same version (${want}) as plain requests, bytes both ways`)
    const up = want === 'stable' ? stable : canary
    t.equal(up.seen[up.seen.length - 1]!['x-canaryd-version'], want)
    // client closes → upstream socket closes
    const before = up.sockets.size
    ws.close()
    for (let i = 0; i < 40 && up.sockets.size >= before; i++) await sleep(25)
    t.equal(up.sockets.size, before - 1, 'client close closed the upstream side')
  }

  // upstream closes → client sees close
  const ws = await open(`${wsUrl}/chat`, { 'x-canary': 'canary' })
  const closed = new Promise<void>((resolve) => ws.addEventListener('close', () => resolve()))
  for (const s of canary.sockets) s.destroy()
  await closed
  t.pass('upstream close closed the client side')
  await waitFor(async () => /canaryd_websocket_connections_open\{route="web",version="canary"\} 0\b/.test(await proxy.app.metrics!.registry.metrics()))
  const text = await proxy.app.metrics!.registry.metrics()
  const stableWs = /canaryd_websocket_connections_total\{route="web",version="stable"\} (\d+)/.exec(text)
  const canaryWs = /canaryd_websocket_connections_total\{route="web",version="canary"\} (\d+)/.exec(text)
  t.equal(Number(stableWs?.[1]) + Number(canaryWs?.[1]), 5, 'WebSockets counted per version')
  t.match(text, /canaryd_websocket_connections_open\{route="web",version="canary"\} 0/, 'none open any more')
  t.equal((await send(`${proxy.url}/`)).status, 200, 'plain traffic unaffected')
})

t.test('no 101 to the client unless the upstream really upgrades', async (t) => {
  const refusing = await wsUpstream('stable', { refuse: true })
  const proxy = await startProxy(testConfig([twoVersionRoute(refusing.origin, refusing.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await refusing.close() })
  const r = await rawRequest(proxy.app.proxyAddress!.port, ['GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'])
  t.equal(r.status, 403)
  t.notMatch(r.text, /101/)
  t.equal(refusing.seen.length, 1)
  t.match(await proxy.app.metrics!.registry.metrics(), /canaryd_websocket_connections_total\{route="web",version="stable"\} 0\b/, 'a refused upgrade is not counted: only a 101 is')
})

/** Sends a raw upgrade request and resolves with what arrived once a full response head is in (the socket stays open). */
async function rawUpgrade (port: number, head: string): Promise<{ text: string; close: () => void }> {
  return await new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => { s.write(head) })
    let text = ''
    s.on('error', reject)
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1')
      if (text.includes('\r\n\r\n')) resolve({ text, close: () => { s.destroy() } })
    })
  })
}

t.test('the WebSocket request is sanitised like a plain one', async (t) => {
  const up = await wsUpstream('stable')
  const proxy = await startProxy(testConfig([twoVersionRoute(up.origin, up.origin, [100, 0])]))
  t.teardown(async () => { await proxy.close(); await up.close() })
  const port = proxy.app.proxyAddress!.port
  const ws = ['Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Protocol: chat', 'Upgrade: websocket']
  const first = await rawUpgrade(port, ['GET /chat?x=1 HTTP/1.1', 'Host: app.test', 'Connection: Upgrade, X-Secret', 'X-Secret: s3cret', 'Keep-Alive: timeout=5',
    'TE: trailers', 'Proxy-Connection: keep-alive', 'X-Forwarded-For: 203.0.113.7', 'X-Forwarded-For: 198.51.100.1', 'X_Tenant: t', 'x-canaryd-version: forged', ...ws, '', ''].join('\r\n'))
  t.teardown(first.close)
  t.match(first.text, /^HTTP\/1\.1 101/)
  const h = up.seen[0]!
  for (const gone of ['x-secret', 'keep-alive', 'te', 'proxy-connection', 'x_tenant']) t.equal(h[gone], undefined, `${gone} not forwarded`)
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'an untrusted client\'s X-Forwarded-For chain is replaced by its address')
  t.equal(h['x-forwarded-proto'], 'http', 'X-Forwarded-Proto is the scheme the client used, not ws')
  t.equal(h['x-forwarded-host'], 'app.test')
  t.equal(h['x-canaryd-version'], 'stable', 'the proxy sets x-canaryd-version, the client cannot')
  t.equal(h.host, 'app.test', 'Host preserved')
  t.equal(h.upgrade, 'websocket')
  t.equal(h.connection, 'Upgrade')
  t.equal(h['sec-websocket-key'], 'dGhlIHNhbXBsZSBub25jZQ==')
  t.equal(h['sec-websocket-protocol'], 'chat')
  // a client outside trustedProxies cannot claim another scheme or host
  const second = await rawUpgrade(port, ['GET /chat HTTP/1.1', 'Host: app.test', 'Connection: Upgrade', 'X-Forwarded-Proto: https', 'X-Forwarded-Host: shop.example', ...ws, '', ''].join('\r\n'))
  t.teardown(second.close)
  t.equal(up.seen[1]!['x-forwarded-proto'], 'http', 'an untrusted X-Forwarded-Proto is replaced')
  t.equal(up.seen[1]!['x-forwarded-host'], 'app.test', 'an untrusted X-Forwarded-Host is replaced by the Host')
  await waitFor(async () => /canaryd_websocket_connections_open\{route="web",version="stable"\} 2\b/.test(await proxy.app.metrics!.registry.metrics()))
  t.pass('both counted as open once the upstream answered 101')
})

t.test('WebSocket to an unreachable upstream → 502, proxy keeps serving', async (t) => {
  const ok = await wsUpstream('canary')
  const proxy = await startProxy(testConfig([twoVersionRoute('http://127.0.0.1:1', ok.origin, [50, 50])]))
  t.teardown(async () => { await proxy.close(); await ok.close() })
  const r = await rawRequest(proxy.app.proxyAddress!.port, ['GET /chat HTTP/1.1\r\nHost: a\r\nx-canary: stable\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'])
  t.equal(r.status, 502)
  const ws = await open(`${proxy.url.replace('http:', 'ws:')}/`, { 'x-canary': 'canary' })
  ws.send('x')
  t.equal(await next(ws), 'canary:x')
  ws.close()
})
