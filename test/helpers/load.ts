import { Pool } from 'undici'

/** Requests kept flowing in the background while a test changes the proxy. */
export interface Load {
  /** Requests answered (or failed) so far. */
  readonly total: number
  /** Outcome → count: the status code as a string, or `error <message>`. */
  readonly statuses: Map<string, number>
  /** Waits until `n` more requests are done, at most `ms` (some traffic between two changes, bounded in time). */
  between: (n: number, ms?: number) => Promise<void>
  /** Stops the clients and waits for their last requests. */
  stop: () => Promise<void>
}

/**
 * `clients` keep-alive clients sending GETs to `url` + `path(id)` with a new
 * `x-user-id` each, until `stop()`. Every outcome is counted, errors too, so
 * a test can assert that all of them were 200. The pool closes in teardown.
 */
export function startLoad (t: { teardown: (fn: () => Promise<void>) => void }, url: string, path: (id: number) => string = () => '/', clients = 16): Load {
  const pool = new Pool(url, { connections: clients })
  t.teardown(async () => { await pool.close() })
  let done = false
  let total = 0
  let id = 0
  const statuses = new Map<string, number>()
  const client = async (): Promise<void> => {
    while (!done) {
      const n = id++
      const res = await pool.request({ path: path(n), method: 'GET', headers: { 'x-user-id': `u${n}` }, headersTimeout: 10_000 }).catch((err: Error) => err)
      const key = res instanceof Error ? `error ${res.message}` : String(res.statusCode)
      if (!(res instanceof Error)) await res.body.dump()
      statuses.set(key, (statuses.get(key) ?? 0) + 1)
      total++
    }
  }
  const running = Array.from({ length: clients }, client)
  return {
    get total () { return total },
    statuses,
    between: async (n: number, ms = 2000) => {
      const target = total + n
      const deadline = Date.now() + ms
      while (total < target && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5))
    },
    stop: async () => {
      done = true
      await Promise.all(running)
    }
  }
}
