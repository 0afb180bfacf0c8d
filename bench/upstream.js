// Benchmark upstream: answers every request with a small fixed body, drains
// request bodies, listens on the ports given (one process serves "stable" and
// "canary" so every target forwards to the same server).
import { createServer } from 'node:http'

const ports = process.argv.slice(2).map(Number)
const body = Buffer.from('{"ok":true}')
// requests answered per port, sent on request over IPC (bench/endpoints.js measures the spread)
const counts = Object.fromEntries(ports.map((p) => [p, 0]))
process.on('message', (m) => { if (m === 'counts') process.send?.({ counts }) })
for (const port of ports) {
  const server = createServer((req, res) => {
    counts[port]++
    req.on('data', () => {})
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
      res.end(body)
    })
  })
  server.keepAliveTimeout = 65_000
  server.listen(port, '127.0.0.1', () => process.send?.({ ready: port }))
}
