/**
 * Re-reading the API at a sane pace: a page asks for a refresh whenever
 * something happened (a mark from the feed, an action it took), and the
 * pacer turns any burst of asks into at most one request in flight and one
 * queued, never a storm. An optional fallback re-reads every `everyMs` while
 * the tab is visible, for what the feed does not announce.
 */

/** A pacer's handle. */
export interface Pacer {
  /** re-read soon (coalesced with other asks) */
  now: () => void
  /** stop for good (the page was left) */
  stop: () => void
}

/** Paces `load`; it runs once at once, then on asks, and every `everyMs` while `fallback()` holds. */
export function pace (load: () => Promise<void>, everyMs = 0, fallback = (): boolean => true, gapMs = 300): Pacer {
  let running = false
  let queued = false
  let stopped = false
  let lastRun = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  const run = async (): Promise<void> => {
    if (stopped) return
    if (running) {
      queued = true
      return
    }
    running = true
    lastRun = Date.now()
    try {
      await load()
    } catch {
      // load reports its own errors; the pacer only keeps the rhythm
    }
    running = false
    if (queued && !stopped) {
      queued = false
      setTimeout(() => { void run() }, gapMs)
    }
  }
  const interval = everyMs > 0
    ? setInterval(() => {
      if (!document.hidden && Date.now() - lastRun >= everyMs * 0.8 && fallback()) void run()
    }, everyMs)
    : undefined
  void run()
  return {
    now: () => {
      if (timer !== undefined || stopped) return
      timer = setTimeout(() => { timer = undefined; void run() }, gapMs)
    },
    stop: () => {
      stopped = true
      clearTimeout(timer)
      clearInterval(interval)
    }
  }
}
