/**
 * A real Prometheus server for the metric-provider tests: its own config and
 * TSDB in a temp dir, on a free loopback port, scraping the given targets.
 */
import { onPath, ServiceProcess } from './service.js'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { freePort } from './upstream.js'
import { sleep } from './until.js'

/** The server binary (Debian package `prometheus`). */
export const PROMETHEUS = 'prometheus'

/** Why the Prometheus tests cannot run here, or undefined when they can (the message says how to get it: a skip is never silent). */
export function prometheusMissing (): string | undefined {
  return onPath(PROMETHEUS) ? undefined : 'prometheus is not installed (Debian package prometheus); .ci/run installs it'
}

/** A running Prometheus. */
export interface TestPrometheus {
  /** `http://127.0.0.1:PORT` */
  url: string
  /** SIGTERM, SIGKILL after 5 s; removes the temp dir. Idempotent. */
  stop: () => Promise<void>
  /**
   * Resolves once every target has been scraped successfully (health "up");
   * throws after 30 s. Expect ~6 s: Prometheus 2.42's discovery manager
   * hands new targets to the scrape manager on a 5 s tick (no flag shortens it).
   */
  waitForTargets: () => Promise<void>
  /** An instant query; resolves with `data` of the answer, throws on an error answer. */
  query: (q: string) => Promise<unknown>
}

async function getJson (url: string, timeoutMs = 2000): Promise<{ status: number; body: unknown }> {
  const res = await request(url, { headersTimeout: timeoutMs, bodyTimeout: timeoutMs, signal: AbortSignal.timeout(timeoutMs) })
  const text = await res.body.text()
  let body: unknown
  try { body = JSON.parse(text) } catch { body = text }
  return { status: res.statusCode, body }
}

/**
 * Starts `prometheus` scraping `targets` (host:port, path /metrics) every
 * `scrapeIntervalMs` (default 1000; rule evaluation at the same interval),
 * and waits (at most 30 s) for /-/ready. The port is found by binding port 0
 * and closing it, so another process may take it first: up to 3 attempts.
 */
export async function startPrometheus (opts: { targets: string[]; scrapeIntervalMs?: number }): Promise<TestPrometheus> {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-prom-'))
  const every = `${opts.scrapeIntervalMs ?? 1000}ms`
  const config = [
    'global:',
    `  scrape_interval: ${every}`,
    `  scrape_timeout: ${every}`,
    `  evaluation_interval: ${every}`,
    'scrape_configs:',
    '  - job_name: test',
    '    static_configs:',
    `      - targets: ${JSON.stringify(opts.targets)}`,
    ''
  ].join('\n')
  writeFileSync(join(dir, 'prometheus.yml'), config)

  const svc = new ServiceProcess(PROMETHEUS)
  let url = ''

  const launch = async (port: number): Promise<'ok' | 'port-taken'> => {
    url = `http://127.0.0.1:${port}`
    const args = [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn']
    // bounded: 30 s, polls every 100 ms
    return await svc.launch(args, async () => (await getJson(`${url}/-/ready`, 1000)).status === 200, { waitMs: 30_000, everyMs: 100, what: `prometheus on ${url}` })
  }

  try {
    for (let attempt = 0; ; attempt++) {
      if (await launch(await freePort()) === 'ok') break
      if (attempt >= 2) throw new Error(`prometheus: no free port after 3 attempts:\n${svc.log}`)
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    throw err
  }

  let stopped: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    stopped ??= (async () => {
      await svc.stop('SIGTERM', 5000)
      rmSync(dir, { recursive: true, force: true })
    })()
    await stopped
  }

  const waitForTargets = async (): Promise<void> => {
    const deadline = Date.now() + 30_000
    let last: unknown
    for (let i = 0; i < 300 && Date.now() < deadline; i++) {
      try {
        const { body } = await getJson(`${url}/api/v1/targets?state=active`)
        const active = (body as { data?: { activeTargets?: Array<{ health?: string }> } }).data?.activeTargets ?? []
        last = active
        if (active.length === opts.targets.length && active.every((t) => t.health === 'up')) return
      } catch (err) {
        last = err
      }
      await sleep(100)
    }
    throw new Error(`prometheus targets not all up within 30 s: ${JSON.stringify(last)}\n${svc.log}`)
  }

  const query = async (q: string): Promise<unknown> => {
    const { body } = await getJson(`${url}/api/v1/query?query=${encodeURIComponent(q)}`)
    const b = body as { status?: string; data?: unknown; error?: string }
    if (b.status !== 'success') throw new Error(`prometheus query ${q} failed: ${JSON.stringify(body)}`)
    return b.data
  }

  return { url, stop, waitForTargets, query }
}
