/**
 * Starting a rollout from a route page: paste a plan (JSON or YAML), check
 * it with the server (`?dryRun=true` validates exactly what a start would,
 * plan and route), then start it behind a confirmation. The page parses
 * nothing itself beyond telling JSON from YAML for the content type: the
 * server's validator is the only one, so its messages are the ones shown.
 */
import { ApiError, call, errorText, routePath } from './api.js'
import { clearError, showError } from './banner.js'
import { confirmAction } from './dialogs.js'
import { fill, h } from './dom.js'
import { planStep } from './format.js'
import type { PlanView, RolloutView } from './types.js'

const EXAMPLE = `# for example:
canary: canary
steps: [1, 10, 50]
intervalMs: 60000
analysis:
  minRequests: 200
  maxFailedChecks: 2
  successRate: { min: 99 }`

/** The body and its content type: JSON when it parses as JSON, YAML otherwise (the server tells which key is wrong). */
function planBody (text: string): { text: string, type: string } {
  try {
    JSON.parse(text)
    return { text, type: 'application/json' }
  } catch {
    return { text, type: 'application/yaml' }
  }
}

/** A check that passed: the plan as it would run, and what the server warns of. */
interface DryRun { valid: boolean, plan: PlanView, warnings?: string[] }

/** The start form; `onStarted` asks the page to re-read. */
export class PlanPanel {
  readonly el: HTMLElement
  #route = ''
  #text = h('textarea', { id: 'plan-text', 'data-testid': 'plan-text', rows: 9, spellcheck: 'false', placeholder: EXAMPLE })
  #upstream = h('input', { id: 'plan-upstream', 'data-testid': 'plan-upstream', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'http://10.0.1.9:8080,http://10.0.1.10:8080' })
  #validate = h('button', { type: 'button', 'data-testid': 'plan-validate' }, 'Validate')
  #start = h('button', { type: 'button', class: 'primary', 'data-testid': 'plan-start' }, 'Start…')
  #result = h('div', { 'data-testid': 'plan-result', class: 'result', 'aria-live': 'polite' })
  #busy = false

  constructor (private readonly onStarted: () => void) {
    this.#validate.addEventListener('click', () => { void this.#check() })
    this.#start.addEventListener('click', () => { void this.#begin() })
    this.el = h('section', { class: 'panel wide', 'aria-labelledby': 'plan-title' },
      h('h2', { id: 'plan-title' }, 'Start a rollout'),
      h('p', { class: 'field' }, h('label', { for: 'plan-text' }, 'Plan (JSON or YAML, as in the config file\'s rollout block)'), this.#text),
      h('p', { class: 'field' }, h('label', { for: 'plan-upstream' }, 'Point the canary at a new build first (optional, comma-separated origins; only while its weight is 0)'), this.#upstream),
      h('p', { class: 'actions' }, this.#validate, this.#start),
      this.#result)
  }

  /** Follows the route's rollout: Start is off while one is active (the server would answer 409). */
  update (route: string, active: boolean): void {
    this.#route = route
    this.#start.disabled = active
    this.#start.title = active ? 'A rollout is active on this route: promote or abort it first' : ''
  }

  #query (dryRun: boolean): string {
    const q = new URLSearchParams()
    if (dryRun) q.set('dryRun', 'true')
    const up = this.#upstream.value.replace(/\s+/g, '')
    if (up !== '') q.set('canaryUpstream', up)
    const s = q.toString()
    return `${routePath(this.#route)}/rollout${s === '' ? '' : `?${s}`}`
  }

  /** Asks the server whether the plan would start; shows its answer; the dry run's answer or null. */
  async #dryRun (): Promise<DryRun | null> {
    const text = this.#text.value
    if (text.trim() === '') {
      fill(this.#result, h('p', { class: 'error' }, 'Paste a plan first.'))
      return null
    }
    fill(this.#result, h('p', { class: 'muted' }, 'Checking…'))
    try {
      const { data } = await call<DryRun>('POST', this.#query(true), planBody(text))
      clearError()
      fill(this.#result,
        h('p', { class: 'ok' }, 'Valid: the plan as the server would run it:'),
        ...(data.warnings ?? []).map((w) => h('p', { class: 'warn' }, `Warning: ${w}`)),
        h('pre', null, JSON.stringify(data.plan, null, 2)))
      return data
    } catch (err) {
      fill(this.#result, h('p', { class: 'error' }, errorText(err)))
      showError(err)
      return null
    }
  }

  async #check (): Promise<void> {
    if (this.#busy) return
    this.#busy = true
    try {
      await this.#dryRun()
    } finally {
      this.#busy = false
    }
  }

  async #begin (): Promise<void> {
    if (this.#busy) return
    this.#busy = true
    try {
      // validated right before sending, whatever was validated earlier: the text may have changed since
      const dry = await this.#dryRun()
      if (dry === null) return
      const steps = (dry.plan.steps ?? []).map(planStep)
      const up = this.#upstream.value.replace(/\s+/g, '')
      const answer = await confirmAction({
        title: `Start a rollout on ${this.#route}?`,
        body: [
          h('p', null, `${dry.plan.canary ?? 'the canary'}: ${steps.join(' → ')}${steps.length === 0 ? '' : ' → 100'}${dry.plan.intervalMs === undefined ? '' : `, a check every ${dry.plan.intervalMs / 1000} s`}.`),
          up !== '' && h('p', null, `The canary is pointed at ${up.split(',').join(', ')} first.`),
          ...(dry.warnings ?? []).map((w) => h('p', { class: 'warn' }, w))
        ],
        ok: 'Start rollout'
      })
      if (answer === null) return
      const { data } = await call<RolloutView>('POST', this.#query(false), planBody(this.#text.value))
      clearError()
      fill(this.#result,
        h('p', { class: 'ok' }, `Started: ${data.state}, step ${data.step}, ${data.canary} at ${data.weight}%.`),
        ...(data.warnings ?? []).map((w) => h('p', { class: 'warn' }, `Warning: ${w}`)))
      this.onStarted()
    } catch (err) {
      fill(this.#result, h('p', { class: 'error' }, `Not started: ${errorText(err)}`))
      showError(err)
      if (err instanceof ApiError && err.status === 409) this.onStarted()
    } finally {
      this.#busy = false
    }
  }
}
