import { spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort } from './upstream.js'

/** The server binary the fleet tests run (Debian package `redis-server`). */
export const REDIS_SERVER = 'redis-server'

/**
 * Why the Redis tests cannot run here (`redis-server` is not on PATH), or
 * undefined when they can. The message names the binary and how to get it,
 * so a skip is never silent.
 */
export function redisMissing (): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue
    try {
      accessSync(join(dir, REDIS_SERVER), constants.X_OK)
      return undefined
    } catch {}
  }
  return `${REDIS_SERVER} is not installed (not on PATH); .ci/run installs it (Debian package redis-server), then these tests run`
}

/**
 * Options for `t.test(name, redisTestOptions(), fn)`: the test is skipped
 * with `redisMissing()`'s message when there is no `redis-server`, and tap
 * prints it (`# SKIP redis-server is not installed …`).
 */
export function redisTestOptions (extra: Record<string, unknown> = {}): Record<string, unknown> & { skip: string | false } {
  return { ...extra, skip: redisMissing() ?? false }
}

/** A real redis-server on 127.0.0.1, its data in a temp dir (AOF on, RDB off). */
export interface TestRedis {
  /** `redis://127.0.0.1:PORT/0` */
  readonly url: string
  readonly port: number
  /** The data dir (kept across stop/start, removed in teardown). */
  readonly dir: string
  /** True while the process runs. */
  readonly running: boolean
  /** Its pid while it runs. */
  readonly pid: number | undefined
  /** SIGTERM (Redis fsyncs its AOF on the way out) and wait for the exit (SIGKILL after 10 s). */
  stop: () => Promise<void>
  /** Starts it again on the same port and dir (the data is kept) and waits until PING answers. */
  start: () => Promise<void>
  /** SIGKILL (the last second of AOF may be lost, as in a crash) and wait for the exit. */
  kill: () => Promise<void>
  /** A new ioredis client to this server (no retries: a test sees a down server at once), disconnected in teardown. */
  client: () => Redis
  /** What the server printed (its log), last 64 KiB. */
  log: () => string
}

/** At most this much of the server's log is kept. */
const LOG_LIMIT = 64 * 1024

/** One PING over a fresh connection: true when `+PONG` came back within `ms`. */
async function ping (port: number, ms = 500): Promise<boolean> {
  return await new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    let got = ''
    const done = (ok: boolean): void => {
      clearTimeout(timer)
      s.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), ms)
    s.on('connect', () => s.write('PING\r\n'))
    s.on('data', (d: Buffer) => {
      got += d.toString()
      if (got.includes('\r\n')) done(got.startsWith('+PONG'))
    })
    s.on('error', () => done(false))
    s.on('close', () => done(false))
  })
}

/**
 * Starts a `redis-server` on a free loopback port with its data in a fresh
 * temp dir (`--appendonly yes --appendfsync everysec --save ''`), and waits
 * (at most 10 s) until it answers PING. Teardown stops it and removes the
 * dir. Throws with the server's output when it does not come up.
 */
export async function startRedis (t: { teardown: (fn: () => Promise<void>) => void }): Promise<TestRedis> {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-redis-'))
  let port = 0
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let out = ''
  const clients: Redis[] = []

  const launch = async (): Promise<'ok' | 'port-taken'> => {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
      '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '',
      '--daemonize', 'no', '--protected-mode', 'no']
    const c = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child = c
    let gone = false
    exited = new Promise<void>((resolve) => c.on('exit', () => { gone = true; resolve() }))
    const keep = (d: Buffer): void => {
      out += d.toString()
      if (out.length > LOG_LIMIT) out = out.slice(-LOG_LIMIT)
    }
    c.stdout!.on('data', keep)
    c.stderr!.on('data', keep)
    c.on('error', (err) => { out += `\nspawn error: ${err.message}\n` })
    // bounded: 10 s in steps of at most ~550 ms (one PING timeout + 50 ms)
    const deadline = Date.now() + 10_000
    for (let i = 0; i < 200 && Date.now() < deadline; i++) {
      if (gone) break
      if (await ping(port)) return 'ok'
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    if (!gone) {
      c.kill('SIGKILL')
      await exited
      throw new Error(`redis-server on port ${port} did not answer PING within 10 s:\n${out}`)
    }
    if (/Address already in use/i.test(out)) return 'port-taken'
    throw new Error(`redis-server on port ${port} exited at start:\n${out}`)
  }

  // freePort() closes the port before redis binds it: another process may take it in between (retry with a new one, 3 times)
  for (let attempt = 0; ; attempt++) {
    port = await freePort()
    const r = await launch()
    if (r === 'ok') break
    if (attempt >= 2) throw new Error(`redis-server: no free port after 3 attempts:\n${out}`)
  }

  const running = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null
  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    if (!running()) return
    child!.kill(sig)
    const timer = setTimeout(() => { if (running()) child!.kill('SIGKILL') }, 10_000)
    await exited
    clearTimeout(timer)
  }

  const redis: TestRedis = {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    dir,
    get running () { return running() },
    get pid () { return running() ? child!.pid : undefined },
    stop: async () => { await signal('SIGTERM') },
    kill: async () => { await signal('SIGKILL') },
    start: async () => {
      if (running()) throw new Error('redis-server is already running')
      const r = await launch()
      if (r !== 'ok') throw new Error(`redis-server could not bind port ${port} again:\n${out}`)
    },
    client: () => {
      const c = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: () => null, enableOfflineQueue: true, connectTimeout: 2000 })
      c.on('error', () => {}) // a stopped server is expected in these tests; commands still reject
      clients.push(c)
      return c
    },
    log: () => out
  }
  t.teardown(async () => {
    for (const c of clients) c.disconnect()
    await redis.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  return redis
}
