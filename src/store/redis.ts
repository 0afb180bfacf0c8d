/**
 * The Redis side of a fleet (`store.type` redis): the one place that speaks
 * to Redis, through ioredis (a maintained client with reconnection, Lua
 * script caching and pub/sub; not a hand-written protocol).
 *
 * Keys, all under `prefix` (so fleets can share a Redis):
 *
 * | key | type | holds |
 * |---|---|---|
 * | `state` | hash | `gen` (monotonic generation), `config` (the fleet's config fingerprint), `route:<name>` (a route's runtime state JSON) |
 * | `audit` | list | audit entries (JSON), newest last, capped |
 * | `changes` | channel | the new generation, after every write |
 * | `instances`, `instance:<id>` | zset, string with TTL | heartbeats |
 * | `lease:<route>`, `fence:<route>` | string with TTL, counter | the rollout leader's lease and its fencing token |
 * | `stats`, `rpc:<id>` | channels | rollout window snapshots, rollout actions forwarded to a leader |
 *
 * Every write is one Lua script that compares the generation it was based
 * on (and, for a rollout leader, its fencing token) before writing: two
 * writers never both win, a leader that lost its lease never writes.
 *
 * Nothing here is ever awaited on the request path: the proxy serves from
 * the table the store last applied, whatever Redis does.
 */
import { Redis, ReplyError } from 'ioredis'
import { CanarydError } from '../errors.js'
import type { Logger } from '../logger.js'
import type { AuditEntry } from './audit.js'

/** How long a command may take before the store is treated as unreachable (and the caller answered 503). */
const COMMAND_TIMEOUT_MS = 2000

/** Of the timeout, what is left for the reply's trip back: a script that starts later refuses itself. */
const DEADLINE_MARGIN_MS = 300

/** Result of a compare-and-set write. */
export type CommitResult =
  | { ok: true; generation: number }
  /** The fleet is at `generation`, not the one the write was based on. */
  | { ok: false; reason: 'conflict'; generation: number }
  /** The fencing token no longer holds the route's lease. */
  | { ok: false; reason: 'fenced'; generation: number }

/** The fleet state as read from Redis in one transaction. */
export interface FleetRead {
  generation: number
  /** The fingerprint of the config the fleet was seeded or last reloaded with. */
  config: string
  /** The history this state descends from (set when a fleet is seeded afresh; '' for states written before it existed). */
  lineage: string
  /** Route state JSON by route name, as stored. */
  routes: Map<string, string>
  /** The newest audit entries (oldest first), parsed; at most what was asked. */
  audit: unknown[]
}

/** An instance's heartbeat, as `GET /api/v1/fleet` lists it. */
export interface Heartbeat {
  id: string
  hostname: string
  pid: number
  admin: string
  proxy: string
  generation: number
  /** Routes whose rollout this instance leads. */
  leader: string[]
  config: string
  startedAt: string
  lastHeartbeat: string
  /** Random per process: two processes with one id are told apart by it. */
  nonce?: string
}

/** Options of the Redis side. */
export interface RedisStoreOptions {
  url: string
  prefix: string
  instanceId: string
  logger: Logger
  /** Audit entries kept in Redis (default 1000). */
  auditSize?: number
}

/** An error Redis answered (NOPERM, READONLY, OOM, WRONGTYPE), as opposed to a connection failure. */
function isReplyError (err: unknown): err is Error {
  // ioredis types its ReplyError class (from redis-errors) as any
  return err instanceof (ReplyError as new () => Error)
}

/**
 * A store command that failed, as the admin API answers it (503). `sent`:
 * the command may have reached Redis before the failure (a timeout, a
 * connection lost mid-command), so a write may have been applied; else
 * Redis was unreachable before anything was sent and nothing changed. A
 * reply error (NOPERM, READONLY after a failover, OOM) is Redis refusing,
 * not Redis away, and says so.
 */
