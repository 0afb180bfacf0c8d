// Peer: the plain http-proxy forwarder most Node users reach for first.
import { createServer, Agent } from 'node:http'
import httpProxy from 'http-proxy'

const [port, target] = [Number(process.argv[2]), process.argv[3]]
const proxy = httpProxy.createProxyServer({ target, agent: new Agent({ keepAlive: true, maxSockets: 128 }), xfwd: true })
proxy.on('error', (err, req, res) => { res.writeHead?.(502); res.end(String(err)) })
createServer((req, res) => proxy.web(req, res)).listen(port, '127.0.0.1', () => process.send?.({ ready: port }))
