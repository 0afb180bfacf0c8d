// Peer (opt-in: `--targets …,http-bare`): the bare minimum forwarder on the
// core http client — node:http in front, http.request with a keep-alive Agent
// behind, bodies piped both ways. It isolates the client stack from
// http-proxy's own work, for the upload path comparison in bench/README.md.
import { Agent, createServer, request } from 'node:http'

const [port, target] = [Number(process.argv[2]), new URL(process.argv[3])]
const agent = new Agent({ keepAlive: true, maxSockets: 128 })
createServer((req, res) => {
  const up = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent }, (ur) => {
    const h = []
    for (let i = 0; i < ur.rawHeaders.length; i += 2) {
      const n = ur.rawHeaders[i].toLowerCase()
      if (n !== 'connection' && n !== 'keep-alive' && n !== 'transfer-encoding') h.push(ur.rawHeaders[i], ur.rawHeaders[i + 1])
    }
    res.writeHead(ur.statusCode ?? 502, h)
    ur.pipe(res)
  })
  up.on('error', () => { if (!res.headersSent) { res.writeHead(502); res.end() } else res.destroy() })
  req.pipe(up)
}).listen(port, '127.0.0.1', () => process.send?.({ ready: port }))
