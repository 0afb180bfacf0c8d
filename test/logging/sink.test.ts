/**
 * Logging never stops the proxy (issue 11, point 8) and a bad LOG_LEVEL is
 * one clear line (issue 12). The LogSink is tested on real pipes to child
 * processes (one that exited: EPIPE; one that never reads: a full pipe); the
 * CLI is tested as users run it (dist/cli.js): its stdout and stderr pipes
 * closed right before SIGTERM, or its stdout never read under access-log load.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { createLogger, droppedLogLines, flushLogs, LogSink, LOG_LEVELS, resolveLogLevel } from '../../src/logger.js'
import { ConfigError } from '../../src/errors.js'
import { parseExposition } from '../../src/metrics/exposition.js'
import { CLI, ensureBuilt, loopbackConfigFile } from '../helpers/cli.js'
import { send } from '../helpers/http.js'
import { startUpstream } from '../helpers/upstream.js'
import { sum } from '../metrics/scrape.js'

ensureBuilt()

/** createLogger with LOG_LEVEL cleared: the runner's environment must not pick the level. */
function loggerAt (level: string, dest: Writable, maxBufferBytes: number): ReturnType<typeof createLogger> {
  const prev = process.env.LOG_LEVEL
  delete process.env.LOG_LEVEL
  try {
    return createLogger(level, dest, { maxBufferBytes })
  } finally {
    if (prev !== undefined) process.env.LOG_LEVEL = prev
  }
}

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** A child node process whose stdin is a real pipe; `script` decides whether it ever reads it. */
function pipeChild (t: Test, script: string): ChildProcess & { stdin: NonNullable<ChildProcess['stdin']> } {
  const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'ignore', 'ignore'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  return child as ChildProcess & { stdin: NonNullable<ChildProcess['stdin']> }
}

t.test('LogSink: a pipe whose reader exited (EPIPE) fails the sink; every later line is dropped and counted, nothing throws', async (t) => {
  // the reader closes its end and lives on (once it exits, node destroys child.stdin itself: no EPIPE)
  const child = pipeChild(t, 'require("node:fs").closeSync(0); setTimeout(() => {}, 30000)')
  const sink = new LogSink(child.stdin)
  // the EPIPE arrives asynchronously, after the first write that hits the closed pipe
  for (let i = 0; i < 300 && sink.failure === undefined; i++) {
    sink.write('{"msg":"before the error is known"}\n')
    await sleep(10)
  }
  t.equal((sink.failure as NodeJS.ErrnoException | undefined)?.code, 'EPIPE', 'the sink saw the EPIPE')
  const before = sink.dropped
  const totalBefore = droppedLogLines()
  t.ok(before >= 1, 'the line the pipe refused is counted as dropped')
  let accepted = 0
  for (let i = 0; i < 50; i++) if (sink.write(`{"msg":"after","i":${i}}\n`)) accepted++
  t.equal(accepted, 0, 'no line is written once the stream failed')
  t.equal(sink.dropped, before + 50, 'each dropped line is counted')
  t.equal(droppedLogLines(), totalBefore + 50, 'and counted in the process total (the metric)')
  const t0 = performance.now()
  await sink.flush(1000)
  t.ok(performance.now() - t0 < 100, 'flush returns at once on a failed stream')
})

t.test('LogSink: a pipe nobody reads fills; past maxBufferBytes lines are dropped, writes never block, flush is bounded', async (t) => {
  const child = pipeChild(t, 'setTimeout(() => {}, 30000)')
  const cap = 16384
  const sink = new LogSink(child.stdin, { maxBufferBytes: cap })
  const line = `{"msg":"${'x'.repeat(190)}"}\n`
  let accepted = 0
  let maxWaiting = 0
  const t0 = performance.now()
  for (let i = 0; i < 2000; i++) {
    if (sink.write(line)) accepted++
    maxWaiting = Math.max(maxWaiting, sink.waiting)
  }
  const writeMs = performance.now() - t0
  t.ok(writeMs < 500, `2,000 writes to a full pipe took ${writeMs.toFixed(0)} ms (never blocked)`)
  t.ok(maxWaiting <= cap, `never more than maxBufferBytes waiting (max ${maxWaiting})`)
  t.ok(sink.dropped > 0, `lines dropped once the pipe and the buffer were full (${sink.dropped})`)
  t.equal(accepted + sink.dropped, 2000, 'every line is either written or counted')
  // the kernel pipe (64 KiB on Linux) plus the cap is all that can be accepted
  t.ok(accepted * line.length <= 1024 * 1024 + cap, `accepted ${accepted} lines`)
  t.equal(sink.failure, undefined, 'a stall is not a failure')

  const f0 = performance.now()
  await sink.flush(200)
  const flushMs = performance.now() - f0
  t.ok(flushMs >= 180 && flushMs < 1000, `flush on a stalled pipe returns after its timeout (${flushMs.toFixed(0)} ms)`)
  t.ok(sink.waiting > 0, 'the lines are still waiting: nothing was flushed synchronously')

  // the reader dies with lines still buffered: they are lost, so they are counted as dropped
  const droppedBefore = sink.dropped
  child.kill('SIGKILL')
  for (let i = 0; i < 200 && sink.failure === undefined; i++) await sleep(10)
  t.ok(sink.failure !== undefined, 'the stream failed once the reader died')
  t.ok(sink.dropped > droppedBefore, `buffered lines lost with the reader are counted (${sink.dropped - droppedBefore})`)
})

