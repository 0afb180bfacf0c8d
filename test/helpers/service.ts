/**
 * A server binary the tests start themselves (redis-server, prometheus):
 * spawn it, keep the tail of its output for error messages, wait until it
 * answers or exits (bounded), stop it with a signal and a SIGKILL fallback.
 * The helpers for each service say how it is started and probed.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'

/** Whether `bin` is an executable on PATH (a service test skips, saying so, when it is not). */
export function onPath (bin: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue
    try {
      accessSync(join(dir, bin), constants.X_OK)
      return true
    } catch {}
  }
  return false
}

/** The output kept per service (the tail: the start-up error is at the end). */
const LOG_LIMIT = 64 * 1024

/** One service process, launched again after a stop if the test asks (same object, same log). */
export class ServiceProcess {
  readonly #bin: string
  #child: ChildProcess | undefined
  #exited: Promise<void> = Promise.resolve()
  #out = ''
  #gone = true

  constructor (bin: string) {
    this.#bin = bin
  }

  /** Everything the process (and earlier launches) wrote, its tail. */
  get log (): string {
    return this.#out
  }

  get running (): boolean {
    const c = this.#child
    return c !== undefined && c.exitCode === null && c.signalCode === null
  }

  get pid (): number | undefined {
    return this.running ? this.#child!.pid : undefined
  }

  /**
   * Spawns the binary with `args` and polls `ready` (every `everyMs`, at
   * most `waitMs` in all) until it answers true. 'port-taken' when the
   * process exited saying its address was in use (the caller retries on
   * another port); throws with the output when it exits otherwise or is
   * not ready in time (then it is killed).
   */
  async launch (args: string[], ready: () => Promise<boolean>, opts: { waitMs: number; everyMs: number; what: string }): Promise<'ok' | 'port-taken'> {
    const c = spawn(this.#bin, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    this.#child = c
    this.#gone = false
    this.#exited = new Promise<void>((resolve) => c.on('exit', () => { this.#gone = true; resolve() }))
    const keep = (d: Buffer): void => {
      this.#out += d.toString()
      if (this.#out.length > LOG_LIMIT) this.#out = this.#out.slice(-LOG_LIMIT)
    }
    c.stdout!.on('data', keep)
    c.stderr!.on('data', keep)
    c.on('error', (err) => { this.#out += `\nspawn error: ${err.message}\n` })
    const deadline = Date.now() + opts.waitMs
    for (let i = 0; i < Math.ceil(opts.waitMs / opts.everyMs) && Date.now() < deadline && !this.#gone; i++) {
      try {
        if (await ready()) return 'ok'
      } catch {}
      await new Promise((resolve) => setTimeout(resolve, opts.everyMs))
    }
    if (!this.#gone) {
      c.kill('SIGKILL')
      await this.#exited
      throw new Error(`${opts.what} was not ready within ${opts.waitMs / 1000} s:\n${this.#out}`)
    }
    if (/address already in use/i.test(this.#out)) return 'port-taken'
    throw new Error(`${opts.what} exited at start:\n${this.#out}`)
  }

  /** Sends `sig` and waits for the exit; SIGKILL after `killAfterMs`. */
  async stop (sig: NodeJS.Signals, killAfterMs: number): Promise<void> {
    if (!this.running) return
    this.#child!.kill(sig)
    const timer = setTimeout(() => { if (this.running) this.#child!.kill('SIGKILL') }, killAfterMs)
    await this.#exited
    clearTimeout(timer)
  }
}
