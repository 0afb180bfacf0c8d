/**
 * Fleet membership and the rollout leader's tools, over the Redis store:
 * heartbeats (who is in the fleet, what generation each applied, which
 * rollouts each leads), leases with fencing tokens, the window-snapshot
 * channel, and actions forwarded to a rollout's leader (pause, resume,
 * promote, abort sent to any instance are carried out by the one that
 * runs the rollout). Control plane only.
 */
import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import { CanarydError, ConfigError, ERROR_CODES, type ErrorCode } from '../errors.js'
import type { Logger } from '../logger.js'
import type { Heartbeat, RedisStore } from './redis.js'

/** An action forwarded to a rollout's leader. */
export interface FleetCall {
  op: string
  route: string
}

/** The leader's answer: its result, or the error it raised (code and message, re-raised by the caller). */
export type FleetAnswer = { ok: true; result: unknown } | { ok: false; code: string; message: string }

/** How long a forwarded action waits for the leader's answer. */
const CALL_TIMEOUT_MS = 5000

/** The default instance id: the host name (a pod's name in Kubernetes) and 6 random hex digits. */
export function defaultInstanceId (): string {
  return `${hostname()}-${randomBytes(3).toString('hex')}`
}

/** What an instance tells the fleet about itself beyond its identity (addresses, generation, leases, config). */
export type InstanceFacts = Omit<Heartbeat, 'id' | 'hostname' | 'pid' | 'startedAt' | 'lastHeartbeat'>

/** This process's heartbeat as of now (the fleet list and GET /api/v1/fleet's own line). */
export function heartbeatNow (id: string, startedAt: string, facts: InstanceFacts): Heartbeat {
  return { id, hostname: hostname(), pid: process.pid, startedAt, lastHeartbeat: new Date().toISOString(), ...facts }
}

/** Options of the fleet link. */
export interface FleetLinkOptions {
  redis: RedisStore
  logger: Logger
  leaseTtlMs: number
  heartbeatMs: number
  /** What this instance's heartbeat says (addresses, generation, leases), read at each beat. */
  describe: () => InstanceFacts
  /** When this process started (ISO; default: now). */
  startedAt?: string
}

interface Pending {
  resolve: (a: FleetAnswer) => void
  timer: NodeJS.Timeout
}

/** See the module comment. */
export class FleetLink {
  readonly self: string
  readonly leaseTtlMs: number
  readonly #redis: RedisStore
  readonly #log: Logger
  readonly #heartbeatMs: number
  readonly #describe: FleetLinkOptions['describe']
  readonly #startedAt: string
  readonly #nonce = randomBytes(8).toString('hex')
  readonly #pending = new Map<string, Pending>()
  #serve: ((c: FleetCall) => Promise<{ result: unknown } | undefined>) | undefined
  #beat: NodeJS.Timeout | undefined
  #soon: NodeJS.Timeout | undefined
  #seq = 0

  constructor (opts: FleetLinkOptions) {
    this.#redis = opts.redis
    this.self = opts.redis.instanceId
    this.#log = opts.logger
    this.leaseTtlMs = opts.leaseTtlMs
    this.#heartbeatMs = opts.heartbeatMs
    this.#describe = opts.describe
    this.#startedAt = opts.startedAt ?? new Date().toISOString()
    const redis = opts.redis
    this.stats = {
      self: this.self,
      publish: async (message) => await redis.publish('stats', message) >= 0,
      listen: async (fn) => { await redis.listen('stats', fn) }
    }
  }

