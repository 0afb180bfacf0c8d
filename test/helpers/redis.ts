import { onPath, ServiceProcess } from './service.js'
import { mkdtempSync, rmSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
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
  return onPath(REDIS_SERVER) ? undefined : `${REDIS_SERVER} is not installed (not on PATH); .ci/run installs it (Debian package redis-server), then these tests run`
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
  const svc = new ServiceProcess(REDIS_SERVER)
  const clients: Redis[] = []

  // bounded: 10 s in steps of at most ~550 ms (one PING timeout + 50 ms)
  const launch = async (): Promise<'ok' | 'port-taken'> => await svc.launch(
    ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '', '--daemonize', 'no', '--protected-mode', 'no'],
    async () => await ping(port), { waitMs: 10_000, everyMs: 50, what: `redis-server on port ${port}` })

  // freePort() closes the port before redis binds it: another process may take it in between (retry with a new one, 3 times)
  for (let attempt = 0; ; attempt++) {
    port = await freePort()
    const r = await launch()
    if (r === 'ok') break
    if (attempt >= 2) throw new Error(`redis-server: no free port after 3 attempts:\n${svc.log}`)
  }

  const redis: TestRedis = {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    dir,
    get running () { return svc.running },
    get pid () { return svc.pid },
    stop: async () => { await svc.stop('SIGTERM', 10_000) },
    kill: async () => { await svc.stop('SIGKILL', 10_000) },
    start: async () => {
      if (svc.running) throw new Error('redis-server is already running')
      const r = await launch()
      if (r !== 'ok') throw new Error(`redis-server could not bind port ${port} again:\n${svc.log}`)
    },
    client: () => {
      const c = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: () => null, enableOfflineQueue: true, connectTimeout: 2000 })
      c.on('error', () => {}) // a stopped server is expected in these tests; commands still reject
      clients.push(c)
      return c
    },
    log: () => svc.log
  }
  t.teardown(async () => {
    for (const c of clients) c.disconnect()
    await redis.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  return redis
}
