import { copyFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { request as httpsRequest } from 'node:https'
import { join } from 'node:path'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { lazyPki, opensslSkip, type CertPair } from '../helpers/certs.js'
import { ensureBuilt } from '../helpers/cli.js'
import { twoVersionRoute } from '../helpers/proxy.js'
import { configDir, rawConfig, serve, sleep, until, writeConfig, type Served } from '../helpers/reload.js'
import { startUpstreams } from '../helpers/upstream.js'

// Issue 14, black-box through the built CLI: TLS on the listener of
// `serve --workers 2` (certificates read by the primary and sent to the
// workers, session ticket keys shared so a session resumes on any worker,
// SIGHUP reloads reaching every worker), and `serve --watch` reloading the
// certificate files it was started with (atomic rename and in-place writes).

/** One CA and two leaves told apart by their first name; both cover localhost and 127.0.0.1. */
const pki = lazyPki('canaryd-tls-cluster', {
  ra: { cn: 'reload-a.test', dns: ['reload-a.test', 'localhost'], ip: ['127.0.0.1'] },
  rb: { cn: 'reload-b.test', dns: ['reload-b.test', 'localhost'], ip: ['127.0.0.1'] }
}, (fn) => { t.teardown(fn) })

const A = /reload-a\.test/
const B = /reload-b\.test/

/** What one connection gave: TLS facts and the HTTP status of one GET on it. */
interface Exchange {
  san: string
  version: string | null
  reused: boolean
  status: number
  /** The first session (ticket) the server sent on this connection. */
  session: Buffer | undefined
}

/**
 * One new TLS connection to 127.0.0.1:`port` (test CA trusted, SNI
 * localhost, http/1.1), optionally resuming `session`, carrying one
 * `GET path` with `Connection: close`; read to the end. Bounded at 5 s.
 */
async function exchange (port: number, path: string, o: { session?: Buffer | undefined, maxVersion?: 'TLSv1.2' | 'TLSv1.3' } = {}): Promise<Exchange> {
  return await new Promise<Exchange>((resolve, reject) => {
    const s: TLSSocket = tlsConnect({
      host: '127.0.0.1',
      port,
      ca: pki().ca.cert,
      servername: 'localhost',
      ALPNProtocols: ['http/1.1'],
      ...(o.session === undefined ? {} : { session: o.session }),
      ...(o.maxVersion === undefined ? {} : { maxVersion: o.maxVersion })
    })
    let session: Buffer | undefined
    let san = ''
    let version: string | null = null
    let reused = false
    let raw = ''
    const timer = setTimeout(() => { s.destroy(); reject(new Error('exchange timed out')) }, 5000)
    s.on('session', (sess: Buffer) => { session ??= sess })
    s.once('secureConnect', () => {
      san = s.getPeerCertificate().subjectaltname ?? ''
      version = s.getProtocol()
      reused = s.isSessionReused()
      s.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`)
    })
    s.setEncoding('utf8')
    s.on('data', (c: string) => { if (raw.length < 1_000_000) raw += c })
    s.on('error', (err) => { clearTimeout(timer); reject(err) })
    s.on('close', () => {
      clearTimeout(timer)
      const m = /^HTTP\/1\.1 (\d{3}) /.exec(raw)
      if (m === null) {
        reject(new Error(`no HTTP answer (${JSON.stringify(raw.slice(0, 200))})`))
        return
      }
      resolve({ san, version, reused, status: Number(m[1]), session })
    })
  })
}

/** One TLS handshake only (no request): the served certificate's subjectAltName ('' on failure). Bounded at 5 s. */
async function sanOf (port: number): Promise<string> {
  return await new Promise<string>((resolve) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca: pki().ca.cert, servername: 'localhost' })
    const timer = setTimeout(() => { s.destroy(); resolve('') }, 5000)
    s.once('secureConnect', () => { clearTimeout(timer); const san = s.getPeerCertificate().subjectaltname ?? ''; s.destroy(); resolve(san) })
    s.on('error', () => { clearTimeout(timer); resolve('') })
  })
}

/** `n` handshakes in parallel: their SANs. */
async function sans (port: number, n: number): Promise<string[]> {
  return await Promise.all(Array.from({ length: n }, async () => await sanOf(port)))
}

/** One GET over node:https on a new connection (agent: false), bounded at 5 s: the status. */
async function httpsStatus (port: number, path: string): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path, servername: 'localhost', agent: false, ca: pki().ca.cert, timeout: 5000 }, (res) => {
      res.resume()
      res.on('end', () => { resolve(res.statusCode ?? 0) })
      res.on('error', reject)
    })
    req.on('timeout', () => { req.destroy(new Error('request timed out')) })
    req.on('error', reject)
    req.end()
  })
}

/** The JSON lines of a served process's output (stdout and stderr), from character `from` on. */
function logLines (s: Served, from = 0): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = []
  for (const l of s.log().slice(from).split('\n')) {
    if (!l.startsWith('{')) continue
    try {
      out.push(JSON.parse(l) as Record<string, unknown>)
    } catch {
      // a line cut by `from` or still being written
    }
  }
  return out
}

/** Log lines whose msg starts with `prefix`, from character `from` on. */
function msgs (s: Served, prefix: string, from = 0): Array<Record<string, unknown>> {
  return logLines(s, from).filter((l) => typeof l.msg === 'string' && l.msg.startsWith(prefix))
}

/**
 * `exchange` one connection at a time and, from the access log line each
 * request adds (waited for, at most 3 s), which process (pid) served it.
 */
async function exchangesByPid (s: Served, port: number, n: number, tag: string, session?: Buffer): Promise<Array<Exchange & { pid: number | undefined }>> {
  const out: Array<Exchange & { pid: number | undefined }> = []
  for (let i = 0; i < n; i++) {
    const before = msgs(s, 'access').length
    const e = await exchange(port, `/${tag}/${i}`, { session })
    await until(() => msgs(s, 'access').length > before, 3000, 10)
    const lines = msgs(s, 'access')
    out.push({ ...e, pid: lines.length > before ? lines.at(-1)!.pid as number : undefined })
  }
  return out
}

/** The port of a `serve` process's proxy URL. */
function portOf (s: Served): number {
  return Number(/:(\d+)$/.exec(s.proxy)?.[1])
}

/** Whether a process is running. */
function alive (pid: number | undefined): boolean {
  if (pid === undefined) return false
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * A config dir whose live cert/key files start as `first`, and `canaryd serve`
 * on it with `args`, the access log on; everything removed and killed in teardown.
 */
async function serveTls (t: Test, first: CertPair, args: string[]): Promise<{ s: Served, port: number, live: { cert: string, key: string }, dir: string }> {
  ensureBuilt()
  const u = await startUpstreams(t, ['stable', 'canary'])
  const d = configDir()
  t.teardown(() => { rmSync(d.dir, { recursive: true, force: true }) })
  const live = { cert: join(d.dir, 'live.pem'), key: join(d.dir, 'live-key.pem') }
  copyFileSync(first.certPath, live.cert)
  copyFileSync(first.keyPath, live.key)
  writeConfig(d.file, rawConfig(d.stateFile, [twoVersionRoute(u.stable!.origin, u.canary!.origin, [100, 0])], {
    listen: { host: '127.0.0.1', port: 0, tls: { certFile: live.cert, keyFile: live.key } },
    log: { access: true }
  }))
  const s = await serve(d.file, args)
  // SIGKILL to the primary only: its workers see the IPC channel close and drain (5 s at most), then exit
  t.teardown(async () => {
    const workers = s.workers
    s.kill()
    await s.exited
    await until(() => workers.every((w) => !alive(w)), 8000, 50)
    for (const w of workers) if (alive(w)) process.kill(w, 'SIGKILL')
  })
  return { s, port: portOf(s), live, dir: d.dir }
}

t.test('serve --workers 2 with listen.tls: https on every worker; a TLS 1.3 session resumes on both workers', { skip: opensslSkip }, async (t) => {
  const { s, port } = await serveTls(t, pki().ra, ['--workers', '2'])
  t.equal(s.workers.length, 2, `two workers (${s.workers.join(', ')})`)

  // 20 fresh connections, node:https, in parallel: all 200, served by both workers
  const mark = s.log().length
  const statuses = await Promise.all(Array.from({ length: 20 }, async (_, i) => await httpsStatus(port, `/fresh/${i}`)))
  t.same(statuses, Array(20).fill(200), '20 fresh https connections: all 200')
  t.ok(await until(() => msgs(s, 'access', mark).length >= 20, 3000), 'their 20 access lines are logged')
  const freshPids = new Set(msgs(s, 'access', mark).map((l) => l.pid))
  t.same([...freshPids].sort(), [...s.workers].sort(), `the fresh connections were served by both workers (${[...freshPids].join(', ')})`)

  // a TLS 1.3 session from one connection...
  const first = await exchangesByPid(s, port, 1, 'ticket')
  const origin = first[0]!
  t.equal(origin.version, 'TLSv1.3')
  t.equal(origin.reused, false, 'the first connection is a full handshake')
  t.ok(origin.session, 'the server sent a session ticket')
  t.ok(origin.pid !== undefined && s.workers.includes(origin.pid), `the ticket was issued by worker pid ${origin.pid}`)

  // ...resumes on 20 new connections, whichever worker takes each
  const resumed = await exchangesByPid(s, port, 20, 'resumed', origin.session)
  t.same(resumed.map((r) => r.status), Array(20).fill(200), 'all 20 resumed connections: 200')
  const notReused = resumed.filter((r) => !r.reused)
  t.equal(notReused.length, 0, `all 20 connections resumed the session (not resumed on pids: ${notReused.map((r) => r.pid).join(', ') || 'none'})`)
  t.ok(resumed.every((r) => r.version === 'TLSv1.3'), 'over TLS 1.3')
  const byPid: Record<string, { reused: number, total: number }> = {}
  for (const r of resumed) {
    const k = String(r.pid)
    byPid[k] ??= { reused: 0, total: 0 }
    byPid[k].total++
    if (r.reused) byPid[k].reused++
  }
  t.comment(`resumed connections per worker pid: ${JSON.stringify(byPid)}`)
  t.same(Object.keys(byPid).sort(), s.workers.map(String).sort(), 'the 20 connections landed on both workers (access log pid)')
  const other = s.workers.find((w) => w !== origin.pid)
  t.ok((byPid[String(other)]?.reused ?? 0) > 0, `the session issued by pid ${origin.pid} resumed on the other worker (pid ${other})`)
})

t.test('serve --workers 2: SIGHUP after swapping the files reaches every worker; a bad certificate is refused, logged, and B kept', { skip: opensslSkip }, async (t) => {
  const { ra, rb } = pki()
  const { s, port, live } = await serveTls(t, ra, ['--workers', '2'])
  t.ok((await sans(port, 4)).every((x) => A.test(x)), 'serves A at start')

  copyFileSync(rb.certPath, live.cert)
  copyFileSync(rb.keyPath, live.key)
  const mark = s.log().length
  const hup = Date.now()
  s.child.kill('SIGHUP')
  const allB = await until(async () => (await sans(port, 10)).every((x) => B.test(x)), 5000, 100)
  t.ok(allB, `within 5 s all of 10 new handshakes get B (${Date.now() - hup} ms)`)
  t.ok((await sans(port, 10)).every((x) => B.test(x)), 'and 10 more all get B')
  t.equal(msgs(s, 'listener certificates loaded', mark).length, 1, 'one "listener certificates loaded" line')
  const b = await exchangesByPid(s, port, 10, 'after-b')
  t.same(b.map((e) => e.status), Array(10).fill(200), '10 requests over new connections: 200')
  t.ok(b.every((e) => B.test(e.san)), 'all with B')
  t.same([...new Set(b.map((e) => e.pid))].sort(), [...s.workers].sort(), 'served by both workers: both serve B')

  // a bad certificate file: refused (the primary reads it), logged naming the key, B kept everywhere
  writeFileSync(live.cert, 'not a certificate\n')
  const mark2 = s.log().length
  s.child.kill('SIGHUP')
  t.ok(await until(() => msgs(s, 'reload refused', mark2).length > 0, 5000), 'a "reload refused" line is logged')
  const refused = msgs(s, 'reload refused', mark2)
  t.equal(refused.length, 1, 'one refusal line')
  t.match(String(refused[0]?.msg), /listen\.tls\.certFile/, `it names listen.tls.certFile: ${String(refused[0]?.msg)}`)
  t.match(String(refused[0]?.msg), live.cert, 'and the file')
  t.equal(msgs(s, 'listener certificates loaded', mark2).length, 0, 'no certificates loaded')
  t.ok((await sans(port, 10)).every((x) => B.test(x)), '10 new handshakes still get B')
  const kept = await exchangesByPid(s, port, 10, 'after-bad')
  t.same(kept.map((e) => e.status), Array(10).fill(200), 'still serving 200')
  t.same([...new Set(kept.map((e) => e.pid))].sort(), [...s.workers].sort(), 'on both (the same) workers: none died of the bad file')
  t.equal(s.child.exitCode, null, 'the primary is still running')
  t.ok(alive(s.child.pid), 'its pid answers signal 0')
  t.ok(s.workers.every(alive), 'both workers are still running')
  t.equal(msgs(s, 'worker exited', mark).length, 0, 'no worker exited')
})

t.test('serve --watch (no SIGHUP): renamed-over and in-place written cert/key files are one reload each', { skip: opensslSkip }, async (t) => {
  const { ra, rb } = pki()
  const { s, port, live, dir } = await serveTls(t, ra, ['--watch'])
  t.ok((await sans(port, 3)).every((x) => A.test(x)), 'serves A at start')
  // the watchers poll once a second: let their first stat (the baseline) happen
  await sleep(1200)

  /** After a change written at `at`: time until every new handshake gets `want`, then (after 1.5 s more for stray reloads) the reload lines. */
  const observe = async (want: RegExp, mark: number, at: number): Promise<{ ms: number, ok: boolean, loaded: number, refused: string[], triggers: number }> => {
    const ok = await until(async () => (await sans(port, 4)).every((x) => want.test(x)), 6000, 100)
    const ms = Date.now() - at
    await sleep(1500)
    return {
      ms,
      ok,
      loaded: msgs(s, 'listener certificates loaded', mark).length,
      refused: msgs(s, 'reload refused', mark).map((l) => String(l.msg)),
      triggers: msgs(s, 'reloading the config', mark).filter((l) => l.trigger === 'file changed').length
    }
  }

  // 1. atomic: each file written to a temp name, then renamed over (cert-manager / kubelet style)
  let mark = s.log().length
  let at = Date.now()
  const tmpCert = join(dir, '.live.pem.tmp')
  const tmpKey = join(dir, '.live-key.pem.tmp')
  writeFileSync(tmpCert, rb.cert)
  writeFileSync(tmpKey, rb.key)
  renameSync(tmpCert, live.cert)
  renameSync(tmpKey, live.key)
  const renamed = await observe(B, mark, at)
  t.comment(`rename: B served after ${renamed.ms} ms; loaded ${renamed.loaded}, refused ${renamed.refused.length}, file-changed reloads ${renamed.triggers}`)
  t.ok(renamed.ok, 'rename: new handshakes get B')
  t.ok(renamed.ms <= 4000, `rename: within 4 s (${renamed.ms} ms)`)
  t.equal(renamed.loaded, 1, 'rename: exactly one "listener certificates loaded" line')
  t.same(renamed.refused, [], 'rename: no "reload refused" line (cert and key coalesced into one reload)')
  t.equal(renamed.triggers, 1, 'rename: one file-changed reload')

  // 2. in place (truncate + write, same inode), cert then key, as `cp` or a naive job does
  mark = s.log().length
  at = Date.now()
  writeFileSync(live.cert, ra.cert)
  writeFileSync(live.key, ra.key)
  const inPlace = await observe(A, mark, at)
  t.comment(`in place: A served after ${inPlace.ms} ms; loaded ${inPlace.loaded}, refused ${inPlace.refused.length} ${JSON.stringify(inPlace.refused)}, file-changed reloads ${inPlace.triggers}`)
  t.ok(inPlace.ok, 'in place: new handshakes get A')
  t.ok(inPlace.ms <= 4000, `in place: within 4 s (${inPlace.ms} ms)`)
  t.equal(inPlace.loaded, 1, 'in place: exactly one "listener certificates loaded" line')

  t.equal(s.child.exitCode, null, 'still running')
  t.equal(await httpsStatus(port, '/end'), 200, 'still serving https')
})