t.test('createLogger on a stalled destination: maxBufferBytes applies, fatal returns at once (no synchronous flush)', async (t) => {
  // a Writable whose first write never completes: every later line waits in its buffer
  const stalled = new Writable({ write () {} })
  const logger = loggerAt('info', stalled, 2000)
  const before = droppedLogLines()
  const t0 = performance.now()
  for (let i = 0; i < 200; i++) logger.info({ i }, 'a line of about a hundred bytes')
  logger.fatal('fatal must not wait for the stream')
  t.ok(performance.now() - t0 < 500, 'logging to a stalled destination does not block')
  t.ok(stalled.writableLength <= 2000 + 200, `buffer bounded by maxBufferBytes (+ one line): ${stalled.writableLength}`)
  t.ok(droppedLogLines() - before > 100, `most lines dropped and counted (${droppedLogLines() - before})`)
})

t.test('createLogger on a working destination writes every line; flush resolves at once when drained', async (t) => {
  const lines: string[] = []
  const dest = new Writable({ write (chunk: Buffer, _enc, cb) { lines.push(chunk.toString()); cb() } })
  const before = droppedLogLines()
  const logger = loggerAt('debug', dest, 100)
  for (let i = 0; i < 10; i++) logger.debug({ i }, 'a line longer than the cap is still written to an empty buffer')
  t.equal(lines.length, 10, 'every line reached the destination')
  t.same(lines.map((l) => (JSON.parse(l) as { i: number }).i), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'in order, as JSON lines')
  t.equal(droppedLogLines(), before, 'nothing dropped')
  const sink = new LogSink(dest)
  sink.write('{"msg":"one more"}\n')
  const t0 = performance.now()
  await sink.flush(1000)
  t.ok(performance.now() - t0 < 100, 'flush resolves at once when nothing is waiting')
  const t1 = performance.now()
  await flushLogs(1000) // the process sink (stdout), if this process made one
  t.ok(performance.now() - t1 < 1100, 'flushLogs resolves within its timeout')
})

t.test('an invalid level is a ConfigError naming the variable and listing the levels', async (t) => {
  t.same([...LOG_LEVELS], ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
  t.equal(resolveLogLevel('info', { LOG_LEVEL: 'debug' }), 'debug', 'LOG_LEVEL wins over config')
  t.equal(resolveLogLevel('warn', { LOG_LEVEL: '' }), 'warn', 'an empty LOG_LEVEL is unset')
  t.throws(() => resolveLogLevel('info', { LOG_LEVEL: 'verbose' }), new ConfigError('LOG_LEVEL', '"verbose" is not a log level; use one of fatal, error, warn, info, debug, trace, silent'))
  t.throws(() => resolveLogLevel('loud', {}), { message: 'log.level: "loud" is not a log level; use one of fatal, error, warn, info, debug, trace, silent', code: 'CANARYD_ERR_CONFIG_INVALID' })
})

const configFile = loopbackConfigFile

t.test('LOG_LEVEL=verbose: one line naming it and the levels, exit 1 (single process and --workers)', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  const file = configFile(up.origin)
  for (const args of [['serve', '--config', file], ['serve', '--config', file, '--workers', '2']]) {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, LOG_LEVEL: 'verbose' }, stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
    t.equal(code, 1, `${args.join(' ')}: exit 1`)
    t.equal(stderr, 'canaryd: LOG_LEVEL: "verbose" is not a log level; use one of fatal, error, warn, info, debug, trace, silent\n', 'exactly one line, no stack trace')
    t.equal(stdout, '', 'nothing on stdout')
  }
})

interface Served { child: ChildProcess & { stdout: NonNullable<ChildProcess['stdout']>; stderr: NonNullable<ChildProcess['stderr']> }; proxy: string; admin: string; exit: Promise<number | null> }

/** `canaryd serve` with piped stdout/stderr; resolves on its start-up line (read from stdout). */
async function serve (t: Test, file: string, env: Record<string, string> = {}, args: string[] = []): Promise<Served> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file, ...args], { env: { ...process.env, LOG_LEVEL: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  let out = ''
  child.stderr.on('data', (d: Buffer) => { out += d.toString() })
  const started = await new Promise<{ proxy: string; admin: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`canaryd did not start within 10 s: ${out}`)), 10_000)
    const onData = (d: Buffer): void => {
      out += d.toString()
      const line = out.split('\n').find((l) => l.includes('"canaryd started"'))
      if (line === undefined) return
      clearTimeout(timer)
      child.stdout.off('data', onData)
      const j = JSON.parse(line) as { proxy: string; admin: string }
      resolve({ proxy: `http://${j.proxy}`, admin: `http://${j.admin}` })
    }
    child.stdout.on('data', onData)
    void exit.then((code) => { clearTimeout(timer); reject(new Error(`canaryd exited ${code}: ${out}`)) })
  })
  return { child, ...started, exit }
}

