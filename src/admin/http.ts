import { createHash, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { isIP } from 'node:net'
import { parse as parseYaml } from 'yaml'
import { CanarydError } from '../errors.js'

/** Largest admin request body, bytes; past it 413 and reading stops. */
const MAX_BODY_BYTES = 64 * 1024

/**
 * True when `host` can only be reached from this machine: `localhost`, any
 * address in 127.0.0.0/8, `::1` (and 127.x mapped into IPv6). Any other name
 * is treated as reachable from outside, since its resolution can change.
 */
export function isLoopbackHost (host: string): boolean {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
  if (h.toLowerCase() === 'localhost') return true
  const kind = isIP(h)
  if (kind === 4) return h.startsWith('127.')
  if (kind === 6) {
    const l = h.toLowerCase()
    if (l === '::1' || l === '0:0:0:0:0:0:0:1') return true
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(l)
    return mapped !== null && mapped[1]!.startsWith('127.')
  }
  return false
}

function digest (s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest()
}

/**
 * Checks `Authorization: Bearer <token>` in constant time: both sides are
 * hashed first so the comparison has equal lengths and leaks neither the
 * token's length nor the position of the first differing byte.
 * Throws CANARYD_ERR_UNAUTHORIZED.
 */
export function checkBearer (header: string | undefined, tokenDigest: Buffer): void {
  const m = header === undefined ? null : /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header)
  if (m === null) throw new CanarydError('CANARYD_ERR_UNAUTHORIZED', 'this admin API needs "Authorization: Bearer <token>" (admin.token / CANARYD_ADMIN_TOKEN)')
  if (!timingSafeEqual(digest(m[1]!), tokenDigest)) throw new CanarydError('CANARYD_ERR_UNAUTHORIZED', 'wrong admin token')
}

/** The digest `checkBearer` compares against. */
export function tokenDigest (token: string): Buffer {
  return digest(token)
}

/** The media type of a Content-Type header, lower-cased, without parameters ('' when absent). */
function mediaType (ct: string | undefined): string {
  return ct === undefined ? '' : ct.split(';', 1)[0]!.trim().toLowerCase()
}

/** True for `application/json` and `application/*+json`, with any parameters. */
function isJsonContentType (ct: string | undefined): boolean {
  const type = mediaType(ct)
  return type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json'))
}

/** The YAML media types in use (none is registered but application/yaml, RFC 9512). */
const YAML_TYPES: ReadonlySet<string> = new Set(['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml'])

/**
 * Reads a JSON request body with the admin API's limits. A declared
 * Content-Length over the limit is refused before reading a byte; a chunked
 * body is counted and reading stops at the limit (the server then closes the
 * connection instead of draining the rest).
 */
export async function readJsonBody (req: IncomingMessage, max: number = MAX_BODY_BYTES): Promise<unknown> {
  if (!isJsonContentType(req.headers['content-type'])) {
    throw new CanarydError('CANARYD_ERR_UNSUPPORTED_MEDIA_TYPE', `the body must be JSON with "Content-Type: application/json", got ${JSON.stringify(req.headers['content-type'] ?? '(none)')}`)
  }
  return parseJson(await readBody(req, max))
}

/**
 * Reads a body that is JSON or YAML by its Content-Type (`application/yaml`,
 * also `text/yaml` and the x- forms), with the same limits: a rollout plan
 * pasted as the CLI takes it from a file. YAML is read as plain data — no
 * custom tags, at most 100 aliases (no billion laughs), duplicate keys refused.
 */
