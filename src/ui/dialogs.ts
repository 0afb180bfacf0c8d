/**
 * Confirmations: every action that changes the route goes through one, a
 * modal <dialog> (focus stays inside, Escape cancels) saying exactly what
 * will change. One dialog at a time, built fresh for each question.
 */
import { h, type Child } from './dom.js'

/** What to ask. */
export interface Question {
  title: string
  body: Child[]
  ok: string
  /** red OK button: the action takes traffic away or ends a rollout */
  danger?: boolean
  /** ask for an optional reason (recorded in the audit) */
  reason?: boolean
}

/** Asks; resolves with the reason typed ('' when none) on OK, null on cancel or Escape. */
export async function confirmAction (q: Question): Promise<{ reason: string } | null> {
  const reason = h('input', { id: 'confirm-reason', type: 'text', maxlength: 1000, autocomplete: 'off' })
  const ok = h('button', { type: 'button', 'data-testid': 'confirm-ok', class: q.danger === true ? 'danger' : 'primary' }, q.ok)
  const cancel = h('button', { type: 'button', 'data-testid': 'confirm-cancel' }, 'Cancel')
  const dialog = h('dialog', { 'aria-labelledby': 'confirm-title' },
    h('h2', { id: 'confirm-title' }, q.title),
    h('div', { class: 'confirm-body' }, ...q.body),
    q.reason === true && h('p', { class: 'field' }, h('label', { for: 'confirm-reason' }, 'Reason (optional, kept in the audit log)'), reason),
    h('p', { class: 'actions' }, cancel, ok))
  document.body.appendChild(dialog)
  return await new Promise((resolve) => {
    ok.addEventListener('click', () => dialog.close('ok'))
    cancel.addEventListener('click', () => dialog.close('cancel'))
    reason.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') dialog.close('ok') })
    // Escape fires 'cancel' and closes with an empty returnValue: same as Cancel
    dialog.addEventListener('close', () => {
      const confirmed = dialog.returnValue === 'ok'
      dialog.remove()
      resolve(confirmed ? { reason: reason.value.trim() } : null)
    })
    dialog.showModal()
    ;(q.reason === true ? reason : cancel).focus()
  })
}