export function storeUnavailable (where: string, err: unknown, sent = false): CanarydError {
  const why = err instanceof Error ? err.message : String(err)
  if (isReplyError(err)) return new CanarydError('CANARYD_ERR_STORE_UNAVAILABLE', `the fleet store (Redis at ${where}) refused the command (${why}); nothing was changed`, { cause: err })
  const outcome = sent
    ? 'the change may or may not have been applied: GET shows which once the store answers again'
    : 'nothing was changed'
  return new CanarydError('CANARYD_ERR_STORE_UNAVAILABLE', `the fleet store (Redis at ${where}) ${sent ? 'did not answer' : 'cannot be reached'} (${why}); ${outcome}. The proxy keeps serving the last state it applied`, { cause: err })
}

/** The URL without its password, for logs and messages. */
export function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    return `${u.protocol}//${u.hostname}:${u.port === '' ? '6379' : u.port}${u.pathname === '' ? '/0' : u.pathname}`
  } catch {
    return '(invalid URL)'
  }
}

/*
 * ARGV[7] of COMMIT and ARGV[3] of ACQUIRE: the moment (Redis's clock, ms)
 * after which the client has given up waiting (its command timeout): a
 * script Redis only gets to later (it was frozen, or overloaded) refuses
 * itself, so a write answered 503 is never applied behind the caller's back.
 * 0: no deadline (the clock offset is not known yet).
 */
const LATE = `
pcall(redis.replicate_commands)
local function late (deadline)
  if tonumber(deadline) <= 0 then return false end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(deadline)
end
`

/* The route fields from ARGV[i] on (n name/value pairs) into the hash; the audit entries after them onto the list. */
const FIELDS = `
local function put (key, i, n)
  for _ = 1, n do
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  return i
end
local function append (key, i)
  while i <= #ARGV do
    redis.call('RPUSH', key, ARGV[i])
    i = i + 1
  end
end
`

const COMMIT = LATE + FIELDS + `
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[1]) then return {0, gen} end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return {-1, gen} end
if late(ARGV[7]) then return {-2, gen} end
gen = gen + 1
redis.call('HSET', KEYS[1], 'gen', gen)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'config', ARGV[5]) end
local i = put(KEYS[1], 8, tonumber(ARGV[6]))
local d = tonumber(ARGV[i])
i = i + 1
for _ = 1, d do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
append(KEYS[2], i)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PUBLISH', ARGV[2], gen)
return {1, gen}
`

const SEED = FIELDS + `
if redis.call('EXISTS', KEYS[1]) == 1 then
  local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') or 0
  if gen >= tonumber(ARGV[1]) or (redis.call('HGET', KEYS[1], 'lineage') or '') ~= ARGV[4] then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'config', ARGV[2], 'lineage', ARGV[4])
local i = put(KEYS[1], 6, tonumber(ARGV[5]))
if i <= #ARGV then redis.call('DEL', KEYS[2]) end
append(KEYS[2], i)
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
`

const ACQUIRE = LATE + `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if late(ARGV[3]) then return -1 end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], t .. ' ' .. ARGV[1], 'PX', ARGV[2])
return t
`

const RENEW = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`

const RELEASE = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
`

/** The scripts as ioredis defines them (EVALSHA, loaded again after a Redis restart). */
interface Scripts {
  canarydCommit (state: string, audit: string, lease: string, ...args: Array<string | number>): Promise<[number, number]>
  canarydSeed (state: string, audit: string, ...args: Array<string | number>): Promise<number>
  canarydAcquire (lease: string, fence: string, id: string, ttl: number, deadline: number): Promise<number>
  canarydRenew (lease: string, value: string, ttl: number): Promise<number>
  canarydRelease (lease: string, value: string): Promise<number>
}

/** See the module comment. */
export class RedisStore {
  readonly prefix: string
  readonly instanceId: string
  /** Where Redis is, without its password. */
  readonly where: string
  readonly #r: Redis & Scripts
  readonly #sub: Redis
  readonly #log: Logger
  readonly #auditSize: number
  readonly #handlers = new Map<string, (message: string) => void>()
  readonly #upListeners: Array<(up: boolean) => void> = []
  #up = false
  #closed = false
  #lastError = ''
  #stalled = false
  #probe: NodeJS.Timeout | undefined
  /** Logged once per outage, not on every reconnect attempt. */
  #reported = false

