import { lookup, Resolver } from 'node:dns/promises'
import { isIP, isIPv6 } from 'node:net'
import type { Logger } from '../logger.js'

/** Default per-try timeout of a DNS query, ms: a dead server must never hang a refresh. */
export const DNS_TIMEOUT_MS = 2000

/** Default tries per DNS query and server (c-ares `tries`). */
export const DNS_TRIES = 2

/** How often a hostname whose resolution keeps failing is logged at warn, ms. */
const DNS_WARN_EVERY_MS = 60_000

/** Tuning of a DnsResolver; the defaults suit production, tests shorten them. */
export interface DnsResolverOptions {
  /** Per-try query timeout, ms (default DNS_TIMEOUT_MS). */
  timeoutMs?: number
  /** Tries per query (default DNS_TRIES). */
  tries?: number
}

/**
 * A failed resolution of one hostname. `code` is the cause's code as Node's
 * dns module spells it (ENOTFOUND, ESERVFAIL, ETIMEOUT, ENODATA, …), so logs
 * and callers can tell a missing name from a dead server.
 */
export class DnsError extends Error {
  readonly hostname: string
  readonly code: string

  constructor (hostname: string, code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'DnsError'
    this.hostname = hostname
    this.code = code
  }
}

/** The `code` of a dns error (a string on every error Node's dns module makes), else 'EUNKNOWN'. */
function errorCode (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : 'EUNKNOWN'
}

/**
 * Checks one server entry (`host`, `host:port`, `[v6]`, `[v6]:port`, bare
 * IPv6) and returns it unchanged; setServers would reject a bad one too, but
 * naming the entry makes the config error readable.
 */
function checkServer (entry: string): string {
  let host = entry
  let port: string | undefined
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry)
  if (bracketed !== null) {
    host = bracketed[1]!
    port = bracketed[2]
    if (!isIPv6(host)) host = ''
  } else if (isIP(entry) === 0) {
    const i = entry.lastIndexOf(':')
    if (i !== -1) {
      host = entry.slice(0, i)
      port = entry.slice(i + 1)
    }
    if (isIP(host) !== 4) host = ''
  }
  const portOk = port === undefined || (/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65535)
  if (host === '' || !portOk) throw new TypeError(`DNS server ${JSON.stringify(entry)} must be an IP address with an optional port (1.2.3.4, 1.2.3.4:53, [::1]:53)`)
  return entry
}

/**
 * One address in canonical text (IPv6 compressed and lower-case, as the
 * WHATWG URL parser writes it), so that two spellings of one address are one
 * endpoint.
 */
function canonicalAddress (address: string): string {
  if (!isIPv6(address)) return address
  return new URL(`http://[${address}]/`).hostname.slice(1, -1)
}

/** A key that sorts addresses numerically: IPv4 before IPv6, then by value (10.0.0.7 before 10.0.0.10). */
function sortKey (address: string): string {
  if (!isIPv6(address)) return '4' + address.split('.').map((o) => o.padStart(3, '0')).join('')
  const [head = '', tail = ''] = address.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === '' ? [] : tail.split(':')
  const groups = address.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left
  return '6' + groups.map((g) => g.padStart(4, '0')).join('')
}

/** Deduplicated (after canonicalisation) and sorted, so equal sets compare equal element by element. */
function normalize (addresses: Iterable<string>): string[] {
  const unique = [...new Set([...addresses].map(canonicalAddress))]
  const keys = new Map(unique.map((a) => [a, sortKey(a)]))
  return unique.sort((a, b) => (keys.get(a)! < keys.get(b)! ? -1 : keys.get(a)! > keys.get(b)! ? 1 : 0))
}

