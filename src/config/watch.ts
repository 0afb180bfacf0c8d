import { unwatchFile, watchFile, type Stats } from 'node:fs'

/** How often `serve --watch` looks at the config file (ms). */
export const WATCH_INTERVAL_MS = 1000

/**
 * Calls `onChange` when the config file changes (`serve --watch`). Polls the
 * file's metadata (size, mtime, inode) rather than using inotify: editors
 * and Kubernetes replace the file (a rename, a ConfigMap's symlink swap),
 * which an inotify watch on the old inode never reports, and a stat per
 * second costs nothing. A change is reported once the file has stayed the
 * same for one more interval, so a half-written file is not read. The
 * stat runs on libuv's thread pool: never a blocking call on the event loop.
 * Returns a function that stops watching.
 */
export function watchConfig (path: string, onChange: () => void, intervalMs: number = WATCH_INTERVAL_MS): () => void {
  let pending: NodeJS.Timeout | undefined
  const listener = (cur: Stats, prev: Stats): void => {
    if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size && cur.ino === prev.ino) return
    if (pending !== undefined) clearTimeout(pending)
    pending = setTimeout(() => {
      pending = undefined
      onChange()
    }, intervalMs)
    pending.unref()
  }
  watchFile(path, { interval: intervalMs, persistent: false }, listener)
  return () => {
    if (pending !== undefined) clearTimeout(pending)
    unwatchFile(path, listener)
  }
}