  constructor (opts: RedisStoreOptions) {
    this.prefix = opts.prefix
    this.instanceId = opts.instanceId
    this.where = redactUrl(opts.url)
    this.#log = opts.logger
    this.#auditSize = opts.auditSize ?? 1000
    const common = {
      lazyConnect: true,
      connectTimeout: 2000,
      // a reconnect every 100 ms at first, then every second: the store comes back within a second of Redis
      retryStrategy: (n: number) => Math.min(100 * n, 1000),
      connectionName: `canaryd:${opts.instanceId}`
    }
    // commands fail at once while Redis is away (no offline queue): an admin write answers 503 instead of hanging
    this.#r = new Redis(opts.url, { ...common, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: COMMAND_TIMEOUT_MS }) as Redis & Scripts
    this.#sub = new Redis(opts.url, { ...common, maxRetriesPerRequest: null })
    this.#r.defineCommand('canarydCommit', { numberOfKeys: 3, lua: COMMIT })
    this.#r.defineCommand('canarydSeed', { numberOfKeys: 2, lua: SEED })
    this.#r.defineCommand('canarydAcquire', { numberOfKeys: 2, lua: ACQUIRE })
    this.#r.defineCommand('canarydRenew', { numberOfKeys: 1, lua: RENEW })
    this.#r.defineCommand('canarydRelease', { numberOfKeys: 1, lua: RELEASE })
    // up only while both connections are: without the subscriber, changes and rollout windows stop arriving
    this.#r.on('ready', () => { this.#measureClock().finally(() => { this.#updateUp() }) })
    this.#sub.on('ready', () => { this.#updateUp() })
    for (const c of [this.#r, this.#sub]) {
      c.on('close', () => { this.#updateUp() })
      c.on('error', (err: Error) => {
        this.#lastError = err.message
        if (this.#reported || this.#closed) return
        this.#reported = true
        this.#log.warn({ redis: this.where, err: err.message }, 'fleet store: Redis connection error (reconnecting; the proxy keeps serving the last applied state)')
      })
    }
    this.#sub.on('message', (channel: string, message: string) => {
      const h = this.#handlers.get(channel)
      if (h === undefined) return
      try {
        h(message)
      } catch (err) {
        this.#log.error({ err, channel }, 'fleet store: message handler failed')
      }
    })
  }

  /**
   * Redis's clock minus this process's monotonic clock (ms): measured when
   * the connection becomes ready and again whenever a script says it ran
   * late although it answered at once (Redis's clock was set since). The
   * local side is performance.now(), so this host's wall clock being set
   * never matters. Undefined until measured.
   */
  #clockOffset: number | undefined

  /** The deadline scripts check (LATE): Redis's time when this instance stops waiting, less a margin for the reply's trip; 0 when unknown. */
  #deadline (): number {
    if (this.#clockOffset === undefined) return 0
    return Math.round(performance.now() + this.#clockOffset + COMMAND_TIMEOUT_MS - DEADLINE_MARGIN_MS)
  }

  async #measureClock (): Promise<void> {
    try {
      const t0 = performance.now()
      const [sec, usec] = await this.#r.time()
      const t1 = performance.now()
      this.#clockOffset = Number(sec) * 1000 + Math.floor(Number(usec) / 1000) - (t0 + t1) / 2
    } catch {
      // keeps the last offset (or none: scripts then run without a deadline)
    }
  }

  /**
   * Runs a deadline-carrying script; when Redis says it ran late although
   * the answer came well within the timeout, the clocks moved apart: the
   * offset is measured again and the script runs once more.
   */
  async #onTime<T> (run: () => Promise<T>, late: (r: T) => boolean): Promise<T> {
    const t0 = performance.now()
    const r = await run()
    if (!late(r) || performance.now() - t0 > COMMAND_TIMEOUT_MS - DEADLINE_MARGIN_MS) return r
    await this.#measureClock()
    return await run()
  }

  /**
   * Treats Redis as not answering: a command timed out on a connection
   * that is still open (Redis frozen, or far too slow), or a watchdog
   * probe took too long. Writes then answer 503 at once instead of each
   * waiting the timeout, and rollouts hold, until Redis answers again (a
   * probe every 250 ms).
   */
  suspect (): void {
    if (this.#stalled || !this.#up) return
    this.#stalled = true
    this.#log.warn({ redis: this.where }, 'fleet store: Redis stopped answering (a command timed out): treated as unreachable until it answers again')
    this.#updateUp()
    let probing = false
    const answered = (): void => {
      clearInterval(probe)
      this.#probe = undefined
      this.#stalled = false
      this.#updateUp()
    }
    // a command the store needs anyway (an ACL that refuses PING must not keep it down); any answer, an error too, is Redis answering
    const probe = this.#probe = setInterval(() => {
      if (probing || this.#closed) return
      probing = true
      this.#r.hget(this.key('state'), 'gen').then(answered, (err: unknown) => { if (isReplyError(err)) answered() }).finally(() => { probing = false })
    }, 250)
    probe.unref()
  }

  #updateUp (): void {
    this.#setUp(!this.#stalled && this.#r.status === 'ready' && this.#sub.status === 'ready')
  }

