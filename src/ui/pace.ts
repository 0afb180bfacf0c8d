/**
 * Re-reading the API at a sane pace: a page asks for a refresh whenever
 * something happened (a mark from the feed, an action it took), and the
 * pacer turns any burst of asks into at most one request in flight and one
 * queued, never a storm. An optional fallback re-reads every `everyMs` while
 * the tab is visible, for what the feed does not announce.
 *
 * While a token is needed (the token form is shown) the pacer asks nothing:
 * each refused request would be a warn line in the server's log. It reads
 * again once a token is set.
 */
import { onTokenNeeded, tokenNeeded } from './api.js'

/** A pacer's handle. */
export interface Pacer {
  /** re-read soon (coalesced with other asks) */
  now: () => void
  /** stop for good (the page was left) */
  stop: () => void
}

/** The least time between two reads: asks within it are coalesced into one. */
const GAP_MS = 300

/** Paces `load`; it runs once at once, then on asks, and every `everyMs` while `fallback()` holds. */
export function pace (load: () => Promise<void>, everyMs = 0, fallback = (): boolean => true): Pacer {
  let running = false
  let queued = false
  let stopped = false
  let lastRun = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  const run = async (): Promise<void> => {
    // a read skipped while a token is needed is made when one is set (see the subscription below)
    if (stopped || tokenNeeded()) return
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
      setTimeout(() => { void run() }, GAP_MS)
    }
  }
  const now = (): void => {
    if (timer !== undefined || stopped) return
    timer = setTimeout(() => { timer = undefined; void run() }, GAP_MS)
  }
  const interval = everyMs > 0
    ? setInterval(() => {
      if (!document.hidden && Date.now() - lastRun >= everyMs * 0.8 && fallback()) void run()
    }, everyMs)
    : undefined
  // after a refused token, what the page shows is "waiting for the token": read again once one is set
  const off = onTokenNeeded((needed) => { if (!needed) now() })
  void run()
  return {
    now,
    stop: () => {
      stopped = true
      off()
      clearTimeout(timer)
      clearInterval(interval)
    }
  }
}
