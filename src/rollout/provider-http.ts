/**
 * The http metric provider (any endpoint answering JSON; the number is picked
 * by an RFC 9535 JSONPath), and the HTTP plumbing both providers share: the
 * auth header built from the plan's secret references at query time, one
 * bounded undici request (timeouts, abort signal, 1 MiB body cap) and the
 * one-line reasons a failure becomes. With provider-prometheus.ts, the only
 * sockets of the analysis (STYLE.md: no sockets beyond the provider files).
 */
import { constants as fsConstants } from 'node:fs'
import { open, realpath } from 'node:fs/promises'
import { query as jsonPathQuery } from 'jsonpath-rfc9535'
import { request } from 'undici'
import type { AuthSpec, HttpProviderSpec } from '../config/plan.js'

/** What a provider answers: one number, no number for a benign reason (inconclusive), or an error. */
export type ProviderAnswer = { value: number } | { noData: string } | { error: string }

/** Larger answers are refused: a metric is one number, and the analysis must not buffer a runaway body. */
export const MAX_BODY_BYTES = 1024 * 1024

/** A failure whose message is already the one-line reason. */
class ProviderError extends Error {}

/** Largest secret file read (a token or a password is a few KB at most). */
const MAX_SECRET_BYTES = 64 * 1024

/** Reads of secret files in progress, by path: a slow file is read once at a time, not once per query. */
const reading = new Map<string, Promise<string>>()

/**
 * A secret file's text. Opened non-blocking and checked before reading: a
 * FIFO or a device (a typo, or a hostile plan) would block a libuv thread
 * for good, and with it every file operation of the process (the state
 * file's saves); only a regular file of at most 64 KiB is read.
 */
async function readSecretFile (file: string): Promise<string> {
  const inFlight = reading.get(file)
  if (inFlight !== undefined) return await inFlight
  const read = (async () => {
    // the kernel's files are not secrets of a provider: /proc/self/environ holds canaryd's own
    // settings (admin token, Redis password), and /proc files report size 0 whatever they hold
    const real = await realpath(file)
    if (/^\/(proc|sys|dev)(\/|$)/.test(real)) throw new ProviderError(`${real} is a system file, not a secret`)
    const fh = await open(real, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK)
    try {
      const st = await fh.stat()
      if (!st.isFile()) throw new ProviderError('not a regular file')
      // read at most one byte past the cap, whatever the size says
      const buf = Buffer.alloc(MAX_SECRET_BYTES + 1)
      let n = 0
      while (n < buf.length) {
        const { bytesRead } = await fh.read(buf, n, buf.length - n, n)
        if (bytesRead === 0) break
        n += bytesRead
      }
      if (n > MAX_SECRET_BYTES) throw new ProviderError(`larger than ${MAX_SECRET_BYTES} bytes`)
      return buf.subarray(0, n).toString('utf8')
    } finally {
      await fh.close()
    }
  })()
  reading.set(file, read)
  try {
    return await read
  } finally {
    reading.delete(file)
  }
}

/** The header `auth` adds (Authorization, or a named API-key header), and the secrets it carries (redacted from every reason). */
export interface Authorization { name: string; header: string; secrets: string[] }

