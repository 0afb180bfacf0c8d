/**
 * The weights form of a route page: a slider and a number box per version,
 * kept summing to 100, and Apply behind a confirmation. It sends
 * `PUT …/weights` exactly as `canaryd weights` would; the server's answer is
 * the only truth shown (the "now" figures), the sliders are a draft.
 */
import { call, routePath } from './api.js'
import { clearError, showError } from './banner.js'
import { confirmAction } from './dialogs.js'
import { h, pct, weightChange, weightNum } from './dom.js'
import { PAUSABLE } from './rollout.js'
import type { RouteView } from './types.js'

/**
 * The weights after `changed` is set to `value` (0–100, rounded): the other
 * versions share the rest in proportion to their weights in `base` (evenly
 * when they all had 0), as integers by largest remainder so the sum is
 * exactly 100. `base` is the draft when the operator took this slider, so
 * dragging it back and forth gives the others back what they had.
 */
export function rebalance (base: Readonly<Record<string, number>>, changed: string, value: number): Record<string, number> {
  const names = Object.keys(base)
  const others = names.filter((n) => n !== changed)
  const x = others.length === 0 ? 100 : Math.min(100, Math.max(0, Math.round(value)))
  const rest = 100 - x
  const total = others.reduce((a, n) => a + (base[n] ?? 0), 0)
  const shares = others.map((n) => total > 0 ? (base[n] ?? 0) / total * rest : rest / others.length)
  const ints = shares.map(Math.floor)
  let left = rest - ints.reduce((a, b) => a + b, 0)
  // largest fractional part first; ties go to the version listed first
  const order = shares.map((s, i) => [s - Math.floor(s), i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1])
  for (const [, i] of order) {
    if (left <= 0) break
    ints[i]!++
    left--
  }
  const out: Record<string, number> = {}
  for (const n of names) out[n] = n === changed ? x : ints[others.indexOf(n)]!
  return out
}

/** The weights form; `onChanged` asks the page to re-read the route. */
export class WeightsPanel {
  readonly el: HTMLElement
  #route: RouteView | undefined
  #server: Record<string, number> = {}
  #draft: Record<string, number> = {}
  #base: Record<string, number> = {}
  #taken: string | undefined
  /** the operator moved something: the draft is theirs until applied or reset */
  #edited = false
  #rows = h('div', { class: 'weights' })
  #apply = h('button', { type: 'button', class: 'primary', 'data-testid': 'weights-apply', disabled: true }, 'Apply…')
  #reset = h('button', { type: 'button', disabled: true }, 'Reset')
  #sum = h('p', { class: 'muted' })
  #inputs = new Map<string, { slider: HTMLInputElement, box: HTMLInputElement, now: HTMLElement }>()

  constructor (private readonly onChanged: () => void) {
    this.#apply.addEventListener('click', () => { void this.#confirm() })
    this.#reset.addEventListener('click', () => {
      this.#edited = false
      this.#setDraft({ ...this.#server })
    })
    this.el = h('section', { class: 'panel', 'aria-labelledby': 'weights-title' },
      h('h2', { id: 'weights-title' }, 'Weights'),
      this.#rows, this.#sum,
      h('p', { class: 'actions' }, this.#reset, this.#apply))
  }

  /** Shows the route's weights; a draft being edited is kept, only the "now" figures change. */
  update (route: RouteView): void {
    const names = route.versions.map((v) => v.name)
    const same = this.#route !== undefined && names.join('\n') === this.#route.versions.map((v) => v.name).join('\n')
    this.#route = route
    this.#server = Object.fromEntries(route.versions.map((v) => [v.name, v.weight]))
    if (!same) this.#build(names)
    for (const [n, i] of this.#inputs) i.now.textContent = `now ${pct(this.#server[n])}`
    if (!same || !this.#edited) this.#setDraft({ ...this.#server })
    else this.#show()
  }

  #build (names: string[]): void {
    this.#inputs.clear()
    this.#taken = undefined
    this.#edited = false
    this.#rows.replaceChildren(...names.map((n, i) => {
      const id = `w-${i}`
      const slider = h('input', { type: 'range', id, min: 0, max: 100, step: 1, 'data-testid': `weight-slider-${n}`, disabled: names.length < 2 })
      const box = h('input', { type: 'number', id: `${id}-n`, min: 0, max: 100, step: 1, inputmode: 'numeric', 'data-testid': `weight-input-${n}`, disabled: names.length < 2 })
      const now = h('span', { class: 'muted' })
      slider.addEventListener('input', () => this.#move(n, slider.valueAsNumber))
      box.addEventListener('input', () => { if (box.value !== '' && Number.isFinite(box.valueAsNumber)) this.#move(n, box.valueAsNumber) })
      box.addEventListener('change', () => this.#show())
      this.#inputs.set(n, { slider, box, now })
      return h('div', { class: 'weight' },
        h('label', { for: id }, n), slider,
        h('label', { for: `${id}-n`, class: 'sr-only' }, `${n} weight in percent`), box, h('span', { 'aria-hidden': 'true' }, '%'), now)
    }))
  }

  #move (name: string, value: number): void {
    this.#edited = true
    if (this.#taken !== name) {
      this.#taken = name
      this.#base = { ...this.#draft }
    }
    this.#setDraft(rebalance(this.#base, name, value), name)
  }

  #setDraft (draft: Record<string, number>, moving?: string): void {
    this.#draft = draft
    if (moving === undefined) this.#taken = undefined
    this.#show(moving)
  }

  /** Puts the draft in the inputs (except the box being typed in, so typing is not fought). */
  #show (typing?: string): void {
    for (const [n, i] of this.#inputs) {
      const w = this.#draft[n] ?? 0
      i.slider.value = String(w)
      if (!(n === typing && document.activeElement === i.box)) i.box.value = weightNum(w)
    }
    const dirty = this.#dirty()
    this.#apply.disabled = !dirty
    this.#reset.disabled = !dirty
    this.#sum.textContent = dirty ? `Draft: ${weightChange(this.#server, this.#draft)} (not applied)` : 'Move a slider or type a number; the other versions follow so the sum stays 100.'
  }

  #dirty (): boolean {
    return Object.keys(this.#draft).some((n) => this.#draft[n] !== this.#server[n])
  }

  async #confirm (): Promise<void> {
    const route = this.#route
    if (route === undefined || !this.#dirty()) return
    const weights = { ...this.#draft }
    const ro = route.rollout
    const answer = await confirmAction({
      title: `Change the weights of ${route.name}?`,
      body: [
        h('p', { class: 'change' }, weightChange(this.#server, weights)),
        // the server pauses a progressing or awaiting-promotion rollout on such a change; a paused one stays paused
        ro !== null && PAUSABLE.has(ro.state) && h('p', { class: 'warn' }, `The rollout of ${ro.canary} (${ro.state}) will be paused: a weight change from outside a rollout hands the route to you. Resume or abort it afterwards.`)
      ],
      ok: 'Apply weights',
      reason: true
    })
    if (answer === null) return
    try {
      const body: { weights: Record<string, number>, reason?: string } = { weights }
      if (answer.reason !== '') body.reason = answer.reason
      const { data } = await call<{ route: RouteView }>('PUT', `${routePath(route.name)}/weights`, { json: body })
      clearError()
      this.#edited = false
      this.update(data.route)
    } catch (err) {
      // the draft stays for another try; the server changed nothing
      showError(err)
    }
    this.onChanged()
  }
}
