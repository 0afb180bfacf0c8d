/**
 * Graceful drain of the real CLI (`node dist/cli.js serve`, run `npm run build`
 * first): SIGTERM/SIGINT turn /readyz 503, stop the listener, close idle
 * keep-alive connections, let in-flight requests finish, exit 0; a second
 * signal exits at once.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { connect } from 'node:net'
import t, { type Test } from 'tap'
import { CLI, loopbackConfigFile } from '../helpers/cli.js'
import { send } from '../helpers/http.js'
import { startUpstream } from '../helpers/upstream.js'
import { waitFor } from './raw.js'

interface Running { child: ChildProcess; proxy: string; admin: string; exit: Promise<{ code: number | null; ms: number }>; killedAt: () => number }

async function serve (t: Test, upstream: string, drainMs: number): Promise<Running> {
  const file = loopbackConfigFile(upstream, { timeouts: { drainTimeoutMs: drainMs, clientIdleMs: 30_000 } })
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { env: { ...process.env, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let killed = 0
  const exit = new Promise<{ code: number | null; ms: number }>((resolve) => child.on('exit', (code) => resolve({ code, ms: Date.now() - killed })))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const started = await new Promise<{ proxy: string; admin: string }>((resolve, reject) => {
    let buf = ''
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString()
      for (const line of buf.split('\n')) {
        if (!line.includes('canaryd started')) continue
        const j = JSON.parse(line) as { proxy: string; admin: string }
        resolve({ proxy: `http://${j.proxy}`, admin: `http://${j.admin}` })
      }
    })
    child.on('exit', (code) => reject(new Error(`exited ${code}`)))
  })
  const origKill = child.kill.bind(child)
  child.kill = (sig?: NodeJS.Signals | number) => { killed = Date.now(); return origKill(sig) }
  return { child, ...started, exit, killedAt: () => killed }
}

async function refused (url: string): Promise<boolean> {
  const u = new URL(url)
  return await new Promise((resolve) => {
    const s = connect(Number(u.port), u.hostname)
    s.on('connect', () => { s.destroy(); resolve(false) })
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'))
  })
}

t.test('SIGTERM: readyz 503, listener closed, idle keep-alive closed, in-flight finishes, exit 0', async (t) => {
  const slow = await startUpstream('stable', (req, res) => {
    if (req.url === '/fast') res.end('fast')
    else setTimeout(() => res.end('slow done'), 1500)
  })
  t.teardown(slow.close)
  const app = await serve(t, slow.origin, 10_000)
  t.equal((await send(`${app.admin}/readyz`)).status, 200, 'ready before')

  // an idle keep-alive client connection
  const u = new URL(app.proxy)
  const idle = connect(Number(u.port), u.hostname)
  let idleClosed = false
  idle.on('close', () => { idleClosed = true })
  idle.on('error', () => {})
  await new Promise<void>((resolve) => idle.once('connect', () => resolve()))
  idle.write('GET /fast HTTP/1.1\r\nHost: a\r\n\r\n')
  await new Promise<void>((resolve) => idle.once('data', () => resolve()))

  // the in-flight request comes on a keep-alive connection: its answer must close it
  const kept = connect(Number(u.port), u.hostname)
  kept.on('error', () => {})
  let keptText = ''
  kept.on('data', (d: Buffer) => { keptText += d.toString('latin1') })
  const keptClosed = new Promise<void>((resolve) => kept.once('close', () => resolve()))
  kept.write('GET /slow HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n')
  await waitFor(() => slow.seen.some((s) => s.url === '/slow'))
  app.child.kill('SIGTERM')
  await waitFor(async () => (await send(`${app.admin}/readyz`)).status === 503, { intervalMs: 20 })
  t.pass('/readyz is 503 while draining')
  await waitFor(async () => await refused(app.proxy), { intervalMs: 20 })
  t.pass('the proxy listener no longer accepts')
  await waitFor(() => idleClosed, { intervalMs: 20 })
  t.pass('the idle keep-alive connection was closed')
  t.equal(app.child.exitCode, null, 'still running: the in-flight request is not done')
  await keptClosed
  t.match(keptText, /^HTTP\/1\.1 200 /, 'the in-flight request finished')
  t.match(keptText, /\r\nconnection: close\r\n/i, 'its answer carries Connection: close (the drain began while it was in flight)')
  t.match(keptText, /slow done$/, 'with its whole body')
  const { code } = await app.exit
  t.equal(code, 0, 'exit 0')
})

t.test('SIGINT then a second signal: exits at once', async (t) => {
  const stuck = await startUpstream('stable', (_req, res) => { setTimeout(() => res.end('late'), 20_000).unref() })
  t.teardown(stuck.close)
  const app = await serve(t, stuck.origin, 30_000)
  const inFlight = send(`${app.proxy}/stuck`).catch((e: Error) => e)
  await waitFor(() => stuck.seen.some((s) => s.url === '/stuck'))
  app.child.kill('SIGINT')
  // the first signal took effect (draining: /readyz 503) and the process did not exit
  await waitFor(async () => (await send(`${app.admin}/readyz`)).status === 503, { intervalMs: 20 })
  t.equal(app.child.exitCode, null, 'still draining after the first signal')
  app.child.kill('SIGTERM')
  const { ms } = await app.exit
  t.ok(ms < 3000, `exited ${ms} ms after the second signal, not after drainMs`)
  t.ok((await inFlight) instanceof Error, 'the stuck request was cut')
})
