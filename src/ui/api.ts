/**
 * The admin API from the page: fetch with the operator's token as a Bearer
 * header, error bodies turned into ApiError. The token lives in
 * sessionStorage only (this tab, gone when it closes) and never in a URL,
 * where it would end up in history and logs.
 */
import { isObj } from './dom.js'

const TOKEN_KEY = 'canaryd.token'

/** An answer of the admin API that was not 2xx (or no answer: status 0), with the server's code and message. */
export class ApiError extends Error {
  readonly status: number
  readonly code: string
  constructor (status: number, code: string, message: string) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** The message and code of an error, as one line for the user. */
export function errorText (err: unknown): string {
  if (err instanceof ApiError) return err.code === '' ? err.message : `${err.message} (${err.code})`
  return err instanceof Error ? err.message : String(err)
}

/** The stored token, or null (also when storage is blocked: then the form asks each load). */
export function getToken (): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY)
  } catch {
    return null
  }
}

/** Keeps the token for this tab; '' forgets it. Either way the pages may ask the API again. */
export function setToken (token: string): void {
  try {
    if (token === '') sessionStorage.removeItem(TOKEN_KEY)
    else sessionStorage.setItem(TOKEN_KEY, token)
  } catch {}
  setNeeded(false)
}

let authListener: (message: string) => void = () => {}
let needed = false
const neededListeners = new Set<(needed: boolean) => void>()

function setNeeded (value: boolean): void {
  if (needed === value) return
  needed = value
  for (const fn of [...neededListeners]) fn(value)
}

/**
 * True from a 401 (the token form is shown) until a token is set or
 * forgotten: nothing should ask the API meanwhile, since each refused
 * request is a warn line in the server's log.
 */
export function tokenNeeded (): boolean {
  return needed
}

/** Hears when a token becomes needed (true) and when one is set or forgotten (false); returns the removal. */
export function onTokenNeeded (fn: (needed: boolean) => void): () => void {
  neededListeners.add(fn)
  return () => { neededListeners.delete(fn) }
}

/** Sets who hears of a 401 (the token form): there is one listener, the page's shell. */
export function onAuthNeeded (fn: (message: string) => void): void {
  authListener = fn
}

/** Tells the shell the token was refused (the feed reports its own 401 here too); the pacers pause until a token is set. */
export function authNeeded (message: string): void {
  authListener(message)
  setNeeded(true)
}

/** Request headers with the token when one is known (or the one given, to try it before keeping it). */
export function authHeaders (token = getToken()): Record<string, string> {
  return token === null || token === '' ? {} : { authorization: `Bearer ${token}` }
}

/** Options of one call. */
export interface CallOptions {
  /** a JSON body (sent as application/json) */
  json?: unknown
  /** a text body with its own content type (a YAML plan) */
  text?: string
  type?: string
  /** try this token instead of the stored one; a 401 is then only thrown, not reported */
  token?: string
}

/** The ApiError of a non-2xx answer: the body's `{error:{code,message}}`, else the status line. */
export async function readError (res: Response): Promise<ApiError> {
  let body: unknown
  try {
    body = await res.json()
  } catch {}
  const e = isObj(body) && isObj(body.error) ? body.error : {}
  const message = typeof e.message === 'string' ? e.message : `HTTP ${res.status} ${res.statusText}`
  return new ApiError(res.status, typeof e.code === 'string' ? e.code : '', message)
}

/** Calls the admin API; resolves with the JSON answer (null for an empty one), throws ApiError. */
export async function call<T = unknown> (method: string, path: string, opts: CallOptions = {}): Promise<{ status: number, data: T }> {
  const headers: Record<string, string> = authHeaders(opts.token ?? getToken())
  let body: string | undefined
  if (opts.json !== undefined) {
    headers['content-type'] = 'application/json'
    body = JSON.stringify(opts.json)
  } else if (opts.text !== undefined) {
    headers['content-type'] = opts.type ?? 'text/plain'
    body = opts.text
  }
  let res: Response
  try {
    res = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'omit' })
  } catch (err) {
    throw new ApiError(0, '', `cannot reach the admin server: ${err instanceof Error ? err.message : String(err)}`)
  }
  if (!res.ok) {
    const err = await readError(res)
    if (res.status === 401 && opts.token === undefined) authNeeded(err.message)
    throw err
  }
  const text = await res.text()
  return { status: res.status, data: (text === '' ? null : JSON.parse(text)) as T }
}

/** `/api/v1/routes/<name>` with the name escaped (route names come from the config, not from us). */
export function routePath (route: string): string {
  return `/api/v1/routes/${encodeURIComponent(route)}`
}