async function readSecret (what: string, envName: string | undefined, file: string | undefined, env: NodeJS.ProcessEnv, signal: AbortSignal): Promise<string> {
  if (envName !== undefined) {
    const v = env[envName]?.trim()
    if (v === undefined || v === '') throw new ProviderError(`${what} environment variable ${envName} is not set`)
    return v
  }
  let text: string
  try {
    // read at every query, so a rotated token file is picked up without a restart
    text = await readSecretFile(file!)
  } catch (err) {
    if (signal.aborted) throw err
    throw new ProviderError(`${what} file ${file} cannot be read (${err instanceof ProviderError ? err.message : (err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
  const v = text.trim()
  if (v === '') throw new ProviderError(`${what} file ${file} is empty`)
  return v
}

/**
 * Builds the Authorization header of `auth` from its env var or file, read
 * now: the plan only names where the secret is, so its echo never shows one.
 */
export async function authorization (auth: AuthSpec | undefined, env: NodeJS.ProcessEnv, signal: AbortSignal): Promise<Authorization | undefined> {
  if (auth === undefined) return undefined
  if (auth.type === 'bearer') {
    const token = await readSecret('bearer token', auth.tokenEnv, auth.tokenFile, env, signal)
    return { name: 'authorization', header: `Bearer ${token}`, secrets: [token] }
  }
  if (auth.type === 'header') {
    const value = await readSecret(`${auth.name} header value`, auth.valueEnv, auth.valueFile, env, signal)
    return { name: auth.name.toLowerCase(), header: value, secrets: [value] }
  }
  const password = await readSecret('basic auth password', auth.passwordEnv, auth.passwordFile, env, signal)
  const encoded = Buffer.from(`${auth.username}:${password}`).toString('base64')
  return { name: 'authorization', header: `Basic ${encoded}`, secrets: [password, encoded] }
}

/** One request of a provider. */
export interface ProviderRequest {
  url: string
  method: 'GET' | 'POST'
  body?: string
  headers?: Record<string, string>
  auth?: AuthSpec
  timeoutMs: number
  signal: AbortSignal
  env: NodeJS.ProcessEnv
  /** Names the endpoint in reasons, e.g. "Prometheus at http://prom:9090". */
  what: string
}

/** A completed request: its status and its body (at most MAX_BODY_BYTES). */
export interface ProviderResponse { status: number; text: string }

/**
 * Sends one request and reads its body, bounded by `timeoutMs` (headers and
 * body) and the abort signal; a body over 1 MiB is cut off. Rejects with an
 * error whose message may hold the secret: callers go through `failure()`.
 */
async function send (r: ProviderRequest, auth: Authorization | undefined): Promise<ProviderResponse> {
  const headers: Record<string, string> = { 'user-agent': 'canaryd-analysis', accept: 'application/json' }
  for (const [k, v] of Object.entries(r.headers ?? {})) headers[k.toLowerCase()] = v
  if (r.body !== undefined && headers['content-type'] === undefined) headers['content-type'] = 'application/json'
  if (auth !== undefined) headers[auth.name] = auth.header
  const res = await request(r.url, {
    method: r.method,
    headers,
    body: r.body,
    headersTimeout: r.timeoutMs,
    bodyTimeout: r.timeoutMs,
    signal: r.signal
  })
  const declared = Number(res.headers['content-length'])
  if (declared > MAX_BODY_BYTES) {
    res.body.destroy()
    throw new ProviderError(`${r.what} answered ${declared} bytes, more than the 1 MiB a metric may take`)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) {
      res.body.destroy()
      throw new ProviderError(`${r.what} answered more than the 1 MiB a metric may take`)
    }
    chunks.push(chunk)
  }
  return { status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED'])
const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT'])

/** The one-line reason of a failed request (secrets redacted, at most 300 characters). */
function failure (err: unknown, what: string, timeoutMs: number, signal: AbortSignal, secrets: readonly string[] = []): string {
  let text: string
  const e = err as { code?: string; message?: string; name?: string; cause?: { code?: string; message?: string } }
  if (err instanceof ProviderError) text = err.message
  else if (signal.aborted) text = (signal.reason as Error | undefined)?.name === 'TimeoutError' ? `${what} timed out after ${timeoutMs} ms` : `${what}: the query was aborted`
  else if (TIMEOUTS.has(e.code ?? '')) text = `${what} timed out after ${timeoutMs} ms`
  else {
    const code = e.code ?? e.cause?.code
    const detail = e.cause?.message ?? e.message ?? String(err)
    text = UNREACHABLE.has(code ?? '') ? `${what} is unreachable (${detail})` : `${what} failed: ${detail}`
  }
  return redact(text, secrets)
}

// C0 and C1 control characters (ESC, BEL, the 8-bit CSI …), DEL
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g

/** One line, bounded, without the secrets (a server may echo what it was sent). */
export function redact (text: string, secrets: readonly string[]): string {
  let out = text
  // also as a JSON string shows it (a " or \ in the secret is escaped there)
  for (const s of secrets) if (s !== '') out = out.split(s).join('***').split(JSON.stringify(s).slice(1, -1)).join('***')
  // one line, and nothing a terminal would interpret (canaryd rollout status prints reasons as they are)
  out = out.replace(/\s+/g, ' ').replace(CONTROL, '').trim()
  return out.length > 300 ? `${out.slice(0, 297)}...` : out
}

/**
 * Sends `r` with its auth and hands the response to `read`; any failure
 * (auth secret missing, network, timeout, body too large, a throw of `read`)
 * becomes `{ error }` with a one-line, redacted reason. Never rejects.
 */
export async function askProvider (r: ProviderRequest, read: (res: ProviderResponse, secrets: readonly string[]) => ProviderAnswer): Promise<ProviderAnswer> {
  let auth: Authorization | undefined
  try {
    auth = await authorization(r.auth, r.env, r.signal)
    const answer = read(await send(r, auth), auth?.secrets ?? [])
    if ('value' in answer) return answer
    return 'error' in answer ? { error: redact(answer.error, auth?.secrets ?? []) } : { noData: redact(answer.noData, auth?.secrets ?? []) }
  } catch (err) {
    return { error: failure(err, r.what, r.timeoutMs, r.signal, auth?.secrets) }
  }
}

/**
 * The value `jsonPath` selects in `doc`: exactly one number, or a string
 * holding one ("97.5"; some exporters quote numbers). Nothing or null → no
 * data; anything else (several values, text, a boolean, an object) → error.
 */
export function valueAt (doc: unknown, jsonPath: string, secrets: readonly string[] = []): ProviderAnswer {
  let found: unknown[]
  try {
    found = jsonPathQuery(doc as Parameters<typeof jsonPathQuery>[0], jsonPath)
  } catch (err) {
    return { error: `jsonPath ${jsonPath} is invalid: ${(err as Error).message}` }
  }
  if (found.length === 0) return { noData: `jsonPath ${jsonPath} selected nothing` }
  if (found.length > 1) return { error: `jsonPath ${jsonPath} selected ${found.length} values; it must select one` }
  const v = found[0]
  if (v === null) return { noData: `jsonPath ${jsonPath} is null` }
  if (typeof v === 'number') return Number.isFinite(v) ? { value: v } : { noData: `jsonPath ${jsonPath} is not a finite number` }
  if (typeof v === 'string' && DECIMAL.test(v.trim())) {
    const n = Number(v.trim())
    return Number.isFinite(n) ? { value: n } : { noData: `jsonPath ${jsonPath} is not a finite number` }
  }
  // redacted before it is cut short: a cut-off copy of a secret would escape the redaction after
  const shown = redact(JSON.stringify(v) ?? '', secrets)
  return { error: `jsonPath ${jsonPath} is not a number: ${shown.length > 60 ? `${shown.slice(0, 57)}...` : shown}` }
}

/** A number written in decimal ("97.5", "-1e-3"): not "", not "0x10", not "Infinity". */
export const DECIMAL = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/

/** JSON nested deeper than this is refused before parsing: a metric is a number in a small document. */
export const MAX_JSON_DEPTH = 64

/**
 * True when `text` nests arrays/objects deeper than `max` (strings are
 * skipped). O(n), about a millisecond per MiB: JSON.parse and a JSONPath
 * query on a hostile, deeply nested answer would hold the event loop (the
 * proxy's too) far longer than the provider's timeout.
 */
export function nestedDeeper (text: string, max: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++ // backslash: skip the escaped character
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return false
}

/** Queries an http provider: `url` (and `body`) already rendered. Never rejects. */
export async function queryHttp (p: HttpProviderSpec, url: string, body: string | undefined, signal: AbortSignal, env: NodeJS.ProcessEnv): Promise<ProviderAnswer> {
  const what = url
  const r: ProviderRequest = { url, method: p.method, timeoutMs: p.timeoutMs, signal, env, what }
  if (p.method === 'POST' && body !== undefined) r.body = body
  if (p.headers !== undefined) r.headers = p.headers
  if (p.auth !== undefined) r.auth = p.auth
  return await askProvider(r, (res, secrets) => {
    if (res.status < 200 || res.status > 299) return { error: `${what} answered ${res.status}` }
    if (nestedDeeper(res.text, MAX_JSON_DEPTH)) return { error: `${what} answered JSON nested deeper than ${MAX_JSON_DEPTH} levels` }
    let doc: unknown
    try {
      doc = JSON.parse(res.text)
    } catch {
      return { error: `${what} answered ${res.status} with a body that is not JSON` }
    }
    return valueAt(doc, p.jsonPath, secrets)
  })
}