/** Two sorted address lists hold the same addresses. */
function sameAddresses (a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/**
 * Resolves a hostname to every IP address it has (a Kubernetes headless
 * Service: each A/AAAA record is an endpoint). Without servers it asks the
 * system resolver (getaddrinfo: /etc/hosts and the search domains of
 * resolv.conf, which Kubernetes short names need); with servers it queries
 * them directly, A and AAAA in parallel, with a bounded timeout. The result
 * is deduplicated and sorted, so an unchanged record set always gives the
 * same list (stable endpoint lists, no needless pool churn).
 */
export class DnsResolver {
  readonly #resolver: Resolver | undefined
  /** Most time one resolution may take with servers, ms (timeout × tries). */
  readonly #deadlineMs: number

  constructor (servers: readonly string[], opts: DnsResolverOptions = {}) {
    const timeout = opts.timeoutMs ?? DNS_TIMEOUT_MS
    const tries = opts.tries ?? DNS_TRIES
    if (!Number.isInteger(timeout) || timeout < 1) throw new TypeError(`DNS timeout must be a positive integer of ms, got ${timeout}`)
    if (!Number.isInteger(tries) || tries < 1) throw new TypeError(`DNS tries must be a positive integer, got ${tries}`)
    this.#deadlineMs = timeout * tries
    if (servers.length === 0) return
    this.#resolver = new Resolver({ timeout, tries })
    this.#resolver.setServers(servers.map(checkServer))
  }

  /**
   * The sorted, deduplicated addresses of `hostname`. Throws a DnsError
   * naming the hostname and the cause code when no address can be had:
   * with servers, only when both the A and the AAAA query fail (a name with
   * only IPv4 records is fine), or when neither family has a record; a
   * family still unanswered after `timeout × tries` counts as failed
   * (ETIMEOUT). An IP literal is its own answer, with no query. The system
   * resolver (getaddrinfo) has no such deadline: its timeouts are
   * resolv.conf's.
   */
  async resolve (hostname: string): Promise<string[]> {
    const host = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname
    if (isIP(host) !== 0) return [canonicalAddress(host)]
    if (this.#resolver === undefined) return await this.#lookup(host)
    const [v4, v6] = await this.#query(this.#resolver, host)
    if (v4.status === 'fulfilled' || v6.status === 'fulfilled') {
      const found = normalize([...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])])
      if (found.length !== 0) return found
      throw new DnsError(host, 'ENODATA', `DNS: ${host} has no A/AAAA records`)
    }
    const a = errorCode(v4.reason)
    const aaaa = errorCode(v6.reason)
    if (a === 'ENODATA' && aaaa === 'ENODATA') throw new DnsError(host, 'ENODATA', `DNS: ${host} has no A/AAAA records`, { cause: v4.reason })
    // the telling cause: ENODATA only says "not this family", the other code says why nothing came
    const [code, cause] = a === 'ENODATA' ? [aaaa, v6.reason] : [a, v4.reason]
    throw new DnsError(host, code, `DNS: resolving ${host} failed (A: ${a}, AAAA: ${aaaa})`, { cause })
  }

  /**
   * Both families, each settled by its answer or by the deadline, whichever
   * comes first. c-ares (1.34, in Node 20) doubles the timeout on each
   * retry, so 2000 ms × 2 tries alone waited about 7 s against a silent
   * server, and Node 20 has no `maxTimeout` to cap it. The deadline makes
   * `timeout × tries` the true bound. A query cut off keeps running
   * inside c-ares until its own timeout; it costs a socket read, nothing more.
   */
  async #query (resolver: Resolver, host: string): Promise<[PromiseSettledResult<string[]>, PromiseSettledResult<string[]>]> {
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<PromiseRejectedResult>((resolve) => {
      timer = setTimeout(() => {
        resolve({ status: 'rejected', reason: Object.assign(new Error(`queryA/AAAA ETIMEOUT ${host} (no answer within ${this.#deadlineMs} ms)`), { code: 'ETIMEOUT', hostname: host }) })
      }, this.#deadlineMs)
    })
    const settle = async (p: Promise<string[]>): Promise<PromiseSettledResult<string[]>> => await Promise.race([
      p.then((value): PromiseFulfilledResult<string[]> => ({ status: 'fulfilled', value }), (reason: unknown): PromiseRejectedResult => ({ status: 'rejected', reason })),
      deadline
    ])
    try {
      return await Promise.all([settle(resolver.resolve4(host)), settle(resolver.resolve6(host))])
    } finally {
      clearTimeout(timer)
    }
  }

  async #lookup (host: string): Promise<string[]> {
    let found: Array<{ address: string }>
    try {
      found = await lookup(host, { all: true, verbatim: true })
    } catch (err) {
      const code = errorCode(err)
      throw new DnsError(host, code, `DNS: resolving ${host} failed (${code})`, { cause: err })
    }
    if (found.length === 0) throw new DnsError(host, 'ENODATA', `DNS: ${host} has no A/AAAA records`)
    return normalize(found.map((f) => f.address))
  }
}

/** What a DnsWatch needs. */
export interface DnsWatchOptions {
  resolver: DnsResolver
  hostname: string
  /** Time between the end of one resolution and the start of the next, ms. */
  refreshMs: number
  /** Called with the new sorted set each time it differs from the last good one (the first set included). */
  onChange: (addresses: string[]) => void
  log: Logger
  /** Millisecond clock for the warn throttle; tests pass their own. */
  now?: () => number
}

/**
 * Keeps one hostname's address set fresh: resolves it every `refreshMs`
 * (a timer re-armed only when a resolution ends, so slow DNS never stacks
 * queries) and reports a changed set through `onChange`. A failure keeps
 * the last good set: endpoints that DNS cannot currently confirm are better
 * than none (APISIX's rule: the store being down never blocks a request).
 * Failures are logged at warn at most once a minute (keep one watch per
 * hostname so this is once per hostname), and each warned failure streak is
 * closed by one info line when resolution recovers.
 */
export class DnsWatch {
  readonly hostname: string
  readonly #resolver: DnsResolver
  readonly #refreshMs: number
  readonly #onChange: (addresses: string[]) => void
  readonly #log: Logger
  readonly #now: () => number
  #addresses: readonly string[] = []
  #timer: NodeJS.Timeout | undefined
  #begun = false
  #stopped = false
  /** Resolutions started / the newest one applied: an older answer never overwrites a newer one. */
  #started = 0
  #applied = 0
  /** Failures since the last success, and whether this streak was logged at warn. */
  #failures = 0
  #warned = false
  #lastWarn: number | undefined

