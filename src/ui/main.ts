/**
 * The dashboard's entry point: wires the header (feed state, the "Forget
 * token" button), the token form, the error banner and the hash router to
 * the pages. Pages only read and call the admin API; this module owns the
 * token's life. While the form is shown (api.ts tokenNeeded) the pacers and
 * the feed ask nothing; setting or forgetting the token re-mounts the page.
 */
import { call, errorText, getToken, onAuthNeeded, setToken } from './api.js'
import { clearError } from './banner.js'
import { mountAudit } from './audit.js'
import { Feed } from './feed.js'
import { mountFleet } from './fleet.js'
import { mountOverview } from './overview.js'
import { mountRoute } from './route.js'

const byId = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id)
  if (el === null) throw new Error(`index.html lacks #${id}`)
  return el as T
}

const main = byId<HTMLElement>('main')
const status = byId<HTMLElement>('feed-status')
const signOut = byId<HTMLButtonElement>('sign-out')
const form = byId<HTMLFormElement>('token-form')
const input = byId<HTMLInputElement>('token-input')
const message = byId<HTMLElement>('token-message')
const feed = new Feed()
let unmount = (): void => {}

/** A hash part as typed, when it is not valid percent-encoding (a hand-edited URL must not stop the router). */
function decode (part: string): string {
  try {
    return decodeURIComponent(part)
  } catch {
    return part
  }
}

/** Renders the page the hash names; the token never appears in it. */
function route (): void {
  unmount()
  clearError()
  const hash = location.hash.replace(/^#\/?/, '')
  const [path = '', query = ''] = hash.split('?')
  const parts = path.split('/')
  let page = 'overview'
  if (parts[0] === 'routes' && parts[1] !== undefined && parts[1] !== '') {
    page = ''
    unmount = mountRoute(main, feed, decode(parts[1]))
  } else if (parts[0] === 'audit') {
    page = 'audit'
    unmount = mountAudit(main, feed, new URLSearchParams(query).get('route') ?? '')
  } else if (parts[0] === 'fleet') {
    page = 'fleet'
    unmount = mountFleet(main)
  } else {
    unmount = mountOverview(main, feed)
  }
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a')) {
    if (a.dataset.nav === page) a.setAttribute('aria-current', 'page')
    else a.removeAttribute('aria-current')
  }
}

/** Shows the token form with the server's message; nothing else changes. */
function askToken (text: string): void {
  message.textContent = text
  if (form.hidden) {
    form.hidden = false
    input.focus()
  }
}

form.addEventListener('submit', (ev) => {
  ev.preventDefault()
  const token = input.value.trim()
  if (token === '') {
    message.textContent = 'Enter the admin token.'
    return
  }
  // tried before it is kept: a wrong token only gets the server's message, and the page stays as it was
  message.textContent = 'Checking…'
  call('GET', '/api/v1/routes', { token }).then(() => {
    setToken(token)
    input.value = ''
    message.textContent = ''
    form.hidden = true
    signOut.hidden = false
    feed.restart()
    route()
  }, (err: unknown) => {
    message.textContent = errorText(err)
    input.select()
  })
})

signOut.addEventListener('click', () => {
  // whether a token is needed is not known any more: the next 401 shows the form again
  setToken('')
  form.hidden = true
  message.textContent = ''
  signOut.hidden = true
  feed.restart()
  route()
})

byId<HTMLButtonElement>('error-close').addEventListener('click', clearError)

onAuthNeeded(askToken)
feed.on((ev) => {
  if (ev.type !== 'status') return
  status.textContent = ev.status
  status.className = `status-${ev.status}`
  status.title = ev.message
})

signOut.hidden = getToken() === null
document.documentElement.dataset.feedSamples = '0'
window.addEventListener('hashchange', route)
feed.restart()
route()
