/**
 * The error banner: the last error an action met, with the server's message
 * and code, until it is dismissed, the page changes or the next action
 * succeeds. One place, so the tests and the operator look in one spot.
 */
import { errorText } from './api.js'

const banner = (): HTMLElement | null => document.getElementById('error-banner')

/** Shows an error (an ApiError's message and code, or any error's message). */
export function showError (err: unknown): void {
  const el = banner()
  const text = document.getElementById('error-text')
  if (el === null || text === null) return
  text.textContent = errorText(err)
  el.hidden = false
}

/** Hides the banner: the error no longer stands. */
export function clearError (): void {
  const el = banner()
  if (el !== null) el.hidden = true
}