  #setUp (up: boolean): void {
    if (up === this.#up) return
    this.#up = up
    if (up) {
      if (this.#reported) this.#log.info({ redis: this.where }, 'fleet store: Redis reachable again')
      this.#reported = false
      this.#lastError = ''
    } else if (!this.#closed) {
      this.#reported = true
      this.#log.warn({ redis: this.where }, 'fleet store: Redis unreachable; the proxy keeps serving the last applied state, admin writes answer 503, rollouts hold')
    }
    for (const l of this.#upListeners) l(up)
  }

  /** True while commands can be sent. */
  get up (): boolean {
    return this.#up
  }

  /** Called with true when Redis becomes reachable, false when it is lost. */
  onUp (fn: (up: boolean) => void): void {
    this.#upListeners.push(fn)
  }

  key (name: string): string {
    return this.prefix + name
  }

  /**
   * Starts both connections; resolves true once the command connection is
   * ready, false when `timeoutMs` passed first (the client keeps retrying in
   * the background and `onUp` says when it gets there).
   */
  async connect (timeoutMs: number): Promise<boolean> {
    this.#sub.connect().catch(() => {})
    this.#r.connect().catch(() => {})
    if (this.#up) return true
    return await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => { resolve(this.#up) }, timeoutMs)
      timer.unref()
      this.onUp((up) => {
        if (!up) return
        clearTimeout(timer)
        resolve(true)
      })
    })
  }

  /**
   * Runs a command, turning a failure into CANARYD_ERR_STORE_UNAVAILABLE;
   * `write`: a failure after sending leaves the outcome unknown (said).
   */
  async #run<T> (fn: () => Promise<T>, write = false): Promise<T> {
    if (!this.#up) throw storeUnavailable(this.where, new Error(`not connected${this.#lastError === '' ? '' : `: ${this.#lastError}`}`))
    try {
      return await fn()
    } catch (err) {
      if (err instanceof CanarydError) throw err
      if (isReplyError(err)) this.#log.error({ redis: this.where, err: err.message }, 'fleet store: Redis refused a command')
      else if (/timed out/i.test((err as Error).message)) this.suspect()
      throw storeUnavailable(this.where, err, write)
    }
  }

  /** The last connection error (ECONNREFUSED, WRONGPASS, a TLS failure), '' when none since connected. */
  get lastError (): string {
    return this.#lastError
  }

  /** Reads the generation, config fingerprint, route states and the newest `auditTail` audit entries in one transaction; undefined when the fleet was never seeded. */
  async read (auditTail: number): Promise<FleetRead | undefined> {
    const res = await this.#run(async () => await this.#r.multi().hgetall(this.key('state')).lrange(this.key('audit'), -Math.max(1, auditTail), -1).exec())
    const hash = (res?.[0]?.[1] ?? {}) as Record<string, string>
    const list = (res?.[1]?.[1] ?? []) as string[]
    if (hash.gen === undefined) return undefined
    const generation = Number(hash.gen)
    if (!Number.isSafeInteger(generation) || generation < 0) throw new CanarydError('CANARYD_ERR_STORE_UNAVAILABLE', `the fleet state in Redis (${this.where}, key ${this.key('state')}) has an unreadable generation ${JSON.stringify(hash.gen)}: nothing was changed. Fix the key (or delete it: the instances seed it again)`)
    const routes = new Map<string, string>()
    for (const [k, v] of Object.entries(hash)) if (k.startsWith('route:')) routes.set(k.slice(6), v)
    return { generation, config: hash.config ?? '', lineage: hash.lineage ?? '', routes, audit: parseList(list) }
  }

  /** The fleet's generation (0 when never seeded). */
  async generation (): Promise<number> {
    const g = await this.#run(async () => await this.#r.hget(this.key('state'), 'gen'))
    return g === null ? 0 : Number(g)
  }

  /**
   * Writes route states (and removes the `drop` ones) and audit entries if
   * the fleet is still at `base` (and, with `fence`, the route's lease still
   * holds that value):
   * one Lua script, so nothing interleaves. `config` '' keeps the fleet's
   * fingerprint. Every instance is told by pub/sub.
   */
  async commit (base: number, routes: ReadonlyMap<string, string>, audit: readonly AuditEntry[], opts: { config?: string; fence?: { route: string; value: string }; drop?: readonly string[] } = {}): Promise<CommitResult> {
    // ARGV[7] (index 6) is the deadline, set for each attempt
    const args: Array<string | number> = [base, this.key('changes'), this.#auditSize, opts.fence?.value ?? '', opts.config ?? '', routes.size, 0]
    for (const [name, json] of routes) args.push(`route:${name}`, json)
    const drop = opts.drop ?? []
    args.push(drop.length, ...drop.map((n) => `route:${n}`))
    for (const e of audit) args.push(JSON.stringify(e))
    const lease = this.key(`lease:${opts.fence?.route ?? ''}`)
    const [ok, gen] = await this.#onTime(async () => {
      args[6] = this.#deadline()
      return await this.#run(async () => await this.#r.canarydCommit(this.key('state'), this.key('audit'), lease, ...args), true)
    }, ([ok]) => ok === -2)
    if (ok === 1) return { ok: true, generation: gen }
    if (ok === -2) throw storeUnavailable(this.where, new Error('Redis ran the write after this instance had stopped waiting for it, and refused it'))
    return { ok: false, reason: ok === 0 ? 'conflict' : 'fenced', generation: gen }
  }

  /**
   * Puts this whole state (route states, audit) in Redis at `generation`
   * when Redis holds none (never seeded, or restarted without its data) or
   * an older one of the same `lineage` (the history a state descends from:
   * restored from an older copy, or seeded again by an instance that had
   * missed the last changes). False when the fleet's is as new or newer,
   * or of another history (a fleet started afresh meanwhile): it is then
   * adopted instead.
   */
  async seed (generation: number, config: string, lineage: string, routes: ReadonlyMap<string, string>, audit: readonly unknown[]): Promise<boolean> {
    const args: Array<string | number> = [generation, config, this.key('changes'), lineage, routes.size]
    for (const [name, json] of routes) args.push(`route:${name}`, json)
    for (const e of audit.slice(-this.#auditSize)) args.push(JSON.stringify(e))
    return await this.#run(async () => await this.#r.canarydSeed(this.key('state'), this.key('audit'), ...args)) === 1
  }

  /**
   * Subscribes `fn` to a channel (the name without the prefix). The
   * subscription is sent once connected, and again by the client after
   * every reconnect.
   */
  async listen (channel: string, fn: (message: string) => void): Promise<void> {
    const c = this.key(channel)
    this.#handlers.set(c, fn)
    const done = this.#sub.subscribe(c).catch(() => {})
    // while Redis answers, wait for the subscription (a message published right after is then heard); bounded, never while it is away
    if (this.#up) await Promise.race([done, new Promise((resolve) => { setTimeout(resolve, 1000).unref() })])
  }

  /** Publishes on a channel (the name without the prefix): how many subscribers got it, -1 when Redis is away (the message is dropped). */
  async publish (channel: string, message: string): Promise<number> {
    if (!this.#up) return -1
    try {
      return await this.#r.publish(this.key(channel), message)
    } catch {
      return -1
    }
  }

  /** Takes the route's rollout lease when nobody holds it: the fencing token, or 0 (held by another). */
  async acquire (route: string, ttlMs: number): Promise<number> {
    const t = Number(await this.#onTime(async () => await this.#run(async () => await this.#r.canarydAcquire(this.key(`lease:${route}`), this.key(`fence:${route}`), this.instanceId, ttlMs, this.#deadline())), (x) => Number(x) === -1))
    if (t === -1) throw storeUnavailable(this.where, new Error('Redis ran the lease request after this instance had stopped waiting for it, and refused it'))
    return t
  }

  /** Extends a held lease; false when it is no longer ours (expired, or taken). */
  async renew (route: string, token: number, ttlMs: number): Promise<boolean> {
    return await this.#run(async () => await this.#r.canarydRenew(this.key(`lease:${route}`), `${token} ${this.instanceId}`, ttlMs)) === 1
  }

  /** Gives a held lease up (a finished rollout, a clean shutdown). */
  async release (route: string, token: number): Promise<void> {
    await this.#run(async () => await this.#r.canarydRelease(this.key(`lease:${route}`), `${token} ${this.instanceId}`))
  }

  /** Who holds the route's lease, or undefined. */
  async holder (route: string): Promise<{ token: number; instance: string } | undefined> {
    const v = await this.#run(async () => await this.#r.get(this.key(`lease:${route}`)))
    if (v === null) return undefined
    const sp = v.indexOf(' ')
    return { token: Number(v.slice(0, sp)), instance: v.slice(sp + 1) }
  }

  /** Writes this instance's heartbeat (kept `ttlMs`). */
  async heartbeat (hb: Heartbeat, ttlMs: number): Promise<void> {
    await this.#run(async () => {
      await this.#r.multi()
        .set(this.key(`instance:${hb.id}`), JSON.stringify(hb), 'PX', ttlMs)
        .zadd(this.key('instances'), String(Date.now()), hb.id)
        .exec()
    })
  }

  /** The heartbeat of instance `id`, or undefined. */
  async heartbeatOf (id: string): Promise<Heartbeat | undefined> {
    const v = await this.#run(async () => await this.#r.get(this.key(`instance:${id}`)))
    if (v === null) return undefined
    try {
      return JSON.parse(v) as Heartbeat
    } catch {
      return undefined
    }
  }

  /** Removes this instance's heartbeat (clean shutdown). */
  async leave (): Promise<void> {
    await this.#run(async () => {
      await this.#r.multi().del(this.key(`instance:${this.instanceId}`)).zrem(this.key('instances'), this.instanceId).exec()
    })
  }

  /** The live instances (heartbeat key present); forgets the ones whose key expired. */
  async instances (): Promise<Heartbeat[]> {
    const ids = await this.#run(async () => await this.#r.zrange(this.key('instances'), '0', '-1'))
    if (ids.length === 0) return []
    const values = await this.#run(async () => await this.#r.mget(ids.map((id) => this.key(`instance:${id}`))))
    const out: Heartbeat[] = []
    const gone: string[] = []
    values.forEach((v, i) => {
      if (v === null) gone.push(ids[i]!)
      else {
        try {
          out.push(JSON.parse(v) as Heartbeat)
        } catch {
          gone.push(ids[i]!)
        }
      }
    })
    if (gone.length !== 0) await this.#r.zrem(this.key('instances'), ...gone).catch(() => {})
    return out
  }

  /** Closes both connections (no reconnect). */
  async close (): Promise<void> {
    this.#closed = true
    if (this.#probe !== undefined) clearInterval(this.#probe)
    this.#r.disconnect()
    this.#sub.disconnect()
  }
}

function parseList (list: readonly string[]): unknown[] {
  const out: unknown[] = []
  for (const s of list) {
    try {
      out.push(JSON.parse(s))
    } catch {
      // a hand-written entry that is not JSON is skipped, as the state file's audit is filtered
    }
  }
  return out
}
