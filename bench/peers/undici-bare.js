// Peer: the bare minimum forwarder on the same stack as canaryd — node:http in
// front, undici Pool.dispatch with a raw handler behind — with no routing,
// stickiness, metrics or header hygiene. canaryd's features are measured
// against this.
import { createServer } from 'node:http'
import { Pool } from 'undici'

const [port, target] = [Number(process.argv[2]), process.argv[3]]
const pool = new Pool(target, { connections: 128, pipelining: 1 })
createServer((req, res) => {
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
  pool.dispatch({ path: req.url, method: req.method, headers: req.headers['content-length'] !== undefined ? ['content-length', req.headers['content-length'], 'host', req.headers.host ?? ''] : ['host', req.headers.host ?? ''], body: hasBody ? req : null }, {
    onConnect () {},
    onHeaders (status, raw, resume) {
      const h = []
      for (let i = 0; i < raw.length; i += 2) {
        const n = raw[i].toString('latin1')
        if (n.toLowerCase() === 'connection' || n.toLowerCase() === 'keep-alive' || n.toLowerCase() === 'transfer-encoding') continue
        h.push(n, raw[i + 1].toString('latin1'))
      }
      res.writeHead(status, h)
      res.on('drain', resume)
      return true
    },
    onData (chunk) { return res.write(chunk) },
    onComplete () { res.end() },
    onError (err) { if (!res.headersSent) { res.writeHead(502); res.end(String(err)) } else res.destroy() }
  })
}).listen(port, '127.0.0.1', () => process.send?.({ ready: port }))