  constructor (opts: DnsWatchOptions) {
    if (!Number.isFinite(opts.refreshMs) || opts.refreshMs <= 0) throw new TypeError(`DNS refresh interval must be a positive number of ms, got ${opts.refreshMs}`)
    this.hostname = opts.hostname
    this.#resolver = opts.resolver
    this.#refreshMs = opts.refreshMs
    this.#onChange = opts.onChange
    this.#log = opts.log
    this.#now = opts.now ?? (() => performance.now())
  }

  /** The last good address set, sorted (empty until the first success). */
  get addresses (): readonly string[] {
    return this.#addresses
  }

  /**
   * Resolves once (awaited; a failure is logged and leaves `addresses`
   * empty rather than failing start-up: the name may appear later), then
   * keeps refreshing until `stop`. A second call does nothing.
   */
  async start (): Promise<void> {
    if (this.#begun) return
    this.#begun = true
    await this.refresh()
    this.#schedule()
  }

  /** Resolves now (tests, config reload); applies the answer like a timed refresh. Does nothing after `stop`. */
  async refresh (): Promise<void> {
    if (this.#stopped) return
    const seq = ++this.#started
    let found: string[]
    try {
      found = await this.#resolver.resolve(this.hostname)
    } catch (err) {
      if (this.#stopped || seq < this.#applied) return
      this.#applied = seq
      this.#failed(err)
      return
    }
    // stopped meanwhile, or a newer resolution already answered: this answer is stale
    if (this.#stopped || seq < this.#applied) return
    this.#applied = seq
    this.#succeeded(found)
  }

  /** Stops refreshing; a resolution still in flight will not call onChange. Final. */
  stop (): void {
    this.#stopped = true
    clearTimeout(this.#timer)
    this.#timer = undefined
  }

  #schedule (): void {
    if (this.#stopped) return
    this.#timer = setTimeout(this.#tick, this.#refreshMs)
    // discovery alone must not keep the process alive
    this.#timer.unref()
  }

  readonly #tick = (): void => {
    this.#timer = undefined
    void this.refresh()
      .catch((err: unknown) => { this.#log.error({ hostname: this.hostname, err }, 'DNS discovery: refresh failed unexpectedly') })
      .then(() => { this.#schedule() })
  }

  #failed (err: unknown): void {
    this.#failures++
    const now = this.#now()
    if (this.#lastWarn !== undefined && now - this.#lastWarn < DNS_WARN_EVERY_MS) return
    this.#lastWarn = now
    this.#warned = true
    const code = err instanceof DnsError ? err.code : errorCode(err)
    this.#log.warn({ hostname: this.hostname, code, cause: (err as Error).message, failures: this.#failures, kept: this.#addresses.length },
      'DNS discovery failed; keeping the last good endpoints (logged at most once a minute per hostname)')
  }

  #succeeded (found: string[]): void {
    if (this.#failures !== 0) {
      if (this.#warned) this.#log.info({ hostname: this.hostname, failures: this.#failures, addresses: found.length }, 'DNS discovery recovered')
      this.#failures = 0
      this.#warned = false
    }
    if (sameAddresses(found, this.#addresses)) return
    const before = new Set(this.#addresses)
    const after = new Set(found)
    this.#log.info({ hostname: this.hostname, addresses: found.length, added: found.filter((a) => !before.has(a)), removed: this.#addresses.filter((a) => !after.has(a)) }, 'DNS endpoints changed')
    this.#addresses = Object.freeze([...found])
    try {
      this.#onChange(found)
    } catch (err) {
      // the owner's fault, but a throw here would be an unhandled rejection in a timer
      this.#log.error({ hostname: this.hostname, err }, 'DNS discovery: onChange threw')
    }
  }
}

/**
 * The origin of one endpoint: `origin` with its host replaced by `address`
 * (`http://svc.ns.svc:8080` + `10.0.0.7` → `http://10.0.0.7:8080`; IPv6 in
 * brackets). Scheme and port are kept, through the URL parser, so a default
 * port is written the same way as config's origins (`http://svc:80` →
 * `http://10.0.0.7`).
 */
export function endpointOrigin (origin: string, address: string): string {
  // the hostname setter silently ignores a value it cannot parse: check first
  if (isIP(address) === 0) throw new TypeError(`${JSON.stringify(address)} is not an IP address`)
  const u = new URL(origin)
  u.hostname = isIPv6(address) ? `[${address}]` : address
  return u.origin
}

/**
 * The hostname to discover for `origin`, or undefined when its host is an
 * IP literal (nothing to resolve).
 */
export function discoveryHost (origin: string): string | undefined {
  const host = new URL(origin).hostname
  if (host.startsWith('[') || isIP(host) !== 0) return undefined
  return host
}
