/**
 * Outbound webhooks (undici): the only network I/O of rollout/. Event
 * webhooks are fire-and-forget with a per-attempt timeout and a few retries
 * with backoff, so a slow or dead receiver never blocks the controller or the
 * proxy; the confirm-promotion gate is awaited, bounded by its timeout.
 */
import { request } from 'undici'
import type { Logger } from '../logger.js'
import type { RolloutRecord, RolloutNotifier } from './controller.js'
import type { RolloutEvent, WebhookSpec } from '../config/plan.js'

/** The JSON body of every webhook: Slack-compatible `text`, plus structured fields for machines. */
export interface WebhookPayload {
  text: string
  event: RolloutEvent | 'confirm-promotion'
  route: string
  canary: string
  stable: string
  state: string
  step: number
  steps: number
  weight: number
  failedChecks: number
  reason: string | null
  startedAt: string
  at: string
  /** The latest check's figures and verdict, when there is one. */
  lastCheck: RolloutRecord['checks'][number] | null
}

/** Builds the payload of an event for a record. */
export function buildPayload (event: WebhookPayload['event'], record: RolloutRecord, text: string, now: Date = new Date()): WebhookPayload {
  return {
    text,
    event,
    route: record.route,
    canary: record.plan.canary,
    stable: record.stable,
    state: record.state,
    step: record.stepIndex + 1,
    steps: record.plan.steps.length,
    weight: record.weight,
    failedChecks: record.failedChecks,
    reason: record.reason ?? null,
    startedAt: record.startedAt,
    at: now.toISOString(),
    lastCheck: record.checks.at(-1) ?? null
  }
}

/** One POST with a timeout; resolves with the status, rejects on network error or timeout. */
async function post (url: string, body: string, timeoutMs: number): Promise<number> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'user-agent': 'canaryd-rollout' },
    body,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    signal: AbortSignal.timeout(timeoutMs)
  })
  await res.body.dump()
  return res.statusCode
}

/** The undici implementation of the controller's notifier. */
export class WebhookNotifier implements RolloutNotifier {
  readonly #log: Logger | undefined
  readonly #backoffMs: number
  /** Deliveries in flight (tests await `idle()`; shutdown does not wait for them). */
  readonly #inFlight = new Set<Promise<void>>()

  constructor (opts: { logger?: Logger; backoffMs?: number } = {}) {
    this.#log = opts.logger
    this.#backoffMs = opts.backoffMs ?? 500
  }

  notify (hooks: readonly WebhookSpec[], event: RolloutEvent, record: RolloutRecord, message: string): void {
    for (const h of hooks) {
      if (h.type !== 'event' || !h.events.includes(event)) continue
      const body = JSON.stringify(buildPayload(event, record, message))
      const p = this.#deliver(h, body, event).finally(() => this.#inFlight.delete(p))
      this.#inFlight.add(p)
    }
  }

  async #deliver (h: WebhookSpec, body: string, event: string): Promise<void> {
    for (let attempt = 0; attempt <= h.retries; attempt++) {
      try {
        const status = await post(h.url, body, h.timeoutMs)
        if (status >= 200 && status < 300) return
        // 4xx other than 408/429 will not get better by retrying
        if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
          this.#log?.warn({ url: h.url, event, status }, 'rollout webhook refused')
          return
        }
        this.#log?.warn({ url: h.url, event, status, attempt }, 'rollout webhook failed')
      } catch (err) {
        this.#log?.warn({ url: h.url, event, err: (err as Error).message, attempt }, 'rollout webhook failed')
      }
      if (attempt < h.retries) await new Promise((resolve) => setTimeout(resolve, this.#backoffMs * 2 ** attempt).unref())
    }
  }

  async confirm (gate: WebhookSpec, record: RolloutRecord): Promise<{ ok: boolean; detail: string }> {
    const body = JSON.stringify(buildPayload('confirm-promotion', record, `rollout of ${record.plan.canary} on ${record.route}: all steps passed, asking to promote`))
    try {
      const status = await post(gate.url, body, gate.timeoutMs)
      return { ok: status >= 200 && status < 300, detail: `HTTP ${status}` }
    } catch (err) {
      return { ok: false, detail: (err as Error).message }
    }
  }

  /** Resolves when every delivery started so far has finished (tests). */
  async idle (): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight])
  }
}