export async function readDocumentBody (req: IncomingMessage, max: number = MAX_BODY_BYTES): Promise<unknown> {
  const ct = req.headers['content-type']
  if (isJsonContentType(ct)) return parseJson(await readBody(req, max))
  if (!YAML_TYPES.has(mediaType(ct))) {
    throw new CanarydError('CANARYD_ERR_UNSUPPORTED_MEDIA_TYPE', `the body must be JSON ("Content-Type: application/json") or YAML ("Content-Type: application/yaml"), got ${JSON.stringify(ct ?? '(none)')}`)
  }
  const text = await readBody(req, max)
  if (text.trim().length === 0) throw new CanarydError('CANARYD_ERR_INVALID_YAML', 'the request body is empty; a YAML mapping is required')
  let value: unknown
  try {
    // logLevel error: an unknown tag is read as plain data without yaml's process warning,
    // which would print the client's text on stderr, outside the log
    value = parseYaml(text, { maxAliasCount: 100, uniqueKeys: true, customTags: [], prettyErrors: true, logLevel: 'error' })
  } catch (err) {
    // the first line names line and column; the excerpt under it is the client's own text
    throw new CanarydError('CANARYD_ERR_INVALID_YAML', `the request body is not valid YAML: ${(err as Error).message.split('\n', 1)[0]!.replace(/:\s*$/, '')}`)
  }
  const why = notPlainData(value)
  if (why !== undefined) throw new CanarydError('CANARYD_ERR_INVALID_YAML', `the request body is YAML a plan cannot be: ${why}`)
  return value
}

/** Most values (nodes, counted with every alias expanded) a YAML body may hold: a plan has a few hundred. */
const MAX_YAML_NODES = 10_000

/**
 * Why a parsed YAML value is not what JSON could have said, or undefined:
 * an alias that contains itself (a cycle no validator can print), a value
 * that is not null, a boolean, a finite number, a string, an array or a plain
 * mapping (`%YAML 1.1` brings dates, sets, binary), or aliases that expand
 * past MAX_YAML_NODES (a small body whose echo in an error would be huge).
 */
function notPlainData (root: unknown): string | undefined {
  let nodes = 0
  const path: unknown[] = []
  const walk = (v: unknown): string | undefined => {
    if (++nodes > MAX_YAML_NODES) return `more than ${MAX_YAML_NODES} values once its aliases are expanded`
    if (v === null || typeof v === 'boolean' || typeof v === 'string') return undefined
    if (typeof v === 'number') return Number.isFinite(v) ? undefined : `${v} is not a finite number`
    if (typeof v !== 'object') return `a ${typeof v} value`
    if (path.includes(v)) return 'an alias that contains itself'
    const proto = Object.getPrototypeOf(v) as unknown
    if (!Array.isArray(v) && proto !== Object.prototype && proto !== null) return `a ${(v as object).constructor?.name ?? 'non-plain'} value (only mappings, sequences and scalars)`
    path.push(v)
    try {
      for (const x of Array.isArray(v) ? v : Object.values(v)) {
        const why = walk(x)
        if (why !== undefined) return why
      }
    } finally {
      path.pop()
    }
    return undefined
  }
  return walk(root)
}

function parseJson (text: string): unknown {
  if (text.trim().length === 0) throw new CanarydError('CANARYD_ERR_INVALID_JSON', 'the request body is empty; a JSON object is required')
  try {
    return JSON.parse(text) as unknown
  } catch (err) {
    throw new CanarydError('CANARYD_ERR_INVALID_JSON', `the request body is not valid JSON: ${(err as Error).message}`)
  }
}

/** The body as text, at most `max` bytes (413 past it; a declared length over it is refused before reading). */
async function readBody (req: IncomingMessage, max: number): Promise<string> {
  const declared = req.headers['content-length']
  if (declared !== undefined && Number(declared) > max) throw tooLarge(max)
  const chunks: Buffer[] = []
  let size = 0
  await new Promise<void>((resolve, reject) => {
    const onData = (c: Buffer): void => {
      size += c.length
      if (size > max) {
        req.off('data', onData)
        req.pause()
        reject(tooLarge(max))
        return
      }
      chunks.push(c)
    }
    req.on('data', onData)
    req.once('end', resolve)
    req.once('error', reject)
  })
  return Buffer.concat(chunks).toString('utf8')
}

function tooLarge (max: number): CanarydError {
  return new CanarydError('CANARYD_ERR_PAYLOAD_TOO_LARGE', `the request body is over ${max / 1024} KiB`)
}
