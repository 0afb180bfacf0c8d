/**
 * Time as a parameter: the controller asks a Clock for the time and for its
 * interval timer, so tests drive hours of rollout in microseconds.
 */

/** What the controller needs of time. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now (): number
  /** Calls `fn` once after `ms`; the handle goes to clearTimeout. */
  setTimeout (fn: () => unknown, ms: number): unknown
  clearTimeout (handle: unknown): void
}

/** The real clock. Timers are unref'd: a pending check must never keep a stopping process alive. */
export const systemClock: Clock = Object.freeze({
  now: () => Date.now(),
  setTimeout (fn: () => unknown, ms: number): unknown {
    const t = setTimeout(() => { void fn() }, ms)
    t.unref()
    return t
  },
  clearTimeout (handle: unknown): void {
    clearTimeout(handle as NodeJS.Timeout)
  }
})

/**
 * A clock for tests: time moves only on `advance`, which runs due timers in
 * order and awaits what they return (the controller's check), so after
 * `await clock.advance(ms)` every check due in that span has finished.
 */
export class ManualClock implements Clock {
  #now: number
  #seq = 0
  readonly #timers = new Map<number, { at: number; fn: () => unknown }>()

  constructor (start: number = Date.UTC(2026, 0, 1)) {
    this.#now = start
  }

  now (): number {
    return this.#now
  }

  setTimeout (fn: () => unknown, ms: number): unknown {
    const id = ++this.#seq
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn })
    return id
  }

  clearTimeout (handle: unknown): void {
    this.#timers.delete(handle as number)
  }

  /** Timers waiting to fire. */
  get pending (): number {
    return this.#timers.size
  }

  /** Moves time forward by `ms`, firing (and awaiting) every timer that falls due, earliest first. */
  async advance (ms: number): Promise<void> {
    const end = this.#now + ms
    for (;;) {
      let next: [number, { at: number; fn: () => unknown }] | undefined
      for (const e of this.#timers) if (e[1].at <= end && (next === undefined || e[1].at < next[1].at)) next = e
      if (next === undefined) break
      this.#timers.delete(next[0])
      this.#now = next[1].at
      await next[1].fn()
    }
    this.#now = end
  }
}
