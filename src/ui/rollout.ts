/**
 * The rollout panel of a route page: where the rollout stands and the four
 * actions, each behind a confirmation. A button is enabled only in the
 * states the server accepts it in (src/rollout/controller.ts): pause from
 * progressing or awaiting-promotion, resume from paused, promote and abort
 * while active. If the state moved on meanwhile, the server's 409 is shown.
 */
import { call, routePath } from './api.js'
import { clearError, showError } from './banner.js'
import { confirmAction } from './dialogs.js'
import { fill, h, pct, when } from './dom.js'
import { planStep, stepOf } from './format.js'
import type { RolloutView } from './types.js'

type Action = 'pause' | 'resume' | 'promote' | 'abort'

/** States in which a rollout owns the route's weights: a second start is refused. */
export const ACTIVE: ReadonlySet<string> = new Set(['progressing', 'paused', 'awaiting-promotion'])

/**
 * States a pause applies to: the operator's, and the one a weight change
 * from outside the rollout makes (src/rollout/manager.ts; a paused rollout
 * stays as it is).
 */
export const PAUSABLE: ReadonlySet<string> = new Set(['progressing', 'awaiting-promotion'])

const ALLOWED: Readonly<Record<Action, readonly string[]>> = {
  pause: [...PAUSABLE],
  resume: ['paused'],
  promote: [...ACTIVE],
  abort: [...ACTIVE]
}

/** `Pause`, `Abort`: an action's name as a button and a title start it. */
function label (a: Action): string {
  return a[0]!.toUpperCase() + a.slice(1)
}

/**
 * What an abort puts back (src/rollout/controller.ts abort): after a
 * blue/green switch (its rollback window) the weights from before the
 * switch, else the canary at 0 %; and either way the canary's origins from
 * before the start's `canaryUpstream` (the view does not say whether there
 * was one) and the segments the steps moved, as they were at start.
 */
function abortText (v: RolloutView): string {
  const weights = v.strategy === 'blue-green' && v.phase === 'rollback-window'
    ? 'The weights before the switch are put back'
    : `The route's weights are put back: ${v.canary} goes back to 0 %, ${v.stable} to 100 %`
  const segments = Object.keys(v.segmentWeights ?? {}).length === 0 ? '' : ', and the segments it moved go back to their definitions at start'
  return `${weights}. The previous upstream of ${v.canary} is put back too, if the rollout set one${segments}. The rollout ends as aborted.`
}

/** What each action will do, for its confirmation. */
function consequence (a: Action, v: RolloutView): string {
  switch (a) {
    case 'pause': return `${v.canary} stays at ${pct(v.weight)} and checks stop until you resume.`
    case 'resume': return 'Checks start again with fresh measurements.'
    case 'promote': return `${v.canary} goes to 100 % now, skipping the remaining steps (a confirm-promotion gate in the plan may still hold it).`
    case 'abort': return abortText(v)
  }
}

/** The rollout panel; `onChanged` asks the page to re-read. */
export class RolloutPanel {
  readonly el: HTMLElement
  #view: RolloutView | null = null
  #route = ''
  #state = h('strong', { 'data-testid': 'rollout-state' }, 'none')
  #facts = h('dl', { class: 'facts' })
  #note = h('p', { class: 'muted', role: 'status' })
  #buttons = new Map<Action, HTMLButtonElement>()

  constructor (private readonly onChanged: () => void) {
    const actions = h('p', { class: 'actions' })
    for (const a of ['pause', 'resume', 'promote', 'abort'] as const) {
      const b = h('button', { type: 'button', 'data-testid': `rollout-${a}`, class: a === 'abort' ? 'danger' : '', disabled: true }, `${label(a)}…`)
      b.addEventListener('click', () => { void this.#act(a) })
      this.#buttons.set(a, b)
      actions.append(b)
    }
    this.el = h('section', { class: 'panel', 'aria-labelledby': 'rollout-title' },
      h('h2', { id: 'rollout-title' }, 'Rollout'),
      h('p', null, 'State: ', this.#state),
      this.#facts, actions, this.#note)
  }

  /** The rollout as `GET …/rollout` has it, or null when the route never had one. */
  update (route: string, v: RolloutView | null): void {
    this.#route = route
    this.#view = v
    this.#state.textContent = v === null ? 'none' : v.state
    this.#state.className = `state state-${v?.state ?? 'none'}`
    for (const [a, b] of this.#buttons) b.disabled = v === null || !ALLOWED[a].includes(v.state)
    if (v === null) {
      fill(this.#facts, h('dd', null, 'This route has no rollout. Start one below.'))
      return
    }
    const fact = (k: string, val: string | Node | null | undefined): Node[] => val === null || val === undefined || val === '' ? [] : [h('dt', null, k), h('dd', null, val)]
    // the promotion to 100 % is the last step, as canaryd rollout status counts it
    const steps = [...v.steps.map(planStep), '100']
    const max = v.plan?.analysis?.maxFailedChecks
    const seg = Object.entries(v.segmentWeights ?? {}).map(([s, w]) => `${s} ${pct(w)}`).join(', ')
    fill(this.#facts,
      ...fact('Canary / stable', `${v.canary} / ${v.stable}`),
      ...fact('Strategy', v.strategy),
      ...fact('Phase', v.phase),
      ...fact('Step', `${stepOf(v.state, v.step, v.steps.length)}: ${steps.join(' → ')}`),
      ...fact('Canary weight', pct(v.weight)),
      ...fact('Segment weights', seg),
      ...fact('Failed checks', max === undefined ? String(v.failedChecks) : `${v.failedChecks} (rolls back at ${max})`),
      ...fact('Reason', v.reason),
      ...fact('Started', when(v.startedAt)),
      ...fact('Updated', when(v.updatedAt)))
  }

  async #act (a: Action): Promise<void> {
    const v = this.#view
    if (v === null) return
    const answer = await confirmAction({
      title: `${label(a)} the rollout of ${v.canary} on ${this.#route}?`,
      body: [h('p', null, consequence(a, v))],
      ok: label(a),
      danger: a === 'abort' || a === 'promote'
    })
    if (answer === null) return
    try {
      const { status, data } = await call<RolloutView>('POST', `${routePath(this.#route)}/rollout/${a}`)
      clearError()
      this.#note.textContent = status === 202 || data.held === true
        ? 'The confirm-promotion gate holds the promotion for now; the rollout keeps its step.'
        : `${a} done: ${data.state}.`
      this.update(this.#route, data)
    } catch (err) {
      showError(err)
    }
    this.onChanged()
  }
}