/** The exit code, or 'timeout' after `ms` (teardown then SIGKILLs the child). */
async function exitWithin (s: Served, ms: number): Promise<{ code: number | null | 'timeout'; ms: number }> {
  const t0 = performance.now()
  let timer: NodeJS.Timeout | undefined
  const code = await Promise.race([s.exit, new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), ms) })])
  clearTimeout(timer)
  return { code, ms: performance.now() - t0 }
}

t.test('stdout and stderr closed right before SIGTERM: canaryd still drains and exits 0 at once (single process and --workers)', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  for (const args of [[], ['--workers', '2']]) {
    const s = await serve(t, configFile(up.origin), {}, args)
    t.equal((await send(`${s.proxy}/`)).status, 200, `serving before ${args.join(' ')}`)
    s.child.stdout.destroy()
    s.child.stderr.destroy()
    s.child.kill('SIGTERM')
    const r = await exitWithin(s, 5000)
    t.equal(r.code, 0, 'exit code 0')
    t.ok(r.ms < 5000, `exited in ${r.ms.toFixed(0)} ms`)
  }
})

t.test('stdout closed while serving: the EPIPE of the access log crashes nothing; proxy and admin answer; SIGTERM exits 0', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  const s = await serve(t, configFile(up.origin, { log: { access: true } }))
  s.child.stdout.destroy()
  s.child.stderr.destroy()
  // each request writes an access line into the closed pipe
  for (let i = 0; i < 20; i++) t.equal((await send(`${s.proxy}/x${i}`)).status, 200, `request ${i} after stdout closed`)
  t.equal((await send(`${s.admin}/healthz`)).status, 200, 'admin answers')
  const metrics = parseExposition((await send(`${s.admin}/metrics`)).body.toString())
  t.ok(sum(metrics, 'canaryd_log_dropped_total') >= 1, 'lines written to the closed stdout are counted as dropped')
  t.equal(s.child.exitCode, null, 'still running')
  s.child.kill('SIGTERM')
  const r = await exitWithin(s, 5000)
  t.equal(r.code, 0, 'exit code 0')
  t.ok(r.ms < 5000, `exited in ${r.ms.toFixed(0)} ms`)
})

t.test('stdout never read under access-log load: proxy and admin keep answering, lines are dropped and counted, SIGTERM exits 0', async (t) => {
  const up = await startUpstream('stable')
  t.teardown(up.close)
  const s = await serve(t, configFile(up.origin, { log: { access: true } }), { CANARYD_LOG_MAX_BUFFER_BYTES: '16384' })
  // from here on nobody reads stdout: the parent's stream fills its own buffer, then the pipe, then canaryd's
  s.child.stdout.pause()

  const proxy = new Pool(s.proxy, { connections: 4 })
  const admin = new Pool(s.admin, { connections: 1 })
  t.teardown(async () => { await proxy.destroy(); await admin.destroy() })
  const timed = async (pool: Pool, path: string): Promise<{ status: number; ms: number }> => {
    const t0 = performance.now()
    const res = await pool.request({ method: 'GET', path, headersTimeout: 2000, bodyTimeout: 2000 })
    await res.body.dump()
    return { status: res.statusCode, ms: performance.now() - t0 }
  }
  // about 130 bytes an access line: 3,000 lines are ~400 KB, well past the 64 KiB pipe, the parent's buffer and the 16 KiB cap
  const total = 3000
  let next = 0
  let worst = 0
  let bad = 0
  let worstAdmin = 0
  const workers = Array.from({ length: 8 }, async () => {
    for (let i = next++; i < total; i = next++) {
      const r = await timed(proxy, `/load/${i}`)
      if (r.status !== 200) bad++
      worst = Math.max(worst, r.ms)
      if (i % 250 === 0) {
        const a = await timed(admin, '/healthz')
        if (a.status !== 200) bad++
        worstAdmin = Math.max(worstAdmin, a.ms)
      }
    }
  })
  await Promise.all(workers)
  t.equal(bad, 0, `all ${total} proxy requests and the admin probes answered 200`)
  t.ok(worst < 1000, `every proxy request answered within a second (worst ${worst.toFixed(0)} ms)`)
  t.ok(worstAdmin < 1000, `every admin probe answered within a second (worst ${worstAdmin.toFixed(0)} ms)`)

  const metrics = parseExposition((await send(`${s.admin}/metrics`)).body.toString())
  const dropped = sum(metrics, 'canaryd_log_dropped_total')
  t.ok(dropped > 0, `canaryd_log_dropped_total > 0 (${dropped})`)
  t.ok(dropped < total + 10, 'at most every access line and a few others dropped')

  s.child.kill('SIGTERM')
  const r = await exitWithin(s, 5000)
  t.equal(r.code, 0, 'exit code 0 with stdout still unread')
  t.ok(r.ms < 5000, `exited in ${r.ms.toFixed(0)} ms`)
})
