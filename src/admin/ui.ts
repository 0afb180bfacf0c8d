/**
 * The dashboard's files on the admin server: `/ui/` and the few files it
 * loads. The pages hold no data and can do nothing by themselves — they read
 * and call the admin API with the operator's token — so they are served
 * without it (the page must load to ask for the token).
 *
 * Only a fixed set of files is served, listed once when the server starts:
 * no path from a request ever reaches the file system.
 */
import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { gzip } from 'node:zlib'
import { CanarydError } from '../errors.js'
import type { Logger } from '../logger.js'
import type { AdminReply, AdminRequest } from './router.js'
import type { AdminServer } from './server.js'

/**
 * The dashboard's policy: its own scripts, styles and API, nothing else —
 * no inline script or style, no eval, no other origin (works offline, and
 * an injected string cannot load or send anything), never framed.
 */
export const UI_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

/** Headers of every dashboard file, on top of the admin server's own. */
const UI_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'content-security-policy': UI_CSP,
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  // revalidated each load (ETag): an upgraded canaryd never runs yesterday's script against today's API
  'cache-control': 'no-cache'
})

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8'
}

interface Asset {
  readonly body: Buffer
  /** The same, gzipped once at load (the page is mostly text: 130 KB → about 50 KB over an SSH tunnel). */
  readonly gzipped: Buffer
  readonly type: string
  readonly etag: string
}

const gzipAsync = promisify(gzip)

/** Where the package lives: the same two levels up from src/admin/ (tests) and dist/admin/ (built). */
const ROOT = new URL('../../', import.meta.url)

/**
 * The files, by URL path: the page and its style sheet from src/ui/, the
 * compiled scripts from dist/ui/, uPlot from its package. Missing scripts
 * (not built) leave the page up with a message in its place.
 */
async function loadAssets (logger: Logger): Promise<Map<string, Asset>> {
  const files = new Map<string, string>([
    ['/ui/', fileURLToPath(new URL('src/ui/index.html', ROOT))],
    ['/ui/style.css', fileURLToPath(new URL('src/ui/style.css', ROOT))]
  ])
  const missing: string[] = []
  const req = createRequire(import.meta.url)
  for (const name of ['uPlot.iife.min.js', 'uPlot.min.css']) {
    try {
      files.set(`/ui/vendor/${name}`, req.resolve(`uplot/dist/${name}`))
    } catch {
      missing.push(`uplot/dist/${name}`)
    }
  }
  const built = fileURLToPath(new URL('dist/ui/', ROOT))
  let names: string[] = []
  try {
    names = (await readdir(built)).filter((n) => n.endsWith('.js'))
  } catch {}
  if (!names.includes('main.js')) missing.push(`${built}main.js (npm run build)`)
  for (const n of names) files.set(`/ui/${n}`, `${built}${n}`)
  const out = new Map<string, Asset>()
  for (const [path, file] of files) {
    let body: Buffer
    try {
      body = await readFile(file)
    } catch {
      missing.push(file)
      continue
    }
    const ext = file.slice(file.lastIndexOf('.'))
    out.set(path, { body, gzipped: await gzipAsync(body), type: TYPES[ext] ?? 'application/octet-stream', etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` })
  }
  // an install without the built page still serves the API: say once what the dashboard lacks
  if (missing.length !== 0) logger.warn({ missing }, 'dashboard files missing: /ui/ will not work fully')
  return out
}

/** True when the client takes gzip (Accept-Encoding, without `gzip;q=0`). */
function takesGzip (accept: string | undefined): boolean {
  if (accept === undefined) return false
  return accept.split(',').some((part) => {
    const [coding, ...params] = part.trim().toLowerCase().split(';')
    return (coding === 'gzip' || coding === '*') && !params.some((p) => /^\s*q=0(\.0*)?\s*$/.test(p))
  })
}

/**
 * Registers `GET /ui` (308 to `/ui/`), `/ui/`, `/ui/{file}` and
 * `/ui/vendor/{file}`. With `enabled` false every one of them is 404, as if
 * the dashboard did not exist.
 */
export function registerUi (admin: Pick<AdminServer, 'addRoute'>, enabled: boolean, logger: Logger): void {
  let assets: Promise<Map<string, Asset>> | undefined
  const off = (): void => {
    if (!enabled) throw new CanarydError('CANARYD_ERR_NOT_FOUND', 'the dashboard is off on this instance (admin.ui: false)')
  }
  const serve = async (q: AdminRequest, path: string): Promise<AdminReply> => {
    off()
    // read once, at the first request: an instance nobody looks at never reads them
    assets ??= loadAssets(logger)
    const a = (await assets).get(path)
    if (a === undefined) throw new CanarydError('CANARYD_ERR_NOT_FOUND', `no dashboard file ${path}`)
    const headers = { ...UI_HEADERS, etag: a.etag, vary: 'accept-encoding' }
    if (q.req.headers['if-none-match'] === a.etag) return { status: 304, body: Buffer.alloc(0), contentType: a.type, headers }
    if (takesGzip(q.req.headers['accept-encoding'])) return { body: a.gzipped, contentType: a.type, headers: { ...headers, 'content-encoding': 'gzip' } }
    return { body: a.body, contentType: a.type, headers }
  }
  admin.addRoute('GET', '/ui', () => {
    off()
    return { status: 308, text: '', contentType: 'text/plain; charset=utf-8', headers: { location: '/ui/' } }
  })
  admin.addRoute('GET', '/ui/', async (q) => await serve(q, '/ui/'))
  admin.addRoute('GET', '/ui/{file}', async (q) => await serve(q, `/ui/${q.params.file!}`))
  admin.addRoute('GET', '/ui/vendor/{file}', async (q) => await serve(q, `/ui/vendor/${q.params.file!}`))
}