  /**
   * Starts the heartbeat and the forwarded-action channel. Refuses (a
   * ConfigError naming store.instanceId) when another running process
   * has this instance's id: they would share its call channel and answer
   * each other's forwarded actions. A heartbeat left by this id's previous
   * process (a restart) is told apart: nobody refreshes it.
   */
  async start (): Promise<void> {
    if (this.#redis.up) {
      const seen = await this.#redis.heartbeatOf(this.self).catch(() => undefined)
      if (seen !== undefined && seen.nonce !== this.#nonce) {
        await new Promise((resolve) => { setTimeout(resolve, this.#heartbeatMs + 250) })
        const again = await this.#redis.heartbeatOf(this.self).catch(() => undefined)
        if (again !== undefined && again.nonce !== this.#nonce && again.lastHeartbeat !== seen.lastHeartbeat) {
          throw new ConfigError('store.instanceId', `another running instance (${again.hostname}, pid ${again.pid}) has the instance id ${this.self}: give each instance its own (store.instanceId / CANARYD_INSTANCE_ID; "" picks the host name and 6 random hex digits)`)
        }
      }
    }
    await this.#redis.listen(`rpc:${this.self}`, (m) => { this.#message(m) })
    this.#writeHeartbeat()
    this.#beat = setInterval(() => { this.#writeHeartbeat() }, this.#heartbeatMs)
    this.#beat.unref()
  }

  /**
   * Writes the heartbeat now (also after a lease changes hands or a
   * generation is applied, so the fleet list is current); beats asked for
   * within 50 ms of each other are written once.
   */
  beat (): void {
    if (this.#soon !== undefined) return
    this.#soon = setTimeout(() => {
      this.#soon = undefined
      this.#writeHeartbeat()
    }, 50)
    this.#soon.unref()
  }

  #writeHeartbeat (): void {
    if (!this.#redis.up) return
    const hb = heartbeatNow(this.self, this.#startedAt, { ...this.#describe(), nonce: this.#nonce })
    this.#redis.heartbeat(hb, 3 * this.#heartbeatMs).catch(() => {})
  }

  get up (): boolean {
    return this.#redis.up
  }

  onUp (fn: (up: boolean) => void): void {
    this.#redis.onUp(fn)
  }

  async acquire (route: string): Promise<number> {
    return await this.#redis.acquire(route, this.leaseTtlMs)
  }

  async renew (route: string, token: number): Promise<boolean> {
    return await this.#redis.renew(route, token, this.leaseTtlMs)
  }

  async release (route: string, token: number): Promise<void> {
    await this.#redis.release(route, token)
  }

  async holder (route: string): Promise<{ token: number; instance: string } | undefined> {
    return await this.#redis.holder(route)
  }

  /** The live instances, from their heartbeats. */
  async instances (): Promise<Heartbeat[]> {
    return await this.#redis.instances()
  }

  /** The snapshot channel of the fleet-wide rollout windows. */
  readonly stats: { readonly self: string; publish: (message: string) => Promise<boolean>; listen: (fn: (message: string) => void) => Promise<void> }

  /**
   * Carries out actions other instances forward to this one; `fn` resolves
   * undefined for an action this instance is not the one to answer (it
   * does not lead that rollout): no answer is sent, so the one that does
   * is heard (or the caller's timeout).
   */
  serve (fn: (c: FleetCall) => Promise<{ result: unknown } | undefined>): void {
    this.#serve = fn
  }

  /**
   * Sends an action to `instance` (a rollout's leader) and returns its
   * result, or raises the error it answered with. 503
   * CANARYD_ERR_STORE_UNAVAILABLE when it cannot be sent or no answer
   * comes within 5 s (nothing is known to have changed then).
   */
  async call (instance: string, c: FleetCall): Promise<unknown> {
    const id = `${this.self}:${++this.#seq}`
    const answer = new Promise<FleetAnswer>((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        resolve({ ok: false, code: 'CANARYD_ERR_STORE_UNAVAILABLE', message: `instance ${instance}, which leads the rollout of route ${c.route}, did not answer within ${CALL_TIMEOUT_MS / 1000} s: the ${c.op} may or may not have been applied (GET …/rollout shows which); retry` })
      }, CALL_TIMEOUT_MS)
      this.#pending.set(id, { resolve, timer })
    })
    const receivers = await this.#redis.publish(`rpc:${instance}`, JSON.stringify({ k: 'call', id, from: this.self, op: c.op, route: c.route }))
    if (receivers <= 0) {
      const p = this.#pending.get(id)
      if (p !== undefined) {
        clearTimeout(p.timer)
        this.#pending.delete(id)
      }
      // nobody listens on its channel: the leader is gone (its lease expires within store.leaseTtlMs, then another instance takes the rollout over)
      throw new CanarydError('CANARYD_ERR_STORE_UNAVAILABLE', receivers < 0
        ? `the fleet store (Redis at ${this.#redis.where}) cannot be reached to forward the action to the rollout's leader ${instance}; nothing was changed`
        : `instance ${instance}, which leads the rollout of route ${c.route}, is not connected; another instance takes the rollout over within ${Math.ceil(this.leaseTtlMs * 4 / 3000)} s: retry then. Nothing was changed`)
    }
    const a = await answer
    if (a.ok) return a.result
    const code = (Object.hasOwn(ERROR_CODES, a.code) ? a.code : 'CANARYD_ERR_INTERNAL') as ErrorCode
    throw new CanarydError(code, a.message)
  }

  #message (raw: string): void {
    let m: { k?: unknown; id?: unknown; from?: unknown; op?: unknown; route?: unknown; answer?: FleetAnswer }
    try {
      m = JSON.parse(raw) as typeof m
    } catch {
      return
    }
    if (typeof m.id !== 'string') return
    if (m.k === 'reply' && m.answer !== undefined) {
      const p = this.#pending.get(m.id)
      if (p === undefined) return
      clearTimeout(p.timer)
      this.#pending.delete(m.id)
      p.resolve(m.answer)
      return
    }
    if (m.k !== 'call' || typeof m.from !== 'string' || typeof m.op !== 'string' || typeof m.route !== 'string' || this.#serve === undefined) return
    const from = m.from
    const id = m.id
    this.#serve({ op: m.op, route: m.route }).then(
      (r): FleetAnswer | undefined => r === undefined ? undefined : { ok: true, result: r.result },
      (err: unknown): FleetAnswer => err instanceof CanarydError ? { ok: false, code: err.code, message: err.message } : { ok: false, code: 'CANARYD_ERR_INTERNAL', message: 'internal error' }
    ).then(async (answer) => {
      if (answer === undefined) return
      if (!answer.ok && answer.code === 'CANARYD_ERR_INTERNAL') this.#log.error({ op: m.op, route: m.route }, 'forwarded rollout action failed')
      await this.#redis.publish(`rpc:${from}`, JSON.stringify({ k: 'reply', id, answer }))
    }).catch(() => {})
  }

  /** Stops the heartbeat and removes it (a clean shutdown leaves the list at once). */
  async close (): Promise<void> {
    if (this.#beat !== undefined) clearInterval(this.#beat)
    if (this.#soon !== undefined) clearTimeout(this.#soon)
    this.#beat = this.#soon = undefined
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer)
      p.resolve({ ok: false, code: 'CANARYD_ERR_STORE_UNAVAILABLE', message: `instance ${this.self} is shutting down: the forwarded action's outcome is unknown (GET …/rollout shows it); retry on another instance` })
    }
    this.#pending.clear()
    await this.#redis.leave().catch(() => {})
  }
}
